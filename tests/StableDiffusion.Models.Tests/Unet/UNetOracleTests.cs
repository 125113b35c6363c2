using StableDiffusion.Models.Unet;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using StableDiffusion.TestSupport.Torch;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.Models.Tests.Unet;

/// <summary>
/// The UNet and its transformer against the libtorch reference (<see cref="TorchUNet"/>, float64, NCHW) on random
/// weights in the diffusers layout, loaded through a real safetensors file. Tiny configurations with the real
/// structure: SD1-style (1x1-conv projections, one head count), SD2-style (linear projections, heads per block, three
/// levels) and the 9-channel inpainting input.
/// </summary>
public class UNetOracleTests(TinyUNets models, ITestOutputHelper output) : IClassFixture<TinyUNets>
{
    private readonly Oracle oracle = new(output);

    private static TorchTensor Nchw(TorchTensor nhwc) => nhwc.permute(0, 3, 1, 2);
    private static TorchTensor Nhwc(TorchTensor nchw) => nchw.permute(0, 2, 3, 1);

    // Latents are small and non-square, since the ILGPU CPU accelerator pays for every thread group: SD1-style
    // 4x6 → 2x3, SD2-style 4x8 → 2x4 → 1x2. The context is 9 tokens (77 in the dependence test).
    [Theory]
    [InlineData("sd1", "fp32")]
    [InlineData("sd1", "fp16")]
    [InlineData("sd2", "fp32")]
    [InlineData("sd2", "fp16")]
    [InlineData("sd1-inpaint", "fp32")]
    [InlineData("sd1-inpaint", "fp16")]
    [InlineData("sd1", "fp32", "cpu")]
    [InlineData("sd1", "fp16", "cpu")]
    [InlineData("sd2", "fp32", "cpu")]
    [InlineData("sd2", "fp16", "cpu")]
    [InlineData("sd1-inpaint", "fp32", "cpu")]
    [InlineData("sd1-inpaint", "fp16", "cpu")]
    public void UNet_matches_libtorch(string name, string dtype, string backend = "test")
    {
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var (unet, w) = models.Get(name, dt);
        // Two timesteps for the batch, or (inpainting) one timestep for both, which the embedding broadcasts.
        CheckForward(name, unet, w, Devices.Backend(backend), dt, name == "sd1-inpaint" ? [500f] : [981f, 37f], "");
    }

    // The C# CPU backend packs linear and conv weights at load, straight from the file; an fp16 file's weights stay
    // fp16 in fp32 runs (widened inside the GEMM), which must give fp32's accuracy on the weights the file holds.
    [Theory]
    [InlineData("sd1", "fp32")]
    [InlineData("sd2", "fp32")]
    [InlineData("sd1-inpaint", "fp32")]
    [InlineData("sd1", "fp16")]
    public void UNet_with_weights_packed_at_load_matches_libtorch(string name, string dtype)
    {
        var ops = Devices.Backend("cpu");
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        using var unet = TinyUNets.Build(TinyUNets.Spec(name));
        using var w = TestWeights.LoadInto(unet, ops, dt, seed: 11, fileDType: IO.WeightDType.F16);
        var packed = unet.NamedParameters().Where(p => p.Parameter.IsGemmWeight).Select(p => p.Parameter.Value).ToList();
        Assert.All(packed, t => Assert.True(t.IsPacked && t.DType == DType.F16, $"{t} should be packed fp16"));
        Assert.Throws<KernelArgumentException>(() => packed[0].ToFloatArray()); // only the backend's GEMM reads panels
        CheckForward(name, unet, w, ops, dt, [981f, 37f], $"fp16 file, {dtype} compute, packed at load, ");
    }

