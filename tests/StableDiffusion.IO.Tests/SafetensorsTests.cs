using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using StableDiffusion.IO.Tests.Support;

namespace StableDiffusion.IO.Tests;

public class SafetensorsTests
{
    private static byte[] File(string headerJson, int dataBytes, bool pad = false)
    {
        var h = Encoding.UTF8.GetBytes(headerJson);
        if (pad) h = [.. h, .. Enumerable.Repeat((byte)' ', (8 - h.Length % 8) % 8)];
        var b = new byte[8 + h.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(b, (ulong)h.Length);
        h.CopyTo(b, 8);
        return b;
    }

    private static WeightFile Read(byte[] bytes, string name = "t.safetensors") => WeightFile.Open(MappedFile.FromBytes(bytes, name));

    private static string Refuse(byte[] bytes)
    {
        var e = Assert.Throws<WeightsException>(() => Read(bytes).Dispose());
        Assert.DoesNotContain('\n', e.Message);
        return e.Message;
    }

    [Fact]
    public void ReadsAHandWrittenFileAsTheFormatDescribesIt()
    {
        // Two tensors in file order b, a; offsets relative to the end of the header.
        var bytes = File("""{"__metadata__":{"format":"pt"},"b":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1,1],"data_offsets":[4,8]}}""", 8);
        int data = bytes.Length - 8;
        BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(data), (Half)1.5);
        BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(data + 2), (Half)(-2));
        BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(data + 4), 3.25f);
        using var f = Read(bytes);
        Assert.Equal("safetensors", f.Format);
        Assert.Equal("pt", f.Metadata["format"]);
        var b = f.Find("b")!;
        Assert.Equal(WeightDType.F16, b.DType);
        Assert.Equal([2L], b.Shape);
        Assert.Equal(data, b.Offset);
        Assert.Equal([1.5f, -2f], f.ReadFloat32(b));
        Assert.Equal([3.25f], f.ReadFloat32(f.Find("a")!));
    }

    [Fact]
    public void WriterRoundTripsEveryDType()
    {
        using var dir = new TempDir();
        var path = dir.File("all.safetensors");
        var rng = new Random(1);
        var entries = new List<(string, WeightDType, long[], byte[])>();
        foreach (var dt in Enum.GetValues<WeightDType>())
        {
            long[] shape = [3, 5];
            var data = new byte[15 * dt.SizeInBytes()];
            rng.NextBytes(data);
            entries.Add(($"t.{dt}", dt, shape, data));
        }
        entries.Add(("empty", WeightDType.F32, [0, 4], []));
        entries.Add(("scalar", WeightDType.I64, [], new byte[8]));
        SafetensorsWriter.Write(path, entries.Select(e => SafetensorsEntry.FromBytes(e.Item1, e.Item2, e.Item3, e.Item4)),
            new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode" });
        using var f = WeightFile.Open(path);
        Assert.Equal("ünïcode", f.Metadata["note"]);
        foreach (var (name, dt, shape, data) in entries)
        {
            var t = f.Find(name)!;
            Assert.Equal(dt, t.DType);
            Assert.Equal(shape, t.Shape);
            Assert.Equal(data, f.Bytes(t).ToArray());
        }
    }

    [Fact]
    public void WriterFollowsTheReferenceLayout()
    {
        using var dir = new TempDir();
        var path = dir.File("x.safetensors");
        SafetensorsWriter.Write(path,
        [
            new SafetensorsEntry("z", WeightDType.F16, [1]),
            new SafetensorsEntry("b", WeightDType.F32, [1]),
            new SafetensorsEntry("a", WeightDType.F32, [1]),
            new SafetensorsEntry("ids", WeightDType.I64, [1]),
        ]);
        var bytes = System.IO.File.ReadAllBytes(path);
        long n = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        Assert.Equal(0, (8 + n) % 8); // padded so the data starts 8-byte aligned
        var header = Encoding.UTF8.GetString(bytes, 8, (int)n);
        Assert.Equal(header.TrimEnd(' '), header.TrimEnd(' ').Trim()); // padding is trailing spaces only
        // Wider dtypes first, then names: I64, F32 (a, b), F16.
        Assert.Equal(
            """{"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]},"z":{"dtype":"F16","shape":[1],"data_offsets":[16,18]}}""",
            header.TrimEnd(' '));
        Assert.Equal(8 + n + 18, bytes.Length);
    }

    // The real diffusers files written by current safetensors have exactly the size our writer gives their layout
    // (metadata {"format": "pt"}); the TSVs and the sizes come from ../shared/reference.
    [SkippableTheory]
    [InlineData("sd15_diffusers_unet.tsv", true, "HDRJ-One+runwayml-stable-diffusion-v1-5/unet/diffusion_pytorch_model.fp16.safetensors")]
    [InlineData("sd15_diffusers_vae.tsv", false, "HDRJ-One+runwayml-stable-diffusion-v1-5/vae/diffusion_pytorch_model.safetensors")]
    [InlineData("sd15_diffusers_text_encoder.tsv", true, "HDRJ-One+runwayml-stable-diffusion-v1-5/text_encoder/model.fp16.safetensors")]
    public void WriterReproducesRealFileSizes(string layout, bool fp16, string realFile)
    {
        var entries = Reference.Layout(layout)
            .Select(r => new SafetensorsEntry(r.Name, fp16 && r.DType == WeightDType.F32 ? WeightDType.F16 : r.DType, r.Shape))
            .ToList();
        var header = SafetensorsWriter.Header(SafetensorsWriter.Order(entries), new Dictionary<string, string> { ["format"] = "pt" });
        long size = 8 + header.Length + entries.Sum(e => e.ByteLength);
        Assert.Equal(Reference.RealFileSizes()[realFile], size);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(7)]
    public void RefusesFilesTooShortForTheLength(int length)
    {
        Assert.Contains("too short", Refuse(new byte[length]));
    }

    [Fact]
    public void RefusesHeaderLengthsOverTheLimitOrPastTheEnd()
    {
        var b = File("{}", 0);
        BinaryPrimitives.WriteUInt64LittleEndian(b, 100_000_001);
        Assert.Contains("over the 100000000-byte limit", Refuse(b));
        BinaryPrimitives.WriteUInt64LittleEndian(b, ulong.MaxValue);
        Assert.Contains("limit", Refuse(b));
        BinaryPrimitives.WriteUInt64LittleEndian(b, 3);
        Assert.Contains("runs past the end of the file", Refuse(b));
    }

    [Theory]
    [InlineData("{", "not valid JSON")]
    [InlineData("[1,2]", "JSON array, not an object")]
    [InlineData("\"x\"", "JSON string, not an object")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", "duplicate entry 'a'")]
    [InlineData("{\"__metadata__\":{\"k\":1},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "__metadata__ entry 'k' is a JSON number")]
    [InlineData("{\"__metadata__\":[],\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "__metadata__ is a JSON array")]
    [InlineData("{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", "dtype F64, which sd does not load")]
    [InlineData("{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", "unknown dtype 'Q4'")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", "12 bytes, but data_offsets [0, 8] hold 8")]
    [InlineData("{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[2,6]}}", "overlap")]
    [InlineData("{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[4,8]}}", "gap after offset 0")]
    [InlineData("{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", "cover 4 bytes of data but the file holds 8")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", "run past the end of the data")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", "not a non-negative integer")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", "not a non-negative integer")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999,99999999999],\"data_offsets\":[0,8]}}", "too large")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", "end before they begin")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", "has 1 entries, not 2")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", "lacks data_offsets")]
    [InlineData("{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", "dtype is a JSON number")]
    [InlineData("{\"a\":[[[[[[[[[[1]]]]]]]]]]}", "not valid JSON")]
    [InlineData("{\"a\\nb\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", "'a\\u000ab'")]
    public void RefusesEveryBrokenRuleWithAOneLineMessage(string header, string expected)
    {
        var msg = Refuse(File(header, 8));
        Assert.Contains(expected, msg);
        Assert.StartsWith("t.safetensors: ", msg);
    }

    [Fact]
    public void RefusesInvalidUtf8InNames()
    {
        var h = Encoding.UTF8.GetBytes("{\"a?\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}");
        h[3] = 0xFF;
        var b = new byte[8 + h.Length + 8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, (ulong)h.Length);
        h.CopyTo(b, 8);
        Refuse(b);
    }

    [Fact]
    public void AcceptsZeroSizedTensorsAnywhereInTheOrder()
    {
        using var f = Read(File("""{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"c":{"dtype":"F16","shape":[3,0],"data_offsets":[8,8]}}""", 8));
        Assert.Equal(3, f.Tensors.Count);
        Assert.Equal(0, f.Find("c")!.ByteLength);
    }

    [Fact]
    public void OpenNamesAMissingFile()
    {
        var e = Assert.Throws<WeightsException>(() => WeightFile.Open("/nonexistent/model.safetensors"));
        Assert.Contains("/nonexistent/model.safetensors", e.Message);
    }

    [Fact]
    public void WriterRefusesDataOfTheWrongSize()
    {
        using var dir = new TempDir();
        Assert.Throws<WeightsException>(() => SafetensorsWriter.Write(dir.File("x.safetensors"),
            [SafetensorsEntry.FromBytes("a", WeightDType.F32, [2], new byte[4])]));
        Assert.Throws<WeightsException>(() => SafetensorsWriter.Write(dir.File("y.safetensors"),
            [new SafetensorsEntry("a", WeightDType.F32, [1]), new SafetensorsEntry("a", WeightDType.F16, [1])]));
        Assert.False(System.IO.File.Exists(dir.File("x.safetensors")));
    }

    [Fact]
    public void HeaderIsCompactJsonTheReferenceParserAccepts()
    {
        var header = SafetensorsWriter.Header([new SafetensorsEntry("a\"b", WeightDType.BF16, [2, 3])]);
        using var doc = JsonDocument.Parse(Encoding.UTF8.GetString(header).TrimEnd());
        Assert.Equal("BF16", doc.RootElement.GetProperty("a\"b").GetProperty("dtype").GetString());
    }
}
