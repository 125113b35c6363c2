namespace StableDiffusion.Models.Unet;

/// <summary>
/// The parts of diffusers' UNet2DConditionModel config.json that SD1.x, SD2.x and SDXL use, resolved per block.
/// Options those models never set (class/addition embeddings, fourier time embedding, scale-shift resnets, dual or
/// cross-only attention, other mid blocks) are refused by key rather than silently ignored.
/// </summary>
public sealed record UNetConfig
{
    public int InChannels { get; init; } = 4;
    public int OutChannels { get; init; } = 4;
    public bool CenterInputSample { get; init; }
    public bool FlipSinToCos { get; init; } = true;
    public float FreqShift { get; init; }
    public required string[] DownBlockTypes { get; init; }
    public required string[] UpBlockTypes { get; init; }
    public required int[] BlockOutChannels { get; init; }
    /// <summary>Resnets per down block (the up blocks have one more).</summary>
    public required int[] LayersPerBlock { get; init; }
    /// <summary>Transformer blocks inside each Transformer2DModel of a down block (1 for SD1.x/SD2.x).</summary>
    public required int[] TransformerLayersPerBlock { get; init; }
    /// <summary>
    /// Attention heads per down block. diffusers reads these from "attention_head_dim", which despite its name is the
    /// number of heads (diffusers issue 2011); the head width is the block's channels divided by it.
    /// </summary>
    public required int[] NumAttentionHeads { get; init; }
    /// <summary>Width of encoder_hidden_states per down block (768 for SD1.x, 1024 for SD2.x).</summary>
    public required int[] CrossAttentionDim { get; init; }
    public int DownsamplePadding { get; init; } = 1;
    public float MidBlockScaleFactor { get; init; } = 1f;
    public int NormNumGroups { get; init; } = 32;
    public float NormEps { get; init; } = 1e-5f;
    /// <summary>SD2.x: proj_in/proj_out are Linear layers instead of 1x1 convolutions.</summary>
    public bool UseLinearProjection { get; init; }
    /// <summary>SD2.1-v sets it; our attention always accumulates and takes the softmax in fp32, so it changes nothing.</summary>
    public bool UpcastAttention { get; init; }
    public int ConvInKernel { get; init; } = 3;
    public int ConvOutKernel { get; init; } = 3;
    /// <summary>"time_embedding_dim": overrides the time embedding width.</summary>
    public int? TimeEmbeddingDim { get; init; }
    /// <summary>
    /// SDXL's "addition_embed_type": "text_time": the pooled text embedding and the sinusoidally embedded
    /// add_time_ids go through add_embedding and are added to the time embedding. Null when absent.
    /// </summary>
    public AdditionEmbedding? Addition { get; init; }
    /// <summary>"sample_size": the latent side the model was trained at (64 SD1, 96 SD2-768, 128 SDXL), if stated.</summary>
    public int? SampleSize { get; init; }

    /// <summary>Width of the time embedding: 4 × block_out_channels[0] unless time_embedding_dim overrides it.</summary>
    public int TimeEmbedDim => TimeEmbeddingDim ?? 4 * BlockOutChannels[0];

    public int Blocks => BlockOutChannels.Length;

    /// <summary>The UNet halves the latent this many times, so latent sides must be multiples of 2^this.</summary>
    public int DownsampleCount => Blocks - 1;

    public static UNetConfig Load(string path) => FromJson(JsonConfig.Load(path));

