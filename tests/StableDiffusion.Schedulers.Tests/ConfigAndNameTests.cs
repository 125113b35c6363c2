namespace StableDiffusion.Schedulers.Tests;

/// <summary>Sampler names, scheduler_config.json parsing, and the errors for bad names, configs and requests.</summary>
public class ConfigAndNameTests
{
    [Theory]
    [InlineData("euler", "euler")]
    [InlineData("Euler a", "euler_a")]
    [InlineData("euler_ancestral", "euler_a")]
    [InlineData("k_euler_a", "euler_a")]
    [InlineData("sample_euler_ancestral", "euler_a")]
    [InlineData("EulerAncestralDiscreteScheduler", "euler_a")]
    [InlineData("EulerDiscreteScheduler", "euler")]
    [InlineData("HeunDiscreteScheduler", "heun")]
    [InlineData("LMSDiscreteScheduler", "lms")]
    [InlineData("k_lms", "lms")]
    [InlineData("DPM++ 2M", "dpmpp_2m")]
    [InlineData("DPM++ 2M Karras", "dpmpp_2m")]
    [InlineData("DPM++ 2M SDE", "dpmpp_2m_sde")]
    [InlineData("dpmpp_2m_sde_karras", "dpmpp_2m_sde")]
    [InlineData("UniPC", "unipc")]
    [InlineData("uni_pc", "unipc")]
    [InlineData("UniPCMultistepScheduler", "unipc")]
    [InlineData("LCMScheduler", "lcm")]
    [InlineData("DDIMScheduler", "ddim")]
    [InlineData("PLMS", "pndm")]
    [InlineData("PNDMScheduler", "pndm")]
    public void Resolves_the_names_people_write(string name, string canonical)
    {
        Assert.Equal(canonical, Samplers.Canonical(name));
        Assert.Equal(canonical, Samplers.Create(name, SchedulerConfig.StableDiffusion15).Name);
    }

    [Fact]
    public void The_dpm_solver_class_follows_the_config_algorithm()
    {
        Assert.Equal("dpmpp_2m", Samplers.Create("DPMSolverMultistepScheduler", new SchedulerConfig()).Name);
        Assert.Equal("dpmpp_2m_sde", Samplers.Create("DPMSolverMultistepScheduler", new SchedulerConfig { AlgorithmType = "sde-dpmsolver++" }).Name);
        // The short names fix the algorithm whatever the config says.
        Assert.Equal("dpmpp_2m", Samplers.Create("dpmpp_2m", new SchedulerConfig { AlgorithmType = "sde-dpmsolver++" }).Name);
    }

    [Fact]
    public void A_karras_suffix_selects_the_karras_schedule()
    {
        var a = Samplers.Create("DPM++ 2M Karras", SchedulerConfig.StableDiffusion15);
        var b = Samplers.Create("dpmpp_2m", SchedulerConfig.StableDiffusion15, SigmaSchedule.Karras);
        a.SetTimesteps(10);
        b.SetTimesteps(10);
        Assert.Equal(b.Sigmas, a.Sigmas);
        Assert.Throws<UsageException>(() => Samplers.Create("dpmpp_2m_karras", SchedulerConfig.StableDiffusion15, SigmaSchedule.Exponential));
    }

