namespace StableDiffusion.Schedulers.Tests;

/// <summary>
/// A model that knows the answer: for a clean sample x₀ it returns the exact ε, v or x₀ of whatever noisy input it
/// is given, at the noise level of the iteration. With it, any consistent sampler must keep every iterate on the
/// exact noisy version of x₀ (a closed-form identity: the probability-flow ODE of a point mass is solved exactly by
/// Euler, Heun, LMS, DDIM, PLMS, DPM-Solver++ and UniPC alike), ending at x₀ when the last sigma is 0.
/// </summary>
internal static class Oracle
{
    /// <summary>ᾱ of SD's scaled_linear schedule in float64, independent of the code under test.</summary>
    public static double AlphaBar(int t, double betaStart = 0.00085, double betaEnd = 0.012, int n = 1000)
    {
        double a = 1, s0 = Math.Sqrt(betaStart), s1 = Math.Sqrt(betaEnd);
        for (int i = 0; i <= t; i++)
        {
            double b = s0 + (s1 - s0) * i / (n - 1);
            a *= 1 - b * b;
        }
        return a;
    }

    public static bool IsSigmaSpace(IScheduler s) => s.Name is "euler" or "euler_a" or "heun" or "lms";

    /// <summary>(α, σ) of the variance-preserving form α·x₀ + σ·ε the model input has at iteration i.</summary>
    public static (double Alpha, double Sigma) Level(IScheduler s, int i)
    {
        if (s.Sigmas.Count > 0)
        {
            double sg = s.Sigmas[i], a = 1 / Math.Sqrt(sg * sg + 1);
            return (a, sg * a);
        }
        double ab = AlphaBar((int)s.Timesteps[i]);
        return (Math.Sqrt(ab), Math.Sqrt(1 - ab));
    }

    /// <summary>The exact sample at iteration i: x₀ + σ_i·ε for sigma-space samplers, else α_i·x₀ + σ_i·ε.</summary>
    public static double[] Expected(IScheduler s, int i, float[] x0, float[] eps)
    {
        if (IsSigmaSpace(s)) return x0.Select((v, k) => v + s.Sigmas[i] * eps[k]).ToArray();
        var (a, sg) = Level(s, i);
        return x0.Select((v, k) => a * v + sg * eps[k]).ToArray();
    }

    /// <summary>The model output for input <paramref name="input"/> at iteration i.</summary>
    public static float[] Model(IScheduler s, int i, float[] input, float[] x0, string prediction)
    {
        var (a, sg) = Level(s, i);
        var r = new float[input.Length];
        for (int k = 0; k < r.Length; k++)
        {
            double e = (input[k] - a * x0[k]) / sg;
            r[k] = prediction switch
            {
                "epsilon" => (float)e,
                "v_prediction" => (float)(a * e - sg * x0[k]),
                _ => x0[k],
            };
        }
        return r;
    }

    public static double MaxAbsDiff(float[] actual, double[] expected) =>
        actual.Select((v, k) => Math.Abs(v - expected[k])).Max();

    /// <summary>Fixed pseudo-random arrays (a tiny LCG with a Box-Muller transform: values need only be generic).</summary>
    public static float[] Gaussian(int n, uint seed)
    {
        var r = new float[n];
        uint state = seed * 2654435761u + 1;
        double Next()
        {
            state = state * 1664525u + 1013904223u;
            return (state + 0.5) / 4294967296.0;
        }
        for (int i = 0; i < n; i++) r[i] = (float)(Math.Sqrt(-2 * Math.Log(Next())) * Math.Cos(2 * Math.PI * Next()));
        return r;
    }
}
