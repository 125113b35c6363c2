using StableDiffusion.Runtime;

namespace StableDiffusion.Models.Unet;

// The UNet's down, mid and up blocks (diffusers/models/unets/unet_2d_blocks.py), for the SD1.x/SD2.x block types.

/// <summary>What a block's transformers need: heads, head width, depth, text width, projection kind.</summary>
public sealed record TransformerSpec(int Heads, int Layers, int CrossAttentionDim, bool LinearProjection);

/// <summary>
/// A down block: resnets, each followed by a Transformer2DModel in CrossAttnDownBlock2D, then an optional strided
/// conv. Every resnet(+attention) output and the downsampled map are kept as skip connections for the up path.
/// </summary>
public abstract class UNetDownBlock : Module
{
    protected UNetDownBlock(int inChannels, int outChannels, int tembChannels, int layers, int groups, float eps,
        bool addDownsample, int downsamplePadding, TransformerSpec? transformer)
    {
        // Declared in diffusers' order (attentions, resnets, downsamplers) so listings match its state dict.
        if (transformer is not null)
            Attentions = Child("attentions", new ModuleList<Transformer2DModel>(Enumerable.Range(0, layers).Select(_ =>
                new Transformer2DModel(transformer.Heads, outChannels / transformer.Heads, outChannels, transformer.Layers,
                    transformer.CrossAttentionDim, groups, transformer.LinearProjection))));
        Resnets = Child("resnets", new ModuleList<ResnetBlock2D>(Enumerable.Range(0, layers).Select(i =>
            new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, tembChannels, groups, eps))));
        if (addDownsample)
            Downsamplers = Child("downsamplers", new ModuleList<Downsample2D>([new Downsample2D(outChannels, downsamplePadding)]));
    }

    public ModuleList<ResnetBlock2D> Resnets { get; }
    public ModuleList<Transformer2DModel>? Attentions { get; }
    public ModuleList<Downsample2D>? Downsamplers { get; }

    /// <summary>
    /// Runs the block on <paramref name="x"/> and appends every output state to <paramref name="skips"/>, which owns
    /// them; the block's output is the last one appended.
    /// </summary>
    public void Forward(IOps ops, Tensor x, Tensor tembSilu, Tensor context, List<Tensor> skips)
    {
        var h = x;
        for (int i = 0; i < Resnets.Count; i++)
        {
            h = Resnets[i].Forward(ops, h, tembSilu);
            if (Attentions is not null)
                using (var r = h)
                    h = Attentions[i].Forward(ops, r, context);
            skips.Add(h);
        }
        if (Downsamplers is not null) skips.Add(Downsamplers[0].Forward(ops, h));
    }
}

public sealed class CrossAttnDownBlock2D(int inChannels, int outChannels, int tembChannels, int layers, int groups, float eps,
    bool addDownsample, int downsamplePadding, TransformerSpec transformer)
    : UNetDownBlock(inChannels, outChannels, tembChannels, layers, groups, eps, addDownsample, downsamplePadding, transformer);

public sealed class DownBlock2D(int inChannels, int outChannels, int tembChannels, int layers, int groups, float eps,
    bool addDownsample, int downsamplePadding)
    : UNetDownBlock(inChannels, outChannels, tembChannels, layers, groups, eps, addDownsample, downsamplePadding, null);

/// <summary>diffusers UNetMidBlock2DCrossAttn: resnet, then (transformer, resnet) per layer, at constant width.</summary>
public sealed class UNetMidBlock2DCrossAttn : Module
{
    public UNetMidBlock2DCrossAttn(int channels, int tembChannels, int groups, float eps, float outputScaleFactor,
        TransformerSpec transformer, int layers = 1)
    {
        Attentions = Child("attentions", new ModuleList<Transformer2DModel>(Enumerable.Range(0, layers).Select(_ =>
            new Transformer2DModel(transformer.Heads, channels / transformer.Heads, channels, transformer.Layers,
                transformer.CrossAttentionDim, groups, transformer.LinearProjection))));
        Resnets = Child("resnets", new ModuleList<ResnetBlock2D>(Enumerable.Range(0, layers + 1).Select(_ =>
            new ResnetBlock2D(channels, channels, tembChannels, groups, eps, outputScaleFactor))));
    }

