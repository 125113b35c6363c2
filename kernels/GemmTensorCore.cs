using ILGPU;
using ILGPU.Runtime.Cuda;
using StableDiffusion.Runtime;
using Half = ILGPU.Half;

namespace StableDiffusion.Kernels;

// GEMM v2: fp16 tensor cores (CUDA only). C = alpha * A * B^T (+ bias, + residual) with A [M, K] and B [N, K], both
// K-contiguous (a Linear's input and weight; the im2col matrix and OHWI weights of a convolution), fp32 accumulation.
//
// Ampere instructions through inline PTX (ILGPU 1.5.3 targets sm_80): a BM x BN x 32 tile (ITcTile: 128x128,
// 128x64, 64x128, 64x64) per group of (BM/64) x (BN/32) warps, each warp 64x32 = 4 x 4 mma.sync.m16n8k16 tiles,
// operands streamed global → shared with cp.async in a 3- or 4-stage pipeline (up to 64 KB of dynamic shared
// memory), fragments loaded with ldmatrix.x4; optionally split over K (grid z) with a deterministic second pass. Shared rows are 64 bytes
// (32 halves); the 16-byte chunk index is XOR-swizzled with (row >> 1) & 3 so that the 8 rows an ldmatrix phase reads
// hit 8 different bank groups. Out-of-range chunks are zero-filled by cp.async's src-size operand, so M and N are
// arbitrary; K must be a multiple of 8 (16-byte chunks), which the launcher checks.

/// <summary>
/// Where the 16-byte chunks of an operand are in global memory. The kernel splits the address into what depends on the
/// row (<see cref="Row"/>, once per thread and row) and what depends on k (<see cref="Tap"/> once, then
/// <see cref="Advance"/> by one k-tile at a time: every row a thread loads has the same k), so the main loop does no
/// division and little 64-bit arithmetic.
/// </summary>
public interface ITcOperand
{
    TcRow Row(int batch, int row);
    TcTap Tap(int k);
    /// <summary>The tap of k + <paramref name="dk"/>.</summary>
    TcTap Advance(in TcTap t, int dk);
    /// <summary>The chunk's address, or -1 for zeros.</summary>
    long Chunk(in TcRow r, in TcTap t);
}

/// <summary>A row's part of an operand address: a base pointer, and for im2col the top-left input pixel (Y, X).</summary>
public struct TcRow
{
    public long Ptr;
    public int Y, X;
    public int Valid;
}

/// <summary>A k's part of an operand address: a byte offset, and for im2col the kernel tap (Dy, Dx) and channel Ci.</summary>
public struct TcTap
{
    public long Offset;
    public int Dy, Dx, Ci;
}

/// <summary>A row-major fp16 matrix given by its device address: element (r, k) of batch b at Base + 2*(b*BatchStride + r*Ld + k).</summary>
public struct TcMatrix : ITcOperand
{
    public long Base;
    public long BatchStride;
    public long Ld;
    public int Rows;

    public readonly TcRow Row(int batch, int row) =>
        new() { Ptr = Base + 2L * (batch * BatchStride + row * Ld), Valid = row < Rows ? 1 : 0 };

    public readonly TcTap Tap(int k) => new() { Offset = 2L * k };

    public readonly TcTap Advance(in TcTap t, int dk) => new() { Offset = t.Offset + 2L * dk };

    public readonly long Chunk(in TcRow r, in TcTap t) => r.Valid != 0 ? r.Ptr + t.Offset : -1;
}

/// <summary>
/// The im2col matrix of an NHWC fp16 input (C a multiple of 8, so a chunk never crosses a kernel tap). A row's pointer
/// addresses its top-left input pixel, which may lie in the padding: it is only dereferenced with a tap that lands
/// inside the image.
/// </summary>
public struct TcIm2Col : ITcOperand
{
    public long Base;
    public int H, W, C, KW, Stride, PadTop, PadLeft, Hout, Wout, Rows;

    public readonly TcRow Row(int batch, int row)
    {
        int hw = Hout * Wout;
        int n = row / hw;
        int rem = row - n * hw;
        int ho = rem / Wout;
        int wo = rem - ho * Wout;
        int y = ho * Stride - PadTop, x = wo * Stride - PadLeft;
        return new TcRow { Ptr = Base + 2L * (((long)n * H + y) * W + x) * C, Y = y, X = x, Valid = row < Rows ? 1 : 0 };
    }

    public readonly TcTap Tap(int k)
    {
        int tap = k / C;
        int ci = k - tap * C;
        int kh = tap / KW;
        int kw = tap - kh * KW;
        return new TcTap { Offset = 2L * ((kh * W + kw) * C + ci), Dy = kh, Dx = kw, Ci = ci };
    }

    public readonly TcTap Advance(in TcTap t, int dk)
    {
        int ci = t.Ci + dk, kh = t.Dy, kw = t.Dx;
        while (ci >= C)
        {
            ci -= C;
            kw++;
            if (kw == KW)
            {
                kw = 0;
                kh++;
            }
        }
        return new TcTap { Offset = 2L * ((kh * W + kw) * C + ci), Dy = kh, Dx = kw, Ci = ci };
    }

