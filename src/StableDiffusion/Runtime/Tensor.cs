using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using Half = ILGPU.Half;

namespace StableDiffusion.Runtime;

/// <summary>
/// A dense, row-major device tensor: shape, element type and a pooled device buffer. Activations are
/// channels-last (NHWC). Disposing returns the buffer to the device's pool; a <see cref="Reshape"/> view
/// shares the buffer and must not outlive its owner.
/// </summary>
public sealed class Tensor : IDisposable
{
    private readonly PooledBuffer storage;
    private bool ownsStorage;
    private readonly int[] shape;
    private object? packedLayout;

    private Tensor(ComputeDevice device, DType dtype, int[] shape, PooledBuffer storage, bool owns)
    {
        Device = device;
        DType = dtype;
        this.shape = shape;
        this.storage = storage;
        ownsStorage = owns;
        Length = ElementCount(shape);
    }

    public ComputeDevice Device { get; }
    public DType DType { get; }
    public ReadOnlySpan<int> Shape => shape;
    public int Rank => shape.Length;
    public long Length { get; }
    public long ByteLength => Length * DType.SizeInBytes();

    public int Dim(int axis) => shape[axis < 0 ? shape.Length + axis : axis];

    public int[] ShapeArray() => (int[])shape.Clone();

    public string ShapeString() => "[" + string.Join(", ", shape) + "]";

    public override string ToString() => $"{DType.Name()}{ShapeString()}{(IsPacked ? " (packed)" : "")}";

    public static long ElementCount(ReadOnlySpan<int> shape)
    {
        long n = 1;
        foreach (var d in shape)
        {
            if (d < 0) throw new KernelArgumentException($"negative dimension in shape [{string.Join(", ", shape.ToArray())}]");
            n = checked(n * d);
        }
        return n;
    }

    /// <summary>A new tensor with unspecified contents (NaN when the pool poisons).</summary>
    public static Tensor Empty(ComputeDevice device, DType dtype, params int[] shape)
    {
        var s = (int[])shape.Clone();
        long bytes = ElementCount(s) * dtype.SizeInBytes();
        return new Tensor(device, dtype, s, device.Pool.Rent(bytes), owns: true);
    }

    /// <summary>
    /// A new tensor in a buffer of its exact size, outside the pool's size classes (weights: long-lived, and a size
    /// class would waste up to 25 % of them).
    /// </summary>
    public static Tensor EmptyExact(ComputeDevice device, DType dtype, params int[] shape)
    {
        var s = (int[])shape.Clone();
        long bytes = ElementCount(s) * dtype.SizeInBytes();
        return new Tensor(device, dtype, s, device.Pool.RentExact(bytes), owns: true);
    }

    /// <summary>
    /// A weight in a backend's own element order (the CPU GEMM's packed panels): logically <paramref name="shape"/> in
    /// <paramref name="dtype"/>, physically <paramref name="bytes"/> bytes of that backend's layout, given by
    /// <see cref="SetPackedLayout"/> once filled. Only the backend that packed it reads it (<see cref="PackedBytes"/>);
    /// <see cref="Bytes"/> and every other op refuse it.
    /// </summary>
    public static Tensor EmptyPacked(ComputeDevice device, DType dtype, int[] shape, long bytes)
    {
        var s = (int[])shape.Clone();
        ElementCount(s);
        return new Tensor(device, dtype, s, device.Pool.RentExact(bytes), owns: true) { packedLayout = Unset };
    }

    private static readonly object Unset = new();

    /// <summary>The backend's description of a packed weight's layout; null for an ordinary row-major tensor.</summary>
    public object? PackedLayout => packedLayout == Unset ? null : packedLayout;

    public bool IsPacked => packedLayout is not null;

    /// <summary>Names the layout of a tensor made by <see cref="EmptyPacked"/>, once, after its buffer is filled.</summary>
    public void SetPackedLayout(object layout)
    {
        if (packedLayout != Unset) throw new KernelArgumentException($"{this} is not an unfilled packed tensor");
        packedLayout = layout ?? throw new ArgumentNullException(nameof(layout));
    }

    /// <summary>The whole buffer of a packed tensor, for the backend that owns its layout.</summary>
    public ArrayView<byte> PackedBytes => IsPacked ? storage.View : throw new KernelArgumentException($"{this} is not packed");

    /// <summary>Uploads <paramref name="data"/>, converting to <paramref name="dtype"/> on the host.</summary>
    public static Tensor FromArray(ComputeDevice device, ReadOnlySpan<float> data, DType dtype, params int[] shape) =>
        FromArray(device, data, dtype, exact: false, shape);

    /// <summary>Uploads <paramref name="data"/>; <paramref name="exact"/> allocates outside the size classes.</summary>
    public static Tensor FromArray(ComputeDevice device, ReadOnlySpan<float> data, DType dtype, bool exact, params int[] shape)
    {
        var t = exact ? EmptyExact(device, dtype, shape) : Empty(device, dtype, shape);
        try
        {
            t.Upload(data);
        }
        catch
        {
            t.Dispose();
            throw;
        }
        return t;
    }

