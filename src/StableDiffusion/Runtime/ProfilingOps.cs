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
    private readonly Dictionary<string, (int Calls, TimeSpan Time, double Flops)> shapes = [];

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

    /// <summary>
    /// Per shape of the arithmetic-heavy ops (linear, convolution, attention): calls, total time and floating-point
    /// operations (2 per multiply-add; attention counts QKᵀ and PV in full, causal or not), largest time first.
    /// </summary>
    public IReadOnlyList<(string Shape, int Calls, TimeSpan Time, double Flops)> ShapeEntries
    {
        get
        {
            lock (tally) return shapes.Select(kv => (kv.Key, kv.Value.Calls, kv.Value.Time, kv.Value.Flops)).OrderByDescending(e => e.Time).ToList();
        }
    }

    public void Reset()
    {
        lock (tally)
        {
            tally.Clear();
            shapes.Clear();
        }
    }

    private Tensor Time(string op, Func<Tensor> run, Func<Tensor, (string Shape, double Flops)>? shape = null)
    {
        Device.Synchronize();
        long t0 = Stopwatch.GetTimestamp();
        var y = run();
        Device.Synchronize();
        var dt = Stopwatch.GetElapsedTime(t0);
        var (name, flops) = shape?.Invoke(y) ?? default;
        lock (tally)
        {
            tally.TryGetValue(op, out var e);
            tally[op] = (e.Calls + 1, e.Time + dt);
            if (name is not null)
            {
                shapes.TryGetValue(name, out var s);
                shapes[name] = (s.Calls + 1, s.Time + dt, s.Flops + flops);
            }
        }
        return y;
    }

    public Tensor MatMul(Tensor a, Tensor b, bool transA = false, bool transB = false, float alpha = 1f, Tensor? bias = null, Tensor? residual = null) =>
        Time("matmul", () => Inner.MatMul(a, b, transA, transB, alpha, bias, residual));

    public Tensor Linear(Tensor x, Tensor weight, Tensor? bias = null, Tensor? residual = null) =>
        Time("linear", () => Inner.Linear(x, weight, bias, residual), y =>
        {
            int n = weight.Dim(0), k = weight.Dim(1);
            return ($"linear {y.Length / n}x{n}x{k}", 2.0 * y.Length * k);
        });

    public Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias = null, int stride = 1, int padding = 0, Tensor? residual = null) =>
        Time(ConvName(weight), () => Inner.Conv2d(x, weight, bias, stride, padding, residual), y => ConvShape(x, weight, stride, y));

    public Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias, int stride, int padTop, int padLeft, int padBottom, int padRight, Tensor? residual = null) =>
        Time(ConvName(weight), () => Inner.Conv2d(x, weight, bias, stride, padTop, padLeft, padBottom, padRight, residual), y => ConvShape(x, weight, stride, y));

    private static string ConvName(Tensor w) => w.Rank == 4 ? $"conv2d {w.Dim(1)}x{w.Dim(2)}" : "conv2d";

    // x [N, H, W, Cin], weight [Cout, KH, KW, Cin]: "conv3x3 2x64x64x960>320", " s2" when strided
    private static (string, double) ConvShape(Tensor x, Tensor w, int stride, Tensor y) =>
        x.Rank == 4 && w.Rank == 4
            ? ($"conv{w.Dim(1)}x{w.Dim(2)} {x.Dim(0)}x{x.Dim(1)}x{x.Dim(2)}x{x.Dim(3)}>{w.Dim(0)}{(stride > 1 ? $" s{stride}" : "")}",
               2.0 * y.Length * w.Dim(1) * w.Dim(2) * w.Dim(3))
            : default;

    public Tensor GroupNorm(Tensor x, int groups, Tensor? weight, Tensor? bias, float eps, bool silu = false) =>
        Time("group_norm", () => Inner.GroupNorm(x, groups, weight, bias, eps, silu));

    public Tensor LayerNorm(Tensor x, Tensor? weight, Tensor? bias, float eps) =>
        Time("layer_norm", () => Inner.LayerNorm(x, weight, bias, eps));

    public Tensor Softmax(Tensor x, float scale = 1f) => Time("softmax", () => Inner.Softmax(x, scale));

    public Tensor Attention(Tensor q, Tensor k, Tensor v, int heads, float? scale = null, bool causal = false) =>
        Time(q.Rank == 3 && k.Rank == 3 && q.Dim(1) == k.Dim(1) ? "attention (self)" : "attention (cross)",
            () => Inner.Attention(q, k, v, heads, scale, causal),
            _ => q.Rank == 3 && k.Rank == 3
                ? ($"attention {q.Dim(0)}x{heads}x{q.Dim(1)}x{k.Dim(1)}x{q.Dim(2) / heads}", 4.0 * q.Dim(0) * q.Dim(1) * k.Dim(1) * q.Dim(2))
                : default);

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