    /// <summary>
    /// One forward pass of a tiny UNet (batch 2, SD2-style 4x8 latents, else 4x6; a 9-token context) against the
    /// libtorch reference on the same stored weights.
    /// </summary>
    private void CheckForward(string name, UNet2DConditionModel unet, TestWeights w, IOps ops, DType dt, float[] t, string label)
    {
        var spec = TinyUNets.Spec(name);
        int n = 2, h = 4, wd = name == "sd2" ? 8 : 6, l = 9, cin = spec.InChannels;
        var x = oracle.Random((long)n * h * wd * cin, dt, 1.5f);
        var ctx = oracle.Random((long)n * l * spec.CrossAttentionDim, dt, 1.5f);
        using var tx = Oracle.Upload(ops, x, dt, n, h, wd, cin);
        using var tt = DeviceTensor.FromArray(ops.Device, t, DType.F32, t.Length);
        using var tc = Oracle.Upload(ops, ctx, dt, n, l, spec.CrossAttentionDim);
        using var y = unet.Forward(ops, tx, tt, tc);
        Assert.Equal(new[] { n, h, wd, spec.OutChannels }, y.ShapeArray());

        var reference = new TorchUNet(spec, w.Torch);
        var want = reference.Forward(Nchw(Oracle.T(x, n, h, wd, cin)), t.Length == n ? t : [t[0], t[0]], Oracle.T(ctx, n, l, spec.CrossAttentionDim));
        string caseName = label == "" ? $"{name}: {spec}, {n}x{h}x{wd}, ctx {l}" : $"{name}: {label}{n}x{h}x{wd}";
        oracle.Check("UNet2DConditionModel", caseName, y, Nhwc(want), dt == DType.F32 ? 1e-4 : 2e-3);
    }

    [Theory]
    [InlineData("fp32")]
    [InlineData("fp16")]
    [InlineData("fp32", "cpu")]
    [InlineData("fp16", "cpu")]
    public void BasicTransformerBlock_matches_libtorch(string dtype, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        int dim = 32, heads = 2, ctxDim = 24, b = 2, l = 12, lc = 7;
        using var block = new BasicTransformerBlock(dim, heads, dim / heads, ctxDim);
        using var w = TestWeights.LoadInto(block, ops, dt, seed: 12);
        var x = oracle.Random((long)b * l * dim, dt, 2f);
        var ctx = oracle.Random((long)b * lc * ctxDim, dt, 2f);
        using var tx = Oracle.Upload(ops, x, dt, b, l, dim);
        using var tc = Oracle.Upload(ops, ctx, dt, b, lc, ctxDim);
        using var y = block.Forward(ops, tx, tc);

        var reference = new TorchUNet(TinyUNets.Sd1Tiny, name => w.Torch(name.TrimStart('.')));
        var want = reference.BasicTransformerBlock("", Oracle.T(x, b, l, dim), Oracle.T(ctx, b, lc, ctxDim), heads);
        oracle.Check("BasicTransformerBlock", $"dim {dim}, {heads} heads, ctx {ctxDim}, L {l}/{lc}", y, want, Devices.Tolerance(dt));
    }

    /// <summary>Prompts past 77 tokens: the cross-attention takes 2 and 3 chunks' context (154, 231 tokens).</summary>
    [Theory]
    [InlineData("fp32", 154)]
    [InlineData("fp16", 231)]
    [InlineData("fp32", 231, "cpu")]
    [InlineData("fp16", 154, "cpu")]
    public void BasicTransformerBlock_takes_a_long_context(string dtype, int lc, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        int dim = 32, heads = 2, ctxDim = 24, b = 2, l = 6;
        using var block = new BasicTransformerBlock(dim, heads, dim / heads, ctxDim);
        using var w = TestWeights.LoadInto(block, ops, dt, seed: 15);
        var x = oracle.Random((long)b * l * dim, dt, 2f);
        var ctx = oracle.Random((long)b * lc * ctxDim, dt, 2f);
        using var tx = Oracle.Upload(ops, x, dt, b, l, dim);
        using var tc = Oracle.Upload(ops, ctx, dt, b, lc, ctxDim);
        using var y = block.Forward(ops, tx, tc);

        var reference = new TorchUNet(TinyUNets.Sd1Tiny, name => w.Torch(name.TrimStart('.')));
        var want = reference.BasicTransformerBlock("", Oracle.T(x, b, l, dim), Oracle.T(ctx, b, lc, ctxDim), heads);
        oracle.Check("BasicTransformerBlock", $"dim {dim}, {heads} heads, ctx {ctxDim}, L {l}/{lc} (long context)", y, want, Devices.Tolerance(dt));
    }

