using StableDiffusion.IO;
using StableDiffusion.Runtime;

namespace StableDiffusion.Models;

/// <summary>What a parameter is, so random models can initialise it sensibly (DESIGN.md §8: norm scales near 1).</summary>
public enum ParamKind
{
    Weight,
    Bias,
    NormScale,
    NormBias,
    Embedding,
}

/// <summary>How a parameter is stored on the device relative to the checkpoint.</summary>
public enum DeviceLayout
{
    /// <summary>As in the checkpoint.</summary>
    AsStored,
    /// <summary>A convolution weight OIHW in the checkpoint, OHWI on the device (the layout the kernels read).</summary>
    ConvOhwi,
}

/// <summary>
/// One weight of a module: its diffusers name (relative to the module), its shape as checkpoints store it, and,
/// once loaded, its device tensor.
/// </summary>
public sealed class Parameter(string name, long[] shape, ParamKind kind, DeviceLayout layout)
{
    private Tensor? value;

    public string Name { get; } = name;
    public long[] Shape { get; } = shape;
    public ParamKind Kind { get; } = kind;
    public DeviceLayout Layout { get; } = layout;
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
    public bool IsLoaded => value is not null;

    /// <summary>The device tensor (OHWI for convolution weights).</summary>
    public Tensor Value => value ?? throw new InvalidOperationException($"parameter '{Name}' is used before weights were loaded");

    internal void Set(Tensor t)
    {
        value?.Dispose();
        value = t;
    }

    internal void Release()
    {
        value?.Dispose();
        value = null;
    }
}

/// <summary>
/// A node of the module tree, mirroring diffusers/transformers so that parameter paths are checkpoint names
/// (DESIGN.md §4). Subclasses declare children and parameters in their constructors, from their config; the layout
/// a checkpoint must have, the random models and the consumed-every-tensor check all come from that declaration.
/// </summary>
public abstract class Module : IDisposable
{
    private readonly List<(string Name, Module Child)> children = [];
    private readonly List<Parameter> parameters = [];

    protected T Child<T>(string name, T module) where T : Module
    {
        children.Add((name, module));
        return module;
    }

    protected Parameter Param(string name, ParamKind kind, params long[] shape) => Param(name, kind, DeviceLayout.AsStored, shape);

    protected Parameter Param(string name, ParamKind kind, DeviceLayout layout, params long[] shape)
    {
        var p = new Parameter(name, shape, kind, layout);
        parameters.Add(p);
        return p;
    }

    /// <summary>Every parameter under this module with its full dotted path, in declaration order.</summary>
    public IEnumerable<(string Path, Parameter Parameter)> NamedParameters(string prefix = "")
    {
        foreach (var p in parameters) yield return (prefix + p.Name, p);
        foreach (var (name, child) in children)
            foreach (var item in child.NamedParameters(prefix + name + "."))
                yield return item;
    }

    /// <summary>The checkpoint layout this module expects: diffusers name → shape.</summary>
    public IReadOnlyDictionary<string, long[]> ExpectedLayout() =>
        NamedParameters().ToDictionary(p => p.Path, p => p.Parameter.Shape, StringComparer.Ordinal);

    public long ParameterCount => NamedParameters().Sum(p => p.Parameter.ElementCount);

    /// <summary>
    /// Binds every parameter to the component's tensor of the same name (a missing, mis-shaped or unexpected tensor
    /// is a <see cref="WeightsException"/>) and uploads it in <paramref name="dtype"/>, convolution weights permuted
    /// OIHW → OHWI on the way. Weights get exact-size device buffers.
    /// </summary>
    public void Load(ComponentWeights weights, IOps ops, DType dtype)
    {
        var bound = weights.Bind(ExpectedLayout());
        foreach (var (path, p) in NamedParameters())
        {
            if (p.Layout != DeviceLayout.ConvOhwi)
            {
                p.Set(bound[path].Upload(ops.Device, dtype));
                continue;
            }
            // Permuted on the host while uploading (one conv weight at a time), into an exact-size buffer.
            int o = (int)p.Shape[0], i = (int)p.Shape[1], kh = (int)p.Shape[2], kw = (int)p.Shape[3];
            var oihw = bound[path].ReadFloat32();
            var ohwi = new float[oihw.Length];
            int taps = kh * kw;
            for (int a = 0; a < o; a++)
            for (int c = 0; c < i; c++)
            for (int t = 0; t < taps; t++)
                ohwi[((long)a * taps + t) * i + c] = oihw[((long)a * i + c) * taps + t];
            p.Set(Tensor.FromArray(ops.Device, ohwi, dtype, exact: true, o, kh, kw, i));
        }
    }

    /// <summary>Frees every loaded parameter of this subtree.</summary>
    public void Dispose()
    {
        foreach (var (_, p) in NamedParameters()) p.Release();
        GC.SuppressFinalize(this);
    }
}
