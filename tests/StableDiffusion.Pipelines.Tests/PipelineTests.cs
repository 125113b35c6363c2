using StableDiffusion.Pipelines.Images;
using StableDiffusion.Pipelines.Tests.Support;
using StableDiffusion.Runtime;
using StableDiffusion.Schedulers;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.Pipelines.Tests;

/// <summary>
/// The pipeline through its library API on the ILGPU CPU accelerator with the tiny random model: text-to-image and
/// image-to-image against a libtorch float64 implementation of the same pipeline (<see cref="TorchPipeline"/>),
/// inpainting (latent blending and the 9-channel UNet), what must change the image, progress, cancellation, model
/// release and the fp16 VAE fallback. Images are 32×32 (4×4 latents) and most runs take one step without guidance:
/// the CPU accelerator simulates a GPU thread by thread, and a UNet step costs seconds even at these sizes.
/// </summary>
[Collection(TinyModelCollection.Name)]
public class PipelineTests(TinyModels models, ITestOutputHelper output)
{
    private const int Size = 32, Latent = Size / 8;

    private static GenerationRequest Request(string prompt = "a red fox in the snow") => new()
    {
        Prompt = prompt, NegativePrompt = "blurry", Steps = 4, GuidanceScale = 7.5f, Seed = 42, Width = Size, Height = Size,
    };

    /// <summary>The cheapest run: one step, no guidance (one prompt, batch 1 through the UNet).</summary>
    private static GenerationRequest Quick(string prompt = "a red fox in the snow") => Request(prompt) with { Steps = 1, GuidanceScale = 1f };

    private static IScheduler Euler(StableDiffusionPipeline p) => Samplers.Create("euler", SchedulerConfig.Parse(p.SchedulerConfigJson));

    private static TorchTensor Nchw(float[] nhwc, int n, int h, int w, int c) =>
        Oracle.T(nhwc, n, h, w, c).permute(0, 3, 1, 2);

    private double Compare(string what, float[] oursNhwc, TorchTensor wantNchw)
    {
        var want = Oracle.Host(wantNchw.permute(0, 2, 3, 1));
        double err = Kernels.Reference.RelativeError(oursNhwc, want);
        output.WriteLine($"{what}: relative error {err:0.00e+00}");
        return err;
    }

    /// <summary>A smooth test picture: red rising to the right, green downwards, blue constant.</summary>
    private static RgbImage Picture(int w, int h, byte blue = 96)
    {
        var p = new byte[w * h * 3];
        for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
        {
            int i = (y * w + x) * 3;
            p[i] = (byte)(x * 255 / (w - 1));
            p[i + 1] = (byte)(y * 255 / (h - 1));
            p[i + 2] = blue;
        }
        return new RgbImage(w, h, p);
    }

    [SkippableTheory]
    [InlineData("test")]
    [InlineData("cpu")]
    public void Text_to_image_matches_libtorch_on_the_final_latents(string backend)
    {
        var pipe = models.Pipeline(models.Base, backend: backend);
        var r = Request();
        var euler = Euler(pipe);
        var steps = new List<StepProgress>();
        var result = pipe.Generate(r, euler, new SyncProgress<StepProgress>(steps.Add));
        Assert.Equal(Size, result.Images[0].Width);
        Assert.Equal(new[] { 1, 2, 3, 4 }, steps.Select(s => s.Step));
        Assert.Equal(euler.Timesteps, steps.Select(s => s.Timestep));
        output.WriteLine(string.Join(", ", result.Timings.Stages.Select(s => $"{s.Stage} {s.Time.TotalMilliseconds:F0} ms")));

        using var scope = torch.NewDisposeScope();
        using var reference = new TorchPipeline(models.Base);
        var context = reference.Context(pipe.Tokenizer.Tokenize(r.NegativePrompt).Ids, pipe.Tokenizer.Tokenize(r.Prompt).Ids);
        using var generator = new torch.Generator(r.Seed);
        var latents = torch.randn([1, 4, Latent, Latent], generator: generator).to_type(torch.ScalarType.Float64) * euler.InitNoiseSigma;
        var want = reference.Denoise(latents, euler, 0, context, r.GuidanceScale);

        Assert.True(Compare("final latents", result.Latents, want) <= 1e-3);
        // The image too: the libtorch VAE decoding the libtorch latents, against our pixels (8-bit, ±1 level).
        var wantImage = Oracle.Host(reference.Decode(want).permute(0, 2, 3, 1));
        var wantPixels = RgbImage.FromTensor(wantImage, Size, Size).Pixels;
        int worst = wantPixels.Zip(result.Images[0].Pixels, (a, b) => Math.Abs(a - b)).Max();
        output.WriteLine($"image: largest pixel difference {worst} levels");
        Assert.True(worst <= 1, $"pixels differ by up to {worst} levels");
    }

