using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels.Cpu;

/// <summary>Arguments of <see cref="CpuGemm.Run(in CpuGemmArgs)"/>: C = Alpha·op(A)·op(B) + bias + residual.</summary>
public unsafe struct CpuGemmArgs
{
    public int M, N, K, Batch;          // Batch >= 1
    public bool TransA, TransB;         // A stored [K, M] when TransA else [M, K]; B stored [N, K] when TransB else [K, N]
    public float Alpha;
    public void* A; public DType AType; public long StrideA;   // elements between batch items; 0 = shared
    public void* B; public DType BType; public long StrideB;
    public void* Bias; public DType BiasType;                 // [N] or null
    public void* Residual; public DType ResidualType;         // [Batch, M, N] or null
    public void* C; public DType CType;                       // [Batch, M, N]
}

/// <summary>
/// A constant B operand (weights) packed once into the micro-kernel's panel layout: panel j holds columns
/// [j·NR, j·NR+NR) of op(B) as K rows of NR values (zero-padded past N), in fp32 or fp16. fp32 panels are read by the
/// micro-kernel in place; fp16 panels (weights kept in their checkpoint's dtype) are widened per task into a
/// per-worker fp32 copy of the columns it computes, which that task reuses over many rows.
/// </summary>
public sealed unsafe class CpuPackedB : IDisposable
{
    private void* data;
    private readonly bool ownsMemory;

    internal CpuPackedB(void* data, DType dtype, int n, int k, int nr, bool ownsMemory, bool halfFinite = false)
    {
        this.data = data;
        this.ownsMemory = ownsMemory;
        DType = dtype;
        N = n;
        K = k;
        Nr = nr;
        HalfFinite = halfFinite;
    }

    public DType DType { get; }
    public int N { get; }
    public int K { get; }
    internal int Nr { get; }

    /// <summary>fp16 panels without infinities or NaNs, which the GEMM widens with the shorter finite-only conversion.</summary>
    internal bool HalfFinite { get; }
    public long Bytes => BytesFor(DType, N, K);

    /// <summary>The size of op(B) [K, N] packed in <paramref name="dtype"/>: N rounded up to whole panels.</summary>
    public static long BytesFor(DType dtype, int n, int k) => (long)(n + CpuGemm.NR - 1) / CpuGemm.NR * CpuGemm.NR * k * dtype.SizeInBytes();

    internal float* Data => DType == DType.F32 ? (float*)Live : throw new InvalidOperationException("fp16 panels");

    internal ushort* HalfData => DType == DType.F16 ? (ushort*)Live : throw new InvalidOperationException("fp32 panels");

    private void* Live => data != null ? data : throw new ObjectDisposedException(nameof(CpuPackedB));

    public void Dispose()
    {
        Free();
        GC.SuppressFinalize(this);
    }

    ~CpuPackedB() => Free();

    private void Free()
    {
        var d = data;
        data = null;
        if (d != null && ownsMemory) NativeMemory.AlignedFree(d);
    }
}

/// <summary>
/// fp32 GEMM for the CPU backend, GotoBLAS style: B is packed into NR-wide panels (whole K), A into MR-row panels per
/// KC slice, and a register-tiled micro-kernel (6×32 on AVX-512, 6×16 on AVX2+FMA, scalar otherwise) accumulates a
/// task's MC×NC tile in an fp32 scratch tile; alpha, bias, residual and the fp16 rounding happen once, in the store.
/// </summary>
public static unsafe class CpuGemm
{
    internal const int MR = 6;
    internal static readonly int KC = Env("SD_CPU_KC", 384);      // K slice upper bound; slices are balanced
    internal static readonly int MCMax = Env("SD_CPU_MC", 96) / MR * MR;
    internal static readonly int NCMax = Env("SD_CPU_NC", 512) / 32 * 32;

