using ILGPU;
using ILGPU.Runtime;
using StableDiffusion.Runtime;
using Half = ILGPU.Half;

namespace StableDiffusion.Kernels;

// Fused attention O = softmax(Q K^T * scale) V with an online softmax (flash-attention style): the score matrix is
// never stored; only a BQ x BKV tile of it lives in shared memory.
//
// v1 (this file): portable SIMT kernel. A group owns BQ queries of one (batch, head); each query row is served by
// TPR threads. Per key tile: K and V tiles are staged in shared memory, each thread scores BKV/TPR keys for its row,
// the row max is combined through shared memory, and each thread updates its D/TPR output dimensions, which it
// keeps in registers (fields of Reg16, never an indexed array). Inputs are [B, L, H*D] with any row stride, so Q, K
// and V can be slices of one fused projection without a copy and no head transpose is needed.

public interface IAttentionTile
{
    /// <summary>Queries per group.</summary>
    int BQ { get; }
    /// <summary>Keys per shared-memory tile.</summary>
    int BKV { get; }
    /// <summary>Threads per query row; the head dim must be a multiple of TPR with D/TPR at most 16.</summary>
    int TPR { get; }
    /// <summary>Largest head dim the static shared tiles hold.</summary>
    int MaxD { get; }
}

// Shared memory is static, sized by MaxD: ILGPU's dynamic shared memory gave wrong attention results on an
// OpenCL device (PoCL) while static allocations work on every backend.

public struct AttnTileD64 : IAttentionTile
{
    public readonly int BQ => 16;
    public readonly int BKV => 32;
    public readonly int TPR => 8;
    public readonly int MaxD => 64;
}

public struct AttnTileD128 : IAttentionTile
{
    public readonly int BQ => 16;
    public readonly int BKV => 32;
    public readonly int TPR => 8;
    public readonly int MaxD => 128;
}

public struct AttnTileD256 : IAttentionTile
{
    public readonly int BQ => 8;
    public readonly int BKV => 16;
    public readonly int TPR => 16;
    public readonly int MaxD => 256;
}

public struct AttnTileD512 : IAttentionTile
{
    public readonly int BQ => 4;
    public readonly int BKV => 8;
    public readonly int TPR => 32;
    public readonly int MaxD => 512;
}

public struct AttnTileTestD128 : IAttentionTile
{
    public readonly int BQ => 2;
    public readonly int BKV => 4;
    public readonly int TPR => 8;
    public readonly int MaxD => 128;
}

public struct AttnTileTestD256 : IAttentionTile
{
    public readonly int BQ => 1;
    public readonly int BKV => 4;
    public readonly int TPR => 16;
    public readonly int MaxD => 256;
}

public struct AttnTileTestD512 : IAttentionTile
{
    public readonly int BQ => 1;
    public readonly int BKV => 4;
    public readonly int TPR => 32;
    public readonly int MaxD => 512;
}

/// <summary>Up to 16 output dimensions of one thread, in registers.</summary>
public struct Reg16
{
    public float A0, A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A14, A15;

    public void Scale(float s)
    {
        A0 *= s; A1 *= s; A2 *= s; A3 *= s; A4 *= s; A5 *= s; A6 *= s; A7 *= s;
        A8 *= s; A9 *= s; A10 *= s; A11 *= s; A12 *= s; A13 *= s; A14 *= s; A15 *= s;
    }

