using StableDiffusion.IO;
using StableDiffusion.Pipelines.Images;
using StableDiffusion.Runtime;
using StableDiffusion.Schedulers;
using StableDiffusion.TestSupport;
using StableDiffusion.TestSupport.Torch;
using TorchSharp;
using Xunit.Abstractions;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.Pipelines.Tests;

/// <summary>
/// SDXL image-to-image and inpainting (base UNet, latent blending) on the tiny SDXL folder, draw for draw as the SD1
/// checks in <see cref="PipelineTests"/>: the VAE's sample of the init image first, then the noise; the final
/// img2img latents against libtorch in float64 with SDXL's conditioning; inpainting keeps the unmasked image latents.
/// </summary>
public sealed class SdxlImageToImageTests(SdxlPipelineTests.TinySdxl model, ITestOutputHelper output) : IClassFixture<SdxlPipelineTests.TinySdxl>
{
    [Fact]
    public void The_sdxl_inpainting_unet_takes_mask_and_masked_image_latents_from_a_folder_or_a_single_file()
    {
        using var temp = new TempFolder("sd-sdxl-inpaint");
        var (o, e) = (new StringWriter(), new StringWriter());
        var folder = Path.Combine(temp.Path, "m");
        var file = Path.Combine(temp.Path, "m.safetensors");
        Assert.Equal(0, Cli.Cli.Run(["random-model", "--config", "sdxl-inpaint-tiny", "--out", folder, "--dtype", "fp32"], o, e));
        Assert.Equal(0, Cli.Cli.Run(["random-model", "--config", "sdxl-inpaint-tiny", "--format", "single-file", "--out", file], o, e));
        using (var single = ModelSource.Open(file))
            Assert.Equal(9, ModelConfigs.For(single).Unet.InChannels); // the built-in SDXL config takes conv_in's width from the file

        using var source = ModelSource.Open(folder);
        Assert.Equal(ModelFamily.Sdxl, source.Family);
        using var pipe = StableDiffusionPipeline.Open(source, Devices.Backend("cpu"), new PipelineOptions());
        Assert.True(pipe.IsInpaintingModel);
        var r = new GenerationRequest { Prompt = "a red fox", Steps = 2, GuidanceScale = 5f, Seed = 4, Width = Size, Height = Size, InitImage = Picture(), Mask = LeftHalf(), Strength = 1f };
        IScheduler Euler() => Samplers.Create("euler", SchedulerConfig.Parse(pipe.SchedulerConfigJson));
        var a = pipe.Generate(r, Euler());
        var flipped = Picture();
        for (int i = 0; i < flipped.Pixels.Length; i++) flipped.Pixels[i] = (byte)(255 - flipped.Pixels[i]);
        var b = pipe.Generate(r with { InitImage = flipped }, Euler());
        Assert.NotEqual(a.Latents, b.Latents); // at strength 1 only the masked image's latents carry the picture
        Assert.Contains("inpainting model", Assert.Throws<UsageException>(() => pipe.Generate(r with { InitImage = null, Mask = null }, Euler())).Message);
    }

    private const int Size = 32, Latent = Size / 8;

    private static RgbImage Picture()
    {
        var p = new byte[Size * Size * 3];
        for (int y = 0; y < Size; y++)
        for (int x = 0; x < Size; x++)
        {
            int i = (y * Size + x) * 3;
            (p[i], p[i + 1], p[i + 2]) = ((byte)(x * 255 / (Size - 1)), (byte)(y * 255 / (Size - 1)), 96);
        }
        return new RgbImage(Size, Size, p);
    }

    private static RgbImage LeftHalf()
    {
        var p = new byte[Size * Size * 3];
        for (int y = 0; y < Size; y++)
        for (int x = 0; x < Size / 2; x++)
            p[(y * Size + x) * 3] = p[(y * Size + x) * 3 + 1] = p[(y * Size + x) * 3 + 2] = 255;
        return new RgbImage(Size, Size, p);
    }

    private static TorchTensor Nchw(float[] hwc) =>
        torch.tensor(hwc.Select(v => (double)v).ToArray(), [1, Size, Size, 3], torch.ScalarType.Float64).permute(0, 3, 1, 2);

    private TorchTensor EncodeSample(WeightFile vaeFile, float[] image, torch.Generator generator)
    {
        var vae = new TorchVae(n => TestWeights.Torch(vaeFile, n), SdxlPipelineTests.TinySdxl.VaeWidths, 1, 8, SdxlPipelineTests.TinySdxl.ScalingFactor);
        var moments = vae.Encode(Nchw(image));
        var mean = moments[.., ..4];
        var std = torch.exp(0.5 * torch.clamp(moments[.., 4..], -30, 20));
        var eps = torch.randn(mean.shape, generator: generator).to_type(torch.ScalarType.Float64);
        return (mean + std * eps) * SdxlPipelineTests.TinySdxl.ScalingFactor;
    }

