using ILGPU;
using ILGPU.Runtime;
using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels;

// GEMM: C = alpha * op(A) * op(B) + bias (+ residual), batched and strided, fp32 accumulation.
//
// v1 (this file): portable SIMT kernel that runs on every ILGPU backend. Each thread owns an 8x8 register tile
// (hand-unrolled: ILGPU 1.5.3 does not unroll loops and would put an indexed array in local memory); a group of
// TX x TY threads computes a (8*TY) x (8*TX) tile of C, staging BK-deep slices of A and B through shared memory
// stored k-major so that each thread reads its 8 rows and 8 columns with two 128-bit loads each.
// Operands are abstract "outer x K" sources, so the same kernel body is also the implicit-GEMM convolution
// (see Conv2d.cs), whose A operand gathers the im2col matrix on the fly.

/// <summary>Thread-block shape of the GEMM: TX x TY threads, each computing 8x8 outputs; BK is the k-slice.</summary>
public interface IGemmTile
{
    int TX { get; }
    int TY { get; }
    int BK { get; }
}

/// <summary>128x128 tile, 256 threads: the CUDA default for large problems.</summary>
public struct GemmTile128 : IGemmTile
{
    public readonly int TX => 16;
    public readonly int TY => 16;
    public readonly int BK => 8;
}

/// <summary>64x64 tile, 64 threads: for problems that would leave SMs idle with 128x128 tiles.</summary>
public struct GemmTile64 : IGemmTile
{
    public readonly int TX => 8;
    public readonly int TY => 8;
    public readonly int BK => 16;
}

/// <summary>16x16 tile, 4 threads: for correctness tests on the ILGPU CPU accelerator.</summary>
public struct GemmTileTest : IGemmTile
{
    public readonly int TX => 2;
    public readonly int TY => 2;
    public readonly int BK => 4;
}

/// <summary>An operand seen as an Outer x K matrix: A as M x K, B as N x K (i.e. op(B) transposed).</summary>
public interface IGemmOperand
{
    /// <summary>1 if consecutive k are adjacent in memory (drives which index consecutive threads walk).</summary>
    int KFast { get; }

    float Load(int batch, int outer, int k);
}

/// <summary>A plain strided matrix: element (o, k) of batch b is Data[b*BatchStride + o*OuterStride + k*KStride].</summary>
public struct StridedOperand<T, TE> : IGemmOperand
    where T : unmanaged
    where TE : struct, IElem<T>
{
    public ArrayView<T> Data;
    public long BatchStride;
    public long OuterStride;
    public long KStride;
    public int KFastFlag;

    public readonly int KFast => KFastFlag;

    public readonly float Load(int batch, int outer, int k) =>
        default(TE).ToFloat(Data[batch * BatchStride + outer * OuterStride + k * KStride]);
}

/// <summary>Writes alpha*acc + bias[n] (+ residual[m, n]) into C.</summary>
public interface IGemmEpilogue
{
    void Store(int batch, int m, int n, float acc);
}

public struct MatrixEpilogue<T, TE> : IGemmEpilogue
    where T : unmanaged
    where TE : struct, IElem<T>
{
    public ArrayView<T> C;
    public long BatchStrideC;
    public long Ldc;
    public float Alpha;
    public ArrayView<T> Bias;
    public int HasBias;
    public ArrayView<T> Residual;
    public long BatchStrideR;
    public long Ldr;
    public int HasResidual;

    public readonly void Store(int batch, int m, int n, float acc)
    {
        var e = default(TE);
        float v = Alpha * acc;
        if (HasBias != 0) v += e.ToFloat(Bias[n]);
        if (HasResidual != 0) v += e.ToFloat(Residual[batch * BatchStrideR + m * Ldr + n]);
        C[batch * BatchStrideC + m * Ldc + n] = e.FromFloat(v);
    }
}

public struct GemmArgs<TA, TB, TC>
    where TA : struct, IGemmOperand
    where TB : struct, IGemmOperand
    where TC : struct, IGemmEpilogue
{
    public TA A;
    public TB B;
    public TC C;
    public int M;
    public int N;
    public int K;
}

