using System.Text.Json;
using StableDiffusion.IO;
using StableDiffusion.Models;
using StableDiffusion.Models.Clip;
using StableDiffusion.Models.Unet;
using StableDiffusion.Models.Vae;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using StableDiffusion.TestSupport.Torch;

namespace StableDiffusion.Pipelines.Tests.Support;

/// <summary>
/// A Stable Diffusion 1.x model at toy widths, written as a real diffusers folder (model_index.json, unet/, vae/,
/// text_encoder/ with config.json and random safetensors weights from the modules' own parameter lists, SD1.5's
/// tokenizer/, an Euler scheduler_config.json), as small as the ILGPU CPU accelerator needs (it simulates every GPU
/// thread, and each kernel launch costs milliseconds): UNet [32, 64] with one resnet per block and attention only at the
/// inner level (one head of 64; our attention kernel needs head widths that are multiples of 8), cross-attention 32;
/// a 2-layer CLIP of width 32 with one head; a 4-block VAE of widths [8, 8, 16, 16] (latents 1/8 of the image, as in SD);
/// Euler with 'trailing' spacing, whose single step starts from pure noise ('leading' would run one step from t = 1,
/// where the UNet has next to no say). The norm scales are near 1 (<see cref="RandomWeights"/>), so the prompt, the
/// seed and the UNet all visibly matter (DESIGN.md §8).
/// </summary>
public sealed class TinyModel : IDisposable
{
    public static readonly UNetSpec Unet = new()
    {
        Channels = [32, 64], CrossAttn = [false, true], Heads = [1], CrossAttentionDim = 32, Groups = 8, LayersPerBlock = 1,
    };

    public static readonly ClipTextConfig TextEncoder = new(
        VocabSize: 49408, HiddenSize: 32, IntermediateSize: 64, NumHiddenLayers: 2, NumAttentionHeads: 1,
        MaxPositionEmbeddings: 77, HiddenAct: Activation.QuickGelu, LayerNormEps: 1e-5f);

    public static readonly int[] VaeWidths = [8, 8, 16, 16];
    public const int VaeGroups = 8, VaeLayers = 1;
    public const double ScalingFactor = 0.18215;

    public const string SchedulerConfig = """
        {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
         "num_train_timesteps": 1000, "steps_offset": 1, "timestep_spacing": "trailing", "prediction_type": "epsilon"}
        """;

    private readonly TempFolder folder;

    private TinyModel(TempFolder folder) => this.folder = folder;

    public string Path => folder.Path;

