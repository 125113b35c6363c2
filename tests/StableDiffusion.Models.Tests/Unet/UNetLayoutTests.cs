using System.Globalization;
using System.Text.Json.Nodes;
using StableDiffusion.Models.Unet;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using Xunit.Abstractions;

namespace StableDiffusion.Models.Tests.Unet;

/// <summary>
/// The UNet built from the real SD1.5 and SD2.1-base unet/config.json declares exactly the tensors of the real
/// checkpoints (names, shapes, counts), with diffusers' head interpretation; bad configs fail naming the key.
/// </summary>
public class UNetLayoutTests(ITestOutputHelper output)
{
    private static UNet2DConditionModel Real(string model, Func<string, string>? edit = null)
    {
        var path = SharedReference.Require("configs", model, "unet", "config.json");
        var json = File.ReadAllText(path);
        return new UNet2DConditionModel(UNetConfig.FromJson(JsonConfig.Parse(edit?.Invoke(json) ?? json, path)));
    }

    private static void AssertSameLayout(IReadOnlyDictionary<string, long[]> want, IReadOnlyDictionary<string, long[]> got)
    {
        var missing = want.Keys.Except(got.Keys).Order().ToList();
        var extra = got.Keys.Except(want.Keys).Order().ToList();
        Assert.True(missing.Count == 0 && extra.Count == 0,
            $"missing {missing.Count} (e.g. {string.Join(", ", missing.Take(5))}); unexpected {extra.Count} (e.g. {string.Join(", ", extra.Take(5))})");
        foreach (var (name, shape) in want)
            Assert.True(shape.SequenceEqual(got[name]), $"{name}: expected [{string.Join(",", shape)}], declared [{string.Join(",", got[name])}]");
    }

