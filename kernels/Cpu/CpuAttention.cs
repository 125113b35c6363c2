using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace StableDiffusion.Kernels.Cpu;

/// <summary>
/// Flash-style multi-head attention in fp32: per (batch, head, block of queries), key blocks of 64 with an online
/// softmax, so the lq × lk score matrix never exists. K is packed once per call transposed in 64-key blocks
/// ([D][64], so S = Q Kᵀ vectorizes over keys) and V with rows padded to a multiple of 16 (so O += P V vectorizes
/// over the head dimension); both micro-kernels keep a 4-row × up-to-4-vector tile of accumulators in registers.
/// </summary>
public static unsafe class CpuAttention
{
    private const int W = 16;
    private const int Bk = 64; // keys per block: four vectors of scores per query row

    /// <summary>
    /// q [batch, lq, heads·headDim], k and v [batch, lk, heads·headDim] → o like q:
    /// softmax(q kᵀ · scale) v per head; causal masks key j &gt; query i.
    /// </summary>
    public static void Attention(float* q, float* k, float* v, float* o, int batch, int lq, int lk, int heads, int headDim,
        float scale, bool causal)
    {
        if (batch <= 0 || lq <= 0 || lk <= 0 || heads <= 0 || headDim <= 0)
            throw new KernelArgumentException(
                $"cpu attention: sizes batch {batch}, lq {lq}, lk {lk}, heads {heads}, headDim {headDim} must be positive");
        if ((long)heads * headDim > int.MaxValue) throw new KernelArgumentException($"cpu attention: heads × headDim is too large");
        if (!float.IsFinite(scale)) throw new KernelArgumentException($"cpu attention: scale {scale} is not finite");
        if (q == null || k == null || v == null || o == null) throw new KernelArgumentException("cpu attention: null buffer");

        int d = headDim, dp = (d + W - 1) & ~(W - 1), hd = heads * d;
        int nKb = (lk + Bk - 1) / Bk, lkp = nKb * Bk;
        long bhCount = (long)batch * heads;
        float* kt = Alloc(bhCount * nKb * d * Bk);
        float* vp = Alloc(bhCount * lkp * dp);
        try
        {
            CpuChunks.For(bhCount * nKb, 1, (s, e) =>
            {
                for (long it = s; it < e; it++) PackKv(k, v, kt, vp, it, nKb, lk, heads, d, dp, hd);
            });

            int bq = d > 160 ? 32 : 64;
            int nQb = (lq + bq - 1) / bq;
            long items = bhCount * nQb;
            int workers = (int)Math.Min(CpuParallel.Threads, items);
            long next = -1;
            CpuParallel.For(workers, _ =>
            {
                float* qs = Alloc((long)bq * d), sc = Alloc((long)bq * Bk), acc = Alloc((long)bq * dp), ml = Alloc(2L * bq);
                try
                {
                    long it;
                    while ((it = Interlocked.Increment(ref next)) < items)
                    {
                        long bh = it / nQb;
                        int q0 = (int)(it - bh * nQb) * bq;
                        Block(q, o, kt, vp, qs, sc, acc, ml, ml + bq, bh, q0, Math.Min(bq, lq - q0), lq, lk, heads, d, dp, hd,
                            nKb, lkp, scale, causal);
                    }
                }
                finally
                {
                    NativeMemory.AlignedFree(qs); NativeMemory.AlignedFree(sc);
                    NativeMemory.AlignedFree(acc); NativeMemory.AlignedFree(ml);
                }
            });
        }
        finally
        {
            NativeMemory.AlignedFree(kt);
            NativeMemory.AlignedFree(vp);
        }
    }

    private static float* Alloc(long floats) => (float*)NativeMemory.AlignedAlloc((nuint)(Math.Max(floats, 1) * sizeof(float)), 64);

