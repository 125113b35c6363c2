namespace StableDiffusion.Schedulers;

/// <summary>
/// The numeric building blocks of diffusers' schedules, each computed in the precision diffusers uses: betas,
/// alphas_cumprod and the training sigmas are float32 tensors there (so they are float[] here); timestep grids come
/// from NumPy in float64 with NumPy's rounding (half to even); Karras/exponential sigmas are float64 until the final
/// cast to float32.
/// </summary>
internal static class ScheduleMath
{
    /// <summary>torch.linspace(start, end, steps, dtype=float32) on the CPU: float32 arithmetic, each half from its end.</summary>
    public static float[] TorchLinspaceF32(double start, double end, int steps)
    {
        float s = (float)start, e = (float)end;
        var r = new float[steps];
        if (steps == 1)
        {
            r[0] = s;
            return r;
        }
        float step = (e - s) / (steps - 1);
        int halfway = steps / 2;
        for (int i = 0; i < steps; i++)
            r[i] = i < halfway ? s + step * i : e - step * (steps - i - 1);
        return r;
    }

    /// <summary>The betas of a named schedule, as float32 like diffusers.</summary>
    public static float[] Betas(string schedule, int n, double betaStart, double betaEnd, string source)
    {
        switch (schedule)
        {
            case "linear":
                return TorchLinspaceF32(betaStart, betaEnd, n);
            case "scaled_linear":
            {
                // linspace(sqrt(start), sqrt(end)) in float32, squared in float32.
                var b = TorchLinspaceF32(Math.Sqrt(betaStart), Math.Sqrt(betaEnd), n);
                for (int i = 0; i < n; i++) b[i] *= b[i];
                return b;
            }
            case "squaredcos_cap_v2":
            {
                // betas_for_alpha_bar: float64 in Python, then a float32 tensor.
                static double AlphaBar(double t) => Math.Pow(Math.Cos((t + 0.008) / 1.008 * Math.PI / 2), 2);
                var b = new float[n];
                for (int i = 0; i < n; i++)
                {
                    double t1 = (double)i / n, t2 = (double)(i + 1) / n;
                    b[i] = (float)Math.Min(1 - AlphaBar(t2) / AlphaBar(t1), 0.999);
                }
                return b;
            }
            default:
                throw new ConfigException($"{source}: \"beta_schedule\" must be one of linear, scaled_linear, squaredcos_cap_v2, not \"{schedule}\"");
        }
    }

    /// <summary>
    /// torch.cumprod(1 - betas) on the CPU: 1 - beta in float32, the running product in double (ATen's CPU
    /// accumulate type for float), each partial product stored as float32.
    /// </summary>
    public static float[] AlphasCumprod(float[] betas)
    {
        var r = new float[betas.Length];
        double acc = 1;
        for (int i = 0; i < betas.Length; i++)
        {
            acc *= 1f - betas[i];
            r[i] = (float)acc;
        }
        return r;
    }

    /// <summary>rescale_zero_terminal_snr (Lin et al. 2023, Algorithm 1), in float32 like diffusers.</summary>
    public static float[] RescaleZeroTerminalSnr(float[] betas)
    {
        var ac = AlphasCumprod(betas);
        int n = ac.Length;
        var s = new float[n];
        for (int i = 0; i < n; i++) s[i] = MathF.Sqrt(ac[i]);
        float s0 = s[0], sT = s[n - 1];
        float scale = s0 / (s0 - sT);
        for (int i = 0; i < n; i++) s[i] = (s[i] - sT) * scale;
        var bar = new float[n];
        for (int i = 0; i < n; i++) bar[i] = s[i] * s[i];
        var b = new float[n];
        b[0] = 1f - bar[0];
        for (int i = 1; i < n; i++) b[i] = 1f - bar[i] / bar[i - 1];
        return b;
    }

    /// <summary>The training sigmas sqrt((1 - ᾱ) / ᾱ), float32 tensor arithmetic as in diffusers.</summary>
    public static float[] Sigmas(float[] alphasCumprod)
    {
        var r = new float[alphasCumprod.Length];
        for (int i = 0; i < r.Length; i++) r[i] = MathF.Sqrt((1f - alphasCumprod[i]) / alphasCumprod[i]);
        return r;
    }

