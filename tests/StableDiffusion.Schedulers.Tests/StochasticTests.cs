namespace StableDiffusion.Schedulers.Tests;

/// <summary>
/// Euler ancestral, DPM++ 2M SDE and multi-step LCM draw fresh noise, so diffusers' published numbers (PyTorch's
/// generator) cannot be reproduced here: these tests check their formulas with the <see cref="Oracle"/> model, a
/// given noise, and the identities they must satisfy.
/// </summary>
public class StochasticTests
{
    private const int N = 64;

    private sealed class NoiseSource(int n, bool zero)
    {
        public int Calls { get; private set; }
        public List<float[]> Drawn { get; } = [];

        public float[] Next()
        {
            Calls++;
            var z = zero ? new float[n] : Oracle.Gaussian(n, 100 + (uint)Calls);
            Drawn.Add(z);
            return z;
        }
    }

    [Theory]
    [InlineData(14.6, 10.7)]
    [InlineData(1.0, 0.5)]
    [InlineData(0.2, 0.03)]
    [InlineData(0.03, 0.0)]
    public void Euler_ancestral_splits_the_step_so_that_the_variances_add_up(double from, double to)
    {
        var (up, down) = EulerAncestralSampler.Split(from, to);
        Assert.Equal(to * to, down * down + up * up, 12);
        Assert.Equal(to * to / from, down, 12); // σ_down = σ_next² / σ
        Assert.True(up >= 0 && down >= 0 && down <= to);
        if (to == 0) Assert.Equal((0.0, 0.0), (up, down));
    }

    [Theory]
    [InlineData(false, "default")]
    [InlineData(true, "default")]
    [InlineData(false, "karras")]
    public void Euler_ancestral_steps_to_sigma_down_then_adds_sigma_up_noise(bool zeroNoise, string schedule)
    {
        var s = Samplers.Create("euler_a", SchedulerConfig.StableDiffusion15, Samplers.ParseSchedule(schedule));
        s.SetTimesteps(8);
        var x0 = Oracle.Gaussian(N, 1);
        var eps = Oracle.Gaussian(N, 2);
        var x = x0.Select((v, k) => v + (float)s.Sigmas[0] * eps[k]).ToArray();
        var noise = new NoiseSource(N, zeroNoise);
        for (int i = 0; i < s.Timesteps.Count; i++)
        {
            double sigma = s.Sigmas[i], next = s.Sigmas[i + 1];
            var e = x.Select((v, k) => (v - (double)x0[k]) / sigma).ToArray();
            var (up, down) = EulerAncestralSampler.Split(sigma, next);
            x = s.Step(Oracle.Model(s, i, s.ScaleModelInput(x, i), x0, "epsilon"), i, x, noise.Next);
            var z = noise.Drawn[^1];
            var expected = x0.Select((v, k) => v + down * e[k] + up * z[k]).ToArray();
            Assert.True(Oracle.MaxAbsDiff(x, expected) < 2e-4 * Math.Max(1, sigma), $"step {i}");
        }
        // diffusers draws noise at every step, the last (σ_up = 0) included; the result is x₀.
        Assert.Equal(s.Timesteps.Count, noise.Calls);
        Assert.True(Oracle.MaxAbsDiff(x, x0.Select(v => (double)v).ToArray()) < 1e-4);
    }

    [Fact]
    public void Euler_ancestral_without_noise_ends_like_euler()
    {
        var a = Samplers.Create("euler_a", SchedulerConfig.StableDiffusion15);
        var e = Samplers.Create("euler", SchedulerConfig.StableDiffusion15);
        a.SetTimesteps(5);
        e.SetTimesteps(5);
        Assert.Equal(e.Sigmas, a.Sigmas);
        var x = Oracle.Gaussian(N, 3);
        var m = Oracle.Gaussian(N, 4);
        // At the last step σ_next = 0, so σ_up = σ_down = 0: the ancestral step is the Euler step.
        Assert.Equal(e.Step(m, 4, x), a.Step(m, 4, x, () => new float[N]));
        // Before it, zero noise still leaves the step short of σ_next (σ_down < σ_next): they differ.
        Assert.NotEqual(e.Step(m, 0, x), a.Step(m, 0, x, () => new float[N]));
    }

