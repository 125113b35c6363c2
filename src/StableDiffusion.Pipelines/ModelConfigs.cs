using System.Text.Json.Nodes;
using StableDiffusion.IO;
using StableDiffusion.Models;
using StableDiffusion.Models.Clip;
using StableDiffusion.Models.Unet;
using StableDiffusion.Models.Vae;

namespace StableDiffusion.Pipelines;

/// <summary>
/// The configurations a pipeline builds its models and sampler from. A diffusers folder brings its own config.json
/// files; a single checkpoint file brings none, so its family's published configurations stand in (what diffusers'
/// from_single_file does): SD1.x → stable-diffusion-v1-5, SD2.x → stable-diffusion-2-1-base (512, ε) or
/// stable-diffusion-2-1 (768, v-prediction), inpainting variants → the same with a 9-channel UNet. The two SD2.x
/// kinds have the same tensors, so which one a file is comes from <c>prediction</c> (given) or <c>detect</c> (its
/// UNet run once, <see cref="PredictionProbe"/>). A given prediction type also overrides a diffusers folder's.
/// </summary>
public sealed record ModelConfigs(UNetConfig Unet, VaeConfig Vae, ClipTextConfig TextEncoder, string SchedulerConfigJson, string SchedulerSource)
{
    /// <summary>SDXL's second text encoder (OpenCLIP bigG with projection); null for SD1.x/SD2.x.</summary>
    public ClipTextConfig? TextEncoder2 { get; init; }

    /// <summary>model_index.json's force_zeros_for_empty_prompt (SDXL; diffusers' default true): an empty negative prompt is zeros.</summary>
    public bool ForceZerosForEmptyPrompt { get; init; }

    public bool IsSdxl => Unet.Addition is not null;

    /// <summary>
    /// SDXL's refiner: conditioned on bigG alone (<see cref="TextEncoder"/> is then bigG's config too) and on
    /// add_time_ids (original size, crop, aesthetic score).
    /// </summary>
    public bool IsRefiner { get; init; }


    /// <summary>What the scheduler config says the UNet predicts.</summary>
    public PredictionType Prediction =>
        JsonNode.Parse(SchedulerConfigJson)?["prediction_type"]?.GetValue<string>() == "v_prediction" ? PredictionType.V : PredictionType.Epsilon;

    /// <summary>The side a generation takes without --width/--height: the UNet's sample_size in pixels (SD2.x: 768 for v, 512 for ε).</summary>
    public int DefaultSize => Unet.SampleSize is int s ? s * Vae.DownscaleFactor : 512;

    /// <summary>Whether <see cref="For"/> needs a prediction type for this source: an SD2.x single file without one.</summary>
    public static bool NeedsPrediction(ModelSource source) =>
        source.Format != "diffusers" && source.Family is ModelFamily.Sd2 or ModelFamily.Sd2Inpaint;

    public static ModelConfigs For(ModelSource source, PredictionType? prediction = null, Func<UNetConfig, PredictionType>? detect = null)
    {
        if (source.Family == ModelFamily.SdxlRefiner)
            return source.Format == "diffusers" ? FromRefinerFolder(source)
                : throw new WeightsException($"{source.Path}: a single-file SDXL refiner is not supported; use its diffusers folder (or the hub id stabilityai/stable-diffusion-xl-refiner-1.0)");
        if (source.Family == ModelFamily.Sdxl) return source.Format == "diffusers" ? FromSdxlFolder(source) : SdxlDefaults(source);
        if (source.Format == "diffusers") return FromFolder(source, prediction);
        if (!source.Family.IsSupported())
            throw new WeightsException($"{source.Path}: not a Stable Diffusion 1.x or 2.x checkpoint (family unknown), and a single file carries no configs");
        bool sd2 = source.Family is ModelFamily.Sd2 or ModelFamily.Sd2Inpaint;
        bool inpaint = source.Family is ModelFamily.Sd1Inpaint or ModelFamily.Sd2Inpaint;
        var origin = $"built-in {source.Family.Name()} defaults";
        var unet = UNetConfig.FromJson(JsonConfig.Parse(sd2 ? Sd2Unet : Sd1Unet, $"{origin} (unet)")) with { InChannels = inpaint ? 9 : 4 };
        var p = prediction
                ?? (sd2 ? detect?.Invoke(unet) : PredictionType.Epsilon)
                ?? throw new ConfigException($"{source.Path}: an SD2.x single file predicts ε (512-base) or v (768-v), which only its UNet tells; give --prediction-type epsilon or v");
        unet = unet with { SampleSize = sd2 && p == PredictionType.V ? 96 : 64 }; // stable-diffusion-2-1 is a 768 model; the others 512
        return new ModelConfigs(
            unet,
            VaeConfig.FromJson(JsonConfig.Parse(SdVae, $"{origin} (vae)")),
            ClipTextConfig.From(JsonConfig.Parse(sd2 ? OpenClipH : ClipL, $"{origin} (text_encoder)")),
            p == PredictionType.V ? Sd2VScheduler : Scheduler, $"{origin} (scheduler, {p.Describe()})");
    }