    public readonly long Chunk(in TcRow r, in TcTap t)
    {
        int ih = r.Y + t.Dy, iw = r.X + t.Dx;
        return r.Valid != 0 && ih >= 0 && ih < H && iw >= 0 && iw < W ? r.Ptr + t.Offset : -1;
    }
}

public struct TcGemmArgs<TA, TB>
    where TA : struct, ITcOperand
    where TB : struct, ITcOperand
{
    public TA A;
    public TB B;
    public TcEpilogue C;
    public int M, N, K;
    /// <summary>
    /// Split-K: grid z is batch × Splits, split s covers k-tiles [s·KTilesPerSplit, (s+1)·KTilesPerSplit) and writes
    /// its fp32 partial sums to Work[(z·M + m)·N + n]; <see cref="GemmTensorCoreKernels.SplitReduce"/> adds them in
    /// split order and applies the epilogue. Splits = 1: the tile goes straight through the epilogue.
    /// </summary>
    public int Splits, KTilesPerSplit;
    public ArrayView<float> Work;
}

/// <summary>
/// The fp16 output of the tensor-core GEMM: alpha, bias and residual applied to 8 consecutive columns at a time, with
/// 16-byte loads and stores where every row of C, the residual and the bias start 16-byte aligned (<see cref="Vector"/>,
/// decided on the host), element by element otherwise and at a ragged right edge.
/// </summary>
public struct TcEpilogue
{
    public MatrixEpilogue<Half, F16Elem> M;
    public int Vector;

    public static TcEpilogue Of(MatrixEpilogue<Half, F16Elem> m, Tensor c, Tensor? bias, Tensor? residual)
    {
        static bool Aligned(Tensor? t) => t is null || Gemm.Address(t) % 16 == 0;
        bool vector = m.Ldc % 8 == 0 && m.BatchStrideC % 8 == 0 && m.Ldr % 8 == 0 && m.BatchStrideR % 8 == 0
                      && Aligned(c) && Aligned(bias) && Aligned(residual);
        return new TcEpilogue { M = m, Vector = vector ? 1 : 0 };
    }

    public readonly void Store8(int batch, int m, int n, in Float8 v, int nLimit)
    {
        if (Vector != 0 && n + 8 <= nLimit)
        {
            float a = M.Alpha;
            float v0 = a * v.V0, v1 = a * v.V1, v2 = a * v.V2, v3 = a * v.V3;
            float v4 = a * v.V4, v5 = a * v.V5, v6 = a * v.V6, v7 = a * v.V7;
            if (M.HasBias != 0)
            {
                var b = M.Bias.Cast<Int4>()[n >> 3];
                v0 += Fp16x2.Lo(b.X); v1 += Fp16x2.Hi(b.X); v2 += Fp16x2.Lo(b.Y); v3 += Fp16x2.Hi(b.Y);
                v4 += Fp16x2.Lo(b.Z); v5 += Fp16x2.Hi(b.Z); v6 += Fp16x2.Lo(b.W); v7 += Fp16x2.Hi(b.W);
            }
            if (M.HasResidual != 0)
            {
                var r = M.Residual.Cast<Int4>()[(batch * M.BatchStrideR + m * M.Ldr + n) >> 3];
                v0 += Fp16x2.Lo(r.X); v1 += Fp16x2.Hi(r.X); v2 += Fp16x2.Lo(r.Y); v3 += Fp16x2.Hi(r.Y);
                v4 += Fp16x2.Lo(r.Z); v5 += Fp16x2.Hi(r.Z); v6 += Fp16x2.Lo(r.W); v7 += Fp16x2.Hi(r.W);
            }
            Int4 o;
            o.X = Fp16x2.Pack(v0, v1);
            o.Y = Fp16x2.Pack(v2, v3);
            o.Z = Fp16x2.Pack(v4, v5);
            o.W = Fp16x2.Pack(v6, v7);
            M.C.Cast<Int4>()[(batch * M.BatchStrideC + m * M.Ldc + n) >> 3] = o;
            return;
        }
        M.Store(batch, m, n, v.V0);
        if (n + 1 < nLimit) M.Store(batch, m, n + 1, v.V1);
        if (n + 2 < nLimit) M.Store(batch, m, n + 2, v.V2);
        if (n + 3 < nLimit) M.Store(batch, m, n + 3, v.V3);
        if (n + 4 < nLimit) M.Store(batch, m, n + 4, v.V4);
        if (n + 5 < nLimit) M.Store(batch, m, n + 5, v.V5);
        if (n + 6 < nLimit) M.Store(batch, m, n + 6, v.V6);
        if (n + 7 < nLimit) M.Store(batch, m, n + 7, v.V7);
    }
}

