using StableDiffusion.IO;
using StableDiffusion.Models.Clip;
using StableDiffusion.Models.Unet;
using StableDiffusion.Models.Vae;

namespace StableDiffusion.Models;

/// <summary>
/// A model configuration as a diffusers repository states it: the config.json of each component, the scheduler,
/// model_index.json and the tokenizer's json files. <see cref="RandomModel"/> builds the models from these and writes
/// random weights in their layout. <paramref name="TextTower"/> is the text encoder's naming in an LDM single file.
/// </summary>
public sealed record ModelPreset(
    string Name,
    string UnetJson,
    string VaeJson,
    string TextEncoderJson,
    string SchedulerJson,
    string ModelIndexJson,
    string TokenizerConfigJson,
    string SpecialTokensMapJson,
    LdmTextEncoder TextTower)
{
    public UNetConfig Unet() => UNetConfig.FromJson(JsonConfig.Parse(UnetJson, $"{Name} unet/config.json"));

    public VaeConfig Vae() => VaeConfig.FromJson(JsonConfig.Parse(VaeJson, $"{Name} vae/config.json"));

    public ClipTextConfig TextEncoder() => ClipTextConfig.From(JsonConfig.Parse(TextEncoderJson, $"{Name} text_encoder/config.json"));

    public JsonConfig Scheduler() => JsonConfig.Parse(SchedulerJson, $"{Name} scheduler/scheduler_config.json");

    /// <summary>SDXL: text_encoder_2/config.json (OpenCLIP bigG with projection); null otherwise.</summary>
    public string? TextEncoder2Json { get; init; }

    /// <summary>SDXL: tokenizer_2/special_tokens_map.json (pads with "!").</summary>
    public string? SpecialTokensMap2Json { get; init; }

    /// <summary>SDXL's refiner: no text_encoder/ or tokenizer/ (model_index declares them absent), bigG alone.</summary>
    public bool Refiner { get; init; }

    public ClipTextConfig? TextEncoder2() =>
        TextEncoder2Json is null ? null : ClipTextConfig.From(JsonConfig.Parse(TextEncoder2Json, $"{Name} text_encoder_2/config.json"));
}

/// <summary>
/// The configurations <c>sd random-model</c> knows. sd15 and sd21 are the real SD1.5
/// (runwayml/stable-diffusion-v1-5) and SD2.1-base (stabilityai/stable-diffusion-2-1-base) files, re-typed, so the
/// models built from them have exactly the real checkpoints' layouts. The tiny ones keep every name and the
/// structure (cross-attention down blocks then a plain one, linear projections and heads per block for SD2, a
/// 4-level VAE, OpenCLIP's extra layer) at small widths: UNet [32, 64] with one layer per block and cross-attention
/// 32, VAE [16, 16, 32, 32] in 8 groups (4 levels, so images are still 8 times the latents), a 2-layer CLIP of
/// width 32. Attention heads are 8 to 32 wide, multiples of 8 as the attention kernel needs. The CLIP vocabulary
/// stays at the real 49408 so the real tokenizer works with them.
/// </summary>
public static class Presets
{
    // ---- shared by SD1.5 and SD2.1-base ----

    private const string VaeSd = """
        {
          "_class_name": "AutoencoderKL",
          "_diffusers_version": "0.6.0",
          "act_fn": "silu",
          "block_out_channels": [128, 256, 512, 512],
          "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
          "in_channels": 3,
          "latent_channels": 4,
          "layers_per_block": 2,
          "norm_num_groups": 32,
          "out_channels": 3,
          "sample_size": 512,
          "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
        }
        """;

    private const string TokenizerConfig = """
        {
          "add_prefix_space": false,
          "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
          "do_lower_case": true,
          "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
          "errors": "replace",
          "model_max_length": 77,
          "name_or_path": "NAME_OR_PATH",
          "pad_token": "<|endoftext|>",
          "special_tokens_map_file": "./special_tokens_map.json",
          "tokenizer_class": "CLIPTokenizer",
          "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false}
        }
        """;

