using System.Text.Json;
using StableDiffusion.IO;
using StableDiffusion.Models;
using StableDiffusion.Models.Vae;
using StableDiffusion.Runtime;
using StableDiffusion.Schedulers;
using StableDiffusion.TestSupport;
using StableDiffusion.TestSupport.Torch;
using TorchSharp;
using Xunit.Abstractions;

namespace StableDiffusion.Pipelines.Tests;

/// <summary>
/// <c>--vae</c> on the tiny SDXL folder: another VAE (a diffusers VAE folder, and the same weights as an A1111-style
/// LDM single file) decodes the same latents as libtorch decodes them with that VAE; VAEs for other latents (SD1's
/// scaling factor, other latent channels) are refused with one line naming the file.
/// </summary>
public sealed class VaeOverrideTests(SdxlPipelineTests.TinySdxl model, ITestOutputHelper output)
    : IClassFixture<SdxlPipelineTests.TinySdxl>, IDisposable
{
    private const int Size = 32;
    private readonly TempFolder temp = new("sd-vae-override");

    public void Dispose() => temp.Dispose();

    /// <summary>A diffusers VAE folder like madebyollin/sdxl-vae-fp16-fix: config.json (force_upcast false) beside its weights.</summary>
    private string WriteVaeFolder(string name, double? scaling, int latentChannels = 4, bool forceUpcast = false, ulong seed = 11)
    {
        var widths = SdxlPipelineTests.TinySdxl.VaeWidths;
        var config = new Dictionary<string, object>
        {
            ["_class_name"] = "AutoencoderKL", ["block_out_channels"] = widths,
            ["down_block_types"] = widths.Select(_ => "DownEncoderBlock2D").ToArray(),
            ["up_block_types"] = widths.Select(_ => "UpDecoderBlock2D").ToArray(),
            ["latent_channels"] = latentChannels, ["layers_per_block"] = 1, ["norm_num_groups"] = 8, ["force_upcast"] = forceUpcast,
        };
        if (scaling is double s) config["scaling_factor"] = s;
        var json = JsonSerializer.Serialize(config);
        var dir = Directory.CreateDirectory(Path.Combine(temp.Path, name)).FullName;
        File.WriteAllText(Path.Combine(dir, "config.json"), json);
        SafetensorsWriter.Write(Path.Combine(dir, "diffusion_pytorch_model.safetensors"),
            RandomWeights.Entries(new AutoencoderKL(VaeConfig.FromJson(JsonConfig.Parse(json))), seed, WeightDType.F32));
        return dir;
    }

    /// <summary>The same weights under LDM names without the first_stage_model. prefix (how A1111's VAE files come).</summary>
    private string WriteLdmFile(string folder, string name)
    {
        var path = Path.Combine(temp.Path, name);
        using var file = WeightFile.Open(Path.Combine(folder, "diffusion_pytorch_model.safetensors"));
        var entries = new List<SafetensorsEntry>();
        foreach (var t in file.Tensors)
        {
            var ldm = NameMap.ToLdm("vae", t.Name, LdmLayout.Sd1) ?? throw new InvalidOperationException($"vae/{t.Name} has no LDM name");
            Assert.Equal(1, ldm.Parts);
            var values = file.ReadFloat32(t);
            long[] shape = ldm.Squeeze ? [.. t.Shape, 1, 1] : t.Shape;
            entries.Add(new SafetensorsEntry(ldm.Ldm[NameMap.VaePrefix.Length..], WeightDType.F32, shape,
                s => s.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()))));
        }
        SafetensorsWriter.Write(path, entries);
        return path;
    }

    private GenerationResult Run(ModelSource source, VaeOverride? vae)
    {
        using var pipe = StableDiffusionPipeline.Open(source, Devices.Backend("cpu"), new PipelineOptions { Vae = vae });
        var r = new GenerationRequest { Prompt = "a red fox", NegativePrompt = "blurry", Steps = 2, GuidanceScale = 5f, Seed = 3, Width = Size, Height = Size };
        return pipe.Generate(r, Samplers.Create("euler", SchedulerConfig.Parse(pipe.SchedulerConfigJson)));
    }

    [SkippableFact]
    public void Another_vae_decodes_the_same_latents_as_libtorch_does_with_it_from_a_folder_and_an_ldm_file()
    {
        using var source = ModelSource.Open(model.Path);
        var own = Run(source, null);
        var folder = WriteVaeFolder("sdxl-vae-fix", SdxlPipelineTests.TinySdxl.ScalingFactor);
        using var vae = VaeOverride.Open(folder);
        Assert.False(vae.Config!.ForceUpcast);
        var other = Run(source, vae);
        Assert.Equal(own.Latents, other.Latents); // the VAE plays no part in text-to-image latents
        Assert.Contains(other.Notes, n => n.Contains(folder, StringComparison.Ordinal));

        using var scope = torch.NewDisposeScope();
        using var weights = WeightFile.Open(Path.Combine(folder, "diffusion_pytorch_model.safetensors"));
        var torchVae = new TorchVae(n => TestWeights.Torch(weights, n), SdxlPipelineTests.TinySdxl.VaeWidths, 1, 8, SdxlPipelineTests.TinySdxl.ScalingFactor);
        var latents = torch.tensor(other.Latents.Select(v => (double)v).ToArray(), [1, Size / 8, Size / 8, 4], torch.ScalarType.Float64);
        var image = TorchVae.Nhwc(torchVae.Decode(TorchVae.Nchw(latents))).clamp(-1, 1);
        var want = Oracle.Host(image);
        var got = other.Images[0].ToTensor();
        double worst = want.Zip(got, (a, b) => Math.Abs(a - b)).Max();
        double err = Kernels.Reference.RelativeError(got, want);
        output.WriteLine($"--vae folder: image vs libtorch decode: max |Δ| {worst:0.000e+00} (one 8-bit step is {2 / 255.0:0.000e+00}), relative {err:0.00e+00}");
        Assert.True(worst <= 1.01 / 255 * 2, $"max |Δ| {worst}"); // rounding to 8 bits, nothing more
        Assert.True(Kernels.Reference.RelativeError(own.Images[0].ToTensor(), got) > 1e-2); // the other VAE really was used

        var ldm = WriteLdmFile(folder, "sdxl_vae.safetensors");
        using var single = VaeOverride.Open(ldm);
        Assert.Null(single.Config); // a single file takes the model's config
        var fromFile = Run(source, single);
        Assert.Equal(other.Images[0].Pixels, fromFile.Images[0].Pixels);

        // fp16: a VAE whose config says force_upcast false decodes in fp16, and stderr says which.
        var (stdout, stderr) = (new StringWriter(), new StringWriter());
        int code = Cli.Cli.Run(["generate", "--model", model.Path, "--prompt", "x", "--steps", "1", "--device", "cpu", "--precision", "fp16",
            "--width", "32", "--height", "32", "--vae", folder, "--output", Path.Combine(temp.Path, "fp16.png")], stdout, stderr);
        output.WriteLine(stderr.ToString());
        Assert.Equal(0, code);
        Assert.Contains($"the VAE from {folder} decoded in fp16 (its config.json says it is fp16-safe: force_upcast false)", stderr.ToString());
        var parameters = Images.ImageFiles.ReadPngText(Path.Combine(temp.Path, "fp16.png"))["parameters"];
        Assert.Matches(@"Model: sd-tiny-sdxl-[0-9a-f]+, VAE hash: [0-9a-f]{10}, VAE: diffusion_pytorch_model\.safetensors(,|$)", parameters);
    }

    [SkippableFact]
    public void A_vae_for_other_latents_is_refused_with_one_line_naming_it()
    {
        using var source = ModelSource.Open(model.Path);
        var sd1 = WriteVaeFolder("sd15-vae", scaling: null, forceUpcast: true); // no scaling_factor: SD1's 0.18215
        using (var vae = VaeOverride.Open(sd1))
        {
            var e = Assert.Throws<WeightsException>(() => StableDiffusionPipeline.Open(source, Devices.Backend("cpu"), new PipelineOptions { Vae = vae }));
            output.WriteLine(e.Message);
            Assert.Contains(sd1, e.Message);
            Assert.Contains("0.18215 (SD 1.x/2.x)", e.Message);
            Assert.Contains("0.13025 (SDXL)", e.Message);
            Assert.DoesNotContain('\n', e.Message);
        }
        var wide = WriteLdmFile(WriteVaeFolder("flux-like", SdxlPipelineTests.TinySdxl.ScalingFactor, latentChannels: 8), "wide.safetensors");
        using (var vae = VaeOverride.Open(wide))
        {
            var e = Assert.Throws<WeightsException>(() => StableDiffusionPipeline.Open(source, Devices.Backend("cpu"), new PipelineOptions { Vae = vae }));
            Assert.Contains(wide, e.Message);
            Assert.Contains("8 latent channels", e.Message);
        }
        var notVae = Path.Combine(model.Path, "unet", "diffusion_pytorch_model.safetensors");
        Assert.Contains("not a VAE", Assert.Throws<WeightsException>(() => VaeOverride.Open(notVae)).Message);

        // Through the command line: exit 1, one line, nothing written.
        var png = Path.Combine(temp.Path, "x.png");
        var (o, err) = (new StringWriter(), new StringWriter());
        int code = Cli.Cli.Run(["generate", "--model", model.Path, "--prompt", "x", "--steps", "1", "--device", "cpu",
            "--width", "32", "--height", "32", "--vae", sd1, "--output", png], o, err);
        output.WriteLine(err.ToString());
        Assert.Equal(1, code);
        Assert.False(File.Exists(png));
        Assert.Single(err.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.Contains(sd1, StringComparison.Ordinal));

        // --vae and --taesd both replace the VAE: a usage error.
        (o, err) = (new StringWriter(), new StringWriter());
        Assert.Equal(2, Cli.Cli.Run(["generate", "--model", model.Path, "--prompt", "x", "--vae", sd1, "--taesd", sd1, "--output", png], o, err));
        Assert.Contains("--vae and --taesd", err.ToString());
    }
}
