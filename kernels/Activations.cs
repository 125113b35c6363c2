using ILGPU;
using ILGPU.Runtime;
using StableDiffusion.Runtime;
using Half = ILGPU.Half;

namespace StableDiffusion.Kernels;

// Pointwise activations and GEGLU (the gated feed-forward of the UNet's transformer blocks).

public struct ActivationArgs<T> where T : unmanaged
{
    public ArrayView<T> X, Y;
    public long Total;
    public int Kind;
}

/// <summary>y[r, c] = x[r, c] * gelu(x[r, C + c]) for x [rows, 2C], y [rows, C].</summary>
public struct GegluArgs<T> where T : unmanaged
{
    public ArrayView<T> X, Y;
    public long Total;
    public int C;
    public int Approximate;
}

public static class ActivationKernels
{
    public static float Apply(int kind, float x) => kind switch
    {
        0 => x * KernelMath.Sigmoid(x),
        1 => 0.5f * x * (1f + KernelMath.Erf(x * 0.70710678118654752f)),
        2 => 0.5f * x * (1f + MathF.Tanh(0.79788456080286536f * (x + 0.044715f * x * x * x))),
        3 => x * KernelMath.Sigmoid(1.702f * x),
        5 => MathF.Max(x, 0f),
        6 => MathF.Tanh(x),
        _ => MathF.Exp(x),
    };

    public static void Pointwise<T, TE>(ActivationArgs<T> p)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        var e = default(TE);
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < p.Total; i += stride)
            p.Y[i] = e.FromFloat(Apply(p.Kind, e.ToFloat(p.X[i])));
    }

    public static void Geglu<T, TE>(GegluArgs<T> p)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        var e = default(TE);
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < p.Total; i += stride)
        {
            long r = i / p.C;
            long c = i - r * p.C;
            long src = r * 2 * p.C + c;
            float h = e.ToFloat(p.X[src]);
            float gate = e.ToFloat(p.X[src + p.C]);
            p.Y[i] = e.FromFloat(h * Apply(p.Approximate != 0 ? 2 : 1, gate));
        }
    }
}

public static class Activations
{
    public static void Run(KernelRuntime rt, Activation kind, Tensor x, Tensor y)
    {
        if (!x.DType.IsFloat() || y.DType != x.DType || y.Length != x.Length)
            throw new KernelArgumentException($"{Name(kind)}: output {y} must match input {x}");
        if (!Enum.IsDefined(kind)) throw new KernelArgumentException($"activation: unknown kind {(int)kind}");
        if (x.Length == 0) return;
        var cfg = Elementwise.Config(rt, x.Length);
        if (x.DType == DType.F32)
            rt.Launch(Name(kind), ActivationKernels.Pointwise<float, F32Elem>, cfg,
                new ActivationArgs<float> { X = x.F32, Y = y.F32, Total = x.Length, Kind = (int)kind });
        else
            rt.Launch(Name(kind), ActivationKernels.Pointwise<Half, F16Elem>, cfg,
                new ActivationArgs<Half> { X = x.F16, Y = y.F16, Total = x.Length, Kind = (int)kind });
    }

    public static string Name(Activation kind) => kind switch
    {
        Activation.Silu => "silu",
        Activation.Gelu => "gelu",
        Activation.GeluTanh => "gelu_tanh",
        Activation.QuickGelu => "quick_gelu",
        Activation.Exp => "exp",
        Activation.Relu => "relu",
        Activation.Tanh => "tanh",
        _ => "activation",
    };

    /// <summary>x [..., 2C] → y [..., C]: first half times GELU of the second half.</summary>
    public static void Geglu(KernelRuntime rt, Tensor x, Tensor y, bool approximate = false)
    {
        if (!x.DType.IsFloat() || y.DType != x.DType || x.Rank < 1 || x.Dim(-1) % 2 != 0)
            throw new KernelArgumentException($"geglu: input {x} must be float with an even last dimension");
        int c = x.Dim(-1) / 2;
        if (y.Rank != x.Rank || y.Dim(-1) != c || y.Length * 2 != x.Length)
            throw new KernelArgumentException($"geglu: output {y} must be input {x} with the last dimension halved");
        if (y.Length == 0) return;
        var cfg = Elementwise.Config(rt, y.Length);
        if (x.DType == DType.F32)
            rt.Launch("geglu", ActivationKernels.Geglu<float, F32Elem>, cfg,
                new GegluArgs<float> { X = x.F32, Y = y.F32, Total = y.Length, C = c, Approximate = approximate ? 1 : 0 });
        else
            rt.Launch("geglu", ActivationKernels.Geglu<Half, F16Elem>, cfg,
                new GegluArgs<Half> { X = x.F16, Y = y.F16, Total = y.Length, C = c, Approximate = approximate ? 1 : 0 });
    }

    internal static IEnumerable<KernelEntry> Entries()
    {
        yield return KernelRuntime.Entry<ActivationArgs<float>>("activation", "fp32", ActivationKernels.Pointwise<float, F32Elem>);
        yield return KernelRuntime.Entry<ActivationArgs<Half>>("activation", "fp16", ActivationKernels.Pointwise<Half, F16Elem>);
        yield return KernelRuntime.Entry<GegluArgs<float>>("geglu", "fp32", ActivationKernels.Geglu<float, F32Elem>);
        yield return KernelRuntime.Entry<GegluArgs<Half>>("geglu", "fp16", ActivationKernels.Geglu<Half, F16Elem>);
    }
}
