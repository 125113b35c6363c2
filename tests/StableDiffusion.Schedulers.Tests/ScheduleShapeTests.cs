namespace StableDiffusion.Schedulers.Tests;

/// <summary>Timestep spacings and sigma schedules against values derived by hand from diffusers' definitions.</summary>
public class ScheduleShapeTests
{
    private static readonly SchedulerConfig Sd = SchedulerConfig.StableDiffusion15;

    /// <summary>The float64 training sigma of timestep t, independent of the code under test.</summary>
    private static double Sigma(int t) => Math.Sqrt((1 - Oracle.AlphaBar(t)) / Oracle.AlphaBar(t));

    private static IScheduler Make(string name, int steps, SigmaSchedule? schedule = null, TimestepSpacing? spacing = null, SchedulerConfig? c = null)
    {
        var s = Samplers.Create(name, c ?? Sd, schedule, spacing);
        s.SetTimesteps(steps);
        return s;
    }

    [Fact]
    public void Ddim_spacings()
    {
        // linspace(0, 999, 7) = 0, 166.5, 333, 499.5, …: NumPy rounds halves to even.
        Assert.Equal([999, 832, 666, 500, 333, 166, 0], Make("ddim", 7, spacing: TimestepSpacing.Linspace).Timesteps);
        // 1000 // 7 = 142: 0, 142, …, 852, plus steps_offset 1.
        Assert.Equal([853, 711, 569, 427, 285, 143, 1], Make("ddim", 7, spacing: TimestepSpacing.Leading).Timesteps);
        // round(arange(1000, 0, -1000/7)) - 1: seven values (not eight), 1000, 857.1, 714.3, … less one.
        Assert.Equal([999, 856, 713, 570, 428, 285, 142], Make("ddim", 7, spacing: TimestepSpacing.Trailing).Timesteps);
        Assert.Equal([999, 899, 799, 699, 599, 499, 399, 299, 199, 99], Make("ddim", 10, spacing: TimestepSpacing.Trailing).Timesteps);
    }

    [Fact]
    public void Euler_linspace_timesteps_are_not_rounded()
    {
        Assert.Equal([999, 832.5, 666, 499.5, 333, 166.5, 0], Make("euler", 7).Timesteps);
        Assert.Equal([853, 711, 569, 427, 285, 143, 1], Make("euler", 7, spacing: TimestepSpacing.Leading).Timesteps);
    }

    [Fact]
    public void Multistep_solvers_space_steps_plus_one_points_and_drop_the_last()
    {
        // linspace(0, 999, 11) rounded (499.5 → 500), reversed, without the final 0.
        Assert.Equal([999, 899, 799, 699, 599, 500, 400, 300, 200, 100], Make("dpmpp_2m", 10).Timesteps);
        Assert.Equal([999, 899, 799, 699, 599, 500, 400, 300, 200, 100], Make("unipc", 10).Timesteps);
        // leading: 1000 // 11 = 90; 900, 810, …, 90, plus steps_offset 1.
        Assert.Equal([901, 811, 721, 631, 541, 451, 361, 271, 181, 91], Make("dpmpp_2m", 10, spacing: TimestepSpacing.Leading).Timesteps);
        Assert.Equal([999, 899, 799, 699, 599, 499, 399, 299, 199, 99], Make("dpmpp_2m", 10, spacing: TimestepSpacing.Trailing).Timesteps);
    }

    [Fact]
    public void Pndm_plms_repeats_its_first_step_and_prk_adds_half_steps()
    {
        // SD1.5's own scheduler: leading + offset 1 → 1, 201, 401, 601, 801; the PLMS start is evaluated twice.
        Assert.Equal([801, 601, 601, 401, 201, 1], Make("pndm", 5).Timesteps);
        var prk = Make("pndm", 10, c: Sd with { SkipPrkSteps = false, StepsOffset = 0 });
        Assert.Equal([900, 850, 850, 800, 800, 750, 750, 700, 700, 650, 650, 600, 600, 500, 400, 300, 200, 100, 0], prk.Timesteps);
    }

    [Fact]
    public void Heun_evaluates_every_step_but_the_last_twice()
    {
        var s = Make("heun", 3);
        Assert.Equal([999, 499.5, 499.5, 0, 0], s.Timesteps);
        Assert.Equal(6, s.Sigmas.Count);
        Assert.Equal(s.Sigmas[1], s.Sigmas[2]);
        Assert.Equal(s.Sigmas[3], s.Sigmas[4]);
        Assert.Equal(0.0, s.Sigmas[5]);
        Assert.Equal(2, s.Order);
        Assert.Equal(Sigma(0), s.Sigmas[3], 5);
    }

