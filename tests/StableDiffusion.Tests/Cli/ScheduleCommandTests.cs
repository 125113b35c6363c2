using System.Text.Json;

namespace StableDiffusion.Tests.Cli;

public class ScheduleCommandTests
{
    private static (int Code, string Out, string Err) Sd(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = StableDiffusion.Cli.Cli.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    /// <summary>A path in ../shared/reference; skips the test where the reference is absent.</summary>
    private static string Reference(params string[] parts)
    {
        string? root = null;
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null && root is null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "StableDiffusion.Kernels.sln")))
                root = Path.GetFullPath(Path.Combine(d.FullName, "..", "shared", "reference"));
        Skip.If(root is null || !Directory.Exists(root), "../shared/reference is not present beside the repository");
        return Path.Combine([root!, .. parts]);
    }

    private static string Temp()
    {
        var dir = Path.Combine(Path.GetTempPath(), "sd-schedule-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>SD1.5's noise schedule, written as a diffusers model folder would hold it.</summary>
    private const string SdSchedulerConfig = """
        {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
         "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "clip_sample": false}
        """;

    private static (double[] Timesteps, double[] Sigmas) Parse(string stdout)
    {
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal(["timesteps", "sigmas"], doc.RootElement.EnumerateObject().Select(p => p.Name));
        return (doc.RootElement.GetProperty("timesteps").EnumerateArray().Select(e => e.GetDouble()).ToArray(),
                doc.RootElement.GetProperty("sigmas").EnumerateArray().Select(e => e.GetDouble()).ToArray());
    }

    [Fact]
    public void Help_lists_the_schedule_command()
    {
        var (_, stdout, _) = Sd("--help");
        Assert.Contains("schedule (--model M | --config F) --sampler S --steps N", stdout);
    }

    [SkippableFact]
    public void Euler_on_the_sd15_config_prints_the_published_20_step_sigmas()
    {
        var (code, stdout, stderr) = Sd("schedule", "--config", Reference("configs", "sd15", "scheduler", "scheduler_config.json"), "--sampler", "euler", "--steps", "20");
        Assert.Equal((0, ""), (code, stderr));
        Assert.StartsWith("{\"timesteps\": [999, 946.4211, ", stdout);
        var (ts, sigmas) = Parse(stdout);
        using var doc = JsonDocument.Parse(File.ReadAllText(Reference("schedules.json")));
        var published = doc.RootElement.GetProperty("published").GetProperty("euler_20_steps_linspace_sigmas").GetProperty("values")
            .EnumerateArray().Select(e => e.GetDouble()).ToArray();
        Assert.Equal(20, ts.Length);
        Assert.Equal(published.Length, sigmas.Length);
        for (int i = 0; i < published.Length; i++)
            Assert.True(Math.Abs(sigmas[i] - published[i]) <= 5e-5 + 1e-4 * published[i], $"sigma[{i}] {sigmas[i]} vs {published[i]}");
    }

    [Fact]
    public void A_model_folder_gives_its_scheduler_config_and_timestep_samplers_print_no_sigmas()
    {
        var dir = Temp();
        try
        {
            Directory.CreateDirectory(Path.Combine(dir, "scheduler"));
            File.WriteAllText(Path.Combine(dir, "scheduler", "scheduler_config.json"), SdSchedulerConfig);
            var (code, stdout, stderr) = Sd("schedule", "--model", dir, "--sampler", "ddim", "--steps", "50");
            Assert.Equal((0, ""), (code, stderr));
            var (ts, sigmas) = Parse(stdout);
            // leading spacing with steps_offset 1: 981, 961, …, 1
            Assert.Equal(Enumerable.Range(0, 50).Select(i => 981.0 - 20 * i), ts);
            Assert.Empty(sigmas);
            Assert.EndsWith("\"sigmas\": []}" + Environment.NewLine, stdout);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void A_single_file_checkpoint_uses_the_sd_defaults_and_says_so()
    {
        var dir = Temp();
        try
        {
            var file = Path.Combine(dir, "model.safetensors");
            Assert.Equal(0, Sd("random-model", "--config", "sd15-tiny", "--format", "single-file", "--out", file).Code);
            var (code, stdout, stderr) = Sd("schedule", "--model", file, "--sampler", "pndm", "--steps", "5");
            Assert.Equal(0, code);
            Assert.Contains("using built-in sd1 defaults (scheduler, ε-prediction)", stderr); // what sd generate uses
            // SD1.5's PNDM: PLMS with its first timestep taken twice.
            Assert.Equal([801, 601, 601, 401, 201, 1], Parse(stdout).Timesteps);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Schedule_and_spacing_options_reach_the_sampler()
    {
        var dir = Temp();
        try
        {
            var cfg = Path.Combine(dir, "scheduler_config.json");
            File.WriteAllText(cfg, SdSchedulerConfig);
            var (code, stdout, _) = Sd("schedule", "--config", cfg, "--sampler", "heun", "--steps", "4", "--schedule", "karras");
            Assert.Equal(0, code);
            var (ts, sigmas) = Parse(stdout);
            Assert.Equal(7, ts.Length);  // Heun: t0, then every later timestep twice
            Assert.Equal(8, sigmas.Length);
            Assert.Equal(0.0, sigmas[^1]);
            // Karras: σ^(1/7) evenly spaced between σ_max and σ_min.
            var r = new[] { sigmas[0], sigmas[1], sigmas[3], sigmas[5] }.Select(s => Math.Pow(s, 1 / 7.0)).ToArray();
            Assert.Equal(r[1] - r[0], r[2] - r[1], 4);
            Assert.Equal(r[2] - r[1], r[3] - r[2], 4);

            (code, stdout, _) = Sd("schedule", "--config", cfg, "--sampler", "dpmpp_2m", "--steps", "10", "--spacing", "trailing");
            Assert.Equal(0, code);
            Assert.Equal(Enumerable.Range(0, 10).Select(i => 999.0 - 100 * i), Parse(stdout).Timesteps);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Theory]
    [InlineData(new[] { "schedule", "--sampler", "euler", "--steps", "10" }, "needs either --model")]
    [InlineData(new[] { "schedule", "--model", "a", "--config", "b", "--sampler", "euler", "--steps", "10" }, "needs either --model")]
    [InlineData(new[] { "schedule", "--config", "c.json", "--steps", "10" }, "needs --sampler, one of euler, euler_a")]
    [InlineData(new[] { "schedule", "--config", "c.json", "--sampler", "euler" }, "needs --steps")]
    [InlineData(new[] { "schedule", "--config", "c.json", "--sampler", "euler", "--steps", "ten" }, "--steps must be a positive integer, not 'ten'")]
    [InlineData(new[] { "schedule", "--config", "c.json", "--sampler", "euler", "--steps", "0" }, "--steps must be a positive integer")]
    [InlineData(new[] { "schedule", "--config", "c.json", "--sampler", "euler", "--steps", "5", "--schedule", "beta" }, "unknown schedule 'beta'; valid: default, karras, exponential")]
    [InlineData(new[] { "schedule", "--config", "c.json", "--sampler", "euler", "--steps", "5", "--spacing", "even" }, "unknown timestep spacing 'even'")]
    [InlineData(new[] { "schedule", "--config", "c.json", "--sampler", "euler", "--steps", "5", "--eta", "1" }, "unexpected argument '--eta'")]
    public void Usage_errors_exit_2_with_one_line(string[] args, string message)
    {
        var (code, stdout, stderr) = Sd(args);
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        Assert.StartsWith("sd: error: ", stderr);
        Assert.Contains(message, stderr);
        Assert.Single(stderr.TrimEnd().Split('\n'));
    }

    [Fact]
    public void Sampler_errors_exit_2_and_config_errors_exit_1()
    {
        var dir = Temp();
        try
        {
            var cfg = Path.Combine(dir, "scheduler_config.json");
            File.WriteAllText(cfg, SdSchedulerConfig);
            var (code, _, stderr) = Sd("schedule", "--config", cfg, "--sampler", "dpm_fast", "--steps", "5");
            Assert.Equal(2, code);
            Assert.Contains("unknown sampler 'dpm_fast'; valid: euler, euler_a, heun, lms, dpmpp_2m, dpmpp_2m_sde, unipc, lcm, ddim, pndm", stderr);
            (code, _, stderr) = Sd("schedule", "--config", cfg, "--sampler", "ddim", "--steps", "5", "--schedule", "karras");
            Assert.Equal(2, code);
            Assert.Contains("'ddim' steps through timesteps and has no sigma schedule", stderr);

            var bad = Path.Combine(dir, "bad.json");
            File.WriteAllText(bad, """{"beta_schedule": "cosine"}""");
            (code, _, stderr) = Sd("schedule", "--config", bad, "--sampler", "euler", "--steps", "5");
            Assert.Equal(1, code);
            Assert.StartsWith($"sd: error: {bad}: \"beta_schedule\" must be one of", stderr);
            Assert.Single(stderr.TrimEnd().Split('\n'));

            (code, _, stderr) = Sd("schedule", "--config", Path.Combine(dir, "missing.json"), "--sampler", "euler", "--steps", "5");
            Assert.Equal(1, code);
            Assert.Contains("missing.json: no such scheduler config file", stderr);

            (code, _, stderr) = Sd("schedule", "--model", dir + "/nothing-here", "--sampler", "euler", "--steps", "5");
            Assert.Equal(1, code);
            Assert.Contains("no such model folder or file", stderr);

            var empty = Path.Combine(dir, "empty-model");
            Directory.CreateDirectory(empty);
            (code, _, stderr) = Sd("schedule", "--model", empty, "--sampler", "euler", "--steps", "5");
            Assert.Equal(1, code);
            Assert.Contains("has no scheduler/scheduler_config.json", stderr);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
