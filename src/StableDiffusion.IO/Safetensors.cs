using System.Buffers.Binary;
using System.Text.Json;

namespace StableDiffusion.IO;

/// <summary>
/// A .safetensors file: an 8-byte little-endian header length N, N bytes of JSON
/// (<c>{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {string: string}}</c>),
/// then the tensor bytes, offsets relative to the end of the header. Every rule of the format is checked
/// before a tensor is handed out.
/// </summary>
public sealed class SafetensorsFile : WeightFile
{
    public const long MaxHeaderBytes = 100_000_000;

    // Spellings of the format's other dtypes, so a refusal can say "unsupported" rather than "unknown".
    private static readonly HashSet<string> KnownUnsupported =
        ["F64", "I8", "U8", "I16", "U16", "U32", "U64", "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"];

    private SafetensorsFile(MappedFile file, IReadOnlyList<TensorInfo> tensors, IReadOnlyDictionary<string, string> metadata)
        : base(file, tensors, metadata) { }

    public override string Format => "safetensors";

    public static new SafetensorsFile Open(string path) => MappedFile.Read(path, Read);

    internal static SafetensorsFile Read(MappedFile file)
    {
        var (tensors, metadata) = ParseHeader(file);
        return new SafetensorsFile(file, tensors, metadata);
    }

