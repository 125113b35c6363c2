using StableDiffusion.IO;
using StableDiffusion.Models.Vae;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using StableDiffusion.TestSupport.Torch;
using TorchSharp;
using Xunit.Abstractions;

namespace StableDiffusion.Models.Tests.Vae;

/// <summary>
/// The tiny autoencoder (TAESD) in the published layout (the C# CPU backend) against <see cref="TorchTaesd"/> (libtorch, float64) on the
/// same random weights, and the layout and naming of the real files.
/// </summary>
public class TinyAutoencoderTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    // Two images, not square: 16×24 pixels, 2×3 latents.
    private const int N = 2, H = 16, W = 24, Lh = H / 8, Lw = W / 8, Z = 4;

    [Theory]
    [InlineData("fp32")]
    [InlineData("fp16")]
    [InlineData("fp32", "cpu")]
    [InlineData("fp16", "cpu")]
    public void Encoder_and_decoder_match_libtorch(string dtype, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        // The published layout on the C# CPU backend; the ILGPU CPU accelerator (slow per element) gets the same
        // structure at width 16 with one block per stage.
        var config = backend == "cpu" ? TinyVaeConfig.Default : TinyVaeConfig.Default with
        {
            EncoderBlockOutChannels = [16, 16, 16, 16], DecoderBlockOutChannels = [16, 16, 16, 16],
            NumEncoderBlocks = [1, 1, 1, 1], NumDecoderBlocks = [1, 1, 1, 1],
        };
        using var tae = new TinyAutoencoder(config);
        using var w = TestWeights.LoadInto(tae, ops, dt, seed: 21);
        Assert.Equal(dt, tae.DType);
        var reference = new TorchTaesd(w.Torch, config.NumEncoderBlocks, config.NumDecoderBlocks);
        double tolerance = dt == DType.F32 ? 1e-4 : 2e-3;

        var image = oracle.Random((long)N * H * W * 3, dt);
        using var x = Oracle.Upload(ops, image, dt, N, H, W, 3);
        using var latents = tae.EncodeToLatents(ops, x);
        Assert.Equal([N, Lh, Lw, Z], latents.ShapeArray());
        oracle.Check("TAESD encoder", $"{N}×{H}×{W} image → latents", latents,
            TorchVae.Nhwc(reference.Encode(TorchVae.Nchw(Oracle.T(image, N, H, W, 3)))), tolerance);

        // Latents spread over ±6 so the 3·tanh(z/3) clamp is exercised beyond its linear part.
        var z = oracle.Random((long)N * Lh * Lw * Z, dt, 6f);
        using var tz = Oracle.Upload(ops, z, dt, N, Lh, Lw, Z);
        using var back = tae.Decode(ops, tz);
        Assert.Equal([N, H, W, 3], back.ShapeArray());
        oracle.Check("TAESD decoder", $"{N}×{Lh}×{Lw} latents in ±6 → image", back,
            TorchVae.Nhwc(reference.Decode(TorchVae.Nchw(Oracle.T(z, N, Lh, Lw, Z)))), tolerance);
    }

    [SkippableFact]
    public void Declares_the_published_layout()
    {
        var rows = File.ReadAllLines(SharedReference.Require("layouts", "taesd_sd1_weights.tsv"))
            .Where(l => !l.StartsWith('#') && l.Length > 0).Select(l => l.Split('\t')).ToList();
        using var tae = new TinyAutoencoder(TinyVaeConfig.Default);
        var have = tae.ExpectedLayout();
        var want = rows.ToDictionary(r => r[2], r => r[3]);
        Assert.Equal(want.Keys.Order(), have.Keys.Order());
        foreach (var (name, shape) in have) Assert.Equal(want[name], $"[{string.Join(",", shape)}]");
        Assert.Equal(1_222_532, tae.Encoder.ParameterCount);
        Assert.Equal(1_222_531, tae.Decoder.ParameterCount);
    }

    /// <summary>
    /// A real original-format .pth (taef2's decoder: TAESD's nn.Sequential indices, fp16) through the restricted
    /// unpickler and the renaming: stored index i is diffusers' decoder.layers.(i − 1), as the tsv's columns say.
    /// </summary>
    [SkippableFact]
    public void A_real_original_decoder_pth_is_renamed_to_diffusers_indices()
    {
        using var opened = TinyAutoencoderFiles.Open(SharedReference.Require("pth", "taef2_decoder.pth"));
        Assert.True(opened.HasDecoder);
        Assert.False(opened.HasEncoder);
        Assert.Equal(79, opened.Weights.TensorCount);
        var first = opened.Weights.Find("decoder.layers.0.weight")!;
        Assert.Equal("1.weight", first.StoredName);
        Assert.Equal([64, 32, 3, 3], first.Shape);
        Assert.Equal("19.bias", opened.Weights.Find("decoder.layers.18.bias")!.StoredName);
        Assert.Equal("3.conv.4.weight", opened.Weights.Find("decoder.layers.2.conv.4.weight")!.StoredName);
        Assert.All(opened.Weights.Tensors, t => Assert.StartsWith("decoder.layers.", t.Name));
    }

    [Fact]
    public void Config_refuses_what_it_cannot_run()
    {
        Assert.Equal(8, TinyVaeConfig.Default.DownscaleFactor);
        Assert.Contains("act_fn", Assert.Throws<ConfigException>(() => TinyVaeConfig.FromJson(JsonConfig.Parse("""{"_class_name": "AutoencoderTiny", "act_fn": "silu"}"""))).Message);
        Assert.Contains("AutoencoderTiny", Assert.Throws<ConfigException>(() => TinyVaeConfig.FromJson(JsonConfig.Parse("""{"_class_name": "AutoencoderKL"}"""))).Message);
        Assert.Contains("one positive width", Assert.Throws<ConfigException>(() => TinyVaeConfig.FromJson(JsonConfig.Parse("""{"encoder_block_out_channels": [32, 64, 64, 64]}"""))).Message);
        var c = TinyVaeConfig.FromJson(JsonConfig.Parse("""{"_class_name": "AutoencoderTiny", "latent_channels": 16, "scaling_factor": 1.0}"""));
        Assert.Equal(16, c.LatentChannels);
    }
}
