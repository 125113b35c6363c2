using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace StableDiffusion.Kernels.Cpu;

public static unsafe class CpuNorms
{
    private const int W = 16;

    /// <summary>
    /// Group norm of channels-last x [n, spatial, c] into y (may alias x), with optional per-channel affine and fused
    /// SiLU. Statistics are one pass over chunks of rows: per-channel sums of x − x[first row] in fp32 within a chunk
    /// (at most 256 rows), chunk totals added in fp64 and combined per group exactly, so a large mean costs no accuracy.
    /// Both phases split rows over threads, so n × groups does not limit the parallelism.
    /// </summary>
    public static void GroupNorm(float* x, float* y, int n, long spatial, int c, int groups, float* weight, float* bias,
        float eps, bool silu)
    {
        if (n <= 0 || spatial <= 0 || c <= 0 || groups <= 0)
            throw new KernelArgumentException($"cpu group_norm: sizes n {n}, spatial {spatial}, c {c}, groups {groups} must be positive");
        if (c % groups != 0) throw new KernelArgumentException($"cpu group_norm: {c} channels do not split into {groups} groups");
        if (!(eps >= 0) || !float.IsFinite(eps)) throw new KernelArgumentException($"cpu group_norm: eps {eps} is invalid");
        if (x == null || y == null) throw new KernelArgumentException("cpu group_norm: null buffer");

        int rowsPerChunk = (int)Math.Clamp(16384 / c, 1, 256);
        long chunksPerSample = (spatial + rowsPerChunk - 1) / rowsPerChunk;
        long items = n * chunksPerSample;
        int workers = (int)Math.Min(CpuParallel.Threads, items);
        var partial = new double[workers][];
        long next = -1;
        CpuParallel.For(workers, wk =>
        {
            var acc = new double[2L * n * c]; // [n][c] sums, then [n][c] sums of squares, of x - shift
            fixed (double* pa = acc)
            {
                long it;
                while ((it = Interlocked.Increment(ref next)) < items)
                {
                    long s = it / chunksPerSample, ch = it - s * chunksPerSample;
                    long r0 = ch * rowsPerChunk, r1 = Math.Min(spatial, r0 + rowsPerChunk);
                    float* xs = x + s * spatial * c;
                    ChunkSums(xs + r0 * c, xs, (int)(r1 - r0), c, pa + s * c, pa + (long)n * c + s * c);
                }
            }
            partial[wk] = acc;
        });

        // Per-channel scale a and shift b of each sample: y = x a + b.
        var ab = new float[2L * n * c];
        int cg = c / groups;
        double count = (double)spatial * cg;
        for (int s = 0; s < n; s++)
        {
            float* shift = x + (long)s * spatial * c;
            for (int g = 0; g < groups; g++)
            {
                double sum = 0;
                for (int j = g * cg; j < (g + 1) * cg; j++)
                {
                    double s1 = 0;
                    foreach (var p in partial) s1 += p[(long)s * c + j];
                    sum += s1 + spatial * (double)shift[j];
                }
                double mean = sum / count, sq = 0;
                for (int j = g * cg; j < (g + 1) * cg; j++)
                {
                    double s1 = 0, s2 = 0;
                    foreach (var p in partial)
                    {
                        s1 += p[(long)s * c + j];
                        s2 += p[(long)n * c + (long)s * c + j];
                    }
                    double d = shift[j] - mean;
                    sq += s2 + 2 * d * s1 + spatial * d * d;
                }
                double rstd = 1 / Math.Sqrt(Math.Max(sq / count, 0) + eps);
                for (int j = g * cg; j < (g + 1) * cg; j++)
                {
                    double a = rstd * (weight == null ? 1f : weight[j]);
                    ab[(long)s * c + j] = (float)a;
                    ab[(long)n * c + (long)s * c + j] = (float)((bias == null ? 0f : bias[j]) - mean * a);
                }
            }
        }

        fixed (float* pab = ab)
        {
            float* pa = pab, pb = pab + (long)n * c;
            CpuChunks.For(n * spatial, Math.Max(1, (1 << 15) / c), (r0, r1) =>
            {
                for (long r = r0; r < r1; r++)
                {
                    long s = r / spatial;
                    Affine(x + r * c, y + r * c, pa + s * c, pb + s * c, c, silu);
                }
            });
        }
    }