    [Theory]
    [InlineData("fp32", false)]
    [InlineData("fp32", true)]
    [InlineData("fp16", true)]
    [InlineData("fp32", false, "cpu")]
    [InlineData("fp32", true, "cpu")]
    [InlineData("fp16", true, "cpu")]
    public void Transformer2DModel_matches_libtorch(string dtype, bool linear, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        int c = 32, heads = 2, ctxDim = 24, n = 2, h = 4, wd = 5, lc = 7;
        var spec = TinyUNets.Sd1Tiny with { LinearProjection = linear, CrossAttentionDim = ctxDim, Groups = 8 };
        using var model = new Transformer2DModel(heads, c / heads, c, 1, ctxDim, spec.Groups, linear);
        using var w = TestWeights.LoadInto(model, ops, dt, seed: 13);
        var x = oracle.Random((long)n * h * wd * c, dt, 2f);
        var ctx = oracle.Random((long)n * lc * ctxDim, dt, 2f);
        using var tx = Oracle.Upload(ops, x, dt, n, h, wd, c);
        using var tc = Oracle.Upload(ops, ctx, dt, n, lc, ctxDim);
        using var y = model.Forward(ops, tx, tc);

        // The module is the root here, so its weights have no prefix: strip the leading dot the reference adds.
        var reference = new TorchUNet(spec, name => w.Torch(name.TrimStart('.')));
        var want = Nhwc(reference.Transformer("", Nchw(Oracle.T(x, n, h, wd, c)), Oracle.T(ctx, n, lc, ctxDim), heads));
        oracle.Check("Transformer2DModel", $"{(linear ? "linear" : "1x1 conv")} proj, {c} ch, {heads} heads, {h}x{wd}", y, want, Devices.Tolerance(dt));
    }

    /// <summary>
    /// Each input must move the output by far more than the oracle tolerance, so that a path that is cut (timestep
    /// embedding, cross-attention, the sample itself) cannot go unnoticed behind a passing oracle test. One batch of
    /// four: a baseline and three copies, each with one input changed (batch elements are independent).
    /// </summary>
    [Fact]
    public void Output_depends_on_timestep_context_and_sample()
    {
        var spec = TinyUNets.Sd1Tiny;
        var ops = Devices.Ops("test");
        var (unet, _) = models.Get("sd1", DType.F32);
        int h = 4, wd = 6, l = 77, c = spec.CrossAttentionDim, sampleSize = h * wd * spec.InChannels;
        var x = oracle.Random(sampleSize, DType.F32, 1.5f);
        var ctx = oracle.Random(l * c, DType.F32, 1.5f);
        float[] samples = [.. x, .. x, .. x, .. oracle.Random(sampleSize, DType.F32, 1.5f)];
        float[] timesteps = [500f, 400f, 500f, 500f];
        float[] contexts = [.. ctx, .. ctx, .. oracle.Random(l * c, DType.F32, 1.5f), .. ctx];
        using var tx = Oracle.Upload(ops, samples, DType.F32, 4, h, wd, spec.InChannels);
        using var tt = DeviceTensor.FromArray(ops.Device, timesteps, DType.F32, 4);
        using var tc = Oracle.Upload(ops, contexts, DType.F32, 4, l, c);
        using var y = unet.Forward(ops, tx, tt, tc);
        var all = y.ToFloatArray();
        int size = all.Length / 4;
        var baseline = all[..size];
        string[] what = ["", "timestep (500 → 400)", "context (another prompt)", "sample (other noise)"];
        for (int i = 1; i < 4; i++)
        {
            double change = global::StableDiffusion.Kernels.Reference.RelativeError(all[(i * size)..((i + 1) * size)], baseline);
            output.WriteLine($"relative output change, {what[i]}: {change:0.000e+00}");
            Assert.True(change > 5e-2, $"changing the {what[i]} moved the output by only {change:0.0e+00}");
        }
    }

