using StableDiffusion.IO;
using StableDiffusion.Pipelines.Adapters;
using StableDiffusion.Pipelines.Images;
using StableDiffusion.Pipelines.Tests.Support;
using StableDiffusion.TestSupport;
using Xunit.Abstractions;

namespace StableDiffusion.Pipelines.Tests.Adapters;

/// <summary>
/// LoRA from the prompt to the PNG: A1111's tags, <c>sd generate</c> with <c>--lora</c>/<c>--lora-dir</c> on the tiny
/// model (the LoRA changes the image, the infotext keeps the tag and records A1111's Lora hashes), and the errors.
/// The merge itself is checked against libtorch in the models' tests.
/// </summary>
[Collection(TinyModelCollection.Name)]
public class LoraTests(TinyModels models, ITestOutputHelper output) : IDisposable
{
    private readonly TempFolder temp = new("sd-lora-tests");

    public void Dispose() => temp.Dispose();

    // ---- tags ----

    [Fact]
    public void Tags_are_removed_from_the_prompt_with_their_weights()
    {
        var (clean, loras) = LoraTags.Extract("a cat, <lora:pixel_art:0.8> in a hat <lora:Detail Tweaker> and <lora:x:-1.5e-1>");
        Assert.Equal("a cat,  in a hat  and ", clean);
        Assert.Equal([("pixel_art", 0.8f), ("Detail Tweaker", 1f), ("x", -0.15f)], loras);
        Assert.Equal(("no tags (lora:x) <lyco:y>", 0), (LoraTags.Extract("no tags (lora:x) <lyco:y>").CleanPrompt, LoraTags.Extract("no tags (lora:x) <lyco:y>").Loras.Count));
        Assert.Equal("", LoraTags.Extract("<lora:a:1>").CleanPrompt);
    }

    [Theory]
    [InlineData("<lora:x:abc>", "<lora:x:abc>: the weight 'abc' is not a number")]
    [InlineData("a <lora::1>", "<lora::1>: the tag names no LoRA")]
    [InlineData("<lora:x:>", "<lora:x:>: the weight '' is not a number")]
    [InlineData("<lora:x:0.5:1>", "only <lora:NAME> and <lora:NAME:WEIGHT> are supported")]
    public void A_bad_tag_is_a_usage_error_naming_it(string prompt, string message) =>
        Assert.Contains(message, Assert.Throws<UsageException>(() => LoraTags.Extract(prompt)).Message);

    // ---- sd generate ----

    private (int Code, string Out, string Err) Sd(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Cli.Cli.Run(args, o, e);
        output.WriteLine($"sd {string.Join(" ", args)}\n→ {code}\n{o}{e}");
        return (code, o.ToString(), e.ToString());
    }

    private string Out(string name) => Path.Combine(temp.Path, name);

    private string[] Generate(string prompt, string output, params string[] more) =>
    [
        "generate", "--model", models.Base.Path, "--prompt", prompt, "--negative-prompt", "blurry",
        "--steps", "1", "--sampler", "euler", "--seed", "42", "--width", "32", "--height", "32",
        "--device", "cpu", "--output", output, .. more,
    ];

    /// <summary>A kohya LoRA on the tiny model's first self-attention query (UNet) and first text-encoder query.</summary>
    private string WriteLora(string dir, string name, bool forAnotherModel = false)
    {
        Directory.CreateDirectory(dir);
        using var unet = models.Base.OpenWeights("unet");
        using var te = models.Base.OpenWeights("text_encoder");
        var targets = new[]
        {
            ("lora_unet_", unet.Tensors.First(t => t.Name.EndsWith("attn1.to_q.weight", StringComparison.Ordinal))),
            (forAnotherModel ? "lora_te2_" : "lora_te_", te.Tensors.First(t => t.Name.EndsWith("self_attn.q_proj.weight", StringComparison.Ordinal))),
        };
        var rng = new Random(3);
        var entries = new List<SafetensorsEntry>();
        foreach (var (prefix, t) in targets)
        {
            var stem = prefix + t.Name[..^".weight".Length].Replace('.', '_');
            long o = t.Shape[0], i = t.Shape[1];
            byte[] Values(long n) => Enumerable.Range(0, (int)n).SelectMany(_ => BitConverter.GetBytes((float)(rng.NextDouble() * 2 - 1))).ToArray();
            entries.Add(SafetensorsEntry.FromBytes(stem + ".lora_down.weight", WeightDType.F32, [2, i], Values(2 * i)));
            entries.Add(SafetensorsEntry.FromBytes(stem + ".lora_up.weight", WeightDType.F32, [o, 2], Values(2 * o)));
            entries.Add(SafetensorsEntry.FromBytes(stem + ".alpha", WeightDType.F32, [], BitConverter.GetBytes(2f)));
        }
        var path = Path.Combine(dir, name + ".safetensors");
        SafetensorsWriter.Write(path, entries);
        return path;
    }

