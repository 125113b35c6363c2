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
}
