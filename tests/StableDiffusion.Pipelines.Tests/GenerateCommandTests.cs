using StableDiffusion.Cli;
using StableDiffusion.Pipelines.Images;
using StableDiffusion.Pipelines.Tests.Support;
using StableDiffusion.TestSupport;
using Xunit.Abstractions;

namespace StableDiffusion.Pipelines.Tests;

/// <summary>
/// <c>sd generate</c> through the real command-line entry (Cli.Run) on the ILGPU CPU accelerator with the tiny model:
/// the PNG, its metadata, reproducibility by seed, the summary, and the usage errors (exit 2, one line, nothing
/// written). Each run opens its own device and compiles its kernels, as the command does, so the runs are few and
/// take one step.
/// </summary>
[Collection(TinyModelCollection.Name)]
public class GenerateCommandTests : IDisposable
{
    private readonly TinyModels models;
    private readonly ITestOutputHelper output;
    private readonly TempFolder temp = new("sd-generate-tests");

    public GenerateCommandTests(TinyModels models, ITestOutputHelper output)
    {
        this.models = models;
        this.output = output;
    }

    public void Dispose() => temp.Dispose();

    private (int Code, string Out, string Err) Sd(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Cli.Cli.Run(args, o, e);
        output.WriteLine($"sd {string.Join(" ", args)}\n→ {code}\n{o}{e}");
        return (code, o.ToString(), e.ToString());
    }

    private string Out(string name) => Path.Combine(temp.Path, name);

    private string[] Generate(string output, string seed = "42", params string[] more) =>
    [
        "generate", "--model", models.Base.Path, "--prompt", "a red fox in the snow", "--negative-prompt", "blurry",
        "--steps", "1", "--cfg", "7.5", "--sampler", "euler", "--seed", seed, "--width", "64", "--height", "32",
        "--device", "cpu", "--output", output, .. more,
    ];

    [SkippableFact]
    public void Profile_prints_the_op_table_and_the_slowest_shapes_with_their_rates()
    {
        var args = Generate(Out("p.png"), "1", "--profile");
        args[Array.IndexOf(args, "--steps") + 1] = "2";
        var (code, _, stderr) = Sd(args);
        Assert.Equal(0, code);
        Assert.Contains("sd: per-op profile (each op synchronised); per UNet step: the mean of steps 2..2", stderr);
        Assert.Contains("sd: per-shape profile of linear, convolution and attention, per UNet step (steps 2..2)", stderr);
        // the tiny UNet at a 4x8 latent, CFG batch 2: its input convolution, and cross-attention over CLIP's 77 tokens
        Assert.Matches(@"\n  conv3x3 2x4x8x4>\d+ +1 +[0-9.]+ +[0-9.]+\r?\n", stderr);
        Assert.Matches(@"\n  attention 2x\d+x\d+x77x\d+ ", stderr);
        Assert.Matches(@"\n  all shapes +\d+ +[0-9.]+ +[0-9.]+", stderr);
    }

    [SkippableFact]
    public void Generate_writes_a_png_of_the_asked_size_with_its_parameters_and_the_seed_reproduces_it()
    {
        var (code, stdout, stderr) = Sd(Generate(Out("a.png")));
        Assert.Equal(0, code);
        Assert.Equal(Out("a.png"), stdout.Trim());
        var image = ImageFiles.Read(Out("a.png"));
        Assert.Equal((64, 32), (image.Width, image.Height));
        var parameters = ImageFiles.ReadPngText(Out("a.png"))[ImageFiles.ParametersKeyword];
        Assert.StartsWith("a red fox in the snow\nNegative prompt: blurry\nSteps: 1, Sampler: Euler, CFG scale: 7.5, Seed: 42, Size: 64x32, Model hash: ", parameters);
        Assert.Matches(@"Model hash: [0-9a-f]{10}, Model: sd-tiny-", parameters);
        foreach (var part in new[] { "step 1/1 [####################]", "where the time went", "text encoder", "unet", "vae decode", "write png", "total", "peak device memory" })
            Assert.Contains(part, stderr);

        Assert.Equal(0, Sd(Generate(Out("b.png"))).Code);
        Assert.Equal(File.ReadAllBytes(Out("a.png")), File.ReadAllBytes(Out("b.png")));
        Assert.Equal(0, Sd(Generate(Out("c.png"), seed: "43")).Code);
        Assert.NotEqual(image.Pixels, ImageFiles.Read(Out("c.png")).Pixels);

        // The same file again is refused unless --overwrite is given.
        var (again, _, err) = Sd(Generate(Out("a.png")));
        Assert.Equal(2, again);
        Assert.Contains("exists; pass --overwrite", err);
    }