    [Theory]
    [InlineData(false, "epsilon", "default")]
    [InlineData(true, "epsilon", "default")]
    [InlineData(false, "v_prediction", "karras")]
    public void Dpmpp_2m_sde_shrinks_the_noise_by_exp_minus_h_and_adds_the_rest_fresh(bool zeroNoise, string prediction, string schedule)
    {
        var s = Samplers.Create("dpmpp_2m_sde", SchedulerConfig.StableDiffusion15 with { PredictionType = prediction }, Samplers.ParseSchedule(schedule));
        s.SetTimesteps(10);
        var x0 = Oracle.Gaussian(N, 5);
        var eps = Oracle.Gaussian(N, 6);
        var (a0, s0) = Oracle.Level(s, 0);
        var x = x0.Select((v, k) => (float)(a0 * v + s0 * eps[k])).ToArray();
        var noise = new NoiseSource(N, zeroNoise);
        for (int i = 0; i < s.Timesteps.Count; i++)
        {
            var (a, sg) = Oracle.Level(s, i);
            double sNext = s.Sigmas[i + 1], aN = 1 / Math.Sqrt(sNext * sNext + 1), sgN = sNext * aN;
            // x_i = α x₀ + σ ε_i; the SDE step keeps the mean on α_next x₀ and splits σ_next between
            // e^{-h} ε_i and sqrt(1 - e^{-2h}) of fresh noise (so the variance is σ_next² again).
            var e = x.Select((v, k) => (v - a * x0[k]) / sg).ToArray();
            double decay = sNext == 0 ? 0 : Math.Exp(-(Math.Log(aN / sgN) - Math.Log(a / sg)));
            x = s.Step(Oracle.Model(s, i, x, x0, prediction), i, x, noise.Next);
            var z = noise.Drawn[^1];
            var expected = x0.Select((v, k) => aN * v + sgN * (decay * e[k] + Math.Sqrt(1 - decay * decay) * z[k])).ToArray();
            Assert.True(Oracle.MaxAbsDiff(x, expected) < 2e-4, $"step {i}: {Oracle.MaxAbsDiff(x, expected):g3}");
        }
        Assert.Equal(s.Timesteps.Count, noise.Calls);
        Assert.True(Oracle.MaxAbsDiff(x, x0.Select(v => (double)v).ToArray()) < 1e-4);
    }

    [Fact]
    public void Dpmpp_2m_the_ode_keeps_the_noise_where_the_sde_without_noise_shrinks_it()
    {
        var ode = Samplers.Create("dpmpp_2m", SchedulerConfig.StableDiffusion15);
        var sde = Samplers.Create("dpmpp_2m_sde", SchedulerConfig.StableDiffusion15);
        ode.SetTimesteps(6);
        sde.SetTimesteps(6);
        Assert.Equal(ode.Sigmas, sde.Sigmas);
        var x0 = Oracle.Gaussian(N, 7);
        var eps = Oracle.Gaussian(N, 8);
        var (a, sg) = Oracle.Level(ode, 0);
        var x = x0.Select((v, k) => (float)(a * v + sg * eps[k])).ToArray();
        var (aN, sgN) = Oracle.Level(ode, 1);
        double decay = Math.Exp(-(Math.Log(aN / sgN) - Math.Log(a / sg)));
        var o = ode.Step(Oracle.Model(ode, 0, x, x0, "epsilon"), 0, x);
        var z = sde.Step(Oracle.Model(sde, 0, x, x0, "epsilon"), 0, x, () => new float[N]);
        Assert.True(Oracle.MaxAbsDiff(o, x0.Select((v, k) => aN * v + sgN * eps[k]).ToArray()) < 1e-4);
        Assert.True(Oracle.MaxAbsDiff(z, x0.Select((v, k) => aN * v + sgN * decay * eps[k]).ToArray()) < 1e-4);
    }

