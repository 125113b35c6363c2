using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels;

/// <summary>The ILGPU backend of <see cref="IOps"/>: allocates outputs from the pool and calls the launchers.</summary>
public sealed class IlgpuOps : IOps
{
    public IlgpuOps(ComputeDevice device, KernelProfile? profile = null) => Runtime = new KernelRuntime(device, profile);

    public IlgpuOps(KernelRuntime runtime) => Runtime = runtime;

    public KernelRuntime Runtime { get; }
    public ComputeDevice Device => Runtime.Device;

    private Tensor Empty(DType dtype, params int[] shape) => Tensor.Empty(Device, dtype, shape);

    /// <summary>Runs <paramref name="launch"/> into a new tensor, giving the tensor back if the launch is refused.</summary>
    private Tensor Into(Tensor y, Action<Tensor> launch)
    {
        try
        {
            launch(y);
            return y;
        }
        catch
        {
            y.Dispose();
            throw;
        }
    }

    private void SameDevice(params Tensor?[] ts)
    {
        foreach (var t in ts)
        {
            if (t is null) continue;
            if (!ReferenceEquals(t.Device, Device))
                throw new KernelArgumentException($"tensor {t} lives on another device than {Device.Name}");
            if (t.DType == DType.F16 && !Device.SupportsFp16)
                throw new DeviceException($"{Device.Name} cannot run fp16 kernels (the OpenCL device lacks cl_khr_fp16); use fp32");
        }
    }

    public Tensor MatMul(Tensor a, Tensor b, bool transA = false, bool transB = false, float alpha = 1f,
        Tensor? bias = null, Tensor? residual = null)
    {
        SameDevice(a, b, bias, residual);
        var mm = OpShapes.OfMatMul(a, b, transA, transB);
        OpShapes.Residual("matmul", residual, mm.Output);
        var y = Empty(a.DType, mm.Output);
        var spec = new GemmSpec(mm.M, mm.N, mm.K)
        {
            Batch = mm.Batch, TransA = transA, TransB = transB, Alpha = alpha, StrideA = mm.StrideA, StrideB = mm.StrideB,
        };
        return Into(y, t => Gemm.Run(Runtime, spec, a, b, t, bias, residual));
    }

    public Tensor Linear(Tensor x, Tensor weight, Tensor? bias = null, Tensor? residual = null)
    {
        SameDevice(x, weight, bias, residual);
        var (rows, output) = OpShapes.OfLinear(x, weight);
        OpShapes.Residual("linear", residual, output);
        var y = Empty(x.DType, output);
        var spec = new GemmSpec(rows, weight.Dim(0), weight.Dim(1)) { TransB = true };
        return Into(y, t => Gemm.Run(Runtime, spec, x, weight, t, bias, residual));
    }