    [SkippableFact]
    public void A_tag_merges_the_lora_and_the_png_records_the_tag_and_its_hash()
    {
        var dir = Out("loras");
        var path = WriteLora(dir, "fox_style");
        using (var f = LoraFile.Open(path)) Assert.Equal(2, f.Modules.Count);

        Assert.Equal(0, Sd(Generate("a red fox", Out("plain.png"))).Code);
        var (code, _, err) = Sd(Generate("a red fox <lora:fox_style:0.9>", Out("lora.png"), "--lora-dir", dir));
        Assert.Equal(0, code);
        var parameters = ImageFiles.ReadPngText(Out("lora.png"))[ImageFiles.ParametersKeyword];
        output.WriteLine(parameters);
        string hash;
        using (var f = LoraFile.Open(path)) hash = f.ShortHash();
        Assert.StartsWith("a red fox <lora:fox_style:0.9>\nNegative prompt: blurry\n", parameters);
        Assert.EndsWith($", Lora hashes: \"fox_style: {hash}\"", parameters);
        Assert.Contains("lora hashes", err);

        // The LoRA changed the image; the same merge through --lora gives the same image as the tag.
        var plain = ImageFiles.Read(Out("plain.png")).ToTensor();
        var withLora = ImageFiles.Read(Out("lora.png")).ToTensor();
        double moved = plain.Zip(withLora, (a, b) => Math.Abs(a - b)).Average();
        output.WriteLine($"mean |Δ| with the LoRA: {moved:0.0000} (of 2)");
        Assert.True(moved > 0.01, $"the LoRA moved the image by only {moved}");
        Assert.Equal(0, Sd(Generate("a red fox", Out("flag.png"), "--lora", path + ":0.9")).Code);
        Assert.Equal(withLora, ImageFiles.Read(Out("flag.png")).ToTensor());
    }

    public static TheoryData<string, string[], int, string> Errors() => new()
    {
        { "a <lora:missing:1>", [], 1, "<lora:missing>: no missing.safetensors, missing.ckpt or missing.pt in" },
        { "a <lora:fox_style:abc>", [], 2, "<lora:fox_style:abc>: the weight 'abc' is not a number" },
        { "a", ["--lora", "{dir}/fox_style.safetensors:heavy"], 2, "the weight 'heavy' is not a number" },
        { "a", ["--lora", "{dir}/nothing.safetensors"], 1, "nothing.safetensors: LoRA file not found" },
        { "a <lora:xl_style>", [], 1, "xl_style.safetensors: LoRA does not fit this model: 1 of 2 modules matched" },
        { "a <lora:../fox_style>", [], 2, "a LoRA tag names a file in --lora-dir, without a path" },
    };

    [SkippableTheory]
    [MemberData(nameof(Errors))]
    public void Bad_loras_are_one_line_errors_and_nothing_is_written(string prompt, string[] more, int exit, string message)
    {
        var dir = Out("loras");
        WriteLora(dir, "fox_style");
        WriteLora(dir, "xl_style", forAnotherModel: true);
        var (code, stdout, stderr) = Sd(Generate(prompt, Out("x.png"), [.. more.Select(m => m.Replace("{dir}", dir)), "--lora-dir", dir]));
        Assert.Equal(exit, code);
        Assert.Equal("", stdout);
        Assert.Contains(message, stderr);
        Assert.Single(stderr.Trim().Split('\n'), l => l.StartsWith("sd: error: ", StringComparison.Ordinal));
        Assert.False(File.Exists(Out("x.png")));
    }

    [Fact]
    public void Infotext_puts_lora_hashes_last_quoted_like_a1111()
    {
        var text = Infotext.Format(new GenerationParameters
        {
            Prompt = "a <lora:a:0.5>", Steps = 20, Sampler = "euler_a", CfgScale = 7, Seed = 1, Width = 512, Height = 512,
            LoraHashes = "a: 0123456789ab, b: ba9876543210",
        });
        Assert.Equal("a <lora:a:0.5>\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Lora hashes: \"a: 0123456789ab, b: ba9876543210\"", text);
    }
}
