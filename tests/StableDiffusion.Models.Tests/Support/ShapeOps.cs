using StableDiffusion.Runtime;

namespace StableDiffusion.Models.Tests;

/// <summary>
/// An <see cref="IOps"/> that computes nothing: every op checks its operands' shapes and returns an uninitialised
/// tensor of its output's shape from the device's pool. Running a full-size model through it costs no arithmetic,
/// yet proves the wiring at real shapes and gives the pool's exact peak for the model's real tensor lifetimes.
/// </summary>
internal sealed class ShapeOps(ComputeDevice device) : IOps
{
    public ComputeDevice Device { get; } = device;

    private Tensor New(DType dt, params int[] shape) => Tensor.Empty(Device, dt, shape);

    private static int[] With(ReadOnlySpan<int> shape, int last)
    {
        var s = shape.ToArray();
        s[^1] = last;
        return s;
    }

    private static void Require(bool ok, string what)
    {
        if (!ok) throw new KernelArgumentException("shape pass: " + what);
    }

    private static void SameShape(Tensor? r, int[] shape, string op) =>
        Require(r is null || r.Shape.SequenceEqual(shape), $"{op}: residual {r} is not [{string.Join(", ", shape)}]");

    public Tensor MatMul(Tensor a, Tensor b, bool transA = false, bool transB = false, float alpha = 1f, Tensor? bias = null, Tensor? residual = null)
    {
        int m = transA ? a.Dim(-1) : a.Dim(-2), k = transA ? a.Dim(-2) : a.Dim(-1);
        int kb = transB ? b.Dim(-1) : b.Dim(-2), n = transB ? b.Dim(-2) : b.Dim(-1);
        Require(k == kb, $"matmul {a} · {b}");
        int[] shape = a.Rank == 3 || b.Rank == 3 ? [a.Rank == 3 ? a.Dim(0) : b.Dim(0), m, n] : [m, n];
        SameShape(residual, shape, "matmul");
        return New(a.DType, shape);
    }

    public Tensor Linear(Tensor x, Tensor weight, Tensor? bias = null, Tensor? residual = null)
    {
        Require(x.Dim(-1) == weight.Dim(1), $"linear {x} by {weight}");
        var shape = With(x.Shape, weight.Dim(0));
        SameShape(residual, shape, "linear");
        return New(x.DType, shape);
    }

    public Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias = null, int stride = 1, int padding = 0, Tensor? residual = null) =>
        Conv2d(x, weight, bias, stride, padding, padding, padding, padding, residual);

    public Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias, int stride, int padTop, int padLeft, int padBottom, int padRight, Tensor? residual = null)
    {
        Require(x.Rank == 4 && weight.Rank == 4 && x.Dim(3) == weight.Dim(3), $"conv2d {x} by OHWI {weight}");
        Require(x.DType == weight.DType, $"conv2d {x} by {weight}: dtypes differ");
        int[] shape = [x.Dim(0), (x.Dim(1) + padTop + padBottom - weight.Dim(1)) / stride + 1,
            (x.Dim(2) + padLeft + padRight - weight.Dim(2)) / stride + 1, weight.Dim(0)];
        SameShape(residual, shape, "conv2d");
        return New(x.DType, shape);
    }

    public Tensor GroupNorm(Tensor x, int groups, Tensor? weight, Tensor? bias, float eps, bool silu = false)
    {
        Require(x.Dim(-1) % groups == 0 && (weight is null || weight.Dim(0) == x.Dim(-1)), $"group norm of {x} in {groups} groups");
        return New(x.DType, x.ShapeArray());
    }

    public Tensor LayerNorm(Tensor x, Tensor? weight, Tensor? bias, float eps) => New(x.DType, x.ShapeArray());

    public Tensor Softmax(Tensor x, float scale = 1f) => New(x.DType, x.ShapeArray());

    public Tensor Attention(Tensor q, Tensor k, Tensor v, int heads, float? scale = null, bool causal = false)
    {
        Require(q.Rank == 3 && k.Rank == 3 && v.Rank == 3 && q.Dim(2) % heads == 0 && k.Dim(1) == v.Dim(1), $"attention {q} {k} {v}");
        return New(q.DType, q.ShapeArray());
    }

    public Tensor Activate(Tensor x, Activation kind) => New(x.DType, x.ShapeArray());

    public Tensor Geglu(Tensor x, bool approximate = false) => New(x.DType, With(x.Shape, x.Dim(-1) / 2));

    public Tensor Binary(BinaryOp op, Tensor a, Tensor b)
    {
        Require(b.Rank <= a.Rank, $"{op} {a} with {b}");
        for (int i = 1; i <= b.Rank; i++) Require(b.Dim(-i) == a.Dim(-i) || b.Dim(-i) == 1, $"{op} {a} with {b}");
        return New(a.DType, a.ShapeArray());
    }

    public Tensor Scale(Tensor x, float alpha, float beta = 0f) => New(x.DType, x.ShapeArray());

    public Tensor Clamp(Tensor x, float lo, float hi) => New(x.DType, x.ShapeArray());

    public Tensor Upsample2x(Tensor x) => New(x.DType, x.Dim(0), 2 * x.Dim(1), 2 * x.Dim(2), x.Dim(3));

    public Tensor Concat(Tensor a, Tensor b) => New(a.DType, With(a.Shape, a.Dim(-1) + b.Dim(-1)));

    public Tensor SliceLast(Tensor x, int start, int length)
    {
        Require(start >= 0 && start + length <= x.Dim(-1), $"slice [{start}, {start + length}) of {x}");
        return New(x.DType, With(x.Shape, length));
    }

    public Tensor TimestepEmbedding(Tensor timesteps, int dim, DType dtype, bool flipSinToCos = true, float downscaleFreqShift = 0f, float maxPeriod = 10000f) =>
        New(dtype, timesteps.Dim(0), dim);

    public Tensor Embedding(Tensor table, Tensor ids) => New(table.DType, [.. ids.ShapeArray(), table.Dim(1)]);

    public Tensor Transpose(Tensor x)
    {
        var s = x.ShapeArray();
        (s[^1], s[^2]) = (s[^2], s[^1]);
        return New(x.DType, s);
    }

    public Tensor Cast(Tensor x, DType dtype) => New(dtype, x.ShapeArray());

    /// <summary>Gives every parameter of <paramref name="module"/> an uninitialised device tensor in its device layout.</summary>
    public void Bind(Module module, DType dt)
    {
        foreach (var (_, p) in module.NamedParameters())
        {
            var s = p.Shape.Select(d => (int)d).ToArray();
            p.Set(p.Layout == DeviceLayout.ConvOhwi ? Tensor.EmptyExact(Device, dt, s[0], s[2], s[3], s[1]) : Tensor.EmptyExact(Device, dt, s));
        }
        module.ComputeDType = dt;
    }
}
