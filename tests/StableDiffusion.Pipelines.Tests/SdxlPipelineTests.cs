using System.Text.Json;
using StableDiffusion.IO;
using StableDiffusion.Models;
using StableDiffusion.Models.Clip;
using StableDiffusion.Models.Unet;
using StableDiffusion.Models.Vae;
using StableDiffusion.Runtime;
using StableDiffusion.Schedulers;
using StableDiffusion.TestSupport;
using StableDiffusion.TestSupport.Torch;
using TorchSharp;
using Xunit.Abstractions;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.Pipelines.Tests;

/// <summary>
/// The SDXL pipeline on a tiny SDXL-shaped diffusers folder (two text encoders, text_time UNet with transformer depth
/// 2, scaling factor 0.13025) against the same pipeline written with libtorch in float64: context from both encoders'
/// penultimate states, pooled bigG output, add_time_ids, guidance, 4 Euler steps.
/// </summary>
public sealed class SdxlPipelineTests(SdxlPipelineTests.TinySdxl model, ITestOutputHelper output) : IClassFixture<SdxlPipelineTests.TinySdxl>
{
    private const int Size = 32, Latent = Size / 8;

    public sealed class TinySdxl : IDisposable
    {
        public static readonly UNetSpec Unet = new()
        {
            Channels = [32, 64], CrossAttn = [false, true], Heads = [4, 8], CrossAttentionDim = 64, Groups = 8, LayersPerBlock = 1,
            LinearProjection = true, TransformerDepths = [1, 2], AdditionTimeDim = 8, AdditionInputDim = 16 + 6 * 8,
        };

        public static readonly ClipTextConfig Clip = new(49408, 32, 64, 2, 2, 77, Activation.QuickGelu, 1e-5f);
        public static readonly ClipTextConfig BigG = new(49408, 32, 64, 2, 2, 77, Activation.Gelu, 1e-5f) { ProjectionDim = 16 };
        public static readonly int[] VaeWidths = [8, 8, 16, 16];
        public const double ScalingFactor = 0.13025;

        private TempFolder? folder;

        public string Path => folder?.Path ?? Write();

        private string Write()
        {
            var tokenizer = SharedReference.Require("configs", "sd15", "tokenizer");
            folder = new TempFolder("sd-tiny-sdxl");
            var root = folder.Path;
            void Component(string name, object config, string file, Module module, ulong seed)
            {
                var dir = Directory.CreateDirectory(System.IO.Path.Combine(root, name)).FullName;
                var json = config as string ?? JsonSerializer.Serialize(config);
                File.WriteAllText(System.IO.Path.Combine(dir, "config.json"), json);
                SafetensorsWriter.Write(System.IO.Path.Combine(dir, file), RandomWeights.Entries(module, seed, WeightDType.F32));
            }
            Component("unet", Unet.ToConfigJson(), "diffusion_pytorch_model.safetensors", new UNet2DConditionModel(UNetConfig.FromJson(JsonConfig.Parse(Unet.ToConfigJson()))), 1);
            var vae = new Dictionary<string, object>
            {
                ["_class_name"] = "AutoencoderKL", ["block_out_channels"] = VaeWidths,
                ["down_block_types"] = VaeWidths.Select(_ => "DownEncoderBlock2D").ToArray(),
                ["up_block_types"] = VaeWidths.Select(_ => "UpDecoderBlock2D").ToArray(),
                ["latent_channels"] = 4, ["layers_per_block"] = 1, ["norm_num_groups"] = 8, ["scaling_factor"] = ScalingFactor,
            };
            Component("vae", vae, "diffusion_pytorch_model.safetensors", new AutoencoderKL(VaeConfig.FromJson(JsonConfig.Parse(JsonSerializer.Serialize(vae)))), 2);
            object ClipJson(ClipTextConfig c, string act, string arch) => new Dictionary<string, object>
            {
                ["architectures"] = new[] { arch }, ["hidden_act"] = act, ["hidden_size"] = c.HiddenSize,
                ["intermediate_size"] = c.IntermediateSize, ["num_hidden_layers"] = c.NumHiddenLayers,
                ["num_attention_heads"] = c.NumAttentionHeads, ["projection_dim"] = c.ProjectionDim, ["vocab_size"] = c.VocabSize,
            };
            Component("text_encoder", ClipJson(Clip, "quick_gelu", "CLIPTextModel"), "model.safetensors", new ClipTextModel(Clip), 3);
            Component("text_encoder_2", ClipJson(BigG, "gelu", "CLIPTextModelWithProjection"), "model.safetensors", new ClipTextModelWithProjection(BigG), 4);
            foreach (var (name, pad) in new[] { ("tokenizer", (string?)null), ("tokenizer_2", "!") })
            {
                var dir = Directory.CreateDirectory(System.IO.Path.Combine(root, name)).FullName;
                foreach (var f in Directory.GetFiles(tokenizer)) File.Copy(f, System.IO.Path.Combine(dir, System.IO.Path.GetFileName(f)));
                if (pad is not null)
                    File.WriteAllText(System.IO.Path.Combine(dir, "special_tokens_map.json"),
                        "{\"bos_token\": \"<|startoftext|>\", \"eos_token\": \"<|endoftext|>\", \"pad_token\": \"!\", \"unk_token\": \"<|endoftext|>\"}");
            }
            Directory.CreateDirectory(System.IO.Path.Combine(root, "scheduler"));
            File.WriteAllText(System.IO.Path.Combine(root, "scheduler", "scheduler_config.json"), """
                {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "num_train_timesteps": 1000, "steps_offset": 1, "timestep_spacing": "trailing", "prediction_type": "epsilon"}
                """);
            File.WriteAllText(System.IO.Path.Combine(root, "model_index.json"), """
                {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": true,
                 "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                 "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
                 "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
                 "vae": ["diffusers", "AutoencoderKL"]}
                """);
            return root;
        }

