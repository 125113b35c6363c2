using StableDiffusion.Runtime;

namespace StableDiffusion.Models.Vae;

/// <summary>
/// diffusers' VAE Encoder: conv_in → down_blocks (halving the image in all but the last) → mid_block →
/// conv_norm_out + SiLU → conv_out to 2 × latent channels (the mean and log-variance of the latent distribution).
/// </summary>
public sealed class Encoder : Module
{
    public Encoder(VaeConfig config)
    {
        var widths = config.BlockOutChannels;
        int groups = config.NormNumGroups, last = widths[^1];
        ConvIn = Child("conv_in", new Conv2d(config.InChannels, widths[0], 3, padding: 1));
        DownBlocks = Child("down_blocks", new ModuleList<DownEncoderBlock2D>(widths.Select((w, i) =>
            new DownEncoderBlock2D(i == 0 ? widths[0] : widths[i - 1], w, config.LayersPerBlock, groups, addDownsample: i < widths.Length - 1))));
        MidBlock = Child("mid_block", new UNetMidBlock2D(last, groups, config.MidBlockAddAttention));
        ConvNormOut = Child("conv_norm_out", new GroupNorm(groups, last, VaeConfig.NormEps));
        ConvOut = Child("conv_out", new Conv2d(last, 2 * config.LatentChannels, 3, padding: 1));
    }

    public Conv2d ConvIn { get; }
    public ModuleList<DownEncoderBlock2D> DownBlocks { get; }
    public UNetMidBlock2D MidBlock { get; }
    public GroupNorm ConvNormOut { get; }
    public Conv2d ConvOut { get; }

    /// <summary>x [N, H, W, in] → [N, H/f, W/f, 2 × latent] with f = 2^(blocks − 1). Does not free x.</summary>
    public Tensor Forward(IOps ops, Tensor x)
    {
        var h = ConvIn.Forward(ops, x);
        foreach (var block in DownBlocks.Items) h = block.Forward(ops, h);
        h = MidBlock.Forward(ops, h);
        h = h.Then(t => ConvNormOut.Forward(ops, t, silu: true));
        return h.Then(t => ConvOut.Forward(ops, t));
    }
}
