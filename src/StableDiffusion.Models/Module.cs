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
public sealed class Parameter(string name, long[] shape, ParamKind kind, DeviceLayout layout, bool gemmWeight = false)
{
    private Tensor? value;

    public string Name { get; } = name;
    public long[] Shape { get; } = shape;
    public ParamKind Kind { get; } = kind;
    public DeviceLayout Layout { get; } = layout;

    /// <summary>The constant operand of a linear layer or convolution: a backend may keep it packed (<see cref="IWeightPacker"/>).</summary>
    public bool IsGemmWeight { get; } = gemmWeight;
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

    protected Parameter Param(string name, ParamKind kind, DeviceLayout layout, params long[] shape) =>
        Add(new Parameter(name, shape, kind, layout));

    /// <summary>A linear or convolution weight, which the backend may pack (<see cref="Parameter.IsGemmWeight"/>).</summary>
    protected Parameter GemmWeight(string name, DeviceLayout layout, params long[] shape) =>
        Add(new Parameter(name, shape, ParamKind.Weight, layout, gemmWeight: true));

    private Parameter Add(Parameter p)
    {
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

    /// <summary>The dtype this module computes in, as given to <see cref="Load"/> (weights may be kept in another).</summary>
    public DType? ComputeDType { get; internal set; }

    /// <summary>
    /// Binds every parameter to the component's tensor of the same name (a missing, mis-shaped or unexpected tensor
    /// is a <see cref="WeightsException"/>) and uploads it in <paramref name="dtype"/>, convolution weights permuted
    /// OIHW → OHWI on the way. Weights get exact-size device buffers. <paramref name="lora"/> (parameter path →
    /// low-rank updates) is merged into those weights on the device: W + Σ scale · up · down by the backend's GEMM in
    /// fp32, then stored in <paramref name="dtype"/>. A backend with an <see cref="IWeightPacker"/> gets linear and
    /// convolution weights packed straight from the file's bytes, and fp16 ones stay fp16 whatever the compute dtype.
    /// </summary>
    public void Load(ComponentWeights weights, IOps ops, DType dtype, IReadOnlyDictionary<string, List<LoraUpdate>>? lora = null)
    {
        var bound = weights.Bind(ExpectedLayout());
        if (lora is not null)
            foreach (var path in lora.Keys)
                if (!bound.ContainsKey(path)) throw new WeightsException($"{weights.Source}: {weights.Name}: a LoRA targets {path}, which the model does not have");
        var packer = ops.WeightPacker;
        foreach (var (path, p) in NamedParameters())
        {
            LoadParameter(ops, packer, p, bound[path], lora?.GetValueOrDefault(path), dtype);
            bound[path].DropPages(); // the model holds its own copy now
        }
        ComputeDType = dtype;
    }

    /// <summary>
    /// The dtype a stored tensor is held in under <paramref name="compute"/>: fp16 for an fp16 GEMM weight when the
    /// backend packs weights (its GEMM widens them), else the compute dtype.
    /// </summary>
    public static DType ResidentDType(IOps ops, WeightDType stored, DType compute, bool gemmWeight = true) =>
        gemmWeight && ops.WeightPacker is not null && stored == WeightDType.F16 ? DType.F16 : compute;

    private static void LoadParameter(IOps ops, IWeightPacker? packer, Parameter p, ModelTensor t, List<LoraUpdate>? updates, DType dtype)
    {
        if (packer is not null && p.IsGemmWeight)
        {
            p.Set(LoadPacked(packer, ops, t, p, updates, ResidentDType(ops, t.DType, dtype)));
            return;
        }
        if (p.Layout != DeviceLayout.ConvOhwi && updates is null)
        {
            p.Set(t.Upload(ops.Device, dtype));
            return;
        }
        if (p.Layout != DeviceLayout.ConvOhwi)
        {
            p.Set(Merge(ops, t.ReadFloat32(), p.Shape.Select(d => (int)d).ToArray(), updates!, dtype));
            return;
        }
        // Permuted on the host while uploading (one conv weight at a time), into an exact-size buffer.
        int o = (int)p.Shape[0], i = (int)p.Shape[1], kh = (int)p.Shape[2], kw = (int)p.Shape[3];
        var ohwi = ToOhwi(t.ReadFloat32(), o, i, kh, kw);
        p.Set(updates is null
            ? Tensor.FromArray(ops.Device, ohwi, dtype, exact: true, o, kh, kw, i)
            : Merge(ops, ohwi, [o, kh, kw, i], updates, dtype));
    }

    /// <summary>
    /// A weight packed by the backend in <paramref name="resident"/>: from the mapped file's bytes in one pass when they
    /// are fp16/fp32 as stored, else (bf16, a transposed matrix, a LoRA to merge) through a row-major device tensor.
    /// </summary>
    private static Tensor LoadPacked(IWeightPacker packer, IOps ops, ModelTensor t, Parameter p, List<LoraUpdate>? updates, DType resident)
    {
        bool conv = p.Layout == DeviceLayout.ConvOhwi;
        int[] shape = conv ? [(int)p.Shape[0], (int)p.Shape[2], (int)p.Shape[3], (int)p.Shape[1]] : p.Shape.Select(d => (int)d).ToArray();
        if (updates is null && !t.Transposed && t.DType is WeightDType.F16 or WeightDType.F32)
            return packer.Pack(t.Bytes(), t.DType == WeightDType.F16 ? DType.F16 : DType.F32, shape, oihw: conv, resident);
        var rows = conv ? ToOhwi(t.ReadFloat32(), shape[0], shape[3], shape[1], shape[2]) : t.ReadFloat32();
        using var plain = updates is null
            ? Tensor.FromArray(ops.Device, rows, DType.F32, shape)
            : Merge(ops, rows, shape, updates, DType.F32);
        return packer.Pack(plain, resident);
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
