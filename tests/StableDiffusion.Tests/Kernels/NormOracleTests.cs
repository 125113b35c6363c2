using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace StableDiffusion.Tests.Kernels;

/// <summary>group_norm (stats, finalize, apply) and layer_norm against libtorch's group_norm / layer_norm.</summary>
public class NormOracleTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    [Theory]
    // profile, dtype, N, spatial, C, groups, eps, affine, silu, offset (a large mean tests the shifted sums)
    [InlineData("test", "fp32", 2, 5, 8, 4, 1e-5f, true, false, 0f)]
    [InlineData("cpu", "fp32", 2, 5, 8, 4, 1e-5f, true, false, 0f)]
    [InlineData("test", "fp32", 1, 7, 6, 2, 1e-6f, true, true, 3f)]
    [InlineData("cpu", "fp32", 1, 7, 6, 2, 1e-6f, true, true, 3f)]
    [InlineData("test", "fp32", 2, 1, 12, 3, 1e-5f, false, false, 0f)]
    [InlineData("cpu", "fp32", 2, 1, 12, 3, 1e-5f, false, false, 0f)]
    [InlineData("test", "fp32", 9, 2, 64, 32, 1e-5f, true, false, 0f)]
    [InlineData("cpu", "fp32", 9, 2, 64, 32, 1e-5f, true, false, 0f)]
    [InlineData("test", "fp16", 2, 5, 8, 4, 1e-5f, true, true, 0.5f)]
    [InlineData("cpu", "fp16", 2, 5, 8, 4, 1e-5f, true, true, 0.5f)]
    [InlineData("cuda", "fp32", 2, 64, 64, 32, 1e-5f, true, true, 0f)]
    [InlineData("cuda", "fp32", 1, 300, 64, 32, 1e-6f, true, false, 10f)]
    [InlineData("cuda", "fp16", 2, 64, 64, 32, 1e-6f, true, true, 1f)]
    public void GroupNorm_matches_libtorch(string profile, string dtype, int n, int s, int c, int g, float eps, bool affine,
        bool silu, float offset)
    {
        var ops = Devices.Backend(profile);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random((long)n * s * c, dt, 2f, offset);
        var gamma = affine ? oracle.Random(c, dt, 1f, 1f) : null;
        var beta = affine ? oracle.Random(c, dt) : null;
        using var tx = Oracle.Upload(ops, x, dt, n, s, c);
        using var tg = gamma is null ? null : Oracle.Upload(ops, gamma, dt, c);
        using var tb = beta is null ? null : Oracle.Upload(ops, beta, dt, c);
        using var y = ops.GroupNorm(tx, g, tg, tb, eps, silu);
        var rx = Oracle.T(x, n, s, c).permute(0, 2, 1);
        var want = torch.nn.functional.group_norm(rx, g, gamma is null ? null : Oracle.T(gamma, c),
            beta is null ? null : Oracle.T(beta, c), eps).permute(0, 2, 1);
        if (silu) want = torch.nn.functional.silu(want);
        oracle.Check("group_norm", $"{profile} [{n},{s},{c}] g{g} eps {eps:g}{(silu ? " +silu" : "")}{(affine ? "" : " no affine")}",
            y, want, Devices.Tolerance(dt));
    }

    [Fact]
    public void GroupNorm_of_a_4d_nhwc_tensor_matches_libtorch()
    {
        var ops = Devices.Ops("test");
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random(2 * 3 * 5 * 8, DType.F32);
        var gamma = oracle.Random(8, DType.F32);
        var beta = oracle.Random(8, DType.F32);
        using var tx = Oracle.Upload(ops, x, DType.F32, 2, 3, 5, 8);
        using var tg = Oracle.Upload(ops, gamma, DType.F32, 8);
        using var tb = Oracle.Upload(ops, beta, DType.F32, 8);
        using var y = ops.GroupNorm(tx, 4, tg, tb, 1e-6f);
        var want = torch.nn.functional.group_norm(Oracle.T(x, 2, 3, 5, 8).permute(0, 3, 1, 2), 4, Oracle.T(gamma, 8),
            Oracle.T(beta, 8), 1e-6).permute(0, 2, 3, 1);
        oracle.Check("group_norm", "test [2,3,5,8] NHWC g4", y, want, 1e-5);
    }

    [Theory]
    [InlineData("test", "fp32", 7, 12, true)]
    [InlineData("cpu", "fp32", 7, 12, true)]
    [InlineData("test", "fp32", 3, 33, false)]
    [InlineData("cpu", "fp32", 3, 33, false)]
    [InlineData("test", "fp16", 7, 12, true)]
    [InlineData("cpu", "fp16", 7, 12, true)]
    [InlineData("cuda", "fp32", 77, 320, true)]
    [InlineData("cuda", "fp32", 9, 1280, true)]
    [InlineData("cuda", "fp16", 77, 320, true)]
    public void LayerNorm_matches_libtorch(string profile, string dtype, int rows, int c, bool affine)
    {
        var ops = Devices.Backend(profile);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random((long)rows * c, dt, 3f, 1f);
        var gamma = affine ? oracle.Random(c, dt, 1f, 1f) : null;
        var beta = affine ? oracle.Random(c, dt) : null;
        using var tx = Oracle.Upload(ops, x, dt, rows, c);
        using var tg = gamma is null ? null : Oracle.Upload(ops, gamma, dt, c);
        using var tb = beta is null ? null : Oracle.Upload(ops, beta, dt, c);
        using var y = ops.LayerNorm(tx, tg, tb, 1e-5f);
        var want = torch.nn.functional.layer_norm(Oracle.T(x, rows, c), [c], gamma is null ? null : Oracle.T(gamma, c),
            beta is null ? null : Oracle.T(beta, c), 1e-5);
        oracle.Check("layer_norm", $"{profile} [{rows},{c}]{(affine ? "" : " no affine")}", y, want, Devices.Tolerance(dt));
    }

    [Theory]
    [InlineData("test", "fp32", 5, 13, 1f)]
    [InlineData("cpu", "fp32", 5, 13, 1f)]
    [InlineData("test", "fp16", 5, 13, 1f)]
    [InlineData("cpu", "fp16", 5, 13, 1f)]
    [InlineData("cuda", "fp32", 9, 77, 0.125f)]
    [InlineData("cuda", "fp32", 3, 4096, 1f)]
    [InlineData("cuda", "fp16", 9, 77, 1f)]
    public void Softmax_matches_libtorch(string profile, string dtype, int rows, int c, float scale)
    {
        var ops = Devices.Backend(profile);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random((long)rows * c, dt, 8f);
        using var tx = Oracle.Upload(ops, x, dt, rows, c);
        using var y = ops.Softmax(tx, scale);
        var want = torch.softmax(Oracle.T(x, rows, c) * scale, -1);
        oracle.Check("softmax", $"{profile} [{rows},{c}] scale {scale:g}", y, want, Devices.Tolerance(dt));
    }
}