    /// <summary>A_x += p * v[offset + x*stride] for x below r.</summary>
    public void Axpy(float p, ArrayView<float> v, int offset, int stride, int r)
    {
        A0 += p * v[offset];
        if (r > 1) A1 += p * v[offset + stride];
        if (r > 2) A2 += p * v[offset + 2 * stride];
        if (r > 3) A3 += p * v[offset + 3 * stride];
        if (r > 4) A4 += p * v[offset + 4 * stride];
        if (r > 5) A5 += p * v[offset + 5 * stride];
        if (r > 6) A6 += p * v[offset + 6 * stride];
        if (r > 7) A7 += p * v[offset + 7 * stride];
        if (r > 8) A8 += p * v[offset + 8 * stride];
        if (r > 9) A9 += p * v[offset + 9 * stride];
        if (r > 10) A10 += p * v[offset + 10 * stride];
        if (r > 11) A11 += p * v[offset + 11 * stride];
        if (r > 12) A12 += p * v[offset + 12 * stride];
        if (r > 13) A13 += p * v[offset + 13 * stride];
        if (r > 14) A14 += p * v[offset + 14 * stride];
        if (r > 15) A15 += p * v[offset + 15 * stride];
    }

    public readonly void Store<T, TE>(ArrayView<T> o, long offset, int stride, int r, float s)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        var e = default(TE);
        o[offset] = e.FromFloat(A0 * s);
        if (r > 1) o[offset + stride] = e.FromFloat(A1 * s);
        if (r > 2) o[offset + 2 * stride] = e.FromFloat(A2 * s);
        if (r > 3) o[offset + 3 * stride] = e.FromFloat(A3 * s);
        if (r > 4) o[offset + 4 * stride] = e.FromFloat(A4 * s);
        if (r > 5) o[offset + 5 * stride] = e.FromFloat(A5 * s);
        if (r > 6) o[offset + 6 * stride] = e.FromFloat(A6 * s);
        if (r > 7) o[offset + 7 * stride] = e.FromFloat(A7 * s);
        if (r > 8) o[offset + 8 * stride] = e.FromFloat(A8 * s);
        if (r > 9) o[offset + 9 * stride] = e.FromFloat(A9 * s);
        if (r > 10) o[offset + 10 * stride] = e.FromFloat(A10 * s);
        if (r > 11) o[offset + 11 * stride] = e.FromFloat(A11 * s);
        if (r > 12) o[offset + 12 * stride] = e.FromFloat(A12 * s);
        if (r > 13) o[offset + 13 * stride] = e.FromFloat(A13 * s);
        if (r > 14) o[offset + 14 * stride] = e.FromFloat(A14 * s);
        if (r > 15) o[offset + 15 * stride] = e.FromFloat(A15 * s);
    }
}

public struct AttentionArgs<T> where T : unmanaged
{
    public ArrayView<T> Q, K, V, O;
    public int Heads, Lq, Lk, D;
    public long LdQ, LdK, LdV, LdO;             // token (row) strides
    public long BatchQ, BatchK, BatchV, BatchO; // batch strides
    public float Scale;
    public int Causal;
}

