namespace StableDiffusion.Schedulers.Tests;

/// <summary>diffusers' img2img get_timesteps: init_timestep = min(int(steps·strength), steps), start = (steps - init)·order.</summary>
public class ImageToImageTests
{
    private static IScheduler Make(string name, int steps)
    {
        var s = Samplers.Create(name, SchedulerConfig.StableDiffusion15);
        s.SetTimesteps(steps);
        return s;
    }

    [Theory]
    [InlineData("euler", 50, 0.75, 13, 37, 37)]
    [InlineData("ddim", 50, 1.0, 0, 50, 50)]
    [InlineData("dpmpp_2m", 10, 0.3, 7, 3, 3)]   // 10 · 0.3 = 3.0000000000000004 → 3
    [InlineData("euler", 100, 0.29, 72, 28, 28)] // 100 · 0.29 = 28.999999999999996 → int() gives 28
    [InlineData("heun", 10, 0.5, 10, 5, 9)]      // order 2: start 5·2 into [t0, t1, t1, …] (19 iterations)
    [InlineData("pndm", 10, 0.5, 5, 5, 6)]       // PLMS's repeated first timestep stays in the schedule (11 iterations)
    public void Plans_the_partial_schedule(string name, int steps, double strength, int start, int denoise, int iterations)
    {
        var s = Make(name, steps);
        Assert.Equal(new ImageToImagePlan(start, denoise, iterations), ImageToImage.Plan(s, steps, strength));
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(0.05)] // 10 · 0.05 = 0.5 → no step
    [InlineData(-0.1)]
    [InlineData(1.5)]
    [InlineData(double.NaN)]
    public void Refuses_a_strength_that_runs_nothing_or_is_out_of_range(double strength)
    {
        var e = Assert.Throws<UsageException>(() => ImageToImage.Plan(Make("euler", 10), 10, strength));
        Assert.Contains("--strength", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void Add_noise_brings_the_image_to_the_level_of_the_start_iteration()
    {
        var x0 = Oracle.Gaussian(32, 1);
        var eps = Oracle.Gaussian(32, 2);
        foreach (var name in new[] { "euler", "euler_a", "heun", "lms", "dpmpp_2m", "unipc", "ddim", "pndm", "lcm" })
        {
            var s = Make(name, 20);
            var plan = ImageToImage.Plan(s, 20, 0.6);
            var noisy = s.AddNoise(x0, eps, plan.StartIndex);
            var expected = Oracle.Expected(s, plan.StartIndex, x0, eps);
            Assert.True(Oracle.MaxAbsDiff(noisy, expected) < 1e-4 * Math.Max(1, s.Sigmas.Count > 0 ? s.Sigmas.Max() : 1), name);
        }
    }

    [Fact]
    public void Ddim_from_iteration_8_of_10_matches_the_published_with_noise_loop()
    {
        // diffusers tests/schedulers/test_scheduler_ddim.py, test_full_loop_with_noise: the base DDIM config, 10 steps,
        // the deterministic dummy noise added at timesteps[8], then the remaining loop. Published: sum 354.5418, mean 0.4616.
        var s = Samplers.Create("ddim", new SchedulerConfig { ClipSample = true });
        s.SetTimesteps(10);
        var x = s.AddNoise(Harness.Sample(), Harness.Noise(), 8);
        x = Harness.TimestepLoop(s, x, start: 8);
        var (sum, mean) = Harness.AbsSumMean(x);
        Assert.True(Math.Abs(sum - 354.5418) < 1e-2, $"sum {sum}");
        Assert.True(Math.Abs(mean - 0.4616) < 1e-3, $"mean {mean}");
    }
}
