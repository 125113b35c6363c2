namespace StableDiffusion.Schedulers;

/// <summary>
/// What the samplers share: the schedule lists, argument checks, and float32 array arithmetic. Coefficients are
/// computed in double and rounded to float once; array operations run in float32 in diffusers' order, so results
/// agree with its float32 tensors to rounding.
/// </summary>
internal abstract class Sampler : IScheduler
{
    private protected readonly Common C;
    private protected double[] timesteps = [];
    private protected double[] sigmas = [];

    private protected Sampler(string name, Common common)
    {
        Name = name;
        C = common;
    }

    public string Name { get; }
    public IReadOnlyList<double> Timesteps => timesteps;
    public IReadOnlyList<double> Sigmas => sigmas;
    public virtual double InitNoiseSigma => 1.0;
    public virtual int Order => 1;

    public abstract void SetTimesteps(int steps);

    public virtual float[] ScaleModelInput(float[] sample, int index)
    {
        CheckIndex(index);
        return sample;
    }

    public abstract float[] Step(float[] modelOutput, int index, float[] sample, Func<float[]>? noise = null);

    public abstract float[] AddNoise(float[] original, float[] noise, int index);

    private protected void CheckIndex(int index)
    {
        if (timesteps.Length == 0) throw new InvalidOperationException($"{Name}: call SetTimesteps before sampling");
        if ((uint)index >= (uint)timesteps.Length)
            throw new ArgumentOutOfRangeException(nameof(index), index, $"{Name}: iteration index outside 0..{timesteps.Length - 1}");
    }

    private protected void CheckStep(float[] modelOutput, int index, float[] sample)
    {
        CheckIndex(index);
        if (modelOutput.Length != sample.Length)
            throw new ArgumentException($"{Name}: model output has {modelOutput.Length} values, the sample {sample.Length}");
    }

    private protected float[] Draw(Func<float[]>? noise, int length)
    {
        if (noise is null) throw new ArgumentNullException(nameof(noise), $"{Name} is stochastic: Step needs a noise source");
        var z = noise();
        if (z.Length != length) throw new ArgumentException($"{Name}: the noise source gave {z.Length} values for a sample of {length}");
        return z;
    }

    /// <summary>
    /// The clean-sample estimate x₀ from the model output for a variance-preserving sample x = α·x₀ + σ·ε
    /// (α = sqrt(ᾱ), σ = sqrt(1 - ᾱ)): (x - σ·ε) / α, α·x - σ·v, or the output itself.
    /// </summary>
    private protected float[] DataPrediction(float[] modelOutput, float[] sample, double alpha, double sigma)
    {
        float a = (float)alpha, s = (float)sigma;
        switch (C.Prediction)
        {
            case Prediction.Epsilon:
            {
                var x0 = new float[sample.Length];
                for (int i = 0; i < x0.Length; i++) x0[i] = (sample[i] - s * modelOutput[i]) / a;
                return x0;
            }
            case Prediction.VPrediction:
                return F32.Lin(a, sample, -s, modelOutput);
            default:
                return modelOutput;
        }
    }

    /// <summary>The noise estimate ε for x = α·x₀ + σ·ε: the output itself, α·v + σ·x, or (x - α·x₀) / σ.</summary>
    private protected float[] NoisePrediction(float[] modelOutput, float[] sample, double alpha, double sigma)
    {
        float a = (float)alpha, s = (float)sigma;
        switch (C.Prediction)
        {
            case Prediction.Epsilon:
                return modelOutput;
            case Prediction.VPrediction:
                return F32.Lin(a, modelOutput, s, sample);
            default:
            {
                var e = new float[sample.Length];
                for (int i = 0; i < e.Length; i++) e[i] = (sample[i] - a * modelOutput[i]) / s;
                return e;
            }
        }
    }

    /// <summary>sqrt(ᾱ_t)·x₀ + sqrt(1 - ᾱ_t)·ε with ᾱ of a training timestep (DDIM-style add_noise).</summary>
    private protected float[] AddNoiseAtTimestep(float[] original, float[] noise, int t)
    {
        if (noise.Length != original.Length) throw new ArgumentException($"{Name}: noise has {noise.Length} values, the sample {original.Length}");
        float ac = C.AlphasCumprod[t];
        float a = MathF.Sqrt(ac), b = MathF.Sqrt(1f - ac);
        return F32.Lin(a, original, b, noise);
    }

    /// <summary>x₀ + σ·ε (sigma-space add_noise).</summary>
    private protected float[] AddNoiseAtSigma(float[] original, float[] noise, double sigma)
    {
        if (noise.Length != original.Length) throw new ArgumentException($"{Name}: noise has {noise.Length} values, the sample {original.Length}");
        float s = (float)sigma;
        var r = new float[original.Length];
        for (int i = 0; i < r.Length; i++) r[i] = original[i] + noise[i] * s;
        return r;
    }
}

/// <summary>float32 array arithmetic in a fixed operation order.</summary>
internal static class F32
{
    /// <summary>(a·x) + (b·y).</summary>
    public static float[] Lin(float a, float[] x, float b, float[] y)
    {
        var r = new float[x.Length];
        for (int i = 0; i < r.Length; i++) r[i] = a * x[i] + b * y[i];
        return r;
    }

    /// <summary>((a·x) + (b·y)) + (c·z).</summary>
    public static float[] Lin(float a, float[] x, float b, float[] y, float c, float[] z)
    {
        var r = new float[x.Length];
        for (int i = 0; i < r.Length; i++) r[i] = a * x[i] + b * y[i] + c * z[i];
        return r;
    }

    /// <summary>(((a·x) + (b·y)) + (c·z)) + (d·w).</summary>
    public static float[] Lin(float a, float[] x, float b, float[] y, float c, float[] z, float d, float[] w)
    {
        var r = new float[x.Length];
        for (int i = 0; i < r.Length; i++) r[i] = a * x[i] + b * y[i] + c * z[i] + d * w[i];
        return r;
    }

    public static float[] Clamp(float[] x, float range)
    {
        var r = new float[x.Length];
        for (int i = 0; i < r.Length; i++) r[i] = Math.Clamp(x[i], -range, range);
        return r;
    }
}
