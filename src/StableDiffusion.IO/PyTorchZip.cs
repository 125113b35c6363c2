using System.Text;
using StableDiffusion.IO.Pickle;

namespace StableDiffusion.IO;

/// <summary>
/// A PyTorch zip checkpoint (.ckpt, .pth, .pt, .bin since torch 1.6): <c>&lt;root&gt;/data.pkl</c> describes the
/// state dict, each storage's bytes are the stored (uncompressed) entry <c>&lt;root&gt;/data/&lt;key&gt;</c>. The
/// pickle is read by <see cref="Unpickler"/>, which runs no code. A root <c>{"state_dict": ...}</c> (Lightning
/// checkpoints) is unwrapped; other root entries and non-tensor values are skipped.
/// </summary>
public sealed class PyTorchZipFile : WeightFile
{
    public const int MaxPickleBytes = 256 << 20;

    private PyTorchZipFile(MappedFile file, IReadOnlyList<TensorInfo> tensors)
        : base(file, tensors, new Dictionary<string, string>()) { }

    public override string Format => "ckpt";

    public static new PyTorchZipFile Open(string path) => MappedFile.Read(path, PyTorchZip.Read);

    /// <summary>
    /// The same, with tensors inside nested dicts too, named by their keys joined with dots (A1111's embeddings keep
    /// theirs in <c>string_to_param</c>, so the tensor is <c>string_to_param.*</c>).
    /// </summary>
    public static PyTorchZipFile OpenNested(string path) => MappedFile.Read(path, f => PyTorchZip.Read(f, nested: true));

    internal static PyTorchZipFile Create(MappedFile file, IReadOnlyList<TensorInfo> tensors) => new(file, tensors);
}

internal static class PyTorchZip
{
    public static PyTorchZipFile Read(MappedFile f) => Read(f, nested: false);

    public static PyTorchZipFile Read(MappedFile f, bool nested)
    {
        string path = f.Path;
        var entries = new Dictionary<string, ZipEntry>(StringComparer.Ordinal);
        foreach (var e in ZipDirectory.Read(f))
            if (!entries.TryAdd(e.Name, e)) throw new WeightsException($"{path}: zip entry {Text.Q(e.Name)} appears twice");

        var pickles = entries.Keys.Where(n => n == "data.pkl" || (n.EndsWith("/data.pkl", StringComparison.Ordinal) && n.IndexOf('/') == n.Length - 9)).ToList();
        if (pickles.Count != 1)
            throw new WeightsException(pickles.Count == 0
                ? $"{path}: zip archive has no <root>/data.pkl, so it is not a PyTorch checkpoint"
                : $"{path}: zip archive has {pickles.Count} data.pkl entries ({string.Join(", ", pickles.Take(3).Select(Text.Q))})");
        var pkl = entries[pickles[0]];
        string root = pkl.Name[..^"data.pkl".Length];

        if (entries.TryGetValue(root + "byteorder", out var bo))
        {
            var order = Encoding.ASCII.GetString(Stored(f, bo, 16));
            if (order != "little") throw new WeightsException($"{path}: tensors are stored {Text.Q(order)}-endian; only little-endian is supported");
        }

        var pickle = Stored(f, pkl, PyTorchZipFile.MaxPickleBytes);
        if (Crc32.Compute(pickle) != pkl.Crc32)
            throw new WeightsException($"{path}: {Text.Q(pkl.Name)} fails its CRC-32 check (the file is corrupt)");
        string where = $"{path}: {pkl.Name}";
        var top = Unpickler.Load(pickle.ToArray(), where);

        if (top is PyDict d && d.Get("state_dict") is PyDict inner) top = inner;
        if (top is not PyDict dict)
            throw new WeightsException($"{where} holds a {Py.TypeName(top)}, not a dict of tensors");

        var tensors = new List<TensorInfo>();
        void Collect(PyDict d, string prefix, int depth)
        {
            foreach (var (key, value) in d.Entries)
            {
                if (key is not string name) continue;
                if (value is PyTensor t) tensors.Add(Describe(f, entries, root, prefix + name, t, where));
                else if (nested && value is PyDict inner && depth < 4) Collect(inner, prefix + name + ".", depth + 1);
            }
        }
        Collect(dict, "", 0);
        if (tensors.Count == 0) throw new WeightsException($"{where} holds no tensors");
        return PyTorchZipFile.Create(f, tensors);
    }