public static class AttentionKernels
{
    /// <summary>Grid (ceil(Lq/BQ), B*H); group BQ*TPR threads.</summary>
    public static void FlashSimt<T, TE, TTile>(AttentionArgs<T> p)
        where T : unmanaged
        where TE : struct, IElem<T>
        where TTile : struct, IAttentionTile
    {
        var e = default(TE);
        var tile = default(TTile);
        int bq = tile.BQ, bkv = tile.BKV, tpr = tile.TPR;
        int threads = bq * tpr;
        int d = p.D, ld = d + 1; // padded rows avoid bank conflicts between rows
        int r = d / tpr;

        var qS = SharedMemory.Allocate<float>(tile.BQ * (tile.MaxD + 1));
        var kS = SharedMemory.Allocate<float>(tile.BKV * (tile.MaxD + 1));
        var vS = SharedMemory.Allocate<float>(tile.BKV * tile.MaxD);
        var pS = SharedMemory.Allocate<float>(tile.BQ * tile.BKV);
        var red = SharedMemory.Allocate<float>(tile.BQ * tile.TPR);

        int tid = Group.IdxX;
        int row = tid / tpr, lane = tid - row * tpr;
        int q0 = Grid.IdxX * bq;
        int qi = q0 + row;
        int bh = Grid.IdxY;
        int b = bh / p.Heads, h = bh - b * p.Heads;
        long qBase = b * p.BatchQ + (long)h * d;
        long kBase = b * p.BatchK + (long)h * d;
        long vBase = b * p.BatchV + (long)h * d;

        for (int i = tid; i < bq * d; i += threads)
        {
            int rr = i / d, dd = i - rr * d;
            int qr = q0 + rr;
            qS[rr * ld + dd] = qr < p.Lq ? e.ToFloat(p.Q[qBase + qr * p.LdQ + dd]) * p.Scale : 0f;
        }

        Reg16 o = default;
        float m = float.NegativeInfinity;
        float l = 0f;
        int kEnd = p.Causal != 0 ? Math.Min(p.Lk, q0 + bq) : p.Lk;
        int scoresPerThread = (bkv + tpr - 1) / tpr;

        for (int k0 = 0; k0 < kEnd; k0 += bkv)
        {
            for (int i = tid; i < bkv * d; i += threads)
            {
                int j = i / d, dd = i - j * d;
                int kj = k0 + j;
                bool ok = kj < p.Lk;
                kS[j * ld + dd] = ok ? e.ToFloat(p.K[kBase + kj * p.LdK + dd]) : 0f;
                vS[j * d + dd] = ok ? e.ToFloat(p.V[vBase + kj * p.LdV + dd]) : 0f;
            }
            SharedBarrier.Sync();

            float tileMax = float.NegativeInfinity;
            for (int t = 0; t < scoresPerThread; t++)
            {
                int j = lane + t * tpr;
                if (j < bkv)
                {
                    float s = 0f;
                    int qo = row * ld, ko = j * ld;
                    for (int dd = 0; dd < d; dd++) s += qS[qo + dd] * kS[ko + dd];
                    int kj = k0 + j;
                    if (kj >= p.Lk || (p.Causal != 0 && kj > qi)) s = float.NegativeInfinity;
                    pS[row * bkv + j] = s;
                    tileMax = Math.Max(tileMax, s);
                }
            }
            red[row * tpr + lane] = tileMax;
            SharedBarrier.Sync();
            for (int x = 0; x < tpr; x++) tileMax = Math.Max(tileMax, red[row * tpr + x]);

            float mNew = Math.Max(m, tileMax);
            float alpha = mNew == float.NegativeInfinity ? 1f : MathF.Exp(m - mNew);
            l *= alpha;
            for (int t = 0; t < scoresPerThread; t++)
            {
                int j = lane + t * tpr;
                if (j < bkv)
                {
                    float s = pS[row * bkv + j];
                    float pj = s == float.NegativeInfinity ? 0f : MathF.Exp(s - mNew);
                    pS[row * bkv + j] = pj;
                    l += pj;
                }
            }
            m = mNew;
            SharedBarrier.Sync();

            o.Scale(alpha);
            for (int j = 0; j < bkv; j++) o.Axpy(pS[row * bkv + j], vS, j * d + lane, tpr, r);
            SharedBarrier.Sync();
        }

        red[row * tpr + lane] = l;
        SharedBarrier.Sync();
        float total = 0f;
        for (int x = 0; x < tpr; x++) total += red[row * tpr + x];
        if (qi < p.Lq)
            o.Store<T, TE>(p.O, b * p.BatchO + qi * p.LdO + (long)h * d + lane, tpr, r, 1f / total);
    }
}

/// <summary>Attention kernel variants, selectable for tests and benchmarks.</summary>
public enum AttentionVariant
{
    Auto,
    /// <summary>attention_flash_simt: any float dtype, head dims up to 512, every backend.</summary>
    Simt,
    /// <summary>attention_flash_mma: fp16 on tensor cores, head dims 40, 64, 80, 160 (CUDA; emulated on the CPU accelerator).</summary>
    TensorCore,
}