    private static int Env(string name, int fallback) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), out int v) && v > 0 ? v : fallback;
    internal static readonly int NR = Vector512.IsHardwareAccelerated ? 32 : 16;

    private const long PackedBGroupBytes = 256L << 20;

    /// <summary>fp16 panels: how many floats of widened panels a task may hold (whole K × its columns), per worker.</summary>
    internal static readonly long WidenedFloats = Env("SD_CPU_WIDEN_KB", 8192) * 256L;

    /// <summary>
    /// fp16 panels known to be finite are widened with the short conversion (<see cref="CpuLayout.HalfToFloatFiniteRange"/>);
    /// false makes every widening take the general one. Both give the same bits; the switch is for benchmarks.
    /// </summary>
    public static bool FiniteWidening { get; set; } = true;

    public static void Run(in CpuGemmArgs p)
    {
        Validate(p, needB: true);
        var a = ASource.Dense(p);
        Execute(ref a, p, null);
    }

    /// <summary>Run with a B operand packed by <see cref="PackB"/>; p.B, BType, StrideB and TransB are ignored.</summary>
    public static void Run(in CpuGemmArgs p, CpuPackedB packedB)
    {
        ArgumentNullException.ThrowIfNull(packedB);
        Validate(p, needB: false);
        if (packedB.N != p.N || packedB.K != p.K)
            throw new KernelArgumentException($"cpu gemm: packed B is {packedB.K}x{packedB.N} (KxN), the call needs {p.K}x{p.N}");
        var a = ASource.Dense(p);
        Execute(ref a, p, packedB);
    }

    /// <summary>Packs op(B) (stored [N, K] when transB else [K, N]) for repeated use as a constant operand.</summary>
    public static CpuPackedB PackB(void* b, DType t, int n, int k, bool transB)
    {
        if (b == null) throw new KernelArgumentException("cpu gemm: PackB needs a B pointer");
        CheckFloat(t, "B");
        if (n < 1 || k < 1) throw new KernelArgumentException($"cpu gemm: PackB needs n, k >= 1 (got n={n}, k={k})");
        int nr = NR;
        long panels = (n + nr - 1) / nr;
        var data = (float*)NativeMemory.AlignedAlloc((nuint)(panels * nr * k * sizeof(float)), 64);
        PackBInto(b, t, transB, n, k, 1, 0, data);
        return new CpuPackedB(data, DType.F32, n, k, nr, ownsMemory: true);
    }

    /// <summary>
    /// Packs a weight of <paramref name="n"/> output rows into <paramref name="dst"/> (<see cref="CpuPackedB.BytesFor"/>
    /// bytes) as <paramref name="dstType"/> panels of op(B) = Wᵀ, converting from <paramref name="srcType"/> on the way.
    /// Row r of src holds K = cin·taps values: as [cin, taps] (a PyTorch OIHW convolution weight, taps = kh·kw) when
    /// <paramref name="tapsInner"/>, else as [taps, cin] (OHWI, or a linear weight with taps = 1). Packed column
    /// index k is tap·cin + ci either way, the order the implicit-GEMM convolution gathers its input in.
    /// </summary>
    public static CpuPackedB PackWeightInto(void* src, DType srcType, int n, int cin, int taps, bool tapsInner, void* dst, DType dstType)
    {
        if (src == null || dst == null) throw new KernelArgumentException("cpu gemm: PackWeightInto needs source and destination");
        CheckFloat(srcType, "weight");
        CheckFloat(dstType, "packed weight");
        if (n < 1 || cin < 1 || taps < 1 || (long)cin * taps > int.MaxValue)
            throw new KernelArgumentException($"cpu gemm: bad weight shape (n={n}, cin={cin}, taps={taps})");
        int k = cin * taps, nr = NR, panels = (n + nr - 1) / nr;
        int ses = srcType.SizeInBytes(), des = dstType.SizeInBytes();
        int workers = (int)Math.Clamp((long)n * k >> 18, 1, Math.Min(CpuParallel.Threads, panels));
        int nonFinite = 0;
        CpuParallel.For(workers, w =>
        {
            var row = new float[k];
            fixed (float* r = row)
                for (int jp = w; jp < panels; jp += workers)
                {
                    byte* d = (byte*)dst + (long)jp * k * nr * des;
                    for (int c = 0; c < nr; c++)
                    {
                        int o = jp * nr + c;
                        if (o >= n)
                        {
                            for (int kk = 0; kk < k; kk++) Half16.Write(d, dstType, (long)kk * nr + c, 0f);
                            continue;
                        }
                        byte* s = (byte*)src + (long)o * k * ses;
                        if (srcType == dstType && !tapsInner)
                        {
                            // same dtype, same order: move the bits (exact for every value, NaN payloads included)
                            if (des == 2) for (int kk = 0; kk < k; kk++) ((ushort*)d)[(long)kk * nr + c] = ((ushort*)s)[kk];
                            else for (int kk = 0; kk < k; kk++) ((float*)d)[(long)kk * nr + c] = ((float*)s)[kk];
                            continue;
                        }
                        if (srcType == dstType && des == 2)
                        {
                            ushort* hs = (ushort*)s;
                            for (int ci = 0; ci < cin; ci++)
                                for (int t = 0; t < taps; t++) ((ushort*)d)[((long)t * cin + ci) * nr + c] = hs[(long)ci * taps + t];
                            continue;
                        }
                        Half16.Load(s, srcType, r, k);
                        for (int kk = 0; kk < k; kk++)
                        {
                            int t = kk / cin, ci = kk - t * cin;
                            float v = tapsInner ? r[(long)ci * taps + t] : r[kk];
                            Half16.Write(d, dstType, (long)kk * nr + c, v);
                        }
                    }
                    if (des == 2 && CpuLayout.AnyHalfNonFinite((ushort*)d, (long)k * nr)) Volatile.Write(ref nonFinite, 1);
                }
        });
        return new CpuPackedB(dst, dstType, n, k, nr, ownsMemory: false, halfFinite: des == 2 && nonFinite == 0);
    }

    /// <summary>Scalar reference: double accumulation, no blocking. For tests.</summary>
    public static void Reference(in CpuGemmArgs p)
    {
        Validate(p, needB: true);
        for (int bt = 0; bt < p.Batch; bt++)
            for (int i = 0; i < p.M; i++)
                for (int j = 0; j < p.N; j++)
                {
                    double s = 0;
                    for (int k = 0; k < p.K; k++)
                    {
                        long ai = bt * p.StrideA + (p.TransA ? (long)k * p.M + i : (long)i * p.K + k);
                        long bi = bt * p.StrideB + (p.TransB ? (long)j * p.K + k : (long)k * p.N + j);
                        s += (double)Half16.Read(p.A, p.AType, ai) * Half16.Read(p.B, p.BType, bi);
                    }
                    long ci = ((long)bt * p.M + i) * p.N + j;
                    double v = p.Alpha * s;
                    if (p.Bias != null) v += Half16.Read(p.Bias, p.BiasType, j);
                    if (p.Residual != null) v += Half16.Read(p.Residual, p.ResidualType, ci);
                    Half16.Write(p.C, p.CType, ci, (float)v);
                }
    }

    internal static void CheckFloat(DType t, string what)
    {
        if (t is not (DType.F32 or DType.F16))
            throw new KernelArgumentException($"cpu gemm: {what} must be fp32 or fp16, got {t.Name()}");
    }

    private static void Validate(in CpuGemmArgs p, bool needB)
    {
        if (p.M < 1 || p.N < 1 || p.K < 1 || p.Batch < 1)
            throw new KernelArgumentException($"cpu gemm: M, N, K, Batch must be >= 1 (got M={p.M} N={p.N} K={p.K} Batch={p.Batch})");
        if (p.A == null || p.C == null || (needB && p.B == null))
            throw new KernelArgumentException("cpu gemm: A, B and C must not be null");
        if (p.StrideA < 0 || p.StrideB < 0)
            throw new KernelArgumentException($"cpu gemm: batch strides must be >= 0 (got {p.StrideA}, {p.StrideB})");
        if (!float.IsFinite(p.Alpha))
            throw new KernelArgumentException($"cpu gemm: alpha must be finite (got {p.Alpha})");
        CheckFloat(p.AType, "A");
        if (needB) CheckFloat(p.BType, "B");
        CheckFloat(p.CType, "C");
        if (p.Bias != null) CheckFloat(p.BiasType, "bias");
        if (p.Residual != null) CheckFloat(p.ResidualType, "residual");
        if ((long)p.Batch * p.M * p.N > long.MaxValue / 8)
            throw new KernelArgumentException("cpu gemm: output too large");
    }

    // ---- driver ------------------------------------------------------------------------------------------------

    internal static void Execute(ref ASource a, in CpuGemmArgs p, CpuPackedB? packed)
    {
        int nr = packed?.Nr ?? NR;
        long panels = (p.N + nr - 1) / nr;
        long itemFloats = panels * nr * p.K;
        var job = new Job
        {
            A = a, M = p.M, N = p.N, K = p.K, Nr = nr, Alpha = p.Alpha,
            Bias = p.Bias, BiasType = p.BiasType, Residual = p.Residual, ResidualType = p.ResidualType,
            C = p.C, CType = p.CType,
        };
        if (p.Residual != null)
        {
            long cBytes = (long)p.Batch * p.M * p.N * (p.CType == DType.F16 ? 2 : 4);
            long rBytes = (long)p.Batch * p.M * p.N * (p.ResidualType == DType.F16 ? 2 : 4);
            job.ResidualOverlapsC = (byte*)p.Residual < (byte*)p.C + cBytes && (byte*)p.C < (byte*)p.Residual + rBytes;
        }
        if (packed is { DType: DType.F16 })
        {
            job.BHalf = packed.HalfData;
            job.BHalfFinite = packed.HalfFinite && FiniteWidening;
            job.PlanHalf(p.Batch);
            job.RunTasks();
            GC.KeepAlive(packed);
            return;
        }
        if (packed != null)
        {
            job.BPacked = packed.Data;
            job.BItemStride = 0;
            job.Plan(0, p.Batch);
            job.RunTasks();
            GC.KeepAlive(packed);
            return;
        }
        bool shared = p.StrideB == 0 || p.Batch == 1;
        int group = shared ? p.Batch : (int)Math.Clamp(PackedBGroupBytes / (itemFloats * sizeof(float)), 1, p.Batch);
        long bufFloats = (shared ? 1 : group) * itemFloats;
        var buf = ScratchBuffer.Rent(bufFloats);
        try
        {
            job.BPacked = buf.Ptr;
            job.BItemStride = shared ? 0 : itemFloats;
            for (int b0 = 0; b0 < p.Batch; b0 += group)
            {
                int count = Math.Min(group, p.Batch - b0);
                if (shared)
                {
                    if (b0 == 0) PackBInto(p.B, p.BType, p.TransB, p.N, p.K, 1, 0, buf.Ptr);
                }
                else
                {
                    void* src = (byte*)p.B + b0 * p.StrideB * (p.BType == DType.F16 ? 2 : 4);
                    PackBInto(src, p.BType, p.TransB, p.N, p.K, count, p.StrideB, buf.Ptr);
                }
                job.Plan(b0, count);
                job.RunTasks();
            }
        }
        finally
        {
            ScratchBuffer.Return(buf);
        }
    }

    /// <summary>
    /// C[b] = A[b]·B[b] for b &lt; batch: fp32 A [batch, m, k] row-major, B as fp32 whole-K panels (PackBInto's layout,
    /// item after item), C [batch, m, n]. No checks: for kernels that lay out their own operands.
    /// </summary>
    internal static void RunPanels(float* a, float* bPanels, float* c, int batch, int m, int n, int k)
    {
        var job = new Job
        {
            A = new ASource { Kind = ASource.DenseKind, Ptr = a, Type = DType.F32, Stride = (long)m * k, M = m, K = k },
            M = m, N = n, K = k, Nr = NR, Alpha = 1f, C = c, CType = DType.F32,
            BPacked = bPanels, BItemStride = (long)(n + NR - 1) / NR * NR * k,
        };
        job.Plan(0, batch);
        job.RunTasks();
    }

    /// <summary>One call's work: tasks are (batch item, MC row block, NC column block) tiles pulled by the workers.</summary>
    private sealed class Job
    {
        public ASource A;
        public int M, N, K, Nr;
        public float Alpha;
        public float* BPacked;
        public ushort* BHalf;       // fp16 panels, widened per task (PlanHalf)
        public bool BHalfFinite;    // ... holding no infinities or NaNs
        public long BItemStride;
        public void* Bias, Residual, C;
        public DType BiasType, ResidualType, CType;

        public bool ResidualOverlapsC;
        private int batch0, batchCount, mc, nc, mBlocks, nBlocks, taskCount, next;
        private int mGroups, mPerGroup; // fp16 panels: a task is (item, column block, group of row blocks)

        /// <summary>
        /// Tasks for fp16 panels: each widens its columns' panels once (whole K) and runs them over a group of row
        /// blocks, so the conversion is paid once per group rather than once per MC rows. Rows split into groups
        /// first; columns split below NC only when even one row block per task leaves workers idle, since every
        /// column block packs A again (for a convolution, the im2col gather).
        /// </summary>
        public void PlanHalf(int count)
        {
            batch0 = 0;
            batchCount = count;
            int want = 4 * CpuParallel.Threads;
            int npad = (N + Nr - 1) / Nr * Nr;
            int budget = (int)Math.Max(Nr, WidenedFloats / K / Nr * Nr);
            nc = Math.Min(Math.Min(npad, NCMax), budget);
            mc = Math.Min((M + MR - 1) / MR * MR, MCMax);
            mBlocks = (M + mc - 1) / mc;
            nBlocks = (N + nc - 1) / nc;
            while ((long)batchCount * nBlocks * mBlocks < want && nc > Nr)
            {
                nc = (nc / 2 + Nr - 1) / Nr * Nr;
                nBlocks = (N + nc - 1) / nc;
            }
            int groups = Math.Clamp((want + batchCount * nBlocks - 1) / (batchCount * nBlocks), 1, mBlocks);
            mPerGroup = (mBlocks + groups - 1) / groups;
            mGroups = (mBlocks + mPerGroup - 1) / mPerGroup;
            taskCount = batchCount * nBlocks * mGroups;
            next = 0;
        }

        public void Plan(int b0, int count)
        {
            batch0 = b0;
            batchCount = count;
            int want = 4 * CpuParallel.Threads;
            int npad = (N + Nr - 1) / Nr * Nr;
            nc = Math.Min(npad, NCMax);
            mc = Math.Min((M + MR - 1) / MR * MR, MCMax);
            Count();
            while (taskCount < want && nc > Nr) { nc = (nc / 2 + Nr - 1) / Nr * Nr; Count(); }
            while (taskCount < want && mc > MR) { mc = (mc / 2 + MR - 1) / MR * MR; Count(); }
            next = 0;
        }

        private void Count()
        {
            mBlocks = (M + mc - 1) / mc;
            nBlocks = (N + nc - 1) / nc;
            taskCount = batchCount * mBlocks * nBlocks;
        }

        public void RunTasks()
        {
            // a worker per ~4 MFLOP at least: waking threads costs more than small products gain
            long flops = 2L * batchCount * M * N * K;
            int workers = (int)Math.Clamp(flops >> 22, 1, Math.Min(CpuParallel.Threads, taskCount));
            CpuParallel.For(workers, _ =>
            {
                var ws = Workspace.Rent();
                try
                {
                    int t;
                    while ((t = Interlocked.Increment(ref next) - 1) < taskCount)
                        if (BHalf != null) RunHalfTask(t, ws);
                        else RunTask(t, ws);
                }
                finally
                {
                    Workspace.Return(ws);
                }
            });
        }

        private void RunTask(int t, Workspace ws)
        {
            int per = mBlocks * nBlocks;
            int bi = t / per, r = t % per;
            int mb = r / nBlocks, nb = r % nBlocks;
            float* bItem = BPacked + (BItemStride == 0 ? 0 : bi * BItemStride);
            int n0 = nb * nc;
            RunTile(batch0 + bi, mb * mc, n0, bItem + (long)(n0 / Nr) * K * Nr, ws);
        }

        private void RunHalfTask(int t, Workspace ws)
        {
            int per = nBlocks * mGroups;
            int bi = t / per, r = t % per;
            int nb = r / mGroups, g = r % mGroups;
            int n0 = nb * nc, cols = Math.Min(nc, N - n0);
            long floats = (long)(cols + Nr - 1) / Nr * Nr * K;
            float* panels = ws.Widened(floats);
            if (BHalfFinite) CpuLayout.HalfToFloatFiniteRange(BHalf + (long)(n0 / Nr) * K * Nr, panels, floats);
            else CpuLayout.HalfToFloatRange(BHalf + (long)(n0 / Nr) * K * Nr, panels, floats);
            int mbEnd = Math.Min(mBlocks, (g + 1) * mPerGroup);
            for (int mb = g * mPerGroup; mb < mbEnd; mb++) RunTile(batch0 + bi, mb * mc, n0, panels, ws);
        }

        /// <summary>C[b, m0.., n0..] (mc × nc at most) from the whole-K panels of columns n0.. at <paramref name="bPanels"/>.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void RunTile(int b, int m0, int n0, float* bPanels, Workspace ws)
        {
            int rows = Math.Min(mc, M - m0);
            int cols = Math.Min(nc, N - n0);
            int nr = Nr;
            int mPanels = (rows + MR - 1) / MR;
            int nPanels = (cols + nr - 1) / nr;
            int ldt = nPanels * nr;
            float* tile = ws.Tile;
            int kSlices = (K + KC - 1) / KC;
            int kcStep = (K + kSlices - 1) / kSlices;
            // fp32 A [M, K] is read in place; fp32 C is accumulated in place (full tiles) unless the residual aliases it
            bool directA = A.Kind == ASource.DenseKind && A.Type == DType.F32;
            bool directC = CType == DType.F32 && !ResidualOverlapsC;
            int fullRows = directC ? rows / MR * MR : 0, fullCols = directC ? cols / nr * nr : 0;
            float* aItem = (float*)A.Ptr + b * A.Stride + (long)m0 * K;
            float* cBlock = (float*)C + ((long)b * M + m0) * N + n0;
            for (int pc = 0; pc < K; pc += kcStep)
            {
                int kc = Math.Min(kcStep, K - pc);
                int packedFrom = directA ? rows / MR * MR : 0;
                if (packedFrom < rows) A.Pack(b, m0 + packedFrom, rows - packedFrom, pc, kc, ws.APack);
                bool acc = pc > 0;
                for (int ip = 0; ip < mPanels; ip++)
                {
                    int r0 = ip * MR;
                    float* ap;
                    long lda;
                    if (r0 < packedFrom) { ap = aItem + (long)r0 * K + pc; lda = K; }
                    else { ap = ws.APack + (long)(r0 - packedFrom) * kc; lda = kc; }
                    for (int jp = 0; jp < nPanels; jp++)
                    {
                        float* bp = bPanels + ((long)jp * K + pc) * nr;
                        int c0 = jp * nr;
                        if (r0 < fullRows && c0 < fullCols) MicroKernel(ap, lda, bp, kc, cBlock + (long)r0 * N + c0, N, acc);
                        else MicroKernel(ap, lda, bp, kc, tile + (long)r0 * ldt + c0, ldt, acc);
                    }
                }
            }
            if (fullRows > 0 && fullCols > 0 && (Alpha != 1 || Bias != null || Residual != null))
                Epilogue.Store(cBlock, N, fullRows, fullCols, b, m0, n0, M, N, Alpha, Bias, BiasType, Residual, ResidualType, C, CType);
            if (fullCols < cols)
                Epilogue.Store(tile + fullCols, ldt, fullRows, cols - fullCols, b, m0, n0 + fullCols, M, N, Alpha, Bias, BiasType, Residual, ResidualType, C, CType);
            if (fullRows < rows)
                Epilogue.Store(tile + (long)fullRows * ldt, ldt, rows - fullRows, cols, b, m0 + fullRows, n0, M, N, Alpha, Bias, BiasType, Residual, ResidualType, C, CType);
        }
    }

    // ---- B packing ---------------------------------------------------------------------------------------------

    /// <summary>Packs `count` batch items of op(B) into NR-wide, whole-K panels at dst (item stride panels·NR·K).</summary>
    internal static void PackBInto(void* b, DType t, bool transB, int n, int k, int count, long strideB, float* dst)
    {
        int nr = NR;
        int panels = (n + nr - 1) / nr;
        long itemFloats = (long)panels * nr * k;
        int es = t == DType.F16 ? 2 : 4;
        int tasks = count * panels;
        int workers = (int)Math.Clamp(itemFloats * count >> 17, 1, Math.Min(CpuParallel.Threads, tasks));
        CpuParallel.For(workers, w =>
        {
            var ws = Workspace.Rent();
            float** rp = stackalloc float*[8];
            try
            {
                for (int task = w; task < tasks; task += workers)
                {
                    int item = task / panels, jp = task % panels;
                    byte* src = (byte*)b + item * strideB * es;
                    float* d = dst + item * itemFloats + (long)jp * k * nr;
                    int c0 = jp * nr, cols = Math.Min(nr, n - c0);
                    if (!transB)
                    {
                        for (int kk = 0; kk < k; kk++)
                        {
                            float* row = d + (long)kk * nr;
                            Half16.Load(src + ((long)kk * n + c0) * es, t, row, cols);
                            for (int c = cols; c < nr; c++) row[c] = 0;
                        }
                    }
                    else
                    {
                        float* tmp = ws.RowTmp;
                        for (int kb = 0; kb < k; kb += KC)
                        {
                            int kl = Math.Min(KC, k - kb);
                            for (int cg = 0; cg < nr; cg += 8)
                            {
                                float* o = d + (long)kb * nr + cg;
                                for (int i = 0; i < 8; i++)
                                    rp[i] = cg + i < cols
                                        ? Half16.View(src + ((long)(c0 + cg + i) * k + kb) * es, t, tmp + (long)i * KC, kl)
                                        : ws.Zero;
                                int kk = 0;
                                if (Avx.IsSupported)
                                    for (; kk + 8 <= kl; kk += 8) Transpose8x8(rp, kk, o + (long)kk * nr, nr);
                                for (; kk < kl; kk++)
                                    for (int i = 0; i < 8; i++) o[(long)kk * nr + i] = rp[i][kk];
                            }
                        }
                    }
                }
            }
            finally
            {
                Workspace.Return(ws);
            }
        });
    }

    /// <summary>dst[j·ld + i] = rows[i][k0 + j] for an 8×8 block (column j of the rows becomes output row j).</summary>
    private static void Transpose8x8(float** rows, int k0, float* dst, long ld)
    {
        var r0 = Avx.LoadVector256(rows[0] + k0); var r1 = Avx.LoadVector256(rows[1] + k0);
        var r2 = Avx.LoadVector256(rows[2] + k0); var r3 = Avx.LoadVector256(rows[3] + k0);
        var r4 = Avx.LoadVector256(rows[4] + k0); var r5 = Avx.LoadVector256(rows[5] + k0);
        var r6 = Avx.LoadVector256(rows[6] + k0); var r7 = Avx.LoadVector256(rows[7] + k0);
        var t0 = Avx.UnpackLow(r0, r1); var t1 = Avx.UnpackHigh(r0, r1);
        var t2 = Avx.UnpackLow(r2, r3); var t3 = Avx.UnpackHigh(r2, r3);
        var t4 = Avx.UnpackLow(r4, r5); var t5 = Avx.UnpackHigh(r4, r5);
        var t6 = Avx.UnpackLow(r6, r7); var t7 = Avx.UnpackHigh(r6, r7);
        var u0 = Avx.Shuffle(t0, t2, 0x44); var u1 = Avx.Shuffle(t0, t2, 0xEE);
        var u2 = Avx.Shuffle(t1, t3, 0x44); var u3 = Avx.Shuffle(t1, t3, 0xEE);
        var u4 = Avx.Shuffle(t4, t6, 0x44); var u5 = Avx.Shuffle(t4, t6, 0xEE);
        var u6 = Avx.Shuffle(t5, t7, 0x44); var u7 = Avx.Shuffle(t5, t7, 0xEE);
        Avx.Store(dst, Avx.Permute2x128(u0, u4, 0x20));
        Avx.Store(dst + ld, Avx.Permute2x128(u1, u5, 0x20));
        Avx.Store(dst + 2 * ld, Avx.Permute2x128(u2, u6, 0x20));
        Avx.Store(dst + 3 * ld, Avx.Permute2x128(u3, u7, 0x20));
        Avx.Store(dst + 4 * ld, Avx.Permute2x128(u0, u4, 0x31));
        Avx.Store(dst + 5 * ld, Avx.Permute2x128(u1, u5, 0x31));
        Avx.Store(dst + 6 * ld, Avx.Permute2x128(u2, u6, 0x31));
        Avx.Store(dst + 7 * ld, Avx.Permute2x128(u3, u7, 0x31));
    }

    // ---- micro-kernels -----------------------------------------------------------------------------------------

    /// <summary>c[MR×NR] (=|+=) a[MR rows, stride lda]·b-panel[kc×NR]; full tiles only (panels are zero-padded).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void MicroKernel(float* a, long lda, float* b, int kc, float* c, long ldc, bool acc)
    {
        if (Vector512.IsHardwareAccelerated) Kernel6x32(a, lda, b, kc, c, ldc, acc);
        else if (Vector256.IsHardwareAccelerated && Fma.IsSupported) Kernel6x16(a, lda, b, kc, c, ldc, acc);
        else KernelScalar(a, lda, b, kc, c, ldc, acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel6x32(float* a, long lda, float* b, int kc, float* c, long ldc, bool acc)
    {
        float* a0 = a, a1 = a + lda, a2 = a1 + lda, a3 = a2 + lda, a4 = a3 + lda, a5 = a4 + lda;
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector512<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int k = 0; k < kc; k++)
        {
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            var av = Vector512.Create(a0[k]);
            c00 = Vector512.FusedMultiplyAdd(av, b0, c00);
            c01 = Vector512.FusedMultiplyAdd(av, b1, c01);
            av = Vector512.Create(a1[k]);
            c10 = Vector512.FusedMultiplyAdd(av, b0, c10);
            c11 = Vector512.FusedMultiplyAdd(av, b1, c11);
            av = Vector512.Create(a2[k]);
            c20 = Vector512.FusedMultiplyAdd(av, b0, c20);
            c21 = Vector512.FusedMultiplyAdd(av, b1, c21);
            av = Vector512.Create(a3[k]);
            c30 = Vector512.FusedMultiplyAdd(av, b0, c30);
            c31 = Vector512.FusedMultiplyAdd(av, b1, c31);
            av = Vector512.Create(a4[k]);
            c40 = Vector512.FusedMultiplyAdd(av, b0, c40);
            c41 = Vector512.FusedMultiplyAdd(av, b1, c41);
            av = Vector512.Create(a5[k]);
            c50 = Vector512.FusedMultiplyAdd(av, b0, c50);
            c51 = Vector512.FusedMultiplyAdd(av, b1, c51);
            b += 32;
        }
        if (acc)
        {
            c00 += Vector512.Load(c); c01 += Vector512.Load(c + 16); c += ldc;
            c10 += Vector512.Load(c); c11 += Vector512.Load(c + 16); c += ldc;
            c20 += Vector512.Load(c); c21 += Vector512.Load(c + 16); c += ldc;
            c30 += Vector512.Load(c); c31 += Vector512.Load(c + 16); c += ldc;
            c40 += Vector512.Load(c); c41 += Vector512.Load(c + 16); c += ldc;
            c50 += Vector512.Load(c); c51 += Vector512.Load(c + 16);
            c -= 5 * ldc;
        }
        c00.Store(c); c01.Store(c + 16); c += ldc;
        c10.Store(c); c11.Store(c + 16); c += ldc;
        c20.Store(c); c21.Store(c + 16); c += ldc;
        c30.Store(c); c31.Store(c + 16); c += ldc;
        c40.Store(c); c41.Store(c + 16); c += ldc;
        c50.Store(c); c51.Store(c + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel6x16(float* a, long lda, float* b, int kc, float* c, long ldc, bool acc)
    {
        float* a0 = a, a1 = a + lda, a2 = a1 + lda, a3 = a2 + lda, a4 = a3 + lda, a5 = a4 + lda;
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector256<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int k = 0; k < kc; k++)
        {
            var b0 = Vector256.Load(b);
            var b1 = Vector256.Load(b + 8);
            var av = Vector256.Create(a0[k]);
            c00 = Fma.MultiplyAdd(av, b0, c00);
            c01 = Fma.MultiplyAdd(av, b1, c01);
            av = Vector256.Create(a1[k]);
            c10 = Fma.MultiplyAdd(av, b0, c10);
            c11 = Fma.MultiplyAdd(av, b1, c11);
            av = Vector256.Create(a2[k]);
            c20 = Fma.MultiplyAdd(av, b0, c20);
            c21 = Fma.MultiplyAdd(av, b1, c21);
            av = Vector256.Create(a3[k]);
            c30 = Fma.MultiplyAdd(av, b0, c30);
            c31 = Fma.MultiplyAdd(av, b1, c31);
            av = Vector256.Create(a4[k]);
            c40 = Fma.MultiplyAdd(av, b0, c40);
            c41 = Fma.MultiplyAdd(av, b1, c41);
            av = Vector256.Create(a5[k]);
            c50 = Fma.MultiplyAdd(av, b0, c50);
            c51 = Fma.MultiplyAdd(av, b1, c51);
            b += 16;
        }
        if (acc)
        {
            c00 += Vector256.Load(c); c01 += Vector256.Load(c + 8); c += ldc;
            c10 += Vector256.Load(c); c11 += Vector256.Load(c + 8); c += ldc;
            c20 += Vector256.Load(c); c21 += Vector256.Load(c + 8); c += ldc;
            c30 += Vector256.Load(c); c31 += Vector256.Load(c + 8); c += ldc;
            c40 += Vector256.Load(c); c41 += Vector256.Load(c + 8); c += ldc;
            c50 += Vector256.Load(c); c51 += Vector256.Load(c + 8);
            c -= 5 * ldc;
        }
        c00.Store(c); c01.Store(c + 8); c += ldc;
        c10.Store(c); c11.Store(c + 8); c += ldc;
        c20.Store(c); c21.Store(c + 8); c += ldc;
        c30.Store(c); c31.Store(c + 8); c += ldc;
        c40.Store(c); c41.Store(c + 8); c += ldc;
        c50.Store(c); c51.Store(c + 8);
    }

    private static void KernelScalar(float* a, long lda, float* b, int kc, float* c, long ldc, bool acc)
    {
        const int nr = 16; // NR when Vector512 is not accelerated
        float* t = stackalloc float[MR * nr];
        for (int i = 0; i < MR * nr; i++) t[i] = 0;
        for (int k = 0; k < kc; k++, b += nr)
            for (int i = 0; i < MR; i++)
            {
                float av = a[i * lda + k];
                float* ti = t + i * nr;
                for (int j = 0; j < nr; j++) ti[j] += av * b[j];
            }
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < nr; j++)
                c[i * ldc + j] = acc ? c[i * ldc + j] + t[i * nr + j] : t[i * nr + j];
    }
}

