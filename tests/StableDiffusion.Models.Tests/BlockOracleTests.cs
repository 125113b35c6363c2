using StableDiffusion.Models;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.Models.Tests;

/// <summary>
/// The shared UNet/VAE blocks against the same computation written with libtorch ops, on random weights in the
/// diffusers layout, loaded through a real safetensors file.
/// </summary>
public class BlockOracleTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    private static TorchTensor Nchw(TorchTensor nhwc) => nhwc.permute(0, 3, 1, 2);
    private static TorchTensor Nhwc(TorchTensor nchw) => nchw.permute(0, 2, 3, 1);

    [Theory]
    [InlineData("fp32", 8, 8, 12, 4, 1e-5f, 1f)]
    [InlineData("fp32", 8, 16, 12, 4, 1e-5f, 1f)]
    [InlineData("fp32", 16, 8, 0, 8, 1e-6f, 2f)]
    [InlineData("fp16", 8, 16, 12, 4, 1e-5f, 1f)]
    [InlineData("fp32", 8, 8, 12, 4, 1e-5f, 1f, "cpu")]
    [InlineData("fp32", 8, 16, 12, 4, 1e-5f, 1f, "cpu")]
    [InlineData("fp32", 16, 8, 0, 8, 1e-6f, 2f, "cpu")]
    [InlineData("fp16", 8, 16, 12, 4, 1e-5f, 1f, "cpu")]
    public void ResnetBlock2D_matches_libtorch(string dtype, int cin, int cout, int temb, int groups, float eps, float scale, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        using var block = new ResnetBlock2D(cin, cout, temb, groups, eps, scale);
        using var w = TestWeights.LoadInto(block, ops, dt);
        int n = 2, h = 5, wd = 6;
        var x = oracle.Random((long)n * h * wd * cin, dt, 2f);
        var t = temb > 0 ? oracle.Random((long)n * temb, dt) : null;
        using var tx = Oracle.Upload(ops, x, dt, n, h, wd, cin);
        using var tt = t is null ? null : Oracle.Upload(ops, t, dt, n, temb);
        using var tts = tt is null ? null : ops.Activate(tt, Activation.Silu);
        using var y = block.Forward(ops, tx, tts);

        var rx = Nchw(Oracle.T(x, n, h, wd, cin));
        var hh = F.silu(F.group_norm(rx, groups, w.Torch("norm1.weight"), w.Torch("norm1.bias"), eps));
        hh = F.conv2d(hh, w.Torch("conv1.weight"), w.Torch("conv1.bias"), padding: [1, 1]);
        if (t is not null)
            hh += F.linear(F.silu(Oracle.T(t, n, temb)), w.Torch("time_emb_proj.weight"), w.Torch("time_emb_proj.bias"))[.., .., TensorIndex.None, TensorIndex.None];
        hh = F.silu(F.group_norm(hh, groups, w.Torch("norm2.weight"), w.Torch("norm2.bias"), eps));
        hh = F.conv2d(hh, w.Torch("conv2.weight"), w.Torch("conv2.bias"), padding: [1, 1]);
        var sc = cin != cout ? F.conv2d(rx, w.Torch("conv_shortcut.weight"), w.Torch("conv_shortcut.bias")) : rx;
        var want = Nhwc((sc + hh) / scale);
        oracle.Check("ResnetBlock2D", $"{cin}→{cout} temb {temb} g{groups} scale {scale}", y, want, Devices.Tolerance(dt));
    }

    [Theory]
    [InlineData("fp32", 8, false)]
    [InlineData("fp32", 8, true)]
    [InlineData("fp16", 8, true)]
    [InlineData("fp32", 8, false, "cpu")]
    [InlineData("fp32", 8, true, "cpu")]
    [InlineData("fp16", 8, true, "cpu")]
    public void Downsample_and_upsample_match_libtorch(string dtype, int c, bool vaeStyle, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        using var down = new Downsample2D(c, vaeStyle ? 0 : 1);
        using var wd = TestWeights.LoadInto(down, ops, dt, seed: 3);
        var x = oracle.Random(2L * 7 * 6 * c, dt);
        using var tx = Oracle.Upload(ops, x, dt, 2, 7, 6, c);
        using var y = down.Forward(ops, tx);
        var rx = Nchw(Oracle.T(x, 2, 7, 6, c));
        var want = vaeStyle
            ? F.conv2d(F.pad(rx, [0, 1, 0, 1]), wd.Torch("conv.weight"), wd.Torch("conv.bias"), strides: [2, 2])
            : F.conv2d(rx, wd.Torch("conv.weight"), wd.Torch("conv.bias"), strides: [2, 2], padding: [1, 1]);
        oracle.Check("Downsample2D", vaeStyle ? "pad (0,1,0,1)" : "pad 1", y, Nhwc(want), Devices.Tolerance(dt));

        using var up = new Upsample2D(c);
        using var wu = TestWeights.LoadInto(up, ops, dt, seed: 4);
        using var yu = up.Forward(ops, tx);
        var wantUp = F.conv2d(F.interpolate(rx, scale_factor: [2.0, 2.0], mode: InterpolationMode.Nearest),
            wu.Torch("conv.weight"), wu.Torch("conv.bias"), padding: [1, 1]);
        oracle.Check("Upsample2D", "nearest 2x + conv", yu, Nhwc(wantUp), Devices.Tolerance(dt));
    }

    [Theory]
    [InlineData("fp32", 16, 12, 2, 8)]
    [InlineData("fp32", 16, null, 2, 8)]
    [InlineData("fp16", 16, 12, 2, 8)]
    [InlineData("fp32", 16, 12, 2, 8, "cpu")]
    [InlineData("fp32", 16, null, 2, 8, "cpu")]
    [InlineData("fp16", 16, 12, 2, 8, "cpu")]
    public void Attention_matches_libtorch(string dtype, int dim, int? ctxDim, int heads, int dimHead, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        using var attn = new Attention(dim, ctxDim, heads, dimHead);
        using var w = TestWeights.LoadInto(attn, ops, dt, seed: 5);
        int b = 2, l = 9, lc = 7;
        var x = oracle.Random((long)b * l * dim, dt, 2f);
        var ctx = ctxDim is int cd ? oracle.Random((long)b * lc * cd, dt, 2f) : null;
        var res = oracle.Random((long)b * l * dim, dt);
        using var tx = Oracle.Upload(ops, x, dt, b, l, dim);
        using var tc = ctx is null ? null : Oracle.Upload(ops, ctx, dt, b, lc, ctxDim!.Value);
        using var tr = Oracle.Upload(ops, res, dt, b, l, dim);
        using var y = attn.Forward(ops, tx, tc, tr);

        var rx = Oracle.T(x, b, l, dim);
        var rc = ctx is null ? rx : Oracle.T(ctx, b, lc, ctxDim!.Value);
        TorchTensor Heads(TorchTensor t) => t.reshape(b, -1, heads, dimHead).transpose(1, 2);
        var q = Heads(F.linear(rx, w.Torch("to_q.weight")));
        var k = Heads(F.linear(rc, w.Torch("to_k.weight")));
        var v = Heads(F.linear(rc, w.Torch("to_v.weight")));
        var o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, l, heads * dimHead);
        var want = F.linear(o, w.Torch("to_out.0.weight"), w.Torch("to_out.0.bias")) + Oracle.T(res, b, l, dim);
        oracle.Check("Attention", ctxDim is null ? "self" : "cross", y, want, Devices.Tolerance(dt));
    }

    [Fact]
    public void Vae_style_attention_with_group_norm_and_residual_matches_libtorch()
    {
        var ops = Devices.Ops("test");
        using var scope = torch.NewDisposeScope();
        int c = 16, n = 1, h = 3, wd = 4;
        using var attn = new Attention(c, null, 1, c, qkvBias: true, normGroups: 4, normEps: 1e-6f, residualConnection: true);
        using var w = TestWeights.LoadInto(attn, ops, DType.F32, seed: 6);
        var x = oracle.Random((long)n * h * wd * c, DType.F32, 2f);
        using var tx = Oracle.Upload(ops, x, DType.F32, n, h, wd, c);
        using var y = attn.Forward(ops, tx);
        Assert.Equal(new[] { n, h, wd, c }, y.ShapeArray());
        var tokens = Oracle.T(x, n, h * wd, c);
        var normed = F.group_norm(tokens.transpose(1, 2), 4, w.Torch("group_norm.weight"), w.Torch("group_norm.bias"), 1e-6).transpose(1, 2);
        var q = F.linear(normed, w.Torch("to_q.weight"), w.Torch("to_q.bias")).unsqueeze(1);
        var k = F.linear(normed, w.Torch("to_k.weight"), w.Torch("to_k.bias")).unsqueeze(1);
        var v = F.linear(normed, w.Torch("to_v.weight"), w.Torch("to_v.bias")).unsqueeze(1);
        var o = F.scaled_dot_product_attention(q, k, v).squeeze(1);
        var want = F.linear(o, w.Torch("to_out.0.weight"), w.Torch("to_out.0.bias")) + tokens;
        oracle.Check("Attention", "VAE mid-block (group norm, 1 head, residual)", y, want.reshape(n, h, wd, c), 1e-5);
    }

    [Fact]
    public void Loading_refuses_a_checkpoint_with_a_wrong_shape_naming_the_tensor()
    {
        var ops = Devices.Ops("test");
        using var block = new ResnetBlock2D(8, 16, 12, 4, 1e-5f);
        using var other = new ResnetBlock2D(8, 8, 12, 4, 1e-5f);
        using var w = TestWeights.LoadInto(other, ops, DType.F32);
        var e = Assert.Throws<WeightsException>(() => block.Load(w.Component, ops, DType.F32));
        Assert.Contains("conv1.weight", e.Message);
        Assert.Contains("expected [16, 8, 3, 3]", e.Message);
    }

    [Fact]
    public void Module_tree_names_follow_diffusers()
    {
        using var block = new ResnetBlock2D(8, 16, 12, 4, 1e-5f);
        Assert.Equal(
            ["norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias", "time_emb_proj.weight", "time_emb_proj.bias",
             "norm2.weight", "norm2.bias", "conv2.weight", "conv2.bias", "conv_shortcut.weight", "conv_shortcut.bias"],
            block.NamedParameters().Select(p => p.Path).ToArray());
        using var attn = new Attention(16, 12, 2, 8);
        Assert.Equal(["to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"],
            attn.NamedParameters().Select(p => p.Path).ToArray());
    }
}
