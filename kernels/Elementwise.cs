using ILGPU;
using ILGPU.Runtime;
using StableDiffusion.Runtime;
using Half = ILGPU.Half;

namespace StableDiffusion.Kernels;

// Elementwise arithmetic: a (+|*) b with b broadcast, x*alpha + beta, and dtype casts. All are grid-stride loops
// over the output: memory-bound, one read per input element and one write.

/// <summary>y = a op b, with a viewed as [D0, D1, D2, D3] and b read through strides (0 where broadcast).</summary>
public struct BinaryArgs<T> where T : unmanaged
{
    public ArrayView<T> A, B, Y;
    public long Total;
    public long D1, D2, D3;
    public long S0, S1, S2, S3;
    public int Op;
}

/// <summary>y = clamp(x * Alpha + Beta, Lo, Hi).</summary>
public struct AffineArgs<T> where T : unmanaged
{
    public ArrayView<T> X, Y;
    public long Total;
    public float Alpha, Beta, Lo, Hi;
}

public struct CastArgs<TIn, TOut> where TIn : unmanaged where TOut : unmanaged
{
    public ArrayView<TIn> X;
    public ArrayView<TOut> Y;
    public long Total;
}

public static class ElementwiseKernels
{
    public static void Binary<T, TE>(BinaryArgs<T> p)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        var e = default(TE);
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < p.Total; i += stride)
        {
            long i3 = i % p.D3, r = i / p.D3;
            long i2 = r % p.D2;
            r /= p.D2;
            long i1 = r % p.D1, i0 = r / p.D1;
            float a = e.ToFloat(p.A[i]);
            float b = e.ToFloat(p.B[i0 * p.S0 + i1 * p.S1 + i2 * p.S2 + i3 * p.S3]);
            p.Y[i] = e.FromFloat(p.Op == 0 ? a + b : a * b);
        }
    }

    public static void Affine<T, TE>(AffineArgs<T> p)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        var e = default(TE);
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < p.Total; i += stride)
            p.Y[i] = e.FromFloat(Math.Min(Math.Max(e.ToFloat(p.X[i]) * p.Alpha + p.Beta, p.Lo), p.Hi));
    }

    public static void Cast<TIn, TEIn, TOut, TEOut>(CastArgs<TIn, TOut> p)
        where TIn : unmanaged
        where TEIn : struct, IElem<TIn>
        where TOut : unmanaged
        where TEOut : struct, IElem<TOut>
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < p.Total; i += stride)
            p.Y[i] = default(TEOut).FromFloat(default(TEIn).ToFloat(p.X[i]));
    }
}

public static class Elementwise
{
    /// <summary>Launch shape of a grid-stride elementwise kernel over <paramref name="total"/> items.</summary>
    internal static KernelConfig Config(KernelRuntime rt, long total)
    {
        if (rt.Profile == KernelProfile.Test)
            return new KernelConfig((int)Math.Clamp(KernelMath.CeilDiv(total, 32L), 1, 8), 32);
        long groups = Math.Clamp(KernelMath.CeilDiv(total, 256L), 1, 65535L * 8);
        return new KernelConfig((int)groups, 256);
    }

    /// <summary>
    /// y = a op b. b is broadcast against a by NumPy rules restricted to b's rank not exceeding a's: each of b's
    /// right-aligned dimensions equals a's or is 1 (e.g. [C], [N, 1, C], or a's own shape).
    /// </summary>
    public static void Binary(KernelRuntime rt, BinaryOp op, Tensor a, Tensor b, Tensor y)
    {
        if (!a.DType.IsFloat() || b.DType != a.DType || y.DType != a.DType || !y.Shape.SequenceEqual(a.Shape))
            throw new KernelArgumentException($"{Name(op)}: a {a}, b {b} and output {y} must share dtype, and the output a's shape");
        var (dims, strides) = Broadcast(Name(op), a.Shape, b.Shape);
        if (a.DType == DType.F32) LaunchBinary<float, F32Elem>(rt, op, a, b, y, dims, strides);
        else LaunchBinary<Half, F16Elem>(rt, op, a, b, y, dims, strides);
    }

    private static string Name(BinaryOp op) => op == BinaryOp.Add ? "add" : "mul";

    /// <summary>Collapses a's shape to 4 dimensions and gives b's element strides over them (0 = broadcast).</summary>
    internal static (long[] Dims, long[] Strides) Broadcast(string op, ReadOnlySpan<int> a, ReadOnlySpan<int> b)
    {
        if (b.Length > a.Length)
            throw new KernelArgumentException($"{op}: cannot broadcast [{string.Join(", ", b.ToArray())}] to [{string.Join(", ", a.ToArray())}]");
        // Per a-dimension: size and whether b varies along it.
        var sizes = new List<long>();
        var varies = new List<bool>();
        for (int i = 0; i < a.Length; i++)
        {
            int bi = i - (a.Length - b.Length);
            int bd = bi >= 0 ? b[bi] : 1;
            if (bd != a[i] && bd != 1)
                throw new KernelArgumentException(
                    $"{op}: cannot broadcast [{string.Join(", ", b.ToArray())}] to [{string.Join(", ", a.ToArray())}]");
            if (a[i] == 1) continue;
            bool v = bd != 1;
            if (sizes.Count > 0 && varies[^1] == v)
                sizes[^1] *= a[i]; // merge adjacent dimensions with the same broadcast behaviour
            else
            {
                sizes.Add(a[i]);
                varies.Add(v);
            }
        }
        if (sizes.Count > 4)
            throw new KernelArgumentException($"{op}: broadcast pattern of [{string.Join(", ", b.ToArray())}] is too irregular");
        while (sizes.Count < 4)
        {
            sizes.Insert(0, 1);
            varies.Insert(0, false);
        }
        var strides = new long[4];
        long s = 1;
        for (int i = 3; i >= 0; i--)
        {
            strides[i] = varies[i] ? s : 0;
            if (varies[i]) s *= sizes[i];
        }
        return (sizes.ToArray(), strides);
    }

