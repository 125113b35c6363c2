using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using StableDiffusion.Runtime;

namespace StableDiffusion.IO;

/// <summary>
/// A read-only file mapped into memory. Tensor bytes are spans over the mapping, so reading a weight file
/// costs page cache, never a managed copy. <see cref="FromBytes"/> wraps an array the same way (tests).
/// </summary>
internal sealed unsafe class MappedFile : IDisposable
{
    private MemoryMappedFile? map;
    private MemoryMappedViewAccessor? view;
    private GCHandle pin;
    private byte* start;

    private MappedFile(string path, long length)
    {
        Path = path;
        Length = length;
    }

    public string Path { get; }
    public long Length { get; }

    public static MappedFile Open(string path)
    {
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new WeightsException($"{path}: cannot open: {Text.OneLine(e.Message)}", e);
        }
        var file = new MappedFile(path, stream.Length);
        if (file.Length == 0)
        {
            stream.Dispose(); // an empty file cannot be mapped; it has no bytes to hand out anyway
            return file;
        }
        try
        {
            file.map = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            file.view = file.map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            file.view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            file.start = p + file.view.PointerOffset;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            file.Dispose();
            stream.Dispose();
            throw new WeightsException($"{path}: cannot map into memory: {Text.OneLine(e.Message)}", e);
        }
        return file;
    }

    /// <summary>Maps <paramref name="path"/> and reads it with <paramref name="read"/>, which owns the mapping unless it throws.</summary>
    public static T Read<T>(string path, Func<MappedFile, T> read)
    {
        var map = Open(path);
        try
        {
            return read(map);
        }
        catch
        {
            map.Dispose();
            throw;
        }
    }

    public static MappedFile FromBytes(byte[] data, string name)
    {
        var file = new MappedFile(name, data.Length) { pin = GCHandle.Alloc(data, GCHandleType.Pinned) };
        file.start = (byte*)file.pin.AddrOfPinnedObject();
        return file;
    }

    /// <summary>The bytes [offset, offset+length); a range outside the file is a <see cref="WeightsException"/>.</summary>
    public ReadOnlySpan<byte> Span(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Length || length > Length - offset)
            throw new WeightsException($"{Path}: byte range [{offset}, {offset}+{length}) lies outside the file ({Length} bytes)");
        if (length > int.MaxValue)
            throw new WeightsException($"{Path}: byte range at offset {offset} is {length} bytes, over the 2 GiB a single read allows");
        if (length == 0) return ReadOnlySpan<byte>.Empty;
        ObjectDisposedException.ThrowIf(start == null, this);
        return new ReadOnlySpan<byte>(start + offset, (int)length);
    }

    /// <summary>Drops the whole pages of [offset, offset+length) from the resident set (a mapped file only).</summary>
    public void DropPages(long offset, long length)
    {
        if (view is null || start == null || offset < 0 || length <= 0 || offset > Length) return;
        HostMemory.DropMappedPages(start + offset, Math.Min(length, Length - offset));
    }

    public void Dispose()
    {
        if (view is not null && start != null) view.SafeMemoryMappedViewHandle.ReleasePointer();
        start = null;
        view?.Dispose();
        map?.Dispose();
        view = null;
        map = null;
        if (pin.IsAllocated) pin.Free();
    }
}
