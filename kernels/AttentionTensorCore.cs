using ILGPU;
using ILGPU.Runtime;
using StableDiffusion.Runtime;
using Half = ILGPU.Half;

namespace StableDiffusion.Kernels;

// Attention v2: fp16 flash attention on tensor cores (CUDA; emulated on the ILGPU CPU accelerator for the tests).
//
// A group of 4 warps owns 64 queries of one (batch, head); each warp keeps its 16 query rows as mma A fragments in
// registers for the whole kernel. Key/value tiles stream through shared memory with cp.async, double-buffered: tile
// t+1 is in flight while tile t is used. Per tile, per warp: S = Q K^T on mma.sync.m16n8k16 (K fragments by
// ldmatrix), masking of keys past the end or after the query (causal) only on the tiles that need it, the online
// softmax in fp32 on the accumulator registers (row max and sum across the 4 lanes of a row by shfl), P repacked
// from the score registers into fp16 A fragments without touching memory, and O += P V (V fragments by
// ldmatrix.trans, since V is stored key-major). At the end O is divided by the row sums, staged in shared memory as
// fp32 and written as coalesced rows. The register code is generated (AttentionTensorCore.Ptx.g.cs).
//
// Shared memory rows are the head dim rounded up to 16 (zero-filled) plus 8 halves of padding, an odd number of
// 16-byte chunks, so the 8 rows one ldmatrix phase reads fall in 8 different bank groups.

/// <summary>A head dim the tensor-core attention is generated for, and its key-tile size.</summary>
public interface IAttnTcShape
{
    int D { get; }
    int Bkv { get; }
}

public struct AttnTcD40 : IAttnTcShape
{
    public readonly int D => 40;
    public readonly int Bkv => 64;
}

public struct AttnTcD64 : IAttnTcShape
{
    public readonly int D => 64;
    public readonly int Bkv => 64;
}

public struct AttnTcD80 : IAttnTcShape
{
    public readonly int D => 80;
    public readonly int Bkv => 64;
}

public struct AttnTcD160 : IAttnTcShape
{
    public readonly int D => 160;
    public readonly int Bkv => 32;
}

public struct AttentionTcArgs
{
    /// <summary>Device addresses of element (batch 0, token 0, head 0) of Q, K and V.</summary>
    public long Q, K, V;
    public ArrayView<Half> O;
    public int Heads, Lq, Lk;
    public long LdQ, LdK, LdV, LdO;             // token (row) strides, elements
    public long BatchQ, BatchK, BatchV, BatchO; // batch strides, elements
    /// <summary>The softmax scale times log2(e): exponentials are ex2.</summary>
    public float ScaleLog2;
    public int Causal;
}

public static class AttentionTcKernels
{
    public const int BQ = 64, Threads = 128;

    /// <summary>16-byte chunks in a shared row (head dim rounded up to 16).</summary>
    public static int Chunks(int d) => (d + 15) / 16 * 2;

    /// <summary>Bytes per shared row: the chunks plus 8 halves of padding.</summary>
    public static int Stride(int d) => (Chunks(d) * 8 + 8) * 2;

    /// <summary>Dynamic shared memory: two K/V stages; the Q tile and the fp32 output tile reuse them.</summary>
    public static int SharedBytes(int d, int bkv) =>
        Math.Max(2 * 2 * bkv * Stride(d), Math.Max(BQ * Stride(d), BQ * (d + 4) * 4));