    // SD1.x pads with <|endoftext|>, SD2.x with "!" (id 0); this file takes precedence over tokenizer_config.json.
    private const string SpecialTokensMap = """
        {
          "bos_token": {"content": "<|startoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
          "eos_token": {"content": "<|endoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false},
          "pad_token": PAD_TOKEN,
          "unk_token": {"content": "<|endoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false}
        }
        """;

    // ---- SD1.5 ----

    private const string Sd15Unet = """
        {
          "_class_name": "UNet2DConditionModel",
          "_diffusers_version": "0.6.0",
          "act_fn": "silu",
          "attention_head_dim": 8,
          "block_out_channels": [320, 640, 1280, 1280],
          "center_input_sample": false,
          "cross_attention_dim": 768,
          "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
          "downsample_padding": 1,
          "flip_sin_to_cos": true,
          "freq_shift": 0,
          "in_channels": 4,
          "layers_per_block": 2,
          "mid_block_scale_factor": 1,
          "norm_eps": 1e-05,
          "norm_num_groups": 32,
          "out_channels": 4,
          "sample_size": 64,
          "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
        }
        """;

    private const string Sd15TextEncoder = """
        {
          "_name_or_path": "openai/clip-vit-large-patch14",
          "architectures": ["CLIPTextModel"],
          "attention_dropout": 0.0,
          "bos_token_id": 0,
          "dropout": 0.0,
          "eos_token_id": 2,
          "hidden_act": "quick_gelu",
          "hidden_size": 768,
          "initializer_factor": 1.0,
          "initializer_range": 0.02,
          "intermediate_size": 3072,
          "layer_norm_eps": 1e-05,
          "max_position_embeddings": 77,
          "model_type": "clip_text_model",
          "num_attention_heads": 12,
          "num_hidden_layers": 12,
          "pad_token_id": 1,
          "projection_dim": 768,
          "torch_dtype": "float32",
          "transformers_version": "4.22.0.dev0",
          "vocab_size": 49408
        }
        """;

    private const string Sd15Scheduler = """
        {
          "_class_name": "PNDMScheduler",
          "_diffusers_version": "0.6.0",
          "beta_end": 0.012,
          "beta_schedule": "scaled_linear",
          "beta_start": 0.00085,
          "num_train_timesteps": 1000,
          "set_alpha_to_one": false,
          "skip_prk_steps": true,
          "steps_offset": 1,
          "trained_betas": null,
          "clip_sample": false
        }
        """;

    private const string Sd15ModelIndex = """
        {
          "_class_name": "StableDiffusionPipeline",
          "_diffusers_version": "0.6.0",
          "feature_extractor": ["transformers", "CLIPImageProcessor"],
          "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
          "scheduler": ["diffusers", "PNDMScheduler"],
          "text_encoder": ["transformers", "CLIPTextModel"],
          "tokenizer": ["transformers", "CLIPTokenizer"],
          "unet": ["diffusers", "UNet2DConditionModel"],
          "vae": ["diffusers", "AutoencoderKL"]
        }
        """;

    // ---- SD2.1-base ----

    private const string Sd21Unet = """
        {
          "_class_name": "UNet2DConditionModel",
          "_diffusers_version": "0.10.0.dev0",
          "act_fn": "silu",
          "attention_head_dim": [5, 10, 20, 20],
          "block_out_channels": [320, 640, 1280, 1280],
          "center_input_sample": false,
          "cross_attention_dim": 1024,
          "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
          "downsample_padding": 1,
          "dual_cross_attention": false,
          "flip_sin_to_cos": true,
          "freq_shift": 0,
          "in_channels": 4,
          "layers_per_block": 2,
          "mid_block_scale_factor": 1,
          "norm_eps": 1e-05,
          "norm_num_groups": 32,
          "num_class_embeds": null,
          "only_cross_attention": false,
          "out_channels": 4,
          "sample_size": 64,
          "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
          "use_linear_projection": true
        }
        """;