        public WeightFile Open(string component) =>
            WeightFile.Open(Directory.GetFiles(System.IO.Path.Combine(Path, component), "*.safetensors").Single());

        public void Dispose() => folder?.Dispose();
    }

    private static TorchTensor Nchw(TorchTensor nhwc) => nhwc.permute(0, 3, 1, 2);

    /// <summary>The final latents of the libtorch float64 SDXL pipeline: CFG on [uncond, cond], Euler updates.</summary>
    private TorchTensor Reference(StableDiffusionPipeline pipe, GenerationRequest r, IScheduler euler, bool zeroNegative)
    {
        using var unetFile = model.Open("unet");
        using var clipFile = model.Open("text_encoder");
        using var bigGFile = model.Open("text_encoder_2");
        var unet = new TorchUNet(TinySdxl.Unet, n => TestWeights.Torch(unetFile, n));
        var clip = new TorchClip(TinySdxl.Clip, n => TestWeights.Torch(clipFile, n));
        var bigG = new TorchClip(TinySdxl.BigG, n => TestWeights.Torch(bigGFile, n));
        int[] ids1 = [.. pipe.Tokenizer.Tokenize(r.NegativePrompt).Ids, .. pipe.Tokenizer.Tokenize(r.Prompt).Ids];
        int[] ids2 = [.. pipe.Tokenizer2!.Tokenize(r.NegativePrompt).Ids, .. pipe.Tokenizer2.Tokenize(r.Prompt).Ids];
        Assert.Equal(0, ids2[^1]); // tokenizer_2 pads with "!" (id 0)
        var context = torch.cat([clip.Penultimate(ids1, 2, 77), bigG.Penultimate(ids2, 2, 77)], -1);
        var pooled = bigG.Pooled(ids2, 2, 77);
        if (zeroNegative)
        {
            context[0] = torch.zeros_like(context[0]);
            pooled[0] = torch.zeros_like(pooled[0]);
        }
        float[] ids = [r.Height, r.Width, 0, 0, r.Height, r.Width];
        using var generator = new torch.Generator(r.Seed);
        var latents = torch.randn([1, 4, Latent, Latent], generator: generator).to_type(torch.ScalarType.Float64) * euler.InitNoiseSigma;
        var sigmas = euler.Sigmas;
        for (int i = 0; i < euler.Timesteps.Count; i++)
        {
            double sigma = sigmas[i];
            var input = latents / Math.Sqrt(sigma * sigma + 1);
            float t = (float)euler.Timesteps[i];
            var eps = unet.Forward(torch.cat([input, input], 0), [t, t], context, pooled, [.. ids, .. ids]).chunk(2, 0);
            latents = latents + (eps[0] + r.GuidanceScale * (eps[1] - eps[0])) * (sigmas[i + 1] - sigma);
        }
        return latents;
    }

