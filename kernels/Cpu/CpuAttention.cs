using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace StableDiffusion.Kernels.Cpu;

/// <summary>
/// Flash-style multi-head attention in fp32, vectorised over queries: per (batch, head, block of 64 queries) the
/// block's Q is held transposed ([D][64], scaled once) and so are the scores (Sᵀ [keys][64]) and the output
/// accumulator (Oᵀ [D][64]). Keys and values are read in place, one broadcast scalar at a time, so neither is packed
/// or padded: head dimension 40 costs 40 rows, 77 keys cost 77 rows. The online softmax is elementwise across a
/// key block's rows (running max, sum and rescale are vectors of 16 queries; no horizontal reductions), and the
/// lq × lk score matrix never exists. QKᵀ and PV share one micro-kernel, a 4-row × 4-vector tile of accumulators.
/// </summary>
public static unsafe class CpuAttention
{
    private const int W = 16;
    private const int Bq = 4 * W; // queries per block: four vectors
    private const int Bk = 64;    // keys per softmax block

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

        int d = headDim;
        int nQb = (lq + Bq - 1) / Bq;
        long items = (long)batch * heads * nQb;
        int workers = (int)Math.Min(CpuParallel.Threads, items);
        long next = -1;
        CpuParallel.For(workers, _ =>
        {
            float* qt = Alloc((long)d * Bq), st = Alloc((long)Bk * Bq), ot = Alloc((long)d * Bq), ml = Alloc(3L * Bq);
            try
            {
                long it;
                while ((it = Interlocked.Increment(ref next)) < items)
                {
                    long bh = it / nQb;
                    int q0 = (int)(it - bh * nQb) * Bq;
                    Block(q, k, v, o, qt, st, ot, ml, bh, q0, Math.Min(Bq, lq - q0), lq, lk, heads, d, scale, causal);
                }
            }
            finally
            {
                NativeMemory.AlignedFree(qt); NativeMemory.AlignedFree(st);
                NativeMemory.AlignedFree(ot); NativeMemory.AlignedFree(ml);
            }
        });
    }

    private static float* Alloc(long floats) => (float*)NativeMemory.AlignedAlloc((nuint)(Math.Max(floats, 1) * sizeof(float)), 64);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Block(float* q, float* k, float* v, float* o, float* qt, float* st, float* ot, float* ml,
        long bh, int q0, int nq, int lq, int lk, int heads, int d, float scale, bool causal)
    {
        long b = bh / heads;
        int h = (int)(bh - b * heads), hd = heads * d;
        float* m = ml, l = ml + Bq, alpha = ml + 2 * Bq;
        // Qᵀ scaled once; padding queries are zero (their lanes are computed and never written).
        for (int i = 0; i < Bq; i++)
        {
            float* src = q + (b * lq + q0 + i) * hd + (long)h * d;
            if (i < nq)
                for (int e = 0; e < d; e++) qt[e * Bq + i] = src[e] * scale;
            else
                for (int e = 0; e < d; e++) qt[e * Bq + i] = 0f;
            m[i] = float.NegativeInfinity;
            l[i] = 0f;
        }
        new Span<float>(ot, d * Bq).Clear();

        float* kh = k + b * lk * hd + (long)h * d, vh = v + b * lk * hd + (long)h * d;
        // Causal: keys past the block's last query are masked for every query in it. Key 0 is never masked, so
        // the first block gives every query a finite running max.
        int kEnd = causal ? Math.Min(lk, q0 + nq) : lk;
        for (int k0 = 0; k0 < kEnd; k0 += Bk)
        {
            int nk = Math.Min(Bk, kEnd - k0);
            float* kb = kh + (long)k0 * hd;
            int j = 0;
            for (; j + 4 <= nk; j += 4) Tile<R4>(kb + (long)j * hd, hd, 1, qt, d, st + j * Bq, null);
            switch (nk - j)
            {
                case 3: Tile<R3>(kb + (long)j * hd, hd, 1, qt, d, st + j * Bq, null); break;
                case 2: Tile<R2>(kb + (long)j * hd, hd, 1, qt, d, st + j * Bq, null); break;
                case 1: Tile<R1>(kb + (long)j * hd, hd, 1, qt, d, st + j * Bq, null); break;
            }
            if (causal && k0 + nk - 1 > q0)
                for (int jj = Math.Max(0, q0 + 1 - k0); jj < nk; jj++) // key k0+jj is masked for queries q0+i < k0+jj
                {
                    float* srow = st + jj * Bq;
                    for (int i = 0, iEnd = Math.Min(Bq, k0 + jj - q0); i < iEnd; i++) srow[i] = float.NegativeInfinity;
                }

            for (int t = 0; t < Bq; t += W)
            {
                float* sc = st + t;
                var vmax = Vector512.Load(sc);
                for (int jj = 1; jj < nk; jj++) vmax = Vector512.MaxNative(vmax, Vector512.Load(sc + jj * Bq));
                var mOld = Vector512.Load(m + t);
                var mNew = Vector512.Max(mOld, vmax);
                var vs = Vector512<float>.Zero;
                for (int jj = 0; jj < nk; jj++)
                {
                    var p = CpuMath.ExpNonPositive(Vector512.Load(sc + jj * Bq) - mNew);
                    vs += p;
                    Vector512.Store(p, sc + jj * Bq);
                }
                var a = CpuMath.Exp(mOld - mNew); // 0 on the first block (mOld = -inf)
                Vector512.Store(Vector512.Load(l + t) * a + vs, l + t);
                Vector512.Store(mNew, m + t);
                Vector512.Store(a, alpha + t);
            }

            float* vb = vh + (long)k0 * hd;
            int e = 0;
            for (; e + 4 <= d; e += 4) Tile<R4>(vb + e, 1, hd, st, nk, ot + e * Bq, alpha);
            switch (d - e)
            {
                case 3: Tile<R3>(vb + e, 1, hd, st, nk, ot + e * Bq, alpha); break;
                case 2: Tile<R2>(vb + e, 1, hd, st, nk, ot + e * Bq, alpha); break;
                case 1: Tile<R1>(vb + e, 1, hd, st, nk, ot + e * Bq, alpha); break;
            }
        }

        for (int i = 0; i < nq; i++)
        {
            float* dst = o + (b * lq + q0 + i) * hd + (long)h * d;
            float inv = 1f / l[i];
            for (int e = 0; e < d; e++) dst[e] = ot[e * Bq + i] * inv;
        }
    }

    private interface IRows { static abstract int N { get; } }
    private struct R1 : IRows { public static int N => 1; }
    private struct R2 : IRows { public static int N => 2; }
    private struct R3 : IRows { public static int N => 3; }
    private struct R4 : IRows { public static int N => 4; }

    /// <summary>
    /// acc[TR.N rows][64 queries] = (acc · alpha, or 0 when alpha is null) + Σₜ x[t][64] · b[r·rowStep + t·tStep]:
    /// the QKᵀ tile (b = TR.N key rows, rowStep hd, tStep 1, x = Qᵀ) and the PV tile (b = TR.N value columns,
    /// rowStep 1, tStep hd, x = Pᵀ, alpha the softmax's rescale). Sixteen accumulators stay in registers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TR>(float* b, long rowStep, long tStep, float* x, int n, float* acc, float* alpha) where TR : struct, IRows
    {
        float* o1 = acc + Bq, o2 = o1 + Bq, o3 = o2 + Bq;
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default;
        Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default;
        if (alpha != null)
        {
            var x0 = Vector512.Load(alpha);
            var x1 = Vector512.Load(alpha + W);
            var x2 = Vector512.Load(alpha + 2 * W);
            var x3 = Vector512.Load(alpha + 3 * W);
            a00 = Vector512.Load(acc) * x0; a01 = Vector512.Load(acc + W) * x1;
            a02 = Vector512.Load(acc + 2 * W) * x2; a03 = Vector512.Load(acc + 3 * W) * x3;
            if (TR.N > 1)
            {
                a10 = Vector512.Load(o1) * x0; a11 = Vector512.Load(o1 + W) * x1;
                a12 = Vector512.Load(o1 + 2 * W) * x2; a13 = Vector512.Load(o1 + 3 * W) * x3;
            }
            if (TR.N > 2)
            {
                a20 = Vector512.Load(o2) * x0; a21 = Vector512.Load(o2 + W) * x1;
                a22 = Vector512.Load(o2 + 2 * W) * x2; a23 = Vector512.Load(o2 + 3 * W) * x3;
            }
            if (TR.N > 3)
            {
                a30 = Vector512.Load(o3) * x0; a31 = Vector512.Load(o3 + W) * x1;
                a32 = Vector512.Load(o3 + 2 * W) * x2; a33 = Vector512.Load(o3 + 3 * W) * x3;
            }
        }
        long r1 = rowStep, r2 = 2 * rowStep, r3 = 3 * rowStep;
        for (int t = 0; t < n; t++, b += tStep)
        {
            float* xr = x + t * Bq;
            var p0 = Vector512.Load(xr);
            var p1 = Vector512.Load(xr + W);
            var p2 = Vector512.Load(xr + 2 * W);
            var p3 = Vector512.Load(xr + 3 * W);
            var c = Vector512.Create(b[0]);
            a00 = Vector512.FusedMultiplyAdd(c, p0, a00);
            a01 = Vector512.FusedMultiplyAdd(c, p1, a01);
            a02 = Vector512.FusedMultiplyAdd(c, p2, a02);
            a03 = Vector512.FusedMultiplyAdd(c, p3, a03);
            if (TR.N > 1)
            {
                c = Vector512.Create(b[r1]);
                a10 = Vector512.FusedMultiplyAdd(c, p0, a10);
                a11 = Vector512.FusedMultiplyAdd(c, p1, a11);
                a12 = Vector512.FusedMultiplyAdd(c, p2, a12);
                a13 = Vector512.FusedMultiplyAdd(c, p3, a13);
            }
            if (TR.N > 2)
            {
                c = Vector512.Create(b[r2]);
                a20 = Vector512.FusedMultiplyAdd(c, p0, a20);
                a21 = Vector512.FusedMultiplyAdd(c, p1, a21);
                a22 = Vector512.FusedMultiplyAdd(c, p2, a22);
                a23 = Vector512.FusedMultiplyAdd(c, p3, a23);
            }
            if (TR.N > 3)
            {
                c = Vector512.Create(b[r3]);
                a30 = Vector512.FusedMultiplyAdd(c, p0, a30);
                a31 = Vector512.FusedMultiplyAdd(c, p1, a31);
                a32 = Vector512.FusedMultiplyAdd(c, p2, a32);
                a33 = Vector512.FusedMultiplyAdd(c, p3, a33);
            }
        }
        Vector512.Store(a00, acc); Vector512.Store(a01, acc + W); Vector512.Store(a02, acc + 2 * W); Vector512.Store(a03, acc + 3 * W);
        if (TR.N > 1) { Vector512.Store(a10, o1); Vector512.Store(a11, o1 + W); Vector512.Store(a12, o1 + 2 * W); Vector512.Store(a13, o1 + 3 * W); }
        if (TR.N > 2) { Vector512.Store(a20, o2); Vector512.Store(a21, o2 + W); Vector512.Store(a22, o2 + 2 * W); Vector512.Store(a23, o2 + 3 * W); }
        if (TR.N > 3) { Vector512.Store(a30, o3); Vector512.Store(a31, o3 + W); Vector512.Store(a32, o3 + 2 * W); Vector512.Store(a33, o3 + 3 * W); }
    }
}
