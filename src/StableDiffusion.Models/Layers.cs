using StableDiffusion.Runtime;

namespace StableDiffusion.Models;

/// <summary>torch.nn.Linear: weight [out, in], optional bias [out].</summary>
public sealed class Linear : Module
{
    public Linear(int inFeatures, int outFeatures, bool bias = true)
    {
        In = inFeatures;
        Out = outFeatures;
        Weight = GemmWeight("weight", DeviceLayout.AsStored, outFeatures, inFeatures);
        Bias = bias ? Param("bias", ParamKind.Bias, outFeatures) : null;
    }

    public int In { get; }
    public int Out { get; }
    public Parameter Weight { get; }
    public Parameter? Bias { get; }

    public Tensor Forward(IOps ops, Tensor x, Tensor? residual = null) => ops.Linear(x, Weight.Value, Bias?.Value, residual);
}

/// <summary>torch.nn.Conv2d over NHWC activations: OIHW in the checkpoint, OHWI on the device.</summary>
public sealed class Conv2d : Module
{
    public Conv2d(int inChannels, int outChannels, int kernel, int stride = 1, int padding = 0, bool bias = true)
    {
        Stride = stride;
        Padding = padding;
        Weight = GemmWeight("weight", DeviceLayout.ConvOhwi, outChannels, inChannels, kernel, kernel);
        Bias = bias ? Param("bias", ParamKind.Bias, outChannels) : null;
    }

    public int Stride { get; }
    public int Padding { get; }
    public Parameter Weight { get; }
    public Parameter? Bias { get; }

    /// <summary>x [N, H, W, Cin] → [N, Hout, Wout, Cout], plus <paramref name="residual"/> if given (fused).</summary>
    public Tensor Forward(IOps ops, Tensor x, Tensor? residual = null) =>
        ops.Conv2d(x, Weight.Value, Bias?.Value, Stride, Padding, residual);

    /// <summary>With explicit per-side padding (ignores <see cref="Padding"/>).</summary>
    public Tensor Forward(IOps ops, Tensor x, int top, int left, int bottom, int right) =>
        ops.Conv2d(x, Weight.Value, Bias?.Value, Stride, top, left, bottom, right);
}

/// <summary>torch.nn.GroupNorm over channels-last activations [N, ..., C].</summary>
public sealed class GroupNorm : Module
{
    public GroupNorm(int groups, int channels, float eps = 1e-5f, bool affine = true)
    {
        Groups = groups;
        Eps = eps;
        if (channels % groups != 0)
            throw new ConfigException($"group norm: {channels} channels do not split into {groups} groups");
        Weight = affine ? Param("weight", ParamKind.NormScale, channels) : null;
        Bias = affine ? Param("bias", ParamKind.NormBias, channels) : null;
    }

    public int Groups { get; }
    public float Eps { get; }
    public Parameter? Weight { get; }
    public Parameter? Bias { get; }

    public Tensor Forward(IOps ops, Tensor x, bool silu = false) =>
        ops.GroupNorm(x, Groups, Weight?.Value, Bias?.Value, Eps, silu);
}

/// <summary>torch.nn.LayerNorm over the last dimension.</summary>
public sealed class LayerNorm : Module
{
    public LayerNorm(int channels, float eps = 1e-5f)
    {
        Eps = eps;
        Weight = Param("weight", ParamKind.NormScale, channels);
        Bias = Param("bias", ParamKind.NormBias, channels);
    }

    public float Eps { get; }
    public Parameter Weight { get; }
    public Parameter Bias { get; }

    public Tensor Forward(IOps ops, Tensor x) => ops.LayerNorm(x, Weight.Value, Bias.Value, Eps);
}

/// <summary>torch.nn.Embedding: weight [count, dim].</summary>
public sealed class Embedding : Module
{
    public Embedding(int count, int dim)
    {
        Count = count;
        Dim = dim;
        Weight = Param("weight", ParamKind.Embedding, count, dim);
    }

    public int Count { get; }
    public int Dim { get; }
    public Parameter Weight { get; }

    public Tensor Forward(IOps ops, Tensor ids) => ops.Embedding(Weight.Value, ids);
}

/// <summary>A list of modules named 0, 1, 2, … like torch.nn.ModuleList.</summary>
public sealed class ModuleList<T> : Module where T : Module
{
    private readonly List<T> items = [];

    public ModuleList(IEnumerable<T> modules)
    {
        int i = 0;
        foreach (var m in modules) items.Add(Child((i++).ToString(System.Globalization.CultureInfo.InvariantCulture), m));
    }

    public int Count => items.Count;
    public T this[int i] => items[i];
    public IReadOnlyList<T> Items => items;
}
