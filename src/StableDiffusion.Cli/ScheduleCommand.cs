using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using StableDiffusion.IO;
using StableDiffusion.Kernels;
using StableDiffusion.Pipelines;
using StableDiffusion.Runtime;
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
        PredictionType? prediction = a.Value("--prediction-type") is string p ? PredictionTypes.Parse(p) : null;
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

        if (prediction is not null && configPath is not null)
            throw new UsageException("--prediction-type goes with --model (a --config file says its own prediction_type)");
        var config = configPath is not null ? SchedulerConfig.Load(configPath) : ConfigOf(model!, prediction, stderr);
        var s = Samplers.Create(sampler, config, schedule, spacing);
        s.SetTimesteps(steps);
        stdout.WriteLine($"{{\"timesteps\": {Json(s.Timesteps)}, \"sigmas\": {Json(s.Sigmas)}}}");
        return 0;
    }

    /// <summary>
    /// A folder's scheduler config (its prediction_type replaced by --prediction-type if given); otherwise the
    /// configs <c>sd generate</c> would use (<see cref="ModelConfigs.For"/>): a folder without one gets its family's
    /// defaults, an SD2.x single file the 512-base or 768-v ones as its UNet, run once on the CPU, or
    /// --prediction-type says.
    /// </summary>
    private static SchedulerConfig ConfigOf(string model, PredictionType? prediction, TextWriter stderr)
    {
        if (!Directory.Exists(model) && !File.Exists(model)) throw new ConfigException($"{model}: no such model folder or file");
        if (Directory.Exists(model))
        {
            foreach (var p in new[] { Path.Combine(model, "scheduler", "scheduler_config.json"), Path.Combine(model, "scheduler_config.json") })
                if (File.Exists(p))
                    return prediction is null ? SchedulerConfig.Load(p) : SchedulerConfig.Parse(WithPrediction(File.ReadAllText(p), prediction.Value), $"{p}, {prediction.Value.Describe()} as asked");
            if (!File.Exists(Path.Combine(model, "model_index.json")))
                throw new ConfigException($"{model}: the model folder has no scheduler/scheduler_config.json; give one with --config");
        }
        using var source = ModelSource.Open(model);
        ModelConfigs configs;
        if (ModelConfigs.NeedsPrediction(source) && prediction is null)
        {
            using var device = ComputeDevice.Open("cpu");
            configs = PredictionProbe.Resolve(source, Backends.For(device), DType.F32, null, line => stderr.WriteLine($"sd: {line}"), out var unet);
            unet?.Dispose();
        }
        else
            configs = ModelConfigs.For(source, prediction);
        stderr.WriteLine($"sd: note: {model}: using {configs.SchedulerSource}");
        return SchedulerConfig.Parse(configs.SchedulerConfigJson, configs.SchedulerSource);
    }

    private static string WithPrediction(string json, PredictionType p)
    {
        var o = JsonNode.Parse(json)!.AsObject();
        o["prediction_type"] = p == PredictionType.V ? "v_prediction" : "epsilon";
        return o.ToJsonString();
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
