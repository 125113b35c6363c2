using StableDiffusion.Models.Unet;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using StableDiffusion.TestSupport.Torch;
using TorchSharp;
using Xunit.Abstractions;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.Models.Tests.Unet;

/// <summary>
/// SDXL's UNet features (text_time addition embedding, transformer depth per level, a top level without attention)
/// against the libtorch reference on the tiny SDXL-shaped configuration, and the real SDXL base config's layout.
/// </summary>
public class SdxlUNetTests(TinyUNets models, ITestOutputHelper output) : IClassFixture<TinyUNets>
{
    private readonly Oracle oracle = new(output);
    private const int Pooled = 12;

    private static TorchTensor Nchw(TorchTensor nhwc) => nhwc.permute(0, 3, 1, 2);
    private static TorchTensor Nhwc(TorchTensor nchw) => nchw.permute(0, 2, 3, 1);

    // add_time_ids as SDXL passes them: original size, crop top-left, target size.
    private static readonly float[] TimeIds = [1024, 1024, 0, 0, 1024, 1024, 768, 512, 16, 32, 1024, 1024];

    // fp16: 3e-3, not the 2e-3 of the SD1/SD2 tiny UNets: the six-deep transformer path (mid block 3, up block 2 on
    // both sides) compounds fp16 rounding of the residual stream; measured 1.9e-3 (ILGPU) and 2.5e-3 (C# CPU backend).
    // The ILGPU CPU accelerator takes ~25 s for the fp16 case, so it runs fp32 only.
    [Theory]
    [InlineData("fp32")]
    [InlineData("fp32", "cpu")]
    [InlineData("fp16", "cpu")]
    public void Sdxl_unet_matches_libtorch(string dtype, string backend = "test")
    {
        var spec = TinyUNets.SdxlTiny;
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var (unet, w) = models.Get("sdxl", dt);
        int n = 2, h = 4, wd = 8, l = 9;
        float[] t = [981f, 37f];
        var x = oracle.Random((long)n * h * wd * 4, dt, 1.5f);
        var ctx = oracle.Random((long)n * l * spec.CrossAttentionDim, dt, 1.5f);
        var pooled = oracle.Random((long)n * Pooled, dt, 1.5f);
        using var tx = Oracle.Upload(ops, x, dt, n, h, wd, 4);
        using var tt = DeviceTensor.FromArray(ops.Device, t, DType.F32, n);
        using var tc = Oracle.Upload(ops, ctx, dt, n, l, spec.CrossAttentionDim);
        using var tp = Oracle.Upload(ops, pooled, dt, n, Pooled);
        using var ti = DeviceTensor.FromArray(ops.Device, TimeIds, DType.F32, n, 6);
        using var y = unet.Forward(ops, tx, tt, tc, tp, ti);
        Assert.Equal(new[] { n, h, wd, 4 }, y.ShapeArray());

        var want = new TorchUNet(spec, w.Torch).Forward(Nchw(Oracle.T(x, n, h, wd, 4)), t, Oracle.T(ctx, n, l, spec.CrossAttentionDim),
            Oracle.T(pooled, n, Pooled), TimeIds);
        oracle.Check("UNet2DConditionModel", $"sdxl: {spec}, depth [1,2,3], text_time, {n}x{h}x{wd}, ctx {l}", y, Nhwc(want), dt == DType.F32 ? 1e-4 : 3e-3);
    }

