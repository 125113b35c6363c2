using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels;

/// <summary>
/// Naive host implementations of every op, accumulating in double: the oracle of <c>sd selfcheck</c> on machines
/// without libtorch (the tests compare both these and the kernels with libtorch). Same layouts as the kernels.
/// </summary>
public static class Reference
{
    public static float[] MatMul(float[] a, float[] b, int batch, int m, int n, int k, bool transA, bool transB,
        bool batchA, bool batchB, float alpha = 1f, float[]? bias = null, float[]? residual = null)
    {
        var y = new float[(long)batch * m * n];
        for (int bt = 0; bt < batch; bt++)
        {
            long oa = batchA ? (long)bt * m * k : 0, ob = batchB ? (long)bt * k * n : 0, oy = (long)bt * m * n;
            for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++)
                {
                    double av = transA ? a[oa + (long)p * m + i] : a[oa + (long)i * k + p];
                    double bv = transB ? b[ob + (long)j * k + p] : b[ob + (long)p * n + j];
                    s += av * bv;
                }
                double v = alpha * s + (bias is null ? 0 : bias[j]) + (residual is null ? 0 : residual[oy + (long)i * n + j]);
                y[oy + (long)i * n + j] = (float)v;
            }
        }
        return y;
    }

    public static float[] Conv2d(float[] x, int n, int h, int w, int cin, float[] wt, int cout, int kh, int kw,
        float[]? bias, int stride, int pad, float[]? residual = null)
    {
        int ho = (h + 2 * pad - kh) / stride + 1, wo = (w + 2 * pad - kw) / stride + 1;
        var y = new float[(long)n * ho * wo * cout];
        for (int b = 0; b < n; b++)
        for (int oy = 0; oy < ho; oy++)
        for (int ox = 0; ox < wo; ox++)
        for (int co = 0; co < cout; co++)
        {
            double s = bias is null ? 0 : bias[co];
            for (int ky = 0; ky < kh; ky++)
            for (int kx = 0; kx < kw; kx++)
            {
                int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                long xo = (((long)b * h + iy) * w + ix) * cin, wo2 = (((long)co * kh + ky) * kw + kx) * cin;
                for (int ci = 0; ci < cin; ci++) s += (double)x[xo + ci] * wt[wo2 + ci];
            }
            long o = (((long)b * ho + oy) * wo + ox) * cout + co;
            if (residual is not null) s += residual[o];
            y[o] = (float)s;
        }
        return y;
    }

    public static float[] GroupNorm(float[] x, int n, int spatial, int c, int groups, float[]? gamma, float[]? beta,
        double eps, bool silu)
    {
        var y = new float[x.Length];
        int cg = c / groups;
        for (int b = 0; b < n; b++)
        for (int g = 0; g < groups; g++)
        {
            double sum = 0, cnt = (double)spatial * cg;
            for (int s = 0; s < spatial; s++)
            for (int j = 0; j < cg; j++) sum += x[((long)b * spatial + s) * c + g * cg + j];
            double mean = sum / cnt, var = 0;
            for (int s = 0; s < spatial; s++)
            for (int j = 0; j < cg; j++)
            {
                double d = x[((long)b * spatial + s) * c + g * cg + j] - mean;
                var += d * d;
            }
            double rstd = 1 / Math.Sqrt(var / cnt + eps);
            for (int s = 0; s < spatial; s++)
            for (int j = 0; j < cg; j++)
            {
                long i = ((long)b * spatial + s) * c + g * cg + j;
                double v = (x[i] - mean) * rstd;
                if (gamma is not null) v = v * gamma[g * cg + j] + beta![g * cg + j];
                if (silu) v = v / (1 + Math.Exp(-v));
                y[i] = (float)v;
            }
        }
        return y;
    }

    public static float[] LayerNorm(float[] x, int c, float[]? gamma, float[]? beta, double eps)
    {
        var y = new float[x.Length];
        for (long r = 0; r < x.Length / c; r++)
        {
            double mean = 0, var = 0;
            for (int j = 0; j < c; j++) mean += x[r * c + j];
            mean /= c;
            for (int j = 0; j < c; j++) var += (x[r * c + j] - mean) * (x[r * c + j] - mean);
            double rstd = 1 / Math.Sqrt(var / c + eps);
            for (int j = 0; j < c; j++)
            {
                double v = (x[r * c + j] - mean) * rstd;
                if (gamma is not null) v *= gamma[j];
                if (beta is not null) v += beta[j];
                y[r * c + j] = (float)v;
            }
        }
        return y;
    }

    public static float[] Softmax(float[] x, int c, double scale = 1)
    {
        var y = new float[x.Length];
        for (long r = 0; r < x.Length / c; r++)
        {
            double m = double.NegativeInfinity, s = 0;
            for (int j = 0; j < c; j++) m = Math.Max(m, scale * x[r * c + j]);
            for (int j = 0; j < c; j++) s += Math.Exp(scale * x[r * c + j] - m);
            for (int j = 0; j < c; j++) y[r * c + j] = (float)(Math.Exp(scale * x[r * c + j] - m) / s);
        }
        return y;
    }

    /// <summary>q [B, Lq, H*D], k/v [B, Lk, H*D] → [B, Lq, H*D].</summary>
    public static float[] Attention(float[] q, float[] k, float[] v, int b, int lq, int lk, int heads, int d,
        double scale, bool causal)
    {
        int hd = heads * d;
        var y = new float[(long)b * lq * hd];
        var s = new double[lk];
        for (int bt = 0; bt < b; bt++)
        for (int h = 0; h < heads; h++)
        for (int i = 0; i < lq; i++)
        {
            double m = double.NegativeInfinity;
            for (int j = 0; j < lk; j++)
            {
                if (causal && j > i)
                {
                    s[j] = double.NegativeInfinity;
                    continue;
                }
                double dot = 0;
                for (int e = 0; e < d; e++)
                    dot += (double)q[((long)bt * lq + i) * hd + h * d + e] * k[((long)bt * lk + j) * hd + h * d + e];
                s[j] = dot * scale;
                m = Math.Max(m, s[j]);
            }
            double sum = 0;
            for (int j = 0; j < lk; j++)
            {
                s[j] = double.IsNegativeInfinity(s[j]) ? 0 : Math.Exp(s[j] - m);
                sum += s[j];
            }
            for (int e = 0; e < d; e++)
            {
                double o = 0;
                for (int j = 0; j < lk; j++) o += s[j] * v[((long)bt * lk + j) * hd + h * d + e];
                y[((long)bt * lq + i) * hd + h * d + e] = (float)(o / sum);
            }
        }
        return y;
    }

    public static double Activate(Activation kind, double x) => kind switch
    {
        Activation.Silu => x / (1 + Math.Exp(-x)),
        Activation.Gelu => 0.5 * x * (1 + Erf(x / Math.Sqrt(2))),
        Activation.GeluTanh => 0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x))),
        Activation.QuickGelu => x / (1 + Math.Exp(-1.702 * x)),
        Activation.Relu => Math.Max(x, 0),
        Activation.Tanh => Math.Tanh(x),
        _ => Math.Exp(x),
    };

    public static float[] Activate(Activation kind, float[] x) => x.Select(v => (float)Activate(kind, v)).ToArray();

    public static float[] Geglu(float[] x, int c)
    {
        long rows = x.Length / (2L * c);
        var y = new float[rows * c];
        for (long r = 0; r < rows; r++)
        for (int j = 0; j < c; j++)
            y[r * c + j] = (float)(x[r * 2 * c + j] * Activate(Activation.Gelu, x[r * 2 * c + c + j]));
        return y;
    }

    /// <summary>erf to about 1e-15 (series below 3, continued fraction above).</summary>
    public static double Erf(double x)
    {
        double ax = Math.Abs(x);
        double r;
        if (ax < 3)
        {
            double term = ax, sum = ax, x2 = ax * ax;
            for (int n = 1; n < 200; n++)
            {
                term *= -x2 / n;
                double add = term / (2 * n + 1);
                sum += add;
                if (Math.Abs(add) < 1e-17 * Math.Abs(sum)) break;
            }
            r = 2 / Math.Sqrt(Math.PI) * sum;
        }
        else
        {
            double f = 0;
            for (int n = 60; n >= 1; n--) f = n / 2.0 / (ax + f);
            r = 1 - Math.Exp(-ax * ax) / Math.Sqrt(Math.PI) / (ax + f);
        }
        return x < 0 ? -r : r;
    }

    public static float[] Binary(BinaryOp op, float[] a, int[] aShape, float[] b, int[] bShape)
    {
        var y = new float[a.Length];
        int rank = aShape.Length;
        var idx = new int[rank];
        for (long i = 0; i < a.Length; i++)
        {
            long rem = i;
            for (int d = rank - 1; d >= 0; d--)
            {
                idx[d] = (int)(rem % aShape[d]);
                rem /= aShape[d];
            }
            long bi = 0;
            for (int d = 0; d < bShape.Length; d++)
            {
                int ad = d + rank - bShape.Length;
                bi = bi * bShape[d] + (bShape[d] == 1 ? 0 : idx[ad]);
            }
            y[i] = op == BinaryOp.Add ? a[i] + b[bi] : a[i] * b[bi];
        }
        return y;
    }

    public static float[] Upsample2x(float[] x, int n, int h, int w, int c)
    {
        var y = new float[x.Length * 4];
        for (int b = 0; b < n; b++)
        for (int oy = 0; oy < 2 * h; oy++)
        for (int ox = 0; ox < 2 * w; ox++)
        for (int j = 0; j < c; j++)
            y[(((long)b * 2 * h + oy) * 2 * w + ox) * c + j] = x[(((long)b * h + oy / 2) * w + ox / 2) * c + j];
        return y;
    }

    public static float[] Concat(float[] a, int ca, float[] b, int cb)
    {
        long rows = a.Length / ca;
        var y = new float[rows * (ca + cb)];
        for (long r = 0; r < rows; r++)
        {
            Array.Copy(a, r * ca, y, r * (ca + cb), ca);
            Array.Copy(b, r * cb, y, r * (ca + cb) + ca, cb);
        }
        return y;
    }

    /// <summary>
    /// diffusers' get_timestep_embedding with PyTorch's fp32 steps (frequency, then t*freq rounded to fp32), and the
    /// sine and cosine of that fp32 argument in double.
    /// </summary>
    public static float[] TimestepEmbedding(float[] t, int dim, bool flip, float shift, float maxPeriod)
    {
        int half = dim / 2;
        var freqs = Embeddings.TimestepFrequencies(half, shift, maxPeriod);
        var y = new float[t.Length * dim];
        for (int n = 0; n < t.Length; n++)
        for (int j = 0; j < half; j++)
        {
            float arg = t[n] * freqs[j];
            double s = Math.Sin(arg), c = Math.Cos(arg);
            y[n * dim + j] = (float)(flip ? c : s);
            y[n * dim + half + j] = (float)(flip ? s : c);
        }
        return y;
    }

    public static float[] Gather(float[] table, int c, int[] ids)
    {
        var y = new float[ids.Length * c];
        for (int i = 0; i < ids.Length; i++) Array.Copy(table, (long)ids[i] * c, y, (long)i * c, c);
        return y;
    }

    public static float[] Transpose(float[] x, int batch, int r, int c)
    {
        var y = new float[x.Length];
        for (int b = 0; b < batch; b++)
        for (int i = 0; i < r; i++)
        for (int j = 0; j < c; j++)
            y[(long)b * r * c + (long)j * r + i] = x[(long)b * r * c + (long)i * c + j];
        return y;
    }

    /// <summary>Rounds every value to the nearest fp16 (what an fp16 tensor stores).</summary>
    public static float[] RoundToHalf(float[] x) => x.Select(v => (float)(System.Half)v).ToArray();

    /// <summary>‖out − ref‖₂ / ‖ref‖₂ (NaN anywhere in out gives NaN, so unwritten poisoned outputs fail).</summary>
    public static double RelativeError(ReadOnlySpan<float> output, ReadOnlySpan<float> reference)
    {
        if (output.Length != reference.Length)
            throw new ArgumentException($"lengths differ: {output.Length} vs {reference.Length}");
        double num = 0, den = 0;
        for (int i = 0; i < output.Length; i++)
        {
            double d = (double)output[i] - reference[i];
            num += d * d;
            den += (double)reference[i] * reference[i];
        }
        return den == 0 ? Math.Sqrt(num) : Math.Sqrt(num / den);
    }
}