public static class Attention
{
    /// <summary>Head dims the tensor-core kernel is generated for.</summary>
    public static readonly int[] TensorCoreHeadDims = [40, 64, 80, 160];

    /// <summary>
    /// O = softmax(Q K^T * scale [+ causal mask]) V per head. Q: [B, Lq, H*D], K and V: [B, Lk, H*D], O: [B, Lq, H*D].
    /// Q, K and V may be wider than H*D (e.g. one fused projection [B, L, 3*H*D]); the column offsets then say where
    /// each starts, and the row stride is the tensor's last dimension.
    /// </summary>
    public static void Run(KernelRuntime rt, Tensor q, Tensor k, Tensor v, Tensor o, int heads, float scale,
        bool causal = false, int qOffset = 0, int kOffset = 0, int vOffset = 0, AttentionVariant variant = AttentionVariant.Auto)
    {
        if (q.Rank != 3 || k.Rank != 3 || v.Rank != 3 || o.Rank != 3)
            throw new KernelArgumentException($"attention: expected [B, L, H*D] tensors, got q {q}, k {k}, v {v}, o {o}");
        if (!q.DType.IsFloat() || k.DType != q.DType || v.DType != q.DType || o.DType != q.DType)
            throw new KernelArgumentException($"attention: q {q}, k {k}, v {v} and o {o} must share one float dtype");
        int bsz = o.Dim(0), lq = o.Dim(1), hd = o.Dim(2);
        if (heads <= 0 || hd % heads != 0)
            throw new KernelArgumentException($"attention: width {hd} does not split into {heads} heads");
        int d = hd / heads;
        int lk = k.Dim(1);
        if (q.Dim(0) != bsz || k.Dim(0) != bsz || v.Dim(0) != bsz || q.Dim(1) != lq || v.Dim(1) != lk)
            throw new KernelArgumentException($"attention: batch or length mismatch between q {q}, k {k}, v {v}, o {o}");
        if (lq < 1 || lk < 1) throw new KernelArgumentException($"attention: empty sequence (Lq={lq}, Lk={lk})");
        long ldq = q.Dim(2), ldk = k.Dim(2), ldv = v.Dim(2);
        if (qOffset < 0 || kOffset < 0 || vOffset < 0 || qOffset + hd > ldq || kOffset + hd > ldk || vOffset + hd > ldv)
            throw new KernelArgumentException(
                $"attention: column offsets {qOffset}/{kOffset}/{vOffset} + width {hd} exceed the rows of q {q}, k {k}, v {v}");
        if ((long)bsz * heads > 65535) throw new KernelArgumentException($"attention: B*H = {(long)bsz * heads} exceeds 65535");
        if (variant != AttentionVariant.Simt)
        {
            var why = TensorCoreBlocker(rt, q, k, v, o, d, ldq, ldk, ldv, qOffset, kOffset, vOffset, variant == AttentionVariant.TensorCore);
            if (why is null)
            {
                LaunchTensorCore(rt, q, k, v, o, heads, d, lq, lk, bsz, ldq, ldk, ldv, qOffset, kOffset, vOffset, scale, causal);
                return;
            }
            if (variant == AttentionVariant.TensorCore)
                throw new KernelArgumentException($"attention: the tensor-core kernel cannot run this problem: {why}");
        }
        int maxD = d % 8 == 0 && d <= 64 ? 64 : d % 8 == 0 && d <= 128 ? 128 : d % 16 == 0 && d <= 256 ? 256 : d % 32 == 0 && d <= 512 ? 512 : 0;
        if (maxD == 0)
            throw new KernelArgumentException($"attention: head dim {d} is not supported (a multiple of 8 up to 128, of 16 up to 256, or of 32 up to 512)");

        if (q.DType == DType.F32)
            Launch<float, F32Elem>(rt, q, k, v, o, heads, d, lq, lk, bsz, ldq, ldk, ldv, qOffset, kOffset, vOffset, scale, causal, maxD);
        else
            Launch<Half, F16Elem>(rt, q, k, v, o, heads, d, lq, lk, bsz, ldq, ldk, ldv, qOffset, kOffset, vOffset, scale, causal, maxD);
    }