/// <summary>Two fp16 values in one 32-bit word (the lower column in the lower half), as 16-byte rows hold them.</summary>
public static class Fp16x2
{
    public static float Lo(int packed) => (float)Interop.IntAsFloat((ushort)(packed & 0xffff));

    public static float Hi(int packed) => (float)Interop.IntAsFloat((ushort)((uint)packed >> 16));

    /// <summary>Rounds both to fp16 (nearest even, as <see cref="F16Elem"/>) and packs them.</summary>
    public static int Pack(float lo, float hi)
    {
        var e = default(F16Elem);
        return Interop.FloatAsInt(e.FromFloat(lo)) | (Interop.FloatAsInt(e.FromFloat(hi)) << 16);
    }
}

/// <summary>
/// How a tensor-core kernel's inline PTX runs: CudaAsm.Emit on CUDA (<see cref="NativePtx"/>), or
/// <see cref="PtxEmulator"/> on the ILGPU CPU accelerator (<see cref="EmulatedPtx"/>), so the same kernel runs in the
/// oracle tests. A type parameter rather than <c>CudaAsm.IsSupported</c>: ILGPU resolves IsSupported only at code
/// generation, leaving a constant branch that can move the PTX register declarations below their first use.
/// </summary>
public interface IPtxIsa
{
    bool Emulated { get; }
}

public struct NativePtx : IPtxIsa
{
    public readonly bool Emulated => false;
}

public struct EmulatedPtx : IPtxIsa
{
    public readonly bool Emulated => true;
}

/// <summary>The cp.async PTX the tensor-core kernels share.</summary>
public static class Ptx
{
    /// <summary>
    /// 16-byte global → shared copy to byte <paramref name="offset"/> of the dynamic shared memory (needs
    /// <see cref="MmaAsm.Declare"/> first); srcBytes 0 writes zeros and reads nothing.
    /// </summary>
    public static void CpAsync16<TIsa>(uint offset, long global, uint srcBytes) where TIsa : struct, IPtxIsa
    {
        const string S = "add.u32 sa0, sb, %0; cp.async.cg.shared.global [sa0], [%1], 16, %2;";
        if (default(TIsa).Emulated) PtxEmulator.Exec(S, offset, (ulong)global, srcBytes);
        else CudaAsm.Emit(S, offset, global, srcBytes);
    }

    public static void CpAsyncCommit<TIsa>() where TIsa : struct, IPtxIsa
    {
        const string S = "cp.async.commit_group;";
        if (default(TIsa).Emulated) PtxEmulator.Exec(S);
        else CudaAsm.Emit(S);
    }

    public static void CpAsyncWaitOne<TIsa>() where TIsa : struct, IPtxIsa
    {
        const string S = "cp.async.wait_group 1;";
        if (default(TIsa).Emulated) PtxEmulator.Exec(S);
        else CudaAsm.Emit(S);
    }

    public static void CpAsyncWaitTwo<TIsa>() where TIsa : struct, IPtxIsa
    {
        const string S = "cp.async.wait_group 2;";
        if (default(TIsa).Emulated) PtxEmulator.Exec(S);
        else CudaAsm.Emit(S);
    }

    public static void CpAsyncWaitAll<TIsa>() where TIsa : struct, IPtxIsa
    {
        const string S = "cp.async.wait_group 0;";
        if (default(TIsa).Emulated) PtxEmulator.Exec(S);
        else CudaAsm.Emit(S);
    }
}

/// <summary>
/// The register-level PTX of the 128x128 tensor-core tile. Fragments and accumulators live in PTX registers named
/// here (declared once per kernel), not in C# variables: ILGPU's CudaAsm.EmitRef passes operands through local
/// memory, which ptxas then fails to promote (768 bytes of stack when tried), while plain Emit inputs are registers.
/// Generated by hand-unrolling; every string is a literal because ILGPU needs one per call site.
/// </summary>
public static class MmaAsm
{
    /// <summary>
    /// Declares the named registers (64 accumulators, 16 A- and 8 B-fragment registers, the dynamic shared base sb and
    /// address temporaries); every shared address below is an offset added to sb inside the PTX, so no value ever
    /// has to come back out of an asm block (an ILGPU `out` operand goes through local memory).
    /// </summary>
    public const string Declare =
        ".reg .f32 acc<64>; .reg .b32 fa<16>; .reg .b32 fb<8>; .reg .b32 sb; .reg .b32 sa<6>; mov.u32 sb, __dyn_shared_alloca;";

