using StableDiffusion.Kernels;
using StableDiffusion.Kernels.Cpu;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;

namespace StableDiffusion.Tests.Kernels.Cpu;

/// <summary>CpuConv (NHWC, OHWI) against torch.nn.functional.conv2d (NCHW, OIHW, float64) after an explicit pad.</summary>
public unsafe class CpuConvTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    [Theory]
    // mix (x/weight/out), N, H, W, Cin, Cout, KH×KW, stride, pad top, left, bottom, right, bias, residual, prepacked
    [InlineData("f32", 1, 9, 9, 8, 12, 3, 1, 1, 1, 1, 1, true, true, false)]
    [InlineData("f32", 2, 8, 8, 4, 20, 3, 1, 1, 1, 1, 1, true, false, false)]     // conv_in: Cin = 4
    [InlineData("f32", 1, 8, 8, 24, 4, 3, 1, 1, 1, 1, 1, true, false, false)]     // conv_out: Cout = 4
    [InlineData("f32", 2, 9, 9, 16, 16, 3, 2, 1, 1, 1, 1, true, false, false)]    // downsampler
    [InlineData("f32", 1, 8, 8, 16, 16, 3, 2, 0, 0, 1, 1, true, false, false)]    // VAE downsampler pad (0,0,1,1)
    [InlineData("f32", 2, 5, 5, 24, 40, 1, 1, 0, 0, 0, 0, true, true, false)]     // 1×1 shortcut → GEMM
    [InlineData("f32", 1, 7, 6, 10, 9, 1, 2, 0, 0, 0, 0, false, false, false)]    // 1×1 stride 2 → implicit
    [InlineData("f32", 1, 6, 6, 100, 70, 3, 1, 1, 1, 1, 1, false, true, true)]    // K = 900: KC blocks split taps
    [InlineData("f32", 2, 10, 7, 12, 33, 3, 1, 2, 0, 1, 2, true, true, true)]     // asymmetric padding
    [InlineData("x32w16", 1, 9, 9, 8, 12, 3, 1, 1, 1, 1, 1, true, true, true)]
    [InlineData("f16", 2, 8, 8, 4, 20, 3, 1, 1, 1, 1, 1, true, false, false)]
    [InlineData("f16", 1, 9, 9, 16, 16, 3, 2, 1, 1, 1, 1, true, true, false)]
    [InlineData("f16", 1, 8, 8, 16, 16, 3, 2, 0, 0, 1, 1, false, false, true)]
    [InlineData("f16", 2, 5, 5, 24, 40, 1, 1, 0, 0, 0, 0, true, true, false)]
    public void Conv_matches_libtorch(string mix, int n, int h, int w, int cin, int cout, int ks, int stride, int pt, int pl,
        int pb, int pr, bool withBias, bool withResidual, bool prepacked)
    {
        var (xt, wt, yt) = mix switch
        {
            "f32" => (DType.F32, DType.F32, DType.F32),
            "x32w16" => (DType.F32, DType.F16, DType.F32),
            _ => (DType.F16, DType.F16, DType.F16),
        };
        using var scope = torch.NewDisposeScope();
        var args = new CpuConvArgs
        {
            N = n, H = h, W = w, Cin = cin, Cout = cout, KH = ks, KW = ks, Stride = stride,
            PadTop = pt, PadLeft = pl, PadBottom = pb, PadRight = pr,
        };
        var (ho, wo) = CpuConv.OutputSize(args);
        var x = oracle.Random((long)n * h * w * cin, xt);
        var wgt = oracle.Random((long)cout * ks * ks * cin, wt, 0.3f);
        var bias = withBias ? oracle.Random(cout, yt) : null;
        var res = withResidual ? oracle.Random((long)n * ho * wo * cout, yt) : null;
        using var nx = new NativeBuf(x, xt);
        using var nw = new NativeBuf(wgt, wt);
        using var nbias = bias is null ? null : new NativeBuf(bias, yt);
        using var nres = res is null ? null : new NativeBuf(res, yt);
        using var ny = new NativeBuf((long)n * ho * wo * cout, yt);
        args.X = nx.Ptr; args.XType = xt;
        args.Weight = nw.Ptr; args.WeightType = wt;
        args.Bias = nbias is null ? null : nbias.Ptr; args.BiasType = yt;
        args.Residual = nres is null ? null : nres.Ptr; args.ResidualType = yt;
        args.Y = ny.Ptr; args.YType = yt;
        if (prepacked)
        {
            using var packed = CpuConv.PackWeight(nw.Ptr, wt, cout, ks, ks, cin);
            CpuConv.Run(args, packed);
        }
        else CpuConv.Run(args);

        var rx = torch.nn.functional.pad(Oracle.T(x, n, h, w, cin).permute(0, 3, 1, 2), [pl, pr, pt, pb]);
        var rw = Oracle.T(wgt, cout, ks, ks, cin).permute(0, 3, 1, 2);
        var want = torch.nn.functional.conv2d(rx, rw, bias is null ? null : Oracle.T(bias, cout), strides: [stride, stride])
            .permute(0, 2, 3, 1);
        Assert.Equal(new long[] { n, ho, wo, cout }, want.shape);
        if (res is not null) want += Oracle.T(res, n, ho, wo, cout);
        double tol = CpuGemmTests.Tolerance(xt, wt, yt);
        string name = $"{mix} [{n},{h},{w},{cin}] {ks}x{ks}/{stride} pad({pt},{pl},{pb},{pr}) → {cout}" +
            $"{(withBias ? " +bias" : "")}{(withResidual ? " +res" : "")}{(prepacked ? " packedW" : "")}";
        new CpuGemmTests(output).Check("cpu_conv2d", name, yt, ny.ToArray(), Oracle.Host(want), tol);
    }

    [Fact]
    public void Reference_matches_libtorch()
    {
        using var scope = torch.NewDisposeScope();
        var args = new CpuConvArgs { N = 1, H = 6, W = 5, Cin = 3, Cout = 4, KH = 3, KW = 3, Stride = 2, PadTop = 1, PadLeft = 0, PadBottom = 1, PadRight = 2 };
        var (ho, wo) = CpuConv.OutputSize(args);
        var x = oracle.Random(6 * 5 * 3, DType.F32);
        var wgt = oracle.Random(4 * 9 * 3, DType.F32);
        using var nx = new NativeBuf(x, DType.F32);
        using var nw = new NativeBuf(wgt, DType.F32);
        using var ny = new NativeBuf(ho * wo * 4, DType.F32);
        args.X = nx.Ptr; args.Weight = nw.Ptr; args.Y = ny.Ptr;
        CpuConv.Reference(args);
        var rx = torch.nn.functional.pad(Oracle.T(x, 1, 6, 5, 3).permute(0, 3, 1, 2), [0, 2, 1, 1]);
        var want = torch.nn.functional.conv2d(rx, Oracle.T(wgt, 4, 3, 3, 3).permute(0, 3, 1, 2), strides: [2, 2]).permute(0, 2, 3, 1);
        new CpuGemmTests(output).Check("cpu_conv2d_reference", "[1,6,5,3] 3x3/2 pad(1,0,1,2) → 4", DType.F32, ny.ToArray(), Oracle.Host(want), 1e-6);
    }

    [Fact]
    public void Invalid_arguments_are_refused()
    {
        float* buf = stackalloc float[64];
        var ok = new CpuConvArgs { N = 1, H = 2, W = 2, Cin = 1, Cout = 1, KH = 1, KW = 1, Stride = 1, X = buf, Weight = buf, Y = buf + 32 };
        var bad = ok; bad.Stride = 0;
        Assert.Throws<KernelArgumentException>(() => CpuConv.Run(bad));
        bad = ok; bad.KH = 3;
        Assert.Throws<KernelArgumentException>(() => CpuConv.Run(bad));
        bad = ok; bad.PadLeft = -1;
        Assert.Throws<KernelArgumentException>(() => CpuConv.Run(bad));
        bad = ok; bad.YType = DType.I32;
        Assert.Throws<KernelArgumentException>(() => CpuConv.Run(bad));
    }
}