/// <summary>Where A's rows come from: a dense (optionally transposed) matrix, or the virtual im2col matrix of a conv.</summary>
internal unsafe struct ASource
{
    public const int DenseKind = 0, TransKind = 1, ConvKind = 2;
    public int Kind;
    public void* Ptr;
    public DType Type;
    public long Stride;   // elements between batch items
    public int M, K;
    // conv (Kind == ConvKind); rows are (n, oh, ow), columns (kh, kw, ci)
    public int H, W, Cin, KW, ConvStride, PadTop, PadLeft, Hout, Wout;

    public static ASource Dense(in CpuGemmArgs p) => new()
    {
        Kind = p.TransA ? TransKind : DenseKind, Ptr = p.A, Type = p.AType, Stride = p.StrideA, M = p.M, K = p.K,
    };

    /// <summary>
    /// Rows [m0, m0+rows) × columns [pc, pc+kc) of batch item b as fp32 row-major [rows rounded up to MR, kc] at dst
    /// (padding rows zero): the micro-kernel reads MR rows at stride kc, so packing is a gather, not an interleave.
    /// </summary>
    public readonly void Pack(int b, int m0, int rows, int pc, int kc, float* dst)
    {
        const int mr = CpuGemm.MR;
        int es = Type == DType.F16 ? 2 : 4;
        byte* baseP = (byte*)Ptr + b * Stride * es;
        int padded = (rows + mr - 1) / mr * mr;
        if (Kind == TransKind)
        {
            float* tmp = dst + (long)padded * kc; // staging row past the block (Workspace reserves it)
            for (int k = 0; k < kc; k++)
            {
                float* s = Half16.View(baseP + ((long)(pc + k) * M + m0) * es, Type, tmp, rows);
                float* d = dst + k;
                for (int i = 0; i < rows; i++) d[(long)i * kc] = s[i];
            }
        }
        else
            for (int i = 0; i < rows; i++)
            {
                if (Kind == DenseKind) Half16.Load(baseP + ((long)(m0 + i) * K + pc) * es, Type, dst + (long)i * kc, kc);
                else ConvRow(baseP, m0 + i, pc, kc, es, dst + (long)i * kc);
            }
        new Span<float>(dst + (long)rows * kc, (padded - rows) * kc).Clear();
    }