    /// <summary>np.linspace in float64 (y = i·step + start, the last value exactly stop when endpoint).</summary>
    public static double[] Linspace(double start, double stop, int num, bool endpoint = true)
    {
        var r = new double[num];
        int div = endpoint ? num - 1 : num;
        double delta = stop - start;
        double step = div > 0 ? delta / div : double.NaN;
        for (int i = 0; i < num; i++) r[i] = div > 0 ? i * step + start : i * delta + start;
        if (endpoint && num > 1) r[num - 1] = stop;
        return r;
    }

    /// <summary>np.arange(start, stop, step) for floats: length ceil((stop - start) / step), values start + i·(x₁ - x₀).</summary>
    public static double[] Arange(double start, double stop, double step)
    {
        double len = Math.Ceiling((stop - start) / step);
        int n = len > 0 ? checked((int)len) : 0;
        var r = new double[n];
        if (n == 0) return r;
        r[0] = start;
        if (n == 1) return r;
        r[1] = start + step;
        double delta = r[1] - r[0];
        for (int i = 2; i < n; i++) r[i] = start + i * delta;
        return r;
    }

    /// <summary>NumPy's round: half to even.</summary>
    public static double Round(double x) => Math.Round(x, MidpointRounding.ToEven);

    /// <summary>np.interp(x, arange(len(fp)), fp) in float64.</summary>
    public static double Interp(double x, float[] fp)
    {
        int last = fp.Length - 1;
        if (x <= 0) return fp[0];
        if (x >= last) return fp[last];
        int j = (int)Math.Floor(x);
        if (x == j) return fp[j];
        double slope = (double)fp[j + 1] - fp[j]; // the grid step is 1
        return slope * (x - j) + fp[j];
    }

    /// <summary>Karras et al. (2022) sigmas, ρ = 7, float64 as diffusers' _convert_to_karras.</summary>
    public static double[] Karras(double sigmaMin, double sigmaMax, int n)
    {
        const double rho = 7.0;
        var ramp = Linspace(0, 1, n);
        double minInv = Math.Pow(sigmaMin, 1 / rho), maxInv = Math.Pow(sigmaMax, 1 / rho);
        var r = new double[n];
        for (int i = 0; i < n; i++) r[i] = Math.Pow(maxInv + ramp[i] * (minInv - maxInv), rho);
        return r;
    }

    /// <summary>Sigmas evenly spaced in log σ, float64 as diffusers' _convert_to_exponential.</summary>
    public static double[] Exponential(double sigmaMin, double sigmaMax, int n)
    {
        var l = Linspace(Math.Log(sigmaMax), Math.Log(sigmaMin), n);
        for (int i = 0; i < n; i++) l[i] = Math.Exp(l[i]);
        return l;
    }

    /// <summary>log of the float32 training sigmas, in float32 as np.log does on a float32 array.</summary>
    public static float[] LogSigmas(float[] sigmas)
    {
        var r = new float[sigmas.Length];
        for (int i = 0; i < r.Length; i++) r[i] = MathF.Log(sigmas[i]);
        return r;
    }

    /// <summary>
    /// diffusers' _sigma_to_t: the fractional training timestep whose log-sigma, interpolated linearly between its
    /// neighbours, equals log σ (clamped to the table's ends).
    /// </summary>
    public static double SigmaToT(double sigma, float[] logSigmas)
    {
        double logSigma = Math.Log(Math.Max(sigma, 1e-10));
        // low_idx = (number of table entries ≤ log σ) - 1, at least 0, at most len - 2.
        int count = 0;
        for (int i = 0; i < logSigmas.Length; i++)
            if (logSigma - logSigmas[i] >= 0) count = i + 1;
        int low = Math.Min(Math.Max(count - 1, 0), logSigmas.Length - 2);
        int high = low + 1;
        double lo = logSigmas[low], hi = logSigmas[high];
        double w = (lo - logSigma) / (lo - hi);
        w = Math.Clamp(w, 0, 1);
        return (1 - w) * low + w * high;
    }
}