    [Theory]
    [InlineData("euler")]
    [InlineData("heun")]
    [InlineData("lms")]
    [InlineData("euler_a")]
    [InlineData("dpmpp_2m")]
    [InlineData("unipc")]
    public void Karras_sigmas_run_from_sigma_max_to_sigma_min_evenly_in_sigma_to_the_one_seventh(string name)
    {
        var s = Make(name, 10, SigmaSchedule.Karras);
        var sig = Distinct(s);
        Assert.Equal(10, sig.Length);
        Assert.Equal(1, Math.Abs(sig[0] / Sigma(999)), 4);
        Assert.Equal(1, Math.Abs(sig[^1] / Sigma(0)), 4);
        for (int i = 1; i < sig.Length; i++) Assert.True(sig[i] < sig[i - 1], $"not decreasing at {i}");
        // ρ = 7: σ^(1/7) is linear in the step index.
        var r = sig.Select(x => Math.Pow(x, 1 / 7.0)).ToArray();
        for (int i = 1; i < r.Length - 1; i++) Assert.Equal(0, r[i + 1] - 2 * r[i] + r[i - 1], 5);
        Assert.Equal(0.0, s.Sigmas[^1]);
        CheckTimestepsMatchSigmas(s, sig, rounded: name is "dpmpp_2m" or "unipc");
    }

    [Theory]
    [InlineData("euler")]
    [InlineData("lms")]
    [InlineData("dpmpp_2m")]
    [InlineData("unipc")]
    public void Exponential_sigmas_are_evenly_spaced_in_log_sigma(string name)
    {
        var s = Make(name, 10, SigmaSchedule.Exponential);
        var sig = Distinct(s);
        Assert.Equal(1, sig[0] / Sigma(999), 4);
        Assert.Equal(1, sig[^1] / Sigma(0), 4);
        var l = sig.Select(x => Math.Log(x)).ToArray();
        for (int i = 1; i < l.Length - 1; i++) Assert.Equal(0, l[i + 1] - 2 * l[i] + l[i - 1], 5);
        Assert.Equal(0.0, s.Sigmas[^1]);
    }

    [Fact]
    public void Karras_timesteps_are_rounded_except_dpm_solver_on_the_cosine_schedule()
    {
        // The fractional timestep t* of each Karras sigma, from an independent float64 cosine table (log-linear between
        // neighbours, as diffusers' _sigma_to_t). UniPC rounds t*; DPM-Solver skips the rounding for squaredcos_cap_v2,
        // so its int64 cast truncates.
        static double F(double t) => Math.Pow(Math.Cos((t / 1000 + 0.008) / 1.008 * Math.PI / 2), 2);
        var logs = new double[1000];
        double ab = 1;
        for (int t = 0; t < 1000; t++)
        {
            ab *= 1 - Math.Min(1 - F(t + 1) / F(t), 0.999); // betas_for_alpha_bar caps β at 0.999
            logs[t] = 0.5 * Math.Log((1 - ab) / ab);
        }
        double TStar(double sigma)
        {
            double l = Math.Log(sigma);
            int lo = Math.Clamp(logs.Count(v => v <= l) - 1, 0, 998);
            return Math.Clamp(lo + (l - logs[lo]) / (logs[lo + 1] - logs[lo]), lo, lo + 1);
        }
        var c = new SchedulerConfig { BetaSchedule = "squaredcos_cap_v2" };
        var u = Make("unipc", 8, SigmaSchedule.Karras, c: c);
        var d = Make("dpmpp_2m", 8, SigmaSchedule.Karras, c: c);
        Assert.Equal(u.Sigmas, d.Sigmas);
        Assert.Equal((999, 0), (u.Timesteps[0], u.Timesteps[7])); // the ends are the table's ends …
        Assert.Equal(0, d.Timesteps[7]); // … but DPM truncates the top one: 998.99… (float32 log σ_max) gives 998
        for (int i = 1; i < 7; i++)
        {
            double t = TStar(u.Sigmas[i]);
            if (Math.Abs(t - Math.Round(t) - 0.5) < 1e-3 || Math.Abs(t - Math.Floor(t)) < 1e-3) continue; // too close to call
            Assert.Equal(Math.Round(t), u.Timesteps[i]);
            Assert.Equal(Math.Floor(t), d.Timesteps[i]);
        }
    }

    [Fact]
    public void The_config_can_ask_for_karras_and_the_override_can_take_it_back()
    {
        var fromConfig = Make("euler", 10, c: Sd with { UseKarrasSigmas = true });
        var overridden = Make("euler", 10, SigmaSchedule.Default, c: Sd with { UseKarrasSigmas = true });
        Assert.Equal(Make("euler", 10, SigmaSchedule.Karras).Sigmas, fromConfig.Sigmas);
        Assert.Equal(Make("euler", 10).Sigmas, overridden.Sigmas);
        // Euler's config can also pin the Karras range.
        var pinned = Make("euler", 10, c: Sd with { UseKarrasSigmas = true, SigmaMin = 0.1, SigmaMax = 10 });
        Assert.Equal(10, pinned.Sigmas[0], 4);
        Assert.Equal(0.1, pinned.Sigmas[9], 6);
    }

