using System.Buffers.Binary;
using System.Text;
using StableDiffusion.IO;

namespace StableDiffusion.IO.Tests.Support;

/// <summary>Writes pickle opcodes by hand, as torch.save's pickler (protocol 2) would, or deliberately not.</summary>
public sealed class PickleBuilder
{
    private readonly MemoryStream s = new();
    private int memo;

    public PickleBuilder Op(byte op) { s.WriteByte(op); return this; }
    public PickleBuilder Raw(params byte[] b) { s.Write(b); return this; }
    public PickleBuilder Proto(int v = 2) => Op(0x80).Op((byte)v);
    public PickleBuilder Global(string module, string name) => Op((byte)'c').Raw(Encoding.UTF8.GetBytes($"{module}\n{name}\n"));
    public PickleBuilder Mark() => Op((byte)'(');
    public PickleBuilder Tuple() => Op((byte)'t');
    public PickleBuilder EmptyTuple() => Op((byte)')');
    public PickleBuilder EmptyDict() => Op((byte)'}');
    public PickleBuilder EmptyList() => Op((byte)']');
    public PickleBuilder Reduce() => Op((byte)'R');
    public PickleBuilder SetItem() => Op((byte)'s');
    public PickleBuilder SetItems() => Op((byte)'u');
    public PickleBuilder Build() => Op((byte)'b');
    public PickleBuilder PersId() => Op((byte)'Q');
    public PickleBuilder Stop() => Op((byte)'.');
    public PickleBuilder False() => Op(0x89);
    public PickleBuilder None() => Op((byte)'N');
    public PickleBuilder Put() => memo < 256 ? Op((byte)'q').Op((byte)memo++) : Op((byte)'r').U32((uint)memo++);

    public PickleBuilder Str(string v)
    {
        var b = Encoding.UTF8.GetBytes(v);
        return Op((byte)'X').U32((uint)b.Length).Raw(b);
    }

    public PickleBuilder Int(long v)
    {
        if (v is >= 0 and < 256) return Op((byte)'K').Op((byte)v);
        if (v is >= 0 and < 65536) return Op((byte)'M').Raw((byte)v, (byte)(v >> 8));
        if (v is >= int.MinValue and <= int.MaxValue) return Op((byte)'J').I32((int)v);
        var b = new byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(b, v);
        return Op(0x8a).Op(8).Raw(b);
    }

    public PickleBuilder IntTuple(long[] v)
    {
        Mark();
        foreach (var x in v) Int(x);
        return Tuple();
    }

    private PickleBuilder U32(uint v) { Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(b, v); s.Write(b); return this; }
    private PickleBuilder I32(int v) { Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteInt32LittleEndian(b, v); s.Write(b); return this; }

    public byte[] ToArray() => s.ToArray();

    /// <summary>One tensor the way torch.save pickles it: _rebuild_tensor_v2(storage pid, offset, size, stride, False, OrderedDict()).</summary>
    public PickleBuilder Tensor(string storageType, string key, long numel, long offset, long[] shape, long[] stride)
    {
        Global("torch._utils", "_rebuild_tensor_v2").Put();
        Mark();
        Mark().Str("storage").Global("torch", storageType).Str(key).Str("cpu").Int(numel).Tuple().PersId();
        Int(offset).IntTuple(shape).IntTuple(stride).False();
        Global("collections", "OrderedDict").EmptyTuple().Reduce();
        return Tuple().Reduce();
    }
}

/// <summary>One tensor of a test checkpoint.</summary>
public sealed record TorchTensor(string Name, string StorageType, long[] Shape, byte[]? Data = null, long[]? Stride = null, long StorageOffset = 0, long? StorageElements = null, string? Key = null);

/// <summary>
/// Writes PyTorch zip checkpoints for tests: <c>archive/data.pkl</c>, <c>archive/byteorder</c>, storages under
/// <c>archive/data/N</c>, stored entries, data 64-byte aligned through padded local extra fields, ZIP64 on request.
/// Storages without data are left as holes, and their CRC as 0 (readers of weights do not check it).
/// </summary>
public static class TorchWriter
{
    public static int ElementSize(string storageType) => storageType switch
    {
        "FloatStorage" or "IntStorage" => 4,
        "HalfStorage" or "BFloat16Storage" => 2,
        "LongStorage" or "DoubleStorage" => 8,
        _ => 1,
    };

    public static byte[] StateDictPickle(IEnumerable<TorchTensor> tensors, bool wrapInStateDict, out List<(string Key, long Bytes, byte[]? Data)> storages)
    {
        storages = [];
        var p = new PickleBuilder().Proto();
        if (wrapInStateDict) p.EmptyDict().Put().Str("state_dict");
        p.Global("collections", "OrderedDict").Put().EmptyTuple().Reduce().Put().Mark();
        int n = 0;
        foreach (var t in tensors)
        {
            var key = t.Key ?? (n++).ToString();
            long numel = t.StorageElements ?? t.Shape.Aggregate(1L, (a, b) => a * b);
            if (storages.All(s => s.Key != key)) storages.Add((key, numel * ElementSize(t.StorageType), t.Data));
            p.Str(t.Name).Tensor(t.StorageType, key, numel, t.StorageOffset, t.Shape, t.Stride ?? Contiguous(t.Shape));
        }
        p.SetItems();
        if (wrapInStateDict) p.SetItem();
        return p.Stop().ToArray();
    }