    public ModuleList<Transformer2DModel> Attentions { get; }
    public ModuleList<ResnetBlock2D> Resnets { get; }

    public Tensor Forward(IOps ops, Tensor x, Tensor tembSilu, Tensor context)
    {
        var h = Resnets[0].Forward(ops, x, tembSilu);
        for (int i = 0; i < Attentions.Count; i++)
        {
            using (var r = h)
                h = Attentions[i].Forward(ops, r, context);
            using (var a = h)
                h = Resnets[i + 1].Forward(ops, a, tembSilu);
        }
        return h;
    }
}

/// <summary>
/// An up block: resnets on [hidden, skip] concatenated along channels (skips taken last-in first-out), each followed
/// by a Transformer2DModel in CrossAttnUpBlock2D, then an optional nearest-2x + conv upsampler.
/// </summary>
public abstract class UNetUpBlock : Module
{
    protected UNetUpBlock(int inChannels, int prevOutputChannels, int outChannels, int tembChannels, int layers, int groups,
        float eps, bool addUpsample, TransformerSpec? transformer)
    {
        if (transformer is not null)
            Attentions = Child("attentions", new ModuleList<Transformer2DModel>(Enumerable.Range(0, layers).Select(_ =>
                new Transformer2DModel(transformer.Heads, outChannels / transformer.Heads, outChannels, transformer.Layers,
                    transformer.CrossAttentionDim, groups, transformer.LinearProjection))));
        // The last resnet takes the skip from the level below (the down block's input width); the first takes the
        // hidden state from the previous up block.
        Resnets = Child("resnets", new ModuleList<ResnetBlock2D>(Enumerable.Range(0, layers).Select(i =>
        {
            int skip = i == layers - 1 ? inChannels : outChannels;
            int hidden = i == 0 ? prevOutputChannels : outChannels;
            return new ResnetBlock2D(hidden + skip, outChannels, tembChannels, groups, eps);
        })));
        if (addUpsample)
            Upsamplers = Child("upsamplers", new ModuleList<Upsample2D>([new Upsample2D(outChannels)]));
    }

    public ModuleList<ResnetBlock2D> Resnets { get; }
    public ModuleList<Transformer2DModel>? Attentions { get; }
    public ModuleList<Upsample2D>? Upsamplers { get; }

    /// <summary>
    /// Runs the block on <paramref name="x"/> (not consumed), taking one skip per resnet from the end of
    /// <paramref name="skips"/> and disposing it once concatenated.
    /// </summary>
    public Tensor Forward(IOps ops, Tensor x, Tensor tembSilu, Tensor context, List<Tensor> skips)
    {
        Tensor? h = null;
        for (int i = 0; i < Resnets.Count; i++)
        {
            var skip = skips[^1];
            skips.RemoveAt(skips.Count - 1);
            Tensor cat;
            using (skip)
            using (h)
                cat = ops.Concat(h ?? x, skip);
            using (cat)
                h = Resnets[i].Forward(ops, cat, tembSilu);
            if (Attentions is not null)
                using (var r = h)
                    h = Attentions[i].Forward(ops, r, context);
        }
        if (Upsamplers is null) return h!;
        using (h)
            return Upsamplers[0].Forward(ops, h!);
    }
}

public sealed class CrossAttnUpBlock2D(int inChannels, int prevOutputChannels, int outChannels, int tembChannels, int layers,
    int groups, float eps, bool addUpsample, TransformerSpec transformer)
    : UNetUpBlock(inChannels, prevOutputChannels, outChannels, tembChannels, layers, groups, eps, addUpsample, transformer);

public sealed class UpBlock2D(int inChannels, int prevOutputChannels, int outChannels, int tembChannels, int layers, int groups,
    float eps, bool addUpsample)
    : UNetUpBlock(inChannels, prevOutputChannels, outChannels, tembChannels, layers, groups, eps, addUpsample, null);
