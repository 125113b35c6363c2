using StableDiffusion.Cli;
using StableDiffusion.Kernels;
using Xunit.Abstractions;

namespace StableDiffusion.Tests.Kernels;

public class TcPlannerTests(ITestOutputHelper output)
{
    /// <summary>
    /// The offline goal: at SD1.5 64x64 and SDXL 128x128 latents, batch 2, on 132 multiprocessors, every GEMM or
    /// convolution of at least 1 GFLOP is planned with its last wave at least 3/4 full.
    /// </summary>
    [Theory]
    [InlineData("sd15", 64)]
    [InlineData("sdxl", 128)]
    public void Every_large_gemm_of_a_unet_step_fills_its_waves(string model, int latent)
    {
        var rows = PlanCommand.Build(model, latent, latent, 2, TcDevice.Hopper(132));
        var big = rows.Where(r => r.Gemm.Gflop >= PlanCommand.GoalGflop).ToList();
        Assert.NotEmpty(big);
        foreach (var r in big)
        {
            Assert.NotNull(r.Plan);
            Assert.True(r.Plan!.WaveEfficiency >= 0.75,
                $"{r.Gemm.Layer} {r.Gemm.M}x{r.Gemm.N}x{r.Gemm.K}: {r.Plan.Config.Name} split {r.Plan.SplitK}, {r.Plan.Blocks} blocks, {r.Plan.Waves:F2} waves");
        }
        output.WriteLine($"{model}: {big.Count} GEMMs >= 1 GFLOP, lowest wave efficiency {big.Min(r => r.Plan!.WaveEfficiency):F2}, " +
                         $"split-K on {big.Count(r => r.Plan!.SplitK > 1)}");
    }

    [Fact]
    public void The_issue_case_conv3x3_at_8x8x1280_is_split_and_the_128_tile_alone_is_not_enough()
    {
        var d = TcDevice.Hopper(132);
        // batch 2, 8x8 latents: M = 128, N = 1280, K = 9 x 1280: 10 tiles of 128x128 for 132 multiprocessors.
        var whole = TcPlanner.Evaluate(TcPlanner.C128x128, 1, 128, 1280, 11520, 1, d);
        Assert.Equal(10, whole.Blocks);
        Assert.True(whole.WaveEfficiency < 0.1);
        var p = TcPlanner.Plan(128, 1280, 11520, 1, d);
        Assert.True(p.SplitK > 1);
        Assert.True(p.WaveEfficiency >= 0.75);
        Assert.True(p.PredictedUs < whole.PredictedUs);
        Assert.Equal(p.Blocks, KernelMath.CeilDiv(128, p.Config.BM) * KernelMath.CeilDiv(1280, p.Config.BN) * p.SplitK);
    }

    [Fact]
    public void Blocks_per_multiprocessor_follow_registers_shared_memory_and_threads()
    {
        var h100 = TcDevice.Hopper(132);
        Assert.Equal(2, TcPlanner.BlocksPerSm(TcPlanner.C128x128, h100));   // 256 threads x 128 registers: half the file
        Assert.Equal(2, TcPlanner.BlocksPerSm(TcPlanner.C128x128S4, h100)); // 2 x 65 KB of 228 KB
        Assert.Equal(3, TcPlanner.BlocksPerSm(TcPlanner.C128x64, h100));    // 128 x 136 registers
        Assert.Equal(6, TcPlanner.BlocksPerSm(TcPlanner.C64x64, h100));     // 6 x 34 KB of shared memory
        Assert.Equal(1, TcPlanner.BlocksPerSm(TcPlanner.C128x128S4, h100 with { SharedPerSm = 100 * 1024 }));
    }

    [Fact]
    public void Without_large_shared_memory_the_64_KB_configuration_is_never_chosen()
    {
        var d = TcDevice.Hopper(132, largeShared: false);
        foreach (var model in new[] { "sd15", "sdxl" })
            Assert.DoesNotContain(PlanCommand.Build(model, 64, 64, 2, d), r => r.Plan?.Config.LargeShared == true);
        Assert.Contains(PlanCommand.Build("sdxl", 128, 128, 2, TcDevice.Hopper(132)), r => r.Plan?.Config.LargeShared == true);
    }

    [Fact]
    public void Splits_are_clamped_so_none_is_empty()
    {
        var p = TcPlanner.Evaluate(TcPlanner.C64x64, 4, 65, 63, 296, 1, TcDevice.Hopper(2));
        Assert.Equal((4, 3), (p.SplitK, p.KTilesPerSplit)); // 10 k-tiles: 3 + 3 + 3 + 1
        var q = TcPlanner.Evaluate(TcPlanner.C64x64, 16, 64, 64, 64, 1, TcDevice.Hopper(2));
        Assert.Equal((2, 1), (q.SplitK, q.KTilesPerSplit));
    }

    [Fact]
    public void The_launchers_plan_through_the_same_planner()
    {
        var rt = new KernelRuntime(StableDiffusion.TestSupport.Devices.Device, KernelProfile.Test);
        var d = rt.TensorCoreDevice;
        Assert.Equal(TcPlanner.Plan(512, 1280, 11520, 1, d), rt.PlanTensorCore(512, 1280, 11520, 1));
        rt.TensorCoreOverride = (TcPlanner.C64x64, 3);
        Assert.Equal((TcPlanner.C64x64, 3), (rt.PlanTensorCore(512, 1280, 11520, 1).Config, rt.PlanTensorCore(512, 1280, 11520, 1).SplitK));
        Assert.Throws<KernelArgumentException>(() => TcPlanner.Find("96x96"));
    }
}
