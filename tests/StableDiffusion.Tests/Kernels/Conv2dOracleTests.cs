using StableDiffusion.Kernels;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace StableDiffusion.Tests.Kernels;

/// <summary>conv2d_implicit_gemm (NHWC, OHWI) against torch.nn.functional.conv2d (NCHW, OIHW).</summary>
public class Conv2dOracleTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    [Theory]
    // profile, dtype, N, H, W, Cin, Cout, kernel, stride, pad, bias, residual
    [InlineData("test", "fp32", 1, 6, 7, 5, 6, 3, 1, 1, true, true)]
    [InlineData("cpu", "fp32", 1, 6, 7, 5, 6, 3, 1, 1, true, true)]
    [InlineData("test", "fp32", 2, 7, 5, 3, 4, 3, 2, 1, true, false)]
    [InlineData("cpu", "fp32", 2, 7, 5, 3, 4, 3, 2, 1, true, false)]
    [InlineData("test", "fp32", 1, 5, 5, 4, 3, 3, 1, 0, false, false)]
    [InlineData("cpu", "fp32", 1, 5, 5, 4, 3, 3, 1, 0, false, false)]
    [InlineData("test", "fp32", 2, 4, 5, 6, 7, 1, 1, 0, true, true)]
    [InlineData("cpu", "fp32", 2, 4, 5, 6, 7, 1, 1, 0, true, true)]
    [InlineData("test", "fp32", 1, 8, 8, 3, 5, 1, 2, 0, true, false)]
    [InlineData("cpu", "fp32", 1, 8, 8, 3, 5, 1, 2, 0, true, false)]
    [InlineData("test", "fp32", 1, 6, 6, 4, 4, 3, 2, 0, true, false)]
    [InlineData("cpu", "fp32", 1, 6, 6, 4, 4, 3, 2, 0, true, false)]
    [InlineData("test", "fp16", 1, 6, 7, 5, 6, 3, 1, 1, true, true)]
    [InlineData("cpu", "fp16", 1, 6, 7, 5, 6, 3, 1, 1, true, true)]
    [InlineData("test", "fp16", 2, 7, 5, 3, 4, 3, 2, 1, true, false)]
    [InlineData("cpu", "fp16", 2, 7, 5, 3, 4, 3, 2, 1, true, false)]
    [InlineData("test", "fp16", 2, 4, 5, 6, 7, 1, 1, 0, true, true)]
    [InlineData("cpu", "fp16", 2, 4, 5, 6, 7, 1, 1, 0, true, true)]
    [InlineData("cuda", "fp32", 1, 9, 10, 16, 20, 3, 1, 1, true, true)]
    [InlineData("cuda", "fp32", 2, 9, 9, 8, 12, 3, 2, 1, true, false)]
    [InlineData("cuda", "fp32", 1, 12, 12, 20, 24, 1, 1, 0, true, true)]
    [InlineData("cuda", "fp16", 1, 9, 10, 16, 20, 3, 1, 1, true, true)]
    [InlineData("cuda", "fp16", 2, 9, 9, 8, 12, 3, 2, 1, false, false)]
    public void Conv2d_matches_libtorch(string profile, string dtype, int n, int h, int w, int cin, int cout, int ks,
        int stride, int pad, bool withBias, bool withResidual)
    {
        var ops = Devices.Backend(profile);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        int ho = (h + 2 * pad - ks) / stride + 1, wo = (w + 2 * pad - ks) / stride + 1;
        var x = oracle.Random((long)n * h * w * cin, dt);
        var wt = oracle.Random((long)cout * ks * ks * cin, dt, 0.3f);
        var bias = withBias ? oracle.Random(cout, dt) : null;
        var res = withResidual ? oracle.Random((long)n * ho * wo * cout, dt) : null;
        using var tx = Oracle.Upload(ops, x, dt, n, h, w, cin);
        using var tw = Oracle.Upload(ops, wt, dt, cout, ks, ks, cin);
        using var tb = bias is null ? null : Oracle.Upload(ops, bias, dt, cout);
        using var tr = res is null ? null : Oracle.Upload(ops, res, dt, n, ho, wo, cout);
        using var y = ops.Conv2d(tx, tw, tb, stride, pad, tr);
        Assert.Equal(new[] { n, ho, wo, cout }, y.ShapeArray());

        var rx = Oracle.T(x, n, h, w, cin).permute(0, 3, 1, 2);
        var rw = Oracle.T(wt, cout, ks, ks, cin).permute(0, 3, 1, 2);
        var want = torch.nn.functional.conv2d(rx, rw, bias is null ? null : Oracle.T(bias, cout),
            strides: [stride, stride], padding: [pad, pad]).permute(0, 2, 3, 1);
        if (res is not null) want += Oracle.T(res, n, ho, wo, cout);
        oracle.Check("conv2d_implicit_gemm", $"{profile} [{n},{h},{w},{cin}] {ks}x{ks}/{stride} p{pad} → {cout}", y, want,
            Devices.Tolerance(dt));
    }

    [Theory]
    [InlineData("test", "fp32")]
    [InlineData("cpu", "fp32")]
    [InlineData("cuda", "fp16")]
    public void Conv2d_with_bottom_right_padding_matches_libtorch_pad_then_conv(string profile, string dtype)
    {
        // diffusers' VAE encoder downsampling: F.pad(x, (0, 1, 0, 1)) then a 3x3 stride-2 convolution.
        var ops = Devices.Backend(profile);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        int n = 1, h = 8, w = 7, cin = 4, cout = 5;
        var x = oracle.Random((long)n * h * w * cin, dt);
        var wt = oracle.Random((long)cout * 9 * cin, dt, 0.3f);
        var bias = oracle.Random(cout, dt);
        using var tx = Oracle.Upload(ops, x, dt, n, h, w, cin);
        using var tw = Oracle.Upload(ops, wt, dt, cout, 3, 3, cin);
        using var tb = Oracle.Upload(ops, bias, dt, cout);
        using var y = ops.Conv2d(tx, tw, tb, 2, 0, 0, 1, 1);
        var rx = torch.nn.functional.pad(Oracle.T(x, n, h, w, cin).permute(0, 3, 1, 2), [0, 1, 0, 1]);
        var want = torch.nn.functional.conv2d(rx, Oracle.T(wt, cout, 3, 3, cin).permute(0, 3, 1, 2), Oracle.T(bias, cout),
            strides: [2, 2]).permute(0, 2, 3, 1);
        Assert.Equal(want.shape.Select(v => (int)v).ToArray(), y.ShapeArray());
        oracle.Check("conv2d_implicit_gemm", $"{profile} [1,8,7,4] 3x3/2 pad (0,0,1,1) → 5", y, want, Devices.Tolerance(dt));
    }

    /// <summary>conv2d_implicit_gemm_mma on the ILGPU CPU accelerator with its PTX emulated (3x3 and 1x1, stride 1 and 2, bottom-right padding).</summary>
    [Theory]
    // n, h, w, cin, cout, k, stride, padTop/Left, padBottom/Right, bias, residual
    [InlineData(1, 9, 10, 16, 20, 3, 1, 1, 1, true, true)]
    [InlineData(2, 9, 9, 8, 12, 3, 2, 1, 1, false, false)]
    [InlineData(1, 8, 7, 24, 5, 3, 2, 0, 1, true, false)]
    [InlineData(2, 6, 7, 40, 130, 1, 1, 0, 0, true, true)]
    [InlineData(1, 10, 9, 32, 24, 3, 1, 1, 1, true, true)] // Cout a multiple of 8: the 16-byte epilogue
    public void Tensor_core_conv2d_matches_libtorch(int n, int h, int w, int cin, int cout, int ks, int stride, int padTL,
        int padBR, bool withBias, bool withResidual)
    {
        var ops = Devices.Ops("test");
        var dt = DType.F16;
        using var scope = torch.NewDisposeScope();
        int ho = (h + padTL + padBR - ks) / stride + 1, wo = (w + padTL + padBR - ks) / stride + 1;
        var x = oracle.Random((long)n * h * w * cin, dt);
        var wt = oracle.Random((long)cout * ks * ks * cin, dt, 0.3f);
        var bias = withBias ? oracle.Random(cout, dt) : null;
        var res = withResidual ? oracle.Random((long)n * ho * wo * cout, dt) : null;
        using var tx = Oracle.Upload(ops, x, dt, n, h, w, cin);
        using var tw = Oracle.Upload(ops, wt, dt, cout, ks, ks, cin);
        using var tb = bias is null ? null : Oracle.Upload(ops, bias, dt, cout);
        using var tr = res is null ? null : Oracle.Upload(ops, res, dt, n, ho, wo, cout);
        using var y = DeviceTensor.Empty(ops.Device, dt, n, ho, wo, cout);
        StableDiffusion.Kernels.Conv2d.Run(ops.Runtime, tx, tw, tb, y, stride, new Padding2d(padTL, padTL, padBR, padBR), tr, GemmVariant.TensorCore);
        Assert.Equal("conv2d_mma", ops.Runtime.LastFamily);

        var rx = torch.nn.functional.pad(Oracle.T(x, n, h, w, cin).permute(0, 3, 1, 2), [padTL, padBR, padTL, padBR]);
        var want = torch.nn.functional.conv2d(rx, Oracle.T(wt, cout, ks, ks, cin).permute(0, 3, 1, 2),
            bias is null ? null : Oracle.T(bias, cout), strides: [stride, stride]).permute(0, 2, 3, 1);
        if (res is not null) want += Oracle.T(res, n, ho, wo, cout);
        oracle.Check("conv2d_implicit_gemm_mma", $"emulated [{n},{h},{w},{cin}] {ks}x{ks}/{stride} p{padTL},{padBR} → {cout}", y,
            want, Devices.Tolerance(dt));
    }

    /// <summary>conv2d_implicit_gemm_mma in every configuration the planner can choose, forced, with split-K over the taps.</summary>
    [Theory]
    // configuration, split-K, n, h, w, cin, cout, k, stride
    [InlineData("128x128x32 4-stage", 1, 1, 9, 10, 16, 20, 3, 1)] // K 144: 5 k-tiles
    [InlineData("128x128x32 3-stage", 3, 1, 8, 9, 24, 24, 3, 1)]
    [InlineData("128x64x32 3-stage", 2, 2, 9, 9, 16, 12, 3, 2)]
    [InlineData("64x128x32 3-stage", 2, 1, 10, 7, 32, 40, 3, 1)]
    [InlineData("64x64x32 3-stage", 3, 1, 9, 9, 40, 66, 3, 1)]
    [InlineData("64x64x32 3-stage", 2, 2, 5, 7, 136, 20, 1, 1)] // 1x1: the plain-GEMM operand, split
    public void Tensor_core_conv2d_configuration_matches_libtorch(string config, int splitK, int n, int h, int w, int cin,
        int cout, int ks, int stride)
    {
        var rt = new KernelRuntime(Devices.Device, KernelProfile.Test) { TensorCoreOverride = (TcPlanner.Find(config), splitK) };
        var ops = Devices.Ops("test");
        var dt = DType.F16;
        int pad = ks / 2;
        using var scope = torch.NewDisposeScope();
        int ho = (h + 2 * pad - ks) / stride + 1, wo = (w + 2 * pad - ks) / stride + 1;
        var x = oracle.Random((long)n * h * w * cin, dt);
        var wt = oracle.Random((long)cout * ks * ks * cin, dt, 0.3f);
        var bias = oracle.Random(cout, dt);
        var res = oracle.Random((long)n * ho * wo * cout, dt);
        using var tx = Oracle.Upload(ops, x, dt, n, h, w, cin);
        using var tw = Oracle.Upload(ops, wt, dt, cout, ks, ks, cin);
        using var tb = Oracle.Upload(ops, bias, dt, cout);
        using var tr = Oracle.Upload(ops, res, dt, n, ho, wo, cout);
        using var y = DeviceTensor.Empty(ops.Device, dt, n, ho, wo, cout);
        StableDiffusion.Kernels.Conv2d.Run(rt, tx, tw, tb, y, stride, new Padding2d(pad, pad, pad, pad), tr, GemmVariant.TensorCore);
        Assert.Equal("conv2d_mma", rt.LastFamily);
        var plan = rt.PlanTensorCore((long)n * ho * wo, cout, (long)ks * ks * cin, 1);
        Assert.Equal(splitK, plan.SplitK);

        var want = torch.nn.functional.conv2d(Oracle.T(x, n, h, w, cin).permute(0, 3, 1, 2), Oracle.T(wt, cout, ks, ks, cin).permute(0, 3, 1, 2),
            Oracle.T(bias, cout), strides: [stride, stride], padding: [pad, pad]).permute(0, 2, 3, 1) + Oracle.T(res, n, ho, wo, cout);
        oracle.Check("conv2d_implicit_gemm_mma", $"emulated {config} split-K {splitK} [{n},{h},{w},{cin}] {ks}x{ks}/{stride} → {cout}", y,
            want, Devices.Tolerance(dt));
    }
}