    public const string Zero =
        "mov.f32 acc0, 0f00000000; mov.f32 acc1, 0f00000000; mov.f32 acc2, 0f00000000; mov.f32 acc3, 0f00000000; mov.f32 acc4, 0f00000000; mov.f32 acc5, 0f00000000; mov.f32 acc6, 0f00000000; mov.f32 acc7, 0f00000000; " +
        "mov.f32 acc8, 0f00000000; mov.f32 acc9, 0f00000000; mov.f32 acc10, 0f00000000; mov.f32 acc11, 0f00000000; mov.f32 acc12, 0f00000000; mov.f32 acc13, 0f00000000; mov.f32 acc14, 0f00000000; mov.f32 acc15, 0f00000000; " +
        "mov.f32 acc16, 0f00000000; mov.f32 acc17, 0f00000000; mov.f32 acc18, 0f00000000; mov.f32 acc19, 0f00000000; mov.f32 acc20, 0f00000000; mov.f32 acc21, 0f00000000; mov.f32 acc22, 0f00000000; mov.f32 acc23, 0f00000000; " +
        "mov.f32 acc24, 0f00000000; mov.f32 acc25, 0f00000000; mov.f32 acc26, 0f00000000; mov.f32 acc27, 0f00000000; mov.f32 acc28, 0f00000000; mov.f32 acc29, 0f00000000; mov.f32 acc30, 0f00000000; mov.f32 acc31, 0f00000000; " +
        "mov.f32 acc32, 0f00000000; mov.f32 acc33, 0f00000000; mov.f32 acc34, 0f00000000; mov.f32 acc35, 0f00000000; mov.f32 acc36, 0f00000000; mov.f32 acc37, 0f00000000; mov.f32 acc38, 0f00000000; mov.f32 acc39, 0f00000000; " +
        "mov.f32 acc40, 0f00000000; mov.f32 acc41, 0f00000000; mov.f32 acc42, 0f00000000; mov.f32 acc43, 0f00000000; mov.f32 acc44, 0f00000000; mov.f32 acc45, 0f00000000; mov.f32 acc46, 0f00000000; mov.f32 acc47, 0f00000000; " +
        "mov.f32 acc48, 0f00000000; mov.f32 acc49, 0f00000000; mov.f32 acc50, 0f00000000; mov.f32 acc51, 0f00000000; mov.f32 acc52, 0f00000000; mov.f32 acc53, 0f00000000; mov.f32 acc54, 0f00000000; mov.f32 acc55, 0f00000000; " +
        "mov.f32 acc56, 0f00000000; mov.f32 acc57, 0f00000000; mov.f32 acc58, 0f00000000; mov.f32 acc59, 0f00000000; mov.f32 acc60, 0f00000000; mov.f32 acc61, 0f00000000; mov.f32 acc62, 0f00000000; mov.f32 acc63, 0f00000000; ";

    /// <summary>Four A fragments (m-tiles 0-3) and two B x4 loads (n-tiles 0-3) from six shared offsets %0..%5.</summary>
    public const string LoadFragments =
        "add.u32 sa0, sb, %0; add.u32 sa1, sb, %1; add.u32 sa2, sb, %2; add.u32 sa3, sb, %3; add.u32 sa4, sb, %4; add.u32 sa5, sb, %5; " +
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {fa0, fa1, fa2, fa3}, [sa0]; " +
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {fa4, fa5, fa6, fa7}, [sa1]; " +
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {fa8, fa9, fa10, fa11}, [sa2]; " +
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {fa12, fa13, fa14, fa15}, [sa3]; " +
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {fb0, fb1, fb2, fb3}, [sa4]; " +
        "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {fb4, fb5, fb6, fb7}, [sa5]; ";

