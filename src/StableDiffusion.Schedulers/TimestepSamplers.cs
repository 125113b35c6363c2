namespace StableDiffusion.Schedulers;

/// <summary>DDIM (Song et al. 2020) with η = 0: diffusers' DDIMScheduler.</summary>
internal sealed class DdimSampler : Sampler
{
    private readonly bool clip;
    private readonly float clipRange;
    private readonly float finalAlphaCumprod;

    public DdimSampler(SchedulerConfig c, TimestepSpacing? spacing)
        : base("ddim", Common.Resolve(c, new ClassDefaults(TimestepSpacing.Leading), spacing, "ddim"))
    {
        Common.Refuse(c, c.Thresholding == true, "\"thresholding\": true (dynamic thresholding, for pixel-space models) is not supported");
        clip = c.ClipSample ?? true;
        clipRange = (float)(c.ClipSampleRange ?? 1.0);
        finalAlphaCumprod = (c.SetAlphaToOne ?? true) ? 1f : C.AlphasCumprod[0];
    }

    private int steps;

    public override void SetTimesteps(int steps)
    {
        C.CheckSteps(steps, Name);
        timesteps = Spacing.Ddim(C.Spacing, C.NumTrainTimesteps, steps, C.StepsOffset).Select(t => (double)t).ToArray();
        this.steps = steps;
    }

    public override float[] Step(float[] modelOutput, int index, float[] sample, Func<float[]>? noise = null)
    {
        CheckStep(modelOutput, index, sample);
        int t = (int)timesteps[index];
        // diffusers steps back by num_train_timesteps // steps whatever the spacing.
        int prev = t - C.NumTrainTimesteps / steps;
        double at = C.AlphasCumprod[t];
        double aPrev = prev >= 0 ? C.AlphasCumprod[prev] : finalAlphaCumprod;
        double bt = 1 - at;
        double sa = Math.Sqrt(at), sb = Math.Sqrt(bt);
        var x0 = DataPrediction(modelOutput, sample, sa, sb);
        var eps = NoisePrediction(modelOutput, sample, sa, sb);
        if (clip) x0 = F32.Clamp(x0, clipRange);
        // η = 0: no variance term; the direction pointing to x_t uses sqrt(1 - ᾱ_prev).
        return F32.Lin((float)Math.Sqrt(aPrev), x0, (float)Math.Sqrt(1 - aPrev), eps);
    }

    public override float[] AddNoise(float[] original, float[] noise, int index)
    {
        CheckIndex(index);
        return AddNoiseAtTimestep(original, noise, (int)timesteps[index]);
    }
}

/// <summary>
/// PNDM (Liu et al. 2022): pseudo linear multistep (PLMS), preceded by the 4th-order Runge-Kutta warm-up when
/// skip_prk_steps is false. diffusers' PNDMScheduler, the scheduler of the SD1.x and SD2.x repositories.
/// </summary>
internal sealed class PndmSampler : Sampler
{
    private readonly bool skipPrk;
    private readonly float finalAlphaCumprod;
    private int[] prk = [];
    private int steps;

    // State as diffusers keeps it: a counter of steps taken, the last model outputs, the Runge-Kutta accumulator.
    private int counter;
    private readonly List<float[]> ets = [];
    private float[]? curModelOutput;
    private float[]? curSample;

    public PndmSampler(SchedulerConfig c, TimestepSpacing? spacing)
        : base("pndm", Common.Resolve(c, new ClassDefaults(TimestepSpacing.Leading, HasRescale: false, AllowsSample: false), spacing, "pndm"))
    {
        skipPrk = c.SkipPrkSteps ?? false;
        finalAlphaCumprod = (c.SetAlphaToOne ?? false) ? 1f : C.AlphasCumprod[0];
    }

    public override void SetTimesteps(int steps)
    {
        C.CheckSteps(steps, Name);
        if (!skipPrk && steps < 4)
            throw new UsageException($"pndm: the Runge-Kutta warm-up (skip_prk_steps false) needs at least 4 steps, not {steps}");
        this.steps = steps;
        var ts = Spacing.Pndm(C.Spacing, C.NumTrainTimesteps, steps, C.StepsOffset); // ascending
        int[] plms;
        if (skipPrk)
        {
            prk = [];
            // [t₀ … t_{n-2}, t_{n-2}, t_{n-1}] reversed: the first PLMS step is taken twice (a Heun-like start).
            // (NumPy's ts[-2:-1] is empty for a one-step schedule.)
            var second = ts.Length >= 2 ? ts[^2..^1] : [];
            plms = ts[..^1].Concat(second).Concat(ts[^1..]).Reverse().ToArray();
        }
        else
        {
            int half = C.NumTrainTimesteps / steps / 2;
            // The last four timesteps, each followed by its half step; then every point but the last twice, trimmed.
            var pairs = ts[^4..].SelectMany(t => new[] { t, t + half }).ToArray();
            var doubled = pairs[..^1].SelectMany(t => new[] { t, t }).ToArray();
            prk = doubled[1..^1].Reverse().ToArray();
            plms = ts[..^3].Reverse().ToArray();
        }
        timesteps = prk.Concat(plms).Select(t => (double)t).ToArray();
        counter = 0;
        ets.Clear();
        curModelOutput = null;
        curSample = null;
    }

