using StableDiffusion.Pipelines;
using TorchSharp;
using Xunit.Abstractions;

namespace StableDiffusion.Pipelines.Tests;

/// <summary>
/// <see cref="TorchRandom"/> against libtorch's own CPU generator (TorchSharp): every value bit for bit, for both of
/// PyTorch's sampling paths (16 elements or more: vectorised Box-Muller over blocks with the last block redrawn; fewer:
/// double-precision pairs with a spare kept across calls) and across calls on one generator.
/// </summary>
public class TorchRandomTests(ITestOutputHelper output)
{
    private static float[] Torch(torch.Generator g, params int[] shape) =>
        torch.randn(shape.Select(d => (long)d).ToArray(), generator: g).data<float>().ToArray();

    private void AssertBitExact(float[] want, float[] got, string what)
    {
        Assert.Equal(want.Length, got.Length);
        int differ = 0, first = -1;
        for (int i = 0; i < want.Length; i++)
            if (BitConverter.SingleToInt32Bits(want[i]) != BitConverter.SingleToInt32Bits(got[i]))
            {
                differ++;
                if (first < 0) first = i;
            }
        output.WriteLine($"{what}: {want.Length} values, {differ} differ");
        Assert.True(differ == 0, $"{what}: {differ} of {want.Length} values differ; first at {first}: torch {(first >= 0 ? want[first] : 0):R}, ours {(first >= 0 ? got[first] : 0):R}");
    }

    public static TheoryData<ulong, int[]> Cases()
    {
        var shapes = new[]
        {
            new[] { 1, 4, 64, 64 }, new[] { 2, 4, 8, 8 }, new[] { 1, 4, 9, 7 }, new[] { 3, 5, 7 }, new[] { 16 }, new[] { 17 },
            new[] { 31 }, new[] { 33 }, new[] { 15 }, new[] { 1 }, new[] { 2, 3 },
        };
        var data = new TheoryData<ulong, int[]>();
        foreach (var seed in new ulong[] { 0, 1, 42, 12345, 4294967296UL + 7, ulong.MaxValue })
            foreach (var s in shapes)
                data.Add(seed, s);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Randn_matches_torch_bit_for_bit(ulong seed, int[] shape)
    {
        using var g = new torch.Generator(seed);
        AssertBitExact(Torch(g, shape), new TorchRandom(seed).Randn(shape), $"seed {seed}, [{string.Join(", ", shape)}]");
    }

    [Fact]
    public void The_generator_state_carries_over_between_calls_as_in_torch()
    {
        // Latents, then ancestral noise; small draws in between exercise the spare normal PyTorch keeps.
        int[][] sequence = [[1, 4, 8, 8], [3], [5], [2, 4, 8, 8], [1], [1, 4, 9, 7], [7], [20], [1]];
        foreach (var seed in new ulong[] { 0, 42, 1234567 })
        {
            using var g = new torch.Generator(seed);
            var ours = new TorchRandom(seed);
            foreach (var shape in sequence)
                AssertBitExact(Torch(g, shape), ours.Randn(shape), $"seed {seed}, then [{string.Join(", ", shape)}]");
        }
    }

    [Fact]
    public void A_million_values_match()
    {
        using var g = new torch.Generator(2024);
        AssertBitExact(Torch(g, 1 << 20), new TorchRandom(2024).Randn(1 << 20), "seed 2024, 2^20 values");
    }

    [Fact]
    public void Nhwc_noise_is_torch_noise_drawn_nchw_and_permuted()
    {
        using var g = new torch.Generator(7);
        var want = torch.randn([2, 4, 5, 3], generator: g).permute(0, 2, 3, 1).contiguous().data<float>().ToArray();
        AssertBitExact(want, new TorchRandom(7).RandnNhwc(2, 4, 5, 3), "seed 7, [2, 4, 5, 3] → NHWC");
    }
}