    private const string Sd21TextEncoder = """
        {
          "_name_or_path": "stabilityai/stable-diffusion-2",
          "architectures": ["CLIPTextModel"],
          "attention_dropout": 0.0,
          "bos_token_id": 0,
          "dropout": 0.0,
          "eos_token_id": 2,
          "hidden_act": "gelu",
          "hidden_size": 1024,
          "initializer_factor": 1.0,
          "initializer_range": 0.02,
          "intermediate_size": 4096,
          "layer_norm_eps": 1e-05,
          "max_position_embeddings": 77,
          "model_type": "clip_text_model",
          "num_attention_heads": 16,
          "num_hidden_layers": 23,
          "pad_token_id": 1,
          "projection_dim": 512,
          "torch_dtype": "float32",
          "transformers_version": "4.25.0.dev0",
          "vocab_size": 49408
        }
        """;

    private const string Sd21Scheduler = """
        {
          "_class_name": "PNDMScheduler",
          "_diffusers_version": "0.10.0.dev0",
          "beta_end": 0.012,
          "beta_schedule": "scaled_linear",
          "beta_start": 0.00085,
          "clip_sample": false,
          "num_train_timesteps": 1000,
          "prediction_type": "epsilon",
          "set_alpha_to_one": false,
          "skip_prk_steps": true,
          "steps_offset": 1,
          "trained_betas": null
        }
        """;

    private const string Sd21ModelIndex = """
        {
          "_class_name": "StableDiffusionPipeline",
          "_diffusers_version": "0.10.0.dev0",
          "feature_extractor": ["transformers", "CLIPFeatureExtractor"],
          "requires_safety_checker": false,
          "safety_checker": [null, null],
          "scheduler": ["diffusers", "PNDMScheduler"],
          "text_encoder": ["transformers", "CLIPTextModel"],
          "tokenizer": ["transformers", "CLIPTokenizer"],
          "unet": ["diffusers", "UNet2DConditionModel"],
          "vae": ["diffusers", "AutoencoderKL"]
        }
        """;

    // ---- tiny: the same keys at small widths ----

    private const string Sd15TinyUnet = """
        {
          "_class_name": "UNet2DConditionModel",
          "act_fn": "silu",
          "attention_head_dim": 4,
          "block_out_channels": [32, 64],
          "center_input_sample": false,
          "cross_attention_dim": 32,
          "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
          "downsample_padding": 1,
          "flip_sin_to_cos": true,
          "freq_shift": 0,
          "in_channels": 4,
          "layers_per_block": 1,
          "mid_block_scale_factor": 1,
          "norm_eps": 1e-05,
          "norm_num_groups": 32,
          "out_channels": 4,
          "sample_size": 8,
          "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]
        }
        """;

    private const string Sd21TinyUnet = """
        {
          "_class_name": "UNet2DConditionModel",
          "act_fn": "silu",
          "attention_head_dim": [2, 4],
          "block_out_channels": [32, 64],
          "center_input_sample": false,
          "cross_attention_dim": 32,
          "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
          "downsample_padding": 1,
          "dual_cross_attention": false,
          "flip_sin_to_cos": true,
          "freq_shift": 0,
          "in_channels": 4,
          "layers_per_block": 1,
          "mid_block_scale_factor": 1,
          "norm_eps": 1e-05,
          "norm_num_groups": 32,
          "only_cross_attention": false,
          "out_channels": 4,
          "sample_size": 8,
          "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
          "use_linear_projection": true
        }
        """;

    private const string TinyVae = """
        {
          "_class_name": "AutoencoderKL",
          "act_fn": "silu",
          "block_out_channels": [16, 16, 32, 32],
          "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
          "in_channels": 3,
          "latent_channels": 4,
          "layers_per_block": 1,
          "norm_num_groups": 8,
          "out_channels": 3,
          "sample_size": 64,
          "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
        }
        """;

