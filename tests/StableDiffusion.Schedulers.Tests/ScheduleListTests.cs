using System.Text.Json;
using Xunit.Abstractions;

namespace StableDiffusion.Schedulers.Tests;

/// <summary>The Stable Diffusion constants and published timestep/sigma lists of ../shared/reference/schedules.json.</summary>
public class ScheduleListTests(ITestOutputHelper output)
{
    private static JsonElement File => Reference.Json("schedules.json");

    /// <summary>A scheduler config holding schedules.json's sd_constants.</summary>
    private static SchedulerConfig SdConfig()
    {
        var k = File.GetProperty("sd_constants");
        return new SchedulerConfig
        {
            Source = "sd_constants",
            NumTrainTimesteps = k.GetProperty("num_train_timesteps").GetInt32(),
            BetaStart = k.GetProperty("beta_start").GetDouble(),
            BetaEnd = k.GetProperty("beta_end").GetDouble(),
            BetaSchedule = k.GetProperty("beta_schedule").GetString(),
            StepsOffset = k.GetProperty("steps_offset").GetInt32(),
        };
    }

    private static double[] Published(string name, string list = "values") =>
        Reference.Doubles(File.GetProperty("published").GetProperty(name).GetProperty(list));

    /// <summary>
    /// Agreement with a list printed to <paramref name="decimals"/> decimals: half a unit of the last digit, plus the
    /// ~1e-4 relative difference schedules.json expects between diffusers' float32 betas and float64 values.
    /// </summary>
    private static void Near(double expected, double actual, int decimals, string what)
    {
        double tol = 0.5 * Math.Pow(10, -decimals) + 1e-4 * Math.Abs(expected);
        Assert.True(Math.Abs(expected - actual) <= tol, $"{what}: {actual} vs published {expected} (±{tol:g3})");
    }

    [SkippableFact]
    public void The_noise_schedule_matches_the_sd_constants()
    {
        var k = File.GetProperty("sd_constants");
        var c = SdConfig();
        var ac = ScheduleMath.AlphasCumprod(ScheduleMath.Betas(c.BetaSchedule!, c.NumTrainTimesteps!.Value, c.BetaStart!.Value, c.BetaEnd!.Value, "sd"));
        double Rel(double a, double b) => Math.Abs(a - b) / Math.Abs(b);
        Assert.True(Rel(ac[0], k.GetProperty("alphas_cumprod[0]").GetDouble()) < 1e-6, $"alphas_cumprod[0] = {ac[0]}");
        Assert.True(Rel(ac[999], k.GetProperty("alphas_cumprod[999]").GetDouble()) < 1e-4, $"alphas_cumprod[999] = {ac[999]}");
        var sigmas = ScheduleMath.Sigmas(ac);
        Assert.True(Rel(sigmas[0], k.GetProperty("sigma_min").GetDouble()) < 1e-4, $"sigma_min = {sigmas[0]}");
        Assert.True(Rel(sigmas[999], k.GetProperty("sigma_max").GetDouble()) < 1e-4, $"sigma_max = {sigmas[999]}");
    }

    [SkippableFact]
    public void Euler_20_linspace_steps_give_the_published_sigmas()
    {
        var expected = Published("euler_20_steps_linspace_sigmas");
        var s = Samplers.Create("euler", SdConfig(), spacing: TimestepSpacing.Linspace);
        s.SetTimesteps(20);
        Assert.Equal(expected.Length, s.Sigmas.Count);
        for (int i = 0; i < expected.Length; i++) Near(expected[i], s.Sigmas[i], 4, $"sigma[{i}]");
        // "timesteps = linspace(0, 999, 20) reversed (not rounded)"
        for (int i = 0; i < 20; i++) Assert.Equal(999.0 * (19 - i) / 19, s.Timesteps[i], 3);
        output.WriteLine(string.Join(", ", s.Sigmas.Select(x => x.ToString("F4"))));
    }