    [SkippableTheory]
    [InlineData("a red fox in the snow", "blurry", "cpu", 4)]
    [InlineData("a red fox in the snow", "", "cpu", 4)] // force_zeros_for_empty_prompt: the negative half is zeros
    [InlineData("a red fox in the snow", "blurry", "test", 1)] // the ILGPU kernels (CPU accelerator: one step keeps it short)
    public void Final_latents_after_euler_steps_match_libtorch(string prompt, string negative, string backend, int steps)
    {
        var root = model.Path;
        using var source = ModelSource.Open(root);
        Assert.Equal(ModelFamily.Sdxl, source.Family);
        using var pipe = StableDiffusionPipeline.Open(source, Devices.Backend(backend), new PipelineOptions());
        Assert.Equal(16, pipe.SizeMultiple); // the VAE's 8 × the UNet's one halving (the real SDXL halves twice: 32)
        var r = new GenerationRequest { Prompt = prompt, NegativePrompt = negative, Steps = steps, GuidanceScale = 5f, Seed = 7, Width = Size, Height = Size };
        var euler = Samplers.Create("euler", SchedulerConfig.Parse(pipe.SchedulerConfigJson));
        var result = pipe.Generate(r, euler);
        Assert.Equal(Size, result.Images[0].Width);

        using var scope = torch.NewDisposeScope();
        var want = Reference(pipe, r, euler, zeroNegative: negative.Length == 0);
        var got = result.Latents;
        double err = Kernels.Reference.RelativeError(got, Oracle.Host(want.permute(0, 2, 3, 1)));
        new Oracle(output).Record("SDXL pipeline latents", $"{steps} euler steps, cfg 5, negative \"{negative}\", {Size}x{Size}", DType.F32, err, 1e-3);
        Assert.True(err <= 1e-3, $"relative error {err:0.00e+00}");
        if (backend != "cpu") return;

        // The conditioning must matter: another prompt moves the latents far beyond the tolerance.
        var other = pipe.Generate(r with { Prompt = "a blue house by the sea" }, Samplers.Create("euler", SchedulerConfig.Parse(pipe.SchedulerConfigJson)));
        double moved = Kernels.Reference.RelativeError(other.Latents, got);
        output.WriteLine($"another prompt moved the latents by {moved:0.000e+00}");
        Assert.True(moved > 1e-2);
    }

    [SkippableFact]
    public void Sizes_follow_the_unet_and_a_missing_second_encoder_is_one_line()
    {
        using var source = ModelSource.Open(model.Path);
        using var pipe = StableDiffusionPipeline.Open(source, Devices.Backend("cpu"), new PipelineOptions());
        var e = Assert.Throws<UsageException>(() => pipe.Validate(new GenerationRequest { Prompt = "x", Width = 40, Height = 64 }));
        Assert.Contains("width 40: this model needs a multiple of 16", e.Message);
        Assert.Equal(512, pipe.DefaultSize); // no sample_size in the tiny config

        using var copy = new TempFolder("sd-sdxl-no-te2");
        foreach (var f in Directory.GetFiles(model.Path)) File.Copy(f, System.IO.Path.Combine(copy.Path, System.IO.Path.GetFileName(f)));
        foreach (var d in new[] { "unet", "vae", "text_encoder", "tokenizer", "tokenizer_2", "scheduler" })
        {
            Directory.CreateDirectory(System.IO.Path.Combine(copy.Path, d));
            foreach (var f in Directory.GetFiles(System.IO.Path.Combine(model.Path, d)))
                File.Copy(f, System.IO.Path.Combine(copy.Path, d, System.IO.Path.GetFileName(f)));
        }
        var index = System.IO.Path.Combine(copy.Path, "model_index.json");
        File.WriteAllText(index, File.ReadAllText(index).Replace("\"text_encoder_2\": [\"transformers\", \"CLIPTextModelWithProjection\"]", "\"text_encoder_2\": [null, null]"));
        using var broken = ModelSource.Open(copy.Path);
        var w = Assert.Throws<WeightsException>(() => StableDiffusionPipeline.Open(broken, Devices.Backend("cpu"), new PipelineOptions()));
        Assert.Contains("text_encoder_2", w.Message);
        Assert.DoesNotContain('\n', w.Message);
    }
}