    private const string TinyTextEncoder = """
        {
          "architectures": ["CLIPTextModel"],
          "attention_dropout": 0.0,
          "bos_token_id": 0,
          "dropout": 0.0,
          "eos_token_id": 2,
          "hidden_act": "HIDDEN_ACT",
          "hidden_size": 32,
          "initializer_factor": 1.0,
          "initializer_range": 0.02,
          "intermediate_size": 128,
          "layer_norm_eps": 1e-05,
          "max_position_embeddings": 77,
          "model_type": "clip_text_model",
          "num_attention_heads": 4,
          "num_hidden_layers": 2,
          "pad_token_id": 1,
          "projection_dim": 32,
          "torch_dtype": "float32",
          "vocab_size": 49408
        }
        """;

    public static readonly ModelPreset Sd15 = new(
        "sd15",
        Sd15Unet, VaeSd, Sd15TextEncoder, Sd15Scheduler, Sd15ModelIndex,
        TokenizerConfig.Replace("NAME_OR_PATH", "openai/clip-vit-large-patch14"),
        SpecialTokensMap.Replace("PAD_TOKEN", "\"<|endoftext|>\""),
        LdmTextEncoder.Clip);

    public static readonly ModelPreset Sd21 = new(
        "sd21",
        Sd21Unet, VaeSd.Replace("\"0.6.0\"", "\"0.10.0.dev0\"").Replace("\"sample_size\": 512", "\"sample_size\": 768"),
        Sd21TextEncoder, Sd21Scheduler, Sd21ModelIndex,
        TokenizerConfig.Replace("NAME_OR_PATH", "stabilityai/stable-diffusion-2"),
        SpecialTokensMap.Replace("PAD_TOKEN", "\"!\""),
        LdmTextEncoder.OpenClip);

    public static readonly ModelPreset Sd15Tiny = Sd15 with
    {
        Name = "sd15-tiny",
        UnetJson = Sd15TinyUnet,
        VaeJson = TinyVae,
        TextEncoderJson = TinyTextEncoder.Replace("HIDDEN_ACT", "quick_gelu"),
    };

    public static readonly ModelPreset Sd21Tiny = Sd21 with
    {
        Name = "sd21-tiny",
        UnetJson = Sd21TinyUnet,
        VaeJson = TinyVae,
        TextEncoderJson = TinyTextEncoder.Replace("HIDDEN_ACT", "gelu"),
    };

    // ---- SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0) ----

    private const string SdxlUnet = """
        {
          "_class_name": "UNet2DConditionModel",
          "_diffusers_version": "0.19.0.dev0",
          "act_fn": "silu",
          "addition_embed_type": "text_time",
          "addition_embed_type_num_heads": 64,
          "addition_time_embed_dim": 256,
          "attention_head_dim": [5, 10, 20],
          "block_out_channels": [320, 640, 1280],
          "center_input_sample": false,
          "class_embed_type": null,
          "class_embeddings_concat": false,
          "conv_in_kernel": 3,
          "conv_out_kernel": 3,
          "cross_attention_dim": 2048,
          "cross_attention_norm": null,
          "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
          "downsample_padding": 1,
          "dual_cross_attention": false,
          "encoder_hid_dim": null,
          "encoder_hid_dim_type": null,
          "flip_sin_to_cos": true,
          "freq_shift": 0,
          "in_channels": 4,
          "layers_per_block": 2,
          "mid_block_only_cross_attention": null,
          "mid_block_scale_factor": 1,
          "mid_block_type": "UNetMidBlock2DCrossAttn",
          "norm_eps": 1e-05,
          "norm_num_groups": 32,
          "num_attention_heads": null,
          "num_class_embeds": null,
          "only_cross_attention": false,
          "out_channels": 4,
          "projection_class_embeddings_input_dim": 2816,
          "resnet_out_scale_factor": 1.0,
          "resnet_skip_time_act": false,
          "resnet_time_scale_shift": "default",
          "sample_size": 128,
          "time_cond_proj_dim": null,
          "time_embedding_act_fn": null,
          "time_embedding_dim": null,
          "time_embedding_type": "positional",
          "timestep_post_act": null,
          "transformer_layers_per_block": [1, 2, 10],
          "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
          "upcast_attention": null,
          "use_linear_projection": true
        }
        """;

