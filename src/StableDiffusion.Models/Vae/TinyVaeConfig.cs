using StableDiffusion.Runtime;

namespace StableDiffusion.Models.Vae;

/// <summary>
/// diffusers' AutoencoderTiny config.json (madebyollin's TAESD), with that class's defaults for absent keys. Every
/// block of a side has the same width, as the published models do (diffusers' own layout needs it too).
/// </summary>
public sealed record TinyVaeConfig
{
    public int InChannels { get; init; } = 3;
    public int OutChannels { get; init; } = 3;
    public int LatentChannels { get; init; } = 4;
    public int[] EncoderBlockOutChannels { get; init; } = [64, 64, 64, 64];
    public int[] DecoderBlockOutChannels { get; init; } = [64, 64, 64, 64];
    /// <summary>Blocks after each encoder convolution (the first at full size, the others after a stride-2 one).</summary>
    public int[] NumEncoderBlocks { get; init; } = [1, 3, 3, 3];
    /// <summary>Blocks before each decoder upsampling (none after the last).</summary>
    public int[] NumDecoderBlocks { get; init; } = [3, 3, 3, 1];
    /// <summary>Diffusion latents are the encoder's output times this; 1 for the published models, whose latents already are SD's scaled latents.</summary>
    public float ScalingFactor { get; init; } = 1f;

    /// <summary>Image side / latent side: every encoder convolution after the first halves the image.</summary>
    public int DownscaleFactor => 1 << (NumEncoderBlocks.Length - 1);

    /// <summary>madebyollin/taesd and taesdxl (SD1/SD2 and SDXL latents; only the weights differ).</summary>
    public static TinyVaeConfig Default { get; } = new();

    public static TinyVaeConfig Load(string path) => FromJson(JsonConfig.Load(path));

    public static TinyVaeConfig FromJson(JsonConfig c)
    {
        string cls = c.String("_class_name", "AutoencoderTiny");
        if (cls != "AutoencoderTiny") throw new ConfigException($"{c.Source}: \"_class_name\" is {cls}, expected AutoencoderTiny");
        if (c.String("act_fn", "relu") is var act && act != "relu") throw new ConfigException($"{c.Source}: \"act_fn\" is {act}, only relu is supported");
        if (c.String("upsample_fn", "nearest") is var up && up != "nearest") throw new ConfigException($"{c.Source}: \"upsample_fn\" is {up}, only nearest is supported");
        if (c.Int("upsampling_scaling_factor", 2) is var f && f != 2) throw new ConfigException($"{c.Source}: \"upsampling_scaling_factor\" is {f}, only 2 is supported");
        if (c.Has("shift_factor") && c.Float("shift_factor") != 0f) throw new ConfigException($"{c.Source}: \"shift_factor\" is not supported");
        var cfg = new TinyVaeConfig
        {
            InChannels = Positive(c, "in_channels", 3),
            OutChannels = Positive(c, "out_channels", 3),
            LatentChannels = Positive(c, "latent_channels", 4),
            EncoderBlockOutChannels = c.IntArray("encoder_block_out_channels", [64, 64, 64, 64]),
            DecoderBlockOutChannels = c.IntArray("decoder_block_out_channels", [64, 64, 64, 64]),
            NumEncoderBlocks = c.IntArray("num_encoder_blocks", [1, 3, 3, 3]),
            NumDecoderBlocks = c.IntArray("num_decoder_blocks", [3, 3, 3, 1]),
            ScalingFactor = c.Float("scaling_factor", 1f),
        };
        Check(c, "encoder_block_out_channels", cfg.EncoderBlockOutChannels, "num_encoder_blocks", cfg.NumEncoderBlocks);
        Check(c, "decoder_block_out_channels", cfg.DecoderBlockOutChannels, "num_decoder_blocks", cfg.NumDecoderBlocks);
        if (!(cfg.ScalingFactor > 0 && float.IsFinite(cfg.ScalingFactor)))
            throw new ConfigException($"{c.Source}: \"scaling_factor\" must be positive, found {cfg.ScalingFactor}");
        return cfg;
    }

    private static void Check(JsonConfig c, string widthsKey, int[] widths, string blocksKey, int[] blocks)
    {
        if (widths.Length == 0 || widths.Length != blocks.Length)
            throw new ConfigException($"{c.Source}: \"{widthsKey}\" has {widths.Length} entries, \"{blocksKey}\" {blocks.Length}");
        if (widths.Any(w => w != widths[0] || w <= 0))
            throw new ConfigException($"{c.Source}: \"{widthsKey}\" must be one positive width repeated, found [{string.Join(", ", widths)}]");
        if (blocks.Any(b => b < 0)) throw new ConfigException($"{c.Source}: \"{blocksKey}\" must not be negative");
    }

    private static int Positive(JsonConfig c, string key, int fallback)
    {
        int v = c.Int(key, fallback);
        return v > 0 ? v : throw new ConfigException($"{c.Source}: \"{key}\" must be positive, found {v}");
    }
}
