using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels.Cpu;

/// <summary>Arguments of <see cref="CpuConv.Run(in CpuConvArgs)"/>: channels-last 2-D convolution.</summary>
public unsafe struct CpuConvArgs
{
    public int N, H, W, Cin, Cout, KH, KW, Stride, PadTop, PadLeft, PadBottom, PadRight; // Hout = (H + PadTop + PadBottom - KH) / Stride + 1
    public void* X; public DType XType;              // [N, H, W, Cin]
    public void* Weight; public DType WeightType;    // [Cout, KH, KW, Cin]  (OHWI)
    public void* Bias; public DType BiasType;        // [Cout] or null
    public void* Residual; public DType ResidualType;// [N, Hout, Wout, Cout] or null
    public void* Y; public DType YType;              // [N, Hout, Wout, Cout]
}

/// <summary>
/// Convolution as an implicit GEMM: rows (n, oh, ow), columns (kh, kw, ci), so the OHWI weight is op(B) with
/// TransB and each packed A panel is gathered straight from the input (no im2col buffer). 1×1 stride-1 unpadded
/// convs are plain GEMMs. 3×3 stride-1 convolutions over many pixels take Winograd's F(4×4, 3×3) or F(2×2, 3×3) (<see cref="CpuWinograd"/>).
/// </summary>
public static unsafe class CpuConv
{
    /// <summary>
    /// Whether eligible 3×3 convolutions use Winograd's algorithm: 4× (F(4×4, 3×3)) or 2.25× (F(2×2, 3×3)) fewer
    /// multiply-adds, results equal to the direct sum up to fp32 rounding. The switch is for benchmarks and tests;
    /// SD_CPU_WINOGRAD=0 sets it off.
    /// </summary>
    public static bool Winograd { get; set; } = Environment.GetEnvironmentVariable("SD_CPU_WINOGRAD") != "0";

    public static (int Hout, int Wout) OutputSize(in CpuConvArgs p) =>
        ((p.H + p.PadTop + p.PadBottom - p.KH) / p.Stride + 1, (p.W + p.PadLeft + p.PadRight - p.KW) / p.Stride + 1);

    public static void Run(in CpuConvArgs p)
    {
        Validate(p, needWeight: true);
        var g = Gemm(p);
        if (IsPointwise(p))
        {
            CpuGemm.Run(g);
            return;
        }
        if (WinogradTile(p) > 0)
        {
            using var packed = PackWeight(p.Weight, p.WeightType, p.Cout, p.KH, p.KW, p.Cin);
            Run(p, packed);
            return;
        }
        var a = Source(p);
        CpuGemm.Execute(ref a, g, null); // packs the OHWI weight as op(B) = Wᵀ into the pooled buffer
    }

    /// <summary>Run with the weight packed once by <see cref="PackWeight"/>; p.Weight and WeightType are ignored.</summary>
    public static void Run(in CpuConvArgs p, CpuPackedB packedWeight)
    {
        ArgumentNullException.ThrowIfNull(packedWeight);
        Validate(p, needWeight: false);
        var g = Gemm(p);
        if (packedWeight.N != p.Cout || packedWeight.K != (long)p.KH * p.KW * p.Cin)
            throw new KernelArgumentException($"cpu conv: packed weight is {packedWeight.N}x{packedWeight.K}, the call needs {p.Cout}x{p.KH * p.KW * p.Cin}");
        if (IsPointwise(p))
        {
            CpuGemm.Run(g, packedWeight);
            return;
        }
        if (WinogradTile(p) is var tile and > 0)
        {
            CpuWinograd.Run(p, packedWeight, tile);
            return;
        }
        var a = Source(p);
        CpuGemm.Execute(ref a, g, packedWeight);
    }

    /// <summary>Packs an OHWI weight [cout, kh, kw, cin] for repeated use.</summary>
    public static CpuPackedB PackWeight(void* weight, DType t, int cout, int kh, int kw, int cin)
    {
        if (kh < 1 || kw < 1 || cin < 1 || (long)kh * kw * cin > int.MaxValue)
            throw new KernelArgumentException($"cpu conv: bad weight shape [{cout},{kh},{kw},{cin}]");
        return CpuGemm.PackB(weight, t, cout, kh * kw * cin, transB: true);
    }