    [SkippableFact]
    public void Ddim_50_leading_steps_give_the_published_timesteps()
    {
        var expected = Published("ddim_50_steps_leading_timesteps");
        var s = Samplers.Create("ddim", SdConfig(), spacing: TimestepSpacing.Leading);
        s.SetTimesteps(50);
        Assert.Equal(expected, s.Timesteps);
        Assert.Empty(s.Sigmas);
    }

    [SkippableFact]
    public void The_sd15_align_your_steps_lists_agree_through_the_training_sigmas()
    {
        // AYS optimised its sigmas and rounded them to timesteps, so a published sigma need not be the training sigma
        // of its timestep: it must map back (sigma → fractional timestep) to within one timestep of it.
        var ts = Published("align_your_steps_sd15_10_steps", "timesteps");
        var expected = Published("align_your_steps_sd15_10_steps", "sigmas");
        var c = SdConfig();
        var sigmas = ScheduleMath.Sigmas(ScheduleMath.AlphasCumprod(ScheduleMath.Betas(c.BetaSchedule!, 1000, c.BetaStart!.Value, c.BetaEnd!.Value, "sd")));
        var logs = ScheduleMath.LogSigmas(sigmas);
        Assert.Equal(ts.Length + 1, expected.Length);
        for (int i = 0; i < ts.Length; i++)
        {
            double t = ScheduleMath.SigmaToT(expected[i], logs);
            output.WriteLine($"t={ts[i]}: training sigma {sigmas[(int)ts[i]]:F4}, published sigma {expected[i]} at t={t:F2}");
            Assert.True(Math.Abs(t - ts[i]) <= 1.0, $"published sigma {expected[i]} sits at t={t:F2}, not within 1 of {ts[i]}");
        }
        Assert.Equal(0.0, expected[^1]);
    }

    [SkippableFact]
    public void Sigma_to_timestep_inverts_the_sdxl_align_your_steps_timesteps()
    {
        // SDXL shares SD's noise schedule; mapping each published timestep to its sigma and back must give it again.
        var ts = Published("align_your_steps_sdxl_10_steps", "timesteps");
        var c = SdConfig();
        var sigmas = ScheduleMath.Sigmas(ScheduleMath.AlphasCumprod(ScheduleMath.Betas(c.BetaSchedule!, 1000, c.BetaStart!.Value, c.BetaEnd!.Value, "sd")));
        var logs = ScheduleMath.LogSigmas(sigmas);
        foreach (var t in ts) Assert.Equal(t, ScheduleMath.SigmaToT(sigmas[(int)t], logs), 3);
    }

    [SkippableFact]
    public void The_embedded_sd15_defaults_equal_the_real_sd15_scheduler_config()
    {
        var real = SchedulerConfig.Load(Reference.Path("configs", "sd15", "scheduler", "scheduler_config.json"));
        Assert.Equal(SchedulerConfig.StableDiffusion15 with { Source = real.Source }, real);
    }

    [SkippableTheory]
    [InlineData("sd15", "pndm")]
    [InlineData("sd21-base", "pndm")]
    [InlineData("sdxl-base", "euler")]
    public void The_reference_configs_load_and_sample_with_their_own_class(string model, string canonical)
    {
        var config = SchedulerConfig.Load(Reference.Path("configs", model, "scheduler", "scheduler_config.json"));
        Assert.Equal(canonical, Samplers.Canonical(config.ClassName!));
        var s = Samplers.Create(config.ClassName!, config);
        s.SetTimesteps(10);
        // All three are leading with steps_offset 1 (SD1/2 by PNDM's default, SDXL by its file): 901, 801, …, 1.
        var leading = Enumerable.Range(0, 10).Select(i => 901.0 - 100 * i);
        Assert.Equal(canonical == "pndm" ? [901, 801, 801, .. leading.Skip(2)] : leading, s.Timesteps);
    }
}