    [SkippableFact]
    public void Image_to_image_matches_libtorch_draw_for_draw()
    {
        var pipe = models.Pipeline(models.Base);
        var init = Picture(Size, Size);
        var r = Request() with { InitImage = init, Strength = 0.5f };
        var euler = Euler(pipe);
        var result = pipe.Generate(r, euler);
        int start = ImageToImage.Plan(euler, r.Steps, r.Strength).StartIndex;
        Assert.Equal(2, start); // int(4 · 0.5) = 2 steps run, from index 2
        Assert.Equal(2, result.Timings.UnetSteps.Count());

        using var scope = torch.NewDisposeScope();
        using var reference = new TorchPipeline(models.Base);
        var context = reference.Context(pipe.Tokenizer.Tokenize(r.NegativePrompt).Ids, pipe.Tokenizer.Tokenize(r.Prompt).Ids);
        using var generator = new torch.Generator(r.Seed);
        // diffusers: retrieve_latents draws the VAE sample first, then the noise for add_noise.
        var imageLatents = reference.EncodeSample(Nchw(init.ToTensor(), 1, Size, Size, 3), generator);
        var noise = torch.randn([1, 4, Latent, Latent], generator: generator).to_type(torch.ScalarType.Float64);
        var latents = imageLatents + noise * euler.Sigmas[start];
        var want = reference.Denoise(latents, euler, start, context, r.GuidanceScale);
        Assert.True(Compare("img2img final latents", result.Latents, want) <= 1e-3);
    }

    [SkippableFact]
    public void Inpainting_an_ordinary_model_keeps_the_unmasked_latents_of_the_init_image()
    {
        var pipe = models.Pipeline(models.Base);
        var init = Picture(Size, Size);
        // Repaint the left half: white there, black elsewhere.
        var r = Quick() with { InitImage = init, Mask = LeftHalf(), Strength = 1f };
        var result = pipe.Generate(r, Euler(pipe));

        // The last blend puts the clean image latents back wherever the mask is 0: the VAE's sample of the init image,
        // the generator's first draw (diffusers encodes the image before drawing the noise).
        using var scope = torch.NewDisposeScope();
        using var reference = new TorchPipeline(models.Base);
        using var generator = new torch.Generator(r.Seed);
        var imageLatents = Oracle.Host(reference.EncodeSample(Nchw(init.ToTensor(), 1, Size, Size, 3), generator).permute(0, 2, 3, 1));
        int kept = 0, repainted = 0;
        for (int y = 0; y < Latent; y++)
        for (int x = 0; x < Latent; x++)
        for (int c = 0; c < 4; c++)
        {
            int i = (y * Latent + x) * 4 + c;
            if (x >= Latent / 2)
            {
                Assert.True(Math.Abs(result.Latents[i] - imageLatents[i]) <= 1e-4 * (1 + Math.Abs(imageLatents[i])),
                    $"kept latent ({y}, {x}, {c}): {result.Latents[i]} vs image latent {imageLatents[i]}");
                kept++;
            }
            else if (Math.Abs(result.Latents[i] - imageLatents[i]) > 1e-2) repainted++;
        }
        output.WriteLine($"{kept} latents kept, {repainted} of {kept} repainted ones moved");
        Assert.True(repainted > kept / 2);
    }

    [SkippableFact]
    public void The_inpainting_model_takes_mask_and_masked_image_latents()
    {
        var pipe = models.Pipeline(models.Inpainting);
        Assert.True(pipe.IsInpaintingModel);
        var init = Picture(Size, Size);
        var r = Quick() with { InitImage = init, Mask = LeftHalf(), Strength = 1f };
        var a = pipe.Generate(r, Euler(pipe));
        Assert.Equal(Size, a.Images[0].Height);
        // The UNet sees the masked image: another init picture changes the result even at strength 1.
        var b = pipe.Generate(r with { InitImage = Picture(Size, Size, blue: 250) }, Euler(pipe));
        Assert.NotEqual(a.Latents, b.Latents);
        Assert.Contains("inpainting model", Assert.Throws<UsageException>(() => pipe.Generate(Quick(), Euler(pipe))).Message);
    }

