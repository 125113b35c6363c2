using ILGPU.Runtime;
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
    /// OIHW → OHWI on the way. Weights get exact-size device buffers. <paramref name="lora"/> (parameter path →
    /// low-rank updates) is merged into those weights on the device: W + Σ scale · up · down by the backend's GEMM in
    /// fp32, then stored in <paramref name="dtype"/>.
    /// </summary>
    public void Load(ComponentWeights weights, IOps ops, DType dtype, IReadOnlyDictionary<string, List<LoraUpdate>>? lora = null)
    {
        var bound = weights.Bind(ExpectedLayout());
        if (lora is not null)
            foreach (var path in lora.Keys)
                if (!bound.ContainsKey(path)) throw new WeightsException($"{weights.Source}: {weights.Name}: a LoRA targets {path}, which the model does not have");
        foreach (var (path, p) in NamedParameters())
        {
            var updates = lora?.GetValueOrDefault(path);
            if (p.Layout != DeviceLayout.ConvOhwi && updates is null)
            {
                p.Set(bound[path].Upload(ops.Device, dtype));
                continue;
            }
            if (p.Layout != DeviceLayout.ConvOhwi)
            {
                p.Set(Merge(ops, bound[path].ReadFloat32(), p.Shape.Select(d => (int)d).ToArray(), updates!, dtype));
                continue;
            }
            // Permuted on the host while uploading (one conv weight at a time), into an exact-size buffer.
            int o = (int)p.Shape[0], i = (int)p.Shape[1], kh = (int)p.Shape[2], kw = (int)p.Shape[3];
            var ohwi = ToOhwi(bound[path].ReadFloat32(), o, i, kh, kw);
            p.Set(updates is null
                ? Tensor.FromArray(ops.Device, ohwi, dtype, exact: true, o, kh, kw, i)
                : Merge(ops, ohwi, [o, kh, kw, i], updates, dtype));
        }
    }

    private static float[] ToOhwi(float[] oihw, int o, int i, int kh, int kw)
    {
        var ohwi = new float[oihw.Length];
        int taps = kh * kw;
        for (int a = 0; a < o; a++)
        for (int c = 0; c < i; c++)
        for (int t = 0; t < taps; t++)
            ohwi[((long)a * taps + t) * i + c] = oihw[((long)a * i + c) * taps + t];
        return ohwi;
    }

    /// <summary>
    /// W [out, K] (K = in, or kh·kw·in for an OHWI convolution) plus each update's scale · up [out, r] · down [r, K]
    /// as one fused GEMM with W as the residual, all fp32 on the device; then cast to <paramref name="dtype"/> into an
    /// exact-size buffer of <paramref name="shape"/>.
    /// </summary>
    private static Tensor Merge(IOps ops, float[] weight, int[] shape, List<LoraUpdate> updates, DType dtype)
    {
        int rows = shape[0], k = (int)(weight.Length / rows);
        var acc = Tensor.FromArray(ops.Device, weight, DType.F32, rows, k);
        try
        {
            foreach (var u in updates)
            {
                int r = u.Rank, kh = u.KernelHeight, kw = u.KernelWidth, cin = k / (kh * kw);
                var down = u.ReadDown();
                if (kh * kw > 1) down = ToOhwi(down, r, cin, kh, kw); // [r, in, kh, kw] → [r, kh, kw, in]: the weight's OHWI order
                using var up = Tensor.FromArray(ops.Device, u.ReadUp(), DType.F32, rows, r);
                using var d = Tensor.FromArray(ops.Device, down, DType.F32, r, k);
                var next = ops.MatMul(up, d, alpha: u.Scale, residual: acc);
                acc.Dispose();
                acc = next;
            }
            var result = Tensor.EmptyExact(ops.Device, dtype, shape);
            using (var cast = dtype == DType.F32 ? null : ops.Cast(acc, dtype))
            {
                var stream = ops.Device.Accelerator.DefaultStream;
                (cast ?? acc).Bytes.CopyTo(stream, result.Bytes);
                stream.Synchronize();
            }
            return result;
        }
        finally
        {
            acc.Dispose();
        }
    }

    /// <summary>Frees every loaded parameter of this subtree.</summary>
    public void Dispose()
    {
        foreach (var (_, p) in NamedParameters()) p.Release();
        GC.SuppressFinalize(this);
    }
}