    public Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias = null, int stride = 1, int padding = 0, Tensor? residual = null) =>
        Conv2d(x, weight, bias, stride, padding, padding, padding, padding, residual);

    public Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias, int stride, int padTop, int padLeft, int padBottom,
        int padRight, Tensor? residual = null)
    {
        SameDevice(x, weight, bias, residual);
        if (x.Rank != 4 || weight.Rank != 4)
            throw new KernelArgumentException($"conv2d: expected NHWC input and OHWI weight, got {x} and {weight}");
        var padding = new Padding2d(padTop, padLeft, padBottom, padRight);
        int ho = Kernels.Conv2d.OutSize(x.Dim(1), weight.Dim(1), stride, padTop, padBottom);
        int wo = Kernels.Conv2d.OutSize(x.Dim(2), weight.Dim(2), stride, padLeft, padRight);
        if (ho < 1 || wo < 1 || stride < 1)
            throw new KernelArgumentException($"conv2d: kernel {weight.Dim(1)}x{weight.Dim(2)} (stride {stride}, padding {padding}) does not fit input {x}");
        var y = Empty(x.DType, x.Dim(0), ho, wo, weight.Dim(0));
        return Into(y, t => Kernels.Conv2d.Run(Runtime, x, weight, bias, t, stride, padding, residual));
    }

    public Tensor GroupNorm(Tensor x, int groups, Tensor? weight, Tensor? bias, float eps, bool silu = false)
    {
        SameDevice(x, weight, bias);
        return Into(Empty(x.DType, x.ShapeArray()), t => Norms.GroupNorm(Runtime, x, t, groups, weight, bias, eps, silu));
    }

    public Tensor LayerNorm(Tensor x, Tensor? weight, Tensor? bias, float eps)
    {
        SameDevice(x, weight, bias);
        return Into(Empty(x.DType, x.ShapeArray()), t => Norms.LayerNorm(Runtime, x, t, weight, bias, eps));
    }

    public Tensor Softmax(Tensor x, float scale = 1f)
    {
        SameDevice(x);
        return Into(Empty(x.DType, x.ShapeArray()), t => Kernels.Softmax.Run(Runtime, x, t, scale));
    }

    public Tensor Attention(Tensor q, Tensor k, Tensor v, int heads, float? scale = null, bool causal = false)
    {
        SameDevice(q, k, v);
        if (q.Rank != 3 || heads <= 0 || q.Dim(2) % heads != 0)
            throw new KernelArgumentException($"attention: q {q} must be [B, L, H*D] with {heads} heads");
        int d = q.Dim(2) / heads;
        var y = Empty(q.DType, q.ShapeArray());
        return Into(y, t => Kernels.Attention.Run(Runtime, q, k, v, t, heads, scale ?? 1f / MathF.Sqrt(d), causal));
    }

    public Tensor Activate(Tensor x, Activation kind)
    {
        SameDevice(x);
        return Into(Empty(x.DType, x.ShapeArray()), t => Activations.Run(Runtime, kind, x, t));
    }

    public Tensor Geglu(Tensor x, bool approximate = false)
    {
        SameDevice(x);
        if (x.Rank < 1 || x.Dim(-1) % 2 != 0) throw new KernelArgumentException($"geglu: input {x} needs an even last dimension");
        var shape = x.ShapeArray();
        shape[^1] /= 2;
        return Into(Empty(x.DType, shape), t => Activations.Geglu(Runtime, x, t, approximate));
    }

    public Tensor Binary(BinaryOp op, Tensor a, Tensor b)
    {
        SameDevice(a, b);
        return Into(Empty(a.DType, a.ShapeArray()), t => Elementwise.Binary(Runtime, op, a, b, t));
    }

    public Tensor Scale(Tensor x, float alpha, float beta = 0f)
    {
        SameDevice(x);
        return Into(Empty(x.DType, x.ShapeArray()), t => Elementwise.Affine(Runtime, x, t, alpha, beta));
    }

    public Tensor Clamp(Tensor x, float lo, float hi)
    {
        SameDevice(x);
        return Into(Empty(x.DType, x.ShapeArray()), t => Elementwise.Affine(Runtime, x, t, 1f, 0f, lo, hi));
    }

    public Tensor Upsample2x(Tensor x)
    {
        SameDevice(x);
        if (x.Rank != 4) throw new KernelArgumentException($"upsample2x: expected NHWC input, got {x}");
        return Into(Empty(x.DType, x.Dim(0), 2 * x.Dim(1), 2 * x.Dim(2), x.Dim(3)), t => Resample.Upsample2x(Runtime, x, t));
    }

    public Tensor Concat(Tensor a, Tensor b)
    {
        SameDevice(a, b);
        if (a.Rank < 1 || b.Rank != a.Rank) throw new KernelArgumentException($"concat: ranks differ: {a} and {b}");
        var shape = a.ShapeArray();
        shape[^1] += b.Dim(-1);
        return Into(Empty(a.DType, shape), t => Resample.Concat(Runtime, a, b, t));
    }

    public Tensor SliceLast(Tensor x, int start, int length)
    {
        SameDevice(x);
        if (x.Rank < 1 || length < 0) throw new KernelArgumentException($"slice: bad input {x} or length {length}");
        var shape = x.ShapeArray();
        shape[^1] = length;
        return Into(Empty(x.DType, shape), t => Resample.SliceLast(Runtime, x, t, start));
    }

    public Tensor TimestepEmbedding(Tensor timesteps, int dim, DType dtype, bool flipSinToCos = true,
        float downscaleFreqShift = 0f, float maxPeriod = 10000f)
    {
        SameDevice(timesteps);
        if (dtype == DType.F16 && !Device.SupportsFp16)
            throw new DeviceException($"{Device.Name} cannot run fp16 kernels (the OpenCL device lacks cl_khr_fp16); use fp32");
        if (timesteps.Rank != 1 || dim < 2 || !dtype.IsFloat())
            throw new KernelArgumentException($"timestep_embedding: need fp32 timesteps [N], dim >= 2 and a float dtype (got {timesteps}, {dim})");
        return Into(Empty(dtype, timesteps.Dim(0), dim),
            t => Embeddings.Timestep(Runtime, timesteps, t, flipSinToCos, downscaleFreqShift, maxPeriod));
    }

    public Tensor Embedding(Tensor table, Tensor ids)
    {
        SameDevice(table, ids);
        if (table.Rank != 2) throw new KernelArgumentException($"embedding: table must be [V, C], got {table}");
        int[] shape = [.. ids.ShapeArray(), table.Dim(1)];
        return Into(Empty(table.DType, shape), t => Embeddings.Gather(Runtime, table, ids, t));
    }

    public Tensor Transpose(Tensor x)
    {
        SameDevice(x);
        if (x.Rank < 2) throw new KernelArgumentException($"transpose: input {x} needs rank 2 or more");
        var shape = x.ShapeArray();
        (shape[^1], shape[^2]) = (shape[^2], shape[^1]);
        return Into(Empty(x.DType, shape), t => Layout.Transpose(Runtime, x, t));
    }

    public Tensor Cast(Tensor x, DType dtype)
    {
        SameDevice(x);
        if (dtype == DType.F16 && !Device.SupportsFp16)
            throw new DeviceException($"{Device.Name} cannot run fp16 kernels (the OpenCL device lacks cl_khr_fp16); use fp32");
        return Into(Empty(dtype, x.ShapeArray()), t => Elementwise.Cast(Runtime, x, t));
    }
}
