using ILGPU;
using ILGPU.Runtime;
using StableDiffusion.Runtime;
using Half = ILGPU.Half;

namespace StableDiffusion.Kernels;

/// <summary>
/// Shape of a batched strided GEMM: C[b] (M x N) = Alpha * op(A[b]) (M x K) * op(B[b]) (K x N) + bias + residual.
/// Leading dimensions and batch strides are in elements; a batch stride of 0 broadcasts that operand.
/// </summary>
public record struct GemmSpec(int M, int N, int K)
{
    public int Batch { get; init; } = 1;
    public bool TransA { get; init; }
    public bool TransB { get; init; }
    public long Lda { get; init; } = -1;
    public long Ldb { get; init; } = -1;
    public long Ldc { get; init; } = -1;
    public long StrideA { get; init; } = -1;
    public long StrideB { get; init; } = -1;
    public long StrideC { get; init; } = -1;
    public float Alpha { get; init; } = 1f;

    /// <summary>Defaults: packed row-major leading dimensions and batch strides.</summary>
    public readonly GemmSpec Resolved() => this with
    {
        Lda = Lda >= 0 ? Lda : TransA ? M : K,
        Ldb = Ldb >= 0 ? Ldb : TransB ? K : N,
        Ldc = Ldc >= 0 ? Ldc : N,
        StrideA = StrideA >= 0 ? StrideA : (long)M * K,
        StrideB = StrideB >= 0 ? StrideB : (long)K * N,
        StrideC = StrideC >= 0 ? StrideC : (long)M * N,
    };
}

/// <summary>Tile variants of the GEMM, selectable for tests and benchmarks.</summary>
public enum GemmVariant
{
    Auto,
    /// <summary>fp16 mma.sync kernel (CUDA only; K-contiguous operands, K a multiple of 8).</summary>
    TensorCore,
    Tile128,
    Tile64,
    TileTest,
}

public static class Gemm
{
    public static void Run(KernelRuntime rt, GemmSpec spec, Tensor a, Tensor b, Tensor c,
        Tensor? bias = null, Tensor? residual = null, GemmVariant variant = GemmVariant.Auto)
    {
        var s = spec.Resolved();
        Validate(s, a, b, c, bias, residual);
        bool tensorCore = TensorCoreEligible(rt, s, a.DType, variant == GemmVariant.TensorCore, out var why);
        if (variant is GemmVariant.Auto or GemmVariant.TensorCore && tensorCore)
        {
            LaunchTensorCore(rt, s, a, b, c, bias, residual);
            return;
        }
        if (variant == GemmVariant.TensorCore)
            throw new KernelArgumentException($"gemm: the tensor-core kernel cannot run this problem: {why}");
        variant = Choose(rt, variant, s.M, s.N, s.Batch);
        if (a.DType == DType.F32) Launch<float, F32Elem>(rt, s, a, b, c, bias, residual, variant);
        else Launch<Half, F16Elem>(rt, s, a, b, c, bias, residual, variant);
    }

    internal static GemmVariant Choose(KernelRuntime rt, GemmVariant v, long m, long n, long batch)
    {
        if (v != GemmVariant.Auto) return v;
        return rt.Profile switch
        {
            KernelProfile.Test => GemmVariant.TileTest,
            KernelProfile.Portable => GemmVariant.Tile64,
            // 128x128 tiles only when they still give every multiprocessor two groups.
            _ => KernelMath.CeilDiv(m, 128) * KernelMath.CeilDiv(n, 128) * batch >= 2L * rt.Device.Accelerator.NumMultiprocessors
                ? GemmVariant.Tile128
                : GemmVariant.Tile64,
        };
    }

    /// <summary>
    /// Where the tensor-core kernels run: CUDA (chosen automatically), and the ILGPU CPU accelerator when asked for
    /// by name, which emulates their inline PTX (<see cref="PtxEmulator"/>) for the oracle tests — far too slow to
    /// be chosen automatically.
    /// </summary>
    internal static bool TensorCoreDevice(KernelRuntime rt, bool requested) =>
        rt.Device.Kind == DeviceKind.Cuda && rt.Profile == KernelProfile.Cuda || requested && rt.Device.Kind == DeviceKind.IlgpuCpu;

