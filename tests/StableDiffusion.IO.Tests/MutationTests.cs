using System.Buffers.Binary;
using System.Text;
using StableDiffusion.IO.Pickle;
using StableDiffusion.IO.Tests.Support;
using Xunit.Abstractions;

namespace StableDiffusion.IO.Tests;

/// <summary>
/// Bad input, many times over with a fixed seed: every mutated safetensors file, pickle and zip either loads (and
/// then every tensor's bytes lie inside the file) or is refused with a one-line <see cref="WeightsException"/>.
/// Anything else (another exception type, a multi-line message) is a failure.
/// </summary>
public class MutationTests(ITestOutputHelper output)
{
    private const int Seed = 20261126;
    private int accepted, refused;
    private readonly List<string> failures = [];

    private void Check(string what, Func<WeightFile> open)
    {
        try
        {
            using var f = open();
            foreach (var t in f.Tensors)
                if (f.Bytes(t).Length != t.ByteLength) failures.Add($"{what}: tensor {t.Name} has a short span");
            accepted++;
        }
        catch (WeightsException e)
        {
            if (e.Message.Length == 0 || e.Message.Any(c => char.IsControl(c))) failures.Add($"{what}: message is not one line: {e.Message}");
            refused++;
        }
        catch (Exception e)
        {
            failures.Add($"{what}: {e.GetType().Name}: {e.Message.Split('\n')[0]}");
        }
    }

    private void CheckPickle(string what, byte[] pickle)
    {
        try
        {
            Unpickler.Load(pickle, "m.pkl");
            accepted++;
        }
        catch (WeightsException e)
        {
            if (e.Message.Any(c => char.IsControl(c))) failures.Add($"{what}: message is not one line: {e.Message}");
            refused++;
        }
        catch (Exception e)
        {
            failures.Add($"{what}: {e.GetType().Name}: {e.Message.Split('\n')[0]}");
        }
    }

    private static WeightFile InMemory(byte[] bytes, string name) => WeightFile.Open(MappedFile.FromBytes(bytes, name));

