using System.Text.Json;

namespace StableDiffusion.Tests.Cli;

public class PlanCommandTests
{
    private static (int Code, string Out, string Err) Sd(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = StableDiffusion.Cli.Cli.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Fact]
    public void Json_lists_every_gemm_with_the_documented_keys()
    {
        var (code, stdout, stderr) = Sd("kernels", "--plan", "--config", "sd15", "--latent", "64", "--batch", "2", "--sms", "132", "--json");
        Assert.Equal(0, code);
        Assert.Equal("", stderr);
        using var doc = JsonDocument.Parse(stdout);
        var rows = doc.RootElement.EnumerateArray().ToList();
        Assert.True(rows.Count > 200);
        foreach (var r in rows)
            Assert.Equal(new[] { "layer", "op", "m", "n", "k", "config", "split_k", "blocks", "waves" },
                r.EnumerateObject().Select(p => p.Name).ToArray());
        var conv = rows.Single(r => r.GetProperty("layer").GetString() == "mid_block.resnets.0.conv1");
        Assert.Equal(2 * 8 * 8, conv.GetProperty("m").GetInt32());
        Assert.Equal(9 * 1280, conv.GetProperty("k").GetInt32());
        Assert.True(conv.GetProperty("split_k").GetInt32() > 1);
        // conv_in has 4 input channels: not a tensor-core convolution, and the plan says so.
        Assert.StartsWith("simt", rows.Single(r => r.GetProperty("layer").GetString() == "conv_in").GetProperty("config").GetString());
    }

    [Fact]
    public void Table_and_markdown_end_with_the_wave_summary()
    {
        var (code, stdout, _) = Sd("kernels", "--plan", "--config", "sdxl", "--latent", "128x128", "--sms", "132", "--markdown");
        Assert.Equal(0, code);
        Assert.StartsWith("# Tensor-core plan: sdxl UNet step, latent 128x128, batch 2, 132 multiprocessors", stdout);
        Assert.Contains("| mid_block.attentions.0.transformer_blocks.9.ff.net.2 | linear |", stdout);
        Assert.Contains("lowest wave efficiency", stdout);
        var (code2, text, _) = Sd("kernels", "--plan", "--config", "sd21", "--latent", "96", "--batch", "1");
        Assert.Equal(0, code2);
        Assert.Contains("lowest wave efficiency", text);
    }

    [Theory]
    [InlineData(new[] { "kernels", "--plan", "--latent", "64" }, "needs --config")]
    [InlineData(new[] { "kernels", "--plan", "--config", "sd3", "--latent", "64" }, "--config sd3")]
    [InlineData(new[] { "kernels", "--plan", "--config", "sd15", "--latent", "60" }, "multiples of 8")]
    [InlineData(new[] { "kernels", "--plan", "--config", "sd15", "--latent", "64", "--sms", "0" }, "--sms 0")]
    public void Bad_arguments_are_usage_errors(string[] args, string message)
    {
        var (code, stdout, stderr) = Sd(args);
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        Assert.Contains(message, stderr);
        Assert.Single(stderr.TrimEnd().Split('\n'));
    }

    [Fact]
    public void Unet_bench_lists_each_distinct_shape_once_for_the_pytorch_side()
    {
        var (code, stdout, _) = Sd("bench", "--unet", "sd15", "--latent", "64", "--batch", "2", "--list");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(stdout);
        var cases = doc.RootElement.EnumerateArray().Select(c => c.GetRawText()).ToList();
        Assert.Equal(cases.Count, cases.Distinct().Count());
        var gemms = StableDiffusion.Models.Unet.UNetGemms.Enumerate(StableDiffusion.Models.Unet.UNetGemms.ConfigJson("sd15"), 64, 64, 2);
        Assert.True(cases.Count < gemms.Count);
        var ops = doc.RootElement.EnumerateArray().Select(c => c.GetProperty("op").GetString()).ToHashSet();
        Assert.Equal(new HashSet<string?> { "linear", "conv2d" }, ops);
        // The stride-2 downsampling convolution at 64x64 → 32x32 and 320 channels, padding 1, as PyTorch is asked to time it.
        Assert.Contains(doc.RootElement.EnumerateArray(), c => c.GetProperty("op").GetString() == "conv2d"
            && c.GetProperty("shape").GetProperty("stride").GetInt32() == 2 && c.GetProperty("shape").GetProperty("h").GetInt32() == 64
            && c.GetProperty("shape").GetProperty("cin").GetInt32() == 320 && c.GetProperty("shape").GetProperty("pad").GetInt32() == 1);
    }
}
