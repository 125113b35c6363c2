using System.Runtime.InteropServices;
using StableDiffusion.IO.Tests.Support;
using StableDiffusion.Runtime;

namespace StableDiffusion.IO.Tests;

public sealed class UploadTests : IDisposable
{
    private readonly ComputeDevice device = ComputeDevice.OpenIlgpuCpu();

    public void Dispose() => device.Dispose();

    [Fact]
    public void TensorsReachTheDeviceAsStoredOrConverted()
    {
        using var dir = new TempDir();
        var path = dir.File("u.safetensors");
        const int big = (1 << 20) + 12345; // more than one conversion chunk
        var f32 = Enumerable.Range(0, 6).Select(i => i * 0.5f - 1).ToArray();
        var f16 = f32.Select(x => (Half)x).ToArray();
        var bf16 = new ushort[big];
        var expectedBf16 = new float[big];
        for (int i = 0; i < big; i++)
        {
            // bf16 is the top 16 bits of an fp32; these values are exact in bf16.
            float v = (i % 251 - 125) * 0.25f;
            bf16[i] = (ushort)(BitConverter.SingleToUInt32Bits(v) >> 16);
            expectedBf16[i] = v;
        }
        var i64 = new long[] { 0, 1, 76, -3 };
        var i32 = new int[] { 5, -6 };
        SafetensorsWriter.Write(path,
        [
            SafetensorsEntry.FromBytes("f32", WeightDType.F32, [2, 3], MemoryMarshal.AsBytes(f32.AsSpan()).ToArray()),
            SafetensorsEntry.FromBytes("f16", WeightDType.F16, [6], MemoryMarshal.AsBytes(f16.AsSpan()).ToArray()),
            SafetensorsEntry.FromBytes("bf16", WeightDType.BF16, [big], MemoryMarshal.AsBytes(bf16.AsSpan()).ToArray()),
            SafetensorsEntry.FromBytes("i64", WeightDType.I64, [1, 4], MemoryMarshal.AsBytes(i64.AsSpan()).ToArray()),
            SafetensorsEntry.FromBytes("i32", WeightDType.I32, [2], MemoryMarshal.AsBytes(i32.AsSpan()).ToArray()),
            SafetensorsEntry.FromBytes("huge", WeightDType.I64, [1], BitConverter.GetBytes(long.MaxValue)),
        ]);
        using var file = WeightFile.Open(path);

        using (var t = file.Upload(device, file.Find("f32")!))
        {
            Assert.Equal(DType.F32, t.DType);
            Assert.Equal([2, 3], t.ShapeArray());
            Assert.Equal(f32, t.ToFloatArray());
        }
        using (var t = file.Upload(device, file.Find("f16")!))
        {
            Assert.Equal(DType.F16, t.DType);
            Assert.Equal(f32, t.ToFloatArray());
        }
        using (var t = file.Upload(device, file.Find("bf16")!))
        {
            Assert.Equal(DType.F32, t.DType); // widened on the host
            Assert.Equal(expectedBf16, t.ToFloatArray());
        }
        using (var t = file.Upload(device, file.Find("bf16")!, DType.F16))
            Assert.Equal(expectedBf16, t.ToFloatArray());
        using (var t = file.Upload(device, file.Find("f32")!, DType.F16))
            Assert.Equal(f32, t.ToFloatArray());
        using (var t = file.Upload(device, file.Find("f16")!, DType.F32))
            Assert.Equal(f32, t.ToFloatArray());
        using (var t = file.Upload(device, file.Find("i64")!))
        {
            Assert.Equal(DType.I32, t.DType);
            Assert.Equal([1, 4], t.ShapeArray());
            Assert.Equal([0f, 1, 76, -3], t.ToFloatArray());
        }
        using (var t = file.Upload(device, file.Find("i32")!))
            Assert.Equal([5f, -6], t.ToFloatArray());
        Assert.Contains("does not fit an int32", Assert.Throws<WeightsException>(() => file.Upload(device, file.Find("huge")!)).Message);
        Assert.Contains("cannot be loaded as", Assert.Throws<WeightsException>(() => file.Upload(device, file.Find("f32")!, DType.I32)).Message);
        Assert.Equal(0, device.Pool.BytesInUse); // nothing leaked on the error paths
    }

    [SkippableFact]
    public void RealPthTensorsUploadUnchanged()
    {
        using var file = WeightFile.Open(Reference.Require("pth", "taesana_encoder.pth"));
        foreach (var info in file.Tensors.Take(8))
        {
            using var t = file.Upload(device, info);
            Assert.Equal(DType.F16, t.DType);
            Assert.Equal(file.ReadFloat32(info), t.ToFloatArray());
        }
    }
}