    /// <summary>The pooled embedding and each kind of time id must move the output (a cut addition path cannot hide).</summary>
    [Fact]
    public void Output_depends_on_pooled_embedding_and_time_ids()
    {
        var spec = TinyUNets.SdxlTiny;
        var ops = Devices.Backend("cpu");
        var (unet, _) = models.Get("sdxl", DType.F32);
        int h = 4, wd = 8, l = 5;
        var x = oracle.Random(h * wd * 4, DType.F32, 1.5f);
        var ctx = oracle.Random(l * spec.CrossAttentionDim, DType.F32, 1.5f);
        var pooled = oracle.Random(Pooled, DType.F32, 1.5f);
        float[] ids = [1024, 1024, 0, 0, 1024, 1024];
        float[] pooled2 = oracle.Random(Pooled, DType.F32, 1.5f);
        float[][] idsVariants = [ids, ids, [512, 512, 0, 0, 1024, 1024], [1024, 1024, 64, 64, 1024, 1024], [1024, 1024, 0, 0, 768, 768]];
        float[][] pooledVariants = [pooled, pooled2, pooled, pooled, pooled];
        int k = idsVariants.Length;
        using var tx = Oracle.Upload(ops, [.. Enumerable.Repeat(x, k).SelectMany(a => a)], DType.F32, k, h, wd, 4);
        using var tt = DeviceTensor.FromArray(ops.Device, [500f], DType.F32, 1);
        using var tc = Oracle.Upload(ops, [.. Enumerable.Repeat(ctx, k).SelectMany(a => a)], DType.F32, k, l, spec.CrossAttentionDim);
        using var tp = Oracle.Upload(ops, [.. pooledVariants.SelectMany(a => a)], DType.F32, k, Pooled);
        using var ti = DeviceTensor.FromArray(ops.Device, [.. idsVariants.SelectMany(a => a)], DType.F32, k, 6);
        using var y = unet.Forward(ops, tx, tt, tc, tp, ti);
        var all = y.ToFloatArray();
        int size = all.Length / k;
        string[] what = ["", "pooled text embedding", "original size", "crop", "target size"];
        for (int i = 1; i < k; i++)
        {
            double change = global::StableDiffusion.Kernels.Reference.RelativeError(all[(i * size)..((i + 1) * size)], all[..size]);
            output.WriteLine($"relative output change, {what[i]}: {change:0.000e+00}");
            Assert.True(change > 1e-2, $"changing the {what[i]} moved the output by only {change:0.0e+00}");
        }
    }

    [Fact]
    public void Missing_or_mismatched_addition_inputs_are_refused()
    {
        var ops = Devices.Backend("cpu");
        var (unet, _) = models.Get("sdxl", DType.F32);
        using var x = DeviceTensor.FromArray(ops.Device, new float[4 * 8 * 4], DType.F32, 1, 4, 8, 4);
        using var t = DeviceTensor.FromArray(ops.Device, [1f], DType.F32, 1);
        using var c = DeviceTensor.FromArray(ops.Device, new float[3 * 20], DType.F32, 1, 3, 20);
        Assert.Contains("needs text_embeds and time_ids", Assert.Throws<UsageException>(() => unet.Forward(ops, x, t, c)).Message);
        using var p = DeviceTensor.FromArray(ops.Device, new float[Pooled + 1], DType.F32, 1, Pooled + 1);
        using var ids = DeviceTensor.FromArray(ops.Device, new float[6], DType.F32, 1, 6);
        Assert.Contains("add_embedding's 60 inputs", Assert.Throws<UsageException>(() => unet.Forward(ops, x, t, c, p, ids)).Message);
    }

    [SkippableFact]
    public void Sdxl_base_unet_declares_the_real_layout()
    {
        var path = SharedReference.Require("configs", "sdxl-base", "unet", "config.json");
        using var unet = new UNet2DConditionModel(UNetConfig.Load(path));
        var want = SharedReference.Shapes("sdxl_diffusers_unet.tsv");
        var got = unet.ExpectedLayout();
        var missing = want.Keys.Except(got.Keys).Order().ToList();
        var extra = got.Keys.Except(want.Keys).Order().ToList();
        Assert.True(missing.Count == 0 && extra.Count == 0,
            $"missing {missing.Count} (e.g. {string.Join(", ", missing.Take(5))}); unexpected {extra.Count} (e.g. {string.Join(", ", extra.Take(5))})");
        foreach (var (name, shape) in want) Assert.True(shape.SequenceEqual(got[name]), name);
        Assert.Equal(1680, got.Count);
        Assert.Equal(2_567_463_684L, unet.ParameterCount);
        // attention_head_dim [5, 10, 20] counts heads: every head is 64 wide; the mid block has 10 transformer blocks.
        var b = unet.DownBlocks[2].Attentions![0].TransformerBlocks;
        Assert.Equal((10, 20, 64), (b.Count, b[0].Attn1.Heads, b[0].Attn1.DimHead));
        Assert.Equal(10, unet.MidBlock.Attentions[0].TransformerBlocks.Count);
        Assert.Equal(2, unet.UpBlocks[1].Attentions![0].TransformerBlocks.Count);
        output.WriteLine($"SDXL base UNet: {got.Count} tensors, {unet.ParameterCount:N0} parameters");
    }
}
