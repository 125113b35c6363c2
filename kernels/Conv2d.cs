using ILGPU;
using ILGPU.Runtime;
using StableDiffusion.Runtime;
using Half = ILGPU.Half;

namespace StableDiffusion.Kernels;

// 2-D convolution as an implicit GEMM on the tiled GEMM kernel (Gemm.cs), with no im2col buffer:
//   M = N*Hout*Wout output pixels, N = Cout, K = KH*KW*Cin.
// Activations are NHWC and weights OHWI ([Cout][KH][KW][Cin]), so a K slice is contiguous in channels for both
// operands. The A operand below gathers input pixels on the fly and returns 0 for taps in the padding.

/// <summary>The im2col matrix of an NHWC input, gathered on demand: row = output pixel, k = (kh, kw, ci).</summary>
public struct Im2ColOperand<T, TE> : IGemmOperand
    where T : unmanaged
    where TE : struct, IElem<T>
{
    public ArrayView<T> Input;
    public int H, W, C;
    public int KW;
    public int Stride, PadTop, PadLeft;
    public int Hout, Wout;

    public readonly int KFast => 1;

    public readonly float Load(int batch, int outer, int k)
    {
        int hw = Hout * Wout;
        int n = outer / hw;
        int rem = outer - n * hw;
        int ho = rem / Wout;
        int wo = rem - ho * Wout;
        int tap = k / C;
        int ci = k - tap * C;
        int kh = tap / KW;
        int kw = tap - kh * KW;
        int ih = ho * Stride - PadTop + kh;
        int iw = wo * Stride - PadLeft + kw;
        if (ih < 0 || ih >= H || iw < 0 || iw >= W) return 0f;
        return default(TE).ToFloat(Input[((long)(n * H + ih) * W + iw) * C + ci]);
    }
}

/// <summary>Zero padding of a convolution input; the VAE encoder's downsampling pads only bottom and right.</summary>
public readonly record struct Padding2d(int Top, int Left, int Bottom, int Right)
{
    public static Padding2d Same(int p) => new(p, p, p, p);

    public bool IsZero => Top == 0 && Left == 0 && Bottom == 0 && Right == 0;

    public override string ToString() =>
        Top == Left && Left == Bottom && Bottom == Right ? $"{Top}" : $"(top {Top}, left {Left}, bottom {Bottom}, right {Right})";
}

public static class Conv2d
{
    /// <summary>Output extent, or -1 where the arguments admit none.</summary>
    public static int OutSize(int size, int kernel, int stride, int pad) => OutSize(size, kernel, stride, pad, pad);

    public static int OutSize(int size, int kernel, int stride, int padBefore, int padAfter) =>
        stride < 1 || size + padBefore + padAfter < kernel ? -1 : (size + padBefore + padAfter - kernel) / stride + 1;

    /// <summary>
    /// y = conv2d(x, w) + bias (+ residual). x: [N, H, W, Cin], w: [Cout, KH, KW, Cin], bias: [Cout],
    /// residual and y: [N, Hout, Wout, Cout].
    /// </summary>
    public static void Run(KernelRuntime rt, Tensor x, Tensor w, Tensor? bias, Tensor y, int stride, int pad,
        Tensor? residual = null, GemmVariant variant = GemmVariant.Auto) =>
        Run(rt, x, w, bias, y, stride, Padding2d.Same(pad), residual, variant);

