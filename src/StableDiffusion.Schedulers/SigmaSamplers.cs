namespace StableDiffusion.Schedulers;

/// <summary>
/// The k-diffusion family in diffusers' "discrete" form (Euler, Euler ancestral, Heun, LMS): the sample lives in
/// variance-exploding space x = x₀ + σ·ε, the model sees x / sqrt(σ² + 1), and the timestep the model gets is the
/// (possibly fractional) training timestep of σ.
/// </summary>
internal abstract class SigmaSampler : Sampler
{
    private readonly SigmaSchedule schedule;
    private readonly double? sigmaMin, sigmaMax;
    private protected readonly float[] trainSigmas;
    private protected readonly float[] logSigmas;

    private protected SigmaSampler(string name, Common common, SchedulerConfig c, SigmaSchedule? scheduleOverride, bool configSchedule, bool configSigmaRange)
        : base(name, common)
    {
        trainSigmas = ScheduleMath.Sigmas(C.AlphasCumprod);
        logSigmas = ScheduleMath.LogSigmas(trainSigmas);
        // Only the diffusers classes that have use_karras_sigmas etc. read them from the config (Euler ancestral does not).
        schedule = scheduleOverride ?? (configSchedule ? ConfigSchedule(c) : SigmaSchedule.Default);
        if (configSigmaRange)
        {
            sigmaMin = c.SigmaMin;
            sigmaMax = c.SigmaMax;
        }
        Common.Refuse(c, configSchedule && scheduleOverride is null && c.UseBetaSigmas == true, "\"use_beta_sigmas\": true is not supported; use karras or exponential sigmas");
    }

    internal static SigmaSchedule ConfigSchedule(SchedulerConfig c)
    {
        Common.Refuse(c, c.UseKarrasSigmas == true && c.UseExponentialSigmas == true, "only one of use_karras_sigmas and use_exponential_sigmas can be true");
        return c.UseKarrasSigmas == true ? SigmaSchedule.Karras : c.UseExponentialSigmas == true ? SigmaSchedule.Exponential : SigmaSchedule.Default;
    }

    public override double InitNoiseSigma
    {
        get
        {
            if (sigmas.Length == 0) throw new InvalidOperationException($"{Name}: call SetTimesteps first");
            double max = sigmas.Max();
            // diffusers: leading spacing starts below the top timestep, so the noise is scaled as σ² + 1.
            return C.Spacing == TimestepSpacing.Leading ? Math.Sqrt(max * max + 1) : max;
        }
    }

    public override float[] ScaleModelInput(float[] sample, int index)
    {
        CheckIndex(index);
        double s = sigmas[index];
        float d = (float)Math.Sqrt(s * s + 1);
        var r = new float[sample.Length];
        for (int i = 0; i < r.Length; i++) r[i] = sample[i] / d;
        return r;
    }

    public override float[] AddNoise(float[] original, float[] noise, int index)
    {
        CheckIndex(index);
        return AddNoiseAtSigma(original, noise, sigmas[index]);
    }

    /// <summary>
    /// Timesteps (float32) and sigmas (float64, one per step, without the final one) for <paramref name="steps"/>
    /// steps: the spaced timesteps and the training sigmas interpolated at them, or Karras/exponential sigmas between
    /// the ends of that list and the timesteps that give them.
    /// </summary>
    private protected (float[] Timesteps, double[] Sigmas) Schedule(int steps)
    {
        C.CheckSteps(steps, Name);
        var ts = Spacing.Discrete(C.Spacing, C.NumTrainTimesteps, steps, C.StepsOffset);
        var s = ts.Select(t => ScheduleMath.Interp(t, trainSigmas)).ToArray();
        if (schedule == SigmaSchedule.Default) return (ts, s);
        double lo = sigmaMin ?? s[^1], hi = sigmaMax ?? s[0];
        s = schedule == SigmaSchedule.Karras ? ScheduleMath.Karras(lo, hi, steps) : ScheduleMath.Exponential(lo, hi, steps);
        ts = s.Select(x => (float)ScheduleMath.SigmaToT(x, logSigmas)).ToArray();
        return (ts, s);
    }

    /// <summary>The model's estimate of the clean sample at noise level σ.</summary>
    private protected float[] PredictX0(float[] modelOutput, float[] sample, double sigma)
    {
        int n = sample.Length;
        var x0 = new float[n];
        switch (C.Prediction)
        {
            case Prediction.Epsilon:
            {
                float s = (float)sigma;
                for (int i = 0; i < n; i++) x0[i] = sample[i] - s * modelOutput[i];
                return x0;
            }
            case Prediction.VPrediction:
            {
                float a = (float)(-sigma / Math.Sqrt(sigma * sigma + 1)), b = (float)(sigma * sigma + 1);
                for (int i = 0; i < n; i++) x0[i] = modelOutput[i] * a + sample[i] / b;
                return x0;
            }
            default:
                return modelOutput;
        }
    }

