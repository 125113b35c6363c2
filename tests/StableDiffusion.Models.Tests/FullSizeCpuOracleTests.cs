using System.Diagnostics;
using StableDiffusion.Models.Unet;
using StableDiffusion.Models.Vae;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using StableDiffusion.TestSupport.Torch;
using TorchSharp;
using Xunit.Abstractions;

namespace StableDiffusion.Models.Tests;

/// <summary>
/// The full-size SD1.5 UNet (64×64 latent) and VAE decoder (256×256 image) on the C# CPU backend against the libtorch
/// float64 references, on random weights in the real layout loaded from a real safetensors file: the shapes only a
/// full-size model has (320–1280 channels, 4096-token attention, 8 heads of 40–160, 512-channel VAE mid-block
/// attention) run through the backend exactly as a generation does.
/// </summary>
public class FullSizeCpuOracleTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    private static readonly UNetSpec Sd15 = new()
    {
        Channels = [320, 640, 1280, 1280], CrossAttn = [true, true, true, false], Heads = [8], CrossAttentionDim = 768,
        Groups = 32, LayersPerBlock = 2,
    };

    [Fact]
    public void Sd15_unet_forward_at_a_64x64_latent_matches_libtorch()
    {
        var ops = Devices.Backend("cpu");
        using var scope = torch.NewDisposeScope();
        using var unet = new UNet2DConditionModel(Presets.Sd15.Unet());
        using var w = TestWeights.LoadInto(unet, ops, DType.F32, seed: 5);
        const int n = 1, h = 64, wd = 64, l = 77;
        float[] t = [801f];
        var x = oracle.Random((long)n * h * wd * 4, DType.F32, 1.5f);
        var ctx = oracle.Random((long)n * l * 768, DType.F32, 1.5f);
        using var tx = Oracle.Upload(ops, x, DType.F32, n, h, wd, 4);
        using var tt = DeviceTensor.FromArray(ops.Device, t, DType.F32, 1);
        using var tc = Oracle.Upload(ops, ctx, DType.F32, n, l, 768);
        var clock = Stopwatch.StartNew();
        using var y = unet.Forward(ops, tx, tt, tc);
        output.WriteLine($"ours: {clock.Elapsed.TotalSeconds:F1} s");
        clock.Restart();
        var want = new TorchUNet(Sd15, w.Torch).Forward(
            TorchVae.Nchw(Oracle.T(x, n, h, wd, 4)), t, Oracle.T(ctx, n, l, 768));
        output.WriteLine($"libtorch float64: {clock.Elapsed.TotalSeconds:F1} s");
        oracle.Check("UNet2DConditionModel", "SD1.5 full size, 1×64×64×4 latent, 77×768 context", y, TorchVae.Nhwc(want), 1e-4);
    }

    [Fact]
    public void Sd15_vae_decode_to_256x256_matches_libtorch()
    {
        var ops = Devices.Backend("cpu");
        using var scope = torch.NewDisposeScope();
        using var vae = new AutoencoderKL(Presets.Sd15.Vae());
        using var w = TestWeights.LoadInto(vae, ops, DType.F32, seed: 6);
        const int n = 1, lh = 32, lw = 32;
        var z = oracle.Random((long)n * lh * lw * 4, DType.F32, 1f);
        using var tz = Oracle.Upload(ops, z, DType.F32, n, lh, lw, 4);
        var clock = Stopwatch.StartNew();
        using var image = vae.Decode(ops, tz);
        output.WriteLine($"ours: {clock.Elapsed.TotalSeconds:F1} s");
        Assert.Equal([n, 256, 256, 3], image.ShapeArray());
        clock.Restart();
        var reference = new TorchVae(w.Torch, [128, 256, 512, 512], 2, 32, 0.18215);
        var want = reference.Decode(TorchVae.Nchw(Oracle.T(z, n, lh, lw, 4)));
        output.WriteLine($"libtorch float64: {clock.Elapsed.TotalSeconds:F1} s");
        oracle.Check("AutoencoderKL decode", "SD1.5 VAE full size, 32×32×4 latent → 256×256 image", image, TorchVae.Nhwc(want), 1e-4);
    }
}