    /// <summary>
    /// The whole user path on the C# CPU backend: <c>sd random-model</c> writes the tiny SD1.5 layout (with CLIP's
    /// vocabulary), <c>sd generate</c> runs 4 steps of Euler a with guidance on it.
    /// </summary>
    [SkippableFact]
    public void A_model_from_sd_random_model_generates_through_the_cli()
    {
        // No --tokenizer: the folder gets CLIP's built-in vocabulary, so it is complete with nothing beside the repository.
        var model = Out("sd15-tiny");
        Assert.Equal(0, Sd("random-model", "--config", "sd15-tiny", "--out", model).Code);
        Assert.True(File.Exists(Path.Combine(model, "tokenizer", "vocab.json")) && File.Exists(Path.Combine(model, "tokenizer", "merges.txt")));
        string[] Run(string output, string seed) =>
        [
            "generate", "--model", model, "--prompt", "a lighthouse at dusk", "--steps", "4", "--sampler", "euler_a",
            "--seed", seed, "--width", "64", "--height", "48", "--device", "cpu", "--output", output,
        ];
        var (code, stdout, stderr) = Sd(Run(Out("r1.png"), "7"));
        Assert.True(code == 0, stderr);
        Assert.Equal(Out("r1.png"), stdout.Trim());
        Assert.Contains("device: CPU", stderr);
        var image = ImageFiles.Read(Out("r1.png"));
        Assert.Equal((64, 48), (image.Width, image.Height));
        var parameters = ImageFiles.ReadPngText(Out("r1.png"))[ImageFiles.ParametersKeyword];
        Assert.StartsWith("a lighthouse at dusk\nSteps: 4, Sampler: Euler a, CFG scale: 7.5, Seed: 7, Size: 64x48, Model hash: ", parameters);
        Assert.Equal(0, Sd(Run(Out("r2.png"), "7")).Code);
        Assert.Equal(File.ReadAllBytes(Out("r1.png")), File.ReadAllBytes(Out("r2.png")));
        Assert.Equal(0, Sd(Run(Out("r3.png"), "8")).Code);
        Assert.NotEqual(image.Pixels, ImageFiles.Read(Out("r3.png")).Pixels);
    }

    [SkippableFact]
    public void Inpainting_takes_the_init_images_size_rounded_to_the_model_and_records_the_strength()
    {
        // 70x40 rounds down to 64x32, the tiny model's multiple of 16; the mask repaints the left half.
        var init = new RgbImage(70, 40, Enumerable.Range(0, 70 * 40 * 3).Select(i => (byte)(i * 13 % 256)).ToArray());
        var mask = new RgbImage(70, 40, Enumerable.Range(0, 70 * 40 * 3).Select(i => (byte)(i / 3 % 70 < 35 ? 255 : 0)).ToArray());
        ImageFiles.SavePng(init, Out("init.png"), null, false);
        ImageFiles.SavePng(mask, Out("mask.png"), null, false);
        var args = Generate(Out("inpaint.png")).ToList();
        args.RemoveRange(args.IndexOf("--width"), 4); // --width 64 --height 32
        var (code, _, stderr) = Sd([.. args, "--init-image", Out("init.png"), "--mask", Out("mask.png")]);
        Assert.Equal(0, code);
        Assert.Contains("inpainting 64x32", stderr);
        Assert.Contains("vae encode", stderr);
        var image = ImageFiles.Read(Out("inpaint.png"));
        Assert.Equal((64, 32), (image.Width, image.Height));
        Assert.Contains("Size: 64x32, Model hash: ", ImageFiles.ReadPngText(Out("inpaint.png"))[ImageFiles.ParametersKeyword]);
        Assert.Contains("Denoising strength: 1", ImageFiles.ReadPngText(Out("inpaint.png"))[ImageFiles.ParametersKeyword]);
    }

    /// <summary>The arguments with <paramref name="option"/>'s value replaced, or the option added.</summary>
    private static string[] With(string[] args, params string[] option)
    {
        int i = Array.IndexOf(args, option[0]);
        if (i < 0) return [.. args, .. option];
        var copy = args.ToArray();
        if (option.Length > 1) copy[i + 1] = option[1];
        return copy;
    }