    /// <summary>(x - x₀) / σ, the ODE's derivative dx/dσ.</summary>
    private protected static float[] Derivative(float[] sample, float[] x0, double sigma)
    {
        float s = (float)sigma;
        var d = new float[sample.Length];
        for (int i = 0; i < d.Length; i++) d[i] = (sample[i] - x0[i]) / s;
        return d;
    }

    /// <summary>x + d·dt.</summary>
    private protected static float[] Advance(float[] sample, float[] derivative, double dt)
    {
        float h = (float)dt;
        var r = new float[sample.Length];
        for (int i = 0; i < r.Length; i++) r[i] = sample[i] + derivative[i] * h;
        return r;
    }

    private protected static double[] F32Values(IEnumerable<double> xs) => xs.Select(x => (double)(float)x).ToArray();
}

/// <summary>Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn): EulerDiscreteScheduler.</summary>
internal sealed class EulerSampler : SigmaSampler
{
    private readonly bool finalSigmaMin;

    public EulerSampler(SchedulerConfig c, SigmaSchedule? schedule, TimestepSpacing? spacing)
        : base("euler", Common.Resolve(c, new ClassDefaults(TimestepSpacing.Linspace, RescaleFixesLastAlpha: true), spacing, "euler"),
               c, schedule, configSchedule: true, configSigmaRange: true)
    {
        Common.Refuse(c, c.InterpolationType == "log_linear", "\"interpolation_type\": \"log_linear\" is not supported");
        Common.Refuse(c, c.TimestepType == "continuous", "\"timestep_type\": \"continuous\" is not supported");
        finalSigmaMin = c.FinalSigmasType == "sigma_min";
    }

    public override void SetTimesteps(int steps)
    {
        var (ts, s) = Schedule(steps);
        timesteps = ts.Select(t => (double)t).ToArray();
        double last = finalSigmaMin ? C.Sigma(0) : 0;
        sigmas = F32Values(s.Append(last));
    }

    public override float[] Step(float[] modelOutput, int index, float[] sample, Func<float[]>? noise = null)
    {
        CheckStep(modelOutput, index, sample);
        double sigma = sigmas[index];
        var x0 = PredictX0(modelOutput, sample, sigma);
        var d = Derivative(sample, x0, sigma);
        return Advance(sample, d, sigmas[index + 1] - sigma);
    }
}

/// <summary>
/// Euler ancestral: an Euler step down to σ_down, then fresh noise of standard deviation σ_up, with
/// σ_up² + σ_down² = σ_next². EulerAncestralDiscreteScheduler (A1111's "Euler a").
/// </summary>
internal sealed class EulerAncestralSampler : SigmaSampler
{
    // diffusers' EulerAncestralDiscreteScheduler has no use_karras_sigmas: only an explicit --schedule changes its sigmas.
    public EulerAncestralSampler(SchedulerConfig c, SigmaSchedule? schedule, TimestepSpacing? spacing)
        : base("euler_a", Common.Resolve(c, new ClassDefaults(TimestepSpacing.Linspace, RescaleFixesLastAlpha: true), spacing, "euler_a"),
               c, schedule, configSchedule: false, configSigmaRange: false)
    {
    }

    public override void SetTimesteps(int steps)
    {
        var (ts, s) = Schedule(steps);
        timesteps = ts.Select(t => (double)t).ToArray();
        sigmas = F32Values(s.Append(0));
    }

    /// <summary>The split of the step to <paramref name="sigmaTo"/> into a deterministic part and fresh noise.</summary>
    internal static (double Up, double Down) Split(double sigmaFrom, double sigmaTo)
    {
        double up = Math.Sqrt(sigmaTo * sigmaTo * (sigmaFrom * sigmaFrom - sigmaTo * sigmaTo) / (sigmaFrom * sigmaFrom));
        double down = Math.Sqrt(Math.Max(sigmaTo * sigmaTo - up * up, 0));
        return (up, down);
    }

    public override float[] Step(float[] modelOutput, int index, float[] sample, Func<float[]>? noise = null)
    {
        CheckStep(modelOutput, index, sample);
        double sigma = sigmas[index];
        var x0 = PredictX0(modelOutput, sample, sigma);
        var (up, down) = Split(sigma, sigmas[index + 1]);
        var d = Derivative(sample, x0, sigma);
        var prev = Advance(sample, d, down - sigma);
        // diffusers draws the noise at every step, the last (σ_up = 0) included, which keeps seeds aligned.
        var z = Draw(noise, sample.Length);
        float u = (float)up;
        for (int i = 0; i < prev.Length; i++) prev[i] += z[i] * u;
        return prev;
    }
}

/// <summary>
/// Heun's method (Karras et al. 2022, Algorithm 1): each step but the last evaluates the model twice, so the
/// timesteps and sigmas repeat as in HeunDiscreteScheduler ([t₀, t₁, t₁, t₂, t₂, …]).
/// </summary>
internal sealed class HeunSampler : SigmaSampler
{
    private readonly bool clip;
    private readonly float clipRange;
    private float[]? prevDerivative;
    private double? dt;
    private float[]? firstSample;

