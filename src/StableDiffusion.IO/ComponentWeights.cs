using StableDiffusion.Runtime;

namespace StableDiffusion.IO;

/// <summary>
/// A tensor of a model component under its diffusers name and shape, and where its bytes are: possibly a part of a
/// stored tensor (a q/k/v slice of a fused OpenCLIP projection), always a contiguous byte range.
/// </summary>
public sealed record ModelTensor(TensorInfo Info, WeightFile File, string StoredName)
{
    public string Name => Info.Name;
    public long[] Shape => Info.Shape;
    public WeightDType DType => Info.DType;

    /// <summary>Stored as the transpose of <see cref="Shape"/> (SDXL's bigG text_projection, a bare x @ M matrix).</summary>
    public bool Transposed { get; init; }

    public ReadOnlySpan<byte> Bytes() => Transposed
        ? throw new InvalidOperationException($"{StoredName} is stored transposed; read it with ReadFloat32")
        : File.Bytes(Info);

    public Tensor Upload(ComputeDevice device, DType? deviceType = null)
    {
        if (!Transposed) return File.Upload(device, Info, deviceType);
        return Tensor.FromArray(device, ReadFloat32(), deviceType ?? WeightFile.DeviceTypeFor(DType), exact: true,
            (int)Shape[0], (int)Shape[1]);
    }

    /// <summary>Done with this tensor's bytes: see <see cref="WeightFile.DropPages"/>.</summary>
    public void DropPages() => File.DropPages(Info);

    public float[] ReadFloat32()
    {
        var stored = File.ReadFloat32(Info);
        if (!Transposed) return stored;
        // Info.Shape is the diffusers [rows, cols]; the stored matrix is [cols, rows].
        long rows = Shape[0], cols = Shape[1];
        var t = new float[stored.Length];
        for (long r = 0; r < rows; r++)
        for (long c = 0; c < cols; c++)
            t[r * cols + c] = stored[c * rows + r];
        return t;
    }
}

/// <summary>The weights of one component (unet, vae, text_encoder) in diffusers naming.</summary>
public sealed class ComponentWeights
{
    private readonly Dictionary<string, ModelTensor> tensors = new(StringComparer.Ordinal);
    private readonly List<ModelTensor> order = [];

    public ComponentWeights(string name, string source)
    {
        Name = name;
        Source = source;
    }

    public string Name { get; }

    /// <summary>The file or folder the weights come from, for messages.</summary>
    public string Source { get; }

    public IReadOnlyList<ModelTensor> Tensors => order;

    public int TensorCount => order.Count;

    public long ParameterCount => order.Sum(t => t.Info.ElementCount);

    public ModelTensor? Find(string name) => tensors.GetValueOrDefault(name);

    /// <summary>A component made of every tensor of one file already in diffusers naming (tests, tools).</summary>
    public static ComponentWeights FromFile(string name, WeightFile file)
    {
        var c = new ComponentWeights(name, file.Path);
        foreach (var t in file.Tensors) c.Add(new ModelTensor(t, file, t.Name));
        return c;
    }

    /// <summary>
    /// A component made of the tensors of several files, each stored name mapped to its diffusers name by the file's
    /// rename (a file laid out in another naming, such as the original tiny autoencoder's .pth files).
    /// </summary>
    public static ComponentWeights FromFiles(string name, string source, IEnumerable<(WeightFile File, Func<string, string> Rename)> files)
    {
        var c = new ComponentWeights(name, source);
        foreach (var (file, rename) in files)
            foreach (var t in file.Tensors) c.Add(new ModelTensor(t with { Name = rename(t.Name) }, file, t.Name));
        return c;
    }

    internal void Add(ModelTensor t)
    {
        if (!tensors.TryAdd(t.Name, t))
            throw new WeightsException($"{Source}: {Name}: {Text.Q(tensors[t.Name].StoredName)} and {Text.Q(t.StoredName)} both map to {Text.Q(t.Name)}");
        order.Add(t);
    }

    /// <summary>
    /// Checks the component against the tensors a model declares (diffusers name → shape) and returns them by name.
    /// A missing, mis-shaped or unexpected tensor is a <see cref="WeightsException"/> naming the first such tensor,
    /// with expected and found shapes, and how many other problems there are.
    /// </summary>
    public IReadOnlyDictionary<string, ModelTensor> Bind(IReadOnlyDictionary<string, long[]> expected)
    {
        var problems = new List<string>();
        var bound = new Dictionary<string, ModelTensor>(expected.Count, StringComparer.Ordinal);
        foreach (var (name, shape) in expected)
        {
            if (!tensors.TryGetValue(name, out var t))
                problems.Add($"missing tensor {Text.Q(name)} (expected shape {Shapes.Format(shape)})");
            else if (!Shapes.Equal(t.Shape, shape))
                problems.Add($"tensor {Text.Q(name)}{From(t)} has shape {Shapes.Format(t.Shape)}, expected {Shapes.Format(shape)}");
            else
                bound[name] = t;
        }
        foreach (var t in order)
            if (!expected.ContainsKey(t.Name))
                problems.Add($"unexpected tensor {Text.Q(t.Name)}{From(t)} {Shapes.Format(t.Shape)}, not part of the model");
        if (problems.Count > 0)
            throw new WeightsException($"{Source}: {Name}: {problems[0]}" +
                                       (problems.Count > 1 ? $" (and {problems.Count - 1} more problem{(problems.Count > 2 ? "s" : "")})" : ""));
        return bound;
    }

    private static string From(ModelTensor t) => t.StoredName == t.Name ? "" : $" (stored as {Text.Q(t.StoredName)})";
}
