using StableDiffusion.Models.Clip;
using StableDiffusion.Models.Unet;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using Xunit.Abstractions;

namespace StableDiffusion.Models.Tests.Unet;

/// <summary>
/// The full-size SD1.5 and SD2.1 networks run through <see cref="ShapeOps"/> (no arithmetic) at 512² and 768²: every
/// op's operand shapes hold at the real sizes, the outputs have the right shapes, every activation is given back,
/// and the pool's peak gives the device memory of a classifier-free-guidance step (batch 2) for the budget.
/// </summary>
public class FullSizeShapeTests(ITestOutputHelper output)
{
    private static DType Parse(string dt) => dt == "fp16" ? DType.F16 : DType.F32;

    [SkippableTheory]
    [InlineData("sd15", 512, "fp16")]
    [InlineData("sd15", 768, "fp16")]
    [InlineData("sd21-base", 512, "fp16")]
    [InlineData("sd21-base", 768, "fp32")]
    public void Unet_runs_at_full_size(string model, int side, string dtype)
    {
        var dt = Parse(dtype);
        var config = UNetConfig.Load(SharedReference.Require("configs", model, "unet", "config.json"));
        using var device = ComputeDevice.OpenIlgpuCpu(warpsPerGroup: 1, multiprocessors: 1);
        var ops = new ShapeOps(device);
        using var unet = new UNet2DConditionModel(config);
        ops.Bind(unet, dt);
        long weights = device.Pool.BytesInUse;
        int h = side / 8;
        using var sample = Tensor.Empty(device, dt, 2, h, h, config.InChannels);
        using var t = Tensor.Empty(device, DType.F32, 2);
        using var context = Tensor.Empty(device, dt, 2, 77, config.CrossAttentionDim[0]);
        long inputs = device.Pool.BytesInUse;
        using (var y = unet.Forward(ops, sample, t, context))
            Assert.Equal([2, h, h, config.OutChannels], y.ShapeArray());
        Assert.Equal(inputs, device.Pool.BytesInUse); // every activation went back to the pool
        long peak = device.Pool.PeakBytesInUse - inputs;
        output.WriteLine($"{model} UNet {side}² {dtype} batch 2: weights {weights / 1048576.0:F1} MiB, activation peak {peak / 1048576.0:F1} MiB");
    }

    [SkippableTheory]
    [InlineData("sd15")]
    [InlineData("sd21-base")]
    public void Text_encoder_runs_at_full_size(string model)
    {
        var config = ClipTextConfig.Load(SharedReference.Require("configs", model, "text_encoder", "config.json"));
        using var device = ComputeDevice.OpenIlgpuCpu(warpsPerGroup: 1, multiprocessors: 1);
        var ops = new ShapeOps(device);
        using var clip = new ClipTextModel(config);
        ops.Bind(clip, DType.F16);
        long weights = device.Pool.BytesInUse;
        using var ids = Tensor.Empty(device, DType.I32, 2, 77);
        long inputs = device.Pool.BytesInUse;
        using (var y = clip.Forward(ops, ids))
            Assert.Equal([2, 77, config.HiddenSize], y.ShapeArray());
        Assert.Equal(inputs, device.Pool.BytesInUse);
        output.WriteLine($"{model} text encoder fp16 batch 2: weights {weights / 1048576.0:F1} MiB, activation peak " +
                         $"{(device.Pool.PeakBytesInUse - inputs) / 1048576.0:F1} MiB");
    }
}