    /// <summary>The 16 mma.sync of one k16 step: accumulator tile (i, j) is acc[16i+4j .. +3].</summary>
    public const string Mma16 =
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc0, acc1, acc2, acc3}, {fa0, fa1, fa2, fa3}, {fb0, fb1}, {acc0, acc1, acc2, acc3}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc4, acc5, acc6, acc7}, {fa0, fa1, fa2, fa3}, {fb2, fb3}, {acc4, acc5, acc6, acc7}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc8, acc9, acc10, acc11}, {fa0, fa1, fa2, fa3}, {fb4, fb5}, {acc8, acc9, acc10, acc11}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc12, acc13, acc14, acc15}, {fa0, fa1, fa2, fa3}, {fb6, fb7}, {acc12, acc13, acc14, acc15}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc16, acc17, acc18, acc19}, {fa4, fa5, fa6, fa7}, {fb0, fb1}, {acc16, acc17, acc18, acc19}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc20, acc21, acc22, acc23}, {fa4, fa5, fa6, fa7}, {fb2, fb3}, {acc20, acc21, acc22, acc23}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc24, acc25, acc26, acc27}, {fa4, fa5, fa6, fa7}, {fb4, fb5}, {acc24, acc25, acc26, acc27}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc28, acc29, acc30, acc31}, {fa4, fa5, fa6, fa7}, {fb6, fb7}, {acc28, acc29, acc30, acc31}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc32, acc33, acc34, acc35}, {fa8, fa9, fa10, fa11}, {fb0, fb1}, {acc32, acc33, acc34, acc35}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc36, acc37, acc38, acc39}, {fa8, fa9, fa10, fa11}, {fb2, fb3}, {acc36, acc37, acc38, acc39}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc40, acc41, acc42, acc43}, {fa8, fa9, fa10, fa11}, {fb4, fb5}, {acc40, acc41, acc42, acc43}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc44, acc45, acc46, acc47}, {fa8, fa9, fa10, fa11}, {fb6, fb7}, {acc44, acc45, acc46, acc47}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc48, acc49, acc50, acc51}, {fa12, fa13, fa14, fa15}, {fb0, fb1}, {acc48, acc49, acc50, acc51}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc52, acc53, acc54, acc55}, {fa12, fa13, fa14, fa15}, {fb2, fb3}, {acc52, acc53, acc54, acc55}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc56, acc57, acc58, acc59}, {fa12, fa13, fa14, fa15}, {fb4, fb5}, {acc56, acc57, acc58, acc59}; " +
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {acc60, acc61, acc62, acc63}, {fa12, fa13, fa14, fa15}, {fb6, fb7}, {acc60, acc61, acc62, acc63}; ";

    /// <summary>
    /// Stores this warp's 64x32 accumulator tile into shared memory rows of 132 floats (padded against bank
    /// conflicts); %0 is the offset of this lane's first element (row lane/4, column 2*(lane%4)).
    /// </summary>
    public const string StageAccumulators =
        "add.u32 sa0, sb, %0; " +
        "st.shared.v2.f32 [sa0+0], {acc0, acc1}; st.shared.v2.f32 [sa0+4224], {acc2, acc3}; " +
        "st.shared.v2.f32 [sa0+32], {acc4, acc5}; st.shared.v2.f32 [sa0+4256], {acc6, acc7}; " +
        "st.shared.v2.f32 [sa0+64], {acc8, acc9}; st.shared.v2.f32 [sa0+4288], {acc10, acc11}; " +
        "st.shared.v2.f32 [sa0+96], {acc12, acc13}; st.shared.v2.f32 [sa0+4320], {acc14, acc15}; " +
        "st.shared.v2.f32 [sa0+8448], {acc16, acc17}; st.shared.v2.f32 [sa0+12672], {acc18, acc19}; " +
        "st.shared.v2.f32 [sa0+8480], {acc20, acc21}; st.shared.v2.f32 [sa0+12704], {acc22, acc23}; " +
        "st.shared.v2.f32 [sa0+8512], {acc24, acc25}; st.shared.v2.f32 [sa0+12736], {acc26, acc27}; " +
        "st.shared.v2.f32 [sa0+8544], {acc28, acc29}; st.shared.v2.f32 [sa0+12768], {acc30, acc31}; " +
        "st.shared.v2.f32 [sa0+16896], {acc32, acc33}; st.shared.v2.f32 [sa0+21120], {acc34, acc35}; " +
        "st.shared.v2.f32 [sa0+16928], {acc36, acc37}; st.shared.v2.f32 [sa0+21152], {acc38, acc39}; " +
        "st.shared.v2.f32 [sa0+16960], {acc40, acc41}; st.shared.v2.f32 [sa0+21184], {acc42, acc43}; " +
        "st.shared.v2.f32 [sa0+16992], {acc44, acc45}; st.shared.v2.f32 [sa0+21216], {acc46, acc47}; " +
        "st.shared.v2.f32 [sa0+25344], {acc48, acc49}; st.shared.v2.f32 [sa0+29568], {acc50, acc51}; " +
        "st.shared.v2.f32 [sa0+25376], {acc52, acc53}; st.shared.v2.f32 [sa0+29600], {acc54, acc55}; " +
        "st.shared.v2.f32 [sa0+25408], {acc56, acc57}; st.shared.v2.f32 [sa0+29632], {acc58, acc59}; " +
        "st.shared.v2.f32 [sa0+25440], {acc60, acc61}; st.shared.v2.f32 [sa0+29664], {acc62, acc63}; ";
}

/// <summary>
/// A tensor-core tile configuration: BM x BN output tile (64 or 128 each), 32-deep k-tiles, a cp.async pipeline of
/// Stages k-tiles. Every warp owns a 64x32 piece (the <see cref="MmaAsm"/> strings), so the group is
/// (BM/64) x (BN/32) warps. A type parameter, so each configuration is its own specialised kernel.
/// </summary>
public interface ITcTile
{
    int BM { get; }
    int BN { get; }
    int Stages { get; }
}

public struct Tc128x128 : ITcTile
{
    public readonly int BM => 128;
    public readonly int BN => 128;
    public readonly int Stages => 3;
}

/// <summary>128x128 with a 4-stage pipeline: 64 KB of dynamic shared memory, which needs the opt-in attribute.</summary>
public struct Tc128x128S4 : ITcTile
{
    public readonly int BM => 128;
    public readonly int BN => 128;
    public readonly int Stages => 4;
}

public struct Tc128x64 : ITcTile
{
    public readonly int BM => 128;
    public readonly int BN => 64;
    public readonly int Stages => 3;
}

public struct Tc64x128 : ITcTile
{
    public readonly int BM => 64;
    public readonly int BN => 128;
    public readonly int Stages => 3;
}

public struct Tc64x64 : ITcTile
{
    public readonly int BM => 64;
    public readonly int BN => 64;
    public readonly int Stages => 3;
}