    /// <summary>Row m of the virtual im2col matrix, columns [pc, pc+kc), into dst (fp32).</summary>
    private readonly void ConvRow(byte* x, int m, int pc, int kc, int es, float* dst)
    {
        int ow = m % Wout, t = m / Wout;
        int oh = t % Hout, n = t / Hout;
        int ih0 = oh * ConvStride - PadTop, iw0 = ow * ConvStride - PadLeft;
        int k = pc, end = pc + kc;
        while (k < end)
        {
            int tap = k / Cin, ci = k - tap * Cin;
            int kh = tap / KW, kw = tap - kh * KW;
            int len = Math.Min(Cin - ci, end - k);
            int ih = ih0 + kh, iw = iw0 + kw;
            float* d = dst + (k - pc);
            if ((uint)ih < (uint)H && (uint)iw < (uint)W)
                Half16.Load(x + ((((long)n * H + ih) * W + iw) * Cin + ci) * es, Type, d, len);
            else
                for (int i = 0; i < len; i++) d[i] = 0;
            k += len;
        }
    }
}

/// <summary>Per-worker scratch: packed A block, fp32 accumulation tile, row staging, a zero row. Pooled.</summary>
internal sealed unsafe class Workspace
{
    private static readonly ConcurrentBag<Workspace> Pool = [];
    private readonly float* block;