    public static UNetConfig FromJson(JsonConfig c)
    {
        string cls = c.String("_class_name", "UNet2DConditionModel");
        if (cls != "UNet2DConditionModel")
            throw new ConfigException($"{c.Source}: \"_class_name\" is {cls}, expected UNet2DConditionModel");

        // Features of the general diffusers class that no SD1.x/SD2.x checkpoint uses.
        foreach (var key in new[] { "class_embed_type", "num_class_embeds",
                     "encoder_hid_dim", "encoder_hid_dim_type", "time_cond_proj_dim", "time_embedding_act_fn",
                     "timestep_post_act", "reverse_transformer_layers_per_block", "cross_attention_norm" })
            if (c.Has(key)) throw new ConfigException($"{c.Source}: \"{key}\" is not supported (SD1.x, SD2.x and SDXL leave it null)");
        Expect(c, "act_fn", "silu");
        Expect(c, "time_embedding_type", "positional");
        Expect(c, "resnet_time_scale_shift", "default");
        Expect(c, "mid_block_type", "UNetMidBlock2DCrossAttn");
        Expect(c, "attention_type", "default");
        foreach (var key in new[] { "dual_cross_attention", "only_cross_attention", "class_embeddings_concat", "resnet_skip_time_act" })
            if (c.Has(key) && c.Bool(key)) throw new ConfigException($"{c.Source}: \"{key}\": true is not supported");
        if (c.Has("resnet_out_scale_factor") && c.Float("resnet_out_scale_factor") != 1f)
            throw new ConfigException($"{c.Source}: \"resnet_out_scale_factor\" other than 1 is not supported");

        var channels = c.IntArray("block_out_channels", [320, 640, 1280, 1280]);
        int n = channels.Length;
        if (n == 0) throw new ConfigException($"{c.Source}: \"block_out_channels\" is empty");
        var down = c.StringArray("down_block_types", ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]);
        var up = c.StringArray("up_block_types", ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]);
        if (down.Length != n) throw new ConfigException($"{c.Source}: \"down_block_types\" has {down.Length} entries, \"block_out_channels\" {n}");
        if (up.Length != n) throw new ConfigException($"{c.Source}: \"up_block_types\" has {up.Length} entries, \"block_out_channels\" {n}");
        foreach (var t in down)
            if (t is not ("CrossAttnDownBlock2D" or "DownBlock2D"))
                throw new ConfigException($"{c.Source}: \"down_block_types\": {t} is not supported (CrossAttnDownBlock2D or DownBlock2D)");
        foreach (var t in up)
            if (t is not ("CrossAttnUpBlock2D" or "UpBlock2D"))
                throw new ConfigException($"{c.Source}: \"up_block_types\": {t} is not supported (CrossAttnUpBlock2D or UpBlock2D)");

        var config = new UNetConfig
        {
            InChannels = Positive(c, "in_channels", c.Int("in_channels", 4)),
            OutChannels = Positive(c, "out_channels", c.Int("out_channels", 4)),
            CenterInputSample = c.Bool("center_input_sample", false),
            FlipSinToCos = c.Bool("flip_sin_to_cos", true),
            FreqShift = c.Float("freq_shift", 0f),
            DownBlockTypes = down,
            UpBlockTypes = up,
            BlockOutChannels = channels,
            LayersPerBlock = c.IntOrArray("layers_per_block", n, 2),
            TransformerLayersPerBlock = c.IntOrArray("transformer_layers_per_block", n, 1),
            // diffusers takes num_attention_heads when set, else attention_head_dim (which counts heads, see above).
            NumAttentionHeads = c.Has("num_attention_heads") ? c.IntOrArray("num_attention_heads", n) : c.IntOrArray("attention_head_dim", n, 8),
            CrossAttentionDim = c.IntOrArray("cross_attention_dim", n, 1280),
            DownsamplePadding = c.Int("downsample_padding", 1),
            MidBlockScaleFactor = c.Float("mid_block_scale_factor", 1f),
            NormNumGroups = Positive(c, "norm_num_groups", c.Int("norm_num_groups", 32)),
            NormEps = c.Float("norm_eps", 1e-5f),
            UseLinearProjection = c.Bool("use_linear_projection", false),
            UpcastAttention = c.Bool("upcast_attention", false),
            ConvInKernel = c.Int("conv_in_kernel", 3),
            ConvOutKernel = c.Int("conv_out_kernel", 3),
            TimeEmbeddingDim = c.Has("time_embedding_dim") ? c.Int("time_embedding_dim") : null,
            Addition = ReadAddition(c),
            SampleSize = c.Has("sample_size") ? c.Int("sample_size") : null,
        };
        config.Validate(c.Source);
        return config;
    }

    /// <summary>Checks the values fit together (group counts, head counts, kernels); names the key at fault.</summary>
    public void Validate(string source = "<unet config>")
    {
        if (Blocks == 0) throw new ConfigException($"{source}: \"block_out_channels\" is empty");
        foreach (var (key, length) in new[] { ("down_block_types", DownBlockTypes.Length), ("up_block_types", UpBlockTypes.Length),
                     ("layers_per_block", LayersPerBlock.Length), ("transformer_layers_per_block", TransformerLayersPerBlock.Length),
                     ("attention_head_dim", NumAttentionHeads.Length), ("cross_attention_dim", CrossAttentionDim.Length) })
            if (length != Blocks)
                throw new ConfigException($"{source}: \"{key}\" has {length} entries, \"block_out_channels\" {Blocks}");
        if (TimeEmbedDim < 1) throw new ConfigException($"{source}: \"time_embedding_dim\" must be positive, found {TimeEmbedDim}");
        for (int i = 0; i < Blocks; i++)
        {
            int ch = BlockOutChannels[i];
            if (ch <= 0) throw new ConfigException($"{source}: \"block_out_channels\"[{i}] must be positive, found {ch}");
            if (ch % NormNumGroups != 0)
                throw new ConfigException($"{source}: \"norm_num_groups\" {NormNumGroups} does not divide block_out_channels[{i}] = {ch}");
            if (LayersPerBlock[i] < 1) throw new ConfigException($"{source}: \"layers_per_block\"[{i}] must be at least 1");
            if (TransformerLayersPerBlock[i] < 1) throw new ConfigException($"{source}: \"transformer_layers_per_block\"[{i}] must be at least 1");
            if (CrossAttentionDim[i] < 1) throw new ConfigException($"{source}: \"cross_attention_dim\"[{i}] must be positive");
            int heads = NumAttentionHeads[i];
            if (heads < 1 || ch % heads != 0)
                throw new ConfigException($"{source}: \"attention_head_dim\"[{i}] = {heads} heads does not divide block_out_channels[{i}] = {ch}");
        }
        // One encoder_hidden_states tensor feeds every cross-attention.
        if (CrossAttentionDim.Any(d => d != CrossAttentionDim[0]))
            throw new ConfigException($"{source}: \"cross_attention_dim\" must be the same for every block, found [{string.Join(", ", CrossAttentionDim)}]");
        if (ConvInKernel < 1 || ConvInKernel % 2 == 0) throw new ConfigException($"{source}: \"conv_in_kernel\" must be odd, found {ConvInKernel}");
        if (ConvOutKernel < 1 || ConvOutKernel % 2 == 0) throw new ConfigException($"{source}: \"conv_out_kernel\" must be odd, found {ConvOutKernel}");
        if (DownsamplePadding < 0) throw new ConfigException($"{source}: \"downsample_padding\" must not be negative");
        if (Addition is { } a)
        {
            if (a.TimeEmbedDim % 2 != 0)
                throw new ConfigException($"{source}: \"addition_time_embed_dim\" must be even, found {a.TimeEmbedDim}");
            if (a.InputDim <= a.TimeEmbedDim)
                throw new ConfigException($"{source}: \"projection_class_embeddings_input_dim\" {a.InputDim} leaves no room for the pooled text embedding");
        }
        if (MidBlockScaleFactor == 0f) throw new ConfigException($"{source}: \"mid_block_scale_factor\" must not be 0");
    }

    private static AdditionEmbedding? ReadAddition(JsonConfig c)
    {
        if (!c.Has("addition_embed_type")) return null;
        string type = c.String("addition_embed_type");
        if (type != "text_time")
            throw new ConfigException($"{c.Source}: \"addition_embed_type\" {type} is not supported (only text_time, SDXL's)");
        return new AdditionEmbedding(
            Positive(c, "addition_time_embed_dim", c.Int("addition_time_embed_dim")),
            Positive(c, "projection_class_embeddings_input_dim", c.Int("projection_class_embeddings_input_dim")));
    }

    private static void Expect(JsonConfig c, string key, string value)
    {
        if (c.Has(key) && c.String(key) != value)
            throw new ConfigException($"{c.Source}: \"{key}\" is {c.String(key)}; only {value} is supported");
    }

    private static int Positive(JsonConfig c, string key, int v) =>
        v > 0 ? v : throw new ConfigException($"{c.Source}: \"{key}\" must be positive, found {v}");
}

/// <summary>
/// SDXL's text_time addition embedding: the pooled text embedding followed by the add_time_ids, each id embedded
/// sinusoidally at <see cref="TimeEmbedDim"/> channels; <see cref="InputDim"/> in all (base: 1280 + 6 × 256 = 2816,
/// six ids = original size, crop top-left, target size; refiner: 1280 + 5 × 256 = 2560, the aesthetic score in place
/// of the target size).
/// </summary>
public sealed record AdditionEmbedding(int TimeEmbedDim, int InputDim);
