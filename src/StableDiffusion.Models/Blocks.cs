using StableDiffusion.Runtime;

namespace StableDiffusion.Models;

// The building blocks UNet2DConditionModel and AutoencoderKL share, under diffusers' names
// (diffusers/models/resnet.py, attention_processor.py, upsampling.py, downsampling.py).

/// <summary>
/// diffusers ResnetBlock2D: norm1 → SiLU → conv1 (+ time_emb_proj(SiLU(temb)) per channel) → norm2 → SiLU → conv2,
/// plus the input (through a 1x1 conv_shortcut when the width changes), divided by the output scale factor.
/// </summary>
public sealed class ResnetBlock2D : Module
{
    public ResnetBlock2D(int inChannels, int outChannels, int tembChannels, int groups, float eps, float outputScaleFactor = 1f)
    {
        OutputScaleFactor = outputScaleFactor;
        Norm1 = Child("norm1", new GroupNorm(groups, inChannels, eps));
        Conv1 = Child("conv1", new Conv2d(inChannels, outChannels, 3, padding: 1));
        TimeEmbProj = tembChannels > 0 ? Child("time_emb_proj", new Linear(tembChannels, outChannels)) : null;
        Norm2 = Child("norm2", new GroupNorm(groups, outChannels, eps));
        Conv2 = Child("conv2", new Conv2d(outChannels, outChannels, 3, padding: 1));
        ConvShortcut = inChannels != outChannels ? Child("conv_shortcut", new Conv2d(inChannels, outChannels, 1)) : null;
    }

    public float OutputScaleFactor { get; }
    public GroupNorm Norm1 { get; }
    public Conv2d Conv1 { get; }
    public Linear? TimeEmbProj { get; }
    public GroupNorm Norm2 { get; }
    public Conv2d Conv2 { get; }
    public Conv2d? ConvShortcut { get; }

    /// <summary>x [N, H, W, Cin]; <paramref name="tembSilu"/> is SiLU(temb) [N, Ctemb] (shared by all blocks of a model).</summary>
    public Tensor Forward(IOps ops, Tensor x, Tensor? tembSilu)
    {
        Tensor h;
        using (var n1 = Norm1.Forward(ops, x, silu: true))
            h = Conv1.Forward(ops, n1);
        if (TimeEmbProj is not null && tembSilu is not null)
        {
            using var t = TimeEmbProj.Forward(ops, tembSilu);
            using var t4 = t.Reshape(t.Dim(0), 1, 1, t.Dim(1));
            using var hOld = h;
            h = ops.Add(hOld, t4);
        }
        Tensor n2;
        using (h) n2 = Norm2.Forward(ops, h, silu: true); // conv1's output is dead once normed: free it before conv2
        using (n2)
        using (var shortcut = ConvShortcut?.Forward(ops, x))
        {
            var y = Conv2.Forward(ops, n2, residual: shortcut ?? x);
            if (OutputScaleFactor == 1f) return y;
            using (y) return ops.Scale(y, 1f / OutputScaleFactor);
        }
    }
}

/// <summary>diffusers Downsample2D with a convolution: 3x3 stride 2, padding 1 (UNet) or bottom/right only (VAE, padding 0).</summary>
public sealed class Downsample2D : Module
{
    public Downsample2D(int channels, int padding)
    {
        Pad = padding;
        Conv = Child("conv", new Conv2d(channels, channels, 3, stride: 2, padding: padding));
    }

    public int Pad { get; }
    public Conv2d Conv { get; }

    public Tensor Forward(IOps ops, Tensor x) =>
        Pad == 0 ? Conv.Forward(ops, x, 0, 0, 1, 1) : Conv.Forward(ops, x);
}

/// <summary>diffusers Upsample2D with a convolution: nearest 2x, then 3x3 padding 1.</summary>
public sealed class Upsample2D : Module
{
    public Upsample2D(int channels) => Conv = Child("conv", new Conv2d(channels, channels, 3, padding: 1));

    public Conv2d Conv { get; }

    public Tensor Forward(IOps ops, Tensor x)
    {
        using var up = ops.Upsample2x(x);
        return Conv.Forward(ops, up);
    }
}

/// <summary>
/// diffusers Attention (attention_processor.Attention) as SD uses it: to_q, to_k, to_v, to_out.0, multi-head
/// scaled-dot-product attention; optionally cross-attention on a context, a group_norm in front and the input added
/// back (the VAE's mid-block attention).
/// </summary>
public sealed class Attention : Module
{
    public Attention(int queryDim, int? crossAttentionDim, int heads, int dimHead, bool qkvBias = false, int? normGroups = null,
        float normEps = 1e-5f, bool residualConnection = false)
    {
        Heads = heads;
        DimHead = dimHead;
        ResidualConnection = residualConnection;
        int inner = heads * dimHead, ctx = crossAttentionDim ?? queryDim;
        GroupNorm = normGroups is int g ? Child("group_norm", new GroupNorm(g, queryDim, normEps)) : null;
        ToQ = Child("to_q", new Linear(queryDim, inner, qkvBias));
        ToK = Child("to_k", new Linear(ctx, inner, qkvBias));
        ToV = Child("to_v", new Linear(ctx, inner, qkvBias));
        ToOut = Child("to_out", new ModuleList<Linear>([new Linear(inner, queryDim)]));
    }

    public int Heads { get; }
    public int DimHead { get; }
    public bool ResidualConnection { get; }
    public GroupNorm? GroupNorm { get; }
    public Linear ToQ { get; }
    public Linear ToK { get; }
    public Linear ToV { get; }
    public ModuleList<Linear> ToOut { get; }

    /// <summary>
    /// x [B, L, C] (or [N, H, W, C] when this attention has its own group norm); context [B, Lc, Cctx] or null for
    /// self-attention. <paramref name="residual"/> is added to the output projection (fused); with
    /// residual_connection the input itself is.
    /// </summary>
    public Tensor Forward(IOps ops, Tensor x, Tensor? context = null, Tensor? residual = null)
    {
        var shape = x.ShapeArray();
        using var tokens = x.Reshape(shape[0], -1, shape[^1]);
        using var normed = GroupNorm?.Forward(ops, tokens);
        var input = normed ?? tokens;
        var ctx = context ?? input;
        using var q = ToQ.Forward(ops, input);
        using var k = ToK.Forward(ops, ctx);
        using var v = ToV.Forward(ops, ctx);
        using var o = ops.Attention(q, k, v, Heads);
        var add = ResidualConnection ? tokens : residual;
        var y = ToOut[0].Forward(ops, o, add);
        return y.ReshapeOwned(shape);
    }
}