    /// <summary>Grid (ceil(Lq/64), B*H); 128 threads; <see cref="SharedBytes"/> of dynamic shared memory.</summary>
    public static void Flash<TS, TIsa>(AttentionTcArgs p)
        where TS : struct, IAttnTcShape
        where TIsa : struct, IPtxIsa
    {
        var shared = SharedMemory.GetDynamic<Int4>();
        int d = default(TS).D, bkv = default(TS).Bkv;
        int chunks = (d + 15) / 16 * 2;
        int stride = (chunks * 8 + 8) * 2;
        uint stageBytes = (uint)(2 * bkv * stride);
        if (default(TIsa).Emulated) PtxEmulator.BindShared(shared.Cast<byte>());
        AttnTcAsm.Declare<TS, TIsa>();

        int tid = Group.IdxX, lane = tid & 31, warp = tid >> 5;
        int q0 = Grid.IdxX * BQ;
        int bh = Grid.IdxY;
        int b = bh / p.Heads, h = bh - b * p.Heads;
        long qBase = p.Q + 2L * (b * p.BatchQ + (long)h * d);
        long kBase = p.K + 2L * (b * p.BatchK + (long)h * d);
        long vBase = p.V + 2L * (b * p.BatchV + (long)h * d);
        int kEnd = p.Causal != 0 ? Math.Min(p.Lk, q0 + BQ) : p.Lk;
        int tiles = (kEnd + bkv - 1) / bkv;

        // The Q tile goes to stage 1's region and key tile 0 to stage 0, in one group. Copy i of this thread is
        // chunk tid + 128 i of the tile: its (row, chunk) advance by (128 / chunks, 128 % chunks) with a carry.
        int r0 = tid / chunks, c0 = tid - r0 * chunks;
        int stepR = Threads / chunks, stepC = Threads - stepR * chunks;
        int ldq = (int)p.LdQ * 2, ldk = (int)p.LdK * 2, ldv = (int)p.LdV * 2; // row strides in bytes (checked to fit)
        for (int i = tid, r = r0, c = c0; i < BQ * chunks; i += Threads)
        {
            int qr = q0 + r;
            bool ok = qr < p.Lq && c * 8 < d;
            Ptx.CpAsync16<TIsa>(stageBytes + (uint)(r * stride + c * 16), ok ? qBase + (qr * ldq + c * 16) : 0, ok ? 16u : 0u);
            r += stepR;
            c += stepC;
            if (c >= chunks)
            {
                c -= chunks;
                r++;
            }
        }
        LoadKv<TIsa>(p, kBase, vBase, 0, 0, bkv, chunks, stride, d, tid, r0, c0, stepR, stepC, ldk, ldv);
        Ptx.CpAsyncCommit<TIsa>();
        Ptx.CpAsyncWaitAll<TIsa>();
        SharedBarrier.Sync();

        AttnTcAsm.LoadQ<TS, TIsa>(stageBytes + (uint)((warp * 16 + (lane & 15)) * stride + (lane >> 4) * 16));
        AttnTcAsm.Init<TS, TIsa>();

        uint kLane = (uint)(((lane & 7) + ((lane >> 4) << 3)) * stride + ((lane >> 3) & 1) * 16);
        uint vLane = (uint)(((lane & 7) + (((lane >> 3) & 1) << 3)) * stride + (lane >> 4) * 16);
        int warpRow = q0 + warp * 16;
        int row0 = warpRow + (lane >> 2);
        int col0 = 2 * (lane & 3);
        for (int t = 0; t < tiles; t++)
        {
            SharedBarrier.Sync(); // tile t has landed for every thread, and every warp is done with tile t-1's stage
            if (t + 1 < tiles)
                LoadKv<TIsa>(p, kBase, vBase, (uint)((t + 1) & 1) * stageBytes, (t + 1) * bkv, bkv, chunks, stride, d, tid,
                    r0, c0, stepR, stepC, ldk, ldv);
            Ptx.CpAsyncCommit<TIsa>();

            uint stage = (uint)(t & 1) * stageBytes;
            AttnTcAsm.Scores<TS, TIsa>(stage + kLane);
            int k0 = t * bkv;
            int valid = p.Lk - k0;
            bool causalHit = p.Causal != 0 && k0 + bkv - 1 > warpRow;
            if (valid < bkv || causalHit)
            {
                int lim0 = valid, lim1 = valid;
                if (p.Causal != 0)
                {
                    lim0 = Math.Min(lim0, row0 - k0 + 1);
                    lim1 = Math.Min(lim1, row0 + 8 - k0 + 1);
                }
                AttnTcAsm.Mask<TS, TIsa>(lim0 - col0, lim1 - col0);
            }
            AttnTcAsm.SoftmaxPv<TS, TIsa>(stage + (uint)(bkv * stride) + vLane, p.ScaleLog2);
            Ptx.CpAsyncWaitAll<TIsa>();
        }

        SharedBarrier.Sync(); // every warp is done with the stages: the output tile goes over them
        AttnTcAsm.Finish<TS, TIsa>((uint)(((warp * 16 + (lane >> 2)) * (d + 4) + col0) * 4));
        SharedBarrier.Sync();
        // 8 outputs (16 bytes) per store: rows of the staged tile are (d + 4) floats, a multiple of 16 bytes.
        var staged = shared.Cast<Float4>();
        var o8 = p.O.Cast<Int4>();
        long oBase = b * p.BatchO + (long)h * d;
        int runs = d / 8;
        for (int i = tid; i < BQ * runs; i += Threads)
        {
            int r = i / runs, c = (i - r * runs) * 8;
            int qr = q0 + r;
            if (qr < p.Lq)
            {
                int at = (r * (d + 4) + c) >> 2;
                var lo = staged[at];
                var hi = staged[at + 1];
                Int4 v;
                v.X = Fp16x2.Pack(lo.X, lo.Y);
                v.Y = Fp16x2.Pack(lo.Z, lo.W);
                v.Z = Fp16x2.Pack(hi.X, hi.Y);
                v.W = Fp16x2.Pack(hi.Z, hi.W);
                o8[(oBase + qr * p.LdO + c) >> 3] = v;
            }
        }
    }

    /// <summary>Issues the cp.async copies of keys k0.. of K and V into the stage at <paramref name="stage"/>.</summary>
    private static void LoadKv<TIsa>(in AttentionTcArgs p, long kBase, long vBase, uint stage, int k0, int bkv, int chunks,
        int stride, int d, int tid, int r0, int c0, int stepR, int stepC, int ldk, int ldv)
        where TIsa : struct, IPtxIsa
    {
        uint vStage = stage + (uint)(bkv * stride);
        for (int i = tid, r = r0, c = c0; i < bkv * chunks; i += Threads)
        {
            int key = k0 + r;
            bool ok = key < p.Lk && c * 8 < d;
            uint at = (uint)(r * stride + c * 16);
            Ptx.CpAsync16<TIsa>(stage + at, ok ? kBase + (key * ldk + c * 16) : 0, ok ? 16u : 0u);
            Ptx.CpAsync16<TIsa>(vStage + at, ok ? vBase + (key * ldv + c * 16) : 0, ok ? 16u : 0u);
            r += stepR;
            c += stepC;
            if (c >= chunks)
            {
                c -= chunks;
                r++;
            }
        }
    }
}
