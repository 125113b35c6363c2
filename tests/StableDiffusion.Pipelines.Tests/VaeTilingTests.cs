using StableDiffusion.Models;
using StableDiffusion.Models.Vae;
using StableDiffusion.Pipelines.Images;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using Xunit.Abstractions;

namespace StableDiffusion.Pipelines.Tests;

/// <summary>
/// Tiled VAE coding on a random small VAE (SD's structure at widths [32, 64], factor 2) on the C# CPU backend with
/// diffusers' 64-latent tiles: a 96×96 latent decoded in 2×2 overlapping tiles must stay within 2 levels (mean, of 255)
/// of the whole decode, and a tiled encode likewise once decoded (measured 1.48 and 1.96: a random VAE's group norms
/// and attention react to each tile's own statistics far more than a trained one's).
/// </summary>
public class VaeTilingTests(ITestOutputHelper output)
{
    private const string Json = """
        {"_class_name": "AutoencoderKL", "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
         "latent_channels": 4, "scaling_factor": 0.5,
         "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]}
        """;

    private const int F = 2, Lat = 96, Px = Lat * F, TilePixels = 128; // diffusers' 64-latent tiles, stride 48: 2×2 tiles

    private static double MeanLevels(float[] a, float[] b, int w, int h)
    {
        var x = RgbImage.FromTensor(a, w, h).Pixels;
        var y = RgbImage.FromTensor(b, w, h).Pixels;
        return x.Zip(y, (p, q) => (double)Math.Abs(p - q)).Average();
    }

    [Fact]
    public void Tiled_decode_and_encode_stay_within_two_levels_of_the_whole()
    {
        var ops = Devices.Backend("cpu");
        using var vae = new AutoencoderKL(VaeConfig.FromJson(JsonConfig.Parse(Json)));
        using var w = TestWeights.LoadInto(vae, ops, DType.F32, seed: 5);
        var rng = new Random(3);
        // Latents with the same statistics everywhere, as a real image's are roughly: each tile's group norms then see
        // the whole image's statistics (a random VAE amplifies any difference far more than a trained one).
        var latents = Enumerable.Range(0, Lat * Lat * 4).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();

        float[] Decode(float[] z, int h, int wd)
        {
            using var t = Tensor.FromArray(ops.Device, z, DType.F32, 1, h, wd, 4);
            using var img = vae.Decode(ops, t);
            return img.ToFloatArray();
        }
        float[] Mode(float[] img, int h, int wd)
        {
            using var t = Tensor.FromArray(ops.Device, img, DType.F32, 1, h, wd, 3);
            using var moments = vae.Encode(ops, t);
            return moments.ToFloatArray();
        }

        var whole = Decode(latents, Lat, Lat);
        var tiled = VaeTiling.Run(latents, Lat, Lat, 4, 3, F, 1, TilePixels / F, Decode);
        double decodeLevels = MeanLevels(whole, tiled, Px, Px);
        output.WriteLine($"decode: tiled vs whole, mean |Δ| {decodeLevels:F3} levels of 255");
        Assert.True(decodeLevels <= 2, $"tiled decode differs by {decodeLevels:F3} levels on average");
        Assert.NotEqual(whole, tiled); // the tiles really were coded apart

        var momentsWhole = Mode(whole, Px, Px);
        var momentsTiled = VaeTiling.Run(whole, Px, Px, 3, 8, 1, F, TilePixels, Mode);
        float[] Mean(float[] m) => Enumerable.Range(0, m.Length / 8).SelectMany(p => m.Skip(p * 8).Take(4)).ToArray();
        double encodeLevels = MeanLevels(Decode(Mean(momentsWhole), Lat, Lat), Decode(Mean(momentsTiled), Lat, Lat), Px, Px);
        output.WriteLine($"encode: tiled vs whole (each decoded whole), mean |Δ| {encodeLevels:F3} levels of 255");
        Assert.True(encodeLevels <= 2, $"tiled encode differs by {encodeLevels:F3} levels on average once decoded");
    }

    [Fact]
    public void Identity_coder_comes_back_unchanged_and_blending_is_linear()
    {
        // With a coder that only scales up by nearest neighbour, overlapping tiles agree, so the blend must give back
        // exactly the untiled result: every pixel is covered once, none twice, none shifted.
        int h = 21, wd = 30, c = 2, f = 4;
        var x = Enumerable.Range(0, h * wd * c).Select(i => (float)i).ToArray();
        float[] Up(float[] t, int th, int tw)
        {
            var y = new float[th * f * tw * f * c];
            for (int r = 0; r < th * f; r++)
            for (int q = 0; q < tw * f; q++)
            for (int k = 0; k < c; k++)
                y[(r * tw * f + q) * c + k] = t[((r / f) * tw + q / f) * c + k];
            return y;
        }
        Assert.Equal(Up(x, h, wd), VaeTiling.Run(x, h, wd, c, c, f, 1, 8, Up));
    }
}