    [SkippableFact]
    public void Img2img_final_latents_match_libtorch_draw_for_draw()
    {
        using var source = ModelSource.Open(model.Path);
        using var pipe = StableDiffusionPipeline.Open(source, Devices.Backend("cpu"), new PipelineOptions());
        var init = Picture();
        var r = new GenerationRequest { Prompt = "a red fox", NegativePrompt = "blurry", Steps = 4, GuidanceScale = 5f, Seed = 9, Width = Size, Height = Size, InitImage = init, Strength = 0.6f };
        IScheduler Euler() => Samplers.Create("euler", SchedulerConfig.Parse(pipe.SchedulerConfigJson));
        var result = pipe.Generate(r, Euler());
        var euler = Euler();
        euler.SetTimesteps(r.Steps);
        int start = ImageToImage.Plan(euler, r.Steps, r.Strength).StartIndex;
        Assert.True(start > 0);

        using var scope = torch.NewDisposeScope();
        using var unetFile = model.Open("unet");
        using var clipFile = model.Open("text_encoder");
        using var bigGFile = model.Open("text_encoder_2");
        using var vaeFile = model.Open("vae");
        var unet = new TorchUNet(SdxlPipelineTests.TinySdxl.Unet, n => TestWeights.Torch(unetFile, n));
        var clip = new TorchClip(SdxlPipelineTests.TinySdxl.Clip, n => TestWeights.Torch(clipFile, n));
        var bigG = new TorchClip(SdxlPipelineTests.TinySdxl.BigG, n => TestWeights.Torch(bigGFile, n));
        int[] ids1 = [.. pipe.Tokenizer.Tokenize(r.NegativePrompt).Ids, .. pipe.Tokenizer.Tokenize(r.Prompt).Ids];
        int[] ids2 = [.. pipe.Tokenizer2!.Tokenize(r.NegativePrompt).Ids, .. pipe.Tokenizer2.Tokenize(r.Prompt).Ids];
        var context = torch.cat([clip.Penultimate(ids1, 2, 77), bigG.Penultimate(ids2, 2, 77)], -1);
        var pooled = bigG.Pooled(ids2, 2, 77);
        float[] ids = [Size, Size, 0, 0, Size, Size, Size, Size, 0, 0, Size, Size];
        using var generator = new torch.Generator(r.Seed);
        var imageLatents = EncodeSample(vaeFile, init.ToTensor(), generator); // diffusers: the VAE sample first, then the noise
        var noise = torch.randn([1, 4, Latent, Latent], generator: generator).to_type(torch.ScalarType.Float64);
        var latents = imageLatents + noise * euler.Sigmas[start];
        for (int i = start; i < euler.Timesteps.Count; i++)
        {
            double sigma = euler.Sigmas[i];
            var input = latents / Math.Sqrt(sigma * sigma + 1);
            float t = (float)euler.Timesteps[i];
            var eps = unet.Forward(torch.cat([input, input], 0), [t, t], context, pooled, ids).chunk(2, 0);
            latents = latents + (eps[0] + r.GuidanceScale * (eps[1] - eps[0])) * (euler.Sigmas[i + 1] - sigma);
        }
        double err = Kernels.Reference.RelativeError(result.Latents, Oracle.Host(latents.permute(0, 2, 3, 1)));
        new Oracle(output).Record("SDXL img2img latents", $"strength 0.6, 4 euler steps (from {start}), cfg 5, {Size}x{Size}", DType.F32, err, 1e-3);
        Assert.True(err <= 1e-3, $"relative error {err:0.00e+00}");
    }

    [SkippableFact]
    public void Inpainting_with_the_base_unet_keeps_the_unmasked_image_latents()
    {
        using var source = ModelSource.Open(model.Path);
        using var pipe = StableDiffusionPipeline.Open(source, Devices.Backend("cpu"), new PipelineOptions());
        Assert.False(pipe.IsInpaintingModel);
        var init = Picture();
        var r = new GenerationRequest { Prompt = "a red fox", Steps = 2, GuidanceScale = 5f, Seed = 4, Width = Size, Height = Size, InitImage = init, Mask = LeftHalf(), Strength = 1f };
        var result = pipe.Generate(r, Samplers.Create("euler", SchedulerConfig.Parse(pipe.SchedulerConfigJson)));

        using var scope = torch.NewDisposeScope();
        using var vaeFile = model.Open("vae");
        using var generator = new torch.Generator(r.Seed);
        var imageLatents = Oracle.Host(EncodeSample(vaeFile, init.ToTensor(), generator).permute(0, 2, 3, 1));
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
}
