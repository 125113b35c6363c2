using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;

namespace StableDiffusion.Tests.Runtime;

public class MemoryTests
{
    [Theory]
    [InlineData(1L)]
    [InlineData(513L)]
    [InlineData(4096L)]
    [InlineData(4097L)]
    [InlineData(1_000_000L)]
    [InlineData(3_276_800L)]
    [InlineData(1L << 31)]
    public void Size_classes_cover_the_request_with_at_most_a_quarter_slack(long bytes)
    {
        long c = MemoryPool.SizeClass(bytes);
        Assert.True(c >= bytes);
        Assert.True(c <= bytes + Math.Max(512, bytes / 4), $"{bytes} → {c}");
        Assert.Equal(c, MemoryPool.SizeClass(c)); // a class maps to itself
    }

    [Fact]
    public void A_pool_limit_drops_cached_buffers_first_then_refuses_naming_the_stage()
    {
        using var d = ComputeDevice.OpenIlgpuCpu(warpsPerGroup: 1, multiprocessors: 1);
        var pool = d.Pool;
        pool.Limit = 3 * MemoryPool.SizeClass(100_000);
        pool.Stage = "unet";
        var a = pool.Rent(100_000);
        var b = pool.Rent(100_000);
        b.Dispose(); // cached: still reserved
        var c = pool.Rent(200_000 - 4096); // two classes' worth: fits only once the cached buffer is dropped
        Assert.Equal(pool.BytesInUse, pool.BytesReserved);
        var e = Assert.Throws<DeviceException>(() => pool.Rent(100_000));
        Assert.Matches(@"^memory limit of [0-9.]+ MiB reached in the unet: [0-9.]+ MiB asked for with [0-9.]+ MiB in use$", e.Message);
        Assert.Throws<DeviceException>(() => pool.RentExact(100_000));
        c.Dispose();
        using var ok = pool.RentExact(100_000);
        a.Dispose();
    }

    [Fact]
    public void Pool_reuses_returned_buffers_and_tracks_peak()
    {
        using var d = ComputeDevice.OpenIlgpuCpu(warpsPerGroup: 1, multiprocessors: 1);
        var pool = d.Pool;
        var a = pool.Rent(10_000);
        var b = pool.Rent(10_000);
        Assert.Equal(2, pool.Misses);
        long peak = pool.PeakBytesInUse;
        Assert.Equal(2 * MemoryPool.SizeClass(10_000), peak);
        a.Dispose();
        a.Dispose(); // idempotent
        var c = pool.Rent(9_000); // same size class: served from the free list
        Assert.Equal(1, pool.Hits);
        Assert.Equal(2, pool.Misses);
        Assert.Equal(peak, pool.PeakBytesInUse);
        b.Dispose();
        c.Dispose();
        Assert.Equal(0, pool.BytesInUse);
        Assert.Equal(2 * MemoryPool.SizeClass(10_000), pool.BytesReserved);
        pool.Trim();
        Assert.Equal(0, pool.BytesReserved);
    }

    [Fact]
    public void Poisoned_pool_hands_out_nan_so_unwritten_outputs_fail()
    {
        using var d = ComputeDevice.OpenIlgpuCpu(warpsPerGroup: 1, multiprocessors: 1);
        d.Pool.PoisonOnRent = true;
        using var t32 = Tensor.Empty(d, DType.F32, 5);
        Assert.All(t32.ToFloatArray(), v => Assert.True(float.IsNaN(v)));
        using var t16 = Tensor.Empty(d, DType.F16, 5);
        Assert.All(t16.ToFloatArray(), v => Assert.True(float.IsNaN(v)));
        Assert.True(double.IsNaN(global::StableDiffusion.Kernels.Reference.RelativeError(t32.ToFloatArray(), [1, 2, 3, 4, 5])));
    }

    [Fact]
    public void Tensors_round_trip_fp32_and_fp16()
    {
        var dev = Devices.Device;
        float[] data = [0f, 1f, -2.5f, 65504f, 1e-3f, 3.14159265f];
        using var t32 = Tensor.FromArray(dev, data, DType.F32, 2, 3);
        Assert.Equal(data, t32.ToFloatArray());
        using var t16 = Tensor.FromArray(dev, data, DType.F16, 2, 3);
        Assert.Equal(data.Select(v => (float)(System.Half)v).ToArray(), t16.ToFloatArray());
        Assert.Equal(12, t16.ByteLength);
        using var ints = Tensor.FromInts(dev, [7, -1, 49407], 3);
        Assert.Equal(new float[] { 7, -1, 49407 }, ints.ToFloatArray());
    }

    [Fact]
    public void Reshape_shares_storage_and_checks_the_element_count()
    {
        var dev = Devices.Device;
        using var t = Tensor.FromArray(dev, Enumerable.Range(0, 24).Select(i => (float)i).ToArray(), DType.F32, 2, 3, 4);
        using var v = t.Reshape(6, -1);
        Assert.Equal(new[] { 6, 4 }, v.ShapeArray());
        Assert.Equal(t.ToFloatArray(), v.ToFloatArray());
        Assert.Throws<KernelArgumentException>(() => t.Reshape(5, 5));
        Assert.Throws<KernelArgumentException>(() => t.Reshape(7, -1));
        Assert.Throws<KernelArgumentException>(() => Tensor.FromArray(dev, new float[5], DType.F32, 2, 3));
        Assert.Throws<KernelArgumentException>(() => t.F16);
    }
}
