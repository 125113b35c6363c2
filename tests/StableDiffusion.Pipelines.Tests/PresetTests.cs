using System.Text.Json;
using StableDiffusion.Cli;
using StableDiffusion.IO;
using StableDiffusion.Runtime;
using StableDiffusion.Schedulers;
using StableDiffusion.TestSupport;
using StableDiffusion.TestSupport.Torch;
using TorchSharp;
using Xunit.Abstractions;

namespace StableDiffusion.Pipelines.Tests;

/// <summary>
/// <c>--preset turbo|lcm</c>: trailing spacing walks diffusers' published timesteps, CFG 0/1 runs no unconditional
/// pass (the negative prompt cannot matter, and the latents are libtorch's conditional-only loop), and the model's
/// scheduler config implies the preset when none is given.
/// </summary>
public sealed class PresetTests(SdxlPipelineTests.TinySdxl model, ITestOutputHelper output)
    : IClassFixture<SdxlPipelineTests.TinySdxl>, IDisposable
{
    private const int Size = 32, Latent = Size / 8;
    private readonly TempFolder temp = new("sd-preset-tests");

    public void Dispose() => temp.Dispose();

    private (int Code, string Out, string Err) Sd(params string[] args)
    {
        var (o, e) = (new StringWriter(), new StringWriter());
        int code = Cli.Cli.Run(args, o, e);
        output.WriteLine($"sd {string.Join(" ", args)} → {code}\n{o}{e}");
        return (code, o.ToString(), e.ToString());
    }

    private const string Leading = """
        {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
         "num_train_timesteps": 1000, "steps_offset": 1, "timestep_spacing": "leading", "prediction_type": "epsilon"}
        """;

    [Fact]
    public void Trailing_spacing_gives_diffusers_published_timesteps_and_the_scheduler_config_implies_the_preset()
    {
        var config = Path.Combine(temp.Path, "scheduler_config.json");
        File.WriteAllText(config, Leading);
        // "Common Diffusion Noise Schedules and Sample Steps are Flawed" (Lin et al. 2024), table 2, as diffusers'
        // timestep_spacing="trailing" implements it; SDXL-Turbo's single step is t = 999.
        var published = new Dictionary<int, double[]>
        {
            [1] = [999], [4] = [999, 749, 499, 249], [10] = [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
        };
        foreach (var (steps, want) in published)
        {
            var (code, json, _) = Sd("schedule", "--config", config, "--sampler", "euler", "--steps", $"{steps}", "--spacing", "trailing");
            Assert.Equal(0, code);
            using var doc = JsonDocument.Parse(json);
            Assert.Equal(want, doc.RootElement.GetProperty("timesteps").EnumerateArray().Select(t => t.GetDouble()));
            var turbo = Samplers.Create("euler", SchedulerConfig.Parse(Leading), spacing: GenerationPreset.Turbo.Spacing);
            turbo.SetTimesteps(steps);
            Assert.Equal(want, turbo.Timesteps);
        }

        Assert.Same(GenerationPreset.Turbo, GenerationPreset.Resolve(null, Leading.Replace("\"leading\"", "\"trailing\""), out bool implied));
        Assert.True(implied);
        Assert.Same(GenerationPreset.Lcm, GenerationPreset.Resolve(null, Leading.Replace("EulerDiscreteScheduler", "LCMScheduler"), out _));
        Assert.Null(GenerationPreset.Resolve(null, Leading, out _));
        Assert.Null(GenerationPreset.Resolve("default", Leading.Replace("\"leading\"", "\"trailing\""), out implied));
        Assert.False(implied);
        Assert.Equal((1, 0f, 512, 4), (GenerationPreset.Turbo.Steps, GenerationPreset.Turbo.Cfg, GenerationPreset.Turbo.Size, GenerationPreset.Turbo.MaxSteps));
        Assert.Equal((4, 1f, "lcm"), (GenerationPreset.Lcm.Steps, GenerationPreset.Lcm.Cfg, GenerationPreset.Lcm.Sampler));
    }

    [SkippableTheory]
    [InlineData(0f)]
    [InlineData(1f)]
    public void Cfg_0_and_1_run_no_unconditional_pass(float cfg)
    {
        using var source = ModelSource.Open(model.Path);
        using var pipe = StableDiffusionPipeline.Open(source, Devices.Backend("cpu"), new PipelineOptions());
        var r = new GenerationRequest { Prompt = "a red fox", NegativePrompt = "blurry", Steps = 2, GuidanceScale = cfg, Seed = 5, Width = Size, Height = Size };
        IScheduler Euler() => Samplers.Create("euler", SchedulerConfig.Parse(pipe.SchedulerConfigJson));
        var a = pipe.Generate(r, Euler());
        var b = pipe.Generate(r with { NegativePrompt = "a sharp photo of a lighthouse" }, Euler());
        Assert.Equal(a.Latents, b.Latents); // bit for bit: the negative prompt was never encoded nor run
        var guided = pipe.Generate(r with { GuidanceScale = 1.5f }, Euler());
        Assert.True(Kernels.Reference.RelativeError(guided.Latents, a.Latents) > 1e-4); // above 1 it is

        // libtorch: the conditional batch alone (one image, no [uncond, cond] pair) through the same Euler loop.
        using var scope = torch.NewDisposeScope();
        using var unetFile = model.Open("unet");
        using var clipFile = model.Open("text_encoder");
        using var bigGFile = model.Open("text_encoder_2");
        var unet = new TorchUNet(SdxlPipelineTests.TinySdxl.Unet, n => TestWeights.Torch(unetFile, n));
        var clip = new TorchClip(SdxlPipelineTests.TinySdxl.Clip, n => TestWeights.Torch(clipFile, n));
        var bigG = new TorchClip(SdxlPipelineTests.TinySdxl.BigG, n => TestWeights.Torch(bigGFile, n));
        var ids1 = pipe.Tokenizer.Tokenize(r.Prompt).Ids.ToArray();
        var ids2 = pipe.Tokenizer2!.Tokenize(r.Prompt).Ids.ToArray();
        var context = torch.cat([clip.Penultimate(ids1, 1, 77), bigG.Penultimate(ids2, 1, 77)], -1);
        var pooled = bigG.Pooled(ids2, 1, 77);
        var euler = Euler();
        euler.SetTimesteps(2);
        using var generator = new torch.Generator(r.Seed);
        var latents = torch.randn([1, 4, Latent, Latent], generator: generator).to_type(torch.ScalarType.Float64) * euler.InitNoiseSigma;
        for (int i = 0; i < 2; i++)
        {
            double sigma = euler.Sigmas[i];
            var eps = unet.Forward(latents / Math.Sqrt(sigma * sigma + 1), [(float)euler.Timesteps[i]], context, pooled, [Size, Size, 0, 0, Size, Size]);
            latents = latents + eps * (euler.Sigmas[i + 1] - sigma);
        }
        double err = Kernels.Reference.RelativeError(a.Latents, Oracle.Host(latents.permute(0, 2, 3, 1)));
        new Oracle(output).Record("SDXL latents without guidance", $"cfg {cfg}, 2 euler steps, {Size}x{Size}", DType.F32, err, 1e-3);
        Assert.True(err <= 1e-3, $"relative error {err:0.00e+00}");
    }

    [SkippableFact]
    public void The_command_line_applies_the_preset_where_no_flag_was_given()
    {
        string png = Path.Combine(temp.Path, "t.png");
        string[] run = ["generate", "--model", model.Path, "--prompt", "x", "--device", "cpu", "--width", "32", "--height", "32", "--output", png, "--overwrite"];
        // The tiny folder's scheduler config says trailing: turbo is implied.
        var (code, _, err) = Sd(run);
        Assert.Equal(0, code);
        Assert.Contains("sd: preset turbo (the model's scheduler config implies it; --preset default for none): 1 step, cfg 0 (no unconditional pass)", err);
        Assert.Contains("1 step of euler_a, cfg 0", err);
        (code, _, err) = Sd([.. run, "--preset", "lcm"]);
        Assert.Equal(0, code);
        Assert.Contains("4 steps of lcm, cfg 1", err);
        (code, _, err) = Sd([.. run, "--preset", "default", "--steps", "2"]);
        Assert.DoesNotContain("preset", err);
        Assert.Contains("2 steps of euler_a, cfg 7.5", err);
        (code, _, err) = Sd([.. run, "--preset", "turbo", "--steps", "6"]);
        Assert.Equal(2, code);
        Assert.Contains("--preset turbo: 6 steps; a turbo model takes 1 to 4", err);
        Assert.Equal(2, Sd([.. run, "--preset", "fast"]).Code);
    }
}
