using StableDiffusion.Runtime;

namespace StableDiffusion.Models.Unet;

// The UNet's spatial transformer (diffusers/models/transformers/transformer_2d.py, attention.py, activations.py).

/// <summary>diffusers Dropout placeholder: the identity at inference, kept so that ff.net.2 keeps its index.</summary>
public sealed class Dropout : Module;

/// <summary>diffusers GEGLU: proj to twice the inner width, then value * gelu(gate) (the first half times the second).</summary>
public sealed class Geglu : Module
{
    public Geglu(int dimIn, int dimOut) => Proj = Child("proj", new Linear(dimIn, 2 * dimOut));

    public Linear Proj { get; }

    public Tensor Forward(IOps ops, Tensor x)
    {
        using var h = Proj.Forward(ops, x);
        return ops.Geglu(h);
    }
}

/// <summary>diffusers FeedForward with activation_fn "geglu": net.0 = GEGLU(dim, 4 dim), net.1 = Dropout, net.2 = Linear(4 dim, dim).</summary>
public sealed class FeedForward : Module
{
    public FeedForward(int dim, int mult = 4)
    {
        int inner = dim * mult;
        Act = new Geglu(dim, inner);
        Out = new Linear(inner, dim);
        Child("net", new ModuleList<Module>([Act, new Dropout(), Out]));
    }

    public Geglu Act { get; }
    public Linear Out { get; }

    public Tensor Forward(IOps ops, Tensor x, Tensor? residual = null)
    {
        using var h = Act.Forward(ops, x);
        return Out.Forward(ops, h, residual);
    }
}

/// <summary>
/// diffusers BasicTransformerBlock as SD uses it (layer norms, no adaptive norm): self-attention, cross-attention
/// on the text, GEGLU feed-forward, each pre-normed and added back to its input.
/// </summary>
public sealed class BasicTransformerBlock : Module
{
    public BasicTransformerBlock(int dim, int heads, int headDim, int crossAttentionDim)
    {
        Norm1 = Child("norm1", new LayerNorm(dim));
        Attn1 = Child("attn1", new Attention(dim, null, heads, headDim));
        Norm2 = Child("norm2", new LayerNorm(dim));
        Attn2 = Child("attn2", new Attention(dim, crossAttentionDim, heads, headDim));
        Norm3 = Child("norm3", new LayerNorm(dim));
        Ff = Child("ff", new FeedForward(dim));
    }

    public LayerNorm Norm1 { get; }
    public Attention Attn1 { get; }
    public LayerNorm Norm2 { get; }
    public Attention Attn2 { get; }
    public LayerNorm Norm3 { get; }
    public FeedForward Ff { get; }

    /// <summary>x [B, L, dim], context [B, Lc, cross_attention_dim] → [B, L, dim]. Each residual add is fused into the output projection.</summary>
    public Tensor Forward(IOps ops, Tensor x, Tensor context)
    {
        Tensor h;
        using (var n1 = Norm1.Forward(ops, x))
            h = Attn1.Forward(ops, n1, residual: x);
        using (var self = h)
        using (var n2 = Norm2.Forward(ops, self))
            h = Attn2.Forward(ops, n2, context, residual: self);
        using (var cross = h)
        using (var n3 = Norm3.Forward(ops, cross))
            return Ff.Forward(ops, n3, residual: cross);
    }
}

/// <summary>
/// diffusers Transformer2DModel for continuous inputs: group norm (eps 1e-6), proj_in (1x1 conv, or linear with
/// use_linear_projection), the transformer blocks over the H·W tokens, proj_out, plus the input. On channels-last
/// activations a 1x1 conv and a linear layer are the same GEMM and the token view is free, so both variants differ
/// only in their weights' shapes.
/// </summary>
public sealed class Transformer2DModel : Module
{
    public Transformer2DModel(int heads, int headDim, int inChannels, int layers, int crossAttentionDim, int groups, bool linearProjection)
    {
        int inner = heads * headDim;
        Inner = inner;
        Norm = Child("norm", new GroupNorm(groups, inChannels, 1e-6f));
        Module ProjectionLayer(int from, int to) => linearProjection ? new Linear(from, to) : new Conv2d(from, to, 1);
        ProjIn = Child("proj_in", ProjectionLayer(inChannels, inner));
        TransformerBlocks = Child("transformer_blocks", new ModuleList<BasicTransformerBlock>(
            Enumerable.Range(0, layers).Select(_ => new BasicTransformerBlock(inner, heads, headDim, crossAttentionDim))));
        ProjOut = Child("proj_out", ProjectionLayer(inner, inChannels));
    }

    public int Inner { get; }
    public GroupNorm Norm { get; }
    /// <summary>A <see cref="Linear"/> (SD2.x) or a 1x1 <see cref="Conv2d"/> (SD1.x).</summary>
    public Module ProjIn { get; }
    public ModuleList<BasicTransformerBlock> TransformerBlocks { get; }
    public Module ProjOut { get; }

    /// <summary>x [N, H, W, C], context [N, Lc, cross_attention_dim] → [N, H, W, C].</summary>
    public Tensor Forward(IOps ops, Tensor x, Tensor context)
    {
        int n = x.Dim(0), height = x.Dim(1), width = x.Dim(2);
        Tensor h;
        using (var normed = Norm.Forward(ops, x))
            h = Project(ops, ProjIn, normed).ReshapeOwned(n, height * width, Inner);
        foreach (var block in TransformerBlocks.Items)
            using (var previous = h)
                h = block.Forward(ops, previous, context);
        using (h)
        using (var image = h.Reshape(n, height, width, Inner))
            return Project(ops, ProjOut, image, residual: x);
    }

    private static Tensor Project(IOps ops, Module layer, Tensor x, Tensor? residual = null) => layer switch
    {
        Linear linear => linear.Forward(ops, x, residual),
        Conv2d conv => conv.Forward(ops, x, residual),
        _ => throw new InvalidOperationException($"unexpected projection {layer.GetType().Name}"),
    };
}
