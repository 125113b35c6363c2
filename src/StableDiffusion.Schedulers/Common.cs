namespace StableDiffusion.Schedulers;

/// <summary>How the inference timesteps are picked from the training timesteps (diffusers' timestep_spacing).</summary>
public enum TimestepSpacing
{
    /// <summary>Multiples of num_train_timesteps / steps from 0, plus steps_offset (DDIM's and SD1.x's default).</summary>
    Leading,
    /// <summary>Evenly from num_train_timesteps - 1 down to 0 (Euler's default; k-diffusion's "normal").</summary>
    Linspace,
    /// <summary>Evenly back from num_train_timesteps - 1 (Lin et al. 2023).</summary>
    Trailing,
}

/// <summary>The noise levels a sigma-space sampler walks.</summary>
public enum SigmaSchedule
{
    /// <summary>The training sigmas at the chosen timesteps.</summary>
    Default,
    /// <summary>Karras et al. (2022), ρ = 7.</summary>
    Karras,
    /// <summary>Evenly spaced in log σ.</summary>
    Exponential,
}

/// <summary>Prediction type of the model output.</summary>
internal enum Prediction { Epsilon, VPrediction, Sample }

/// <summary>The diffusers class defaults a sampler resolves missing config keys with.</summary>
internal sealed record ClassDefaults(
    TimestepSpacing Spacing,
    double BetaStart = 0.0001,
    double BetaEnd = 0.02,
    string BetaSchedule = "linear",
    bool HasRescale = true,
    bool RescaleFixesLastAlpha = false,
    bool AllowsSample = true);

/// <summary>What every sampler shares: the resolved noise schedule, prediction type and spacing.</summary>
internal sealed class Common
{
    public required string Source { get; init; }
    public required int NumTrainTimesteps { get; init; }
    public required float[] AlphasCumprod { get; init; }
    public required Prediction Prediction { get; init; }
    public required TimestepSpacing Spacing { get; init; }
    public required int StepsOffset { get; init; }

    public static Common Resolve(SchedulerConfig c, ClassDefaults d, TimestepSpacing? spacing, string sampler)
    {
        int n = c.NumTrainTimesteps ?? 1000;
        float[] betas;
        if (c.TrainedBetas is { } trained)
        {
            betas = trained.Select(b => (float)b).ToArray();
            n = betas.Length;
        }
        else
        {
            betas = ScheduleMath.Betas(c.BetaSchedule ?? d.BetaSchedule, n, c.BetaStart ?? d.BetaStart, c.BetaEnd ?? d.BetaEnd, c.Source);
        }
        bool rescale = d.HasRescale && (c.RescaleBetasZeroSnr ?? false);
        if (rescale) betas = ScheduleMath.RescaleZeroTerminalSnr(betas);
        var ac = ScheduleMath.AlphasCumprod(betas);
        // diffusers' Euler/DPM/UniPC keep the last ᾱ just above 0 so that its sigma stays finite.
        if (rescale && d.RescaleFixesLastAlpha) ac[^1] = MathF.Pow(2, -24);
        for (int i = 0; i < ac.Length; i++)
            if (!(ac[i] > 0 && ac[i] <= 1) && !(rescale && i == ac.Length - 1))
                throw new ConfigException($"{c.Source}: the betas give alphas_cumprod[{i}] = {ac[i]}, outside (0, 1]; check beta_start/beta_end");

        var prediction = (c.PredictionType ?? "epsilon") switch
        {
            "epsilon" => Prediction.Epsilon,
            "v_prediction" => Prediction.VPrediction,
            "sample" or "original_sample" when d.AllowsSample => Prediction.Sample,
            var p => throw new ConfigException($"{c.Source}: \"prediction_type\" \"{p}\" is not supported by {sampler}"),
        };
        return new Common
        {
            Source = c.Source,
            NumTrainTimesteps = n,
            AlphasCumprod = ac,
            Prediction = prediction,
            Spacing = spacing ?? ParseSpacing(c.TimestepSpacing) ?? d.Spacing,
            StepsOffset = c.StepsOffset ?? 0,
        };
    }

    public static TimestepSpacing? ParseSpacing(string? s) => s switch
    {
        null => null,
        "leading" => TimestepSpacing.Leading,
        "linspace" => TimestepSpacing.Linspace,
        "trailing" => TimestepSpacing.Trailing,
        _ => throw new ConfigException($"\"timestep_spacing\" must be one of leading, linspace, trailing, not \"{s}\""),
    };