    /// <summary>
    /// Writes the model. <paramref name="inpainting"/> gives the UNet 9 input channels; <paramref name="zeroUnetOutput"/>
    /// zeroes its conv_out, so the UNet predicts no noise at all (the check that the UNet matters);
    /// <paramref name="vaeOverflowsInFp16"/> lets the VAE run in the pipeline's precision (force_upcast false) and biases
    /// its last convolution by 10^6, beyond fp16's range (65504), so an fp16 decode gives Inf and an fp32 one does not.
    /// </summary>
    public static TinyModel Write(bool inpainting = false, bool zeroUnetOutput = false, bool vaeOverflowsInFp16 = false, ulong seed = 1)
    {
        var tokenizer = SharedReference.Require("configs", "sd15", "tokenizer"); // skips the test where it is absent
        var folder = new TempFolder(inpainting ? "sd-tiny-inpaint" : "sd-tiny");
        var unetSpec = Unet with { InChannels = inpainting ? 9 : 4 };
        Component(folder.Path, "unet", unetSpec.ToConfigJson(), "diffusion_pytorch_model.safetensors",
            RandomWeights.Entries(new UNet2DConditionModel(UNetConfig.FromJson(JsonConfig.Parse(unetSpec.ToConfigJson()))), seed, WeightDType.F32)
                .Select(e => zeroUnetOutput && e.Name.StartsWith("conv_out.", StringComparison.Ordinal) ? e with { WriteData = null } : e));
        var vaeJson = VaeJson(forceUpcast: !vaeOverflowsInFp16);
        var huge = Enumerable.Repeat(1e6f, 3).SelectMany(BitConverter.GetBytes).ToArray();
        Component(folder.Path, "vae", vaeJson, "diffusion_pytorch_model.safetensors",
            RandomWeights.Entries(new AutoencoderKL(VaeConfig.FromJson(JsonConfig.Parse(vaeJson))), seed + 1, WeightDType.F32)
                .Select(e => vaeOverflowsInFp16 && e.Name == "decoder.conv_out.bias" ? SafetensorsEntry.FromBytes(e.Name, e.DType, e.Shape, huge) : e));
        var clipJson = ClipJson();
        Component(folder.Path, "text_encoder", clipJson, "model.safetensors",
            RandomWeights.Entries(new ClipTextModel(ClipTextConfig.From(JsonConfig.Parse(clipJson))), seed + 2, WeightDType.F32));

        var tokenizerCopy = Directory.CreateDirectory(System.IO.Path.Combine(folder.Path, "tokenizer")).FullName;
        foreach (var f in Directory.GetFiles(tokenizer)) File.Copy(f, System.IO.Path.Combine(tokenizerCopy, System.IO.Path.GetFileName(f)));
        Directory.CreateDirectory(System.IO.Path.Combine(folder.Path, "scheduler"));
        File.WriteAllText(System.IO.Path.Combine(folder.Path, "scheduler", "scheduler_config.json"), SchedulerConfig);
        File.WriteAllText(System.IO.Path.Combine(folder.Path, "model_index.json"), JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["_class_name"] = inpainting ? "StableDiffusionInpaintPipeline" : "StableDiffusionPipeline",
            ["scheduler"] = new[] { "diffusers", "EulerDiscreteScheduler" },
            ["text_encoder"] = new[] { "transformers", "CLIPTextModel" },
            ["tokenizer"] = new[] { "transformers", "CLIPTokenizer" },
            ["unet"] = new[] { "diffusers", "UNet2DConditionModel" },
            ["vae"] = new[] { "diffusers", "AutoencoderKL" },
        }));
        return new TinyModel(folder);
    }

    private static void Component(string root, string name, string config, string weights, IEnumerable<SafetensorsEntry> entries)
    {
        var dir = Directory.CreateDirectory(System.IO.Path.Combine(root, name)).FullName;
        File.WriteAllText(System.IO.Path.Combine(dir, "config.json"), config);
        SafetensorsWriter.Write(System.IO.Path.Combine(dir, weights), entries);
    }

    private static string VaeJson(bool forceUpcast) => JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["force_upcast"] = forceUpcast,
        ["_class_name"] = "AutoencoderKL",
        ["act_fn"] = "silu",
        ["block_out_channels"] = VaeWidths,
        ["down_block_types"] = VaeWidths.Select(_ => "DownEncoderBlock2D").ToArray(),
        ["up_block_types"] = VaeWidths.Select(_ => "UpDecoderBlock2D").ToArray(),
        ["in_channels"] = 3,
        ["out_channels"] = 3,
        ["latent_channels"] = 4,
        ["layers_per_block"] = VaeLayers,
        ["norm_num_groups"] = VaeGroups,
        ["scaling_factor"] = ScalingFactor,
    });

    private static string ClipJson() => JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["architectures"] = new[] { "CLIPTextModel" },
        ["hidden_act"] = "quick_gelu",
        ["hidden_size"] = TextEncoder.HiddenSize,
        ["intermediate_size"] = TextEncoder.IntermediateSize,
        ["num_hidden_layers"] = TextEncoder.NumHiddenLayers,
        ["num_attention_heads"] = TextEncoder.NumAttentionHeads,
        ["max_position_embeddings"] = TextEncoder.MaxPositionEmbeddings,
        ["vocab_size"] = TextEncoder.VocabSize,
        ["layer_norm_eps"] = TextEncoder.LayerNormEps,
    });

    /// <summary>A component's weights file, for the libtorch reference.</summary>
    public WeightFile OpenWeights(string component) => WeightFile.Open(Directory.GetFiles(System.IO.Path.Combine(Path, component), "*.safetensors").Single());

    public void Dispose() => folder.Dispose();
}