    [Fact]
    public void Initial_noise_is_sigma_max_or_sqrt_of_sigma_max_squared_plus_one_for_leading_spacing()
    {
        Assert.Equal(Sigma(999), Make("euler", 10).InitNoiseSigma, 3);
        var leading = Make("euler", 10, spacing: TimestepSpacing.Leading);
        Assert.Equal(Math.Sqrt(Sigma(901) * Sigma(901) + 1), leading.InitNoiseSigma, 3);
        foreach (var name in new[] { "ddim", "pndm", "dpmpp_2m", "unipc", "lcm" }) Assert.Equal(1.0, Make(name, 10).InitNoiseSigma);
    }

    [Fact]
    public void Sigma_space_samplers_scale_the_model_input_by_one_over_sqrt_sigma_squared_plus_one()
    {
        var s = Make("euler", 10);
        var x = Oracle.Gaussian(16, 3);
        var scaled = s.ScaleModelInput(x, 0);
        double f = 1 / Math.Sqrt(s.Sigmas[0] * s.Sigmas[0] + 1);
        for (int i = 0; i < x.Length; i++) Assert.Equal(x[i] * f, scaled[i], 5);
        Assert.Same(x, Make("ddim", 10).ScaleModelInput(x, 0));
    }

    [Fact]
    public void Final_sigma_min_ends_the_dpm_schedule_on_the_smallest_training_sigma()
    {
        var s = Make("dpmpp_2m", 10, c: Sd with { FinalSigmasType = "sigma_min" });
        Assert.Equal(Sigma(0), s.Sigmas[^1], 5);
        Assert.Equal(0.0, Make("dpmpp_2m", 10).Sigmas[^1]);
    }

    [Fact]
    public void Squaredcos_and_zero_snr_schedules()
    {
        // squaredcos_cap_v2: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + 0.008)/1.008 · π/2) (Nichol & Dhariwal 2021).
        var s = Make("ddim", 10, c: new SchedulerConfig { BetaSchedule = "squaredcos_cap_v2", ClipSample = false, SetAlphaToOne = false });
        var x = new float[] { 1f };
        static double F(double t) => Math.Pow(Math.Cos((t / 1000 + 0.008) / 1.008 * Math.PI / 2), 2);
        Assert.Equal(900.0, s.Timesteps[0]); // leading, no steps_offset
        var noisy = s.AddNoise(x, [0f], 0);
        Assert.Equal(Math.Sqrt(F(900 + 1) / F(0)), noisy[0], 4);
        // rescale_betas_zero_snr: the last timestep is pure noise (Euler keeps ᾱ at 2⁻²⁴ so σ stays finite).
        var z = Make("euler", 10, spacing: TimestepSpacing.Trailing, c: Sd with { RescaleBetasZeroSnr = true });
        Assert.Equal(Math.Sqrt((1 - Math.Pow(2, -24)) / Math.Pow(2, -24)), z.Sigmas[0], 0);
    }

    private static double[] Distinct(IScheduler s) =>
        s.Name == "heun" ? [s.Sigmas[0], .. s.Sigmas.Skip(1).Where((_, i) => i % 2 == 0).SkipLast(1)] : s.Sigmas.SkipLast(1).ToArray();

    /// <summary>The model's timestep for each sigma is that sigma's place in the training table (rounded for DPM/UniPC).</summary>
    private static void CheckTimestepsMatchSigmas(IScheduler s, double[] sig, bool rounded)
    {
        var ts = s.Name == "heun" ? [s.Timesteps[0], .. s.Timesteps.Skip(1).Where((_, i) => i % 2 == 0)] : s.Timesteps.ToArray();
        for (int i = 0; i < sig.Length; i++)
        {
            double t = ts[i];
            int lo = Math.Min((int)Math.Floor(t), 998);
            double interp = Math.Exp(Math.Log(Sigma(lo)) + (t - lo) * (Math.Log(Sigma(lo + 1)) - Math.Log(Sigma(lo))));
            if (rounded)
            {
                Assert.Equal(Math.Round(t), t);
                Assert.True(Sigma(Math.Max((int)t - 1, 0)) <= sig[i] * 1.0001 && sig[i] <= Sigma(Math.Min((int)t + 1, 999)) * 1.0001, $"t={t} for σ={sig[i]}");
            }
            else Assert.Equal(1, interp / sig[i], 3);
        }
    }
}