    /// <summary>Refuses a config option the sampler cannot honour (rather than silently ignoring it).</summary>
    public static void Refuse(SchedulerConfig c, bool condition, string what)
    {
        if (condition) throw new ConfigException($"{c.Source}: {what}");
    }

    public void CheckSteps(int steps, string sampler)
    {
        if (steps < 1) throw new UsageException($"{sampler}: the number of steps must be at least 1, not {steps}");
        if (steps > NumTrainTimesteps)
            throw new UsageException($"{sampler}: {steps} steps is more than the model's {NumTrainTimesteps} training timesteps");
    }

    /// <summary>The float32 training sigma of timestep t.</summary>
    public double Sigma(int t) => MathF.Sqrt((1f - AlphasCumprod[t]) / AlphasCumprod[t]);
}

/// <summary>Timestep grids of the diffusers sampler families (each family rounds and offsets its own way).</summary>
internal static class Spacing
{
    /// <summary>DDIMScheduler.set_timesteps: integer timesteps, descending.</summary>
    public static int[] Ddim(TimestepSpacing spacing, int numTrain, int steps, int offset) => spacing switch
    {
        TimestepSpacing.Linspace => ScheduleMath.Linspace(0, numTrain - 1, steps).Select(x => (int)ScheduleMath.Round(x)).Reverse().ToArray(),
        TimestepSpacing.Leading => Enumerable.Range(0, steps).Select(i => i * (numTrain / steps) + offset).Reverse().ToArray(),
        _ => Trailing(numTrain, numTrain, steps),
    };

    /// <summary>Euler/Heun/LMS set_timesteps: float32 timesteps, descending; linspace is not rounded.</summary>
    public static float[] Discrete(TimestepSpacing spacing, int numTrain, int steps, int offset) => spacing switch
    {
        TimestepSpacing.Linspace => ScheduleMath.Linspace(0, numTrain - 1, steps).Select(x => (float)x).Reverse().ToArray(),
        TimestepSpacing.Leading => Enumerable.Range(0, steps).Select(i => (float)(i * (numTrain / steps)) + offset).Reverse().ToArray(),
        _ => Trailing(numTrain, numTrain, steps).Select(t => (float)t).ToArray(),
    };

    /// <summary>
    /// DPM-Solver/UniPC set_timesteps: steps + 1 points with the last (0) dropped, so the schedule ends above 0.
    /// <paramref name="last"/> is num_train_timesteps less any lambda_min_clipped cut.
    /// </summary>
    public static int[] Multistep(TimestepSpacing spacing, int numTrain, int last, int steps, int offset)
    {
        switch (spacing)
        {
            case TimestepSpacing.Linspace:
                return ScheduleMath.Linspace(0, last - 1, steps + 1).Select(x => (int)ScheduleMath.Round(x)).Reverse().Take(steps).ToArray();
            case TimestepSpacing.Leading:
                int ratio = last / (steps + 1);
                return Enumerable.Range(0, steps + 1).Select(i => i * ratio).Reverse().Take(steps).Select(t => t + offset).ToArray();
            default:
                return Trailing(numTrain, last, steps);
        }
    }

    /// <summary>PNDMScheduler._timesteps: ascending integer timesteps.</summary>
    public static int[] Pndm(TimestepSpacing spacing, int numTrain, int steps, int offset) => spacing switch
    {
        TimestepSpacing.Linspace => ScheduleMath.Linspace(0, numTrain - 1, steps).Select(x => (int)ScheduleMath.Round(x)).ToArray(),
        TimestepSpacing.Leading => Enumerable.Range(0, steps).Select(i => i * (numTrain / steps) + offset).ToArray(),
        _ => Trailing(numTrain, numTrain, steps).Reverse().ToArray(),
    };

    /// <summary>round(arange(start, 0, -numTrain/steps)) - 1, descending.</summary>
    private static int[] Trailing(int numTrain, int start, int steps)
    {
        double ratio = (double)numTrain / steps;
        return ScheduleMath.Arange(start, 0, -ratio).Select(x => (int)ScheduleMath.Round(x) - 1).ToArray();
    }
}