    private const string SdxlVae = """
        {
          "_class_name": "AutoencoderKL",
          "_diffusers_version": "0.20.0.dev0",
          "act_fn": "silu",
          "block_out_channels": [128, 256, 512, 512],
          "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
          "force_upcast": true,
          "in_channels": 3,
          "latent_channels": 4,
          "layers_per_block": 2,
          "norm_num_groups": 32,
          "out_channels": 3,
          "sample_size": 1024,
          "scaling_factor": 0.13025,
          "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
        }
        """;

    private const string SdxlTextEncoder2 = """
        {
          "architectures": ["CLIPTextModelWithProjection"],
          "attention_dropout": 0.0,
          "bos_token_id": 0,
          "dropout": 0.0,
          "eos_token_id": 2,
          "hidden_act": "gelu",
          "hidden_size": 1280,
          "initializer_factor": 1.0,
          "initializer_range": 0.02,
          "intermediate_size": 5120,
          "layer_norm_eps": 1e-05,
          "max_position_embeddings": 77,
          "model_type": "clip_text_model",
          "num_attention_heads": 20,
          "num_hidden_layers": 32,
          "pad_token_id": 1,
          "projection_dim": 1280,
          "torch_dtype": "float16",
          "transformers_version": "4.32.0.dev0",
          "vocab_size": 49408
        }
        """;

    private const string SdxlScheduler = """
        {
          "_class_name": "EulerDiscreteScheduler",
          "_diffusers_version": "0.19.0.dev0",
          "beta_end": 0.012,
          "beta_schedule": "scaled_linear",
          "beta_start": 0.00085,
          "clip_sample": false,
          "interpolation_type": "linear",
          "num_train_timesteps": 1000,
          "prediction_type": "epsilon",
          "sample_max_value": 1.0,
          "set_alpha_to_one": false,
          "skip_prk_steps": true,
          "steps_offset": 1,
          "timestep_spacing": "leading",
          "trained_betas": null,
          "use_karras_sigmas": false
        }
        """;

    private const string SdxlModelIndex = """
        {
          "_class_name": "StableDiffusionXLPipeline",
          "_diffusers_version": "0.19.0.dev0",
          "force_zeros_for_empty_prompt": true,
          "add_watermarker": null,
          "scheduler": ["diffusers", "EulerDiscreteScheduler"],
          "text_encoder": ["transformers", "CLIPTextModel"],
          "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
          "tokenizer": ["transformers", "CLIPTokenizer"],
          "tokenizer_2": ["transformers", "CLIPTokenizer"],
          "unet": ["diffusers", "UNet2DConditionModel"],
          "vae": ["diffusers", "AutoencoderKL"]
        }
        """;

    // Three levels (the first without attention), transformer depth 1/2 growing inwards, heads 8 wide, the text_time
    // embedding: pooled 32 + 6 ids × 8 = 80; context 32 + 32 = 64.
    private const string SdxlTinyUnet = """
        {
          "_class_name": "UNet2DConditionModel",
          "act_fn": "silu",
          "addition_embed_type": "text_time",
          "addition_time_embed_dim": 8,
          "attention_head_dim": [4, 4, 8],
          "block_out_channels": [32, 32, 64],
          "cross_attention_dim": 64,
          "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
          "flip_sin_to_cos": true,
          "freq_shift": 0,
          "in_channels": 4,
          "layers_per_block": 1,
          "norm_eps": 1e-05,
          "norm_num_groups": 32,
          "out_channels": 4,
          "projection_class_embeddings_input_dim": 80,
          "sample_size": 8,
          "transformer_layers_per_block": [1, 1, 2],
          "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
          "use_linear_projection": true
        }
        """;

