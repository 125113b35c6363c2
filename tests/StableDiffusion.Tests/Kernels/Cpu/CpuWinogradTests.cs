using StableDiffusion.Kernels;
using StableDiffusion.Kernels.Cpu;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;

namespace StableDiffusion.Tests.Kernels.Cpu;

/// <summary>
/// CpuWinograd (3×3 convolution by F(2×2, 3×3)) against torch.nn.functional.conv2d in float64 on random inputs and
/// weights, through CpuConv's dispatch and directly with small column blocks and tile chunks.
/// </summary>
public unsafe class CpuWinogradTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    [Theory]
    // weight dtype, N, H, W, Cin, Cout, bias, residual, prepacked weight; output tile (0: CpuConv's choice), weight
    // block bytes and tile chunk bytes (0: defaults)
    [InlineData("f32", 2, 32, 32, 16, 24, true, true, true, 0, 0, 0)]      // F(4×4): 2048 pixels
    [InlineData("f16", 2, 32, 32, 16, 24, true, true, true, 0, 0, 0)]      // fp16 panels, as checkpoints are loaded
    [InlineData("f16", 2, 16, 16, 640, 64, true, true, true, 0, 0, 0)]     // F(2×2); K = 640: two K slices in the GEMM
    [InlineData("f32", 1, 45, 47, 8, 16, true, false, false, 2, 0, 0)]     // odd edges: last tiles half outside
    [InlineData("f32", 1, 45, 47, 8, 16, true, false, false, 4, 0, 0)]     // 45 = 4·11 + 1, 47 = 4·11 + 3
    [InlineData("f16", 1, 33, 64, 24, 40, false, true, true, 2, 0, 0)]     // Cout past a whole panel
    [InlineData("f16", 1, 33, 64, 24, 40, false, true, true, 4, 0, 0)]
    [InlineData("f32", 2, 32, 32, 64, 96, true, true, true, 2, 8192, 1)]   // 3 column blocks × 6 tile chunks
    [InlineData("f32", 2, 32, 32, 64, 96, true, true, true, 4, 16384, 1)]  // 3 column blocks × 2 tile chunks
    [InlineData("f16", 1, 47, 45, 32, 72, true, true, true, 2, 4096, 1)]   // blocks and chunks with odd edges
    [InlineData("f16", 1, 47, 45, 32, 72, true, true, true, 4, 8192, 1)]
    [InlineData("f16", 2, 32, 32, 320, 320, true, true, true, 4, 0, 0)]    // SD's channels: K = 320
    [InlineData("f16", 2, 16, 16, 1280, 64, true, false, true, 4, 0, 0)]   // K = 1280
    public void Winograd_matches_libtorch(string wmix, int n, int h, int w, int cin, int cout, bool withBias,
        bool withResidual, bool prepacked, int tile, long weightBlock, long chunk)
    {
        var wt = wmix == "f16" ? DType.F16 : DType.F32;
        using var scope = torch.NewDisposeScope();
        var args = new CpuConvArgs
        {
            N = n, H = h, W = w, Cin = cin, Cout = cout, KH = 3, KW = 3, Stride = 1, PadTop = 1, PadLeft = 1, PadBottom = 1, PadRight = 1,
            XType = DType.F32, WeightType = wt, BiasType = wt, ResidualType = DType.F32, YType = DType.F32,
        };
        var x = oracle.Random((long)n * h * w * cin, DType.F32);
        var wgt = oracle.Random((long)cout * 9 * cin, wt, 0.3f);
        var bias = withBias ? oracle.Random(cout, wt) : null;
        var res = withResidual ? oracle.Random((long)n * h * w * cout, DType.F32) : null;
        using var nx = new NativeBuf(x, DType.F32);
        using var nw = new NativeBuf(wgt, wt);
        using var nbias = bias is null ? null : new NativeBuf(bias, wt);
        using var nres = res is null ? null : new NativeBuf(res, DType.F32);
        using var ny = new NativeBuf((long)n * h * w * cout, DType.F32);
        args.X = nx.Ptr; args.Weight = nw.Ptr; args.Y = ny.Ptr;
        args.Bias = nbias is null ? null : nbias.Ptr;
        args.Residual = nres is null ? null : nres.Ptr;
        Assert.True(CpuWinograd.Eligible(args));
        if (tile > 0)
        {
            using var packed = CpuConv.PackWeight(nw.Ptr, wt, cout, 3, 3, cin);
            CpuWinograd.Run(args, packed, tile, weightBlock, chunk);
        }
        else if (prepacked)
        {
            using var packed = CpuConv.PackWeight(nw.Ptr, wt, cout, 3, 3, cin);
            CpuConv.Run(args, packed);
        }
        else CpuConv.Run(args);

        var rx = Oracle.T(x, n, h, w, cin).permute(0, 3, 1, 2);
        var rw = Oracle.T(wgt, cout, 3, 3, cin).permute(0, 3, 1, 2);
        var want = torch.nn.functional.conv2d(rx, rw, bias is null ? null : Oracle.T(bias, cout), padding: [1, 1]).permute(0, 2, 3, 1);
        if (res is not null) want += Oracle.T(res, n, h, w, cout);
        int used = tile > 0 ? tile : CpuWinograd.TileFor(args);
        string name = $"w{wmix} [{n},{h},{w},{cin}] → {cout}{(withBias ? " +bias" : "")}{(withResidual ? " +res" : "")}" +
            $"{(prepacked ? " packedW" : "")} F({used}x{used},3x3)" +
            $"{(weightBlock > 0 ? $" blocks {weightBlock}B chunks {chunk}B" : "")}";
        new CpuGemmTests(output).Check("cpu_winograd", name, DType.F32, ny.ToArray(), Oracle.Host(want), 1e-5);
    }

    [Theory]
    // N, H, W, Cin, Cout, KH, stride, pad, x dtype: only 3×3 / 1 / pad 1 in fp32, channels in 8s, 512 pixels or more
    [InlineData(2, 32, 32, 320, 320, 3, 1, 1, "f32", true)]
    [InlineData(1, 64, 64, 320, 320, 3, 1, 1, "f32", true)]
    [InlineData(2, 16, 16, 1280, 1280, 3, 1, 1, "f32", true)]
    [InlineData(2, 8, 8, 1280, 1280, 3, 1, 1, "f32", false)]   // 128 pixels: the weight's transform costs what it saves
    [InlineData(2, 64, 64, 320, 320, 3, 2, 1, "f32", false)]   // downsampler
    [InlineData(2, 64, 64, 4, 320, 3, 1, 1, "f32", false)]     // conv_in
    [InlineData(2, 64, 64, 320, 4, 3, 1, 1, "f32", false)]     // conv_out
    [InlineData(2, 64, 64, 320, 320, 1, 1, 0, "f32", false)]   // 1×1
    [InlineData(2, 64, 64, 320, 320, 3, 1, 1, "f16", false)]   // fp16 activations take the implicit GEMM
    public void Eligible_only_where_it_applies(int n, int h, int w, int cin, int cout, int k, int stride, int pad, string xt, bool want)
    {
        var t = xt == "f16" ? DType.F16 : DType.F32;
        var args = new CpuConvArgs
        {
            N = n, H = h, W = w, Cin = cin, Cout = cout, KH = k, KW = k, Stride = stride,
            PadTop = pad, PadLeft = pad, PadBottom = pad, PadRight = pad, XType = t, YType = t, WeightType = DType.F16,
        };
        Assert.Equal(want, CpuWinograd.Eligible(args));
        Assert.Equal(want ? (n * h * w >= 2048 ? 4 : 2) : 0, CpuWinograd.TileFor(args));
    }
}
