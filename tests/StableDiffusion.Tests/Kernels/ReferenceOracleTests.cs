using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;
using Ref = StableDiffusion.Kernels.Reference;

namespace StableDiffusion.Tests.Kernels;

/// <summary>The host reference behind `sd selfcheck` is itself checked against libtorch, so the self-check's oracle is sound.</summary>
public class ReferenceOracleTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    private static void Close(float[] got, TorchSharp.torch.Tensor want, double tol = 1e-6)
    {
        double err = Ref.RelativeError(got, Oracle.Host(want));
        Assert.True(err <= tol, $"reference differs from libtorch by {err:0.00e+00}");
    }

    [Fact]
    public void Reference_ops_match_libtorch()
    {
        using var scope = torch.NewDisposeScope();
        var a = oracle.Random(5 * 7, DType.F32);
        var b = oracle.Random(7 * 3, DType.F32);
        Close(Ref.MatMul(a, b, 1, 5, 3, 7, false, false, false, false), torch.matmul(Oracle.T(a, 5, 7), Oracle.T(b, 7, 3)));

        var x = oracle.Random(2 * 5 * 6 * 3, DType.F32);
        var w = oracle.Random(4 * 3 * 3 * 3, DType.F32);
        Close(Ref.Conv2d(x, 2, 5, 6, 3, w, 4, 3, 3, null, 2, 1),
            torch.nn.functional.conv2d(Oracle.T(x, 2, 5, 6, 3).permute(0, 3, 1, 2), Oracle.T(w, 4, 3, 3, 3).permute(0, 3, 1, 2),
                strides: [2, 2], padding: [1, 1]).permute(0, 2, 3, 1));

        var g = oracle.Random(2 * 9 * 8, DType.F32);
        Close(Ref.GroupNorm(g, 2, 9, 8, 4, null, null, 1e-5, true),
            torch.nn.functional.silu(torch.nn.functional.group_norm(Oracle.T(g, 2, 9, 8).permute(0, 2, 1), 4, eps: 1e-5).permute(0, 2, 1)));

        var q = oracle.Random(1 * 4 * 16, DType.F32);
        var k = oracle.Random(1 * 6 * 16, DType.F32);
        Close(Ref.Attention(q, k, k, 1, 4, 6, 2, 8, 1 / Math.Sqrt(8), false),
            torch.nn.functional.scaled_dot_product_attention(Oracle.T(q, 1, 4, 2, 8).transpose(1, 2),
                Oracle.T(k, 1, 6, 2, 8).transpose(1, 2), Oracle.T(k, 1, 6, 2, 8).transpose(1, 2)).transpose(1, 2).reshape(1, 4, 16));

        var e = oracle.Random(100, DType.F32, 5f);
        Close(Ref.Activate(Activation.Gelu, e), torch.nn.functional.gelu(Oracle.T(e, 100)), 1e-9);
    }
}