    public static long[] Contiguous(long[] shape)
    {
        var s = new long[shape.Length];
        long x = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            s[i] = x;
            x *= shape[i];
        }
        return s;
    }

    public static void Write(string path, IEnumerable<TorchTensor> tensors, bool wrapInStateDict = false, bool zip64 = false)
    {
        var pkl = StateDictPickle(tensors, wrapInStateDict, out var storages);
        WriteZip(path, CheckpointEntries(pkl, storages), zip64);
    }

    public static List<(string, long, byte[]?)> CheckpointEntries(byte[] pkl, List<(string Key, long Bytes, byte[]? Data)> storages)
    {
        var entries = new List<(string, long, byte[]?)>
        {
            ("archive/data.pkl", pkl.Length, pkl),
            ("archive/byteorder", 6, "little"u8.ToArray()),
        };
        entries.AddRange(storages.Select(s => ($"archive/data/{s.Key}", s.Bytes, s.Data ?? (s.Bytes < 1 << 20 ? new byte[s.Bytes] : null))));
        return entries;
    }

    /// <summary>A stored zip; entries with null data but a size are zero-filled holes.</summary>
    public static void WriteZip(string path, IReadOnlyList<(string Name, long Size, byte[]? Data)> entries, bool zip64 = false, int method = 0)
    {
        using var f = new FileStream(path, FileMode.Create, FileAccess.Write);
        WriteZip(f, entries, zip64, method);
    }

    public static byte[] ZipBytes(IReadOnlyList<(string Name, long Size, byte[]? Data)> entries, bool zip64 = false)
    {
        var m = new MemoryStream();
        WriteZip(m, entries, zip64, 0);
        return m.ToArray();
    }

    public static void WriteZip(Stream f, IReadOnlyList<(string Name, long Size, byte[]? Data)> entries, bool zip64, int method)
    {
        var central = new MemoryStream();
        var w = new BinaryWriter(f);
        var c = new BinaryWriter(central);
        foreach (var (name, size, data) in entries)
        {
            var nameBytes = Encoding.UTF8.GetBytes(name);
            long local = f.Position;
            uint crc = data is null ? 0 : Crc32.Compute(data);
            // Pad the local extra field ("FB" block, as torch does) so the data starts 64-byte aligned.
            long dataAt = local + 30 + nameBytes.Length + 4;
            int pad = (int)((64 - dataAt % 64) % 64);
            bool big = zip64 || size >= uint.MaxValue || local >= uint.MaxValue;
            w.Write(0x04034b50u); w.Write((ushort)(big ? 45 : 20)); w.Write((ushort)0); w.Write((ushort)method);
            w.Write((ushort)0); w.Write((ushort)0x21); w.Write(crc);
            w.Write((uint)Math.Min(size, uint.MaxValue)); w.Write((uint)Math.Min(size, uint.MaxValue));
            w.Write((ushort)nameBytes.Length); w.Write((ushort)(4 + pad));
            w.Write(nameBytes); w.Write((ushort)0x4246); w.Write((ushort)pad); w.Write(new byte[pad]);
            w.Flush();
            if (data is not null) f.Write(data);
            else f.Seek(size, SeekOrigin.Current);
            if (f.Length < f.Position) f.SetLength(f.Position);

            var extra = new MemoryStream();
            if (big)
            {
                var e = new BinaryWriter(extra);
                e.Write((ushort)1); e.Write((ushort)24); e.Write(size); e.Write(size); e.Write(local);
            }
            c.Write(0x02014b50u); c.Write((ushort)(big ? 45 : 20)); c.Write((ushort)(big ? 45 : 20)); c.Write((ushort)0);
            c.Write((ushort)method); c.Write((ushort)0); c.Write((ushort)0x21); c.Write(crc);
            c.Write(big ? uint.MaxValue : (uint)size); c.Write(big ? uint.MaxValue : (uint)size);
            c.Write((ushort)nameBytes.Length); c.Write((ushort)extra.Length); c.Write((ushort)0); c.Write((ushort)0);
            c.Write((ushort)0); c.Write(0u); c.Write(big ? uint.MaxValue : (uint)local);
            c.Write(nameBytes); c.Write(extra.ToArray());
        }
        c.Flush();
        long cdAt = f.Position, cdSize = central.Length;
        f.Write(central.ToArray());
        if (zip64)
        {
            long z = f.Position;
            w.Write(0x06064b50u); w.Write(44L); w.Write((ushort)45); w.Write((ushort)45); w.Write(0u); w.Write(0u);
            w.Write((long)entries.Count); w.Write((long)entries.Count); w.Write(cdSize); w.Write(cdAt);
            w.Write(0x07064b50u); w.Write(0u); w.Write(z); w.Write(1u);
        }
        w.Write(0x06054b50u); w.Write((ushort)0); w.Write((ushort)0);
        w.Write(zip64 ? ushort.MaxValue : (ushort)entries.Count); w.Write(zip64 ? ushort.MaxValue : (ushort)entries.Count);
        w.Write(zip64 ? uint.MaxValue : (uint)cdSize); w.Write(zip64 ? uint.MaxValue : (uint)cdAt); w.Write((ushort)0);
        w.Flush();
    }
}
