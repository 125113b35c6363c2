using ILGPU;
using ILGPU.Runtime;
using Half = ILGPU.Half;

namespace StableDiffusion.Kernels;

/// <summary>
/// Storage element type of a kernel. Kernels compute in fp32 and go through this interface only to load and
/// store, so one kernel source serves fp32 and fp16 tensors (ILGPU specialises the struct at compile time).
/// </summary>
public interface IElem<T> where T : unmanaged
{
    float ToFloat(T v);
    T FromFloat(float v);
}

public struct F32Elem : IElem<float>
{
    public readonly float ToFloat(float v) => v;
    public readonly float FromFloat(float v) => v;
}

public struct F16Elem : IElem<Half>
{
    public readonly float ToFloat(Half v) => (float)v;

    // CUDA and OpenCL convert with round-to-nearest-even in one instruction; ILGPU's CPU accelerator truncates,
    // so there the rounding is done by hand (the branch is folded away per backend).
    public readonly Half FromFloat(float v) =>
        Accelerator.CurrentType == AcceleratorType.CPU ? HalfRounding.RoundNearestEven(v) : (Half)v;
}

public static class HalfRounding
{
    /// <summary>IEEE float → half, round to nearest even, overflow to infinity, NaN kept quiet.</summary>
    public static Half RoundNearestEven(float f)
    {
        uint x = Interop.FloatAsInt(f);
        uint sign = (x >> 16) & 0x8000u;
        uint a = x & 0x7FFFFFFFu;
        uint h;
        if (a >= 0x7F800000u) h = a > 0x7F800000u ? 0x7E00u : 0x7C00u;
        else if (a >= 0x477FF000u) h = 0x7C00u; // at or above 65520: rounds to infinity
        else if (a < 0x38800000u) h = (uint)MathF.Round(Interop.IntAsFloat(a) * 16777216f, MidpointRounding.ToEven); // subnormal
        else
        {
            uint mant = a & 0x7FFFFFu;
            h = (((a >> 23) - 112u) << 10) | (mant >> 13);
            uint rest = mant & 0x1FFFu;
            if (rest > 0x1000u || (rest == 0x1000u && (h & 1u) != 0)) h++;
        }
        return Interop.IntAsFloat((ushort)(sign | h));
    }
}

/// <summary>Four floats; a view of these gives 128-bit shared and global loads.</summary>
public struct Float4
{
    public float X, Y, Z, W;
}

/// <summary>Eight floats held in registers (fields, never an indexed array: ILGPU 1.5.3 would spill those).</summary>
public struct Float8
{
    public float V0, V1, V2, V3, V4, V5, V6, V7;

    public static Float8 From(Float4 lo, Float4 hi) => new()
    {
        V0 = lo.X, V1 = lo.Y, V2 = lo.Z, V3 = lo.W,
        V4 = hi.X, V5 = hi.Y, V6 = hi.Z, V7 = hi.W,
    };

    /// <summary>this += a * b, element by element over b.</summary>
    public void Fma(float a, in Float8 b)
    {
        V0 += a * b.V0; V1 += a * b.V1; V2 += a * b.V2; V3 += a * b.V3;
        V4 += a * b.V4; V5 += a * b.V5; V6 += a * b.V6; V7 += a * b.V7;
    }

    /// <summary>Element <paramref name="i"/> (0..7); a switch, so the fields stay in registers.</summary>
    public readonly float Get(int i) => i switch
    {
        0 => V0, 1 => V1, 2 => V2, 3 => V3, 4 => V4, 5 => V5, 6 => V6, _ => V7,
    };
}

internal static class KernelMath
{
    public static int CeilDiv(int a, int b) => (a + b - 1) / b;
    public static long CeilDiv(long a, long b) => (a + b - 1) / b;

    /// <summary>Numerically safe logistic function (never exp of a large positive number).</summary>
    public static float Sigmoid(float x)
    {
        if (x >= 0f)
        {
            float e = MathF.Exp(-x);
            return 1f / (1f + e);
        }
        else
        {
            float e = MathF.Exp(x);
            return e / (1f + e);
        }
    }

    /// <summary>
    /// erf(x) to about 1.2e-7 relative (Numerical Recipes' erfc Chebyshev fit); ILGPU has no Erf.
    /// </summary>
    public static float Erf(float x)
    {
        float z = Math.Abs(x);
        float t = 1f / (1f + 0.5f * z);
        float poly = -z * z - 1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f +
                     t * (-0.18628806f + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f +
                     t * (-0.82215223f + t * 0.17087277f))))))));
        float erfc = t * MathF.Exp(poly);
        float r = 1f - erfc;
        return x >= 0f ? r : -r;
    }
}