    public static TheoryData<string[], string> UsageErrors() => new()
    {
        { ["--width", "65"], "--width '65': must be a multiple of 8" },
        { ["--height", "0"], "--height '0': must be a multiple of 8" },
        { ["--width", "72"], "width 72: this model needs a multiple of 16" },
        { ["--steps", "0"], "--steps '0': must be an integer from 1 to 1000" },
        { ["--cfg", "lots"], "--cfg 'lots': must be a number" },
        { ["--sampler", "nope"], "--sampler 'nope'" },
        { ["--schedule", "sideways"], "--schedule 'sideways'" },
        { ["--strength", "0.5"], "--strength needs --init-image" },
        { ["--mask", "m.png"], "--mask needs --init-image" },
        { ["--precision", "fp64"], "--precision 'fp64'" },
        { ["--seed", "lucky"], "--seed 'lucky'" },
        { ["--device", "tpu"], "--device 'tpu' is not a device" },
        { ["--frobnicate"], "unexpected argument '--frobnicate'" },
        { ["--clip-skip", "two"], "--clip-skip 'two': must be a whole number" },
        { ["--clip-skip", "9"], "--clip-skip 9: this text encoder takes 1 to" },
        { ["--embeddings-dir", "/nonexistent-embeddings"], "--embeddings-dir /nonexistent-embeddings: no such folder" },
        { ["--preview", "jpeg"], "--preview 'jpeg': use latent2rgb or taesd" },
        { ["--preview", "taesd"], "--preview taesd needs --taesd" },
        { ["--preview-every", "2"], "--preview-every and --preview-file need --preview" },
        { ["--preview", "latent2rgb", "--preview-every", "0"], "--preview-every '0'" },
        { ["--preview", "latent2rgb", "--preview-file", "p.jpg"], "--preview-file 'p.jpg'" },
        { ["--taesd", "no/such/dir/x.pth"], "--taesd 'no/such/dir/x.pth'" },
        { ["--max-memory", "3"], "--max-memory '3': give a size with a unit, e.g. 2.5G or 2500M" },
        { ["--max-memory", "0.5K"], "--max-memory '0.5K': must be between 1M and 1024T" },
        // refused before anything loads: the largest model's weights alone exceed the limit
        { ["--max-memory", "1M"], "memory limit of 1 MiB: the text encoder's weights alone take 6 MiB" },
    };

    [SkippableFact]
    public void A_memory_limit_reached_mid_run_names_the_stage_and_writes_nothing()
    {
        // Enough for the tiny model's weights, not for its activations at 512×512.
        var args = Generate(Out("x.png"));
        args[Array.IndexOf(args, "--width") + 1] = "512";
        args[Array.IndexOf(args, "--height") + 1] = "512";
        var (code, stdout, stderr) = Sd([.. args, "--max-memory", "12M"]);
        Assert.Equal(1, code);
        Assert.Matches(@"sd: error: memory limit of 12\.0 MiB reached in the (text encoder|unet|vae decode): [0-9.]+ MiB asked for", stderr);
        Assert.False(File.Exists(Out("x.png")));
        // a limit that fits changes nothing
        Assert.Equal(0, Sd([.. Generate(Out("y.png")), "--max-memory", "1G"]).Code);
        Assert.Equal(0, Sd(Generate(Out("z.png"))).Code);
        Assert.Equal(ImageFiles.Read(Out("z.png")).Pixels, ImageFiles.Read(Out("y.png")).Pixels);
    }

    [SkippableTheory]
    [MemberData(nameof(UsageErrors))]
    public void Usage_errors_exit_2_with_one_line_and_write_nothing(string[] extra, string message)
    {
        var (code, stdout, stderr) = Sd(With(Generate(Out("x.png")), extra));
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        Assert.Contains(message, stderr);
        Assert.Single(stderr.Trim().Split('\n'), l => l.StartsWith("sd: error: ", StringComparison.Ordinal));
        Assert.False(File.Exists(Out("x.png")));
    }

    [SkippableFact]
    public void Missing_inputs_are_one_line_errors()
    {
        Assert.Contains("needs --prompt", Sd("generate", "--model", models.Base.Path).Err);
        Assert.Contains("needs --model", Sd("generate", "--prompt", "x").Err);
        Assert.Contains("sd writes PNG files", Sd(Generate(Out("x.jpg"))).Err);

        var (code, _, err) = Sd([.. Generate(Out("x.png"), "42", "--init-image", Out("missing.png"))]);
        Assert.Equal(1, code);
        Assert.Contains("no such image file", err);

        // A folder without tokenizer/ takes CLIP's built-in vocabulary: the same image as with its own tokenizer.
        var copy = Out("no-tokenizer");
        foreach (var f in Directory.EnumerateFiles(models.Base.Path, "*", SearchOption.AllDirectories).Where(f => !f.Contains("/tokenizer/")))
        {
            var to = Path.Combine(copy, Path.GetRelativePath(models.Base.Path, f));
            Directory.CreateDirectory(Path.GetDirectoryName(to)!);
            File.Copy(f, to);
        }
        var noTokenizer = Generate(Out("x.png"));
        noTokenizer[2] = copy;
        (code, _, err) = Sd(noTokenizer);
        Assert.True(code == 0, err);
        Assert.Equal(0, Sd(Generate(Out("y.png"))).Code);
        Assert.Equal(ImageFiles.Read(Out("y.png")).Pixels, ImageFiles.Read(Out("x.png")).Pixels);
    }
}
