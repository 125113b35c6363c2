using StableDiffusion.Runtime;

namespace StableDiffusion.Models.Unet;

/// <summary>
/// diffusers UNet2DConditionModel for SD1.x, SD2.x and SDXL (and their 9-channel inpainting variants): the noise
/// predictor, conditioned on the timestep and the text encoder's hidden states.
/// <code>
/// conv_in → down blocks (keep skips) → mid block → up blocks (concat skips) → GroupNorm → SiLU → conv_out
///             ↑ SiLU(time_embedding(time_proj(t))) into every resnet;  text into every cross-attention
/// </code>
/// </summary>
public sealed class UNet2DConditionModel : Module
{
    public UNet2DConditionModel(UNetConfig config)
    {
        config.Validate();
        Config = config;
        var ch = config.BlockOutChannels;
        int n = config.Blocks, temb = config.TimeEmbedDim, groups = config.NormNumGroups;
        float eps = config.NormEps;
        TransformerSpec Spec(int i) => new(config.NumAttentionHeads[i], config.TransformerLayersPerBlock[i],
            config.CrossAttentionDim[i], config.UseLinearProjection);

        ConvIn = Child("conv_in", new Conv2d(config.InChannels, ch[0], config.ConvInKernel, padding: (config.ConvInKernel - 1) / 2));
        TimeProj = Child("time_proj", new Timesteps(ch[0], config.FlipSinToCos, config.FreqShift));
        TimeEmbedding = Child("time_embedding", new TimestepEmbedding(ch[0], temb));
        if (config.Addition is { } add)
        {
            AddTimeProj = Child("add_time_proj", new Timesteps(add.TimeEmbedDim, config.FlipSinToCos, config.FreqShift));
            AddEmbedding = Child("add_embedding", new TimestepEmbedding(add.InputDim, temb));
        }

        var down = new List<UNetDownBlock>();
        for (int i = 0; i < n; i++)
        {
            int input = ch[Math.Max(0, i - 1)];
            bool last = i == n - 1;
            down.Add(config.DownBlockTypes[i] == "CrossAttnDownBlock2D"
                ? new CrossAttnDownBlock2D(input, ch[i], temb, config.LayersPerBlock[i], groups, eps, !last, config.DownsamplePadding, Spec(i))
                : new DownBlock2D(input, ch[i], temb, config.LayersPerBlock[i], groups, eps, !last, config.DownsamplePadding));
        }
        DownBlocks = Child("down_blocks", new ModuleList<UNetDownBlock>(down));

        // The mid block and the up blocks read the per-block settings from the deepest level upwards.
        var up = new List<UNetUpBlock>();
        for (int i = 0; i < n; i++)
        {
            int level = n - 1 - i;
            int output = ch[level], previous = ch[Math.Min(n - 1, level + 1)], input = ch[Math.Max(0, level - 1)];
            int layers = config.LayersPerBlock[level] + 1;
            bool last = i == n - 1;
            up.Add(config.UpBlockTypes[i] == "CrossAttnUpBlock2D"
                ? new CrossAttnUpBlock2D(input, previous, output, temb, layers, groups, eps, !last, Spec(level))
                : new UpBlock2D(input, previous, output, temb, layers, groups, eps, !last));
        }
        // diffusers registers up_blocks before mid_block; the same order keeps listings in its state-dict order.
        UpBlocks = Child("up_blocks", new ModuleList<UNetUpBlock>(up));
        MidBlock = Child("mid_block", new UNetMidBlock2DCrossAttn(ch[^1], temb, groups, eps, config.MidBlockScaleFactor, Spec(n - 1)));

        ConvNormOut = Child("conv_norm_out", new GroupNorm(groups, ch[0], eps));
        ConvOut = Child("conv_out", new Conv2d(ch[0], config.OutChannels, config.ConvOutKernel, padding: (config.ConvOutKernel - 1) / 2));
    }

    public UNetConfig Config { get; }
    public Conv2d ConvIn { get; }
    public Timesteps TimeProj { get; }
    public TimestepEmbedding TimeEmbedding { get; }
    /// <summary>SDXL (addition_embed_type text_time): the add_time_ids' sinusoidal embedding; null otherwise.</summary>
    public Timesteps? AddTimeProj { get; }
    /// <summary>SDXL: [pooled text, embedded time ids] → added to the time embedding; null otherwise.</summary>
    public TimestepEmbedding? AddEmbedding { get; }
    public ModuleList<UNetDownBlock> DownBlocks { get; }
    public UNetMidBlock2DCrossAttn MidBlock { get; }
    public ModuleList<UNetUpBlock> UpBlocks { get; }
    public GroupNorm ConvNormOut { get; }
    public Conv2d ConvOut { get; }