    [SkippableFact]
    public void Cancellation_stops_the_loop_between_steps()
    {
        var pipe = models.Pipeline(models.Base);
        using var cts = new CancellationTokenSource();
        var seen = 0;
        Assert.Throws<OperationCanceledException>(() => pipe.Generate(Quick() with { Steps = 3 }, Euler(pipe), new SyncProgress<StepProgress>(_ =>
        {
            if (++seen == 1) cts.Cancel();
        }), cts.Token));
        Assert.Equal(1, seen);
    }

    [SkippableFact]
    public void The_prompt_the_guidance_and_the_UNet_each_change_the_image()
    {
        // DESIGN.md §8: a random model can hide a broken part; each input must move the image, the UNet most of all.
        var pipe = models.Pipeline(models.Base);
        var r = Request() with { Steps = 1 };
        var baseline = pipe.Generate(r, Euler(pipe)).Images[0];
        var zeroed = models.Pipeline(models.ZeroUnetOutput);
        // Measured (mean levels over the 32×32 image): prompt 45, guidance 23, seed 65, zeroed UNet 40. A UNet whose
        // output did not reach the image moved it by 2.5 levels when one 'leading' step started from t = 1.
        var changes = new (string What, double AtLeast, RgbImage Image)[]
        {
            ("another prompt", 10, pipe.Generate(r with { Prompt = "a lighthouse at night" }, Euler(pipe)).Images[0]),
            ("guidance 2 instead of 7.5", 5, pipe.Generate(r with { GuidanceScale = 2f }, Euler(pipe)).Images[0]),
            ("another seed", 10, pipe.Generate(r with { Seed = 43 }, Euler(pipe)).Images[0]),
            ("the UNet's output zeroed", 10, zeroed.Generate(r, Euler(zeroed)).Images[0]),
        };
        output.WriteLine($"baseline: mean level {baseline.Pixels.Average(p => (double)p):F1}, {baseline.Pixels.Count(p => p is 0 or 255)} of {baseline.Pixels.Length} saturated");
        foreach (var (what, atLeast, image) in changes)
        {
            double mean = baseline.Pixels.Zip(image.Pixels, (a, b) => Math.Abs(a - b)).Average();
            output.WriteLine($"{what}: mean pixel change {mean:F1} levels");
            Assert.True(mean >= atLeast, $"{what} moved the image by only {mean:F2} levels on average (at least {atLeast} expected)");
        }
    }

    [SkippableFact]
    public void Released_models_give_their_device_memory_back()
    {
        var pool = Devices.Device.Pool;
        using var source = IO.ModelSource.Open(models.Base.Path);
        long before = pool.BytesInUse;
        using (var pipe = StableDiffusionPipeline.Open(source, Devices.Ops("test"), new PipelineOptions { ReleaseModelsAfterUse = true }))
        {
            var result = pipe.Generate(Quick(), Euler(pipe));
            Assert.Contains(result.Timings.Stages, s => s.Stage == "load unet");
            Assert.Equal(before, pool.BytesInUse); // every weight and activation is back
        }
        Assert.Equal(before, pool.BytesInUse);
    }

    [SkippableFact]
    public void An_fp16_VAE_that_overflows_is_decoded_again_in_fp32()
    {
        var pipe = models.Pipeline(models.Fp16VaeOverflow, new PipelineOptions { DType = DType.F16 });
        var result = pipe.Generate(Quick(), Euler(pipe));
        Assert.Contains(result.Notes, n => n.Contains("decoded again in fp32"));
        // The bias of 10^6 saturates every pixel to white.
        Assert.All(result.Images[0].Pixels, p => Assert.Equal(255, p));
        Assert.Equal(2, result.Timings.Stages.Count(s => s.Stage == "vae decode"));
    }

    /// <summary>A mask that repaints the left half of the image.</summary>
    private static RgbImage LeftHalf() =>
        new(Size, Size, Enumerable.Range(0, Size * Size * 3).Select(i => (byte)(i / 3 % Size < Size / 2 ? 255 : 0)).ToArray());

    /// <summary>IProgress that reports on the caller's thread (Progress&lt;T&gt; posts to the thread pool).</summary>
    private sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