    // One 64-key block of one (batch, head): K transposed to [d][64] and V rows padded to dp, zeros past lk.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackKv(float* k, float* v, float* kt, float* vp, long it, int nKb, int lk, int heads, int d, int dp, int hd)
    {
        long bh = it / nKb;
        int kb = (int)(it - bh * nKb);
        long b = bh / heads;
        int h = (int)(bh - b * heads);
        float* kd = kt + it * d * Bk;
        float* vd = vp + (bh * nKb + kb) * Bk * dp;
        for (int jj = 0; jj < Bk; jj++)
        {
            int j = kb * Bk + jj;
            float* vr = vd + (long)jj * dp;
            if (j < lk)
            {
                float* ks = k + (b * lk + j) * hd + (long)h * d;
                float* vs = v + (b * lk + j) * hd + (long)h * d;
                for (int e = 0; e < d; e++) kd[e * Bk + jj] = ks[e];
                Buffer.MemoryCopy(vs, vr, d * sizeof(float), d * sizeof(float));
                for (int e = d; e < dp; e++) vr[e] = 0f;
            }
            else
            {
                for (int e = 0; e < d; e++) kd[e * Bk + jj] = 0f;
                for (int e = 0; e < dp; e++) vr[e] = 0f;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Block(float* q, float* o, float* kt, float* vp, float* qs, float* sc, float* acc, float* m, float* l,
        long bh, int q0, int nq, int lq, int lk, int heads, int d, int dp, int hd, int nKb, int lkp, float scale, bool causal)
    {
        long b = bh / heads;
        int h = (int)(bh - b * heads);
        int nq4 = (nq + 3) & ~3;
        // Q rows scaled once; padding rows are zero so the 4-row tiles never read garbage.
        for (int i = 0; i < nq4; i++)
        {
            float* dst = qs + (long)i * d;
            if (i < nq)
            {
                float* src = q + (b * lq + q0 + i) * hd + (long)h * d;
                for (int e = 0; e < d; e++) dst[e] = src[e] * scale;
            }
            else new Span<float>(dst, d).Clear();
            m[i] = float.NegativeInfinity;
            l[i] = 0f;
        }
        new Span<float>(acc, nq4 * dp).Clear();

        int kbEnd = causal ? Math.Min(nKb, (q0 + nq - 1) / Bk + 1) : nKb;
        for (int kb = 0; kb < kbEnd; kb++)
        {
            int k0 = kb * Bk, nk = Math.Min(Bk, lk - k0), nv = (nk + W - 1) / W;
            float* ktb = kt + (bh * nKb + kb) * d * Bk;
            for (int i = 0; i < nq4; i += 4)
            {
                switch (nv)
                {
                    case 4: Scores<N4>(qs + (long)i * d, d, ktb, sc + i * Bk); break;
                    case 3: Scores<N3>(qs + (long)i * d, d, ktb, sc + i * Bk); break;
                    case 2: Scores<N2>(qs + (long)i * d, d, ktb, sc + i * Bk); break;
                    default: Scores<N1>(qs + (long)i * d, d, ktb, sc + i * Bk); break;
                }
            }
            for (int i = 0; i < nq4; i++)
            {
                float* srow = sc + i * Bk;
                int lim = i < nq ? nk : 0;
                if (causal) lim = Math.Min(lim, q0 + i - k0 + 1);
                if (lim <= 0)
                {
                    new Span<float>(srow, nv * W).Clear(); // contributes nothing; keeps the P·V tile finite
                    continue;
                }
                for (int jj = lim; jj < nv * W; jj++) srow[jj] = float.NegativeInfinity;
                var vmax = Vector512.Load(srow);
                for (int t = 1; t < nv; t++) vmax = Vector512.Max(vmax, Vector512.Load(srow + t * W));
                float mOld = m[i], mNew = MathF.Max(mOld, CpuMath.Max(vmax));
                var vm = Vector512.Create(mNew);
                var vs = Vector512<float>.Zero;
                for (int t = 0; t < nv; t++)
                {
                    var p = CpuMath.Exp(Vector512.Load(srow + t * W) - vm);
                    vs += p;
                    Vector512.Store(p, srow + t * W);
                }
                float alpha = CpuMath.Exp(mOld - mNew); // 0 on the first block (mOld = -inf)
                l[i] = l[i] * alpha + Vector512.Sum(vs);
                m[i] = mNew;
                if (alpha != 1f)
                {
                    float* arow = acc + (long)i * dp;
                    var va = Vector512.Create(alpha);
                    for (int e = 0; e < dp; e += W) Vector512.Store(Vector512.Load(arow + e) * va, arow + e);
                }
            }
            float* vpb = vp + (bh * lkp + k0) * dp;
            for (int i = 0; i < nq4; i += 4)
            {
                float* p = sc + i * Bk, a = acc + (long)i * dp;
                int e = 0;
                for (; e + 4 * W <= dp; e += 4 * W) Pv<N4>(p, nk, vpb + e, dp, a + e);
                switch ((dp - e) / W)
                {
                    case 3: Pv<N3>(p, nk, vpb + e, dp, a + e); break;
                    case 2: Pv<N2>(p, nk, vpb + e, dp, a + e); break;
                    case 1: Pv<N1>(p, nk, vpb + e, dp, a + e); break;
                }
            }
        }

        for (int i = 0; i < nq; i++)
        {
            float inv = 1f / l[i];
            float* src = acc + (long)i * dp, dst = o + (b * lq + q0 + i) * hd + (long)h * d;
            var vi = Vector512.Create(inv);
            int e = 0;
            for (; e + W <= d; e += W) Vector512.Store(Vector512.Load(src + e) * vi, dst + e);
            for (; e < d; e++) dst[e] = src[e] * inv;
        }
    }

    private interface ICount { static abstract int N { get; } }
    private struct N1 : ICount { public static int N => 1; }
    private struct N2 : ICount { public static int N => 2; }
    private struct N3 : ICount { public static int N => 3; }
    private struct N4 : ICount { public static int N => 4; }

    // s[4 rows][Bk] = q[4 rows][d] · kt[d][Bk] for the first TN.N vectors of keys.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Scores<TN>(float* q, int d, float* kt, float* s) where TN : struct, ICount
    {
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default;
        Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default;
        float* q1 = q + d, q2 = q1 + d, q3 = q2 + d;
        for (int e = 0; e < d; e++)
        {
            float* kr = kt + e * Bk;
            var k0 = Vector512.Load(kr);
            var k1 = TN.N > 1 ? Vector512.Load(kr + W) : default;
            var k2 = TN.N > 2 ? Vector512.Load(kr + 2 * W) : default;
            var k3 = TN.N > 3 ? Vector512.Load(kr + 3 * W) : default;
            var b = Vector512.Create(q[e]);
            a00 = Vector512.FusedMultiplyAdd(b, k0, a00);
            if (TN.N > 1) a01 = Vector512.FusedMultiplyAdd(b, k1, a01);
            if (TN.N > 2) a02 = Vector512.FusedMultiplyAdd(b, k2, a02);
            if (TN.N > 3) a03 = Vector512.FusedMultiplyAdd(b, k3, a03);
            b = Vector512.Create(q1[e]);
            a10 = Vector512.FusedMultiplyAdd(b, k0, a10);
            if (TN.N > 1) a11 = Vector512.FusedMultiplyAdd(b, k1, a11);
            if (TN.N > 2) a12 = Vector512.FusedMultiplyAdd(b, k2, a12);
            if (TN.N > 3) a13 = Vector512.FusedMultiplyAdd(b, k3, a13);
            b = Vector512.Create(q2[e]);
            a20 = Vector512.FusedMultiplyAdd(b, k0, a20);
            if (TN.N > 1) a21 = Vector512.FusedMultiplyAdd(b, k1, a21);
            if (TN.N > 2) a22 = Vector512.FusedMultiplyAdd(b, k2, a22);
            if (TN.N > 3) a23 = Vector512.FusedMultiplyAdd(b, k3, a23);
            b = Vector512.Create(q3[e]);
            a30 = Vector512.FusedMultiplyAdd(b, k0, a30);
            if (TN.N > 1) a31 = Vector512.FusedMultiplyAdd(b, k1, a31);
            if (TN.N > 2) a32 = Vector512.FusedMultiplyAdd(b, k2, a32);
            if (TN.N > 3) a33 = Vector512.FusedMultiplyAdd(b, k3, a33);
        }
        Vector512.Store(a00, s); Vector512.Store(a10, s + Bk); Vector512.Store(a20, s + 2 * Bk); Vector512.Store(a30, s + 3 * Bk);
        if (TN.N > 1)
        {
            Vector512.Store(a01, s + W); Vector512.Store(a11, s + Bk + W);
            Vector512.Store(a21, s + 2 * Bk + W); Vector512.Store(a31, s + 3 * Bk + W);
        }
        if (TN.N > 2)
        {
            Vector512.Store(a02, s + 2 * W); Vector512.Store(a12, s + Bk + 2 * W);
            Vector512.Store(a22, s + 2 * Bk + 2 * W); Vector512.Store(a32, s + 3 * Bk + 2 * W);
        }
        if (TN.N > 3)
        {
            Vector512.Store(a03, s + 3 * W); Vector512.Store(a13, s + Bk + 3 * W);
            Vector512.Store(a23, s + 2 * Bk + 3 * W); Vector512.Store(a33, s + 3 * Bk + 3 * W);
        }
    }

    // acc[4 rows][TN.N vectors] += p[4 rows][nk] · v[nk][same vectors] (v rows dp apart, acc rows dp apart).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Pv<TN>(float* p, int nk, float* v, int dp, float* acc) where TN : struct, ICount
    {
        float* c0 = acc, c1 = acc + dp, c2 = c1 + dp, c3 = c2 + dp;
        var a00 = Vector512.Load(c0); var a10 = Vector512.Load(c1); var a20 = Vector512.Load(c2); var a30 = Vector512.Load(c3);
        var a01 = TN.N > 1 ? Vector512.Load(c0 + W) : default; var a11 = TN.N > 1 ? Vector512.Load(c1 + W) : default;
        var a21 = TN.N > 1 ? Vector512.Load(c2 + W) : default; var a31 = TN.N > 1 ? Vector512.Load(c3 + W) : default;
        var a02 = TN.N > 2 ? Vector512.Load(c0 + 2 * W) : default; var a12 = TN.N > 2 ? Vector512.Load(c1 + 2 * W) : default;
        var a22 = TN.N > 2 ? Vector512.Load(c2 + 2 * W) : default; var a32 = TN.N > 2 ? Vector512.Load(c3 + 2 * W) : default;
        var a03 = TN.N > 3 ? Vector512.Load(c0 + 3 * W) : default; var a13 = TN.N > 3 ? Vector512.Load(c1 + 3 * W) : default;
        var a23 = TN.N > 3 ? Vector512.Load(c2 + 3 * W) : default; var a33 = TN.N > 3 ? Vector512.Load(c3 + 3 * W) : default;
        for (int j = 0; j < nk; j++)
        {
            float* vr = v + (long)j * dp;
            var v0 = Vector512.Load(vr);
            var v1 = TN.N > 1 ? Vector512.Load(vr + W) : default;
            var v2 = TN.N > 2 ? Vector512.Load(vr + 2 * W) : default;
            var v3 = TN.N > 3 ? Vector512.Load(vr + 3 * W) : default;
            var b = Vector512.Create(p[j]);
            a00 = Vector512.FusedMultiplyAdd(b, v0, a00);
            if (TN.N > 1) a01 = Vector512.FusedMultiplyAdd(b, v1, a01);
            if (TN.N > 2) a02 = Vector512.FusedMultiplyAdd(b, v2, a02);
            if (TN.N > 3) a03 = Vector512.FusedMultiplyAdd(b, v3, a03);
            b = Vector512.Create(p[Bk + j]);
            a10 = Vector512.FusedMultiplyAdd(b, v0, a10);
            if (TN.N > 1) a11 = Vector512.FusedMultiplyAdd(b, v1, a11);
            if (TN.N > 2) a12 = Vector512.FusedMultiplyAdd(b, v2, a12);
            if (TN.N > 3) a13 = Vector512.FusedMultiplyAdd(b, v3, a13);
            b = Vector512.Create(p[2 * Bk + j]);
            a20 = Vector512.FusedMultiplyAdd(b, v0, a20);
            if (TN.N > 1) a21 = Vector512.FusedMultiplyAdd(b, v1, a21);
            if (TN.N > 2) a22 = Vector512.FusedMultiplyAdd(b, v2, a22);
            if (TN.N > 3) a23 = Vector512.FusedMultiplyAdd(b, v3, a23);
            b = Vector512.Create(p[3 * Bk + j]);
            a30 = Vector512.FusedMultiplyAdd(b, v0, a30);
            if (TN.N > 1) a31 = Vector512.FusedMultiplyAdd(b, v1, a31);
            if (TN.N > 2) a32 = Vector512.FusedMultiplyAdd(b, v2, a32);
            if (TN.N > 3) a33 = Vector512.FusedMultiplyAdd(b, v3, a33);
        }
        Vector512.Store(a00, c0); Vector512.Store(a10, c1); Vector512.Store(a20, c2); Vector512.Store(a30, c3);
        if (TN.N > 1) { Vector512.Store(a01, c0 + W); Vector512.Store(a11, c1 + W); Vector512.Store(a21, c2 + W); Vector512.Store(a31, c3 + W); }
        if (TN.N > 2) { Vector512.Store(a02, c0 + 2 * W); Vector512.Store(a12, c1 + 2 * W); Vector512.Store(a22, c2 + 2 * W); Vector512.Store(a32, c3 + 2 * W); }
        if (TN.N > 3) { Vector512.Store(a03, c0 + 3 * W); Vector512.Store(a13, c1 + 3 * W); Vector512.Store(a23, c2 + 3 * W); Vector512.Store(a33, c3 + 3 * W); }
    }
}