    private static void Launch<T, TE>(KernelRuntime rt, Tensor q, Tensor k, Tensor v, Tensor o, int heads, int d,
        int lq, int lk, int bsz, long ldq, long ldk, long ldv, int qOff, int kOff, int vOff, float scale, bool causal, int maxD)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        var args = new AttentionArgs<T>
        {
            Q = Skip(q.View<T>(), qOff), K = Skip(k.View<T>(), kOff), V = Skip(v.View<T>(), vOff), O = o.View<T>(),
            Heads = heads, Lq = lq, Lk = lk, D = d,
            LdQ = ldq, LdK = ldk, LdV = ldv, LdO = o.Dim(2),
            BatchQ = (long)lq * ldq, BatchK = (long)lk * ldk, BatchV = (long)lk * ldv, BatchO = (long)lq * o.Dim(2),
            Scale = scale, Causal = causal ? 1 : 0,
        };
        bool test = rt.Profile == KernelProfile.Test;
        switch (maxD, test)
        {
            case (64, false): Go<AttnTileD64>(); break;
            case (128, false): Go<AttnTileD128>(); break;
            case (256, false): Go<AttnTileD256>(); break;
            case (512, false): Go<AttnTileD512>(); break;
            case (64 or 128, true): Go<AttnTileTestD128>(); break;
            case (256, true): Go<AttnTileTestD256>(); break;
            default: Go<AttnTileTestD512>(); break;
        }

