using StableDiffusion.Runtime;

namespace StableDiffusion.Models.Vae;

/// <summary>
/// diffusers' AutoencoderKL config.json, with that class's defaults for absent keys. Options SD1.x/SD2.x never set
/// (latent shift and statistics, other block types, other activations) are refused by key rather than ignored.
/// </summary>
public sealed record VaeConfig
{
    /// <summary>The scaling factor of SD1.x/SD2.x, and diffusers' default when config.json has none.</summary>
    public const float DefaultScalingFactor = 0.18215f;

    /// <summary>diffusers builds every VAE norm (resnets, mid-block attention, conv_norm_out) with this epsilon.</summary>
    public const float NormEps = 1e-6f;

    public int InChannels { get; init; } = 3;
    public int OutChannels { get; init; } = 3;
    public int LatentChannels { get; init; } = 4;
    public required int[] BlockOutChannels { get; init; }
    /// <summary>Resnets per encoder block; each decoder block has one more.</summary>
    public int LayersPerBlock { get; init; } = 1;
    public int NormNumGroups { get; init; } = 32;
    /// <summary>Diffusion latents are the encoder's latents times this (the UNet was trained on unit-variance latents).</summary>
    public float ScalingFactor { get; init; } = DefaultScalingFactor;
    /// <summary>Run the VAE in fp32 even when the other models are fp16 (SD1.5's and SDXL's VAE overflow in fp16).</summary>
    public bool ForceUpcast { get; init; } = true;
    public bool UseQuantConv { get; init; } = true;
    public bool UsePostQuantConv { get; init; } = true;
    public bool MidBlockAddAttention { get; init; } = true;

    public int Blocks => BlockOutChannels.Length;

    /// <summary>Image side / latent side: every encoder block but the last halves the image (8 for SD).</summary>
    public int DownscaleFactor => 1 << (Blocks - 1);

    /// <summary>The precision the VAE runs in when the rest of the pipeline uses <paramref name="modelDType"/>.</summary>
    public DType ComputeDType(DType modelDType) => ForceUpcast ? DType.F32 : modelDType;

    public static VaeConfig Load(string path) => FromJson(JsonConfig.Load(path));

    public static VaeConfig FromJson(JsonConfig c)
    {
        string cls = c.String("_class_name", "AutoencoderKL");
        if (cls != "AutoencoderKL") throw new ConfigException($"{c.Source}: \"_class_name\" is {cls}, expected AutoencoderKL");
        // SD3/Flux-style latent normalisation; the SD1.x/SD2.x pipelines use the scaling factor alone.
        foreach (var key in new[] { "shift_factor", "latents_mean", "latents_std" })
            if (c.Has(key)) throw new ConfigException($"{c.Source}: \"{key}\" is not supported (SD1.x/SD2.x leave it null)");
        string act = c.String("act_fn", "silu");
        if (act != "silu") throw new ConfigException($"{c.Source}: \"act_fn\" is {act}, only silu is supported");

        var cfg = new VaeConfig
        {
            InChannels = Positive(c, "in_channels", 3),
            OutChannels = Positive(c, "out_channels", 3),
            LatentChannels = Positive(c, "latent_channels", 4),
            BlockOutChannels = c.IntArray("block_out_channels", [64]),
            LayersPerBlock = Positive(c, "layers_per_block", 1),
            NormNumGroups = Positive(c, "norm_num_groups", 32),
            ScalingFactor = c.Float("scaling_factor", DefaultScalingFactor),
            ForceUpcast = c.Bool("force_upcast", true),
            UseQuantConv = c.Bool("use_quant_conv", true),
            UsePostQuantConv = c.Bool("use_post_quant_conv", true),
            MidBlockAddAttention = c.Bool("mid_block_add_attention", true),
        };
        int n = cfg.Blocks;
        if (n == 0) throw new ConfigException($"{c.Source}: \"block_out_channels\" is empty");
        foreach (var width in cfg.BlockOutChannels)
        {
            if (width <= 0) throw new ConfigException($"{c.Source}: \"block_out_channels\" must be positive, found {width}");
            if (width % cfg.NormNumGroups != 0)
                throw new ConfigException($"{c.Source}: \"block_out_channels\" {width} does not split into \"norm_num_groups\" {cfg.NormNumGroups}");
        }
        if (!(cfg.ScalingFactor > 0 && float.IsFinite(cfg.ScalingFactor)))
            throw new ConfigException($"{c.Source}: \"scaling_factor\" must be positive, found {cfg.ScalingFactor}");
        CheckTypes(c, "down_block_types", "DownEncoderBlock2D", n);
        CheckTypes(c, "up_block_types", "UpDecoderBlock2D", n);
        return cfg;
    }

    private static int Positive(JsonConfig c, string key, int fallback)
    {
        int v = c.Int(key, fallback);
        return v > 0 ? v : throw new ConfigException($"{c.Source}: \"{key}\" must be positive, found {v}");
    }

    private static void CheckTypes(JsonConfig c, string key, string only, int blocks)
    {
        var types = c.StringArray(key, [only]);
        if (types.Length != blocks)
            throw new ConfigException($"{c.Source}: \"{key}\" has {types.Length} entries, \"block_out_channels\" {blocks}");
        foreach (var t in types)
            if (t != only) throw new ConfigException($"{c.Source}: \"{key}\": {t} is not supported (only {only})");
    }
}
