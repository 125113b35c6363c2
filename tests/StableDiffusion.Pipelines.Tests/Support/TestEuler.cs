using System.Text.Json;
using StableDiffusion.Schedulers;

namespace StableDiffusion.Pipelines.Tests.Support;

/// <summary>
/// TEST DOUBLE, to be deleted when the real samplers land (issue 5 item 1, src/StableDiffusion.Schedulers): the
/// smallest faithful copy of diffusers' EulerDiscreteScheduler (ε-prediction, scaled_linear or linear betas,
/// timestep spacing 'leading', 'linspace' or 'trailing', no churn, no Karras) so the pipeline tests can run before then.
/// <see cref="Create"/> has the shape of the factory the CLI plugs in.
/// </summary>
internal sealed class TestEuler : IScheduler
{
    private readonly float[] alphasCumprod;
    private readonly string spacing;
    private readonly int stepsOffset;
    private double[] timesteps = [];
    private float[] sigmas = [];

    private TestEuler(JsonElement config, string? spacingOverride)
    {
        double Num(string key, double fallback) => config.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : fallback;
        string Str(string key, string fallback) => config.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : fallback;
        if (Str("prediction_type", "epsilon") != "epsilon") throw new UsageException("the test Euler handles epsilon prediction only");
        int n = (int)Num("num_train_timesteps", 1000);
        double start = Num("beta_start", 0.0001), end = Num("beta_end", 0.02);
        bool scaled = Str("beta_schedule", "linear") == "scaled_linear";
        stepsOffset = (int)Num("steps_offset", 0);
        spacing = spacingOverride ?? Str("timestep_spacing", "linspace");
        if (spacing is not ("leading" or "linspace" or "trailing")) throw new UsageException($"the test Euler has no '{spacing}' spacing");
        alphasCumprod = new float[n];
        float product = 1f;
        for (int i = 0; i < n; i++)
        {
            // betas = linspace(start^½, end^½, n)² (scaled_linear) or linspace(start, end, n), in float32.
            float beta = scaled
                ? (float)Math.Pow(Math.Sqrt(start) + (Math.Sqrt(end) - Math.Sqrt(start)) * i / (n - 1), 2)
                : (float)(start + (end - start) * i / (n - 1));
            product *= 1f - beta;
            alphasCumprod[i] = product;
        }
    }

    /// <summary>The sampler factory's shape: (name, scheduler_config.json text, schedule, spacing) → sampler.</summary>
    public static IScheduler Create(string name, string configJson, string? schedule, string? spacing)
    {
        if (name != "euler") throw new UsageException($"--sampler '{name}': the test double knows only euler");
        if (schedule is not (null or "default")) throw new UsageException($"--schedule '{schedule}': the test Euler has only the default schedule");
        using var doc = JsonDocument.Parse(configJson);
        return new TestEuler(doc.RootElement, spacing);
    }

    public string Name => "euler";
    public IReadOnlyList<double> Timesteps => timesteps;
    public IReadOnlyList<double> Sigmas => sigmas.Select(s => (double)s).ToArray();
    public double InitNoiseSigma { get; private set; }

    public void SetTimesteps(int steps)
    {
        int n = alphasCumprod.Length;
        timesteps = spacing switch
        {
            "leading" => [.. Enumerable.Range(0, steps).Select(i => (double)(i * (n / steps) + stepsOffset)).Reverse()],
            // round(arange(n, 0, -n/steps)) - 1: the last step lands on t = n/steps - 1, the first on n - 1
            "trailing" => [.. Enumerable.Range(0, steps).Select(i => Math.Round(n - i * ((double)n / steps), MidpointRounding.ToEven) - 1)],
            _ => [.. Enumerable.Range(0, steps).Select(i => (double)(float)((n - 1) * (double)i / Math.Max(1, steps - 1))).Reverse()],
        };
        // σ(t) = √((1 − ᾱ)/ᾱ), linearly interpolated at fractional t; then a final 0.
        var table = alphasCumprod.Select(a => (double)MathF.Sqrt((1f - a) / a)).ToArray();
        sigmas = timesteps.Select(t =>
        {
            int lo = (int)Math.Floor(t), hi = Math.Min(lo + 1, n - 1);
            return (float)(table[lo] + (table[hi] - table[lo]) * (t - lo));
        }).Append(0f).ToArray();
        float max = sigmas.Max();
        InitNoiseSigma = spacing is "linspace" or "trailing" ? max : MathF.Sqrt(max * max + 1f);
    }

    public float[] ScaleModelInput(float[] sample, int index)
    {
        float d = MathF.Sqrt(sigmas[index] * sigmas[index] + 1f);
        return sample.Select(x => x / d).ToArray();
    }

    public float[] Step(float[] modelOutput, int index, float[] sample, Func<float[]>? noise = null)
    {
        float sigma = sigmas[index], dt = sigmas[index + 1] - sigma;
        var next = new float[sample.Length];
        for (int i = 0; i < next.Length; i++)
        {
            float x0 = sample[i] - sigma * modelOutput[i];
            float derivative = (sample[i] - x0) / sigma;
            next[i] = sample[i] + derivative * dt;
        }
        return next;
    }

    public float[] AddNoise(float[] original, float[] noise, int index)
    {
        float sigma = sigmas[index];
        return original.Select((x, i) => x + noise[i] * sigma).ToArray();
    }
}