    // Adds Σ (x - shift) and Σ (x - shift)² over `rows` rows of c channels into s1/s2, 64 channels at a time in registers.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ChunkSums(float* x, float* shift, int rows, int c, double* s1, double* s2)
    {
        int j = 0;
        for (; j <= c - 4 * W; j += 4 * W)
        {
            var h0 = Vector512.Load(shift + j); var h1 = Vector512.Load(shift + j + W);
            var h2 = Vector512.Load(shift + j + 2 * W); var h3 = Vector512.Load(shift + j + 3 * W);
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            Vector512<float> q0 = default, q1 = default, q2 = default, q3 = default;
            for (int r = 0; r < rows; r++)
            {
                float* p = x + (long)r * c + j;
                var d0 = Vector512.Load(p) - h0; var d1 = Vector512.Load(p + W) - h1;
                var d2 = Vector512.Load(p + 2 * W) - h2; var d3 = Vector512.Load(p + 3 * W) - h3;
                a0 += d0; a1 += d1; a2 += d2; a3 += d3;
                q0 = Vector512.FusedMultiplyAdd(d0, d0, q0); q1 = Vector512.FusedMultiplyAdd(d1, d1, q1);
                q2 = Vector512.FusedMultiplyAdd(d2, d2, q2); q3 = Vector512.FusedMultiplyAdd(d3, d3, q3);
            }
            AddTo(s1 + j, a0); AddTo(s1 + j + W, a1); AddTo(s1 + j + 2 * W, a2); AddTo(s1 + j + 3 * W, a3);
            AddTo(s2 + j, q0); AddTo(s2 + j + W, q1); AddTo(s2 + j + 2 * W, q2); AddTo(s2 + j + 3 * W, q3);
        }
        for (; j <= c - W; j += W)
        {
            var h = Vector512.Load(shift + j);
            Vector512<float> a = default, q = default;
            for (int r = 0; r < rows; r++)
            {
                var d = Vector512.Load(x + (long)r * c + j) - h;
                a += d;
                q = Vector512.FusedMultiplyAdd(d, d, q);
            }
            AddTo(s1 + j, a);
            AddTo(s2 + j, q);
        }
        for (; j < c; j++)
        {
            float a = 0, q = 0, h = shift[j];
            for (int r = 0; r < rows; r++)
            {
                float d = x[(long)r * c + j] - h;
                a += d;
                q = MathF.FusedMultiplyAdd(d, d, q);
            }
            s1[j] += a;
            s2[j] += q;
        }
    }

    private static void AddTo(double* d, Vector512<float> v)
    {
        Vector512.Store(Vector512.Load(d) + Vector512.WidenLower(v), d);
        Vector512.Store(Vector512.Load(d + 8) + Vector512.WidenUpper(v), d + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Affine(float* x, float* y, float* a, float* b, int c, bool silu)
    {
        int j = 0;
        if (silu)
        {
            for (; j <= c - W; j += W)
            {
                var v = Vector512.FusedMultiplyAdd(Vector512.Load(x + j), Vector512.Load(a + j), Vector512.Load(b + j));
                Vector512.Store(v / (Vector512<float>.One + CpuMath.Exp(-v)), y + j);
            }
            for (; j < c; j++)
            {
                float v = MathF.FusedMultiplyAdd(x[j], a[j], b[j]);
                y[j] = v / (1f + CpuMath.Exp(-v));
            }
        }
        else
        {
            for (; j <= c - W; j += W)
                Vector512.Store(Vector512.FusedMultiplyAdd(Vector512.Load(x + j), Vector512.Load(a + j), Vector512.Load(b + j)), y + j);
            for (; j < c; j++) y[j] = MathF.FusedMultiplyAdd(x[j], a[j], b[j]);
        }
    }

    /// <summary>Layer norm over the last dimension of x [rows, c] (two passes over each row held in cache).</summary>
    public static void LayerNorm(float* x, float* y, long rows, int c, float* weight, float* bias, float eps)
    {
        if (rows <= 0 || c <= 0) throw new KernelArgumentException($"cpu layer_norm: rows {rows} and c {c} must be positive");
        if (!(eps >= 0) || !float.IsFinite(eps)) throw new KernelArgumentException($"cpu layer_norm: eps {eps} is invalid");
        if (x == null || y == null) throw new KernelArgumentException("cpu layer_norm: null buffer");
        CpuChunks.For(rows, Math.Max(1, (1 << 14) / c), (r0, r1) =>
        {
            for (long r = r0; r < r1; r++) LayerRow(x + r * c, y + r * c, c, weight, bias, eps);
        });
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void LayerRow(float* x, float* y, int c, float* weight, float* bias, float eps)
    {
        var acc = Vector512<float>.Zero;
        int j = 0;
        for (; j <= c - W; j += W) acc += Vector512.Load(x + j);
        double sum = Vector512.Sum(Vector512.WidenLower(acc) + Vector512.WidenUpper(acc));
        for (; j < c; j++) sum += x[j];
        float mean = (float)(sum / c);
        var vm = Vector512.Create(mean);
        acc = Vector512<float>.Zero;
        for (j = 0; j <= c - W; j += W)
        {
            var d = Vector512.Load(x + j) - vm;
            acc = Vector512.FusedMultiplyAdd(d, d, acc);
        }
        double sq = Vector512.Sum(Vector512.WidenLower(acc) + Vector512.WidenUpper(acc));
        for (; j < c; j++) sq += (double)(x[j] - mean) * (x[j] - mean);
        float rstd = (float)(1 / Math.Sqrt(sq / c + eps));
        var vr = Vector512.Create(rstd);
        for (j = 0; j <= c - W; j += W)
        {
            var v = (Vector512.Load(x + j) - vm) * vr;
            if (weight != null) v *= Vector512.Load(weight + j);
            if (bias != null) v += Vector512.Load(bias + j);
            Vector512.Store(v, y + j);
        }
        for (; j < c; j++)
        {
            float v = (x[j] - mean) * rstd;
            if (weight != null) v *= weight[j];
            if (bias != null) v += bias[j];
            y[j] = v;
        }
    }
}