    private void Report(string kind, int cases)
    {
        output.WriteLine($"{kind}: {cases} mutations, {accepted} loaded, {refused} refused, {failures.Count} failures");
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(20)));
        Assert.Equal(cases, accepted + refused);
    }

    // ---- safetensors ----

    private static byte[] SafetensorsBase(TempDir dir)
    {
        var path = dir.File("base.safetensors");
        var rng = new Random(1);
        byte[] Data(int n) { var b = new byte[n]; rng.NextBytes(b); return b; }
        SafetensorsWriter.Write(path,
        [
            SafetensorsEntry.FromBytes("model.diffusion_model.input_blocks.0.0.weight", WeightDType.F16, [4, 2, 3, 3], Data(144)),
            SafetensorsEntry.FromBytes("model.diffusion_model.input_blocks.0.0.bias", WeightDType.F32, [4], Data(16)),
            SafetensorsEntry.FromBytes("first_stage_model.decoder.mid.attn_1.q.weight", WeightDType.BF16, [2, 2, 1, 1], Data(8)),
            SafetensorsEntry.FromBytes("cond_stage_model.transformer.text_model.embeddings.position_ids", WeightDType.I64, [1, 3], Data(24)),
            SafetensorsEntry.FromBytes("model_ema.num_updates", WeightDType.I32, [], Data(4)),
            new SafetensorsEntry("empty", WeightDType.F32, [0, 3]),
        ], new Dictionary<string, string> { ["format"] = "pt" });
        return File.ReadAllBytes(path);
    }

    private static readonly string[] DTypes = ["F64", "BOOL", "I8", "U8", "f32", "", "F16 ", "BF16", "I64", "I32", "F32", "F16", "F8_E4M3", "\u00e9"];
    private static readonly string[] Numbers = ["0", "-1", "1", "2", "7", "8", "1.5", "1e3", "99999999999999999999", "9223372036854775807", "9223372036854775808", "4294967296", "-0", "null", "\"3\"", "[]"];

    private static byte[] WithHeader(string json, byte[] original)
    {
        long n = BinaryPrimitives.ReadInt64LittleEndian(original);
        var data = original.AsSpan(8 + (int)n);
        var h = Encoding.UTF8.GetBytes(json);
        var b = new byte[8 + h.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(b, (ulong)h.Length);
        h.CopyTo(b, 8);
        data.CopyTo(b.AsSpan(8 + h.Length));
        return b;
    }

    private static string MutateJson(string json, Random rng, out string what)
    {
        int Pick(string pattern)
        {
            var hits = new List<int>();
            for (int i = json.IndexOf(pattern, StringComparison.Ordinal); i >= 0; i = json.IndexOf(pattern, i + 1, StringComparison.Ordinal)) hits.Add(i);
            return hits.Count == 0 ? -1 : hits[rng.Next(hits.Count)];
        }
        switch (rng.Next(9))
        {
            case 0:
            {
                what = "dtype";
                int i = Pick("\"dtype\":\"");
                if (i < 0) break;
                int s = i + 9, e = json.IndexOf('"', s);
                return json[..s] + DTypes[rng.Next(DTypes.Length)] + json[e..];
            }
            case 1:
            {
                what = "number";
                var digits = Enumerable.Range(0, json.Length).Where(i => char.IsAsciiDigit(json[i]) && (i == 0 || !char.IsAsciiDigit(json[i - 1]))).ToList();
                if (digits.Count == 0) break;
                int s = digits[rng.Next(digits.Count)], e = s;
                while (e < json.Length && char.IsAsciiDigit(json[e])) e++;
                string v = rng.Next(3) == 0 ? (long.Parse(json[s..e]) + rng.Next(-9, 10)).ToString() : Numbers[rng.Next(Numbers.Length)];
                return json[..s] + v + json[e..];
            }
            case 2:
            {
                what = "duplicate entry";
                int i = Pick("\"model");
                if (i < 0) break;
                int e = json.IndexOf('}', i) + 1;
                return json[..e] + "," + json[i..e] + json[e..];
            }
            case 3:
            {
                what = "swap offsets";
                int a = Pick("\"data_offsets\":["), b = Pick("\"data_offsets\":[");
                if (a < 0 || a == b) break;
                if (a > b) (a, b) = (b, a);
                int ae = json.IndexOf(']', a), be = json.IndexOf(']', b);
                return json[..a] + json[b..be] + json[ae..b] + json[a..ae] + json[be..];
            }
            case 4:
            {
                what = "deep nesting";
                int depth = rng.Next(1, 5000);
                int i = Pick("\"shape\":");
                if (i < 0) break;
                int s = i + 8, e = json.IndexOf(']', s) + 1;
                return json[..s] + new string('[', depth) + "1" + new string(']', depth) + json[e..];
            }
            case 5:
            {
                what = "metadata";
                string[] v = ["1", "[]", "{\"a\":1}", "{\"a\":\"b\",\"a\":\"c\"}", "null", "\"x\"", "{\"a\":[\"b\"]}"];
                int i = Pick("\"__metadata__\":");
                if (i < 0) break;
                int s = i + 15, e = json.IndexOf('}', s) + 1;
                return json[..s] + v[rng.Next(v.Length)] + json[e..];
            }
            case 6:
            {
                what = "extra or missing key";
                int i = Pick("\"shape\":");
                if (i < 0) break;
                return rng.Next(2) == 0 ? json[..i] + "\"extra\":{\"x\":[1]}," + json[i..] : json[..i] + json[(json.IndexOf(']', i) + 2)..];
            }
            case 7:
            {
                what = "control characters in a name";
                int i = Pick("\"model");
                if (i < 0) break;
                return json[..(i + 1)] + (char)rng.Next(0, 32) + "\n\u2028" + json[(i + 1)..];
            }
            default:
            {
                what = "character edit";
                const string chars = "{}[]\",:0123456789 a-.e\\";
                int i = rng.Next(json.Length);
                return rng.Next(2) == 0 ? json.Remove(i, 1) : json.Insert(i, chars[rng.Next(chars.Length)].ToString());
            }
        }
        what = "unchanged";
        return json;
    }

    private static byte[] MutateSafetensors(byte[] b, Random rng, out string what)
    {
        var m = (byte[])b.Clone();
        int n = (int)BinaryPrimitives.ReadInt64LittleEndian(b);
        switch (rng.Next(7))
        {
            case 0:
                what = "truncation";
                return m[..rng.Next(m.Length)];
            case 1:
                what = "header bit flips";
                for (int k = rng.Next(1, 5); k > 0; k--) m[8 + rng.Next(n)] ^= (byte)(1 << rng.Next(8));
                return m;
            case 2:
                what = "byte flips anywhere";
                for (int k = rng.Next(1, 9); k > 0; k--) m[rng.Next(m.Length)] = (byte)rng.Next(256);
                return m;
            case 3:
            {
                what = "header length";
                ulong[] lengths = [0, 1, 7, (ulong)n - 1, (ulong)n + 1, (ulong)m.Length, (ulong)m.Length - 8, 100_000_000, 100_000_001, ulong.MaxValue, (ulong)rng.NextInt64(), (ulong)rng.Next(m.Length)];
                BinaryPrimitives.WriteUInt64LittleEndian(m, lengths[rng.Next(lengths.Length)]);
                return m;
            }
            case 4:
            {
                var json = Encoding.UTF8.GetString(b, 8, n).TrimEnd(' ');
                var mutated = MutateJson(json, rng, out what);
                if (rng.Next(3) == 0) mutated = MutateJson(mutated, rng, out var more) is var x ? x : mutated;
                var r = WithHeader(mutated, b);
                if (rng.Next(10) == 0) // invalid UTF-8 inside the JSON text
                    r[8 + rng.Next(Encoding.UTF8.GetByteCount(mutated))] = (byte)(0x80 + rng.Next(0x80));
                return r;
            }
            case 5:
            {
                what = "insert or delete header bytes";
                int at = 8 + rng.Next(n);
                int len = rng.Next(1, 16);
                var list = m.ToList();
                if (rng.Next(2) == 0) list.RemoveRange(at, Math.Min(len, list.Count - at));
                else list.InsertRange(at, Enumerable.Range(0, len).Select(_ => (byte)rng.Next(256)));
                return [.. list];
            }
            default:
            {
                what = "random bytes";
                var r = new byte[rng.Next(0, 200)];
                rng.NextBytes(r);
                if (r.Length >= 8 && rng.Next(2) == 0) BinaryPrimitives.WriteUInt64LittleEndian(r, (ulong)rng.Next(0, r.Length));
                return r;
            }
        }
    }

    [Fact]
    public void MutatedSafetensorsFilesEndInWeightsException()
    {
        using var dir = new TempDir();
        var good = SafetensorsBase(dir);
        Check("unmutated", () => InMemory(good, "base.safetensors"));
        Assert.Equal(1, accepted);
        accepted = 0;
        var rng = new Random(Seed);
        const int cases = 5000;
        for (int i = 0; i < cases; i++)
        {
            var bytes = MutateSafetensors(good, rng, out var what);
            if (i % 50 == 0)
            {
                // Some through real files, for the memory-mapping path.
                var path = dir.File($"m{i}.safetensors");
                File.WriteAllBytes(path, bytes);
                Check($"safetensors #{i} ({what}, file)", () => WeightFile.Open(path));
                File.Delete(path);
            }
            else Check($"safetensors #{i} ({what})", () => InMemory(bytes, $"m{i}.safetensors"));
        }
        Report("safetensors", cases);
    }

    // ---- pickles and PyTorch zips ----

    private static readonly byte[] Unsupported = "SITUVCdliopg0123P"u8.ToArray().Concat(new byte[] { 0x81, 0x82, 0x83, 0x84, 0x8b, 0x8d, 0x8e, 0x8f, 0x90, 0x91, 0x92, 0x96, 0x97, 0x98 }).ToArray();
    private static readonly (string, string)[] Hostile = [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "getattr"), ("subprocess", "call"), ("torch", "load"), ("numpy", "load")];

    private static byte[] MutatePickle(byte[] p, Random rng, out string what)
    {
        var list = p.ToList();
        switch (rng.Next(9))
        {
            case 0:
                what = "truncation";
                return p[..rng.Next(p.Length)];
            case 1:
                what = "byte flips";
                for (int k = rng.Next(1, 5); k > 0; k--) list[rng.Next(list.Count)] = (byte)rng.Next(256);
                return [.. list];
            case 2:
                what = "random opcode";
                list.InsertRange(rng.Next(list.Count), Enumerable.Range(0, rng.Next(1, 10)).Select(_ => (byte)rng.Next(256)));
                return [.. list];
            case 3:
            {
                what = "huge length or index";
                byte[] op = rng.Next(6) switch
                {
                    0 => [(byte)'X', .. BitConverter.GetBytes((uint)rng.NextInt64(0, uint.MaxValue))],
                    1 => [(byte)'B', .. BitConverter.GetBytes(0xFFFFFFF0u)],
                    2 => [0x8a, (byte)rng.Next(256), .. Enumerable.Repeat((byte)0xFF, rng.Next(20))],
                    3 => [(byte)'j', .. BitConverter.GetBytes((uint)rng.NextInt64(0, uint.MaxValue))],
                    4 => [(byte)'r', .. BitConverter.GetBytes((uint)rng.NextInt64(0, uint.MaxValue))],
                    _ => [0x95, .. BitConverter.GetBytes(long.MaxValue)],
                };
                list.InsertRange(rng.Next(list.Count), op);
                return [.. list];
            }
            case 4:
            {
                what = "deep nesting";
                int depth = rng.Next(1, 3000);
                byte[] unit = rng.Next(3) switch { 0 => [(byte)'('], 1 => [(byte)']'], _ => [(byte)')', 0x85] };
                int at = rng.Next(list.Count);
                for (int k = 0; k < depth; k++) list.InsertRange(at, unit);
                return [.. list];
            }
            case 5:
            {
                what = "hostile global";
                var (m, n) = Hostile[rng.Next(Hostile.Length)];
                var text = Encoding.Latin1.GetString(p);
                var target = rng.Next(2) == 0 ? "collections\nOrderedDict" : "torch._utils\n_rebuild_tensor_v2";
                return Encoding.Latin1.GetBytes(text.Replace(target, $"{m}\n{n}"));
            }
            case 6:
            {
                what = "splice";
                int s = rng.Next(list.Count), len = rng.Next(1, Math.Min(200, list.Count - s) + 1);
                list.InsertRange(rng.Next(list.Count), list.GetRange(s, len));
                return [.. list];
            }
            case 7:
            {
                what = "delete a slice";
                int s = rng.Next(list.Count);
                list.RemoveRange(s, rng.Next(1, Math.Min(50, list.Count - s) + 1));
                return [.. list];
            }
            default:
                what = "unsupported opcode";
                list[rng.Next(list.Count)] = Unsupported[rng.Next(Unsupported.Length)];
                return [.. list];
        }
    }

    private static (byte[] Pickle, List<(string Key, long Bytes, byte[]? Data)> Storages) PickleBase()
    {
        var rng = new Random(2);
        byte[] Data(int n) { var b = new byte[n]; rng.NextBytes(b); return b; }
        var pkl = TorchWriter.StateDictPickle(
        [
            new("model.diffusion_model.input_blocks.0.0.weight", "HalfStorage", [4, 2, 3, 3], Data(144)),
            new("model.diffusion_model.input_blocks.0.0.bias", "FloatStorage", [4], Data(16)),
            new("b", "BFloat16Storage", [2, 2], Data(8)),
            new("ids", "LongStorage", [1, 3], Data(24)),
            new("n", "IntStorage", [], Data(4)),
            new("view", "FloatStorage", [2], StorageOffset: 1, StorageElements: 4, Key: "1"),
        ], wrapInStateDict: true, out var storages);
        return (pkl, storages);
    }

    [Fact]
    public void MutatedPicklesInCheckpointsEndInWeightsException()
    {
        var (pkl, storages) = PickleBase();
        var good = TorchWriter.ZipBytes(TorchWriter.CheckpointEntries(pkl, storages));
        Check("unmutated", () => InMemory(good, "base.ckpt"));
        Assert.Equal(1, accepted);
        accepted = 0;
        var rng = new Random(Seed + 1);
        const int cases = 4000;
        for (int i = 0; i < cases; i++)
        {
            var bytes = TorchWriter.ZipBytes(TorchWriter.CheckpointEntries(MutatePickle(pkl, rng, out var what), storages));
            Check($"pickle #{i} ({what})", () => InMemory(bytes, $"m{i}.ckpt"));
        }
        Report("pickles in checkpoints", cases);
    }

    [SkippableFact]
    public void MutatedRealPicklesEndInWeightsException()
    {
        byte[] pkl;
        using (var map = MappedFile.Open(Reference.Require("pth", "taef2_decoder.pth")))
        {
            var entry = ZipDirectory.Read(map).Single(e => e.Name.EndsWith("data.pkl"));
            pkl = map.Span(entry.DataOffset, entry.Size).ToArray();
        }
        CheckPickle("unmutated", pkl);
        Assert.Equal(1, accepted);
        accepted = 0;
        var rng = new Random(Seed + 2);
        const int cases = 2000;
        for (int i = 0; i < cases; i++) CheckPickle($"real pickle #{i}", MutatePickle(pkl, rng, out _));
        Report("real pickles", cases);
    }

    [Fact]
    public void MutatedZipContainersEndInWeightsException()
    {
        var (pkl, storages) = PickleBase();
        var good = TorchWriter.ZipBytes(TorchWriter.CheckpointEntries(pkl, storages), zip64: true);
        var rng = new Random(Seed + 3);
        const int cases = 1500;
        var localHeaders = new List<int>();
        for (int at = 0; at < good.Length; at++)
            if (good.AsSpan(at).StartsWith("PK\x03\x04"u8)) localHeaders.Add(at);
        for (int i = 0; i < cases; i++)
        {
            var m = (byte[])good.Clone();
            string what;
            switch (rng.Next(4))
            {
                case 0:
                    what = "truncation";
                    m = m[..rng.Next(m.Length)];
                    break;
                case 1:
                    // Structures, not payload: the central directory and end records, local headers.
                    what = "directory byte flips";
                    for (int k = rng.Next(1, 4); k > 0; k--) m[m.Length - 1 - rng.Next(Math.Min(m.Length, 600))] = (byte)rng.Next(256);
                    break;
                case 2:
                    what = "local header byte flips";
                    for (int k = rng.Next(1, 4); k > 0; k--)
                    {
                        int at = localHeaders[rng.Next(localHeaders.Count)];
                        m[at + rng.Next(30)] = (byte)rng.Next(256);
                    }
                    break;
                default:
                    what = "random flips";
                    for (int k = rng.Next(1, 9); k > 0; k--) m[rng.Next(m.Length)] = (byte)rng.Next(256);
                    break;
            }
            Check($"zip #{i} ({what})", () => InMemory(m, $"z{i}.pth"));
        }
        Assert.True(localHeaders.Count >= 7);
        Report("zip containers", cases);
    }
}