    public static readonly ModelPreset Sdxl = new(
        "sdxl",
        SdxlUnet, SdxlVae, Sd15TextEncoder, SdxlScheduler, SdxlModelIndex,
        TokenizerConfig.Replace("NAME_OR_PATH", "openai/clip-vit-large-patch14"),
        SpecialTokensMap.Replace("PAD_TOKEN", "\"<|endoftext|>\""),
        LdmTextEncoder.Sdxl)
    {
        TextEncoder2Json = SdxlTextEncoder2,
        SpecialTokensMap2Json = SpecialTokensMap.Replace("PAD_TOKEN", "\"!\""),
    };

    public static readonly ModelPreset SdxlTiny = Sdxl with
    {
        Name = "sdxl-tiny",
        UnetJson = SdxlTinyUnet,
        VaeJson = TinyVae.Replace("\"sample_size\": 64,", "\"sample_size\": 64,\n  \"scaling_factor\": 0.13025,"),
        TextEncoderJson = TinyTextEncoder.Replace("HIDDEN_ACT", "quick_gelu"),
        TextEncoder2Json = TinyTextEncoder.Replace("HIDDEN_ACT", "gelu").Replace("\"CLIPTextModel\"", "\"CLIPTextModelWithProjection\""),
    };

    // The refiner's structure (four levels, attention in the middle two only, bigG's width as context, 5 time ids:
    // aesthetic score in place of the target size) at small widths: pooled 32 + 5 ids × 8 = 72; context 32.
    private const string SdxlRefinerTinyUnet = """
        {
          "_class_name": "UNet2DConditionModel",
          "act_fn": "silu",
          "addition_embed_type": "text_time",
          "addition_time_embed_dim": 8,
          "attention_head_dim": [4, 4, 8, 8],
          "block_out_channels": [32, 32, 64, 64],
          "cross_attention_dim": 32,
          "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
          "flip_sin_to_cos": true,
          "freq_shift": 0,
          "in_channels": 4,
          "layers_per_block": 1,
          "norm_eps": 1e-05,
          "norm_num_groups": 32,
          "out_channels": 4,
          "projection_class_embeddings_input_dim": 72,
          "sample_size": 8,
          "transformer_layers_per_block": 2,
          "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
          "use_linear_projection": true
        }
        """;

    private const string SdxlRefinerModelIndex = """
        {
          "_class_name": "StableDiffusionXLImg2ImgPipeline",
          "_diffusers_version": "0.19.0.dev0",
          "force_zeros_for_empty_prompt": false,
          "requires_aesthetics_score": true,
          "add_watermarker": null,
          "scheduler": ["diffusers", "EulerDiscreteScheduler"],
          "text_encoder": [null, null],
          "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
          "tokenizer": [null, null],
          "tokenizer_2": ["transformers", "CLIPTokenizer"],
          "unet": ["diffusers", "UNet2DConditionModel"],
          "vae": ["diffusers", "AutoencoderKL"]
        }
        """;

    public static readonly ModelPreset SdxlRefinerTiny = SdxlTiny with
    {
        Name = "sdxl-refiner-tiny",
        UnetJson = SdxlRefinerTinyUnet,
        ModelIndexJson = SdxlRefinerModelIndex,
        Refiner = true,
    };

    /// <summary>SDXL's inpainting UNet (latents, mask, masked-image latents: 9 input channels) at sdxl-tiny's widths.</summary>
    public static readonly ModelPreset SdxlInpaintTiny = SdxlTiny with
    {
        Name = "sdxl-inpaint-tiny",
        UnetJson = SdxlTinyUnet.Replace("\"in_channels\": 4", "\"in_channels\": 9"),
        ModelIndexJson = SdxlModelIndex.Replace("StableDiffusionXLPipeline", "StableDiffusionXLInpaintPipeline"),
    };

    public static IReadOnlyList<ModelPreset> All { get; } = [Sd15, Sd21, Sd15Tiny, Sd21Tiny, Sdxl, SdxlTiny, SdxlRefinerTiny, SdxlInpaintTiny];

    public static ModelPreset? Find(string name) => All.FirstOrDefault(p => p.Name == name);
}
