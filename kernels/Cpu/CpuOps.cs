using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels.Cpu;

/// <summary>
/// The C# CPU backend of <see cref="IOps"/>: the same ops as <see cref="IlgpuOps"/>, run as vectorized, multithreaded
/// C# on host memory. Tensors live in the buffers of an ILGPU CPU accelerator (plain native memory), so models, the
/// pool and uploads are shared with the GPU path unchanged. Compute is fp32: GEMM and convolution widen fp16 operands
/// while packing; the other ops widen fp16 inputs into fp32 scratch and round the result once.
/// </summary>
public sealed unsafe class CpuOps : IOps, IWeightPacker
{
    private delegate void FloatKernel(float*[] inputs, float* output);

    // Packed weights are made once per weight tensor and dropped with it.
    private readonly ConditionalWeakTable<Tensor, CpuPackedB> packed = new();

    public CpuOps(ComputeDevice device)
    {
        if (device.Accelerator is not CPUAccelerator)
            throw new DeviceException($"the C# CPU backend needs host memory; {device.Name} is a {ComputeDevice.KindName(device.Kind)} device");
        Device = device;
    }

    public ComputeDevice Device { get; }

    public IWeightPacker WeightPacker => this;

    public Tensor Pack(ReadOnlySpan<byte> src, DType srcType, int[] shape, bool oihw, DType dtype)
    {
        var (n, cin, taps) = WeightDims("pack", shape);
        CpuGemm.CheckFloat(srcType, "weight");
        long expect = (long)n * cin * taps * srcType.SizeInBytes();
        if (src.Length != expect)
            throw new KernelArgumentException($"pack: {src.Length} bytes for a {srcType.Name()} weight [{string.Join(", ", shape)}] of {expect} bytes");
        fixed (byte* s = src) return Packed(s, srcType, shape, n, cin, taps, oihw, dtype);
    }

    public Tensor Pack(Tensor weight, DType dtype)
    {
        Check("pack", weight);
        Float("pack", weight);
        var (n, cin, taps) = WeightDims("pack", weight.ShapeArray());
        return Packed(Ptr(weight), weight.DType, weight.ShapeArray(), n, cin, taps, oihw: false, dtype);
    }

    private Tensor Packed(void* src, DType srcType, int[] shape, int n, int cin, int taps, bool oihw, DType dtype)
    {
        CpuGemm.CheckFloat(dtype, "packed weight");
        var t = Tensor.EmptyPacked(Device, dtype, shape, CpuPackedB.BytesFor(dtype, n, cin * taps));
        try
        {
            t.SetPackedLayout(CpuGemm.PackWeightInto(src, srcType, n, cin, taps, oihw, (void*)t.PackedBytes.LoadEffectiveAddressAsPtr(), dtype));
            return t;
        }
        catch
        {
            t.Dispose();
            throw;
        }
    }

    /// <summary>Output rows, input channels and kernel taps of a [out, in] or OHWI [out, kh, kw, in] weight.</summary>
    private static (int N, int Cin, int Taps) WeightDims(string op, int[] shape)
    {
        if (shape.Length is not (2 or 4) || shape.Any(d => d < 1) || (long)shape[1] * (shape.Length == 4 ? (long)shape[2] * shape[3] : 1) > int.MaxValue)
            throw new KernelArgumentException($"{op}: a weight is [out, in] or [out, kh, kw, in], got [{string.Join(", ", shape)}]");
        return shape.Length == 2 ? (shape[0], shape[1], 1) : (shape[0], shape[3], shape[1] * shape[2]);
    }

    /// <summary>Where a tensor's first element lives in host memory.</summary>
    public static void* Ptr(Tensor t) => (void*)t.Bytes.LoadEffectiveAddressAsPtr();

    private static float* F(Tensor t) => (float*)Ptr(t);

    private static void* P(Tensor? t) => t is null ? null : Ptr(t);

    private static DType T(Tensor? t) => t?.DType ?? DType.F32;

    private void Check(string op, params Tensor?[] ts)
    {
        foreach (var t in ts)
        {
            if (t is null) continue;
            if (t.IsPacked && t.PackedLayout is not CpuPackedB)
                throw new KernelArgumentException($"{op}: tensor {t} is packed by another backend");
            if (!ReferenceEquals(t.Device, Device))
                throw new KernelArgumentException($"{op}: tensor {t} lives on another device than {Device.Name}");
            if (t.IsDisposed) throw new KernelArgumentException($"{op}: tensor {t} has been disposed");
        }
    }

