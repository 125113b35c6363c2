using System.Buffers;
using System.Runtime.InteropServices;
using ILGPU.Runtime;
using StableDiffusion.Runtime;

namespace StableDiffusion.IO;

/// <summary>
/// An open weight file (safetensors or PyTorch zip): its tensor descriptors and their bytes, read straight from a
/// memory mapping. Disposing unmaps the file; spans handed out before must not be used after.
/// </summary>
public abstract class WeightFile : IDisposable
{
    private readonly Dictionary<string, TensorInfo> byName;
    private readonly MappedFile file;

    private protected WeightFile(MappedFile file, IReadOnlyList<TensorInfo> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        if (!BitConverter.IsLittleEndian)
            throw new WeightsException($"{file.Path}: weight files are little-endian and this host is not");
        this.file = file;
        Tensors = tensors;
        Metadata = metadata;
        byName = new Dictionary<string, TensorInfo>(tensors.Count, StringComparer.Ordinal);
        foreach (var t in tensors)
            if (!byName.TryAdd(t.Name, t))
                throw new WeightsException($"{file.Path}: duplicate tensor name {Text.Q(t.Name)}");
    }

    public string Path => file.Path;

    /// <summary>"safetensors" or "ckpt".</summary>
    public abstract string Format { get; }

    public IReadOnlyList<TensorInfo> Tensors { get; }

    /// <summary>safetensors <c>__metadata__</c>; empty for other formats.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public TensorInfo? Find(string name) => byName.GetValueOrDefault(name);

    /// <summary>Opens a .safetensors file or a PyTorch zip (.ckpt, .pth, .pt, .bin), chosen by its first bytes.</summary>
    public static WeightFile Open(string path) => MappedFile.Read(path, Open);

    internal static WeightFile Open(MappedFile map)
    {
        if (map.Length >= 4 && map.Span(0, 4).SequenceEqual("PK\x03\x04"u8)) return PyTorchZip.Read(map);
        var ext = System.IO.Path.GetExtension(map.Path).ToLowerInvariant();
        if (ext is ".ckpt" or ".pth" or ".pt" or ".bin")
            throw new WeightsException($"{map.Path}: not a PyTorch zip archive (the legacy pre-1.6 torch.save format is not supported; convert it to safetensors)");
        return SafetensorsFile.Read(map);
    }

    /// <summary>The stored bytes of <paramref name="t"/>, a span over the mapping (no copy).</summary>
    public ReadOnlySpan<byte> Bytes(TensorInfo t) => file.Span(t.Offset, t.ByteLength);

    /// <summary>
    /// Done with <paramref name="t"/>'s bytes for now: its pages leave this process's resident set (they stay in the
    /// page cache, and a later read maps them again), so a loaded model does not also count the file it came from.
    /// </summary>
    public void DropPages(TensorInfo t) => file.DropPages(t.Offset, t.ByteLength);

    /// <summary>Copies <paramref name="t"/> into <paramref name="dest"/> as fp32 (exact for F16, BF16 and integers below 2^24).</summary>
    public void CopyAsFloat32(TensorInfo t, Span<float> dest)
    {
        if (dest.Length != t.ElementCount)
            throw new WeightsException($"{Path}: tensor {Text.Q(t.Name)} has {t.ElementCount} elements, the destination {dest.Length}");
        Convert(Bytes(t), t.DType, MemoryMarshal.AsBytes(dest), DType.F32, t);
    }

    public float[] ReadFloat32(TensorInfo t)
    {
        if (t.ElementCount > Array.MaxLength)
            throw new WeightsException($"{Path}: tensor {Text.Q(t.Name)} has {t.ElementCount} elements, too many for one host array");
        var result = new float[t.ElementCount];
        CopyAsFloat32(t, result);
        return result;
    }

    /// <summary>The device type a stored type lands in unless asked otherwise: F16/F32/I32 as stored, BF16 widened to F32, I64 narrowed to I32.</summary>
    public static DType DeviceTypeFor(WeightDType stored) => stored switch
    {
        WeightDType.F16 => DType.F16,
        WeightDType.F32 or WeightDType.BF16 => DType.F32,
        _ => DType.I32,
    };

