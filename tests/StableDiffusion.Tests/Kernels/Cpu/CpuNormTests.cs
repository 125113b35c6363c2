using StableDiffusion.Kernels.Cpu;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.Tests.Kernels.Cpu;

/// <summary>Comparison of a CPU kernel's fp32 output with a float64 libtorch reference, recorded like the GPU oracles.</summary>
internal static class CpuOracle
{
    public const double Tolerance = 1e-5;

    public static double Check(Oracle oracle, string kernel, string caseName, float[] got, TorchTensor want,
        double tolerance = Tolerance) => Check(oracle, kernel, caseName, got, Oracle.Host(want), tolerance);

    public static double Check(Oracle oracle, string kernel, string caseName, float[] got, float[] want,
        double tolerance = Tolerance)
    {
        Assert.Equal(want.Length, got.Length);
        double err = StableDiffusion.Kernels.Reference.RelativeError(got, want);
        oracle.Record(kernel, caseName, DType.F32, err, tolerance);
        Assert.True(err <= tolerance, $"{kernel} [{caseName}]: relative error {err:0.00e+00} exceeds {tolerance:0.0e+00}");
        return err;
    }

    /// <summary>An output buffer poisoned with NaN, so an element the kernel skips fails the comparison.</summary>
    public static float[] Poisoned(long n) => Enumerable.Repeat(float.NaN, (int)n).ToArray();
}

public unsafe class CpuNormTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    [Theory]
    // N, spatial, C, groups, eps, affine, silu, offset (a large mean tests the shifted sums)
    [InlineData(2, 5, 8, 4, 1e-5f, true, false, 0f)]
    [InlineData(1, 7, 6, 2, 1e-6f, true, true, 3f)]
    [InlineData(2, 1, 12, 3, 1e-5f, false, false, 0f)]
    [InlineData(9, 2, 64, 32, 1e-5f, true, false, 0f)]
    [InlineData(2, 300, 320, 32, 1e-5f, true, true, 0f)]
    [InlineData(1, 257, 100, 4, 1e-6f, true, false, 0.5f)]
    [InlineData(2, 33, 1280, 32, 1e-5f, true, true, 0f)]
    [InlineData(1, 1000, 4, 1, 1e-6f, false, false, 10f)]
    [InlineData(3, 19, 17, 17, 1e-5f, true, true, -2f)]
    public void GroupNorm_matches_libtorch(int n, int s, int c, int g, float eps, bool affine, bool silu, float offset)
    {
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random((long)n * s * c, DType.F32, 2f, offset);
        var gamma = affine ? oracle.Random(c, DType.F32, 1f, 1f) : null;
        var beta = affine ? oracle.Random(c, DType.F32) : null;
        var y = CpuOracle.Poisoned(x.Length);
        fixed (float* px = x, py = y, pg = gamma, pb = beta)
            CpuNorms.GroupNorm(px, py, n, s, c, g, pg, pb, eps, silu);
        var want = torch.nn.functional.group_norm(Oracle.T(x, n, s, c).permute(0, 2, 1), g,
            gamma is null ? null : Oracle.T(gamma, c), beta is null ? null : Oracle.T(beta, c), eps).permute(0, 2, 1);
        if (silu) want = torch.nn.functional.silu(want);
        CpuOracle.Check(oracle, "cpu_group_norm", $"[{n},{s},{c}] g{g} eps {eps:g}{(silu ? " +silu" : "")}{(affine ? "" : " no affine")} offset {offset:g}",
            y, want);
    }

    [Fact]
    public void GroupNorm_in_place_matches_out_of_place()
    {
        int n = 2, s = 50, c = 64, g = 8;
        var x = oracle.Random((long)n * s * c, DType.F32, 1f);
        var y = new float[x.Length];
        var z = (float[])x.Clone();
        fixed (float* px = x, py = y, pz = z)
        {
            CpuNorms.GroupNorm(px, py, n, s, c, g, null, null, 1e-5f, true);
            CpuNorms.GroupNorm(pz, pz, n, s, c, g, null, null, 1e-5f, true);
        }
        Assert.Equal(y, z);
    }

    [Fact]
    public void GroupNorm_rejects_bad_sizes()
    {
        var x = new float[60];
        fixed (float* px = x)
        {
            float* p = px;
            Assert.Throws<KernelArgumentException>(() => CpuNorms.GroupNorm(p, p, 1, 2, 30, 4, null, null, 1e-5f, false));
            Assert.Throws<KernelArgumentException>(() => CpuNorms.GroupNorm(p, p, 0, 2, 30, 3, null, null, 1e-5f, false));
            Assert.Throws<KernelArgumentException>(() => CpuNorms.GroupNorm(p, p, 1, 2, 30, 0, null, null, 1e-5f, false));
            Assert.Throws<KernelArgumentException>(() => CpuNorms.GroupNorm(p, p, 1, 2, 30, 3, null, null, float.NaN, false));
            Assert.Throws<KernelArgumentException>(() => CpuNorms.LayerNorm(p, p, 2, 0, null, null, 1e-5f));
        }
    }

    [Theory]
    [InlineData(7, 12, true)]
    [InlineData(3, 33, false)]
    [InlineData(77, 320, true)]
    [InlineData(9, 1280, true)]
    [InlineData(4, 1, true)]
    [InlineData(130, 47, true)]
    public void LayerNorm_matches_libtorch(int rows, int c, bool affine)
    {
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random((long)rows * c, DType.F32, 3f, 1f);
        var gamma = affine ? oracle.Random(c, DType.F32, 1f, 1f) : null;
        var beta = affine ? oracle.Random(c, DType.F32) : null;
        var y = CpuOracle.Poisoned(x.Length);
        fixed (float* px = x, py = y, pg = gamma, pb = beta)
            CpuNorms.LayerNorm(px, py, rows, c, pg, pb, 1e-5f);
        var want = torch.nn.functional.layer_norm(Oracle.T(x, rows, c), [c], gamma is null ? null : Oracle.T(gamma, c),
            beta is null ? null : Oracle.T(beta, c), 1e-5);
        CpuOracle.Check(oracle, "cpu_layer_norm", $"[{rows},{c}]{(affine ? "" : " no affine")}", y, want);
    }

    [Theory]
    [InlineData(5, 13, 1f)]
    [InlineData(9, 77, 0.125f)]
    [InlineData(3, 4096, 1f)]
    [InlineData(4, 1, 1f)]
    [InlineData(2, 33, -0.5f)]
    [InlineData(16, 1024, 0.158f)]
    public void Softmax_matches_libtorch(int rows, int c, float scale)
    {
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random((long)rows * c, DType.F32, 8f);
        var y = CpuOracle.Poisoned(x.Length);
        fixed (float* px = x, py = y) CpuSoftmax.Softmax(px, py, rows, c, scale);
        var want = torch.softmax(Oracle.T(x, rows, c) * scale, -1);
        CpuOracle.Check(oracle, "cpu_softmax", $"[{rows},{c}] scale {scale:g}", y, want);
    }

    [Fact]
    public void Softmax_handles_large_and_masked_logits()
    {
        var x = new float[] { 1000f, 999f, float.NegativeInfinity, -1000f, 0f, 5f, -3e4f, 1e4f, 3f, 2f, 1f, 0f, -1f, -2f, -3f, 88f, 89f };
        var y = new float[x.Length];
        fixed (float* px = x, py = y) CpuSoftmax.Softmax(px, py, 1, x.Length, 1f);
        var want = torch.softmax(Oracle.T(x, 1, x.Length), -1);
        CpuOracle.Check(oracle, "cpu_softmax", "extreme logits", y, want);
    }
}
