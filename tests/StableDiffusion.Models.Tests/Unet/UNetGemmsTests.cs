using System.Text.Json.Nodes;
using StableDiffusion.Models.Unet;
using StableDiffusion.TestSupport;

namespace StableDiffusion.Models.Tests.Unet;

/// <summary>
/// The GEMM list of a UNet step against the real checkpoints' tensor layouts: every listed layer has a weight of
/// the listed N x K (a convolution's [N, Cin, kh, kw]), and every linear or convolution weight of the checkpoint is
/// listed once.
/// </summary>
public class UNetGemmsTests
{
    [SkippableTheory]
    [InlineData("sd15", "sd15_diffusers_unet.tsv")]
    [InlineData("sd21", "sd21_diffusers_unet.tsv")]
    [InlineData("sdxl", "sdxl_diffusers_unet.tsv")]
    public void Every_gemm_is_a_weight_of_the_real_checkpoint_and_every_weight_is_listed(string model, string layout)
    {
        var shapes = SharedReference.Shapes(layout);
        var gemms = UNetGemms.Enumerate(UNetGemms.ConfigJson(model), 64, 64, 2);
        Assert.Equal(gemms.Count, gemms.Select(g => g.Layer).Distinct().Count());
        foreach (var g in gemms)
        {
            Assert.True(shapes.TryGetValue(g.Layer + ".weight", out var s), $"{model}: {g.Layer}.weight is not in {layout}");
            long k = s!.Skip(1).Aggregate(1L, (a, b) => a * b);
            Assert.True(s[0] == g.N && k == g.K, $"{g.Layer}: listed n {g.N} k {g.K}, checkpoint [{string.Join(",", s)}]");
            if (g.Op.StartsWith("conv", StringComparison.Ordinal)) Assert.Equal(4, s.Length);
            else Assert.Equal(2, s.Length);
        }
        var listed = gemms.Select(g => g.Layer + ".weight").ToHashSet();
        var weights = shapes.Where(kv => kv.Key.EndsWith(".weight", StringComparison.Ordinal) && kv.Value.Length is 2 or 4
                                         && !kv.Key.Contains("norm", StringComparison.Ordinal)).Select(kv => kv.Key).ToList();
        var missing = weights.Where(w => !listed.Contains(w)).ToList();
        Assert.True(missing.Count == 0, $"{model}: checkpoint weights not listed: {string.Join(", ", missing.Take(5))}");
    }

    [Fact]
    public void Rows_follow_the_latent_size_batch_and_text_length()
    {
        var g = UNetGemms.Enumerate(UNetGemms.ConfigJson("sd15"), 64, 64, 2).ToDictionary(x => x.Layer);
        Assert.Equal(2 * 64 * 64, g["conv_in"].M);
        Assert.Equal(2 * 32 * 32, g["down_blocks.0.downsamplers.0.conv"].M);
        Assert.Equal(2 * 8 * 8, g["mid_block.resnets.0.conv1"].M);
        Assert.Equal(2 * 77, g["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"].M);
        Assert.Equal(2, g["down_blocks.0.resnets.0.time_emb_proj"].M);
        Assert.Equal(2 * 64 * 64, g["up_blocks.2.upsamplers.0.conv"].M);
        var xl = UNetGemms.Enumerate(UNetGemms.ConfigJson("sdxl"), 128, 96, 2);
        Assert.Equal(2 * 32 * 24, xl.Single(x => x.Layer == "mid_block.attentions.0.transformer_blocks.9.ff.net.2").M);
        Assert.Throws<StableDiffusion.ConfigException>(() => UNetGemms.Enumerate(UNetGemms.ConfigJson("sdxl"), 102, 128, 2));
    }

    /// <summary>The re-typed SDXL config agrees with the published file on every key it states.</summary>
    [SkippableFact]
    public void Sdxl_config_matches_the_published_file()
    {
        var real = JsonNode.Parse(File.ReadAllText(SharedReference.Require("configs", "sdxl-base", "unet", "config.json")))!.AsObject();
        var ours = JsonNode.Parse(UNetGemms.ConfigJson("sdxl"))!.AsObject();
        foreach (var (key, value) in ours)
            Assert.True(JsonNode.DeepEquals(value, real[key]), $"{key}: ours {value?.ToJsonString()}, published {real[key]?.ToJsonString()}");
    }
}