    public override float[] Step(float[] modelOutput, int index, float[] sample, Func<float[]>? noise = null)
    {
        CheckStep(modelOutput, index, sample);
        int t = (int)timesteps[index];
        return counter < prk.Length && !skipPrk ? StepPrk(modelOutput, t, sample) : StepPlms(modelOutput, t, sample);
    }

    private float[] StepPrk(float[] modelOutput, int timestep, float[] sample)
    {
        int diffToPrev = counter % 2 != 0 ? 0 : C.NumTrainTimesteps / steps / 2;
        int prevTimestep = timestep - diffToPrev;
        timestep = prk[counter / 4 * 4];
        int n = sample.Length;
        switch (counter % 4)
        {
            case 0:
                curModelOutput = Scaled(1f / 6, modelOutput, curModelOutput);
                ets.Add(modelOutput);
                curSample = sample;
                break;
            case 1:
            case 2:
                curModelOutput = Scaled(1f / 3, modelOutput, curModelOutput);
                break;
            default:
            {
                var combined = new float[n];
                float w = 1f / 6;
                for (int i = 0; i < n; i++) combined[i] = curModelOutput![i] + w * modelOutput[i];
                modelOutput = combined;
                curModelOutput = null;
                break;
            }
        }
        var cur = curSample ?? sample;
        var prev = PrevSample(cur, timestep, prevTimestep, modelOutput);
        counter++;
        return prev;
    }

    /// <summary>acc + w·m (acc starting at 0, as diffusers' cur_model_output += …).</summary>
    private static float[] Scaled(float w, float[] m, float[]? acc)
    {
        var r = new float[m.Length];
        for (int i = 0; i < r.Length; i++) r[i] = acc is null ? w * m[i] : acc[i] + w * m[i];
        return r;
    }

    private float[] StepPlms(float[] modelOutput, int timestep, float[] sample)
    {
        if (!skipPrk && ets.Count < 3) throw new InvalidOperationException("pndm: PLMS steps run after the 12 Runge-Kutta iterations");
        int ratio = C.NumTrainTimesteps / steps;
        int prevTimestep = timestep - ratio;
        if (counter != 1)
        {
            if (ets.Count > 3) ets.RemoveRange(0, ets.Count - 3);
            ets.Add(modelOutput);
        }
        else
        {
            prevTimestep = timestep;
            timestep += ratio;
        }
        int n = sample.Length;
        float[] m;
        if (ets.Count == 1 && counter == 0)
        {
            m = modelOutput;
            curSample = sample;
        }
        else if (ets.Count == 1 && counter == 1)
        {
            m = new float[n];
            for (int i = 0; i < n; i++) m[i] = (modelOutput[i] + ets[^1][i]) / 2;
            sample = curSample!;
            curSample = null;
        }
        else if (ets.Count == 2)
        {
            m = new float[n];
            for (int i = 0; i < n; i++) m[i] = (3 * ets[^1][i] - ets[^2][i]) / 2;
        }
        else if (ets.Count == 3)
        {
            m = new float[n];
            for (int i = 0; i < n; i++) m[i] = (23 * ets[^1][i] - 16 * ets[^2][i] + 5 * ets[^3][i]) / 12;
        }
        else
        {
            m = new float[n];
            float w = 1f / 24;
            for (int i = 0; i < n; i++) m[i] = w * (55 * ets[^1][i] - 59 * ets[^2][i] + 37 * ets[^3][i] - 9 * ets[^4][i]);
        }
        var prev = PrevSample(sample, timestep, prevTimestep, m);
        counter++;
        return prev;
    }

