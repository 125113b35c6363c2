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
/// Base + refiner on tiny SDXL-shaped folders against the same two-stage loop written with libtorch in float64: the
/// base runs the timesteps ≥ round(T − switch·T) from noise (denoising_end), the refiner (bigG alone, add_time_ids =
/// original size, crop, aesthetic score 6 / 2.5) the rest on the same latents (denoising_start), Euler throughout.
/// </summary>
public sealed class SdxlRefinerTests(SdxlPipelineTests.TinySdxl baseModel, ITestOutputHelper output)
    : IClassFixture<SdxlPipelineTests.TinySdxl>, IDisposable
{
    private const int Size = 32, Latent = Size / 8;

    // The refiner's structure at small widths: cross-attention on bigG's width, 5 time ids (2560 = 5·256 + 1280 full size).
    private static readonly UNetSpec RefinerUnet = new()
    {
        Channels = [32, 64], CrossAttn = [false, true], Heads = [4, 8], CrossAttentionDim = SdxlPipelineTests.TinySdxl.BigG.HiddenSize,
        Groups = 8, LayersPerBlock = 1, LinearProjection = true, TransformerDepths = [1, 2], AdditionTimeDim = 8, AdditionInputDim = 16 + 5 * 8,
    };

    private readonly TempFolder temp = new("sd-tiny-refiner");

    public void Dispose() => temp.Dispose();

    private string WriteRefiner()
    {
        var root = temp.Path;
        void Component(string name, string json, string file, Module module, ulong seed)
        {
            var dir = Directory.CreateDirectory(Path.Combine(root, name)).FullName;
            File.WriteAllText(Path.Combine(dir, "config.json"), json);
            SafetensorsWriter.Write(Path.Combine(dir, file), RandomWeights.Entries(module, seed, WeightDType.F32));
        }
        var unetJson = RefinerUnet.ToConfigJson();
        Component("unet", unetJson, "diffusion_pytorch_model.safetensors", new UNet2DConditionModel(UNetConfig.FromJson(JsonConfig.Parse(unetJson))), 21);
        var baseVae = Path.Combine(baseModel.Path, "vae");
        var vaeJson = File.ReadAllText(Path.Combine(baseVae, "config.json"));
        Component("vae", vaeJson, "diffusion_pytorch_model.safetensors", new AutoencoderKL(VaeConfig.FromJson(JsonConfig.Parse(vaeJson))), 22);
        var bigG = SdxlPipelineTests.TinySdxl.BigG;
        var te2 = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["architectures"] = new[] { "CLIPTextModelWithProjection" }, ["hidden_act"] = "gelu", ["hidden_size"] = bigG.HiddenSize,
            ["intermediate_size"] = bigG.IntermediateSize, ["num_hidden_layers"] = bigG.NumHiddenLayers,
            ["num_attention_heads"] = bigG.NumAttentionHeads, ["projection_dim"] = bigG.ProjectionDim, ["vocab_size"] = bigG.VocabSize,
        });
        Component("text_encoder_2", te2, "model.safetensors", new ClipTextModelWithProjection(bigG), 24);
        var tok = Directory.CreateDirectory(Path.Combine(root, "tokenizer_2")).FullName;
        foreach (var f in Directory.GetFiles(Path.Combine(baseModel.Path, "tokenizer_2"))) File.Copy(f, Path.Combine(tok, Path.GetFileName(f)));
        Directory.CreateDirectory(Path.Combine(root, "scheduler"));
        File.Copy(Path.Combine(baseModel.Path, "scheduler", "scheduler_config.json"), Path.Combine(root, "scheduler", "scheduler_config.json"));
        File.WriteAllText(Path.Combine(root, "model_index.json"), """
            {"_class_name": "StableDiffusionXLImg2ImgPipeline", "force_zeros_for_empty_prompt": false, "requires_aesthetics_score": true,
             "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": [null, null],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": [null, null],
             "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
            """);
        return root;
    }

    private static WeightFile Open(string root, string component) =>
        WeightFile.Open(Directory.GetFiles(Path.Combine(root, component), "*.safetensors").Single());

    [SkippableFact]
    public void Base_then_refiner_matches_the_libtorch_two_stage_loop()
    {
        var refinerPath = WriteRefiner();
        using var baseSource = ModelSource.Open(baseModel.Path);
        using var refinerSource = ModelSource.Open(refinerPath);
        Assert.Equal(ModelFamily.SdxlRefiner, refinerSource.Family);
        var ops = Devices.Backend("cpu");
        using var basePipe = StableDiffusionPipeline.Open(baseSource, ops, new PipelineOptions());
        using var refiner = StableDiffusionPipeline.Open(refinerSource, ops, new PipelineOptions());
        Assert.True(refiner.Configs.IsRefiner);
        Assert.Contains("is an SDXL refiner", Assert.Throws<UsageException>(() => refiner.Validate(new GenerationRequest { Prompt = "x", Width = Size, Height = Size })).Message);
        var r = new GenerationRequest { Prompt = "a red fox in the snow", NegativePrompt = "", Steps = 4, GuidanceScale = 5f, Seed = 11, Width = Size, Height = Size };
        const float switchAt = 0.5f;
        var first = basePipe.Generate(r with { DenoisingEnd = switchAt, LatentsOnly = true }, Samplers.Create("euler", SchedulerConfig.Parse(basePipe.SchedulerConfigJson)));
        Assert.Empty(first.Images);
        var euler = Samplers.Create("euler", SchedulerConfig.Parse(refiner.SchedulerConfigJson));
        var steps = new List<double>();
        var result = refiner.Generate(r with { DenoisingStart = switchAt, Latents = first.Latents }, euler,
            new Progress(p => steps.Add(p.Timestep)));
        Assert.Equal([499.0, 249.0], steps); // trailing spacing 999, 749 | 499, 249: the cutoff is round(1000 − 0.5·1000) = 500
        Assert.Equal(Size, result.Images[0].Width);

        using var scope = torch.NewDisposeScope();
        using var unetFile = Open(baseModel.Path, "unet");
        using var clipFile = Open(baseModel.Path, "text_encoder");
        using var bigGFile = Open(baseModel.Path, "text_encoder_2");
        using var refUnetFile = Open(refinerPath, "unet");
        using var refBigGFile = Open(refinerPath, "text_encoder_2");
        var unet = new TorchUNet(SdxlPipelineTests.TinySdxl.Unet, n => TestWeights.Torch(unetFile, n));
        var clip = new TorchClip(SdxlPipelineTests.TinySdxl.Clip, n => TestWeights.Torch(clipFile, n));
        var bigG = new TorchClip(SdxlPipelineTests.TinySdxl.BigG, n => TestWeights.Torch(bigGFile, n));
        var refUnet = new TorchUNet(RefinerUnet, n => TestWeights.Torch(refUnetFile, n));
        var refBigG = new TorchClip(SdxlPipelineTests.TinySdxl.BigG, n => TestWeights.Torch(refBigGFile, n));
        int[] ids1 = [.. basePipe.Tokenizer.Tokenize(r.NegativePrompt).Ids, .. basePipe.Tokenizer.Tokenize(r.Prompt).Ids];
        int[] ids2 = [.. basePipe.Tokenizer2!.Tokenize(r.NegativePrompt).Ids, .. basePipe.Tokenizer2.Tokenize(r.Prompt).Ids];

        // Base: force_zeros_for_empty_prompt zeroes the empty negative; the refiner's model_index says false.
        var context = torch.cat([clip.Penultimate(ids1, 2, 77), bigG.Penultimate(ids2, 2, 77)], -1);
        var pooled = bigG.Pooled(ids2, 2, 77);
        context[0] = torch.zeros_like(context[0]);
        pooled[0] = torch.zeros_like(pooled[0]);
        float[] baseIds = [Size, Size, 0, 0, Size, Size, Size, Size, 0, 0, Size, Size];
        var refContext = refBigG.Penultimate(ids2, 2, 77);
        var refPooled = refBigG.Pooled(ids2, 2, 77);
        float[] refIds = [Size, Size, 0, 0, 2.5f, Size, Size, 0, 0, 6f];

        using var generator = new torch.Generator(r.Seed);
        var latents = torch.randn([1, 4, Latent, Latent], generator: generator).to_type(torch.ScalarType.Float64) * euler.InitNoiseSigma;
        var sigmas = euler.Sigmas;
        for (int i = 0; i < 4; i++)
        {
            bool refining = euler.Timesteps[i] < 500;
            double sigma = sigmas[i];
            var input = latents / Math.Sqrt(sigma * sigma + 1);
            float t = (float)euler.Timesteps[i];
            var eps = (refining
                ? refUnet.Forward(torch.cat([input, input], 0), [t, t], refContext, refPooled, refIds)
                : unet.Forward(torch.cat([input, input], 0), [t, t], context, pooled, baseIds)).chunk(2, 0);
            latents = latents + (eps[0] + r.GuidanceScale * (eps[1] - eps[0])) * (sigmas[i + 1] - sigma);
        }
        double err = Kernels.Reference.RelativeError(result.Latents, Oracle.Host(latents.permute(0, 2, 3, 1)));
        new Oracle(output).Record("SDXL base + refiner latents", $"4 euler steps switching at {switchAt}, cfg 5, {Size}x{Size}", DType.F32, err, 1e-3);
        Assert.True(err <= 1e-3, $"relative error {err:0.00e+00}");

        // The aesthetic score is conditioning: other scores move the latents.
        var other = refiner.Generate(r with { DenoisingStart = switchAt, Latents = first.Latents, AestheticScore = 9f },
            Samplers.Create("euler", SchedulerConfig.Parse(refiner.SchedulerConfigJson)));
        Assert.True(Kernels.Reference.RelativeError(other.Latents, result.Latents) > 1e-4);
    }

    [Fact]
    public void The_full_size_refiner_is_told_from_the_base_by_its_add_embedding_width()
    {
        // stable-diffusion-xl-refiner-1.0: 5 × 256 + 1280 = 2560; base-1.0: 6 × 256 + 1280 = 2816 (diffusers and SGM names).
        Assert.Equal(ModelFamily.SdxlRefiner, ModelFamilies.Detect([("unet/add_embedding.linear_1.weight", [1536, 2560])]));
        Assert.Equal(ModelFamily.Sdxl, ModelFamilies.Detect([("unet/add_embedding.linear_1.weight", [1280, 2816])]));
        Assert.Equal(ModelFamily.SdxlRefiner, ModelFamilies.Detect([("conditioner.embedders.0.model.ln_final.weight", [1280]), ("model.diffusion_model.label_emb.0.0.weight", [1536, 2560])]));
        Assert.Equal("sdxl-refiner", ModelFamily.SdxlRefiner.Name());
    }

    [SkippableFact]
    public void A_refiner_alone_or_a_base_as_refiner_is_refused_with_one_line()
    {
        var refinerPath = WriteRefiner();
        var png = Path.Combine(temp.Path, "x.png");
        (int, string) Sd(params string[] more)
        {
            var (o, e) = (new StringWriter(), new StringWriter());
            int code = Cli.Cli.Run(["generate", "--prompt", "x", "--steps", "2", "--device", "cpu", "--width", "32", "--height", "32",
                "--output", png, .. more], o, e);
            output.WriteLine(e.ToString());
            return (code, e.ToString());
        }
        var (code, err) = Sd("--model", refinerPath);
        Assert.Equal(2, code);
        Assert.Contains("is an SDXL refiner", err);
        (code, err) = Sd("--model", baseModel.Path, "--refiner", baseModel.Path);
        Assert.Equal(2, code);
        Assert.Contains("not an SDXL refiner", err);
        (code, err) = Sd("--model", baseModel.Path, "--refiner", refinerPath, "--refiner-switch", "1");
        Assert.Equal(2, code);
        Assert.False(File.Exists(png));
        (code, err) = Sd("--model", baseModel.Path, "--refiner", refinerPath, "--sampler", "euler");
        Assert.Equal(0, code);
        Assert.True(File.Exists(png));
        Assert.Contains("refiner load unet", err);
    }

    [Fact]
    public void Random_tiny_refiner_has_the_refiner_layout_and_refines_a_random_tiny_base()
    {
        var (o, e) = (new StringWriter(), new StringWriter());
        var refiner = Path.Combine(temp.Path, "refiner");
        var base_ = Path.Combine(temp.Path, "base");
        Assert.Equal(0, Cli.Cli.Run(["random-model", "--config", "sdxl-refiner-tiny", "--out", refiner], o, e));
        Assert.Equal(0, Cli.Cli.Run(["random-model", "--config", "sdxl-tiny", "--out", base_], o, e));
        Assert.False(Directory.Exists(Path.Combine(refiner, "text_encoder")));
        Assert.False(Directory.Exists(Path.Combine(refiner, "tokenizer")));
        using (var source = ModelSource.Open(refiner))
        {
            Assert.Equal(ModelFamily.SdxlRefiner, source.Family);
            using var pipe = StableDiffusionPipeline.Open(source, Devices.Backend("cpu"), new PipelineOptions());
            Assert.True(pipe.Configs.IsRefiner);
            Assert.Equal(32 + 5 * 8, pipe.Configs.Unet.Addition!.InputDim); // pooled + 5 time ids
        }
        Assert.Equal(2, Cli.Cli.Run(["random-model", "--config", "sdxl-refiner-tiny", "--format", "single-file", "--out", Path.Combine(temp.Path, "r.safetensors")], o, e));
        var png = Path.Combine(temp.Path, "refined.png");
        int code = Cli.Cli.Run(["generate", "--model", base_, "--refiner", refiner, "--prompt", "x", "--steps", "4", "--sampler", "euler",
            "--device", "cpu", "--output", png], o, e);
        output.WriteLine(e.ToString());
        Assert.Equal(0, code);
        Assert.True(File.Exists(png));
        var parameters = Images.ImageFiles.ReadPngText(png)["parameters"];
        output.WriteLine(parameters);
        Assert.Matches(@", Refiner: refiner \[[0-9a-f]{10}\], Refiner switch at: 0\.8$", parameters);
    }

    private sealed class Progress(Action<StepProgress> report) : IProgress<StepProgress>
    {
        public void Report(StepProgress value) => report(value);
    }
}
