using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;

namespace StableDiffusion.Tests.Runtime;

/// <summary>
/// <c>sd generate --profile</c>'s per-shape tally: each arithmetic-heavy op is named by its shape and credited with
/// the floating-point operations that shape takes, counted here from the shapes alone.
/// </summary>
public class ProfilingOpsTests
{
    [Fact]
    public void Linear_convolution_and_attention_are_tallied_by_shape_with_their_flops()
    {
        var profiler = new ProfilingOps(Devices.Backend("cpu"));
        var dev = profiler.Device;
        Tensor T(params int[] shape) =>
            Tensor.FromArray(dev, Enumerable.Range(0, shape.Aggregate(1, (a, b) => a * b)).Select(i => (float)Math.Sin(i)).ToArray(), DType.F32, shape);

        using var x = T(3, 5, 8);
        using var w = T(6, 8);
        for (int i = 0; i < 2; i++) profiler.Linear(x, w).Dispose();
        using var img = T(1, 5, 7, 3);
        using var cw = T(4, 3, 3, 3);
        profiler.Conv2d(img, cw, stride: 2, padding: 1).Dispose(); // 5x7 → 3x4
        profiler.Conv2d(img, cw, padding: 1).Dispose();
        using var q = T(2, 6, 8);
        using var kv = T(2, 9, 8);
        profiler.Attention(q, kv, kv, heads: 2).Dispose();
        profiler.GroupNorm(img, 1, null, null, 1e-5f).Dispose(); // timed, but not a shape

        var shapes = profiler.ShapeEntries.ToDictionary(e => e.Shape);
        Assert.Equal(4, shapes.Count);
        Assert.Equal((2, 2 * 2.0 * 15 * 6 * 8), (shapes["linear 15x6x8"].Calls, shapes["linear 15x6x8"].Flops));
        Assert.Equal(2.0 * 3 * 4 * 4 * 27, shapes["conv3x3 1x5x7x3>4 s2"].Flops);
        Assert.Equal(2.0 * 5 * 7 * 4 * 27, shapes["conv3x3 1x5x7x3>4"].Flops);
        Assert.Equal(4.0 * 2 * 6 * 9 * 8, shapes["attention 2x2x6x9x4"].Flops);
        Assert.Contains(profiler.Entries, e => e.Op == "group_norm" && e.Calls == 1);

        profiler.Reset();
        Assert.Empty(profiler.ShapeEntries);
        Assert.Empty(profiler.Entries);
    }
}