public static class GemmTensorCoreKernels
{
    public const int BK = 32;
    public const int EpilogueLd = 132;                       // floats per staged accumulator row
    /// <summary>The epilogue stages 64 rows of 132 floats through the pipeline buffers.</summary>
    public const int EpilogueBytes = 64 * EpilogueLd * 4;

    public static int Threads(int bm, int bn) => 32 * (bm / 64) * (bn / 32);

    public static int SharedBytes(int bm, int bn, int stages) => Math.Max(stages * (bm + bn) * BK * 2, EpilogueBytes);

    /// <summary>Byte offset of 16-byte chunk <paramref name="chunk"/> (0..3) of tile row <paramref name="row"/>, swizzled.</summary>
    private static uint Swizzle(int row, int chunk) => (uint)(row * 64 + ((chunk ^ ((row >> 1) & 3)) << 4));

    /// <summary>Grid (ceil(N/BN), ceil(M/BM), batch × splits); <see cref="Threads"/> threads; <see cref="SharedBytes"/> of dynamic shared memory.</summary>
    public static void Mma<TCfg, TA, TB, TIsa>(TcGemmArgs<TA, TB> p)
        where TCfg : struct, ITcTile
        where TA : struct, ITcOperand
        where TB : struct, ITcOperand
        where TIsa : struct, IPtxIsa
    {
        var shared = SharedMemory.GetDynamic<Int4>(); // declares the 16-byte aligned region the PTX addresses
        if (default(TIsa).Emulated)
        {
            PtxEmulator.BindShared(shared.Cast<byte>());
            PtxEmulator.Exec(MmaAsm.Declare);
        }
        else CudaAsm.Emit(MmaAsm.Declare);
        int bm = default(TCfg).BM, bn = default(TCfg).BN, stages = default(TCfg).Stages;
        int warpsN = bn / 32, threads = Threads(bm, bn);
        int rowsPerPass = threads / 4;                      // tile rows one pass of 16-byte copies covers
        int copiesA = bm / rowsPerPass, copiesB = bn / rowsPerPass; // 2 or 4 each
        uint stageBytes = (uint)((bm + bn) * BK * 2);
        uint lastStage = (uint)(stages - 1) * stageBytes;
        const uint sbase = 0; // offsets into the dynamic shared memory; the PTX adds its base
        int tid = Group.IdxX, lane = tid & 31, warp = tid >> 5;
        int wm = warp / warpsN, wn = warp - wm * warpsN;
        int splits = p.Splits, z = Grid.IdxZ;
        int batch = z / splits, split = z - batch * splits;
        int m0 = Grid.IdxY * bm, n0 = Grid.IdxX * bn;
        int kt0 = split * p.KTilesPerSplit;
        int kTiles = Math.Max(0, Math.Min(p.KTilesPerSplit, (p.K + BK - 1) / BK - kt0));

        // This thread copies chunk kc of tile rows r0 + i·rowsPerPass of A and of B in every k-tile; the swizzle only
        // depends on (row >> 1) & 3, the same for all of them (rowsPerPass is a multiple of 16).
        int r0 = tid >> 2, kc = tid & 3;
        var rows = new TcRows
        {
            A0 = p.A.Row(batch, m0 + r0),
            A1 = p.A.Row(batch, m0 + r0 + rowsPerPass),
            A2 = copiesA > 2 ? p.A.Row(batch, m0 + r0 + 2 * rowsPerPass) : default,
            A3 = copiesA > 2 ? p.A.Row(batch, m0 + r0 + 3 * rowsPerPass) : default,
            B0 = p.B.Row(batch, n0 + r0),
            B1 = p.B.Row(batch, n0 + r0 + rowsPerPass),
            B2 = copiesB > 2 ? p.B.Row(batch, n0 + r0 + 2 * rowsPerPass) : default,
            B3 = copiesB > 2 ? p.B.Row(batch, n0 + r0 + 3 * rowsPerPass) : default,
            Dst = Swizzle(r0, kc),
            Step = (uint)(rowsPerPass * 64),
        };

        int kLoad = kt0 * BK + kc * 8; // this thread's k in the next tile to load
        var tapA = p.A.Tap(kLoad);
        var tapB = p.B.Tap(kLoad);
        if (kTiles > 0) LoadStage<TCfg, TA, TB, TIsa>(p, sbase, kLoad, tapA, tapB, rows);
        Ptx.CpAsyncCommit<TIsa>();
        kLoad += BK;
        tapA = p.A.Advance(tapA, BK);
        tapB = p.B.Advance(tapB, BK);
        if (kTiles > 1) LoadStage<TCfg, TA, TB, TIsa>(p, sbase + stageBytes, kLoad, tapA, tapB, rows);
        Ptx.CpAsyncCommit<TIsa>();
        if (stages > 3)
        {
            kLoad += BK;
            tapA = p.A.Advance(tapA, BK);
            tapB = p.B.Advance(tapB, BK);
            if (kTiles > 2) LoadStage<TCfg, TA, TB, TIsa>(p, sbase + 2 * stageBytes, kLoad, tapA, tapB, rows);
            Ptx.CpAsyncCommit<TIsa>();
        }

        if (default(TIsa).Emulated) PtxEmulator.Exec(MmaAsm.Zero);
        else CudaAsm.Emit(MmaAsm.Zero);

        // This lane's ldmatrix row offsets within a stage's A and B tiles for k16 step 0 (computed once).
        int aRow = wm * 64 + (lane & 15);
        int bRow = wn * 32 + (lane & 7) + ((lane >> 4) << 3);
        int aChunk = lane >> 4, bChunk = (lane >> 3) & 1;
        uint fa0 = Swizzle(aRow, aChunk), fa1 = Swizzle(aRow + 16, aChunk);
        uint fa2 = Swizzle(aRow + 32, aChunk), fa3 = Swizzle(aRow + 48, aChunk);
        uint fb0 = Swizzle(bRow, bChunk), fb1 = Swizzle(bRow + 16, bChunk);
        uint bOffset = (uint)(bm * BK * 2);
        // Stages of tiles kt and kt + stages - 1, rotating (no %).
        uint readStage = sbase, writeStage = sbase + lastStage;
        for (int kt = 0; kt < kTiles; kt++)
        {
            if (stages > 3) Ptx.CpAsyncWaitTwo<TIsa>();
            else Ptx.CpAsyncWaitOne<TIsa>();
            SharedBarrier.Sync(); // tile kt is in shared memory, and every warp is done with tile kt - 1's stage
            if (kt + stages - 1 < kTiles)
            {
                kLoad += BK;
                tapA = p.A.Advance(tapA, BK);
                tapB = p.B.Advance(tapB, BK);
                LoadStage<TCfg, TA, TB, TIsa>(p, writeStage, kLoad, tapA, tapB, rows);
            }
            Ptx.CpAsyncCommit<TIsa>();

            uint aBase = readStage;
            uint bBase = aBase + bOffset;
            // k16 step 0, then step 1: its chunks are chunk + 2, which flips bit 5 of the swizzled offset.
            if (default(TIsa).Emulated)
            {
                PtxEmulator.Exec(MmaAsm.LoadFragments, aBase + fa0, aBase + fa1, aBase + fa2, aBase + fa3, bBase + fb0, bBase + fb1);
                PtxEmulator.Exec(MmaAsm.Mma16);
                PtxEmulator.Exec(MmaAsm.LoadFragments, aBase + (fa0 ^ 32), aBase + (fa1 ^ 32), aBase + (fa2 ^ 32),
                    aBase + (fa3 ^ 32), bBase + (fb0 ^ 32), bBase + (fb1 ^ 32));
                PtxEmulator.Exec(MmaAsm.Mma16);
            }
            else
            {
                CudaAsm.Emit(MmaAsm.LoadFragments, aBase + fa0, aBase + fa1, aBase + fa2, aBase + fa3, bBase + fb0, bBase + fb1);
                CudaAsm.Emit(MmaAsm.Mma16);
                CudaAsm.Emit(MmaAsm.LoadFragments, aBase + (fa0 ^ 32), aBase + (fa1 ^ 32), aBase + (fa2 ^ 32),
                    aBase + (fa3 ^ 32), bBase + (fb0 ^ 32), bBase + (fb1 ^ 32));
                CudaAsm.Emit(MmaAsm.Mma16);
            }
            readStage = readStage == sbase + lastStage ? sbase : readStage + stageBytes;
            writeStage = writeStage == sbase + lastStage ? sbase : writeStage + stageBytes;
        }
        Ptx.CpAsyncWaitAll<TIsa>();

        // Epilogue through shared memory, one 64-row half of the tile at a time (64 x 132 floats fit in the pipeline
        // buffers): the warps of that half stage their accumulators, then all threads apply bias/residual (or, split,
        // write fp32 partial sums) and write consecutive columns, so global stores are coalesced.
        var staged = shared.Cast<Float4>();
        int runs = bn / 8;
        for (int half = 0; half < bm / 64; half++)
        {
            SharedBarrier.Sync();
            if (wm == half)
            {
                uint at = sbase + (uint)(((lane >> 2) * EpilogueLd + wn * 32 + (lane & 3) * 2) * 4);
                if (default(TIsa).Emulated) PtxEmulator.Exec(MmaAsm.StageAccumulators, at);
                else CudaAsm.Emit(MmaAsm.StageAccumulators, at);
            }
            SharedBarrier.Sync();
            // 64 rows x BN/8 runs of 8 columns.
            for (int e = tid; e < 64 * runs; e += threads)
            {
                int row = e / runs, col = (e - row * runs) << 3;
                int gr = m0 + half * 64 + row, gc = n0 + col;
                if (gr < p.M && gc < p.N)
                {
                    int at = (row * EpilogueLd + col) >> 2; // 16-byte units: rows are 528 bytes, runs 32
                    var v = Float8.From(staged[at], staged[at + 1]);
                    if (splits > 1) StorePartial(p.Work, ((long)z * p.M + gr) * p.N + gc, v, p.N - gc);
                    else p.C.Store8(batch, gr, gc, v, p.N);
                }
            }
        }
    }