    private static TensorInfo Describe(MappedFile f, Dictionary<string, ZipEntry> entries, string root, string name, PyTensor t, string where)
    {
        var s = t.Storage;
        if (s.DType is not WeightDType dtype)
            throw new WeightsException($"{where}: tensor {Text.Q(name)} is stored as torch.{s.TypeName}, which sd does not load (supported: {WeightDTypeExtensions.Supported})");
        int size = dtype.SizeInBytes();
        string entryName = root + "data/" + s.Key;
        if (!entries.TryGetValue(entryName, out var entry))
            throw new WeightsException($"{where}: tensor {Text.Q(name)} needs storage {Text.Q(entryName)}, which the archive lacks");
        if (!entry.IsStored)
            throw new WeightsException($"{f.Path}: zip entry {Text.Q(entryName)} is compressed or encrypted (method {entry.Method}); re-save with torch.save or convert to safetensors");
        if (s.Elements > long.MaxValue / size || entry.Size != s.Elements * size || entry.CompressedSize != entry.Size)
            throw new WeightsException($"{where}: storage {Text.Q(entryName)} holds {entry.Size} bytes, the pickle says {s.Elements} × {size}");
        if (t.Shape.Length != t.Stride.Length)
            throw new WeightsException($"{where}: tensor {Text.Q(name)} has {t.Shape.Length} sizes but {t.Stride.Length} strides");
        long bytes = Shapes.CheckedByteCount(t.Shape, size);
        if (bytes < 0) throw new WeightsException($"{where}: tensor {Text.Q(name)} has an invalid shape {Shapes.Format(t.Shape)}");
        long n = bytes / size;
        if (t.StorageOffset < 0 || t.StorageOffset > s.Elements || n > s.Elements - t.StorageOffset)
            throw new WeightsException($"{where}: tensor {Text.Q(name)} ({n} elements at offset {t.StorageOffset}) does not fit its storage of {s.Elements}");
        if (n > 0 && !IsContiguous(t.Shape, t.Stride))
            throw new WeightsException($"{where}: tensor {Text.Q(name)} has strides {Shapes.Format(t.Stride)} for shape {Shapes.Format(t.Shape)}; only contiguous tensors are supported (save tensor.contiguous())");
        return new TensorInfo(name, dtype, t.Shape, entry.DataOffset + t.StorageOffset * size, bytes);
    }

    // Row-major; a dimension of size 1 may carry any stride, as in torch's own is_contiguous.
    private static bool IsContiguous(long[] shape, long[] stride)
    {
        long expected = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            if (shape[i] != 1 && stride[i] != expected) return false;
            expected *= shape[i];
        }
        return true;
    }

    private static ReadOnlySpan<byte> Stored(MappedFile f, ZipEntry e, long limit)
    {
        if (!e.IsStored)
            throw new WeightsException($"{f.Path}: zip entry {Text.Q(e.Name)} is compressed or encrypted (method {e.Method}); only stored entries are supported");
        if (e.Size != e.CompressedSize)
            throw new WeightsException($"{f.Path}: zip entry {Text.Q(e.Name)} is stored but its sizes differ ({e.CompressedSize} vs {e.Size})");
        if (e.Size > limit)
            throw new WeightsException($"{f.Path}: zip entry {Text.Q(e.Name)} is {e.Size} bytes, over the {limit}-byte limit");
        return f.Span(e.DataOffset, e.Size);
    }
}
