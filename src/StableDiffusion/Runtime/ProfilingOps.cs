using System.Diagnostics;

namespace StableDiffusion.Runtime;

/// <summary>
/// An <see cref="IOps"/> that runs every op on an inner backend and adds its time, device-synchronised, to a per-op
/// tally (<c>sd generate --profile</c>). Synchronising after each op costs the overlap a GPU would otherwise have, so
/// a profiled run is slower than a plain one; the shares between op families are what it is for.
/// </summary>
public sealed class ProfilingOps(IOps inner) : IOps
{
    private readonly Dictionary<string, (int Calls, TimeSpan Time)> tally = [];

    public IOps Inner { get; } = inner;
    public ComputeDevice Device => Inner.Device;
    public IWeightPacker? WeightPacker => Inner.WeightPacker;

    /// <summary>Per op: calls and total time, largest first.</summary>
    public IReadOnlyList<(string Op, int Calls, TimeSpan Time)> Entries
    {
        get
        {
            lock (tally) return tally.Select(kv => (kv.Key, kv.Value.Calls, kv.Value.Time)).OrderByDescending(e => e.Time).ToList();
        }
    }

    public void Reset()
    {
        lock (tally) tally.Clear();
    }

    private Tensor Time(string op, Func<Tensor> run)
    {
        Device.Synchronize();
        long t0 = Stopwatch.GetTimestamp();
        var y = run();
        Device.Synchronize();
        var dt = Stopwatch.GetElapsedTime(t0);
        lock (tally)
        {
            tally.TryGetValue(op, out var e);
            tally[op] = (e.Calls + 1, e.Time + dt);
        }
        return y;
    }

    public Tensor MatMul(Tensor a, Tensor b, bool transA = false, bool transB = false, float alpha = 1f, Tensor? bias = null, Tensor? residual = null) =>
        Time("matmul", () => Inner.MatMul(a, b, transA, transB, alpha, bias, residual));

    public Tensor Linear(Tensor x, Tensor weight, Tensor? bias = null, Tensor? residual = null) =>
        Time("linear", () => Inner.Linear(x, weight, bias, residual));

    public Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias = null, int stride = 1, int padding = 0, Tensor? residual = null) =>
        Time(ConvName(weight), () => Inner.Conv2d(x, weight, bias, stride, padding, residual));

    public Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias, int stride, int padTop, int padLeft, int padBottom, int padRight, Tensor? residual = null) =>
        Time(ConvName(weight), () => Inner.Conv2d(x, weight, bias, stride, padTop, padLeft, padBottom, padRight, residual));

    private static string ConvName(Tensor w) => w.Rank == 4 ? $"conv2d {w.Dim(1)}x{w.Dim(2)}" : "conv2d";

    public Tensor GroupNorm(Tensor x, int groups, Tensor? weight, Tensor? bias, float eps, bool silu = false) =>
        Time("group_norm", () => Inner.GroupNorm(x, groups, weight, bias, eps, silu));

    public Tensor LayerNorm(Tensor x, Tensor? weight, Tensor? bias, float eps) =>
        Time("layer_norm", () => Inner.LayerNorm(x, weight, bias, eps));

    public Tensor Softmax(Tensor x, float scale = 1f) => Time("softmax", () => Inner.Softmax(x, scale));

    public Tensor Attention(Tensor q, Tensor k, Tensor v, int heads, float? scale = null, bool causal = false) =>
        Time(q.Rank == 3 && k.Rank == 3 && q.Dim(1) == k.Dim(1) ? "attention (self)" : "attention (cross)",
            () => Inner.Attention(q, k, v, heads, scale, causal));

    public Tensor Activate(Tensor x, Activation kind) => Time("activation", () => Inner.Activate(x, kind));

    public Tensor Geglu(Tensor x, bool approximate = false) => Time("geglu", () => Inner.Geglu(x, approximate));

    public Tensor Binary(BinaryOp op, Tensor a, Tensor b) => Time("add/mul", () => Inner.Binary(op, a, b));

    public Tensor Scale(Tensor x, float alpha, float beta = 0f) => Time("scale/clamp", () => Inner.Scale(x, alpha, beta));

    public Tensor Clamp(Tensor x, float lo, float hi) => Time("scale/clamp", () => Inner.Clamp(x, lo, hi));

    public Tensor Upsample2x(Tensor x) => Time("upsample/concat/slice", () => Inner.Upsample2x(x));

    public Tensor Concat(Tensor a, Tensor b) => Time("upsample/concat/slice", () => Inner.Concat(a, b));

    public Tensor SliceLast(Tensor x, int start, int length) => Time("upsample/concat/slice", () => Inner.SliceLast(x, start, length));

    public Tensor TimestepEmbedding(Tensor timesteps, int dim, DType dtype, bool flipSinToCos = true, float downscaleFreqShift = 0f, float maxPeriod = 10000f) =>
        Time("embedding", () => Inner.TimestepEmbedding(timesteps, dim, dtype, flipSinToCos, downscaleFreqShift, maxPeriod));

    public Tensor Embedding(Tensor table, Tensor ids) => Time("embedding", () => Inner.Embedding(table, ids));

    public Tensor Transpose(Tensor x) => Time("transpose/cast", () => Inner.Transpose(x));

    public Tensor Cast(Tensor x, DType dtype) => Time("transpose/cast", () => Inner.Cast(x, dtype));
}