    public static Tensor FromInts(ComputeDevice device, ReadOnlySpan<int> data, params int[] shape)
    {
        var t = Empty(device, DType.I32, shape);
        if (data.Length != t.Length)
        {
            t.Dispose();
            throw new KernelArgumentException($"{data.Length} values do not fill a tensor of shape {t.ShapeString()}");
        }
        t.I32.CopyFromCPU(Device(t).DefaultStream, data);
        return t;

        static Accelerator Device(Tensor x) => x.Device.Accelerator;
    }

    /// <summary>Uploads host values, converting fp32 to fp16 where the tensor is fp16.</summary>
    public void Upload(ReadOnlySpan<float> data)
    {
        if (data.Length != Length)
            throw new KernelArgumentException($"{data.Length} values do not fill a tensor of shape {ShapeString()}");
        var stream = Device.Accelerator.DefaultStream;
        switch (DType)
        {
            case DType.F32:
                F32.CopyFromCPU(stream, data);
                break;
            case DType.F16:
            {
                var tmp = new ushort[data.Length];
                for (int i = 0; i < tmp.Length; i++) tmp[i] = BitConverter.HalfToUInt16Bits((System.Half)data[i]);
                Bytes.Cast<ushort>().CopyFromCPU(stream, tmp);
                break;
            }
            default:
                throw new KernelArgumentException($"cannot upload floats into a {DType.Name()} tensor");
        }
        stream.Synchronize();
    }

    /// <summary>Uploads raw little-endian bytes in this tensor's own dtype (used by weight loaders).</summary>
    public void UploadBytes(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length != ByteLength)
            throw new KernelArgumentException($"{bytes.Length} bytes do not fill {this} ({ByteLength} bytes)");
        Bytes.CopyFromCPU(Device.Accelerator.DefaultStream, bytes);
        Device.Accelerator.DefaultStream.Synchronize();
    }

    /// <summary>Downloads as fp32 (fp16 widened exactly). Synchronises the device.</summary>
    public float[] ToFloatArray()
    {
        var stream = Device.Accelerator.DefaultStream;
        var result = new float[Length];
        switch (DType)
        {
            case DType.F32:
                F32.CopyToCPU(stream, result);
                break;
            case DType.F16:
            {
                var tmp = new ushort[Length];
                Bytes.Cast<ushort>().CopyToCPU(stream, tmp);
                for (int i = 0; i < tmp.Length; i++) result[i] = (float)BitConverter.UInt16BitsToHalf(tmp[i]);
                break;
            }
            case DType.I32:
            {
                var tmp = new int[Length];
                I32.CopyToCPU(stream, tmp);
                for (int i = 0; i < tmp.Length; i++) result[i] = tmp[i];
                break;
            }
        }
        stream.Synchronize();
        return result;
    }

    /// <summary>A view with another shape of the same element count, sharing this tensor's buffer.</summary>
    public Tensor Reshape(params int[] newShape)
    {
        ThrowIfPacked();
        var s = (int[])newShape.Clone();
        int infer = Array.IndexOf(s, -1);
        if (infer >= 0)
        {
            long rest = 1;
            for (int i = 0; i < s.Length; i++) if (i != infer) rest *= s[i];
            if (rest == 0 || Length % rest != 0)
                throw new KernelArgumentException($"cannot reshape {this} to [{string.Join(", ", newShape)}]");
            s[infer] = (int)(Length / rest);
        }
        if (ElementCount(s) != Length)
            throw new KernelArgumentException($"cannot reshape {this} to [{string.Join(", ", newShape)}]");
        return new Tensor(Device, DType, s, storage, owns: false);
    }

    /// <summary>
    /// The same buffer under a new shape, taking over ownership: after this call the original tensor no longer owns
    /// (nor frees) the buffer and should not be used. Used to give a freshly computed tensor its final shape.
    /// </summary>
    public Tensor ReshapeOwned(params int[] newShape)
    {
        if (!ownsStorage) throw new KernelArgumentException($"{this} does not own its buffer; reshape its owner instead");
        var view = Reshape(newShape);
        ownsStorage = false;
        view.ownsStorage = true;
        return view;
    }

    /// <summary>All bytes of this tensor (exactly <see cref="ByteLength"/>).</summary>
    public ArrayView<byte> Bytes
    {
        get
        {
            ThrowIfPacked();
            return storage.View.SubView(0, ByteLength);
        }
    }

    private void ThrowIfPacked()
    {
        if (IsPacked)
            throw new KernelArgumentException($"{this} holds a weight in its backend's packed layout; only that backend's linear and conv2d read it");
    }

    public ArrayView<float> F32 => Typed<float>(DType.F32);
    public ArrayView<Half> F16 => Typed<Half>(DType.F16);
    public ArrayView<int> I32 => Typed<int>(DType.I32);

    /// <summary>The data as a view of <typeparamref name="T"/>, which must match the dtype's size.</summary>
    public ArrayView<T> View<T>() where T : unmanaged
    {
        if (Marshal.SizeOf<T>() != DType.SizeInBytes())
            throw new KernelArgumentException($"{this} cannot be viewed as {typeof(T).Name}");
        return Bytes.Cast<T>();
    }

    private ArrayView<T> Typed<T>(DType expected) where T : unmanaged
    {
        if (DType != expected) throw new KernelArgumentException($"expected a {expected.Name()} tensor, got {this}");
        return Bytes.Cast<T>();
    }

    public bool IsDisposed => storage.IsDisposed;

    public void Dispose()
    {
        if (ownsStorage) storage.Dispose();
    }
}