    public readonly float* APack, Tile, RowTmp, Zero;

    private Workspace()
    {
        long aFloats = (long)CpuGemm.MCMax * CpuGemm.KC + CpuGemm.MCMax + 64;
        long tileFloats = (long)CpuGemm.MCMax * (CpuGemm.NCMax + 32);
        long rowFloats = 8L * CpuGemm.KC;
        long total = aFloats + tileFloats + rowFloats + CpuGemm.KC;
        block = (float*)NativeMemory.AlignedAlloc((nuint)(total * sizeof(float)), 64);
        APack = block;
        Tile = APack + aFloats;
        RowTmp = Tile + tileFloats;
        Zero = RowTmp + rowFloats;
        for (int i = 0; i < CpuGemm.KC; i++) Zero[i] = 0;
    }

    private float* widened;
    private long widenedFloats;

    /// <summary>Room for <paramref name="floats"/> widened fp16 panels, kept with the workspace.</summary>
    public float* Widened(long floats)
    {
        if (floats > widenedFloats)
        {
            if (widened != null) NativeMemory.AlignedFree(widened);
            widened = (float*)NativeMemory.AlignedAlloc((nuint)(floats * sizeof(float)), 64);
            widenedFloats = floats;
        }
        return widened;
    }

    ~Workspace()
    {
        NativeMemory.AlignedFree(block);
        if (widened != null) NativeMemory.AlignedFree(widened);
    }

