using StableDiffusion.Runtime;

namespace StableDiffusion.Models.Vae;

// The blocks of diffusers' VAE (unets/unet_2d_blocks.py) as AutoencoderKL builds them: no time embedding, group
// norms with eps 1e-6, output scale factor 1. Unlike ops, each block's Forward takes ownership of its input and frees
// it as soon as its first resnet has read it: a block input held to the end of the block would add a full-resolution
// activation to the decoder's peak (128 MiB at 512² in fp32).

/// <summary>diffusers DownEncoderBlock2D: resnets, then a stride-2 convolution padded bottom/right only (all but the last block).</summary>
public sealed class DownEncoderBlock2D : Module
{
    public DownEncoderBlock2D(int inChannels, int outChannels, int layers, int groups, bool addDownsample)
    {
        Resnets = Child("resnets", new ModuleList<ResnetBlock2D>(Enumerable.Range(0, layers).Select(i =>
            new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, 0, groups, VaeConfig.NormEps))));
        // downsample_padding 0: diffusers pads (0, 1, 0, 1) itself before the unpadded convolution.
        Downsamplers = addDownsample ? Child("downsamplers", new ModuleList<Downsample2D>([new Downsample2D(outChannels, padding: 0)])) : null;
    }

    public ModuleList<ResnetBlock2D> Resnets { get; }
    public ModuleList<Downsample2D>? Downsamplers { get; }

    /// <summary>x [N, H, W, Cin] → [N, H/2, W/2, Cout] (or [N, H, W, Cout] for the last block). Frees x once read.</summary>
    public Tensor Forward(IOps ops, Tensor x)
    {
        var h = x.Then(t => Resnets[0].Forward(ops, t, null));
        for (int i = 1; i < Resnets.Count; i++) h = h.Then(t => Resnets[i].Forward(ops, t, null));
        if (Downsamplers is not null) h = h.Then(t => Downsamplers[0].Forward(ops, t));
        return h;
    }
}

/// <summary>diffusers UpDecoderBlock2D: resnets, then nearest 2x upsampling and a 3x3 convolution (all but the last block).</summary>
public sealed class UpDecoderBlock2D : Module
{
    public UpDecoderBlock2D(int inChannels, int outChannels, int layers, int groups, bool addUpsample)
    {
        Resnets = Child("resnets", new ModuleList<ResnetBlock2D>(Enumerable.Range(0, layers).Select(i =>
            new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, 0, groups, VaeConfig.NormEps))));
        Upsamplers = addUpsample ? Child("upsamplers", new ModuleList<Upsample2D>([new Upsample2D(outChannels)])) : null;
    }

    public ModuleList<ResnetBlock2D> Resnets { get; }
    public ModuleList<Upsample2D>? Upsamplers { get; }

    /// <summary>x [N, H, W, Cin] → [N, 2H, 2W, Cout] (or [N, H, W, Cout] for the last block). Frees x once read.</summary>
    public Tensor Forward(IOps ops, Tensor x)
    {
        var h = x.Then(t => Resnets[0].Forward(ops, t, null));
        for (int i = 1; i < Resnets.Count; i++) h = h.Then(t => Resnets[i].Forward(ops, t, null));
        if (Upsamplers is not null) h = h.Then(t => Upsamplers[0].Forward(ops, t));
        return h;
    }
}

/// <summary>
/// diffusers UNetMidBlock2D as the VAE uses it: resnet, then (attention, resnet). The attention is single-headed over
/// all pixels (head width = channels), with its own group norm and the input added back.
/// </summary>
public sealed class UNetMidBlock2D : Module
{
    public UNetMidBlock2D(int channels, int groups, bool addAttention)
    {
        Resnets = Child("resnets", new ModuleList<ResnetBlock2D>(
            Enumerable.Range(0, 2).Select(_ => new ResnetBlock2D(channels, channels, 0, groups, VaeConfig.NormEps))));
        Attentions = addAttention
            ? Child("attentions", new ModuleList<Attention>([new Attention(channels, null, heads: 1, dimHead: channels, qkvBias: true,
                normGroups: groups, normEps: VaeConfig.NormEps, residualConnection: true)]))
            : null;
    }

    public ModuleList<ResnetBlock2D> Resnets { get; }
    public ModuleList<Attention>? Attentions { get; }

    /// <summary>x [N, H, W, C] → [N, H, W, C]. Frees x once read.</summary>
    public Tensor Forward(IOps ops, Tensor x)
    {
        var h = x.Then(t => Resnets[0].Forward(ops, t, null));
        if (Attentions is not null) h = h.Then(t => Attentions[0].Forward(ops, t));
        return h.Then(t => Resnets[1].Forward(ops, t, null));
    }
}

internal static class TensorChain
{
    /// <summary>
    /// <paramref name="next"/>(h), then frees h: each activation goes back to the pool as soon as the op after it has
    /// run (also when that op throws).
    /// </summary>
    public static Tensor Then(this Tensor h, Func<Tensor, Tensor> next)
    {
        using (h) return next(h);
    }
}