    /// <summary>Equation (9) of the PNDM paper: x_{t-δ} from x_t and ε.</summary>
    private float[] PrevSample(float[] sample, int timestep, int prevTimestep, float[] modelOutput)
    {
        double at = C.AlphasCumprod[timestep];
        double aPrev = prevTimestep >= 0 ? C.AlphasCumprod[prevTimestep] : finalAlphaCumprod;
        double bt = 1 - at, bPrev = 1 - aPrev;
        if (C.Prediction == Prediction.VPrediction)
            modelOutput = F32.Lin((float)Math.Sqrt(at), modelOutput, (float)Math.Sqrt(bt), sample);
        float sampleCoeff = (float)Math.Sqrt(aPrev / at);
        float diff = (float)(aPrev - at);
        float denom = (float)(at * Math.Sqrt(bPrev) + Math.Sqrt(at * bt * aPrev));
        var r = new float[sample.Length];
        for (int i = 0; i < r.Length; i++) r[i] = sampleCoeff * sample[i] - diff * modelOutput[i] / denom;
        return r;
    }

    public override float[] AddNoise(float[] original, float[] noise, int index)
    {
        CheckIndex(index);
        return AddNoiseAtTimestep(original, noise, (int)timesteps[index]);
    }
}

/// <summary>
/// Latent consistency models (Luo et al. 2023): each step predicts the clean sample with the consistency boundary
/// condition, then noises it afresh to the next timestep. diffusers' LCMScheduler.
/// </summary>
internal sealed class LcmSampler : Sampler
{
    private readonly bool clip;
    private readonly float clipRange;
    private readonly float finalAlphaCumprod;
    private readonly int originalSteps;
    private readonly double timestepScaling;

    public LcmSampler(SchedulerConfig c, TimestepSpacing? spacing)
        : base("lcm", Common.Resolve(c, new ClassDefaults(TimestepSpacing.Leading, 0.00085, 0.012, "scaled_linear"), spacing, "lcm"))
    {
        Common.Refuse(c, c.Thresholding == true, "\"thresholding\": true (dynamic thresholding, for pixel-space models) is not supported");
        clip = c.ClipSample ?? false;
        clipRange = (float)(c.ClipSampleRange ?? 1.0);
        finalAlphaCumprod = (c.SetAlphaToOne ?? true) ? 1f : C.AlphasCumprod[0];
        originalSteps = c.OriginalInferenceSteps ?? 50;
        timestepScaling = c.TimestepScaling ?? 10.0;
        if (originalSteps > C.NumTrainTimesteps)
            throw new ConfigException($"{c.Source}: \"original_inference_steps\" {originalSteps} is more than num_train_timesteps {C.NumTrainTimesteps}");
    }

    public override void SetTimesteps(int steps)
    {
        C.CheckSteps(steps, Name);
        if (steps > originalSteps)
            throw new UsageException($"lcm: {steps} steps is more than the {originalSteps} the model was distilled for (original_inference_steps)");
        // The distillation schedule k-1, 2k-1, … (k = num_train / original_steps), descending, sampled evenly.
        int k = C.NumTrainTimesteps / originalSteps;
        var origin = Enumerable.Range(1, originalSteps).Select(i => i * k - 1).Reverse().ToArray();
        var idx = ScheduleMath.Linspace(0, origin.Length, steps, endpoint: false).Select(x => (int)Math.Floor(x));
        timesteps = idx.Select(i => (double)origin[i]).ToArray();
    }

    public override float[] Step(float[] modelOutput, int index, float[] sample, Func<float[]>? noise = null)
    {
        CheckStep(modelOutput, index, sample);
        int t = (int)timesteps[index];
        int prevT = index + 1 < timesteps.Length ? (int)timesteps[index + 1] : t;
        double at = C.AlphasCumprod[t];
        double aPrev = prevT >= 0 ? C.AlphasCumprod[prevT] : finalAlphaCumprod;
        double bt = 1 - at, bPrev = 1 - aPrev;
        // Boundary condition scalings, σ_data = 0.5.
        double st = t * timestepScaling;
        double cSkip = 0.25 / (st * st + 0.25);
        double cOut = st / Math.Sqrt(st * st + 0.25);
        var x0 = DataPrediction(modelOutput, sample, Math.Sqrt(at), Math.Sqrt(bt));
        if (clip) x0 = F32.Clamp(x0, clipRange);
        var denoised = F32.Lin((float)cOut, x0, (float)cSkip, sample);
        if (index == timesteps.Length - 1) return denoised;
        var z = Draw(noise, sample.Length);
        return F32.Lin((float)Math.Sqrt(aPrev), denoised, (float)Math.Sqrt(bPrev), z);
    }

    public override float[] AddNoise(float[] original, float[] noise, int index)
    {
        CheckIndex(index);
        return AddNoiseAtTimestep(original, noise, (int)timesteps[index]);
    }
}