    [Fact]
    public void Forward_refuses_latents_the_unet_cannot_halve_and_mismatched_context()
    {
        var ops = Devices.Ops("test");
        var (unet, _) = models.Get("sd2", DType.F32);
        int c = TinyUNets.Sd2Tiny.CrossAttentionDim;
        using var t = DeviceTensor.FromArray(ops.Device, [1f], DType.F32, 1);
        using var ctx = DeviceTensor.FromArray(ops.Device, new float[3 * c], DType.F32, 1, 3, c);
        using (var odd = DeviceTensor.FromArray(ops.Device, new float[6 * 8 * 4], DType.F32, 1, 6, 8, 4))
            Assert.Contains("not a multiple of 4", Assert.Throws<UsageException>(() => unet.Forward(ops, odd, t, ctx)).Message);
        using var x = DeviceTensor.FromArray(ops.Device, new float[8 * 8 * 4], DType.F32, 1, 8, 8, 4);
        using (var wrong = DeviceTensor.FromArray(ops.Device, new float[3 * (c + 1)], DType.F32, 1, 3, c + 1))
            Assert.Contains("encoder_hidden_states", Assert.Throws<UsageException>(() => unet.Forward(ops, x, t, wrong)).Message);
        using (var nchw = DeviceTensor.FromArray(ops.Device, new float[4 * 8 * 8], DType.F32, 1, 4, 8, 8))
            Assert.Contains("channels-last", Assert.Throws<UsageException>(() => unet.Forward(ops, nchw, t, ctx)).Message);
    }
}

/// <summary>
/// The tiny UNets of the oracle tests, built from config.json text and loaded with random weights once per
/// (configuration, dtype) for the whole test class: loading converts every conv weight on the device, which is slow
/// on the CPU accelerator.
/// </summary>
public sealed class TinyUNets : IDisposable
{
    /// <summary>SD1-style: one head count for all blocks (head widths 8, 16), 1x1-conv projections.</summary>
    public static readonly UNetSpec Sd1Tiny = new()
    {
        Channels = [16, 32], CrossAttn = [true, false], Heads = [2], CrossAttentionDim = 24, Groups = 4,
    };

    /// <summary>SD2-style: heads per block (every head 8 wide), linear projections, three levels.</summary>
    public static readonly UNetSpec Sd2Tiny = new()
    {
        Channels = [16, 24, 32], CrossAttn = [true, true, false], Heads = [2, 3, 4], CrossAttentionDim = 20, Groups = 4,
        LinearProjection = true,
    };

    /// <summary>The inpainting UNet: latents, mask and masked-image latents concatenated (4 + 1 + 4 channels).</summary>
    public static readonly UNetSpec InpaintTiny = Sd1Tiny with { InChannels = 9 };

    /// <summary>
    /// SDXL-style: three levels with no attention at the top one, heads 8 wide, transformer depth growing per level
    /// (1, 2, 3; the real model 1, 2, 10; the mid block takes the deepest), linear projections, and the text_time addition
    /// embedding (pooled 12 + 6 ids × 8 = 60 inputs; the real model 1280 + 6 × 256 = 2816).
    /// </summary>
    public static readonly UNetSpec SdxlTiny = new()
    {
        Channels = [16, 24, 32], CrossAttn = [false, true, true], Heads = [2, 3, 4], CrossAttentionDim = 20, Groups = 4,
        LinearProjection = true, TransformerDepths = [1, 2, 3], AdditionTimeDim = 8, AdditionInputDim = 60,
    };

    private readonly Dictionary<(string, DType), (UNet2DConditionModel, TestWeights)> loaded = [];

    public static UNetSpec Spec(string name) => name switch
    {
        "sd1" => Sd1Tiny,
        "sd2" => Sd2Tiny,
        "sd1-inpaint" => InpaintTiny,
        "sdxl" => SdxlTiny,
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, null),
    };

    public static UNet2DConditionModel Build(UNetSpec spec) =>
        new(UNetConfig.FromJson(JsonConfig.Parse(spec.ToConfigJson(), "tiny/unet/config.json")));

    public (UNet2DConditionModel Model, TestWeights Weights) Get(string name, DType dtype)
    {
        if (loaded.TryGetValue((name, dtype), out var m)) return m;
        var unet = Build(Spec(name));
        var w = TestWeights.LoadInto(unet, Devices.Ops("test"), dtype, seed: 11);
        loaded[(name, dtype)] = (unet, w);
        return (unet, w);
    }

    public void Dispose()
    {
        foreach (var (unet, w) in loaded.Values)
        {
            unet.Dispose();
            w.Dispose();
        }
    }
}