    private static void Float(string op, params Tensor?[] ts)
    {
        foreach (var t in ts)
            if (t is not null && !t.DType.IsFloat())
                throw new KernelArgumentException($"{op}: expected fp32 or fp16, got {t}");
    }

    private static void SameType(string op, Tensor a, params Tensor?[] ts)
    {
        foreach (var t in ts)
            if (t is not null && t.DType != a.DType)
                throw new KernelArgumentException($"{op}: dtypes differ: {a} and {t}");
    }

    private Tensor Empty(DType dtype, params int[] shape) => Tensor.Empty(Device, dtype, shape);

    /// <summary>An fp32 view of <paramref name="t"/>: the tensor itself, or a widened copy the caller disposes.</summary>
    private Tensor? Widen(Tensor? t)
    {
        if (t is null || t.DType == DType.F32) return null;
        var w = Empty(DType.F32, t.ShapeArray());
        CpuLayout.HalfToFloat((ushort*)Ptr(t), F(w), t.Length);
        return w;
    }

    /// <summary>
    /// Runs an fp32 kernel: inputs widened where fp16, the output computed in fp32 and rounded to
    /// <paramref name="dtype"/> once.
    /// </summary>
    private Tensor Run(DType dtype, int[] shape, Tensor?[] inputs, FloatKernel kernel)
    {
        var wide = new Tensor?[inputs.Length];
        var y = Empty(dtype, shape);
        Tensor? y32 = null;
        try
        {
            var ptrs = new float*[inputs.Length];
            for (int i = 0; i < inputs.Length; i++)
            {
                wide[i] = Widen(inputs[i]);
                ptrs[i] = inputs[i] is null ? null : F(wide[i] ?? inputs[i]!);
            }
            if (dtype == DType.F32) kernel(ptrs, F(y));
            else
            {
                y32 = Empty(DType.F32, shape);
                kernel(ptrs, F(y32));
                CpuLayout.FloatToHalf(F(y32), (ushort*)Ptr(y), y.Length);
            }
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
        finally
        {
            y32?.Dispose();
            foreach (var w in wide) w?.Dispose();
        }
    }

    private Tensor Like(Tensor x, Tensor?[] inputs, FloatKernel kernel) => Run(x.DType, x.ShapeArray(), inputs, kernel);

    public Tensor MatMul(Tensor a, Tensor b, bool transA = false, bool transB = false, float alpha = 1f,
        Tensor? bias = null, Tensor? residual = null)
    {
        Check("matmul", a, b, bias, residual);
        Float("matmul", a, b, bias, residual);
        var mm = OpShapes.OfMatMul(a, b, transA, transB);
        if (bias is not null && (bias.Rank != 1 || bias.Dim(0) != mm.N))
            throw new KernelArgumentException($"matmul: bias {bias} must be [{mm.N}]");
        OpShapes.Residual("matmul", residual, mm.Output);
        var y = Empty(a.DType, mm.Output);
        return Gemm(y, new CpuGemmArgs
        {
            M = mm.M, N = mm.N, K = mm.K, Batch = mm.Batch, TransA = transA, TransB = transB, Alpha = alpha,
            A = Ptr(a), AType = a.DType, StrideA = mm.StrideA,
            B = Ptr(b), BType = b.DType, StrideB = mm.StrideB,
            Bias = P(bias), BiasType = T(bias), Residual = P(residual), ResidualType = T(residual),
        }, packedB: null);
    }

    public Tensor Linear(Tensor x, Tensor weight, Tensor? bias = null, Tensor? residual = null)
    {
        Check("linear", x, weight, bias, residual);
        Float("linear", x, weight, bias, residual);
        var (rows, output) = OpShapes.OfLinear(x, weight);
        int outF = weight.Dim(0), inF = weight.Dim(1);
        if (bias is not null && (bias.Rank != 1 || bias.Dim(0) != outF))
            throw new KernelArgumentException($"linear: bias {bias} must be [{outF}]");
        OpShapes.Residual("linear", residual, output);
        var y = Empty(x.DType, output);
        return Gemm(y, new CpuGemmArgs
        {
            M = rows, N = outF, K = inF, Batch = 1, TransA = false, TransB = true, Alpha = 1f,
            A = Ptr(x), AType = x.DType, B = null, BType = weight.DType,
            Bias = P(bias), BiasType = T(bias), Residual = P(residual), ResidualType = T(residual),
        }, PackedWeight(weight, outF, inF));
    }

    /// <summary>The weight's panels: its own when packed at load, else packed on first use and kept with the tensor.</summary>
    private CpuPackedB PackedWeight(Tensor weight, int n, int k) =>
        weight.PackedLayout as CpuPackedB ?? packed.GetValue(weight, w => CpuGemm.PackB(Ptr(w), w.DType, n, k, transB: true));

    private Tensor Gemm(Tensor y, CpuGemmArgs args, CpuPackedB? packedB)
    {
        try
        {
            args.C = Ptr(y);
            args.CType = y.DType;
            if (y.Length > 0)
            {
                if (packedB is null) CpuGemm.Run(in args);
                else CpuGemm.Run(in args, packedB);
            }
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
    }

    public Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias = null, int stride = 1, int padding = 0, Tensor? residual = null) =>
        Conv2d(x, weight, bias, stride, padding, padding, padding, padding, residual);

    public Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias, int stride, int padTop, int padLeft, int padBottom,
        int padRight, Tensor? residual = null)
    {
        Check("conv2d", x, weight, bias, residual);
        Float("conv2d", x, weight, bias, residual);
        if (x.Rank != 4 || weight.Rank != 4)
            throw new KernelArgumentException($"conv2d: expected NHWC input and OHWI weight, got {x} and {weight}");
        if (x.Dim(3) != weight.Dim(3))
            throw new KernelArgumentException($"conv2d: input {x} has {x.Dim(3)} channels, the weight {weight} takes {weight.Dim(3)}");
        if (bias is not null && (bias.Rank != 1 || bias.Dim(0) != weight.Dim(0)))
            throw new KernelArgumentException($"conv2d: bias {bias} must be [{weight.Dim(0)}]");
        if (stride < 1 || padTop < 0 || padLeft < 0 || padBottom < 0 || padRight < 0)
            throw new KernelArgumentException($"conv2d: stride {stride} and padding ({padTop}, {padLeft}, {padBottom}, {padRight}) must be positive and non-negative");
        var args = new CpuConvArgs
        {
            N = x.Dim(0), H = x.Dim(1), W = x.Dim(2), Cin = x.Dim(3), Cout = weight.Dim(0), KH = weight.Dim(1), KW = weight.Dim(2),
            Stride = stride, PadTop = padTop, PadLeft = padLeft, PadBottom = padBottom, PadRight = padRight,
            X = Ptr(x), XType = x.DType, Weight = null, WeightType = weight.DType,
            Bias = P(bias), BiasType = T(bias), Residual = P(residual), ResidualType = T(residual),
        };
        var (ho, wo) = CpuConv.OutputSize(in args);
        if (ho < 1 || wo < 1)
            throw new KernelArgumentException($"conv2d: kernel {weight.Dim(1)}x{weight.Dim(2)} (stride {stride}) does not fit input {x}");
        int[] output = [x.Dim(0), ho, wo, weight.Dim(0)];
        OpShapes.Residual("conv2d", residual, output);
        var y = Empty(x.DType, output);
        try
        {
            args.Y = Ptr(y);
            args.YType = y.DType;
            CpuConv.Run(in args, PackedWeight(weight, weight.Dim(0), weight.Dim(1) * weight.Dim(2) * weight.Dim(3)));
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
    }

    public Tensor GroupNorm(Tensor x, int groups, Tensor? weight, Tensor? bias, float eps, bool silu = false)
    {
        Check("group_norm", x, weight, bias);
        Float("group_norm", x, weight, bias);
        if (x.Rank < 2) throw new KernelArgumentException($"group_norm: input {x} must be [N, ..., C]");
        int n = x.Dim(0), c = x.Dim(-1);
        if (groups < 1 || c % groups != 0) throw new KernelArgumentException($"group_norm: {c} channels do not split into {groups} groups");
        ChannelVectors("group_norm", c, weight, bias);
        long spatial = x.Length / Math.Max(1L, (long)n * c);
        return Like(x, [x, weight, bias], (p, y) => CpuNorms.GroupNorm(p[0], y, n, spatial, c, groups, p[1], p[2], eps, silu));
    }

    public Tensor LayerNorm(Tensor x, Tensor? weight, Tensor? bias, float eps)
    {
        Check("layer_norm", x, weight, bias);
        Float("layer_norm", x, weight, bias);
        if (x.Rank < 1) throw new KernelArgumentException($"layer_norm: input {x} has no last dimension");
        int c = x.Dim(-1);
        ChannelVectors("layer_norm", c, weight, bias);
        return Like(x, [x, weight, bias], (p, y) => CpuNorms.LayerNorm(p[0], y, x.Length / Math.Max(1, c), c, p[1], p[2], eps));
    }

    private static void ChannelVectors(string op, int c, params Tensor?[] ts)
    {
        foreach (var t in ts)
            if (t is not null && (t.Rank != 1 || t.Dim(0) != c))
                throw new KernelArgumentException($"{op}: {t} must be [{c}], one value per channel");
    }

    public Tensor Softmax(Tensor x, float scale = 1f)
    {
        Check("softmax", x);
        Float("softmax", x);
        if (x.Rank < 1 || x.Dim(-1) < 1) throw new KernelArgumentException($"softmax: input {x} needs a non-empty last dimension");
        int cols = x.Dim(-1);
        return Like(x, [x], (p, y) => CpuSoftmax.Softmax(p[0], y, x.Length / cols, cols, scale));
    }

    public Tensor Attention(Tensor q, Tensor k, Tensor v, int heads, float? scale = null, bool causal = false)
    {
        Check("attention", q, k, v);
        Float("attention", q, k, v);
        SameType("attention", q, k, v);
        if (q.Rank != 3 || heads <= 0 || q.Dim(2) % heads != 0)
            throw new KernelArgumentException($"attention: q {q} must be [B, L, H*D] with {heads} heads");
        if (k.Rank != 3 || !k.Shape.SequenceEqual(v.Shape) || k.Dim(0) != q.Dim(0) || k.Dim(2) != q.Dim(2))
            throw new KernelArgumentException($"attention: k {k} and v {v} must both be [{q.Dim(0)}, Lk, {q.Dim(2)}]");
        int d = q.Dim(2) / heads;
        float s = scale ?? 1f / MathF.Sqrt(d);
        return Like(q, [q, k, v], (p, y) => CpuAttention.Attention(p[0], p[1], p[2], y, q.Dim(0), q.Dim(1), k.Dim(1), heads, d, s, causal));
    }

    public Tensor Activate(Tensor x, Activation kind)
    {
        Check("activation", x);
        Float("activation", x);
        if (!Enum.IsDefined(kind)) throw new KernelArgumentException($"activation: unknown kind {(int)kind}");
        return Like(x, [x], (p, y) => CpuPointwise.Activate(p[0], y, x.Length, kind));
    }

    public Tensor Geglu(Tensor x, bool approximate = false)
    {
        Check("geglu", x);
        Float("geglu", x);
        if (x.Rank < 1 || x.Dim(-1) % 2 != 0) throw new KernelArgumentException($"geglu: input {x} needs an even last dimension");
        var shape = x.ShapeArray();
        int c = shape[^1] /= 2;
        return Run(x.DType, shape, [x], (p, y) => CpuPointwise.Geglu(p[0], y, x.Length / (2L * Math.Max(1, c)), c, approximate));
    }

    public Tensor Binary(BinaryOp op, Tensor a, Tensor b)
    {
        Check("binary", a, b);
        Float("binary", a, b);
        SameType("binary", a, b);
        if (b.Rank > a.Rank) throw new KernelArgumentException($"binary: {b} cannot broadcast to {a}");
        for (int i = 1; i <= b.Rank; i++)
            if (b.Dim(-i) != 1 && b.Dim(-i) != a.Dim(-i))
                throw new KernelArgumentException($"binary: {b} cannot broadcast to {a}");
        if (!Enum.IsDefined(op)) throw new KernelArgumentException($"binary: unknown op {(int)op}");
        var aShape = a.ShapeArray();
        var bShape = b.ShapeArray();
        return Like(a, [a, b], (p, y) => CpuPointwise.Binary(op, p[0], p[1], y, aShape, bShape));
    }

    public Tensor Scale(Tensor x, float alpha, float beta = 0f)
    {
        Check("scale", x);
        Float("scale", x);
        return Like(x, [x], (p, y) => CpuPointwise.Scale(p[0], y, x.Length, alpha, beta));
    }

    public Tensor Clamp(Tensor x, float lo, float hi)
    {
        Check("clamp", x);
        Float("clamp", x);
        if (!(lo <= hi)) throw new KernelArgumentException($"clamp: lower bound {lo} is above the upper bound {hi}");
        return Like(x, [x], (p, y) => CpuPointwise.Clamp(p[0], y, x.Length, lo, hi));
    }

    // Data movement copies fp16 as it is: widening and rounding back is exact, so go through fp32 for one code path.
    public Tensor Upsample2x(Tensor x)
    {
        Check("upsample2x", x);
        Float("upsample2x", x);
        if (x.Rank != 4) throw new KernelArgumentException($"upsample2x: expected NHWC input, got {x}");
        return Run(x.DType, [x.Dim(0), 2 * x.Dim(1), 2 * x.Dim(2), x.Dim(3)], [x],
            (p, y) => CpuLayout.Upsample2x(p[0], y, x.Dim(0), x.Dim(1), x.Dim(2), x.Dim(3)));
    }

    public Tensor Concat(Tensor a, Tensor b)
    {
        Check("concat", a, b);
        Float("concat", a, b);
        SameType("concat", a, b);
        if (a.Rank < 1 || b.Rank != a.Rank) throw new KernelArgumentException($"concat: ranks differ: {a} and {b}");
        for (int i = 0; i < a.Rank - 1; i++)
            if (a.Dim(i) != b.Dim(i)) throw new KernelArgumentException($"concat: {a} and {b} differ before the last dimension");
        var shape = a.ShapeArray();
        shape[^1] += b.Dim(-1);
        long rows = a.Dim(-1) > 0 ? a.Length / a.Dim(-1) : b.Length / Math.Max(1, b.Dim(-1));
        return Run(a.DType, shape, [a, b], (p, y) => CpuLayout.Concat(p[0], p[1], y, rows, a.Dim(-1), b.Dim(-1)));
    }

    public Tensor SliceLast(Tensor x, int start, int length)
    {
        Check("slice", x);
        Float("slice", x);
        if (x.Rank < 1 || length < 0 || start < 0 || start + length > x.Dim(-1))
            throw new KernelArgumentException($"slice: [{start}, {start + length}) is not inside the last dimension of {x}");
        var shape = x.ShapeArray();
        shape[^1] = length;
        return Run(x.DType, shape, [x], (p, y) => CpuLayout.SliceLast(p[0], y, x.Length / Math.Max(1, x.Dim(-1)), x.Dim(-1), start, length));
    }

    public Tensor TimestepEmbedding(Tensor timesteps, int dim, DType dtype, bool flipSinToCos = true,
        float downscaleFreqShift = 0f, float maxPeriod = 10000f)
    {
        Check("timestep_embedding", timesteps);
        if (timesteps.Rank != 1 || timesteps.DType != DType.F32 || dim < 2 || !dtype.IsFloat())
            throw new KernelArgumentException($"timestep_embedding: need fp32 timesteps [N], dim >= 2 and a float dtype (got {timesteps}, {dim})");
        int n = timesteps.Dim(0);
        return Run(dtype, [n, dim], [timesteps],
            (p, y) => CpuLayout.TimestepEmbedding(p[0], y, n, dim, flipSinToCos, downscaleFreqShift, maxPeriod));
    }

    public Tensor Embedding(Tensor table, Tensor ids)
    {
        Check("embedding", table, ids);
        Float("embedding", table);
        if (table.Rank != 2) throw new KernelArgumentException($"embedding: table must be [V, C], got {table}");
        if (ids.DType != DType.I32) throw new KernelArgumentException($"embedding: ids must be int32, got {ids}");
        int[] shape = [.. ids.ShapeArray(), table.Dim(1)];
        return Run(table.DType, shape, [table],
            (p, y) => CpuLayout.Embedding(p[0], (int*)Ptr(ids), y, ids.Length, table.Dim(0), table.Dim(1)));
    }

    public Tensor Transpose(Tensor x)
    {
        Check("transpose", x);
        Float("transpose", x);
        if (x.Rank < 2) throw new KernelArgumentException($"transpose: input {x} needs rank 2 or more");
        var shape = x.ShapeArray();
        (shape[^1], shape[^2]) = (shape[^2], shape[^1]);
        int r = x.Dim(-2), c = x.Dim(-1);
        long batch = (long)r * c == 0 ? 0 : x.Length / ((long)r * c);
        return Run(x.DType, shape, [x], (p, y) => CpuLayout.Transpose(p[0], y, batch, r, c));
    }

    public Tensor Cast(Tensor x, DType dtype)
    {
        Check("cast", x);
        Float("cast", x);
        if (!dtype.IsFloat()) throw new KernelArgumentException($"cast: cannot cast {x} to {dtype.Name()}");
        return Run(dtype, x.ShapeArray(), [x], (p, y) => Buffer.MemoryCopy(p[0], y, x.Length * 4L, x.Length * 4L));
    }
}