    [Fact]
    public void An_unknown_name_is_a_one_line_usage_error_listing_the_valid_names()
    {
        var e = Assert.Throws<UsageException>(() => Samplers.Create("dpm_fast", SchedulerConfig.StableDiffusion15));
        Assert.Contains("unknown sampler 'dpm_fast'", e.Message);
        foreach (var n in new[] { "euler", "euler_a", "heun", "lms", "dpmpp_2m", "dpmpp_2m_sde", "unipc", "lcm", "ddim", "pndm" })
            Assert.Contains(n, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Null(Samplers.Canonical("dpm_fast"));
        Assert.Equal(2, e.ExitCode);
    }

    [Theory]
    [InlineData("ddim")]
    [InlineData("pndm")]
    [InlineData("lcm")]
    public void Timestep_samplers_refuse_sigma_schedules(string name)
    {
        var e = Assert.Throws<UsageException>(() => Samplers.Create(name, SchedulerConfig.StableDiffusion15, SigmaSchedule.Karras));
        Assert.Contains("has no sigma schedule", e.Message);
        Samplers.Create(name, SchedulerConfig.StableDiffusion15, SigmaSchedule.Default); // "default" is what they do
    }

    [Fact]
    public void Lcm_refuses_a_timestep_spacing()
    {
        Assert.Throws<UsageException>(() => Samplers.Create("lcm", new SchedulerConfig(), spacing: TimestepSpacing.Trailing));
    }

    [Theory]
    [InlineData("karras", SigmaSchedule.Karras)]
    [InlineData("Exponential", SigmaSchedule.Exponential)]
    [InlineData("default", SigmaSchedule.Default)]
    public void Parses_schedule_names(string text, SigmaSchedule expected) =>
        Assert.Equal(expected, Samplers.ParseSchedule(text));

    [Fact]
    public void Parses_spacing_names_and_refuses_others()
    {
        Assert.Equal(TimestepSpacing.Trailing, Samplers.ParseSpacing("trailing"));
        Assert.Contains("valid: leading, linspace, trailing", Assert.Throws<UsageException>(() => Samplers.ParseSpacing("even")).Message);
        Assert.Contains("valid: default, karras, exponential", Assert.Throws<UsageException>(() => Samplers.ParseSchedule("beta")).Message);
    }

    [Fact]
    public void Reads_a_config_ignoring_unknown_keys_and_nulls()
    {
        var c = SchedulerConfig.Parse("""
            {
              "_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0",
              "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "num_train_timesteps": 1000, "steps_offset": 1, "timestep_spacing": "trailing",
              "trained_betas": null, "sigma_min": null, "some_future_key": {"nested": [1, 2]},
              "use_karras_sigmas": true, "prediction_type": "v_prediction"
            }
            """, "test.json");
        Assert.Equal("EulerDiscreteScheduler", c.ClassName);
        Assert.Equal(0.00085, c.BetaStart);
        Assert.Equal("trailing", c.TimestepSpacing);
        Assert.Null(c.TrainedBetas);
        Assert.Null(c.SigmaMin);
        Assert.True(c.UseKarrasSigmas);
        Assert.Null(c.SetAlphaToOne);
    }

    [Fact]
    public void Reads_pythons_minus_infinity()
    {
        // diffusers saves DPMSolverMultistepScheduler's default lambda_min_clipped as a bare -Infinity.
        var c = SchedulerConfig.Parse("""{"lambda_min_clipped": -Infinity, "algorithm_type": "dpmsolver++", "note": "-Infinity in a string"}""");
        Assert.Equal(double.NegativeInfinity, c.LambdaMinClipped);
        Samplers.Create("DPMSolverMultistepScheduler", c).SetTimesteps(10);
    }

    [Fact]
    public void Lambda_min_clipped_cuts_the_noisiest_timesteps()
    {
        // λ(t) = log sqrt(ᾱ) - log sqrt(1 - ᾱ) falls below -2.5 at the top of SD's schedule (λ(999) ≈ -2.68).
        var s = Samplers.Create("dpmpp_2m", SchedulerConfig.StableDiffusion15 with { LambdaMinClipped = -2.5 });
        s.SetTimesteps(10);
        int last = Enumerable.Range(0, 1000).Last(t => 0.5 * Math.Log(Oracle.AlphaBar(t) / (1 - Oracle.AlphaBar(t))) >= -2.5);
        Assert.True(last < 999);
        Assert.Equal(last, s.Timesteps[0]); // linspace(0, last, 11) tops out at last
    }

    [Theory]
    [InlineData("{", "not valid JSON")]
    [InlineData("[1, 2]", "a scheduler config is a JSON object, not an array")]
    [InlineData("""{"beta_start": "small"}""", "\"beta_start\" must be a positive number, not the string \"small\"")]
    [InlineData("""{"beta_end": -0.01}""", "\"beta_end\" must be a positive number, not the number -0.01")]
    [InlineData("""{"beta_schedule": "cosine"}""", "\"beta_schedule\" must be one of linear, scaled_linear, squaredcos_cap_v2, not the string \"cosine\"")]
    [InlineData("""{"num_train_timesteps": 999.5}""", "\"num_train_timesteps\" must be an integer of at least 2")]
    [InlineData("""{"steps_offset": -1}""", "\"steps_offset\" must be an integer of at least 0")]
    [InlineData("""{"clip_sample": "yes"}""", "\"clip_sample\" must be true or false")]
    [InlineData("""{"timestep_spacing": "even"}""", "\"timestep_spacing\" must be one of leading, linspace, trailing")]
    [InlineData("""{"prediction_type": "noise"}""", "\"prediction_type\" must be one of")]
    [InlineData("""{"trained_betas": [0.1, 2]}""", "\"trained_betas\" must hold numbers between 0 and 1")]
    public void A_bad_config_value_is_a_one_line_config_error_naming_file_and_key(string json, string message)
    {
        var e = Assert.Throws<ConfigException>(() => SchedulerConfig.Parse(json, "model/scheduler/scheduler_config.json"));
        Assert.StartsWith("model/scheduler/scheduler_config.json: ", e.Message);
        Assert.Contains(message, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Equal(1, e.ExitCode);
    }

    [Theory]
    [InlineData("ddim", """{"thresholding": true}""", "thresholding")]
    [InlineData("dpmpp_2m", """{"thresholding": true}""", "thresholding")]
    [InlineData("euler", """{"use_beta_sigmas": true}""", "use_beta_sigmas")]
    [InlineData("euler", """{"use_karras_sigmas": true, "use_exponential_sigmas": true}""", "only one of")]
    [InlineData("euler", """{"interpolation_type": "log_linear"}""", "log_linear")]
    [InlineData("DPMSolverMultistepScheduler", """{"algorithm_type": "dpmsolver"}""", "dpmsolver")]
    [InlineData("dpmpp_2m", """{"variance_type": "learned_range"}""", "variance_type")]
    [InlineData("dpmpp_2m", """{"use_lu_lambdas": true}""", "use_lu_lambdas")]
    [InlineData("unipc", """{"use_flow_sigmas": true}""", "use_flow_sigmas")]
    [InlineData("pndm", """{"prediction_type": "sample"}""", "not supported by pndm")]
    [InlineData("lcm", """{"original_inference_steps": 2000}""", "original_inference_steps")]
    public void Options_a_sampler_cannot_honour_are_refused(string sampler, string json, string message)
    {
        var c = SchedulerConfig.Parse(json, "cfg.json");
        var e = Assert.Throws<ConfigException>(() => Samplers.Create(sampler, c));
        Assert.Contains(message, e.Message);
        Assert.StartsWith("cfg.json: ", e.Message);
    }

    [Fact]
    public void Options_of_other_diffusers_classes_are_ignored_as_diffusers_does()
    {
        // Euler ancestral has no use_karras_sigmas in diffusers, DDIM no use_beta_sigmas.
        var c = SchedulerConfig.StableDiffusion15 with { UseKarrasSigmas = true, UseBetaSigmas = true };
        var a = Samplers.Create("euler_a", c);
        var plain = Samplers.Create("euler_a", SchedulerConfig.StableDiffusion15);
        a.SetTimesteps(10);
        plain.SetTimesteps(10);
        Assert.Equal(plain.Sigmas, a.Sigmas);
        Samplers.Create("ddim", c).SetTimesteps(10);
    }

    [Fact]
    public void Missing_keys_take_the_default_of_the_samplers_own_diffusers_class()
    {
        // SD1.5's file has no timestep_spacing: DDIM (leading) starts at 901, Euler (linspace) at 999.
        var ddim = Samplers.Create("ddim", SchedulerConfig.StableDiffusion15);
        var euler = Samplers.Create("euler", SchedulerConfig.StableDiffusion15);
        ddim.SetTimesteps(10);
        euler.SetTimesteps(10);
        Assert.Equal(901, ddim.Timesteps[0]);
        Assert.Equal(999, euler.Timesteps[0]);
        // An empty config is each class's own: Heun's betas default to 0.00085..0.012, Euler's to 0.0001..0.02.
        var heun = Samplers.Create("heun", new SchedulerConfig());
        var eul = Samplers.Create("euler", new SchedulerConfig());
        heun.SetTimesteps(2);
        eul.SetTimesteps(2);
        Assert.True(heun.Sigmas[0] < eul.Sigmas[0]);
    }

    [Fact]
    public void Loading_a_missing_file_names_it()
    {
        var e = Assert.Throws<ConfigException>(() => SchedulerConfig.Load("/nonexistent/scheduler_config.json"));
        Assert.Equal("/nonexistent/scheduler_config.json: no such scheduler config file", e.Message);
    }

    [Theory]
    [InlineData("euler", 0)]
    [InlineData("ddim", 1001)]
    [InlineData("lcm", 51)]
    [InlineData("pndm", 3)]
    public void Impossible_step_counts_are_usage_errors(string name, int steps)
    {
        var c = name == "pndm" ? SchedulerConfig.StableDiffusion15 with { SkipPrkSteps = false } : SchedulerConfig.StableDiffusion15;
        var s = Samplers.Create(name, c);
        var e = Assert.Throws<UsageException>(() => s.SetTimesteps(steps));
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void Stepping_needs_a_schedule_and_matching_lengths()
    {
        var s = Samplers.Create("euler", SchedulerConfig.StableDiffusion15);
        Assert.Throws<InvalidOperationException>(() => s.Step(new float[4], 0, new float[4]));
        s.SetTimesteps(4);
        Assert.Throws<ArgumentException>(() => s.Step(new float[4], 0, new float[5]));
        Assert.Throws<ArgumentOutOfRangeException>(() => s.Step(new float[4], 4, new float[4]));
    }
}
