using StableDiffusion.Runtime;

namespace StableDiffusion.Models.Vae;

/// <summary>
/// diffusers' VAE Decoder: conv_in → mid_block → up_blocks over the widths in reverse (doubling the image in all but
/// the last; each with layers_per_block + 1 resnets) → conv_norm_out + SiLU → conv_out.
/// </summary>
public sealed class Decoder : Module
{
    public Decoder(VaeConfig config)
    {
        var widths = config.BlockOutChannels.Reverse().ToArray();
        int groups = config.NormNumGroups;
        ConvIn = Child("conv_in", new Conv2d(config.LatentChannels, widths[0], 3, padding: 1));
        MidBlock = Child("mid_block", new UNetMidBlock2D(widths[0], groups, config.MidBlockAddAttention));
        UpBlocks = Child("up_blocks", new ModuleList<UpDecoderBlock2D>(widths.Select((w, i) =>
            new UpDecoderBlock2D(i == 0 ? widths[0] : widths[i - 1], w, config.LayersPerBlock + 1, groups, addUpsample: i < widths.Length - 1))));
        ConvNormOut = Child("conv_norm_out", new GroupNorm(groups, widths[^1], VaeConfig.NormEps));
        ConvOut = Child("conv_out", new Conv2d(widths[^1], config.OutChannels, 3, padding: 1));
    }

    public Conv2d ConvIn { get; }
    public UNetMidBlock2D MidBlock { get; }
    public ModuleList<UpDecoderBlock2D> UpBlocks { get; }
    public GroupNorm ConvNormOut { get; }
    public Conv2d ConvOut { get; }

    /// <summary>z [N, h, w, latent] → [N, h·f, w·f, out] with f = 2^(blocks − 1). Does not free z.</summary>
    public Tensor Forward(IOps ops, Tensor z)
    {
        var h = ConvIn.Forward(ops, z);
        h = MidBlock.Forward(ops, h);
        foreach (var block in UpBlocks.Items) h = block.Forward(ops, h);
        h = h.Then(t => ConvNormOut.Forward(ops, t, silu: true));
        return h.Then(t => ConvOut.Forward(ops, t));
    }
}