        void Go<TTile>() where TTile : struct, IAttentionTile
        {
            var t = default(TTile);
            var cfg = new KernelConfig(new Index3D(KernelMath.CeilDiv(lq, t.BQ), bsz * heads, 1), new Index3D(t.BQ * t.TPR, 1, 1));
            rt.Launch("attention", AttentionKernels.FlashSimt<T, TE, TTile>, cfg, args);
        }
    }

    /// <summary>Why the tensor-core kernel cannot take this problem, or null when it can.</summary>
    private static string? TensorCoreBlocker(KernelRuntime rt, Tensor q, Tensor k, Tensor v, Tensor o, int d,
        long ldq, long ldk, long ldv, int qOff, int kOff, int vOff, bool requested)
    {
        if (!Gemm.TensorCoreDevice(rt, requested)) return "it needs a CUDA device (or the ILGPU CPU accelerator, which emulates it)";
        if (q.DType != DType.F16) return "it needs fp16";
        if (Array.IndexOf(TensorCoreHeadDims, d) < 0) return $"head dim {d} is not one of {string.Join(", ", TensorCoreHeadDims)}";
        if (ldq % 8 != 0 || ldk % 8 != 0 || ldv % 8 != 0 || qOff % 8 != 0 || kOff % 8 != 0 || vOff % 8 != 0)
            return "row strides and column offsets must be multiples of 8 (16-byte copies)";
        if ((Gemm.Address(q) | Gemm.Address(k) | Gemm.Address(v) | Gemm.Address(o)) % 16 != 0 || o.Dim(2) % 8 != 0)
            return "q, k, v and o must be 16-byte aligned";
        if ((long)Math.Max(q.Dim(1), k.Dim(1)) * Math.Max(ldq, Math.Max(ldk, ldv)) * 2 >= int.MaxValue)
            return "a batch of q, k or v spans 2 GiB or more";
        if ((long)o.Dim(0) * o.Dim(1) * o.Dim(2) == 0) return "empty output";
        return null;
    }

    private static void LaunchTensorCore(KernelRuntime rt, Tensor q, Tensor k, Tensor v, Tensor o, int heads, int d,
        int lq, int lk, int bsz, long ldq, long ldk, long ldv, int qOff, int kOff, int vOff, float scale, bool causal)
    {
        var args = new AttentionTcArgs
        {
            Q = Gemm.Address(q) + 2L * qOff, K = Gemm.Address(k) + 2L * kOff, V = Gemm.Address(v) + 2L * vOff,
            O = o.View<Half>(),
            Heads = heads, Lq = lq, Lk = lk,
            LdQ = ldq, LdK = ldk, LdV = ldv, LdO = o.Dim(2),
            BatchQ = (long)lq * ldq, BatchK = (long)lk * ldk, BatchV = (long)lk * ldv, BatchO = (long)lq * o.Dim(2),
            ScaleLog2 = scale * 1.44269504088896341f,
            Causal = causal ? 1 : 0,
        };
        switch (d)
        {
            case 40: Go<AttnTcD40>(); break;
            case 64: Go<AttnTcD64>(); break;
            case 80: Go<AttnTcD80>(); break;
            default: Go<AttnTcD160>(); break;
        }

        void Go<TS>() where TS : struct, IAttnTcShape
        {
            var s = default(TS);
            var cfg = new KernelConfig(new Index3D(KernelMath.CeilDiv(lq, AttentionTcKernels.BQ), bsz * heads, 1),
                new Index3D(AttentionTcKernels.Threads, 1, 1),
                SharedMemoryConfig.RequestDynamic<Int4>(AttentionTcKernels.SharedBytes(s.D, s.Bkv) / 16));
            rt.LaunchTensorCore("attention_mma", AttentionTcKernels.Flash<TS, NativePtx>, AttentionTcKernels.Flash<TS, EmulatedPtx>,
                cfg, args);
        }
    }

    private static ArrayView<T> Skip<T>(ArrayView<T> v, int offset) where T : unmanaged =>
        v.SubView(offset, v.Length - offset);

    internal static IEnumerable<KernelEntry> Entries()
    {
        foreach (var e in EntriesFor<float, F32Elem>("fp32")) yield return e;
        foreach (var e in EntriesFor<Half, F16Elem>("fp16")) yield return e;
        foreach (var e in TensorCoreEntries()) yield return e;
    }

    private static IEnumerable<KernelEntry> TensorCoreEntries()
    {
        yield return TcEntry<AttnTcD40>();
        yield return TcEntry<AttnTcD64>();
        yield return TcEntry<AttnTcD80>();
        yield return TcEntry<AttnTcD160>();
    }

    private static KernelEntry TcEntry<TS>() where TS : struct, IAttnTcShape
    {
        var s = default(TS);
        return KernelRuntime.Entry<AttentionTcArgs>("attention_flash_mma", $"fp16 d{s.D} q64 kv{s.Bkv} t128",
            AttentionTcKernels.Flash<TS, NativePtx>, AttentionTcKernels.SharedBytes(s.D, s.Bkv), tensorCore: true);
    }

    private static IEnumerable<KernelEntry> EntriesFor<T, TE>(string dt)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        yield return KernelRuntime.Entry<AttentionArgs<T>>("attention_flash_simt", $"{dt} q16 kv32 tpr8 d<=64", AttentionKernels.FlashSimt<T, TE, AttnTileD64>);
        yield return KernelRuntime.Entry<AttentionArgs<T>>("attention_flash_simt", $"{dt} q16 kv32 tpr8 d<=128", AttentionKernels.FlashSimt<T, TE, AttnTileD128>);
        yield return KernelRuntime.Entry<AttentionArgs<T>>("attention_flash_simt", $"{dt} q8 kv16 tpr16 d<=256", AttentionKernels.FlashSimt<T, TE, AttnTileD256>);
        yield return KernelRuntime.Entry<AttentionArgs<T>>("attention_flash_simt", $"{dt} q4 kv8 tpr32 d<=512", AttentionKernels.FlashSimt<T, TE, AttnTileD512>);
    }
}