    private static void StorePartial(ArrayView<float> work, long at, in Float8 v, int left)
    {
        work[at] = v.V0;
        if (left > 1) work[at + 1] = v.V1;
        if (left > 2) work[at + 2] = v.V2;
        if (left > 3) work[at + 3] = v.V3;
        if (left > 4) work[at + 4] = v.V4;
        if (left > 5) work[at + 5] = v.V5;
        if (left > 6) work[at + 6] = v.V6;
        if (left > 7) work[at + 7] = v.V7;
    }

    /// <summary>
    /// tc_split_reduce: adds the split-K partial sums of 8 consecutive columns in split order 0, 1, ... (the same
    /// result on every run) and applies alpha, bias and residual. One thread per run of 8 columns; 1-D grid.
    /// </summary>
    public static void SplitReduce(TcSplitArgs p)
    {
        long i = (long)Grid.IdxX * Group.DimX + Group.IdxX;
        int runs = (p.N + 7) >> 3;
        long total = (long)p.Batch * p.M * runs;
        if (i >= total) return;
        int run = (int)(i % runs);
        long bm = i / runs;
        int m = (int)(bm % p.M), batch = (int)(bm / p.M);
        int n = run << 3, left = p.N - n;
        long plane = (long)p.M * p.N;
        long at = ((long)batch * p.Splits * p.M + m) * p.N + n;
        var acc = default(Float8);
        for (int s = 0; s < p.Splits; s++)
        {
            acc.V0 += p.Work[at];
            if (left > 1) acc.V1 += p.Work[at + 1];
            if (left > 2) acc.V2 += p.Work[at + 2];
            if (left > 3) acc.V3 += p.Work[at + 3];
            if (left > 4) acc.V4 += p.Work[at + 4];
            if (left > 5) acc.V5 += p.Work[at + 5];
            if (left > 6) acc.V6 += p.Work[at + 6];
            if (left > 7) acc.V7 += p.Work[at + 7];
            at += plane;
        }
        p.C.Store8(batch, m, n, acc, p.N);
    }

