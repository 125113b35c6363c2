namespace StableDiffusion.Schedulers.Tests;

/// <summary>
/// The harness of diffusers' scheduler tests (tests/schedulers/test_schedulers.py and the full_loop tests), as
/// scheduler-cases.json describes it: a 4×3×8×8 dummy sample with the values i/768, the reversed dummy noise, and the
/// dummy model sample·t/(t+1). Every operation is elementwise, so flat arrays in any fixed order give the same sums.
/// </summary>
internal static class Harness
{
    public const int N = 4 * 3 * 8 * 8;

    public static float[] Sample() => Enumerable.Range(0, N).Select(i => (float)i / N).ToArray();

    public static float[] Noise() => Enumerable.Range(0, N).Select(i => (float)(N - 1 - i) / N).ToArray();

    /// <summary>model(sample, t) = sample·t / (t + 1), in float32 with t as a float32 (the tests cast t to the sample dtype).</summary>
    public static float[] Model(float[] x, double t)
    {
        float tf = (float)t;
        var r = new float[x.Length];
        for (int i = 0; i < r.Length; i++) r[i] = x[i] * tf / (tf + 1f);
        return r;
    }

    /// <summary>DDIM, PNDM, DPM++ 2M, UniPC, LCM: for t in timesteps: x = step(model(x, t), t, x).</summary>
    public static float[] TimestepLoop(IScheduler s, float[] x, int start = 0)
    {
        for (int i = start; i < s.Timesteps.Count; i++) x = s.Step(Model(x, s.Timesteps[i]), i, x);
        return x;
    }

    /// <summary>
    /// Euler, LMS, Heun: x = sample·init_noise_sigma; for t: x = scale_model_input(x, t); x = step(model(x, t), t, x).
    /// The scaled sample is what step receives (a quirk of those tests).
    /// </summary>
    public static float[] SigmaLoop(IScheduler s, float[] sample)
    {
        float init = (float)s.InitNoiseSigma;
        var x = sample.Select(v => v * init).ToArray();
        for (int i = 0; i < s.Timesteps.Count; i++)
        {
            x = s.ScaleModelInput(x, i);
            x = s.Step(Model(x, s.Timesteps[i]), i, x);
        }
        return x;
    }

    public static (double Sum, double Mean) AbsSumMean(float[] x)
    {
        double sum = x.Sum(v => (double)Math.Abs(v));
        return (sum, sum / x.Length);
    }
}