    /// <summary>The tensor-core path needs CUDA, fp16, A as M x K and B as N x K (both K-contiguous), 16-byte rows.</summary>
    internal static bool TensorCoreEligible(KernelRuntime rt, GemmSpec s, DType dtype, bool requested, out string why)
    {
        why = !TensorCoreDevice(rt, requested) ? "it needs a CUDA device (or the ILGPU CPU accelerator, which emulates it)"
            : dtype != DType.F16 ? "it needs fp16"
            : s.TransA || !s.TransB ? "it needs A as M x K and B as N x K"
            : s.K % 8 != 0 || s.Lda % 8 != 0 || s.Ldb % 8 != 0 || s.StrideA % 8 != 0 || s.StrideB % 8 != 0
                ? "K, the leading dimensions and batch strides must be multiples of 8"
            : "";
        return why.Length == 0;
    }

    private static void LaunchTensorCore(KernelRuntime rt, GemmSpec s, Tensor a, Tensor b, Tensor c, Tensor? bias, Tensor? residual)
    {
        var args = new TcGemmArgs<TcMatrix, TcMatrix>
        {
            A = new TcMatrix { Base = Address(a), BatchStride = s.StrideA, Ld = s.Lda, Rows = s.M },
            B = new TcMatrix { Base = Address(b), BatchStride = s.StrideB, Ld = s.Ldb, Rows = s.N },
            C = TcEpilogue.Of(Epilogue<Half, F16Elem>(c, s.StrideC, s.Ldc, s.Alpha, bias, residual), c, bias, residual),
            M = s.M,
            N = s.N,
            K = s.K,
        };
        LaunchMma(rt, "gemm_mma", s.M, s.N, s.Batch, args);
    }

    internal static long Address(Tensor t) => t.Bytes.LoadEffectiveAddressAsPtr().ToInt64();

    /// <summary>
    /// Launches a tensor-core GEMM with the configuration and split-K <see cref="KernelRuntime.PlanTensorCore"/> picks
    /// (the planner behind `sd kernels --plan`); split-K adds the deterministic reduction pass tc_split_reduce.
    /// </summary>
    internal static void LaunchMma<TA, TB>(KernelRuntime rt, string family, int m, int n, int batch,
        TcGemmArgs<TA, TB> args)
        where TA : struct, ITcOperand
        where TB : struct, ITcOperand
    {
        var plan = rt.PlanTensorCore(m, n, args.K, batch);
        if (plan.Config.LargeShared && !rt.AllowDynamicShared(MmaKernel<TA, TB, NativePtx>(plan.Config), plan.Config.SharedBytes))
        {
            if (rt.TensorCoreOverride is not null)
                throw new KernelArgumentException(
                    $"{family}: configuration {plan.Config.Name} needs {plan.Config.SharedBytes} bytes of shared memory, which this device refused");
            plan = rt.PlanTensorCore(m, n, args.K, batch); // re-planned without the > 48 KB configurations
        }
        var c = plan.Config;
        args.Splits = plan.SplitK;
        args.KTilesPerSplit = plan.KTilesPerSplit;
        long partials = plan.SplitK > 1 ? (long)plan.SplitK * batch * m * n : 0;
        if (plan.SplitK > 1) args.Work = rt.Workspace(partials);
        var grid = new Index3D(KernelMath.CeilDiv(n, c.BN), KernelMath.CeilDiv(m, c.BM), batch * plan.SplitK);
        var cfg = new KernelConfig(grid, new Index3D(c.Threads, 1, 1), SharedMemoryConfig.RequestDynamic<Int4>(c.SharedBytes / 16));
        try
        {
            rt.LaunchTensorCore(family, MmaKernel<TA, TB, NativePtx>(c), MmaKernel<TA, TB, EmulatedPtx>(c), cfg, args);
        }
        catch (Exception e) when (c.LargeShared && rt.TensorCoreOverride is null && rt.Device.Kind == DeviceKind.Cuda
                                  && e is not KernelArgumentException)
        {
            rt.RefuseLargeShared($"{e.GetType().Name}: {e.Message.Split('\n')[0]}");
            LaunchMma(rt, family, m, n, batch, args);
            return;
        }
        if (plan.SplitK == 1) return;
        var reduce = new TcSplitArgs { Work = args.Work, C = args.C, Batch = batch, M = m, N = n, Splits = plan.SplitK };
        long threads = (long)batch * m * KernelMath.CeilDiv(n, 8);
        rt.Launch("tc_split_reduce", GemmTensorCoreKernels.SplitReduce,
            new KernelConfig((int)KernelMath.CeilDiv(threads, 256), 256), reduce);
        rt.LastFamily = family;
    }