    public static Workspace Rent() => Pool.TryTake(out var w) ? w : new Workspace();

    public static void Return(Workspace w) => Pool.Add(w);
}

/// <summary>A reusable 64-byte-aligned fp32 buffer for packed B (one cached, bigger ones replace it).</summary>
internal sealed unsafe class ScratchBuffer
{
    private static ScratchBuffer? cached;
    public readonly float* Ptr;
    public readonly long Floats;

    private ScratchBuffer(long floats)
    {
        Floats = floats;
        Ptr = (float*)NativeMemory.AlignedAlloc((nuint)(floats * sizeof(float)), 64);
    }

    ~ScratchBuffer() => NativeMemory.AlignedFree(Ptr);

    public static ScratchBuffer Rent(long floats)
    {
        var b = Interlocked.Exchange(ref cached, null);
        if (b != null && b.Floats >= floats) return b;
        if (b != null) GC.SuppressFinalize(b.Release());
        return new ScratchBuffer(floats);
    }

    public static void Return(ScratchBuffer b)
    {
        var old = Interlocked.Exchange(ref cached, b);
        if (old != null && old != b) GC.SuppressFinalize(old.Release());
    }

    private ScratchBuffer Release()
    {
        NativeMemory.AlignedFree(Ptr);
        return this;
    }
}