    /// <summary>Scalar reference, double accumulation. For tests.</summary>
    public static void Reference(in CpuConvArgs p)
    {
        Validate(p, needWeight: true);
        var (ho, wo) = OutputSize(p);
        for (int n = 0; n < p.N; n++)
            for (int oh = 0; oh < ho; oh++)
                for (int ow = 0; ow < wo; ow++)
                    for (int co = 0; co < p.Cout; co++)
                    {
                        double s = 0;
                        for (int kh = 0; kh < p.KH; kh++)
                        {
                            int ih = oh * p.Stride - p.PadTop + kh;
                            if ((uint)ih >= (uint)p.H) continue;
                            for (int kw = 0; kw < p.KW; kw++)
                            {
                                int iw = ow * p.Stride - p.PadLeft + kw;
                                if ((uint)iw >= (uint)p.W) continue;
                                long xi = (((long)n * p.H + ih) * p.W + iw) * p.Cin;
                                long wi = (((long)co * p.KH + kh) * p.KW + kw) * p.Cin;
                                for (int ci = 0; ci < p.Cin; ci++)
                                    s += (double)Half16.Read(p.X, p.XType, xi + ci) * Half16.Read(p.Weight, p.WeightType, wi + ci);
                            }
                        }
                        long yi = (((long)n * ho + oh) * wo + ow) * p.Cout + co;
                        if (p.Bias != null) s += Half16.Read(p.Bias, p.BiasType, co);
                        if (p.Residual != null) s += Half16.Read(p.Residual, p.ResidualType, yi);
                        Half16.Write(p.Y, p.YType, yi, (float)s);
                    }
    }

    private static int WinogradTile(in CpuConvArgs p) => Winograd ? CpuWinograd.TileFor(p) : 0;

    private static bool IsPointwise(in CpuConvArgs p) =>
        p.KH == 1 && p.KW == 1 && p.Stride == 1 && (p.PadTop | p.PadLeft | p.PadBottom | p.PadRight) == 0;

    private static CpuGemmArgs Gemm(in CpuConvArgs p)
    {
        var (ho, wo) = OutputSize(p);
        return new CpuGemmArgs
        {
            M = checked(p.N * ho * wo), N = p.Cout, K = checked(p.KH * p.KW * p.Cin), Batch = 1,
            TransA = false, TransB = true, Alpha = 1f,
            A = p.X, AType = p.XType, B = p.Weight, BType = p.WeightType,
            Bias = p.Bias, BiasType = p.BiasType, Residual = p.Residual, ResidualType = p.ResidualType,
            C = p.Y, CType = p.YType,
        };
    }

    private static ASource Source(in CpuConvArgs p)
    {
        var (ho, wo) = OutputSize(p);
        return new ASource
        {
            Kind = ASource.ConvKind, Ptr = p.X, Type = p.XType, Stride = 0, M = p.N * ho * wo, K = p.KH * p.KW * p.Cin,
            H = p.H, W = p.W, Cin = p.Cin, KW = p.KW, ConvStride = p.Stride, PadTop = p.PadTop, PadLeft = p.PadLeft,
            Hout = ho, Wout = wo,
        };
    }

    private static void Validate(in CpuConvArgs p, bool needWeight)
    {
        if (p.N < 1 || p.H < 1 || p.W < 1 || p.Cin < 1 || p.Cout < 1 || p.KH < 1 || p.KW < 1 || p.Stride < 1)
            throw new KernelArgumentException($"cpu conv: N, H, W, Cin, Cout, KH, KW, Stride must be >= 1 (got N={p.N} H={p.H} W={p.W} Cin={p.Cin} Cout={p.Cout} K={p.KH}x{p.KW} stride={p.Stride})");
        if (p.PadTop < 0 || p.PadLeft < 0 || p.PadBottom < 0 || p.PadRight < 0)
            throw new KernelArgumentException($"cpu conv: padding must be >= 0 (got {p.PadTop},{p.PadLeft},{p.PadBottom},{p.PadRight})");
        if (p.H + p.PadTop + p.PadBottom < p.KH || p.W + p.PadLeft + p.PadRight < p.KW)
            throw new KernelArgumentException($"cpu conv: {p.KH}x{p.KW} kernel larger than the padded {p.H}x{p.W} input");
        if (p.X == null || p.Y == null || (needWeight && p.Weight == null))
            throw new KernelArgumentException("cpu conv: X, Weight and Y must not be null");
        CpuGemm.CheckFloat(p.XType, "X");
        if (needWeight) CpuGemm.CheckFloat(p.WeightType, "weight");
        CpuGemm.CheckFloat(p.YType, "Y");
        if (p.Bias != null) CpuGemm.CheckFloat(p.BiasType, "bias");
        if (p.Residual != null) CpuGemm.CheckFloat(p.ResidualType, "residual");
        var (ho, wo) = OutputSize(p);
        if ((long)p.N * ho * wo > int.MaxValue || (long)p.KH * p.KW * p.Cin > int.MaxValue)
            throw new KernelArgumentException("cpu conv: problem too large");
    }
}