    [SkippableFact]
    public void Sd15_unet_declares_the_real_layout()
    {
        using var unet = Real("sd15");
        var want = SharedReference.Shapes("sd15_diffusers_unet.tsv");
        AssertSameLayout(want, unet.ExpectedLayout());
        Assert.Equal(686, unet.NamedParameters().Count());
        Assert.Equal(859_520_964L, unet.ParameterCount);
        Assert.Equal(want.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b)), unet.ParameterCount);

        // attention_head_dim 8 is 8 heads in every block (head width 40, 80, 160, 160).
        var down0 = unet.DownBlocks[0].Attentions![0].TransformerBlocks[0];
        Assert.Equal((8, 40), (down0.Attn1.Heads, down0.Attn1.DimHead));
        var mid = unet.MidBlock.Attentions[0].TransformerBlocks[0];
        Assert.Equal((8, 160), (mid.Attn2.Heads, mid.Attn2.DimHead));
        Assert.IsType<Conv2d>(unet.MidBlock.Attentions[0].ProjIn);
    }

    [SkippableFact]
    public void Sd21_base_unet_declares_the_real_layout_with_heads_per_block()
    {
        using var unet = Real("sd21-base");
        var want = SharedReference.Shapes("sd21_diffusers_unet.tsv");
        AssertSameLayout(want, unet.ExpectedLayout());
        Assert.Equal(686, unet.NamedParameters().Count());
        Assert.Equal(want.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b)), unet.ParameterCount);
        Assert.Equal(865_910_724L, unet.ParameterCount);
        Assert.IsType<Linear>(unet.DownBlocks[0].Attentions![0].ProjIn);

        // attention_head_dim [5, 10, 20, 20] counts heads per block: every head is 64 wide; the up path reverses the list.
        (int, int) Heads(BasicTransformerBlock b) => (b.Attn1.Heads, b.Attn1.DimHead);
        Assert.Equal((5, 64), Heads(unet.DownBlocks[0].Attentions![0].TransformerBlocks[0]));
        Assert.Equal((10, 64), Heads(unet.DownBlocks[1].Attentions![1].TransformerBlocks[0]));
        Assert.Equal((20, 64), Heads(unet.DownBlocks[2].Attentions![0].TransformerBlocks[0]));
        Assert.Equal((20, 64), Heads(unet.MidBlock.Attentions[0].TransformerBlocks[0]));
        Assert.Equal((20, 64), Heads(unet.UpBlocks[1].Attentions![2].TransformerBlocks[0]));
        Assert.Equal((10, 64), Heads(unet.UpBlocks[2].Attentions![0].TransformerBlocks[0]));
        Assert.Equal((5, 64), Heads(unet.UpBlocks[3].Attentions![1].TransformerBlocks[0]));
    }

    [SkippableFact]
    public void Inpainting_variant_takes_nine_input_channels()
    {
        using var unet = Real("sd15", json => json.Replace("\"in_channels\": 4", "\"in_channels\": 9", StringComparison.Ordinal));
        var want = new Dictionary<string, long[]>(SharedReference.Shapes("sd15_diffusers_unet.tsv")) { ["conv_in.weight"] = [320, 9, 3, 3] };
        AssertSameLayout(want, unet.ExpectedLayout());
        Assert.Equal(859_535_364L, unet.ParameterCount); // SD1.5 inpainting: 5 more input channels × 320 × 3 × 3
    }

    /// <summary>
    /// Device memory of the full-size SD1.5 UNet's weights: ParameterCount × element size, and what the device pool
    /// actually holds (each weight is a pool buffer rounded up to its size class).
    /// </summary>
    [SkippableFact]
    public void Sd15_unet_weight_memory()
    {
        using var unet = Real("sd15");
        foreach (var dt in new[] { DType.F16, DType.F32 })
        {
            long raw = unet.ParameterCount * dt.SizeInBytes();
            long pooled = unet.NamedParameters().Sum(p => MemoryPool.SizeClass(p.Parameter.ElementCount * dt.SizeInBytes()));
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"SD1.5 UNet weights {dt.Name()}: {raw:N0} bytes ({raw / 1073741824.0:F3} GiB) as parameters; " +
                $"{pooled:N0} bytes ({pooled / 1073741824.0:F3} GiB) in pool buffers (+{100.0 * (pooled - raw) / raw:F1} %)"));
            Assert.Equal(859_520_964L * dt.SizeInBytes(), raw);
        }
    }

    [Theory]
    [InlineData("\"attention_head_dim\": 7", "attention_head_dim")]
    [InlineData("\"norm_num_groups\": 24", "norm_num_groups")]
    [InlineData("\"act_fn\": \"gelu\"", "act_fn")]
    [InlineData("\"addition_embed_type\": \"image\"", "addition_embed_type")]
    [InlineData("\"addition_embed_type\": \"text_time\"", "addition_time_embed_dim")]
    [InlineData("\"down_block_types\": [\"CrossAttnDownBlock2D\", \"AttnDownBlock2D\"]", "down_block_types")]
    [InlineData("\"layers_per_block\": [1, 1, 1]", "layers_per_block")]
    [InlineData("\"cross_attention_dim\": [24, 32]", "cross_attention_dim")]
    [InlineData("\"block_out_channels\": \"wide\"", "block_out_channels")]
    public void Bad_configs_name_the_key(string entry, string key)
    {
        var config = JsonNode.Parse("{\"block_out_channels\": [32, 64], \"down_block_types\": [\"CrossAttnDownBlock2D\", \"DownBlock2D\"], " +
            "\"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\"], \"norm_num_groups\": 8, \"attention_head_dim\": 2, " +
            "\"cross_attention_dim\": 24}")!.AsObject();
        UNetConfig.FromJson(JsonConfig.Parse(config.ToJsonString(), "x/unet/config.json")); // the baseline is valid
        foreach (var (k, v) in JsonNode.Parse("{" + entry + "}")!.AsObject().ToList())
            config[k] = v?.DeepClone();
        var e = Assert.Throws<ConfigException>(() => UNetConfig.FromJson(JsonConfig.Parse(config.ToJsonString(), "x/unet/config.json")));
        Assert.Contains($"\"{key}\"", e.Message);
        Assert.StartsWith("x/unet/config.json: ", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