    public static void Run(KernelRuntime rt, Tensor x, Tensor w, Tensor? bias, Tensor y, int stride, Padding2d pad,
        Tensor? residual = null, GemmVariant variant = GemmVariant.Auto)
    {
        if (x.Rank != 4 || w.Rank != 4 || y.Rank != 4)
            throw new KernelArgumentException($"conv2d: expected NHWC input, OHWI weight and NHWC output, got {x}, {w}, {y}");
        if (!x.DType.IsFloat() || w.DType != x.DType || y.DType != x.DType)
            throw new KernelArgumentException($"conv2d: input {x}, weight {w} and output {y} must share one float dtype");
        int n = x.Dim(0), h = x.Dim(1), wd = x.Dim(2), cin = x.Dim(3);
        int cout = w.Dim(0), kh = w.Dim(1), kw = w.Dim(2);
        if (w.Dim(3) != cin)
            throw new KernelArgumentException($"conv2d: weight {w} expects {w.Dim(3)} input channels, input {x} has {cin}");
        if (stride < 1 || pad.Top < 0 || pad.Left < 0 || pad.Bottom < 0 || pad.Right < 0 || kh < 1 || kw < 1)
            throw new KernelArgumentException($"conv2d: stride {stride}, padding {pad} and kernel {kh}x{kw} are invalid");
        int ho = OutSize(h, kh, stride, pad.Top, pad.Bottom), wo = OutSize(wd, kw, stride, pad.Left, pad.Right);
        if (ho < 1 || wo < 1)
            throw new KernelArgumentException($"conv2d: a {kh}x{kw} kernel does not fit input {h}x{wd} with padding {pad}");
        if (y.Dim(0) != n || y.Dim(1) != ho || y.Dim(2) != wo || y.Dim(3) != cout)
            throw new KernelArgumentException($"conv2d: output must be [{n}, {ho}, {wo}, {cout}], got {y.ShapeString()}");
        if (bias is not null && (bias.DType != x.DType || bias.Length != cout))
            throw new KernelArgumentException($"conv2d: bias {bias} must be {x.DType.Name()}[{cout}]");
        if (residual is not null && (residual.DType != x.DType || !residual.Shape.SequenceEqual(y.Shape)))
            throw new KernelArgumentException($"conv2d: residual {residual} must match output {y}");
        long m = (long)n * ho * wo;
        long k = (long)kh * kw * cin;
        if (m > int.MaxValue || k > int.MaxValue)
            throw new KernelArgumentException($"conv2d: problem too large ({m} pixels x {k} taps)");

        bool tensorCore = TensorCoreEligible(rt, x.DType, cin, variant == GemmVariant.TensorCore, out var why);
        if (variant is GemmVariant.Auto or GemmVariant.TensorCore && tensorCore)
        {
            LaunchTensorCore(rt, x, w, bias, y, residual, stride, pad, ho, wo, (int)m, cout, (int)k);
            return;
        }
        if (variant == GemmVariant.TensorCore)
            throw new KernelArgumentException($"conv2d: the tensor-core kernel cannot run this convolution: {why}");
        var v = Gemm.Choose(rt, variant, m, cout, 1);
        if (x.DType == DType.F32) Launch<float, F32Elem>(rt, x, w, bias, y, residual, stride, pad, ho, wo, (int)m, cout, (int)k, v);
        else Launch<Half, F16Elem>(rt, x, w, bias, y, residual, stride, pad, ho, wo, (int)m, cout, (int)k, v);
    }

    private static bool TensorCoreEligible(KernelRuntime rt, DType dtype, int cin, bool requested, out string why)
    {
        why = !Gemm.TensorCoreDevice(rt, requested) ? "it needs a CUDA device (or the ILGPU CPU accelerator, which emulates it)"
            : dtype != DType.F16 ? "it needs fp16"
            : cin % 8 != 0 ? $"input channels ({cin}) must be a multiple of 8"
            : "";
        return why.Length == 0;
    }

    private static void LaunchTensorCore(KernelRuntime rt, Tensor x, Tensor w, Tensor? bias, Tensor y, Tensor? residual,
        int stride, Padding2d pad, int ho, int wo, int m, int n, int k)
    {
        var epilogue = TcEpilogue.Of(Gemm.Epilogue<Half, F16Elem>(y, 0, n, 1f, bias, residual), y, bias, residual);
        var weights = new TcMatrix { Base = Gemm.Address(w), Ld = k, Rows = n };
        if (w.Dim(1) == 1 && w.Dim(2) == 1 && stride == 1 && pad.IsZero)
        {
            var g = new TcGemmArgs<TcMatrix, TcMatrix>
            {
                A = new TcMatrix { Base = Gemm.Address(x), Ld = k, Rows = m }, B = weights, C = epilogue, M = m, N = n, K = k,
            };
            Gemm.LaunchMma(rt, "conv2d_mma", m, n, 1, g);
            return;
        }
        var args = new TcGemmArgs<TcIm2Col, TcMatrix>
        {
            A = new TcIm2Col
            {
                Base = Gemm.Address(x), H = x.Dim(1), W = x.Dim(2), C = x.Dim(3), KW = w.Dim(2), Stride = stride,
                PadTop = pad.Top, PadLeft = pad.Left, Hout = ho, Wout = wo, Rows = m,
            },
            B = weights,
            C = epilogue,
            M = m,
            N = n,
            K = k,
        };
        Gemm.LaunchMma(rt, "conv2d_mma", m, n, 1, args);
    }