    /// <summary>Issues this thread's cp.async copies at <paramref name="k"/> (taps ta, tb) of A and B into the stage at <paramref name="aBase"/>.</summary>
    private static void LoadStage<TCfg, TA, TB, TIsa>(in TcGemmArgs<TA, TB> p, uint aBase, int k, in TcTap ta, in TcTap tb,
        in TcRows r)
        where TCfg : struct, ITcTile
        where TA : struct, ITcOperand
        where TB : struct, ITcOperand
        where TIsa : struct, IPtxIsa
    {
        int bm = default(TCfg).BM, bn = default(TCfg).BN;
        int rowsPerPass = Threads(bm, bn) / 4;
        uint bBase = aBase + (uint)(bm * BK * 2);
        bool inK = k < p.K;
        uint d = r.Dst, s = r.Step;
        Copy<TIsa>(aBase + d, inK ? p.A.Chunk(r.A0, ta) : -1);
        Copy<TIsa>(aBase + d + s, inK ? p.A.Chunk(r.A1, ta) : -1);
        if (bm / rowsPerPass > 2)
        {
            Copy<TIsa>(aBase + d + 2 * s, inK ? p.A.Chunk(r.A2, ta) : -1);
            Copy<TIsa>(aBase + d + 3 * s, inK ? p.A.Chunk(r.A3, ta) : -1);
        }
        Copy<TIsa>(bBase + d, inK ? p.B.Chunk(r.B0, tb) : -1);
        Copy<TIsa>(bBase + d + s, inK ? p.B.Chunk(r.B1, tb) : -1);
        if (bn / rowsPerPass > 2)
        {
            Copy<TIsa>(bBase + d + 2 * s, inK ? p.B.Chunk(r.B2, tb) : -1);
            Copy<TIsa>(bBase + d + 3 * s, inK ? p.B.Chunk(r.B3, tb) : -1);
        }
    }

    private static void Copy<TIsa>(uint dst, long src) where TIsa : struct, IPtxIsa =>
        Ptx.CpAsync16<TIsa>(dst, src >= 0 ? src : 0, src >= 0 ? 16u : 0u);
}

/// <summary>The tile rows one thread copies (up to 4 of A and of B), and its first destination and row step in a stage.</summary>
public struct TcRows
{
    public TcRow A0, A1, A2, A3, B0, B1, B2, B3;
    public uint Dst, Step;
}

public struct TcSplitArgs
{
    public ArrayView<float> Work;
    public TcEpilogue C;
    public int Batch, M, N, Splits;
}

/// <summary>A 16-byte element, for 16-byte aligned dynamic shared memory.</summary>
public struct Int4
{
    public int X, Y, Z, W;
}
