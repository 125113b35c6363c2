using System.Buffers.Binary;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace StableDiffusion.IO;

/// <summary>
/// One tensor to write. <paramref name="WriteData"/> must write exactly the tensor's bytes; null leaves them zero
/// (a hole in the file where the file system allows), which is what layout-accurate test files want.
/// </summary>
public sealed record SafetensorsEntry(string Name, WeightDType DType, long[] Shape, Action<Stream>? WriteData = null)
{
    public long ByteLength => Shapes.CheckedByteCount(Shape, DType.SizeInBytes());

    public static SafetensorsEntry FromBytes(string name, WeightDType dtype, long[] shape, byte[] data) =>
        new(name, dtype, shape, s => s.Write(data));
}

/// <summary>
/// Writes .safetensors files the way the reference implementation does, so equal inputs give equal bytes: tensors
/// ordered by dtype (wider first) then name, compact JSON with <c>__metadata__</c> first, the header padded with
/// spaces to a multiple of 8 bytes.
/// </summary>
public static class SafetensorsWriter
{
    // The reference sorts by its Dtype enum, descending: I64 > F32 > I32 > BF16 > F16.
    private static int Rank(WeightDType t) => t switch
    {
        WeightDType.I64 => 4,
        WeightDType.F32 => 3,
        WeightDType.I32 => 2,
        WeightDType.BF16 => 1,
        _ => 0,
    };

    /// <summary>The entries in file order.</summary>
    public static List<SafetensorsEntry> Order(IEnumerable<SafetensorsEntry> entries)
    {
        var list = entries.ToList();
        list.Sort((a, b) => Rank(a.DType) != Rank(b.DType) ? Rank(b.DType).CompareTo(Rank(a.DType)) : string.CompareOrdinal(a.Name, b.Name));
        return list;
    }

    /// <summary>The padded JSON header for <paramref name="ordered"/> (already in file order).</summary>
    public static byte[] Header(IReadOnlyList<SafetensorsEntry> ordered, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        using var json = new MemoryStream();
        using (var w = new Utf8JsonWriter(json, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal)) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var e in ordered)
            {
                if (e.Name == "__metadata__" || !names.Add(e.Name))
                    throw new WeightsException($"safetensors writer: tensor name {Text.Q(e.Name)} is reserved or repeated");
                long size = e.ByteLength;
                if (size < 0) throw new WeightsException($"safetensors writer: tensor {Text.Q(e.Name)} has an invalid shape {Shapes.Format(e.Shape)}");
                w.WriteStartObject(e.Name);
                w.WriteString("dtype", e.DType.Name());
                w.WriteStartArray("shape");
                foreach (var d in e.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + size);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += size;
            }
            w.WriteEndObject();
        }
        int pad = (int)((8 - json.Length % 8) % 8);
        for (int i = 0; i < pad; i++) json.WriteByte((byte)' ');
        return json.ToArray();
    }

    public static void Write(string path, IEnumerable<SafetensorsEntry> entries, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var ordered = Order(entries);
        var header = Header(ordered, metadata);
        var tmp = path + ".tmp";
        try
        {
            using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                Span<byte> len = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
                f.Write(len);
                f.Write(header);
                foreach (var e in ordered)
                {
                    long start = f.Position, size = e.ByteLength;
                    if (e.WriteData is null)
                    {
                        f.Seek(size, SeekOrigin.Current);
                        continue;
                    }
                    e.WriteData(f);
                    if (f.Position - start != size)
                        throw new WeightsException($"safetensors writer: tensor {Text.Q(e.Name)} wrote {f.Position - start} bytes, its shape needs {size}");
                }
                f.SetLength(f.Position); // a trailing run of zero tensors still has to reach the file's end
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new WeightsException($"{path}: cannot write: {Text.OneLine(e.Message)}", e);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }
}
