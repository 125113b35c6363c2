using ILGPU;
using ILGPU.Runtime;

namespace StableDiffusion.Runtime;

/// <summary>
/// Reuses device buffers between ops. ILGPU has no stream-ordered allocator and a device allocation costs far
/// more than a kernel launch, so buffers are kept in size classes (four per power of two, at most 25 % slack)
/// and handed out again when a tensor is disposed. Everything runs on the device's single stream, so a buffer
/// returned after an op was enqueued is safe to hand to the next op enqueued on the same stream.
/// </summary>
public sealed class MemoryPool : IDisposable
{
    private readonly Accelerator accelerator;
    private readonly Dictionary<long, Stack<MemoryBuffer1D<byte, Stride1D.Dense>>> free = new();
    private readonly object gate = new();
    private bool disposed;

    internal MemoryPool(Accelerator accelerator) => this.accelerator = accelerator;

    /// <summary>Fill every rented buffer with 0xFF bytes (NaN in fp32 and fp16) so unwritten outputs show.</summary>
    public bool PoisonOnRent { get; set; }

    /// <summary>
    /// The most bytes the pool may hold (rented and cached), or null for no limit: an allocation past it first drops the
    /// cached buffers, then fails with a <see cref="DeviceException"/> naming <see cref="Stage"/> and the size asked for.
    /// </summary>
    public long? Limit { get; set; }

    /// <summary>What the device is busy with (e.g. "unet"), for the message of an allocation that fails.</summary>
    public string? Stage { get; set; }

    public long BytesInUse { get; private set; }
    public long PeakBytesInUse { get; private set; }
    public long BytesReserved { get; private set; }
    public long Hits { get; private set; }
    public long Misses { get; private set; }

    /// <summary>The size class a request of <paramref name="bytes"/> is served from.</summary>
    public static long SizeClass(long bytes)
    {
        if (bytes <= 512) return 512;
        int log = 63 - System.Numerics.BitOperations.LeadingZeroCount((ulong)(bytes - 1));
        long step = Math.Max(512, (1L << log) / 4); // 4 classes between consecutive powers of two
        return (bytes + step - 1) / step * step;
    }

    public PooledBuffer Rent(long bytes)
    {
        if (bytes < 0) throw new ArgumentOutOfRangeException(nameof(bytes));
        long size = SizeClass(bytes);
        MemoryBuffer1D<byte, Stride1D.Dense>? buffer = null;
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (free.TryGetValue(size, out var stack) && stack.Count > 0)
            {
                buffer = stack.Pop();
                Hits++;
            }
        }
        if (buffer is null)
        {
            buffer = Allocate(size);
            lock (gate)
            {
                Misses++;
                BytesReserved += size;
            }
        }
        lock (gate)
        {
            BytesInUse += size;
            PeakBytesInUse = Math.Max(PeakBytesInUse, BytesInUse);
        }
        if (PoisonOnRent) buffer.View.MemSet(accelerator.DefaultStream, 0xFF);
        return new PooledBuffer(this, buffer, size);
    }

    /// <summary>
    /// A buffer of exactly <paramref name="bytes"/> (rounded to 256) that goes back to the device when disposed,
    /// not to a size class: for weights, which live as long as their model and would waste up to 25 % in a class.
    /// </summary>
    public PooledBuffer RentExact(long bytes)
    {
        if (bytes < 0) throw new ArgumentOutOfRangeException(nameof(bytes));
        long size = Math.Max(256, (bytes + 255) / 256 * 256);
        lock (gate) ObjectDisposedException.ThrowIf(disposed, this);
        var buffer = Allocate(size);
        lock (gate)
        {
            Misses++;
            BytesReserved += size;
            BytesInUse += size;
            PeakBytesInUse = Math.Max(PeakBytesInUse, BytesInUse);
        }
        if (PoisonOnRent) buffer.View.MemSet(accelerator.DefaultStream, 0xFF);
        return new PooledBuffer(this, buffer, size, exact: true);
    }

    private static string MiB(long bytes) => $"{bytes / (1024.0 * 1024):F1} MiB";

    private string During => Stage is null ? "" : $" in the {Stage}";

    private void EnsureRoom(long size)
    {
        if (Limit is not long limit) return;
        lock (gate)
            if (BytesReserved + size <= limit) return;
        Trim();
        lock (gate)
            if (BytesReserved + size <= limit) return;
        throw new DeviceException($"memory limit of {MiB(limit)} reached{During}: {MiB(size)} asked for with {MiB(BytesInUse)} in use");
    }

    private MemoryBuffer1D<byte, Stride1D.Dense> Allocate(long size)
    {
        EnsureRoom(size);
        try
        {
            return accelerator.Allocate1D<byte>(size);
        }
        catch (Exception e) when (e is OutOfMemoryException or AcceleratorException or InvalidOperationException)
        {
            Trim();
            try
            {
                return accelerator.Allocate1D<byte>(size);
            }
            catch (Exception e2) when (e2 is OutOfMemoryException or AcceleratorException or InvalidOperationException)
            {
                throw new DeviceException(
                    $"out of device memory on {accelerator.Name}{During}: could not allocate {MiB(size)} ({MiB(BytesInUse)} in use)", e2);
            }
        }
    }

    internal void Return(MemoryBuffer1D<byte, Stride1D.Dense> buffer, long size, bool exact)
    {
        lock (gate)
        {
            BytesInUse -= size;
            if (disposed || exact)
            {
                if (exact) BytesReserved -= size;
                buffer.Dispose();
                return;
            }
            if (!free.TryGetValue(size, out var stack)) free[size] = stack = new Stack<MemoryBuffer1D<byte, Stride1D.Dense>>();
            stack.Push(buffer);
        }
    }

    /// <summary>Releases every buffer not currently rented.</summary>
    public void Trim()
    {
        lock (gate)
        {
            foreach (var (size, stack) in free)
            {
                while (stack.Count > 0)
                {
                    stack.Pop().Dispose();
                    BytesReserved -= size;
                }
            }
            free.Clear();
        }
    }

    public void Dispose()
    {
        lock (gate)
        {
            if (disposed) return;
            disposed = true;
        }
        Trim();
    }
}

/// <summary>A buffer rented from a <see cref="MemoryPool"/>; disposing it returns it.</summary>
public sealed class PooledBuffer : IDisposable
{
    private readonly MemoryPool pool;
    private MemoryBuffer1D<byte, Stride1D.Dense>? buffer;

    private readonly bool exact;

    internal PooledBuffer(MemoryPool pool, MemoryBuffer1D<byte, Stride1D.Dense> buffer, long capacity, bool exact = false)
    {
        this.pool = pool;
        this.buffer = buffer;
        this.exact = exact;
        Capacity = capacity;
    }

    public long Capacity { get; }

    public ArrayView<byte> View =>
        (buffer ?? throw new ObjectDisposedException(nameof(PooledBuffer))).View;

    public bool IsDisposed => buffer is null;

    public void Dispose()
    {
        var b = Interlocked.Exchange(ref buffer, null);
        if (b is not null) pool.Return(b, Capacity, exact);
    }
}
