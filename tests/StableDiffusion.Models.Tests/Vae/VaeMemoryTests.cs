using StableDiffusion.Models.Vae;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using Xunit.Abstractions;

namespace StableDiffusion.Models.Tests.Vae;

/// <summary>
/// The full-size SD1.5 VAE run through <see cref="ShapeOps"/> (no arithmetic): the wiring holds at real shapes, every
/// activation goes back to the pool, and the pool's peak is the device memory a real pass needs beyond the weights.
/// </summary>
public class VaeMemoryTests(ITestOutputHelper output)
{
    private const double MiB = 1024.0 * 1024;

    [SkippableTheory]
    // dtype, image side, most MiB of activations (the input included) decode and encode may hold at once. Decode
    // measured 640.2 at 512² in fp32, in the last up block's first resnet: its 512²×256 input, norm1's output and
    // conv1's 512²×128 output (the last upsampler needs 576). Encode measured 387.0: three 512²×128 tensors and the
    // image. At 768² the pool's size classes add up to 11 %.
    [InlineData("fp32", 512, 641, 388)]
    [InlineData("fp16", 512, 321, 194)]
    [InlineData("fp32", 768, 1601, 968)]
    public void Full_size_sd15_vae_shapes_and_peak_memory(string dtype, int side, int decodeMiB, int encodeMiB)
    {
        var config = VaeConfig.Load(SharedReference.Require("configs", "sd15", "vae", "config.json"));
        var dt = dtype == "fp32" ? DType.F32 : DType.F16;
        int latent = side / config.DownscaleFactor;

        var (weights, decode) = Pass(config, dt, [1, latent, latent, 4], [1, side, side, 3], (vae, ops, z) => vae.Decode(ops, z));
        var (_, encode) = Pass(config, dt, [1, side, side, 3], [1, latent, latent, 8], (vae, ops, x) => vae.Encode(ops, x));
        output.WriteLine($"SD1.5 VAE {dtype}: weights {weights / MiB:0.0} MiB in the pool; at {side}²: " +
                         $"decode activations peak {decode / MiB:0.0} MiB, encode {encode / MiB:0.0} MiB");
        Assert.True(decode <= decodeMiB * MiB, $"decode holds {decode / MiB:0.0} MiB of activations at once, expected at most {decodeMiB}");
        Assert.True(encode <= encodeMiB * MiB, $"encode holds {encode / MiB:0.0} MiB of activations at once, expected at most {encodeMiB}");
    }

    /// <summary>One shape-only pass on a fresh device: (bytes of weights in the pool, peak bytes of everything else).</summary>
    private static (long Weights, long Peak) Pass(VaeConfig config, DType dt, int[] input, int[] expected,
        Func<AutoencoderKL, IOps, Tensor, Tensor> run)
    {
        using var device = ComputeDevice.OpenIlgpuCpu(warpsPerGroup: 1, multiprocessors: 1);
        var ops = new ShapeOps(device);
        using var vae = new AutoencoderKL(config);
        ops.Bind(vae, dt);
        long weights = device.Pool.BytesInUse;
        using var x = Tensor.Empty(device, dt, input);
        using (var y = run(vae, ops, x))
            Assert.Equal(expected, y.ShapeArray());
        Assert.Equal(weights + MemoryPool.SizeClass(x.ByteLength), device.Pool.BytesInUse); // every activation went back
        return (weights, device.Pool.PeakBytesInUse - weights);
    }
}