    private static void LaunchBinary<T, TE>(KernelRuntime rt, BinaryOp op, Tensor a, Tensor b, Tensor y, long[] d, long[] s)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        var args = new BinaryArgs<T>
        {
            A = a.View<T>(), B = b.View<T>(), Y = y.View<T>(), Total = a.Length,
            D1 = d[1], D2 = d[2], D3 = d[3], S0 = s[0], S1 = s[1], S2 = s[2], S3 = s[3], Op = (int)op,
        };
        if (a.Length == 0) return;
        rt.Launch(Name(op), ElementwiseKernels.Binary<T, TE>, Config(rt, a.Length), args);
    }

    /// <summary>y = clamp(x * alpha + beta, lo, hi).</summary>
    public static void Affine(KernelRuntime rt, Tensor x, Tensor y, float alpha, float beta = 0f,
        float lo = float.NegativeInfinity, float hi = float.PositiveInfinity)
    {
        if (!(lo <= hi)) throw new KernelArgumentException($"clamp: bounds [{lo}, {hi}] are empty");
        if (!x.DType.IsFloat() || y.DType != x.DType || y.Length != x.Length)
            throw new KernelArgumentException($"scale: output {y} must match input {x}");
        if (x.Length == 0) return;
        if (x.DType == DType.F32)
            rt.Launch("scale", ElementwiseKernels.Affine<float, F32Elem>, Config(rt, x.Length),
                new AffineArgs<float> { X = x.F32, Y = y.F32, Total = x.Length, Alpha = alpha, Beta = beta, Lo = lo, Hi = hi });
        else
            rt.Launch("scale", ElementwiseKernels.Affine<Half, F16Elem>, Config(rt, x.Length),
                new AffineArgs<Half> { X = x.F16, Y = y.F16, Total = x.Length, Alpha = alpha, Beta = beta, Lo = lo, Hi = hi });
    }

    /// <summary>Converts between fp32 and fp16 (round to nearest even; overflow becomes infinity).</summary>
    public static void Cast(KernelRuntime rt, Tensor x, Tensor y)
    {
        if (!x.DType.IsFloat() || !y.DType.IsFloat() || y.Length != x.Length)
            throw new KernelArgumentException($"cast: cannot cast {x} into {y}");
        if (x.Length == 0) return;
        var cfg = Config(rt, x.Length);
        switch (x.DType, y.DType)
        {
            case (DType.F32, DType.F16):
                rt.Launch("cast", ElementwiseKernels.Cast<float, F32Elem, Half, F16Elem>, cfg,
                    new CastArgs<float, Half> { X = x.F32, Y = y.F16, Total = x.Length });
                break;
            case (DType.F16, DType.F32):
                rt.Launch("cast", ElementwiseKernels.Cast<Half, F16Elem, float, F32Elem>, cfg,
                    new CastArgs<Half, float> { X = x.F16, Y = y.F32, Total = x.Length });
                break;
            case (DType.F32, DType.F32):
                rt.Launch("cast", ElementwiseKernels.Cast<float, F32Elem, float, F32Elem>, cfg,
                    new CastArgs<float, float> { X = x.F32, Y = y.F32, Total = x.Length });
                break;
            default:
                rt.Launch("cast", ElementwiseKernels.Cast<Half, F16Elem, Half, F16Elem>, cfg,
                    new CastArgs<Half, Half> { X = x.F16, Y = y.F16, Total = x.Length });
                break;
        }
    }

    internal static IEnumerable<KernelEntry> Entries()
    {
        yield return KernelRuntime.Entry<BinaryArgs<float>>("binary_broadcast", "fp32", ElementwiseKernels.Binary<float, F32Elem>);
        yield return KernelRuntime.Entry<BinaryArgs<Half>>("binary_broadcast", "fp16", ElementwiseKernels.Binary<Half, F16Elem>);
        yield return KernelRuntime.Entry<AffineArgs<float>>("scale", "fp32", ElementwiseKernels.Affine<float, F32Elem>);
        yield return KernelRuntime.Entry<AffineArgs<Half>>("scale", "fp16", ElementwiseKernels.Affine<Half, F16Elem>);
        yield return KernelRuntime.Entry<CastArgs<float, Half>>("cast", "fp32->fp16", ElementwiseKernels.Cast<float, F32Elem, Half, F16Elem>);
        yield return KernelRuntime.Entry<CastArgs<Half, float>>("cast", "fp16->fp32", ElementwiseKernels.Cast<Half, F16Elem, float, F32Elem>);
    }
}