public static class GemmKernels
{
    /// <summary>Grid: (ceil(N/BN), ceil(M/BM), batch); group: TX*TY threads.</summary>
    public static void TiledKernel<TTile, TA, TB, TC>(GemmArgs<TA, TB, TC> p)
        where TTile : struct, IGemmTile
        where TA : struct, IGemmOperand
        where TB : struct, IGemmOperand
        where TC : struct, IGemmEpilogue
    {
        var tile = default(TTile);
        int bm = tile.TY * 8, bn = tile.TX * 8, bk = tile.BK;
        int threads = tile.TX * tile.TY;

        // k-major slices: As[k][m], Bs[k][n]; Float4 elements give 16-byte alignment for vector loads.
        var aS = SharedMemory.Allocate<Float4>(tile.BK * tile.TY * 2);
        var bS = SharedMemory.Allocate<Float4>(tile.BK * tile.TX * 2);
        var aSf = aS.Cast<float>();
        var bSf = bS.Cast<float>();

        int tid = Group.IdxX;
        int tx = tid % tile.TX, ty = tid / tile.TX;
        int m0 = Grid.IdxY * bm, n0 = Grid.IdxX * bn, batch = Grid.IdxZ;

        Float8 c0 = default, c1 = default, c2 = default, c3 = default;
        Float8 c4 = default, c5 = default, c6 = default, c7 = default;

        for (int k0 = 0; k0 < p.K; k0 += bk)
        {
            FillSlice(aSf, p.A, batch, m0, p.M, k0, p.K, bm, bk, tid, threads);
            FillSlice(bSf, p.B, batch, n0, p.N, k0, p.K, bn, bk, tid, threads);
            SharedBarrier.Sync();
            for (int kk = 0; kk < bk; kk++)
            {
                int ai = (kk * bm + ty * 8) >> 2;
                int bi = (kk * bn + tx * 8) >> 2;
                var a = Float8.From(aS[ai], aS[ai + 1]);
                var b = Float8.From(bS[bi], bS[bi + 1]);
                c0.Fma(a.V0, b); c1.Fma(a.V1, b); c2.Fma(a.V2, b); c3.Fma(a.V3, b);
                c4.Fma(a.V4, b); c5.Fma(a.V5, b); c6.Fma(a.V6, b); c7.Fma(a.V7, b);
            }
            SharedBarrier.Sync();
        }

        int mr = m0 + ty * 8, nc = n0 + tx * 8;
        StoreRow(p, batch, mr + 0, nc, c0); StoreRow(p, batch, mr + 1, nc, c1);
        StoreRow(p, batch, mr + 2, nc, c2); StoreRow(p, batch, mr + 3, nc, c3);
        StoreRow(p, batch, mr + 4, nc, c4); StoreRow(p, batch, mr + 5, nc, c5);
        StoreRow(p, batch, mr + 6, nc, c6); StoreRow(p, batch, mr + 7, nc, c7);
    }

    /// <summary>Copies the (outer0.., k0..) slice of an operand into shared memory as S[k][outer], zero-padded.</summary>
    private static void FillSlice<TOp>(ArrayView<float> s, TOp op, int batch, int outer0, int outerCount,
        int k0, int kCount, int bOuter, int bk, int tid, int threads)
        where TOp : struct, IGemmOperand
    {
        int total = bOuter * bk;
        for (int i = tid; i < total; i += threads)
        {
            int o, k;
            if (op.KFast != 0)
            {
                o = i / bk;
                k = i - o * bk;
            }
            else
            {
                k = i / bOuter;
                o = i - k * bOuter;
            }
            int go = outer0 + o, gk = k0 + k;
            s[k * bOuter + o] = go < outerCount && gk < kCount ? op.Load(batch, go, gk) : 0f;
        }
    }

    private static void StoreRow<TA, TB, TC>(in GemmArgs<TA, TB, TC> p, int batch, int m, int n, in Float8 r)
        where TA : struct, IGemmOperand
        where TB : struct, IGemmOperand
        where TC : struct, IGemmEpilogue
    {
        if (m >= p.M) return;
        int left = p.N - n;
        if (left > 0) p.C.Store(batch, m, n + 0, r.V0);
        if (left > 1) p.C.Store(batch, m, n + 1, r.V1);
        if (left > 2) p.C.Store(batch, m, n + 2, r.V2);
        if (left > 3) p.C.Store(batch, m, n + 3, r.V3);
        if (left > 4) p.C.Store(batch, m, n + 4, r.V4);
        if (left > 5) p.C.Store(batch, m, n + 5, r.V5);
        if (left > 6) p.C.Store(batch, m, n + 6, r.V6);
        if (left > 7) p.C.Store(batch, m, n + 7, r.V7);
    }
}
