using System.Globalization;
using System.Text;
using StableDiffusion.Schedulers;

namespace StableDiffusion.Cli;

/// <summary>
/// <c>sd schedule</c>: the timesteps and sigmas a sampler walks for a model's scheduler config, as JSON:
/// <c>{"timesteps": [...], "sigmas": [...]}</c>. Sigmas are those the sampler uses, final one included; samplers
/// that step through timesteps only (DDIM, PNDM, LCM) print an empty sigma list.
/// </summary>
internal static class ScheduleCommand
{
    public static int Run(Args a, TextWriter stdout, TextWriter stderr)
    {
        var model = a.Value("--model");
        var configPath = a.Value("--config");
        var sampler = a.Value("--sampler");
        var stepsText = a.Value("--steps");
        var scheduleText = a.Value("--schedule");
        var spacingText = a.Value("--spacing");
        a.CheckDone();

        if ((model is null) == (configPath is null))
            throw new UsageException("'sd schedule' needs either --model (a diffusers model folder or a checkpoint file) or --config (a scheduler_config.json)");
        if (sampler is null)
            throw new UsageException($"'sd schedule' needs --sampler, one of {string.Join(", ", Samplers.Names)}");
        if (stepsText is null) throw new UsageException("'sd schedule' needs --steps N");
        if (!int.TryParse(stepsText, NumberStyles.None, CultureInfo.InvariantCulture, out int steps) || steps < 1)
            throw new UsageException($"--steps must be a positive integer, not '{stepsText}'");
        SigmaSchedule? schedule = scheduleText is null ? null : Samplers.ParseSchedule(scheduleText);
        TimestepSpacing? spacing = spacingText is null ? null : Samplers.ParseSpacing(spacingText);

        var config = configPath is not null ? SchedulerConfig.Load(configPath) : ConfigOf(model!, stderr);
        var s = Samplers.Create(sampler, config, schedule, spacing);
        s.SetTimesteps(steps);
        stdout.WriteLine($"{{\"timesteps\": {Json(s.Timesteps)}, \"sigmas\": {Json(s.Sigmas)}}}");
        return 0;
    }

    private static SchedulerConfig ConfigOf(string model, TextWriter stderr)
    {
        if (Directory.Exists(model))
        {
            foreach (var p in new[] { Path.Combine(model, "scheduler", "scheduler_config.json"), Path.Combine(model, "scheduler_config.json") })
                if (File.Exists(p)) return SchedulerConfig.Load(p);
            throw new ConfigException($"{model}: the model folder has no scheduler/scheduler_config.json; give one with --config");
        }
        if (File.Exists(model))
        {
            // A single-file checkpoint carries no scheduler config; SD1.x, SD2.x and SDXL share this noise schedule.
            stderr.WriteLine($"sd: note: {model} is a single file; using {SchedulerConfig.StableDiffusion15.Source}");
            return SchedulerConfig.StableDiffusion15;
        }
        throw new ConfigException($"{model}: no such model folder or file");
    }

    /// <summary>A JSON array of the values as float32 (what diffusers keeps), shortest round-trip form.</summary>
    private static string Json(IReadOnlyList<double> values)
    {
        var sb = new StringBuilder("[");
        for (int i = 0; i < values.Count; i++)
        {
            if (i > 0) sb.Append(", ");
            sb.Append(((float)values[i]).ToString("R", CultureInfo.InvariantCulture));
        }
        return sb.Append(']').ToString();
    }
}