    internal static Action<TcGemmArgs<TA, TB>> MmaKernel<TA, TB, TIsa>(TcConfig c)
        where TA : struct, ITcOperand
        where TB : struct, ITcOperand
        where TIsa : struct, IPtxIsa => (c.BM, c.BN, c.Stages) switch
    {
        (128, 128, 3) => GemmTensorCoreKernels.Mma<Tc128x128, TA, TB, TIsa>,
        (128, 128, 4) => GemmTensorCoreKernels.Mma<Tc128x128S4, TA, TB, TIsa>,
        (128, 64, 3) => GemmTensorCoreKernels.Mma<Tc128x64, TA, TB, TIsa>,
        (64, 128, 3) => GemmTensorCoreKernels.Mma<Tc64x128, TA, TB, TIsa>,
        (64, 64, 3) => GemmTensorCoreKernels.Mma<Tc64x64, TA, TB, TIsa>,
        _ => throw new ArgumentOutOfRangeException(nameof(c), c.Name),
    };

    /// <summary>One catalog entry per tensor-core configuration of a kernel family (what the PTX report assembles).</summary>
    internal static IEnumerable<KernelEntry> MmaEntries<TA, TB>(string kernel)
        where TA : struct, ITcOperand
        where TB : struct, ITcOperand =>
        TcPlanner.Configs.Select(c => KernelRuntime.Entry(kernel, $"fp16 {c.Name} t{c.Threads}",
            MmaKernel<TA, TB, NativePtx>(c), c.SharedBytes, tensorCore: true));

    internal static (int Bm, int Bn, int Threads) TileShape(GemmVariant v) => v switch
    {
        GemmVariant.Tile128 => (128, 128, 256),
        GemmVariant.Tile64 => (64, 64, 64),
        GemmVariant.TileTest => (16, 16, 4),
        _ => throw new ArgumentOutOfRangeException(nameof(v)),
    };

    private static void Validate(GemmSpec s, Tensor a, Tensor b, Tensor c, Tensor? bias, Tensor? residual)
    {
        if (s.M <= 0 || s.N <= 0 || s.K <= 0 || s.Batch <= 0)
            throw new KernelArgumentException($"gemm: M, N, K and batch must be positive (M={s.M} N={s.N} K={s.K} batch={s.Batch})");
        if (!a.DType.IsFloat() || b.DType != a.DType || c.DType != a.DType)
            throw new KernelArgumentException($"gemm: A {a}, B {b} and C {c} must share one float dtype");
        if (s.Batch > 65535) throw new KernelArgumentException($"gemm: batch {s.Batch} exceeds 65535");
        // op(A) is M x K: stored M x K (lda >= K) or K x M (lda >= M).
        CheckMatrix("A", a, s.Batch, s.StrideA, s.TransA ? s.K : s.M, s.TransA ? s.M : s.K, s.Lda);
        CheckMatrix("B", b, s.Batch, s.StrideB, s.TransB ? s.N : s.K, s.TransB ? s.K : s.N, s.Ldb);
        CheckMatrix("C", c, s.Batch, s.StrideC, s.M, s.N, s.Ldc);
        if (s.StrideC == 0 && s.Batch > 1) throw new KernelArgumentException("gemm: C cannot be broadcast over the batch");
        if (bias is not null)
        {
            if (bias.DType != a.DType) throw new KernelArgumentException($"gemm: bias {bias} must be {a.DType.Name()}");
            if (bias.Length != s.N) throw new KernelArgumentException($"gemm: bias has {bias.Length} elements, N is {s.N}");
        }
        if (residual is not null)
        {
            if (residual.DType != a.DType) throw new KernelArgumentException($"gemm: residual {residual} must be {a.DType.Name()}");
            CheckMatrix("residual", residual, s.Batch, s.StrideC, s.M, s.N, s.Ldc);
        }
    }

    private static void CheckMatrix(string name, Tensor t, int batch, long batchStride, long rows, long cols, long ld)
    {
        if (ld < cols) throw new KernelArgumentException($"gemm: leading dimension of {name} ({ld}) is below its {cols} columns");
        if (batchStride < 0) throw new KernelArgumentException($"gemm: negative batch stride for {name}");
        long last = (batch - 1) * batchStride + (rows - 1) * ld + cols - 1;
        if (last >= t.Length)
            throw new KernelArgumentException(
                $"gemm: {name} {t} is too small for {batch} x {rows} x {cols} (ld {ld}, batch stride {batchStride})");
    }