/// <summary>Epilogue: C = alpha·tile + bias + residual, rounded to C's dtype; vectorized over columns.</summary>
internal static unsafe class Epilogue
{
    public static void Store(float* tile, int ldt, int rows, int cols, int b, int m0, int n0, int m, int n, float alpha,
        void* bias, DType biasType, void* res, DType resType, void* c, DType cType)
    {
        int bs = biasType == DType.F16 ? 2 : 4, rs = resType == DType.F16 ? 2 : 4, cs = cType == DType.F16 ? 2 : 4;
        for (int i = 0; i < rows; i++)
        {
            float* t = tile + (long)i * ldt;
            long o = ((long)b * m + m0 + i) * n + n0;
            int j = 0;
            if (Vector256.IsHardwareAccelerated)
            {
                var va = Vector256.Create(alpha);
                for (; j + 8 <= cols; j += 8)
                {
                    var v = Vector256.Load(t + j) * va;
                    if (bias != null) v += Half16.Load8((byte*)bias + (long)(n0 + j) * bs, biasType);
                    if (res != null) v += Half16.Load8((byte*)res + (o + j) * rs, resType);
                    Half16.Store8((byte*)c + (o + j) * cs, cType, v);
                }
            }
            for (; j < cols; j++)
            {
                float v = alpha * t[j];
                if (bias != null) v += Half16.Read(bias, biasType, n0 + j);
                if (res != null) v += Half16.Read(res, resType, o + j);
                Half16.Write(c, cType, o + j, v);
            }
        }
    }
}

