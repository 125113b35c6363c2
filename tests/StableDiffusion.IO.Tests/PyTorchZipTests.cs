using System.IO.Compression;
using System.Text.Json;
using StableDiffusion.IO.Pickle;
using StableDiffusion.IO.Tests.Support;

namespace StableDiffusion.IO.Tests;

public class PyTorchZipTests
{
    public static TheoryData<string> ExpectedFiles => new() { "taef2_decoder.pth", "taesana_encoder.pth" };

    [SkippableTheory]
    [MemberData(nameof(ExpectedFiles))]
    public void RealFilesMatchExpectedJson(string file)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Reference.Require("pth", "expected.json")));
        var expected = doc.RootElement.GetProperty("files").GetProperty(file);
        using var f = WeightFile.Open(Reference.Require("pth", file));
        Assert.Equal("ckpt", f.Format);
        var tensors = expected.GetProperty("tensors").EnumerateArray().ToList();
        Assert.Equal(expected.GetProperty("tensor_count").GetInt32(), f.Tensors.Count);
        Assert.Equal(tensors.Select(t => t.GetProperty("name").GetString()), f.Tensors.Select(t => t.Name));
        foreach (var e in tensors)
        {
            var t = f.Find(e.GetProperty("name").GetString()!)!;
            Assert.Equal(e.GetProperty("dtype").GetString(), t.DType.Name());
            Assert.Equal(e.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()), t.Shape);
            var v = f.ReadFloat32(t);
            double sum = 0, abs = 0;
            foreach (var x in v)
            {
                sum += x;
                abs += Math.Abs(x);
            }
            // expected.json rounds sums to 6 decimals.
            Assert.Equal(e.GetProperty("sum").GetDouble(), sum, 5e-6 + 1e-9 * abs);
            Assert.Equal(e.GetProperty("abs_sum").GetDouble(), abs, 5e-6 + 1e-9 * abs);
            var first = e.GetProperty("first").EnumerateArray().Select(x => x.GetDouble()).ToArray();
            for (int i = 0; i < first.Length; i++) Assert.Equal(first[i], v[i]);
            Assert.Equal(0, (t.Offset - f.Tensors[0].Offset) % 2);
        }
    }

    [SkippableFact]
    public void TheThirdRealFileLoadsWith64ByteAlignedStorages()
    {
        using var f = WeightFile.Open(Reference.Require("pth", "taef2_encoder.pth"));
        Assert.NotEmpty(f.Tensors);
        // Newer torch aligns every storage to 64 bytes; each tensor here starts its storage.
        Assert.All(f.Tensors, t => Assert.Equal(0, t.Offset % 64));
        Assert.All(f.Tensors, t => Assert.Equal(WeightDType.F16, t.DType));
    }

    [Fact]
    public void ZipDirectoryAgreesWithTheBclZipWriter()
    {
        using var dir = new TempDir();
        var path = dir.File("bcl.zip");
        var payload = Enumerable.Range(0, 1000).Select(i => (byte)(i * 7)).ToArray();
        using (var z = ZipFile.Open(path, ZipArchiveMode.Create))
        {
            using (var s = z.CreateEntry("root/plain", CompressionLevel.NoCompression).Open()) s.Write(payload);
            using (var s = z.CreateEntry("root/deflated", CompressionLevel.Optimal).Open()) s.Write(payload);
        }
        using var map = MappedFile.Open(path);
        var entries = ZipDirectory.Read(map).ToDictionary(e => e.Name);
        Assert.Equal(Crc32.Compute(payload), entries["root/deflated"].Crc32);
        Assert.NotEqual(0, entries["root/deflated"].Method);
        var plain = entries["root/plain"];
        Assert.True(plain.IsStored);
        Assert.Equal(payload, map.Span(plain.DataOffset, plain.Size).ToArray());
    }

    [Fact]
    public void ReadsAWrittenCheckpointWithStateDictAndSharedStorage()
    {
        using var dir = new TempDir();
        var path = dir.File("m.ckpt");
        var data = new byte[6 * 4];
        for (int i = 0; i < 6; i++) BitConverter.TryWriteBytes(data.AsSpan(i * 4), i + 0.5f);
        var bf = new byte[] { 0x80, 0x3F, 0x00, 0xC0 }; // bf16 1.0, -2.0
        var ids = new byte[16];
        BitConverter.TryWriteBytes(ids.AsSpan(8), 7L);
        TorchWriter.Write(path,
        [
            new("w", "FloatStorage", [2, 3], data, Key: "s"),
            new("row1", "FloatStorage", [3], StorageOffset: 3, StorageElements: 6, Key: "s"),
            new("b", "BFloat16Storage", [2], bf),
            new("ids", "LongStorage", [1, 2], ids),
        ], wrapInStateDict: true, zip64: true);
        using var f = WeightFile.Open(path);
        Assert.Equal(["w", "row1", "b", "ids"], f.Tensors.Select(t => t.Name));
        Assert.Equal([0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f], f.ReadFloat32(f.Find("w")!));
        Assert.Equal([3.5f, 4.5f, 5.5f], f.ReadFloat32(f.Find("row1")!));
        Assert.Equal([1f, -2f], f.ReadFloat32(f.Find("b")!));
        Assert.Equal([0f, 7f], f.ReadFloat32(f.Find("ids")!));
        Assert.Equal(WeightDType.I64, f.Find("ids")!.DType);
    }

    private static string RefuseFile(string path)
    {
        var e = Assert.Throws<WeightsException>(() => WeightFile.Open(path).Dispose());
        Assert.DoesNotContain('\n', e.Message);
        return e.Message;
    }

    [Theory]
    [InlineData("os", "system")]
    [InlineData("posix", "system")]
    [InlineData("builtins", "eval")]
    [InlineData("builtins", "exec")]
    [InlineData("subprocess", "Popen")]
    [InlineData("torch", "load")]
    [InlineData("torch._utils", "_rebuild_parameter")]
    public void HostileGlobalsAreRefusedAndRunNothing(string module, string name)
    {
        using var dir = new TempDir();
        var marker = dir.File("pwned");
        // The classic payload: GLOBAL os.system, ("touch marker",), REDUCE — as the root and inside a state dict.
        var pkl = new PickleBuilder().Proto().Global(module, name).Mark().Str($"touch {marker}").Tuple().Reduce().Stop().ToArray();
        var e = Assert.Throws<WeightsException>(() => Unpickler.Load(pkl, "evil.pkl"));
        Assert.Contains($"'{module}.{name}'", e.Message);
        Assert.Contains("not allowed", e.Message);

        var path = dir.File("evil.ckpt");
        TorchWriter.WriteZip(path, [("archive/data.pkl", pkl.Length, pkl)]);
        Assert.Contains($"'{module}.{name}'", RefuseFile(path));

        // STACK_GLOBAL spells the same thing from two strings.
        var sg = new PickleBuilder().Proto(4).Str(module).Str(name).Op(0x93).Mark().Str($"touch {marker}").Tuple().Reduce().Stop().ToArray();
        Assert.Contains($"'{module}.{name}'", Assert.Throws<WeightsException>(() => Unpickler.Load(sg, "evil.pkl")).Message);
        Assert.False(File.Exists(marker));
    }

    [Fact]
    public void NonContiguousStridesAreAClearError()
    {
        using var dir = new TempDir();
        var path = dir.File("t.pth");
        TorchWriter.Write(path, [new("transposed", "FloatStorage", [2, 3], new byte[24], Stride: [1, 2])]);
        var msg = RefuseFile(path);
        Assert.Contains("'transposed'", msg);
        Assert.Contains("strides [1, 2]", msg);
        Assert.Contains("contiguous", msg);
    }

    [Fact]
    public void SizeOneDimensionsMayHaveAnyStride()
    {
        using var dir = new TempDir();
        var path = dir.File("t.pth");
        TorchWriter.Write(path, [new("x", "HalfStorage", [1, 4, 1], new byte[8], Stride: [99, 1, 7])]);
        using var f = WeightFile.Open(path);
        Assert.Equal([1L, 4, 1], f.Find("x")!.Shape);
    }

    [Fact]
    public void CompressedStorageIsRefusedByName()
    {
        using var dir = new TempDir();
        var path = dir.File("c.pth");
        var pkl = TorchWriter.StateDictPickle([new("w", "FloatStorage", [2])], false, out _);
        TorchWriter.WriteZip(path, [("archive/data.pkl", pkl.Length, pkl)]);
        // Rewrite with a deflated storage entry (method 8) after a stored data.pkl.
        var zipPath = dir.File("c2.pth");
        using (var z = ZipFile.Open(zipPath, ZipArchiveMode.Create))
        {
            using (var s = z.CreateEntry("archive/data.pkl", CompressionLevel.NoCompression).Open()) s.Write(pkl);
            using (var s = z.CreateEntry("archive/data/0", CompressionLevel.Optimal).Open()) s.Write(new byte[8]);
        }
        var msg = RefuseFile(zipPath);
        Assert.Contains("'archive/data/", msg);
        Assert.Contains("compressed", msg);
    }

    [Fact]
    public void UnsupportedStorageTypesAndMissingStoragesAreNamed()
    {
        using var dir = new TempDir();
        var a = dir.File("a.pth");
        TorchWriter.Write(a, [new("d", "DoubleStorage", [2], new byte[16])]);
        Assert.Contains("torch.DoubleStorage", RefuseFile(a));

        var b = dir.File("b.pth");
        var pkl = TorchWriter.StateDictPickle([new("w", "FloatStorage", [2])], false, out _);
        TorchWriter.WriteZip(b, [("archive/data.pkl", pkl.Length, pkl)]);
        Assert.Contains("needs storage 'archive/data/0'", RefuseFile(b));

        var c = dir.File("c.pth");
        TorchWriter.Write(c, [new("w", "FloatStorage", [4], StorageElements: 2)]);
        Assert.Contains("does not fit its storage", RefuseFile(c));
    }

    [Fact]
    public void LegacyAndCorruptArchivesAreNamed()
    {
        using var dir = new TempDir();
        var legacy = dir.File("old.ckpt");
        File.WriteAllBytes(legacy, [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]);
        Assert.Contains("legacy", RefuseFile(legacy));

        var noPkl = dir.File("nopkl.pth");
        TorchWriter.WriteZip(noPkl, [("archive/other", 3, [1, 2, 3])]);
        Assert.Contains("no <root>/data.pkl", RefuseFile(noPkl));

        var crc = dir.File("crc.pth");
        TorchWriter.Write(crc, [new("w", "FloatStorage", [1], new byte[4])]);
        var bytes = File.ReadAllBytes(crc);
        int at = bytes.AsSpan().IndexOf("state"u8.ToArray()) is var i and >= 0 ? i : bytes.AsSpan().IndexOf((byte)'w');
        bytes[at] ^= 0x20;
        File.WriteAllBytes(crc, bytes);
        Assert.Contains("CRC-32", RefuseFile(crc));
    }

    [Theory]
    [InlineData(new byte[] { 0x80, 0x02, (byte)'S', (byte)'\'', (byte)'x', (byte)'\'', (byte)'\n', (byte)'.' }, "0x53 (STRING")]
    [InlineData(new byte[] { 0x80, 0x02, 0xFF, (byte)'.' }, "unsupported pickle opcode 0xff")]
    [InlineData(new byte[] { 0x80, 0x02, (byte)'h', 5, (byte)'.' }, "memo entry 5 was never stored")]
    [InlineData(new byte[] { 0x80, 0x02, (byte)'t', (byte)'.' }, "no MARK")]
    [InlineData(new byte[] { 0x80, 0x02, (byte)'a' }, "stack underflow")]
    [InlineData(new byte[] { 0x80, 0x02, (byte)'X', 0xFF, 0xFF, 0xFF, 0x7F }, "truncated")]
    [InlineData(new byte[] { 0x80, 0x02, 0x8a, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, (byte)'.' }, "LONG1 of 9 bytes")]
    [InlineData(new byte[] { 0x80, 0x09 }, "protocol 9")]
    [InlineData(new byte[] { 0x80, 0x02, (byte)'N', (byte)'N', (byte)'b', (byte)'.' }, "BUILD on a None")]
    [InlineData(new byte[] { 0x80, 0x02, (byte)'}', (byte)']', (byte)'N', (byte)'s', (byte)'.' }, "dict key of type list")]
    [InlineData(new byte[] { 0x80, 0x02 }, "truncated")]
    public void BadPicklesAreRefusedWithTheOffset(byte[] pickle, string expected)
    {
        var e = Assert.Throws<WeightsException>(() => Unpickler.Load(pickle, "x.pkl"));
        Assert.Contains(expected, e.Message);
        Assert.StartsWith("x.pkl: offset ", e.Message);
    }

    [Fact]
    public void DeepNestingHitsTheMarkLimit()
    {
        var p = new PickleBuilder().Proto();
        for (int i = 0; i < Unpickler.MaxMarkDepth + 1; i++) p.Mark();
        var e = Assert.Throws<WeightsException>(() => Unpickler.Load(p.ToArray(), "deep.pkl"));
        Assert.Contains("nested MARKs", e.Message);

        // Nesting without MARKs (tuple in tuple in ...) is harmless: nothing walks values recursively.
        var q = new PickleBuilder().Proto().EmptyTuple();
        for (int i = 0; i < 200_000; i++) q.Op(0x85);
        Assert.IsType<PyTuple>(Unpickler.Load(q.Stop().ToArray(), "tuples.pkl"));
    }

    [Fact]
    public void RootsThatAreNotDictsOfTensorsAreNamed()
    {
        using var dir = new TempDir();
        var path = dir.File("list.pth");
        var pkl = new PickleBuilder().Proto().EmptyList().Stop().ToArray();
        TorchWriter.WriteZip(path, [("archive/data.pkl", pkl.Length, pkl)]);
        Assert.Contains("holds a list, not a dict of tensors", RefuseFile(path));
        var empty = dir.File("empty.pth");
        var pk2 = new PickleBuilder().Proto().EmptyDict().Str("global_step").Int(5).SetItem().Stop().ToArray();
        TorchWriter.WriteZip(empty, [("archive/data.pkl", pk2.Length, pk2)]);
        Assert.Contains("holds no tensors", RefuseFile(empty));
    }
}