    private static (List<TensorInfo>, Dictionary<string, string>) ParseHeader(MappedFile file)
    {
        string path = file.Path;
        if (file.Length < 8)
            throw new WeightsException($"{path}: {file.Length} bytes is too short for a safetensors file (the header length alone takes 8)");
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(file.Span(0, 8));
        if (n > MaxHeaderBytes)
            throw new WeightsException($"{path}: header length {n} is over the {MaxHeaderBytes}-byte limit (not a safetensors file, or a corrupt one)");
        if ((long)n > file.Length - 8)
            throw new WeightsException($"{path}: header length {n} runs past the end of the file ({file.Length} bytes)");
        long dataStart = 8 + (long)n;
        long dataLength = file.Length - dataStart;

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(file.Span(8, (long)n).ToArray(), new JsonDocumentOptions { MaxDepth = 8 });
        }
        catch (JsonException e)
        {
            throw new WeightsException($"{path}: header is not valid JSON: {Text.OneLine(e.Message)}", e);
        }
        using (doc)
        {
            try
            {
                return ParseEntries(doc.RootElement, path, dataStart, dataLength);
            }
            catch (InvalidOperationException e)
            {
                // System.Text.Json refuses to transcode ill-formed UTF-8 strings this way.
                throw new WeightsException($"{path}: header holds text that is not valid UTF-8: {Text.OneLine(e.Message)}", e);
            }
        }
    }

    private static (List<TensorInfo>, Dictionary<string, string>) ParseEntries(JsonElement root, string path, long dataStart, long dataLength)
    {
        if (root.ValueKind != JsonValueKind.Object)
            throw new WeightsException($"{path}: header is a JSON {Kind(root)}, not an object");
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var tensors = new List<TensorInfo>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var ranges = new List<(long Begin, long End, string Name)>();
        foreach (var prop in root.EnumerateObject())
        {
            string name = prop.Name;
            if (!seen.Add(name))
                throw new WeightsException($"{path}: duplicate entry {Text.Q(name)} in the header");
            if (name == "__metadata__")
            {
                ReadMetadata(prop.Value, path, metadata);
                continue;
            }
            var (dtype, shape, begin, end) = ReadEntry(prop.Value, path, name);
            long need = Shapes.CheckedByteCount(shape, dtype.SizeInBytes());
            if (need < 0)
                throw new WeightsException($"{path}: tensor {Text.Q(name)} shape {Shapes.Format(shape)} is too large");
            if (end - begin != need)
                throw new WeightsException($"{path}: tensor {Text.Q(name)} is {dtype.Name()}{Shapes.Format(shape)}, {need} bytes, but data_offsets [{begin}, {end}] hold {end - begin}");
            ranges.Add((begin, end, name));
            tensors.Add(new TensorInfo(name, dtype, shape, dataStart + begin, need));
        }

        // The byte ranges must tile the data section exactly: no gap, no overlap, nothing past the end.
        ranges.Sort((a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin) : a.End.CompareTo(b.End));
        long expected = 0;
        foreach (var (begin, end, name) in ranges)
        {
            if (begin != expected)
                throw new WeightsException(begin < expected
                    ? $"{path}: tensor {Text.Q(name)} data_offsets [{begin}, {end}] overlap the previous tensor, which ends at {expected}"
                    : $"{path}: tensor {Text.Q(name)} data_offsets [{begin}, {end}] leave a gap after offset {expected}");
            if (end > dataLength)
                throw new WeightsException($"{path}: tensor {Text.Q(name)} data_offsets [{begin}, {end}] run past the end of the data ({dataLength} bytes)");
            expected = end;
        }
        if (expected != dataLength)
            throw new WeightsException($"{path}: the tensors cover {expected} bytes of data but the file holds {dataLength} after its header");
        return (tensors, metadata);
    }

    private static void ReadMetadata(JsonElement value, string path, Dictionary<string, string> metadata)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw new WeightsException($"{path}: __metadata__ is a JSON {Kind(value)}, not an object of strings");
        foreach (var m in value.EnumerateObject())
        {
            if (m.Value.ValueKind != JsonValueKind.String)
                throw new WeightsException($"{path}: __metadata__ entry {Text.Q(m.Name)} is a JSON {Kind(m.Value)}, not a string");
            if (!metadata.TryAdd(m.Name, m.Value.GetString()!))
                throw new WeightsException($"{path}: duplicate __metadata__ entry {Text.Q(m.Name)}");
        }
    }

    private static (WeightDType, long[], long, long) ReadEntry(JsonElement e, string path, string name)
    {
        if (e.ValueKind != JsonValueKind.Object)
            throw new WeightsException($"{path}: tensor {Text.Q(name)} is a JSON {Kind(e)}, not an object");
        JsonElement dtypeEl = default, shapeEl = default, offsetsEl = default;
        bool hasDtype = false, hasShape = false, hasOffsets = false;
        foreach (var p in e.EnumerateObject())
        {
            switch (p.Name)
            {
                case "dtype": dtypeEl = p.Value; hasDtype = Once(hasDtype, "dtype"); break;
                case "shape": shapeEl = p.Value; hasShape = Once(hasShape, "shape"); break;
                case "data_offsets": offsetsEl = p.Value; hasOffsets = Once(hasOffsets, "data_offsets"); break;
            }
        }
        if (!hasDtype || !hasShape || !hasOffsets)
            throw new WeightsException($"{path}: tensor {Text.Q(name)} lacks {(!hasDtype ? "dtype" : !hasShape ? "shape" : "data_offsets")}");
        if (dtypeEl.ValueKind != JsonValueKind.String)
            throw new WeightsException($"{path}: tensor {Text.Q(name)} dtype is a JSON {Kind(dtypeEl)}, not a string");
        var dtypeName = dtypeEl.GetString()!;
        if (!WeightDTypeExtensions.TryParse(dtypeName, out var dtype))
            throw new WeightsException(KnownUnsupported.Contains(dtypeName)
                ? $"{path}: tensor {Text.Q(name)} has dtype {dtypeName}, which sd does not load (supported: {WeightDTypeExtensions.Supported})"
                : $"{path}: tensor {Text.Q(name)} has unknown dtype {Text.Q(dtypeName)} (supported: {WeightDTypeExtensions.Supported})");
        var shape = Integers(shapeEl, path, name, "shape", -1);
        var offsets = Integers(offsetsEl, path, name, "data_offsets", 2);
        if (offsets[1] < offsets[0])
            throw new WeightsException($"{path}: tensor {Text.Q(name)} data_offsets [{offsets[0]}, {offsets[1]}] end before they begin");
        return (dtype, shape, offsets[0], offsets[1]);

        bool Once(bool already, string key) => already
            ? throw new WeightsException($"{path}: tensor {Text.Q(name)} has '{key}' twice")
            : true;
    }

    private static long[] Integers(JsonElement e, string path, string name, string what, int count)
    {
        if (e.ValueKind != JsonValueKind.Array)
            throw new WeightsException($"{path}: tensor {Text.Q(name)} {what} is a JSON {Kind(e)}, not an array");
        int length = e.GetArrayLength();
        if (count >= 0 && length != count)
            throw new WeightsException($"{path}: tensor {Text.Q(name)} {what} has {length} entries, not {count}");
        var result = new long[length];
        int i = 0;
        foreach (var x in e.EnumerateArray())
        {
            if (x.ValueKind != JsonValueKind.Number || !x.TryGetInt64(out var v) || v < 0)
                throw new WeightsException($"{path}: tensor {Text.Q(name)} {what} entry {i} ({Text.Q(x.GetRawText())}) is not a non-negative integer");
            result[i++] = v;
        }
        return result;
    }

    private static string Kind(JsonElement e) => e.ValueKind.ToString().ToLowerInvariant();
}
