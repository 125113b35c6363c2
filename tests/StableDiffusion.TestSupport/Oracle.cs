using StableDiffusion.Runtime;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.TestSupport;

/// <summary>
/// libtorch (TorchSharp, CPU) as the independent oracle: inputs go to libtorch exactly as the device holds them
/// (fp16-rounded for fp16 runs), the reference is computed in float64, and the error is ‖out − ref‖₂ / ‖ref‖₂.
/// Every comparison is written to the test output and, when SD_ORACLE_LOG names a file, appended to it so CI can
/// print the table of measured errors.
/// </summary>
public sealed class Oracle(ITestOutputHelper output)
{
    private static readonly object LogGate = new();
    private readonly Random rng = new(1234);

    /// <summary>Uniform values in [-scale, scale], rounded to what a tensor of <paramref name="dt"/> stores.</summary>
    public float[] Random(long n, DType dt, float scale = 1f, float offset = 0f)
    {
        var a = new float[n];
        for (long i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) * scale + offset;
        if (dt == DType.F16)
            for (long i = 0; i < n; i++) a[i] = (float)(System.Half)a[i];
        return a;
    }

    public static StableDiffusion.Runtime.Tensor Upload(IOps ops, float[] data, DType dt, params int[] shape) =>
        StableDiffusion.Runtime.Tensor.FromArray(ops.Device, data, dt, shape);

    /// <summary>A float64 libtorch tensor holding <paramref name="data"/>.</summary>
    public static TorchTensor T(float[] data, params long[] shape) =>
        torch.tensor(data.Select(v => (double)v).ToArray(), shape, dtype: ScalarType.Float64);

    public static float[] Host(TorchTensor t) =>
        t.to_type(ScalarType.Float64).contiguous().data<double>().ToArray().Select(v => (float)v).ToArray();

    /// <summary>Downloads <paramref name="y"/>, compares with <paramref name="reference"/>, records and asserts.</summary>
    public double Check(string kernel, string caseName, StableDiffusion.Runtime.Tensor y, TorchTensor reference, double tolerance)
    {
        var got = y.ToFloatArray();
        var want = Host(reference);
        Assert.Equal(want.Length, got.Length);
        double err = global::StableDiffusion.Kernels.Reference.RelativeError(got, want);
        Record(kernel, caseName, y.DType, err, tolerance);
        Assert.True(err <= tolerance,
            $"{kernel} [{caseName}] {y.DType.Name()}: relative error {err:0.00e+00} exceeds {tolerance:0.0e+00}" +
            (double.IsNaN(err) ? " (NaN: an output element was not written or is not finite)" : ""));
        return err;
    }

    /// <summary>The backend the running test asked <see cref="Devices.Backend"/> for; tags its records (cpu: the C# backend).</summary>
    public static readonly AsyncLocal<string?> CurrentBackend = new();

    public void Record(string kernel, string caseName, DType dt, double err, double tolerance)
    {
        if (CurrentBackend.Value == "cpu") kernel = "cpu:" + kernel;
        var line = $"{kernel}\t{dt.Name()}\t{caseName}\t{err:0.00e+00}\t{tolerance:0.0e+00}";
        output.WriteLine(line);
        var log = Environment.GetEnvironmentVariable("SD_ORACLE_LOG");
        if (string.IsNullOrEmpty(log)) return;
        lock (LogGate) File.AppendAllText(log, line + Environment.NewLine);
    }
}
