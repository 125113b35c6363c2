using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace StableDiffusion.Kernels.Cpu;

/// <summary>Data movement on fp32 channels-last tensors, embeddings, and fp16 ↔ fp32 conversion.</summary>
public static unsafe class CpuLayout
{
    private const long Grain = 1 << 16;

    /// <summary>Nearest-neighbour 2x upsampling: x [n, h, w, c] → y [n, 2h, 2w, c].</summary>
    public static void Upsample2x(float* x, float* y, int n, int h, int w, int c)
    {
        if (n <= 0 || h <= 0 || w <= 0 || c <= 0)
            throw new KernelArgumentException($"cpu upsample2x: sizes [{n},{h},{w},{c}] must be positive");
        if (x == null || y == null) throw new KernelArgumentException("cpu upsample2x: null buffer");
        long rowBytes = 2L * w * c * sizeof(float);
        CpuChunks.For((long)n * h, Math.Max(1, Grain / ((long)w * c)), (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                float* src = x + r * w * c;
                float* dst = y + r * 4 * w * c; // output rows 2(r mod h) and +1 of image r / h: 2r and 2r+1 overall
                for (int j = 0; j < w; j++)
                {
                    Buffer.MemoryCopy(src + (long)j * c, dst + 2L * j * c, c * sizeof(float), c * sizeof(float));
                    Buffer.MemoryCopy(src + (long)j * c, dst + (2L * j + 1) * c, c * sizeof(float), c * sizeof(float));
                }
                Buffer.MemoryCopy(dst, dst + 2L * w * c, rowBytes, rowBytes);
            }
        });
    }

    /// <summary>a [rows, ca] and b [rows, cb] → y [rows, ca + cb].</summary>
    public static void Concat(float* a, float* b, float* y, long rows, int ca, int cb)
    {
        if (rows <= 0 || ca <= 0 || cb <= 0)
            throw new KernelArgumentException($"cpu concat: rows {rows} and channels {ca}, {cb} must be positive");
        if (a == null || b == null || y == null) throw new KernelArgumentException("cpu concat: null buffer");
        long c = (long)ca + cb;
        CpuChunks.For(rows, Math.Max(1, Grain / c), (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                Buffer.MemoryCopy(a + r * ca, y + r * c, ca * sizeof(float), ca * sizeof(float));
                Buffer.MemoryCopy(b + r * cb, y + r * c + ca, cb * sizeof(float), cb * sizeof(float));
            }
        });
    }

    /// <summary>x [rows, c] → y [rows, length] = x[:, start:start+length].</summary>
    public static void SliceLast(float* x, float* y, long rows, int c, int start, int length)
    {
        if (rows <= 0 || c <= 0 || length <= 0 || start < 0 || (long)start + length > c)
            throw new KernelArgumentException($"cpu slice: [{start}, {(long)start + length}) of {c} channels × {rows} rows is out of range");
        if (x == null || y == null) throw new KernelArgumentException("cpu slice: null buffer");
        CpuChunks.For(rows, Math.Max(1, Grain / length), (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
                Buffer.MemoryCopy(x + r * c + start, y + r * length, length * sizeof(float), length * sizeof(float));
        });
    }

    /// <summary>x [batch, r, c] → y [batch, c, r], in 32×32 tiles so both sides stay in cache.</summary>
    public static void Transpose(float* x, float* y, long batch, int r, int c)
    {
        if (batch <= 0 || r <= 0 || c <= 0)
            throw new KernelArgumentException($"cpu transpose: sizes [{batch},{r},{c}] must be positive");
        if (x == null || y == null) throw new KernelArgumentException("cpu transpose: null buffer");
        const int T = 32;
        long tr = (r + T - 1) / T, tc = (c + T - 1) / T, tiles = batch * tr * tc;
        CpuChunks.For(tiles, Math.Max(1, Grain / (T * T)), (t0, t1) => TransposeTiles(x, y, r, c, tr, tc, t0, t1));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TransposeTiles(float* x, float* y, int r, int c, long tr, long tc, long t0, long t1)
    {
        const int T = 32;
        for (long t = t0; t < t1; t++)
        {
            long bi = t / (tr * tc), rem = t - bi * tr * tc;
            int i0 = (int)(rem / tc) * T, j0 = (int)(rem % tc) * T;
            int i1 = Math.Min(r, i0 + T), j1 = Math.Min(c, j0 + T);
            float* xs = x + bi * r * c, ys = y + bi * r * c;
            for (int j = j0; j < j1; j++)
            {
                float* yr = ys + (long)j * r;
                for (int i = i0; i < i1; i++) yr[i] = xs[(long)i * c + j];
            }
        }
    }

    /// <summary>y [count, c] = table[ids[i], :] for table [vocab, c]; an id outside the table is an error.</summary>
    public static void Embedding(float* table, int* ids, float* y, long count, int vocab, int c)
    {
        if (count <= 0 || vocab <= 0 || c <= 0)
            throw new KernelArgumentException($"cpu embedding: count {count}, vocab {vocab}, channels {c} must be positive");
        if (table == null || ids == null || y == null) throw new KernelArgumentException("cpu embedding: null buffer");
        for (long i = 0; i < count; i++)
            if ((uint)ids[i] >= (uint)vocab)
                throw new KernelArgumentException($"cpu embedding: id {ids[i]} at position {i} is outside the table's {vocab} rows");
        CpuChunks.For(count, Math.Max(1, Grain / c), (r0, r1) =>
        {
            for (long i = r0; i < r1; i++)
                Buffer.MemoryCopy(table + (long)ids[i] * c, y + i * c, (long)c * sizeof(float), (long)c * sizeof(float));
        });
    }

    /// <summary>
    /// diffusers' get_timestep_embedding: t [n] → y [n, dim]; frequencies and t·freq in fp32 as PyTorch computes them,
    /// [cos, sin] when flipSinToCos else [sin, cos], and a zero last column when dim is odd.
    /// </summary>
    public static void TimestepEmbedding(float* t, float* y, int n, int dim, bool flipSinToCos, float downscaleFreqShift,
        float maxPeriod)
    {
        if (n <= 0 || dim < 2) throw new KernelArgumentException($"cpu timestep_embedding: n {n} and dim {dim} (at least 2) are invalid");
        if (t == null || y == null) throw new KernelArgumentException("cpu timestep_embedding: null buffer");
        int half = dim / 2;
        if (!(maxPeriod > 1f) || half - downscaleFreqShift == 0f)
            throw new KernelArgumentException($"cpu timestep_embedding: invalid max_period {maxPeriod} or shift {downscaleFreqShift}");
        var freqs = Embeddings.TimestepFrequencies(half, downscaleFreqShift, maxPeriod);
        for (int i = 0; i < n; i++)
        {
            float* row = y + (long)i * dim;
            for (int j = 0; j < half; j++)
            {
                float arg = t[i] * freqs[j]; // rounded to fp32 first, as PyTorch does
                double s = Math.Sin(arg), co = Math.Cos(arg);
                row[j] = (float)(flipSinToCos ? co : s);
                row[half + j] = (float)(flipSinToCos ? s : co);
            }
            if ((dim & 1) != 0) row[dim - 1] = 0f;
        }
    }

    /// <summary>IEEE half → float, exact (subnormals, infinities; NaN quieted with its payload, as System.Half).</summary>
    public static void HalfToFloat(ushort* src, float* dst, long n)
    {
        if (n <= 0) throw new KernelArgumentException($"cpu half_to_float: element count {n} must be positive");
        if (src == null || dst == null) throw new KernelArgumentException("cpu half_to_float: null buffer");
        CpuChunks.For(n, Grain, (s, e) => HalfToFloatRange(src + s, dst + s, e - s));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void HalfToFloatRange(ushort* src, float* dst, long n)
    {
        long i = 0;
        for (; i <= n - 32; i += 32)
        {
            var h = Vector512.Load(src + i);
            Vector512.Store(HalfBits(Vector512.WidenLower(h)), (uint*)(dst + i));
            Vector512.Store(HalfBits(Vector512.WidenUpper(h)), (uint*)(dst + i + 16));
        }
        for (; i < n; i++) dst[i] = HalfToFloat(src[i]);
    }

    /// <summary>
    /// half → float for data known to hold no infinity or NaN (checked when weights are packed): the sign-extended bits
    /// shifted so exponent and mantissa land in a float's, the sign's copies cleared, then rescaled by 2^112 (exact,
    /// subnormals included). Four operations per 16 values against a dozen in <see cref="HalfToFloatRange"/>; an infinity
    /// or NaN would come out as a number in [2^16, 2^17).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void HalfToFloatFiniteRange(ushort* src, float* dst, long n)
    {
        var keep = Vector512.Create(unchecked((int)0x8FFFFFFF));
        var scale = Vector512.Create(5.192296858534828e33f); // 2^112
        long i = 0;
        for (; i <= n - 32; i += 32)
        {
            var h = Vector512.Load((short*)(src + i));
            Vector512.Store(((Vector512.WidenLower(h) << 13) & keep).AsSingle() * scale, dst + i);
            Vector512.Store(((Vector512.WidenUpper(h) << 13) & keep).AsSingle() * scale, dst + i + 16);
        }
        for (; i < n; i++) dst[i] = HalfToFloat(src[i]);
    }

    /// <summary>Whether any of the n halves is an infinity or NaN (all exponent bits set).</summary>
    internal static bool AnyHalfNonFinite(ushort* src, long n)
    {
        var exp = Vector512.Create((ushort)0x7C00);
        var any = Vector512<ushort>.Zero;
        long i = 0;
        for (; i <= n - 32; i += 32)
            any |= Vector512.Equals(Vector512.Load(src + i) & exp, exp);
        if (any != Vector512<ushort>.Zero) return true;
        for (; i < n; i++)
            if ((src[i] & 0x7C00) == 0x7C00) return true;
        return false;
    }

    /// <summary>float → IEEE half, round to nearest even, overflow to infinity, NaN quieted with its payload.</summary>
    public static void FloatToHalf(float* src, ushort* dst, long n)
    {
        if (n <= 0) throw new KernelArgumentException($"cpu float_to_half: element count {n} must be positive");
        if (src == null || dst == null) throw new KernelArgumentException("cpu float_to_half: null buffer");
        CpuChunks.For(n, Grain, (s, e) => FloatToHalfRange(src + s, dst + s, e - s));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void FloatToHalfRange(float* src, ushort* dst, long n)
    {
        long i = 0;
        for (; i <= n - 32; i += 32)
        {
            var lo = FloatBits(Vector512.Load((uint*)(src + i)));
            var hi = FloatBits(Vector512.Load((uint*)(src + i + 16)));
            Vector512.Store(Vector512.Narrow(lo, hi), dst + i);
        }
        for (; i < n; i++) dst[i] = FloatToHalf(src[i]);
    }

    // Exponent/mantissa shifted into float position and rescaled by 2^112 (exact, subnormals included);
    // infinities and NaNs get the float's all-ones exponent instead.
    private static Vector512<uint> HalfBits(Vector512<uint> h)
    {
        var sign = (h & Vector512.Create(0x8000u)) << 16;
        var em = h & Vector512.Create(0x7FFFu);
        var scaled = ((em << 13).AsSingle() * Vector512.Create(5.192296858534828e33f)).AsUInt32(); // 2^112
        var special = (em << 13) | Vector512.Create(0x7F800000u);
        special |= Vector512.ConditionalSelect(Vector512.GreaterThan(em, Vector512.Create(0x7C00u)), Vector512.Create(0x400000u), Vector512<uint>.Zero);
        var r = Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(em, Vector512.Create(0x7C00u)), special, scaled);
        return r | sign;
    }

    internal static float HalfToFloat(ushort h)
    {
        uint sign = (uint)(h & 0x8000) << 16, em = (uint)h & 0x7FFFu;
        uint r;
        if (em >= 0x7C00u) r = (em << 13) | 0x7F800000u | (em > 0x7C00u ? 0x400000u : 0u);
        else r = BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(em << 13) * 5.192296858534828e33f);
        return BitConverter.UInt32BitsToSingle(r | sign);
    }

    private static Vector512<uint> FloatBits(Vector512<uint> x)
    {
        var sign = (x >> 16) & Vector512.Create(0x8000u);
        var a = x & Vector512.Create(0x7FFFFFFFu);
        // Normal range: add the rounding bias (half an ulp minus one, plus the kept lsb) and rebias the exponent.
        var normal = ((a + Vector512.Create(0xFFFu) + ((a >> 13) & Vector512<uint>.One)) >> 13) - Vector512.Create(112u << 10);
        // Subnormal range: the fp32 adder rounds |x| + 0.5 to a multiple of 2^-24, which is the half's mantissa.
        var sub = (a.AsSingle() + Vector512.Create(0.5f)).AsUInt32() - Vector512.Create(0x3F000000u);
        var nan = Vector512.Create(0x7E00u) | ((a >> 13) & Vector512.Create(0x3FFu));
        var r = Vector512.ConditionalSelect(Vector512.LessThan(a, Vector512.Create(0x38800000u)), sub, normal);
        r = Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(a, Vector512.Create(0x477FF000u)), Vector512.Create(0x7C00u), r);
        r = Vector512.ConditionalSelect(Vector512.GreaterThan(a, Vector512.Create(0x7F800000u)), nan, r);
        return r | sign;
    }

    internal static ushort FloatToHalf(float f)
    {
        uint x = BitConverter.SingleToUInt32Bits(f);
        uint sign = (x >> 16) & 0x8000u, a = x & 0x7FFFFFFFu, r;
        if (a > 0x7F800000u) r = 0x7E00u | ((a >> 13) & 0x3FFu);
        else if (a >= 0x477FF000u) r = 0x7C00u;
        else if (a < 0x38800000u) r = BitConverter.SingleToUInt32Bits(BitConverter.UInt32BitsToSingle(a) + 0.5f) - 0x3F000000u;
        else r = ((a + 0xFFFu + ((a >> 13) & 1u)) >> 13) - (112u << 10);
        return (ushort)(r | sign);
    }
}