/// <summary>fp16 ↔ fp32 conversion (IEEE binary16 bits), vectorized with integer bit operations.</summary>
internal static unsafe class Half16
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Read(void* p, DType t, long i) =>
        t == DType.F16 ? (float)BitConverter.UInt16BitsToHalf(((ushort*)p)[i]) : ((float*)p)[i];

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Write(void* p, DType t, long i, float v)
    {
        if (t == DType.F16) ((ushort*)p)[i] = BitConverter.HalfToUInt16Bits((Half)v);
        else ((float*)p)[i] = v;
    }

    /// <summary>src as fp32: the source itself when fp32, else widened into tmp.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float* View(void* src, DType t, float* tmp, int n)
    {
        if (t == DType.F32) return (float*)src;
        Widen((ushort*)src, tmp, n);
        return tmp;
    }

    public static void Load(void* src, DType t, float* dst, int n)
    {
        if (t == DType.F16) Widen((ushort*)src, dst, n);
        else Buffer.MemoryCopy(src, dst, (long)n * 4, (long)n * 4);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(void* p, DType t) =>
        t == DType.F16 ? ToSingle(Vector128.Load((ushort*)p)) : Vector256.Load((float*)p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store8(void* p, DType t, Vector256<float> v)
    {
        if (t == DType.F16) ToHalf(v).Store((ushort*)p);
        else v.Store((float*)p);
    }

    // Whole rows go through CpuLayout's conversion (one thread: the caller already runs on a worker).
    public static void Widen(ushort* src, float* dst, int n) => CpuLayout.HalfToFloatRange(src, dst, n);

    public static void Narrow(float* src, ushort* dst, int n) => CpuLayout.FloatToHalfRange(src, dst, n);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> ToSingle(Vector128<ushort> h)
    {
        var u = Vector256.WidenLower(h.ToVector256Unsafe());
        var sign = (u & Vector256.Create(0x8000u)) << 16;
        var em = u & Vector256.Create(0x7FFFu);
        // exponent rebias by multiplying with 2^112 also normalizes subnormals exactly
        var f = (em << 13).AsSingle() * Vector256.Create(BitConverter.Int32BitsToSingle(0x77800000));
        var special = Vector256.GreaterThanOrEqual(em, Vector256.Create(0x7C00u));
        var bits = Vector256.ConditionalSelect(special, (em << 13) | Vector256.Create(0x7F800000u), f.AsUInt32());
        return (bits | sign).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<ushort> ToHalf(Vector256<float> v)
    {
        var u = v.AsUInt32();
        var sign = u & Vector256.Create(0x80000000u);
        var a = u ^ sign;
        // normal range: rebias the exponent, round to nearest even on the 13 dropped bits; overflow clamps to inf
        var odd = (a >> 13) & Vector256.Create(1u);
        var nrm = Vector256.Min((a + Vector256.Create(0xC8000FFFu) + odd) >> 13, Vector256.Create(0x7C00u));
        nrm = Vector256.ConditionalSelect(Vector256.GreaterThan(a, Vector256.Create(0x7F800000u)), Vector256.Create(0x7E00u), nrm);
        // subnormal range: adding 0.5 lets the FPU round the mantissa into place
        var sub = (a.AsSingle() + Vector256.Create(0.5f)).AsUInt32() - Vector256.Create(0x3F000000u);
        var r = Vector256.ConditionalSelect(Vector256.LessThan(a, Vector256.Create(0x38800000u)), sub, nrm) | (sign >> 16);
        return Vector128.Narrow(r.GetLower(), r.GetUpper());
    }
}