    private static ModelConfigs FromFolder(ModelSource source, PredictionType? prediction)
    {
        string Config(string component) => Path.Combine(source.Path, component, "config.json");
        var scheduler = source.SchedulerConfig is string s ? File.ReadAllText(s) : source.Family is ModelFamily.Sd2 ? Sd2VScheduler : Scheduler;
        var origin = source.SchedulerConfig ?? $"built-in {source.Family.Name()} defaults (the folder has no scheduler/scheduler_config.json)";
        if (prediction is PredictionType p)
        {
            var json = JsonNode.Parse(scheduler)!.AsObject();
            json["prediction_type"] = p == PredictionType.V ? "v_prediction" : "epsilon";
            scheduler = json.ToJsonString();
            origin += $", {p.Describe()} as asked";
        }
        return new ModelConfigs(
            UNetConfig.Load(Config("unet")),
            VaeConfig.Load(Config("vae")),
            ClipTextConfig.Load(Config("text_encoder")),
            scheduler, origin);
    }

    private static ModelConfigs FromSdxlFolder(ModelSource source)
    {
        var configs = FromFolder(source, null);
        var te2 = Path.Combine(source.Path, "text_encoder_2", "config.json");
        if (!File.Exists(te2) || source.Component("text_encoder_2") is null)
            throw new WeightsException($"{Path.Combine(source.Path, "text_encoder_2")}: missing; an SDXL model needs its second text encoder (text_encoder_2/config.json and weights)");
        var index = JsonConfig.Load(Path.Combine(source.Path, "model_index.json"));
        return configs with
        {
            TextEncoder2 = ClipTextConfig.Load(te2),
            ForceZerosForEmptyPrompt = index.Bool("force_zeros_for_empty_prompt", true),
        };
    }

    private static ModelConfigs FromRefinerFolder(ModelSource source)
    {
        string Config(string component) => Path.Combine(source.Path, component, "config.json");
        var te2 = Config("text_encoder_2");
        if (!File.Exists(te2) || source.Component("text_encoder_2") is null)
            throw new WeightsException($"{Path.Combine(source.Path, "text_encoder_2")}: missing; an SDXL refiner needs its text encoder (text_encoder_2/config.json and weights)");
        var bigG = ClipTextConfig.Load(te2);
        var index = JsonConfig.Load(Path.Combine(source.Path, "model_index.json"));
        return new ModelConfigs(UNetConfig.Load(Config("unet")), VaeConfig.Load(Config("vae")), bigG,
            source.SchedulerConfig is string s ? File.ReadAllText(s) : Presets.Sdxl.SchedulerJson,
            source.SchedulerConfig ?? "built-in sdxl defaults (the folder has no scheduler/scheduler_config.json)")
        {
            TextEncoder2 = bigG,
            IsRefiner = true,
            ForceZerosForEmptyPrompt = index.Bool("force_zeros_for_empty_prompt", true),
        };
    }

    private static ModelConfigs SdxlDefaults(ModelSource source)
    {
        var origin = "built-in sdxl defaults";
        if (source.Component("text_encoder_2") is null)
            throw new WeightsException($"{source.Path}: an SDXL file without its second text encoder (conditioner.embedders.1.*)");
        // The inpainting UNet (diffusers/stable-diffusion-xl-1.0-inpainting-0.1) differs only in conv_in's inputs: 9.
        var convIn = source.Component("unet")?.Find("conv_in.weight");
        int inChannels = convIn is { Shape.Length: 4 } ? (int)convIn.Shape[1] : 4;
        return new ModelConfigs(
            UNetConfig.FromJson(JsonConfig.Parse(Presets.Sdxl.UnetJson, $"{origin} (unet)")) with { InChannels = inChannels },
            VaeConfig.FromJson(JsonConfig.Parse(Presets.Sdxl.VaeJson, $"{origin} (vae)")),
            ClipTextConfig.From(JsonConfig.Parse(ClipL, $"{origin} (text_encoder)")),
            Presets.Sdxl.SchedulerJson, $"{origin} (scheduler)")
        {
            TextEncoder2 = ClipTextConfig.From(JsonConfig.Parse(Presets.Sdxl.TextEncoder2Json!, $"{origin} (text_encoder_2)")),
            ForceZerosForEmptyPrompt = true,
        };
    }

    // The published configs, reduced to the keys whose values differ from the classes' defaults or matter.

    private const string Sd1Unet = """
        {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "attention_head_dim": 8,
         "cross_attention_dim": 768, "norm_num_groups": 32,
         "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
         "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
        """;

    private const string Sd2Unet = """
        {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "attention_head_dim": [5, 10, 20, 20],
         "cross_attention_dim": 1024, "norm_num_groups": 32, "use_linear_projection": true, "upcast_attention": true,
         "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
         "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
        """;

    private const string SdVae = """
        {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32,
         "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
         "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}
        """;

    private const string ClipL = """
        {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
         "hidden_act": "quick_gelu", "vocab_size": 49408, "max_position_embeddings": 77, "layer_norm_eps": 1e-05}
        """;

    private const string OpenClipH = """
        {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
         "hidden_act": "gelu", "vocab_size": 49408, "max_position_embeddings": 77, "layer_norm_eps": 1e-05}
        """;

    /// <summary>stable-diffusion-v1-5's (and stable-diffusion-2-1-base's, stable-diffusion-2-inpainting's) scheduler_config.json.</summary>
    private const string Scheduler = """
        {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
         "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1,
         "clip_sample": false, "prediction_type": "epsilon"}
        """;

    /// <summary>stable-diffusion-2-1's: the same with v-prediction.</summary>
    private const string Sd2VScheduler = """
        {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
         "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1,
         "clip_sample": false, "prediction_type": "v_prediction"}
        """;
}
