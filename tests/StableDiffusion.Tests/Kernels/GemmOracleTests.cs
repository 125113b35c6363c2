using StableDiffusion.Kernels;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace StableDiffusion.Tests.Kernels;

/// <summary>gemm_tiled against torch.matmul: odd sizes, both transposes, batch, broadcast, alpha, bias, residual.</summary>
public class GemmOracleTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    [Theory]
    // profile, dtype, batch, M, N, K, transA, transB, batchB (B has its own batch), bias, residual, alpha
    [InlineData("test", "fp32", 1, 37, 29, 23, false, true, false, true, false, 1f)]
    [InlineData("cpu", "fp32", 1, 37, 29, 23, false, true, false, true, false, 1f)]
    [InlineData("test", "fp32", 1, 77, 40, 32, false, false, false, false, true, 1f)]
    [InlineData("cpu", "fp32", 1, 77, 40, 32, false, false, false, false, true, 1f)]
    [InlineData("test", "fp32", 3, 17, 21, 9, true, false, false, true, true, 0.5f)]
    [InlineData("cpu", "fp32", 3, 17, 21, 9, true, false, false, true, true, 0.5f)]
    [InlineData("test", "fp32", 2, 16, 16, 16, true, true, true, false, false, 2f)]
    [InlineData("cpu", "fp32", 2, 16, 16, 16, true, true, true, false, false, 2f)]
    [InlineData("test", "fp32", 1, 1, 1, 1, false, false, false, true, true, 1f)]
    [InlineData("cpu", "fp32", 1, 1, 1, 1, false, false, false, true, true, 1f)]
    [InlineData("test", "fp16", 1, 37, 29, 23, false, true, false, true, true, 1f)]
    [InlineData("cpu", "fp16", 1, 37, 29, 23, false, true, false, true, true, 1f)]
    [InlineData("test", "fp16", 2, 19, 33, 41, true, false, true, false, false, 0.125f)]
    [InlineData("cpu", "fp16", 2, 19, 33, 41, true, false, true, false, false, 0.125f)]
    [InlineData("cuda", "fp32", 1, 130, 70, 37, false, true, false, true, true, 1f)]
    [InlineData("cuda", "fp32", 2, 77, 129, 20, false, false, true, true, false, 1f)]
    [InlineData("cuda", "fp32", 1, 65, 64, 33, true, true, false, false, true, 0.5f)]
    [InlineData("cuda", "fp16", 1, 130, 70, 37, false, true, false, true, true, 1f)]
    [InlineData("cuda", "fp16", 2, 64, 65, 17, true, false, false, false, false, 1f)]
    public void Gemm_matches_libtorch(string profile, string dtype, int batch, int m, int n, int k, bool transA, bool transB,
        bool batchB, bool withBias, bool withResidual, float alpha)
    {
        var ops = Devices.Backend(profile);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var a = oracle.Random((long)batch * m * k, dt);
        int bb = batchB ? batch : 1;
        var b = oracle.Random((long)bb * k * n, dt);
        var bias = withBias ? oracle.Random(n, dt) : null;
        var res = withResidual ? oracle.Random((long)batch * m * n, dt) : null;

        int[] aShape = transA ? [k, m] : [m, k];
        int[] bShape = transB ? [n, k] : [k, n];
        using var ta = Oracle.Upload(ops, a, dt, batch > 1 ? [batch, .. aShape] : aShape);
        using var tb = Oracle.Upload(ops, b, dt, batchB ? [bb, .. bShape] : bShape);
        using var tbias = bias is null ? null : Oracle.Upload(ops, bias, dt, n);
        using var tres = res is null ? null : Oracle.Upload(ops, res, dt, batch > 1 ? [batch, m, n] : [m, n]);
        using var y = ops.MatMul(ta, tb, transA, transB, alpha, tbias, tres);

        var ra = Oracle.T(a, batch, aShape[0], aShape[1]);
        var rb = Oracle.T(b, bb, bShape[0], bShape[1]);
        if (transA) ra = ra.transpose(1, 2);
        if (transB) rb = rb.transpose(1, 2);
        var want = torch.matmul(ra, rb) * alpha;
        if (bias is not null) want += Oracle.T(bias, n);
        if (res is not null) want += Oracle.T(res, batch, m, n);
        oracle.Check("gemm_tiled", $"{profile} b{batch} {m}x{n}x{k}{(transA ? " Aᵀ" : "")}{(transB ? " Bᵀ" : "")}", y,
            want.reshape(y.ShapeArray().Select(x => (long)x).ToArray()), Devices.Tolerance(dt));
    }

    [Theory]
    [InlineData("test", "fp32")]
    [InlineData("cpu", "fp32")]
    [InlineData("cuda", "fp16")]
    public void Linear_matches_libtorch(string profile, string dtype)
    {
        var ops = Devices.Backend(profile);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random(2 * 9 * 24, dt);
        var w = oracle.Random(40 * 24, dt);
        var bias = oracle.Random(40, dt);
        var res = oracle.Random(2 * 9 * 40, dt);
        using var tx = Oracle.Upload(ops, x, dt, 2, 9, 24);
        using var tw = Oracle.Upload(ops, w, dt, 40, 24);
        using var tbias = Oracle.Upload(ops, bias, dt, 40);
        using var tres = Oracle.Upload(ops, res, dt, 2, 9, 40);
        using var y = ops.Linear(tx, tw, tbias, tres);
        Assert.Equal(new[] { 2, 9, 40 }, y.ShapeArray());
        var want = torch.nn.functional.linear(Oracle.T(x, 2, 9, 24), Oracle.T(w, 40, 24), Oracle.T(bias, 40)) + Oracle.T(res, 2, 9, 40);
        oracle.Check("gemm_tiled", $"{profile} linear [2,9,24]x[40,24]ᵀ", y, want, Devices.Tolerance(dt));
    }

    [Fact]
    public void Every_tile_variant_matches_libtorch()
    {
        var ops = Devices.Ops("cuda");
        using var scope = torch.NewDisposeScope();
        var a = oracle.Random(70 * 33, DType.F32);
        var b = oracle.Random(33 * 45, DType.F32);
        using var ta = Oracle.Upload(ops, a, DType.F32, 70, 33);
        using var tb = Oracle.Upload(ops, b, DType.F32, 33, 45);
        var want = torch.matmul(Oracle.T(a, 70, 33), Oracle.T(b, 33, 45));
        foreach (var v in new[] { GemmVariant.Tile128, GemmVariant.Tile64, GemmVariant.TileTest })
        {
            using var y = DeviceTensor.Empty(ops.Device, DType.F32, 70, 45);
            Gemm.Run(ops.Runtime, new GemmSpec(70, 45, 33), ta, tb, y, variant: v);
            oracle.Check("gemm_tiled", $"variant {v} 70x45x33", y, want, 1e-5);
        }
    }

    /// <summary>
    /// gemm_mma (mma.sync, ldmatrix, cp.async) on the ILGPU CPU accelerator with its PTX emulated: ragged M and N, K
    /// from one partial k-tile to several laps of the 3-stage pipeline, batch, bias and residual, alpha.
    /// </summary>
    [Theory]
    // batch, M, N, K, bias, residual, alpha
    [InlineData(1, 130, 70, 40, true, true, 1f)]
    [InlineData(1, 16, 8, 8, false, false, 1f)]
    [InlineData(2, 33, 129, 104, false, true, 0.5f)]
    [InlineData(1, 128, 128, 32, true, false, 1f)]
    [InlineData(2, 72, 136, 24, true, true, 0.5f)] // rows of 8-column runs: the 16-byte epilogue
    public void Tensor_core_gemm_matches_libtorch(int batch, int m, int n, int k, bool withBias, bool withResidual, float alpha)
    {
        var ops = Devices.Ops("test");
        using var scope = torch.NewDisposeScope();
        var a = oracle.Random((long)batch * m * k, DType.F16);
        var b = oracle.Random((long)batch * n * k, DType.F16);
        var bias = withBias ? oracle.Random(n, DType.F16) : null;
        var res = withResidual ? oracle.Random((long)batch * m * n, DType.F16) : null;
        using var ta = Oracle.Upload(ops, a, DType.F16, batch, m, k);
        using var tb = Oracle.Upload(ops, b, DType.F16, batch, n, k);
        using var tbias = bias is null ? null : Oracle.Upload(ops, bias, DType.F16, n);
        using var tres = res is null ? null : Oracle.Upload(ops, res, DType.F16, batch, m, n);
        using var y = DeviceTensor.Empty(ops.Device, DType.F16, batch, m, n);
        Gemm.Run(ops.Runtime, new GemmSpec(m, n, k) { Batch = batch, TransB = true, Alpha = alpha }, ta, tb, y, tbias, tres,
            GemmVariant.TensorCore);
        Assert.Equal("gemm_mma", ops.Runtime.LastFamily);
        var want = torch.matmul(Oracle.T(a, batch, m, k), Oracle.T(b, batch, n, k).transpose(1, 2)) * alpha;
        if (bias is not null) want += Oracle.T(bias, n);
        if (res is not null) want += Oracle.T(res, batch, m, n);
        oracle.Check("gemm_mma", $"emulated b{batch} {m}x{n}x{k}", y, want, Devices.Tolerance(DType.F16));
    }

    /// <summary>
    /// Every tensor-core configuration the planner can choose, forced, with split-K (the fp32 partials reduced by
    /// tc_split_reduce in split order): ragged M/N/K, uneven last split, batch, bias, residual, alpha.
    /// </summary>
    [Theory]
    // configuration, split-K, batch, M, N, K, bias, residual, alpha
    [InlineData("128x128x32 4-stage", 1, 1, 130, 24, 168, true, true, 1f)] // 6 k-tiles: the 4-stage ring wraps
    [InlineData("128x128x32 3-stage", 2, 1, 33, 129, 104, true, false, 1f)]
    [InlineData("128x64x32 3-stage", 2, 1, 140, 72, 232, true, true, 0.5f)]
    [InlineData("64x128x32 3-stage", 3, 2, 70, 136, 264, false, true, 1f)]
    [InlineData("64x64x32 3-stage", 1, 1, 72, 66, 40, true, false, 0.5f)]
    [InlineData("64x64x32 3-stage", 4, 1, 65, 63, 296, true, true, 1f)] // splits of 3, 3, 3 and 1 k-tiles
    public void Tensor_core_configuration_matches_libtorch(string config, int splitK, int batch, int m, int n, int k,
        bool withBias, bool withResidual, float alpha)
    {
        var rt = new KernelRuntime(Devices.Device, KernelProfile.Test) { TensorCoreOverride = (TcPlanner.Find(config), splitK) };
        using var scope = torch.NewDisposeScope();
        var a = oracle.Random((long)batch * m * k, DType.F16);
        var b = oracle.Random((long)n * k, DType.F16);
        var bias = withBias ? oracle.Random(n, DType.F16) : null;
        var res = withResidual ? oracle.Random((long)batch * m * n, DType.F16) : null;
        var ops = Devices.Ops("test");
        using var ta = Oracle.Upload(ops, a, DType.F16, batch, m, k);
        using var tb = Oracle.Upload(ops, b, DType.F16, n, k);
        using var tbias = bias is null ? null : Oracle.Upload(ops, bias, DType.F16, n);
        using var tres = res is null ? null : Oracle.Upload(ops, res, DType.F16, batch, m, n);
        using var y = DeviceTensor.Empty(ops.Device, DType.F16, batch, m, n);
        var plan = rt.PlanTensorCore(m, n, k, batch);
        Assert.Equal(config, plan.Config.Name);
        Gemm.Run(rt, new GemmSpec(m, n, k) { Batch = batch, TransB = true, StrideB = 0, Alpha = alpha }, ta, tb, y, tbias, tres,
            GemmVariant.TensorCore);
        Assert.Equal("gemm_mma", rt.LastFamily);
        var want = torch.matmul(Oracle.T(a, batch, m, k), Oracle.T(b, n, k).transpose(0, 1)) * alpha;
        if (bias is not null) want += Oracle.T(bias, n);
        if (res is not null) want += Oracle.T(res, batch, m, n);
        oracle.Check("gemm_mma", $"emulated {config} split-K {plan.SplitK} b{batch} {m}x{n}x{k}", y, want, Devices.Tolerance(DType.F16));
    }

    [Fact]
    public void Tensor_core_variant_is_refused_where_it_cannot_run_and_never_chosen_on_the_simulator()
    {
        var ops = Devices.Ops("test");
        using var a = DeviceTensor.Empty(ops.Device, DType.F16, 16, 32);
        using var b = DeviceTensor.Empty(ops.Device, DType.F16, 8, 32);
        using var c = DeviceTensor.Empty(ops.Device, DType.F16, 16, 8);
        using var b12 = DeviceTensor.Empty(ops.Device, DType.F16, 8, 12);
        using var a12 = DeviceTensor.Empty(ops.Device, DType.F16, 16, 12);
        var e = Assert.Throws<KernelArgumentException>(() =>
            Gemm.Run(ops.Runtime, new GemmSpec(16, 8, 12) { TransB = true }, a12, b12, c, variant: GemmVariant.TensorCore));
        Assert.Contains("multiples of 8", e.Message);
        // Auto on the simulator takes the portable kernel: emulated PTX is for tests only.
        Gemm.Run(ops.Runtime, new GemmSpec(16, 8, 32) { TransB = true }, a, b, c);
        Assert.Equal("gemm", ops.Runtime.LastFamily);
    }
}