    private static void Launch<T, TE>(KernelRuntime rt, Tensor x, Tensor w, Tensor? bias, Tensor y, Tensor? residual,
        int stride, Padding2d pad, int ho, int wo, int m, int n, int k, GemmVariant v)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        if (w.Dim(1) == 1 && w.Dim(2) == 1 && stride == 1 && pad.IsZero)
        {
            // A 1x1 convolution over NHWC is a plain GEMM on the [pixels, Cin] matrix.
            var g = new GemmArgs<StridedOperand<T, TE>, StridedOperand<T, TE>, MatrixEpilogue<T, TE>>
            {
                A = new StridedOperand<T, TE> { Data = x.View<T>(), OuterStride = k, KStride = 1, KFastFlag = 1 },
                B = new StridedOperand<T, TE> { Data = w.View<T>(), OuterStride = k, KStride = 1, KFastFlag = 1 },
                C = Gemm.Epilogue<T, TE>(y, 0, n, 1f, bias, residual),
                M = m,
                N = n,
                K = k,
            };
            Gemm.LaunchTiled(rt, "conv2d", v, m, n, 1, g);
            return;
        }
        var args = new GemmArgs<Im2ColOperand<T, TE>, StridedOperand<T, TE>, MatrixEpilogue<T, TE>>
        {
            A = new Im2ColOperand<T, TE>
            {
                Input = x.View<T>(), H = x.Dim(1), W = x.Dim(2), C = x.Dim(3), KW = w.Dim(2),
                Stride = stride, PadTop = pad.Top, PadLeft = pad.Left, Hout = ho, Wout = wo,
            },
            B = new StridedOperand<T, TE> { Data = w.View<T>(), OuterStride = k, KStride = 1, KFastFlag = 1 },
            C = Gemm.Epilogue<T, TE>(y, 0, n, 1f, bias, residual),
            M = m,
            N = n,
            K = k,
        };
        Gemm.LaunchTiled(rt, "conv2d", v, m, n, 1, args);
    }

    internal static IEnumerable<KernelEntry> Entries()
    {
        foreach (var e in EntriesFor<float, F32Elem>("fp32")) yield return e;
        foreach (var e in EntriesFor<Half, F16Elem>("fp16")) yield return e;
        foreach (var e in Gemm.MmaEntries<TcIm2Col, TcMatrix>("conv2d_implicit_gemm_mma")) yield return e;
    }

    private static IEnumerable<KernelEntry> EntriesFor<T, TE>(string dt)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        yield return KernelRuntime.Entry<GemmArgs<Im2ColOperand<T, TE>, StridedOperand<T, TE>, MatrixEpilogue<T, TE>>>(
            "conv2d_implicit_gemm", $"{dt} 128x128x8 t256",
            GemmKernels.TiledKernel<GemmTile128, Im2ColOperand<T, TE>, StridedOperand<T, TE>, MatrixEpilogue<T, TE>>);
        yield return KernelRuntime.Entry<GemmArgs<Im2ColOperand<T, TE>, StridedOperand<T, TE>, MatrixEpilogue<T, TE>>>(
            "conv2d_implicit_gemm", $"{dt} 64x64x16 t64",
            GemmKernels.TiledKernel<GemmTile64, Im2ColOperand<T, TE>, StridedOperand<T, TE>, MatrixEpilogue<T, TE>>);
    }
}