    /// <summary>
    /// sample [N, H, W, in_channels] (channels-last latents; H and W multiples of 2^(blocks-1)), timesteps fp32 [N]
    /// or [1] for all, encoder_hidden_states [N, L, cross_attention_dim] → noise prediction [N, H, W, out_channels].
    /// SDXL (text_time) also takes <paramref name="textEmbeds"/> [N, pooled] in the model's dtype and
    /// <paramref name="timeIds"/> fp32 [N, ids] (diffusers' added_cond_kwargs text_embeds and time_ids).
    /// </summary>
    public Tensor Forward(IOps ops, Tensor sample, Tensor timesteps, Tensor encoderHiddenStates, Tensor? textEmbeds = null, Tensor? timeIds = null)
    {
        CheckInputs(sample, timesteps, encoderHiddenStates);
        CheckAddition(sample, textEmbeds, timeIds);
        var context = encoderHiddenStates;

        // Every resnet adds time_emb_proj(SiLU(temb)); the SiLU is taken once here.
        Tensor tembSilu;
        using (var tproj = TimeProj.Forward(ops, timesteps, sample.DType))
        using (var temb = TimeEmbedding.Forward(ops, tproj))
        {
            if (AddEmbedding is null)
                tembSilu = ops.Activate(temb, Activation.Silu);
            else
                using (var aug = AddedEmbedding(ops, textEmbeds!, timeIds!, sample.DType))
                using (var sum = AddBroadcast(ops, temb, aug))
                    tembSilu = ops.Activate(sum, Activation.Silu);
        }

        var skips = new List<Tensor>();
        try
        {
            using (tembSilu)
            {
                using (var centered = Config.CenterInputSample ? ops.Scale(sample, 2f, -1f) : null)
                    skips.Add(ConvIn.Forward(ops, centered ?? sample));
                foreach (var block in DownBlocks.Items)
                    block.Forward(ops, skips[^1], tembSilu, context, skips);

                var h = MidBlock.Forward(ops, skips[^1], tembSilu, context);
                foreach (var block in UpBlocks.Items)
                    using (var previous = h)
                        h = block.Forward(ops, previous, tembSilu, context, skips);

                using (h)
                using (var normed = ConvNormOut.Forward(ops, h, silu: true))
                    return ConvOut.Forward(ops, normed);
            }
        }
        finally
        {
            foreach (var s in skips) s.Dispose();
        }
    }

    /// <summary>add_embedding(concat(text_embeds, add_time_proj(time_ids.flatten()).reshape(N, -1))).</summary>
    private Tensor AddedEmbedding(IOps ops, Tensor textEmbeds, Tensor timeIds, DType dtype)
    {
        int n = timeIds.Dim(0), ids = timeIds.Dim(1);
        using var flat = timeIds.Reshape(n * ids);
        using var proj = AddTimeProj!.Forward(ops, flat, dtype);
        using var perSample = proj.Reshape(n, ids * AddTimeProj.Channels);
        using var joined = ops.Concat(textEmbeds, perSample);
        return AddEmbedding!.Forward(ops, joined);
    }

    // One timestep may serve the whole batch ([1, temb]); the added embedding is per sample.
    private static Tensor AddBroadcast(IOps ops, Tensor temb, Tensor aug) =>
        temb.Dim(0) == aug.Dim(0) ? ops.Add(temb, aug) : ops.Add(aug, temb);

    private void CheckAddition(Tensor sample, Tensor? textEmbeds, Tensor? timeIds)
    {
        if (Config.Addition is not { } add)
        {
            if (textEmbeds is not null || timeIds is not null)
                throw new UsageException("unet: this UNet takes no text_embeds/time_ids (it has no addition embedding)");
            return;
        }
        int n = sample.Dim(0);
        if (textEmbeds is null || timeIds is null)
            throw new UsageException("unet: this SDXL UNet needs text_embeds and time_ids (addition_embed_type text_time)");
        if (timeIds.DType != DType.F32 || timeIds.Rank != 2 || timeIds.Dim(0) != n)
            throw new UsageException($"unet: time_ids must be fp32 [{n}, ids], got {timeIds}");
        if (textEmbeds.Rank != 2 || textEmbeds.Dim(0) != n || textEmbeds.DType != sample.DType
            || textEmbeds.Dim(1) + timeIds.Dim(1) * add.TimeEmbedDim != add.InputDim)
            throw new UsageException($"unet: text_embeds {textEmbeds} with {timeIds.Dim(1)} time ids of {add.TimeEmbedDim} do not make " +
                $"add_embedding's {add.InputDim} inputs (in {sample.DType.Name()})");
    }

    private void CheckInputs(Tensor sample, Tensor timesteps, Tensor context)
    {
        int factor = 1 << Config.DownsampleCount;
        if (sample.Rank != 4 || sample.Dim(3) != Config.InChannels)
            throw new UsageException($"unet: sample must be [N, H, W, {Config.InChannels}] (channels-last), got {sample}");
        if (sample.Dim(1) % factor != 0 || sample.Dim(2) % factor != 0)
            throw new UsageException($"unet: latent size {sample.Dim(1)}x{sample.Dim(2)} is not a multiple of {factor} " +
                $"(the UNet halves it {Config.DownsampleCount} times)");
        if (timesteps.DType != DType.F32 || timesteps.Rank != 1 || (timesteps.Dim(0) != 1 && timesteps.Dim(0) != sample.Dim(0)))
            throw new UsageException($"unet: timesteps must be fp32 [{sample.Dim(0)}] or [1], got {timesteps}");
        int ctx = Config.CrossAttentionDim[0];
        if (context.Rank != 3 || context.Dim(0) != sample.Dim(0) || context.Dim(2) != ctx)
            throw new UsageException($"unet: encoder_hidden_states must be [{sample.Dim(0)}, L, {ctx}], got {context}");
        if (context.DType != sample.DType)
            throw new UsageException($"unet: encoder_hidden_states is {context.DType.Name()} but sample is {sample.DType.Name()}");
    }
}
