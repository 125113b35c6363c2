using System.Buffers.Binary;
using System.Text;

namespace StableDiffusion.IO;

/// <summary>One member of a zip archive, located but not read.</summary>
internal sealed record ZipEntry(string Name, int Method, int Flags, uint Crc32, long CompressedSize, long Size, long DataOffset)
{
    public bool IsStored => Method == 0 && (Flags & 1) == 0;
}

/// <summary>
/// The central directory of a zip archive (with ZIP64), read from a mapped file. Only what PyTorch's writer
/// produces needs to work; anything else is refused with the offset at fault.
/// </summary>
internal static class ZipDirectory
{
    private const uint EndSig = 0x06054b50, End64Sig = 0x06064b50, Locator64Sig = 0x07064b50;
    private const uint CentralSig = 0x02014b50, LocalSig = 0x04034b50;

    public static List<ZipEntry> Read(MappedFile f)
    {
        string path = f.Path;
        long end = FindEnd(f);
        var e = f.Span(end, 22);
        long count = BinaryPrimitives.ReadUInt16LittleEndian(e[10..]);
        long cdSize = BinaryPrimitives.ReadUInt32LittleEndian(e[12..]);
        long cdOffset = BinaryPrimitives.ReadUInt32LittleEndian(e[16..]);
        if (BinaryPrimitives.ReadUInt16LittleEndian(e[4..]) != 0 || BinaryPrimitives.ReadUInt16LittleEndian(e[6..]) != 0)
            throw new WeightsException($"{path}: multi-volume zip archives are not supported");
        if (count == 0xFFFF || cdSize == 0xFFFFFFFF || cdOffset == 0xFFFFFFFF)
        {
            if (end < 20 || BinaryPrimitives.ReadUInt32LittleEndian(f.Span(end - 20, 4)) != Locator64Sig)
                throw new WeightsException($"{path}: zip end record at offset {end} asks for ZIP64 but has no ZIP64 locator");
            long z = Int64(f.Span(end - 12, 8), path, end - 20);
            var z64 = f.Span(z, 56);
            if (BinaryPrimitives.ReadUInt32LittleEndian(z64) != End64Sig)
                throw new WeightsException($"{path}: no ZIP64 end record at offset {z}");
            count = Int64(z64[32..], path, z);
            cdSize = Int64(z64[40..], path, z);
            cdOffset = Int64(z64[48..], path, z);
        }
        if (cdOffset > f.Length || cdSize > f.Length - cdOffset)
            throw new WeightsException($"{path}: zip central directory [{cdOffset}, +{cdSize}) lies outside the file");
        if (count > cdSize / 46)
            throw new WeightsException($"{path}: zip claims {count} entries in a {cdSize}-byte central directory");

        var entries = new List<ZipEntry>((int)Math.Min(count, 4096));
        long p = cdOffset;
        for (long i = 0; i < count; i++)
        {
            var h = f.Span(p, 46);
            if (BinaryPrimitives.ReadUInt32LittleEndian(h) != CentralSig)
                throw new WeightsException($"{path}: zip central directory entry {i} at offset {p} has a bad signature");
            int flags = BinaryPrimitives.ReadUInt16LittleEndian(h[8..]);
            int method = BinaryPrimitives.ReadUInt16LittleEndian(h[10..]);
            uint crc = BinaryPrimitives.ReadUInt32LittleEndian(h[16..]);
            long csize = BinaryPrimitives.ReadUInt32LittleEndian(h[20..]);
            long usize = BinaryPrimitives.ReadUInt32LittleEndian(h[24..]);
            int nameLen = BinaryPrimitives.ReadUInt16LittleEndian(h[28..]);
            int extraLen = BinaryPrimitives.ReadUInt16LittleEndian(h[30..]);
            int commentLen = BinaryPrimitives.ReadUInt16LittleEndian(h[32..]);
            long local = BinaryPrimitives.ReadUInt32LittleEndian(h[42..]);
            string name = Encoding.UTF8.GetString(f.Span(p + 46, nameLen));
            var extra = f.Span(p + 46 + nameLen, extraLen);
            if (usize == 0xFFFFFFFF || csize == 0xFFFFFFFF || local == 0xFFFFFFFF)
                ReadZip64Extra(extra, ref usize, ref csize, ref local, path, name);
            entries.Add(new ZipEntry(name, method, flags, crc, csize, usize, DataOffset(f, local, csize, name)));
            p += 46 + nameLen + extraLen + commentLen;
        }
        return entries;
    }

    // The data follows the local header, whose name and extra field may differ in length from the central copy
    // (PyTorch pads the local extra field so that tensor data starts 64-byte aligned).
    private static long DataOffset(MappedFile f, long local, long csize, string name)
    {
        var l = f.Span(local, 30);
        if (BinaryPrimitives.ReadUInt32LittleEndian(l) != LocalSig)
            throw new WeightsException($"{f.Path}: zip entry {Text.Q(name)}: no local header at offset {local}");
        long data = local + 30 + BinaryPrimitives.ReadUInt16LittleEndian(l[26..]) + BinaryPrimitives.ReadUInt16LittleEndian(l[28..]);
        if (data > f.Length || csize > f.Length - data)
            throw new WeightsException($"{f.Path}: zip entry {Text.Q(name)}: data [{data}, +{csize}) runs past the end of the file");
        return data;
    }

    private static void ReadZip64Extra(ReadOnlySpan<byte> extra, ref long usize, ref long csize, ref long local, string path, string name)
    {
        while (extra.Length >= 4)
        {
            int id = BinaryPrimitives.ReadUInt16LittleEndian(extra);
            int len = BinaryPrimitives.ReadUInt16LittleEndian(extra[2..]);
            if (len > extra.Length - 4) break;
            if (id == 1)
            {
                var v = extra.Slice(4, len);
                int at = 0;
                if (usize == 0xFFFFFFFF) usize = Next(v, ref at);
                if (csize == 0xFFFFFFFF) csize = Next(v, ref at);
                if (local == 0xFFFFFFFF) local = Next(v, ref at);
                return;
            }
            extra = extra[(4 + len)..];
        }
        throw new WeightsException($"{path}: zip entry {Text.Q(name)} needs a ZIP64 extra field and has none");

        long Next(ReadOnlySpan<byte> v, ref int at)
        {
            if (at + 8 > v.Length) throw new WeightsException($"{path}: zip entry {Text.Q(name)} has a short ZIP64 extra field");
            ulong x = BinaryPrimitives.ReadUInt64LittleEndian(v[at..]);
            at += 8;
            return x <= long.MaxValue ? (long)x : throw new WeightsException($"{path}: zip entry {Text.Q(name)} has a ZIP64 size of {x}");
        }
    }

    private static long FindEnd(MappedFile f)
    {
        if (f.Length < 22) throw new WeightsException($"{f.Path}: {f.Length} bytes is too short for a zip archive");
        long stop = Math.Max(0, f.Length - 22 - 65535);
        var tail = f.Span(stop, f.Length - stop);
        for (int i = tail.Length - 22; i >= 0; i--)
            if (BinaryPrimitives.ReadUInt32LittleEndian(tail[i..]) == EndSig) return stop + i;
        throw new WeightsException($"{f.Path}: no zip end-of-central-directory record (truncated or not a zip archive)");
    }

    private static long Int64(ReadOnlySpan<byte> b, string path, long at)
    {
        ulong v = BinaryPrimitives.ReadUInt64LittleEndian(b);
        return v <= long.MaxValue ? (long)v : throw new WeightsException($"{path}: ZIP64 end record at offset {at} holds {v}");
    }
}