    public HeunSampler(SchedulerConfig c, SigmaSchedule? schedule, TimestepSpacing? spacing)
        : base("heun", Common.Resolve(c, new ClassDefaults(TimestepSpacing.Linspace, 0.00085, 0.012, "linear", HasRescale: false), spacing, "heun"),
               c, schedule, configSchedule: true, configSigmaRange: false)
    {
        clip = c.ClipSample ?? false;
        clipRange = (float)(c.ClipSampleRange ?? 1.0);
    }

    public override int Order => 2;

    public override void SetTimesteps(int steps)
    {
        var (ts, s) = Schedule(steps);
        var s32 = F32Values(s.Append(0));
        sigmas = [s32[0], .. s32[1..^1].SelectMany(x => new[] { x, x }), s32[^1]];
        timesteps = [ts[0], .. ts[1..].SelectMany(t => new double[] { t, t })];
        prevDerivative = null;
        dt = null;
        firstSample = null;
    }

    public override float[] Step(float[] modelOutput, int index, float[] sample, Func<float[]>? noise = null)
    {
        CheckStep(modelOutput, index, sample);
        bool first = dt is null;
        double sigma = first ? sigmas[index] : sigmas[index - 1];
        double sigmaNext = first ? sigmas[index + 1] : sigmas[index];
        // The second evaluation is at σ_next, so its x₀ uses σ_next.
        var x0 = PredictX0(modelOutput, sample, first ? sigma : sigmaNext);
        if (clip) x0 = F32.Clamp(x0, clipRange);
        if (first)
        {
            var d = Derivative(sample, x0, sigma);
            prevDerivative = d;
            dt = sigmaNext - sigma;
            firstSample = sample;
            return Advance(sample, d, sigmaNext - sigma);
        }
        var d2 = Derivative(sample, x0, sigmaNext);
        var avg = new float[d2.Length];
        for (int i = 0; i < avg.Length; i++) avg[i] = (prevDerivative![i] + d2[i]) / 2;
        var result = Advance(firstSample!, avg, dt!.Value);
        prevDerivative = null;
        dt = null;
        firstSample = null;
        return result;
    }
}

/// <summary>
/// Linear multistep (k-diffusion's LMS, order 4): the step integrates the Lagrange polynomial through the last
/// derivatives over [σ_i, σ_{i+1}]. LMSDiscreteScheduler.
/// </summary>
internal sealed class LmsSampler : SigmaSampler
{
    private const int MaxOrder = 4;
    private readonly List<float[]> derivatives = [];

    public LmsSampler(SchedulerConfig c, SigmaSchedule? schedule, TimestepSpacing? spacing)
        : base("lms", Common.Resolve(c, new ClassDefaults(TimestepSpacing.Linspace, HasRescale: false), spacing, "lms"),
               c, schedule, configSchedule: true, configSigmaRange: false)
    {
    }

    public override void SetTimesteps(int steps)
    {
        var (ts, s) = Schedule(steps);
        timesteps = ts.Select(t => (double)t).ToArray();
        sigmas = F32Values(s.Append(0));
        derivatives.Clear();
    }

    /// <summary>∫ over [σ_t, σ_{t+1}] of the Lagrange basis polynomial of node t - current among nodes t, t-1, …, t-order+1.</summary>
    internal double Coefficient(int order, int t, int current)
    {
        // The polynomial has degree ≤ 3: 4-point Gauss-Legendre integrates it exactly (diffusers uses scipy's quad).
        ReadOnlySpan<double> x = [-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526];
        ReadOnlySpan<double> w = [0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538];
        double a = sigmas[t], b = sigmas[t + 1];
        double half = (b - a) / 2, mid = (a + b) / 2, sum = 0;
        for (int q = 0; q < x.Length; q++)
        {
            double tau = mid + half * x[q], prod = 1;
            for (int k = 0; k < order; k++)
            {
                if (k == current) continue;
                prod *= (tau - sigmas[t - k]) / (sigmas[t - current] - sigmas[t - k]);
            }
            sum += w[q] * prod;
        }
        return sum * half;
    }

    public override float[] Step(float[] modelOutput, int index, float[] sample, Func<float[]>? noise = null)
    {
        CheckStep(modelOutput, index, sample);
        double sigma = sigmas[index];
        var x0 = PredictX0(modelOutput, sample, sigma);
        derivatives.Add(Derivative(sample, x0, sigma));
        if (derivatives.Count > MaxOrder) derivatives.RemoveAt(0);
        // As diffusers: the order follows the step index, and the sum pairs coefficients with the newest derivatives
        // (zip stops at the shorter list when sampling starts mid-schedule).
        int order = Math.Min(index + 1, MaxOrder);
        int terms = Math.Min(order, derivatives.Count);
        var acc = new float[sample.Length];
        for (int k = 0; k < terms; k++)
        {
            float c = (float)Coefficient(order, index, k);
            var d = derivatives[derivatives.Count - 1 - k];
            for (int i = 0; i < acc.Length; i++) acc[i] = k == 0 ? c * d[i] : acc[i] + c * d[i];
        }
        var r = new float[sample.Length];
        for (int i = 0; i < r.Length; i++) r[i] = sample[i] + acc[i];
        return r;
    }
}