    private static void Launch<T, TE>(KernelRuntime rt, GemmSpec s, Tensor a, Tensor b, Tensor c,
        Tensor? bias, Tensor? residual, GemmVariant v)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        var args = new GemmArgs<StridedOperand<T, TE>, StridedOperand<T, TE>, MatrixEpilogue<T, TE>>
        {
            // op(A)[m, k]: A[m*lda + k], or A[k*lda + m] when transposed.
            A = new StridedOperand<T, TE>
            {
                Data = a.View<T>(), BatchStride = s.StrideA,
                OuterStride = s.TransA ? 1 : s.Lda, KStride = s.TransA ? s.Lda : 1, KFastFlag = s.TransA ? 0 : 1,
            },
            // B seen as N x K: op(B)[k, n] is B[k*ldb + n], or B[n*ldb + k] when transposed.
            B = new StridedOperand<T, TE>
            {
                Data = b.View<T>(), BatchStride = s.StrideB,
                OuterStride = s.TransB ? s.Ldb : 1, KStride = s.TransB ? 1 : s.Ldb, KFastFlag = s.TransB ? 1 : 0,
            },
            C = Epilogue<T, TE>(c, s.StrideC, s.Ldc, s.Alpha, bias, residual),
            M = s.M,
            N = s.N,
            K = s.K,
        };
        LaunchTiled(rt, "gemm", v, s.M, s.N, s.Batch, args);
    }

    internal static MatrixEpilogue<T, TE> Epilogue<T, TE>(Tensor c, long strideC, long ldc, float alpha,
        Tensor? bias, Tensor? residual)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        return new MatrixEpilogue<T, TE>
        {
            C = c.View<T>(), BatchStrideC = strideC, Ldc = ldc, Alpha = alpha,
            Bias = bias is null ? c.View<T>() : bias.View<T>(), HasBias = bias is null ? 0 : 1,
            Residual = residual is null ? c.View<T>() : residual.View<T>(), HasResidual = residual is null ? 0 : 1,
            BatchStrideR = strideC, Ldr = ldc,
        };
    }

    internal static void LaunchTiled<TA, TB, TC>(KernelRuntime rt, string family, GemmVariant v, int m, int n, int batch,
        GemmArgs<TA, TB, TC> args)
        where TA : struct, IGemmOperand
        where TB : struct, IGemmOperand
        where TC : struct, IGemmEpilogue
    {
        var (bm, bn, threads) = TileShape(v);
        var grid = new Index3D(KernelMath.CeilDiv(n, bn), KernelMath.CeilDiv(m, bm), batch);
        var cfg = new KernelConfig(grid, new Index3D(threads, 1, 1));
        switch (v)
        {
            case GemmVariant.Tile128:
                rt.Launch(family, GemmKernels.TiledKernel<GemmTile128, TA, TB, TC>, cfg, args);
                break;
            case GemmVariant.Tile64:
                rt.Launch(family, GemmKernels.TiledKernel<GemmTile64, TA, TB, TC>, cfg, args);
                break;
            default:
                rt.Launch(family, GemmKernels.TiledKernel<GemmTileTest, TA, TB, TC>, cfg, args);
                break;
        }
    }

    internal static IEnumerable<KernelEntry> Entries()
    {
        foreach (var e in EntriesFor<float, F32Elem>("fp32")) yield return e;
        foreach (var e in EntriesFor<Half, F16Elem>("fp16")) yield return e;
        foreach (var e in MmaEntries<TcMatrix, TcMatrix>("gemm_mma")) yield return e;
        yield return KernelRuntime.Entry<TcSplitArgs>("tc_split_reduce", "fp32 partials → fp16 t256", GemmTensorCoreKernels.SplitReduce);
    }

    private static IEnumerable<KernelEntry> EntriesFor<T, TE>(string dt)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        yield return KernelRuntime.Entry<GemmArgs<StridedOperand<T, TE>, StridedOperand<T, TE>, MatrixEpilogue<T, TE>>>(
            "gemm_tiled", $"{dt} 128x128x8 t256",
            GemmKernels.TiledKernel<GemmTile128, StridedOperand<T, TE>, StridedOperand<T, TE>, MatrixEpilogue<T, TE>>);
        yield return KernelRuntime.Entry<GemmArgs<StridedOperand<T, TE>, StridedOperand<T, TE>, MatrixEpilogue<T, TE>>>(
            "gemm_tiled", $"{dt} 64x64x16 t64",
            GemmKernels.TiledKernel<GemmTile64, StridedOperand<T, TE>, StridedOperand<T, TE>, MatrixEpilogue<T, TE>>);
    }
}