    [Fact]
    public void Lcm_takes_its_timesteps_from_the_distillation_schedule()
    {
        var s = Samplers.Create("lcm", new SchedulerConfig());
        s.SetTimesteps(4);
        // original_inference_steps 50 → k = 20: 999, 979, …, 19; four evenly spaced of those.
        Assert.Equal([999, 759, 499, 259], s.Timesteps);
        s.SetTimesteps(1);
        Assert.Equal([999], s.Timesteps);
        Assert.Empty(s.Sigmas);
    }

    [Theory]
    [InlineData(false, "epsilon")]
    [InlineData(true, "epsilon")]
    [InlineData(false, "v_prediction")]
    public void Lcm_denoises_with_the_boundary_condition_and_renoises_to_the_next_timestep(bool zeroNoise, string prediction)
    {
        var s = Samplers.Create("lcm", new SchedulerConfig { PredictionType = prediction });
        s.SetTimesteps(4);
        var x0 = Oracle.Gaussian(N, 9);
        var eps = Oracle.Gaussian(N, 10);
        var x = Oracle.Expected(s, 0, x0, eps).Select(v => (float)v).ToArray();
        var noise = new NoiseSource(N, zeroNoise);
        for (int i = 0; i < 4; i++)
        {
            // c_skip = σ_d² / ((10t)² + σ_d²), c_out = 10t / sqrt((10t)² + σ_d²), σ_d = 0.5 (Luo et al. 2023).
            double st = 10 * s.Timesteps[i];
            double cSkip = 0.25 / (st * st + 0.25), cOut = st / Math.Sqrt(st * st + 0.25);
            var denoised = x0.Select((v, k) => cOut * v + cSkip * x[k]).ToArray();
            x = s.Step(Oracle.Model(s, i, x, x0, prediction), i, x, noise.Next);
            double[] expected;
            if (i == 3) expected = denoised;
            else
            {
                double ab = Oracle.AlphaBar((int)s.Timesteps[i + 1]);
                var z = noise.Drawn[^1];
                expected = denoised.Select((v, k) => Math.Sqrt(ab) * v + Math.Sqrt(1 - ab) * z[k]).ToArray();
            }
            Assert.True(Oracle.MaxAbsDiff(x, expected) < 1e-4, $"step {i}: {Oracle.MaxAbsDiff(x, expected):g3}");
        }
        Assert.Equal(3, noise.Calls); // no noise after the last step
    }

    [Theory]
    [InlineData("euler_a")]
    [InlineData("dpmpp_2m_sde")]
    [InlineData("lcm")]
    public void Stochastic_samplers_need_a_noise_source(string name)
    {
        var s = Samplers.Create(name, SchedulerConfig.StableDiffusion15);
        s.SetTimesteps(4);
        var x = new float[N];
        Assert.Throws<ArgumentNullException>(() => s.Step(x, 0, x));
        Assert.Throws<ArgumentException>(() => s.Step(x, 0, x, () => new float[N - 1]));
    }

    [Theory]
    [InlineData("euler")]
    [InlineData("heun")]
    [InlineData("lms")]
    [InlineData("dpmpp_2m")]
    [InlineData("unipc")]
    [InlineData("ddim")]
    [InlineData("pndm")]
    public void Deterministic_samplers_never_draw_noise(string name)
    {
        var s = Samplers.Create(name, SchedulerConfig.StableDiffusion15);
        s.SetTimesteps(6);
        var x = Oracle.Gaussian(N, 11);
        for (int i = 0; i < s.Timesteps.Count; i++)
            x = s.Step(Harness.Model(s.ScaleModelInput(x, i), s.Timesteps[i]), i, x, () => throw new InvalidOperationException("drew noise"));
    }
}
