using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace StableDiffusion.Kernels.Cpu;

/// <summary>
/// Vectorized fp32 transcendentals for the CPU kernels: exp (Cody-Waite reduction, Cephes minimax polynomial,
/// two-step scaling so results in the subnormal range stay accurate), erf/erfc, tanh, sigmoid. Each function has a
/// Vector512, a Vector256 and a scalar form computing the same formula, so tails match the vector body.
/// </summary>
public static class CpuMath
{
    private const float Log2E = 1.44269504088896341f;
    private const float Ln2Hi = 0.693359375f;
    private const float Ln2Lo = -2.12194440e-4f;
    // Below -104 e^x rounds to 0 even as a subnormal; above 89 it is +inf (scaling by 2^128 overflows).
    private const float ExpLo = -104f, ExpHi = 89f;
    private const float P0 = 1.9875691500e-4f, P1 = 1.3981999507e-3f, P2 = 8.3334519073e-3f;
    private const float P3 = 4.1665795894e-2f, P4 = 1.6666665459e-1f, P5 = 5.0000001201e-1f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        var xc = Vector512.Min(Vector512.Max(x, Vector512.Create(ExpLo)), Vector512.Create(ExpHi));
        var n = Vector512.Floor(Vector512.FusedMultiplyAdd(xc, Vector512.Create(Log2E), Vector512.Create(0.5f)));
        var p = ExpReduced(xc, n);
        // 2^n as two factors, each a normal float for n in [-150, 128].
        var ni = Vector512.ConvertToInt32(n);
        var n1 = Vector512.ShiftRightArithmetic(ni, 1);
        var n2 = ni - n1;
        var s1 = Vector512.ShiftLeft(n1 + Vector512.Create(127), 23).AsSingle();
        var s2 = Vector512.ShiftLeft(n2 + Vector512.Create(127), 23).AsSingle();
        var y = p * s1 * s2;
        return Vector512.ConditionalSelect(Vector512.Equals(x, x), y, x); // NaN stays NaN
    }

    // e^(xc - n·ln2), the argument reduced to ±ln2/2 (Cody-Waite) and the Cephes polynomial; callers scale by 2^n.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> ExpReduced(Vector512<float> xc, Vector512<float> n)
    {
        var r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Hi), xc);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-Ln2Lo), r);
        var p = Vector512.FusedMultiplyAdd(Vector512.Create(P0), r, Vector512.Create(P1));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P2));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P3));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P4));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(P5));
        p = Vector512.FusedMultiplyAdd(p, r * r, r + Vector512<float>.One);
        return p;
    }

    /// <summary>
    /// e^x for x ≤ 0 (a softmax's scores minus their max), the same polynomial as <see cref="Exp(Vector512{float})"/>
    /// with the range cut at -87: below it the result is 2^-126 (≈ 1e-38, nothing beside a sum that includes e^0 = 1)
    /// instead of 0, so 2^n is one normal float and needs no saturating conversion. NaN stays NaN.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> ExpNonPositive(Vector512<float> x)
    {
        var xc = Vector512.MaxNative(Vector512.Create(-87f), x); // x second: a NaN x passes through
        var n = Vector512.Round(xc * Vector512.Create(Log2E));
        var p = ExpReduced(xc, n);
        var e = Vector512.ShiftLeft(Vector512.ConvertToInt32Native(n) + Vector512.Create(127), 23).AsSingle();
        return p * e;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> x)
    {
        var xc = Vector256.Min(Vector256.Max(x, Vector256.Create(ExpLo)), Vector256.Create(ExpHi));
        var n = Vector256.Floor(Vector256.FusedMultiplyAdd(xc, Vector256.Create(Log2E), Vector256.Create(0.5f)));
        var r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Hi), xc);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-Ln2Lo), r);
        var p = Vector256.FusedMultiplyAdd(Vector256.Create(P0), r, Vector256.Create(P1));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P2));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P3));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P4));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(P5));
        p = Vector256.FusedMultiplyAdd(p, r * r, r + Vector256<float>.One);
        var ni = Vector256.ConvertToInt32(n);
        var n1 = Vector256.ShiftRightArithmetic(ni, 1);
        var n2 = ni - n1;
        var s1 = Vector256.ShiftLeft(n1 + Vector256.Create(127), 23).AsSingle();
        var s2 = Vector256.ShiftLeft(n2 + Vector256.Create(127), 23).AsSingle();
        var y = p * s1 * s2;
        return Vector256.ConditionalSelect(Vector256.Equals(x, x), y, x);
    }

    public static float Exp(float x)
    {
        if (float.IsNaN(x)) return x;
        float xc = Math.Min(Math.Max(x, ExpLo), ExpHi);
        float n = MathF.Floor(MathF.FusedMultiplyAdd(xc, Log2E, 0.5f));
        float r = MathF.FusedMultiplyAdd(n, -Ln2Hi, xc);
        r = MathF.FusedMultiplyAdd(n, -Ln2Lo, r);
        float p = MathF.FusedMultiplyAdd(P0, r, P1);
        p = MathF.FusedMultiplyAdd(p, r, P2);
        p = MathF.FusedMultiplyAdd(p, r, P3);
        p = MathF.FusedMultiplyAdd(p, r, P4);
        p = MathF.FusedMultiplyAdd(p, r, P5);
        p = MathF.FusedMultiplyAdd(p, r * r, r + 1f);
        int ni = (int)n, n1 = ni >> 1, n2 = ni - n1;
        return p * BitConverter.Int32BitsToSingle((n1 + 127) << 23) * BitConverter.Int32BitsToSingle((n2 + 127) << 23);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Sigmoid(Vector512<float> x) => Vector512<float>.One / (Vector512<float>.One + Exp(-x));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Sigmoid(Vector256<float> x) => Vector256<float>.One / (Vector256<float>.One + Exp(-x));

    public static float Sigmoid(float x) => 1f / (1f + Exp(-x));

    // erfc(|x|) = t exp(-x² + poly(t)), t = 1/(1 + |x|/2): Chebyshev fit with relative error below 1.2e-7 everywhere,
    // so gelu(x) = x/2 erfc(-x/√2) stays relatively accurate in both tails.
    private const float E0 = -1.26551223f, E1 = 1.00002368f, E2 = 0.37409196f, E3 = 0.09678418f, E4 = -0.18628806f;
    private const float E5 = 0.27886807f, E6 = -1.13520398f, E7 = 1.48851587f, E8 = -0.82215223f, E9 = 0.17087277f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Erfc(Vector512<float> x)
    {
        var z = Vector512.Abs(x);
        var t = Vector512<float>.One / Vector512.FusedMultiplyAdd(z, Vector512.Create(0.5f), Vector512<float>.One);
        var p = Vector512.FusedMultiplyAdd(Vector512.Create(E9), t, Vector512.Create(E8));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(E7));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(E6));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(E5));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(E4));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(E3));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(E2));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(E1));
        p = Vector512.FusedMultiplyAdd(p, t, Vector512.Create(E0));
        var e = t * Exp(Vector512.FusedMultiplyAdd(-z, z, p));
        return Vector512.ConditionalSelect(Vector512.LessThan(x, Vector512<float>.Zero), Vector512.Create(2f) - e, e);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Erfc(Vector256<float> x)
    {
        var z = Vector256.Abs(x);
        var t = Vector256<float>.One / Vector256.FusedMultiplyAdd(z, Vector256.Create(0.5f), Vector256<float>.One);
        var p = Vector256.FusedMultiplyAdd(Vector256.Create(E9), t, Vector256.Create(E8));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(E7));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(E6));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(E5));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(E4));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(E3));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(E2));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(E1));
        p = Vector256.FusedMultiplyAdd(p, t, Vector256.Create(E0));
        var e = t * Exp(Vector256.FusedMultiplyAdd(-z, z, p));
        return Vector256.ConditionalSelect(Vector256.LessThan(x, Vector256<float>.Zero), Vector256.Create(2f) - e, e);
    }

    public static float Erfc(float x)
    {
        float z = MathF.Abs(x);
        float t = 1f / MathF.FusedMultiplyAdd(z, 0.5f, 1f);
        float p = MathF.FusedMultiplyAdd(E9, t, E8);
        p = MathF.FusedMultiplyAdd(p, t, E7);
        p = MathF.FusedMultiplyAdd(p, t, E6);
        p = MathF.FusedMultiplyAdd(p, t, E5);
        p = MathF.FusedMultiplyAdd(p, t, E4);
        p = MathF.FusedMultiplyAdd(p, t, E3);
        p = MathF.FusedMultiplyAdd(p, t, E2);
        p = MathF.FusedMultiplyAdd(p, t, E1);
        p = MathF.FusedMultiplyAdd(p, t, E0);
        float e = t * Exp(MathF.FusedMultiplyAdd(-z, z, p));
        return x < 0 ? 2f - e : e;
    }

    // erf near 0 from its Taylor series (1 - erfc would lose the relative accuracy there).
    private const float S0 = 1.12837917f, S1 = -0.37612639f, S2 = 0.11283792f, S3 = -0.02686617f;
    private const float S4 = 0.00522398f, S5 = -0.00085483f, S6 = 0.00012055f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Erf(Vector512<float> x)
    {
        var x2 = x * x;
        var s = Vector512.FusedMultiplyAdd(Vector512.Create(S6), x2, Vector512.Create(S5));
        s = Vector512.FusedMultiplyAdd(s, x2, Vector512.Create(S4));
        s = Vector512.FusedMultiplyAdd(s, x2, Vector512.Create(S3));
        s = Vector512.FusedMultiplyAdd(s, x2, Vector512.Create(S2));
        s = Vector512.FusedMultiplyAdd(s, x2, Vector512.Create(S1));
        s = Vector512.FusedMultiplyAdd(s, x2, Vector512.Create(S0)) * x;
        var big = Vector512<float>.One - Erfc(x);
        return Vector512.ConditionalSelect(Vector512.LessThan(Vector512.Abs(x), Vector512.Create(0.5f)), s, big);
    }

    public static float Erf(float x)
    {
        if (MathF.Abs(x) >= 0.5f) return 1f - Erfc(x);
        float x2 = x * x;
        float s = MathF.FusedMultiplyAdd(S6, x2, S5);
        s = MathF.FusedMultiplyAdd(s, x2, S4);
        s = MathF.FusedMultiplyAdd(s, x2, S3);
        s = MathF.FusedMultiplyAdd(s, x2, S2);
        s = MathF.FusedMultiplyAdd(s, x2, S1);
        return MathF.FusedMultiplyAdd(s, x2, S0) * x;
    }

    // tanh: odd minimax polynomial (Cephes) below 0.625, else 1 - 2/(e^{2|x|} + 1) with the sign restored.
    private const float T0 = -5.70498872745e-3f, T1 = 2.06390887954e-2f, T2 = -5.37397155531e-2f;
    private const float T3 = 1.33314422036e-1f, T4 = -3.33332819422e-1f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Tanh(Vector512<float> x)
    {
        var z = Vector512.Abs(x);
        var x2 = x * x;
        var p = Vector512.FusedMultiplyAdd(Vector512.Create(T0), x2, Vector512.Create(T1));
        p = Vector512.FusedMultiplyAdd(p, x2, Vector512.Create(T2));
        p = Vector512.FusedMultiplyAdd(p, x2, Vector512.Create(T3));
        p = Vector512.FusedMultiplyAdd(p, x2, Vector512.Create(T4));
        var small = Vector512.FusedMultiplyAdd(p * x2, x, x);
        var big = Vector512<float>.One - Vector512.Create(2f) / (Exp(z + z) + Vector512<float>.One);
        big = Vector512.CopySign(big, x);
        return Vector512.ConditionalSelect(Vector512.LessThan(z, Vector512.Create(0.625f)), small, big);
    }

    public static float Tanh(float x)
    {
        float z = MathF.Abs(x);
        if (z < 0.625f)
        {
            float x2 = x * x;
            float p = MathF.FusedMultiplyAdd(T0, x2, T1);
            p = MathF.FusedMultiplyAdd(p, x2, T2);
            p = MathF.FusedMultiplyAdd(p, x2, T3);
            p = MathF.FusedMultiplyAdd(p, x2, T4);
            return MathF.FusedMultiplyAdd(p * x2, x, x);
        }
        return MathF.CopySign(1f - 2f / (Exp(z + z) + 1f), x);
    }

    /// <summary>Horizontal maximum of a vector.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Max(Vector512<float> v)
    {
        var m = Vector256.Max(v.GetLower(), v.GetUpper());
        var m4 = Vector128.Max(m.GetLower(), m.GetUpper());
        return MathF.Max(MathF.Max(m4.GetElement(0), m4.GetElement(1)), MathF.Max(m4.GetElement(2), m4.GetElement(3)));
    }
}

/// <summary>Splits [0, total) into chunks of about <c>grain</c> items and runs them on <see cref="CpuParallel"/>.</summary>
internal static class CpuChunks
{
    public static void For(long total, long grain, Action<long, long> body)
    {
        if (total <= 0) return;
        grain = Math.Max(1, grain);
        long chunks = (total + grain - 1) / grain;
        // At least a few chunks per thread for balance, but never more than the work allows.
        if (chunks < CpuParallel.Threads) chunks = Math.Min(total, CpuParallel.Threads);
        if (chunks > int.MaxValue) chunks = int.MaxValue;
        long per = (total + chunks - 1) / chunks;
        int count = (int)((total + per - 1) / per);
        CpuParallel.For(count, i =>
        {
            long start = i * per;
            body(start, Math.Min(total, start + per));
        });
    }
}