    /// <summary>
    /// A new device tensor holding <paramref name="t"/>. Bytes whose device type matches go from the mapping to the
    /// device in one copy; conversions (BF16 widening, fp32↔fp16, I64→I32) run on the host in small chunks.
    /// </summary>
    public Tensor Upload(ComputeDevice device, TensorInfo t, DType? deviceType = null)
    {
        var target = deviceType ?? DeviceTypeFor(t.DType);
        var shape = new int[t.Shape.Length];
        for (int i = 0; i < shape.Length; i++)
        {
            if (t.Shape[i] > int.MaxValue)
                throw new WeightsException($"{Path}: tensor {Text.Q(t.Name)} dimension {t.Shape[i]} is too large for a device tensor");
            shape[i] = (int)t.Shape[i];
        }
        var src = Bytes(t);
        var tensor = Tensor.EmptyExact(device, target, shape); // weights: exact size, outside the pool's classes
        try
        {
            if (SameBits(t.DType, target))
            {
                tensor.UploadBytes(src);
                return tensor;
            }
            const int chunkElements = 1 << 20;
            int srcSize = t.DType.SizeInBytes(), dstSize = target.SizeInBytes();
            var buffer = ArrayPool<byte>.Shared.Rent(chunkElements * dstSize);
            try
            {
                var stream = device.Accelerator.DefaultStream;
                for (long e = 0; e < t.ElementCount; e += chunkElements)
                {
                    int n = (int)Math.Min(chunkElements, t.ElementCount - e);
                    var chunk = buffer.AsSpan(0, n * dstSize);
                    Convert(src.Slice((int)(e * srcSize), n * srcSize), t.DType, chunk, target, t);
                    tensor.Bytes.SubView(e * dstSize, chunk.Length).CopyFromCPU(stream, (ReadOnlySpan<byte>)chunk);
                    stream.Synchronize(); // the buffer is reused for the next chunk
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    private static bool SameBits(WeightDType s, DType d) =>
        (s, d) is (WeightDType.F32, DType.F32) or (WeightDType.F16, DType.F16) or (WeightDType.I32, DType.I32);

    private void Convert(ReadOnlySpan<byte> src, WeightDType from, Span<byte> dst, DType to, TensorInfo t)
    {
        switch (from, to)
        {
            case (WeightDType.F32, DType.F32):
            case (WeightDType.F16, DType.F16):
            case (WeightDType.I32, DType.I32):
                src.CopyTo(dst);
                break;
            case (WeightDType.F16, DType.F32):
            {
                var s = MemoryMarshal.Cast<byte, ushort>(src);
                var d = MemoryMarshal.Cast<byte, float>(dst);
                for (int i = 0; i < s.Length; i++) d[i] = (float)BitConverter.UInt16BitsToHalf(s[i]);
                break;
            }
            case (WeightDType.F32, DType.F16):
            {
                var s = MemoryMarshal.Cast<byte, float>(src);
                var d = MemoryMarshal.Cast<byte, ushort>(dst);
                for (int i = 0; i < s.Length; i++) d[i] = BitConverter.HalfToUInt16Bits((Half)s[i]);
                break;
            }
            case (WeightDType.BF16, DType.F32):
            {
                var s = MemoryMarshal.Cast<byte, ushort>(src);
                var d = MemoryMarshal.Cast<byte, uint>(dst);
                for (int i = 0; i < s.Length; i++) d[i] = (uint)s[i] << 16; // bf16 is the top half of an fp32
                break;
            }
            case (WeightDType.BF16, DType.F16):
            {
                var s = MemoryMarshal.Cast<byte, ushort>(src);
                var d = MemoryMarshal.Cast<byte, ushort>(dst);
                for (int i = 0; i < s.Length; i++)
                    d[i] = BitConverter.HalfToUInt16Bits((Half)BitConverter.UInt32BitsToSingle((uint)s[i] << 16));
                break;
            }
            case (WeightDType.I32, DType.F32):
            {
                var s = MemoryMarshal.Cast<byte, int>(src);
                var d = MemoryMarshal.Cast<byte, float>(dst);
                for (int i = 0; i < s.Length; i++) d[i] = s[i];
                break;
            }
            case (WeightDType.I64, DType.F32):
            {
                var s = MemoryMarshal.Cast<byte, long>(src);
                var d = MemoryMarshal.Cast<byte, float>(dst);
                for (int i = 0; i < s.Length; i++) d[i] = s[i];
                break;
            }
            case (WeightDType.I64, DType.I32):
            {
                var s = MemoryMarshal.Cast<byte, long>(src);
                var d = MemoryMarshal.Cast<byte, int>(dst);
                for (int i = 0; i < s.Length; i++)
                {
                    if (s[i] is < int.MinValue or > int.MaxValue)
                        throw new WeightsException($"{Path}: tensor {Text.Q(t.Name)} holds {s[i]}, which does not fit an int32 device tensor");
                    d[i] = (int)s[i];
                }
                break;
            }
            default:
                throw new WeightsException($"{Path}: tensor {Text.Q(t.Name)} is {from.Name()} and cannot be loaded as {to.Name()}");
        }
    }

    public void Dispose()
    {
        file.Dispose();
        GC.SuppressFinalize(this);
    }
}
