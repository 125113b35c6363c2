namespace StableDiffusion.Schedulers;

/// <summary>
/// The multistep solvers in log-SNR time (DPM-Solver++, UniPC): the sample stays in variance-preserving space
/// x = α·x₀ + σ·ε (so the model input is the sample itself), with α = 1/sqrt(s² + 1) and σ = s·α for the
/// schedule's sigma s; λ = log α - log σ.
/// </summary>
internal abstract class MultistepSampler : Sampler
{
    private protected readonly SigmaSchedule schedule;
    private protected readonly bool finalSigmaMin;
    private protected readonly float[] trainSigmas;
    private protected readonly float[] logSigmas;
    private protected readonly bool cosine;

    private protected MultistepSampler(string name, Common common, SchedulerConfig c, SigmaSchedule? scheduleOverride)
        : base(name, common)
    {
        Common.Refuse(c, c.Thresholding == true, "\"thresholding\": true (dynamic thresholding, for pixel-space models) is not supported");
        Common.Refuse(c, c.UseFlowSigmas == true, "\"use_flow_sigmas\": true (flow-matching models) is not supported");
        Common.Refuse(c, scheduleOverride is null && c.UseBetaSigmas == true, "\"use_beta_sigmas\": true is not supported; use karras or exponential sigmas");
        schedule = scheduleOverride ?? SigmaSampler.ConfigSchedule(c);
        finalSigmaMin = c.FinalSigmasType == "sigma_min";
        trainSigmas = ScheduleMath.Sigmas(C.AlphasCumprod);
        logSigmas = ScheduleMath.LogSigmas(trainSigmas);
        cosine = (c.BetaSchedule ?? "linear") == "squaredcos_cap_v2";
    }

    /// <summary>(α, σ) of a schedule sigma.</summary>
    private protected static (double Alpha, double Sigma) AlphaSigma(double s)
    {
        double a = 1 / Math.Sqrt(s * s + 1);
        return (a, s * a);
    }

    private protected static double Lambda(double s)
    {
        var (a, sg) = AlphaSigma(s);
        return Math.Log(a) - Math.Log(sg);
    }

    /// <summary>The data prediction x₀ at iteration <paramref name="index"/>.</summary>
    private protected float[] DataPrediction(float[] modelOutput, float[] sample, int index)
    {
        var (a, s) = AlphaSigma(sigmas[index]);
        return DataPrediction(modelOutput, sample, a, s);
    }

    /// <summary>The noise prediction ε at iteration <paramref name="index"/>.</summary>
    private protected float[] NoisePrediction(float[] modelOutput, float[] sample, int index)
    {
        var (a, s) = AlphaSigma(sigmas[index]);
        return NoisePrediction(modelOutput, sample, a, s);
    }

    public override float[] AddNoise(float[] original, float[] noise, int index)
    {
        CheckIndex(index);
        if (noise.Length != original.Length) throw new ArgumentException($"{Name}: noise has {noise.Length} values, the sample {original.Length}");
        var (a, s) = AlphaSigma(sigmas[index]);
        return F32.Lin((float)a, original, (float)s, noise);
    }

    /// <summary>
    /// Integer timesteps and float32 sigmas (final one included) for a multistep solver. <paramref name="last"/> is
    /// the top of the timestep range; <paramref name="sigmaMin"/>/<paramref name="sigmaMax"/> pin the Karras/exponential
    /// ends (UniPC's config can), <paramref name="karrasFinalIsLast"/> makes final_sigmas_type "sigma_min" repeat the
    /// last of those sigmas (UniPC) rather than the smallest training sigma (DPM-Solver).
    /// </summary>
    private protected (int[] Timesteps, double[] Sigmas) Schedule(int steps, int last, double? sigmaMin, double? sigmaMax, bool karrasFinalIsLast, bool roundKarras)
    {
        C.CheckSteps(steps, Name);
        var ts = Spacing.Multistep(C.Spacing, C.NumTrainTimesteps, last, steps, C.StepsOffset);
        double[] s;
        double final;
        double minFinal = C.Sigma(0);
        if (schedule == SigmaSchedule.Default)
        {
            s = ts.Select(t => ScheduleMath.Interp(t, trainSigmas)).ToArray();
            final = finalSigmaMin ? minFinal : 0;
        }
        else
        {
            // Between the ends of the whole training table (flipped: largest first).
            double lo = sigmaMin ?? trainSigmas[0], hi = sigmaMax ?? trainSigmas[^1];
            s = schedule == SigmaSchedule.Karras ? ScheduleMath.Karras(lo, hi, steps) : ScheduleMath.Exponential(lo, hi, steps);
            var t = s.Select(x => ScheduleMath.SigmaToT(x, logSigmas));
            // Karras timesteps are rounded (DPM-Solver: except for the cosine schedule); others are truncated by the int64 cast.
            ts = schedule == SigmaSchedule.Karras && roundKarras
                ? t.Select(x => (int)ScheduleMath.Round(x)).ToArray()
                : t.Select(x => (int)x).ToArray();
            final = finalSigmaMin ? (karrasFinalIsLast ? s[^1] : minFinal) : 0;
        }
        return (ts, s.Append(final).Select(x => (double)(float)x).ToArray());
    }

    /// <summary>Solves the small dense system a·x = b (Gaussian elimination with partial pivoting).</summary>
    internal static double[] Solve(double[,] a, double[] b)
    {
        int n = b.Length;
        var m = (double[,])a.Clone();
        var x = (double[])b.Clone();
        for (int col = 0; col < n; col++)
        {
            int p = col;
            for (int r = col + 1; r < n; r++)
                if (Math.Abs(m[r, col]) > Math.Abs(m[p, col])) p = r;
            if (p != col)
            {
                for (int k = 0; k < n; k++) (m[col, k], m[p, k]) = (m[p, k], m[col, k]);
                (x[col], x[p]) = (x[p], x[col]);
            }
            for (int r = col + 1; r < n; r++)
            {
                double f = m[r, col] / m[col, col];
                for (int k = col; k < n; k++) m[r, k] -= f * m[col, k];
                x[r] -= f * x[col];
            }
        }
        for (int r = n - 1; r >= 0; r--)
        {
            double s = x[r];
            for (int k = r + 1; k < n; k++) s -= m[r, k] * x[k];
            x[r] = s / m[r, r];
        }
        return x;
    }
}

/// <summary>
/// DPM-Solver++ multistep (Lu et al. 2022), in its ODE form (A1111's "DPM++ 2M") or its SDE form ("DPM++ 2M SDE"):
/// DPMSolverMultistepScheduler with algorithm_type dpmsolver++ or sde-dpmsolver++.
/// </summary>
internal sealed class DpmSolverSampler : MultistepSampler
{
    private readonly bool sde;
    private readonly int solverOrder;
    private readonly bool heunSolver;
    private readonly bool lowerOrderFinal, eulerAtFinal;
    private readonly double lambdaMinClipped;
    private readonly float[]?[] modelOutputs;
    private int lowerOrderNums;

    public DpmSolverSampler(SchedulerConfig c, bool? sde, int? solverOrder, SigmaSchedule? schedule, TimestepSpacing? spacing)
        : base(NameOf(c, sde, solverOrder), Common.Resolve(c, new ClassDefaults(TimestepSpacing.Linspace, RescaleFixesLastAlpha: true), spacing, NameOf(c, sde, solverOrder)), c, schedule)
    {
        var algorithm = c.AlgorithmType ?? "dpmsolver++";
        Common.Refuse(c, sde is null && algorithm is "dpmsolver" or "sde-dpmsolver",
            $"\"algorithm_type\": \"{algorithm}\" (deprecated in diffusers) is not supported; use dpmsolver++ or sde-dpmsolver++");
        Common.Refuse(c, c.UseLuLambdas == true && schedule is null, "\"use_lu_lambdas\": true is not supported");
        Common.Refuse(c, c.VarianceType is not null, $"\"variance_type\": \"{c.VarianceType}\" (learned variance) is not supported");
        this.sde = sde ?? algorithm == "sde-dpmsolver++";
        this.solverOrder = solverOrder ?? c.SolverOrder ?? 2;
        Common.Refuse(c, this.solverOrder > 3, $"\"solver_order\" {this.solverOrder} is not supported by DPM-Solver++ (1 to 3)");
        // diffusers maps the UniPC/DEIS solver types to midpoint.
        heunSolver = c.SolverType == "heun";
        lowerOrderFinal = c.LowerOrderFinal ?? true;
        eulerAtFinal = c.EulerAtFinal ?? false;
        lambdaMinClipped = c.LambdaMinClipped ?? double.NegativeInfinity;
        modelOutputs = new float[]?[this.solverOrder];
    }

    private static string NameOf(SchedulerConfig c, bool? sde, int? order) =>
        (sde ?? c.AlgorithmType == "sde-dpmsolver++") ? "dpmpp_2m_sde" : "dpmpp_2m";

    public override void SetTimesteps(int steps)
    {
        // lambda_min_clipped cuts the timesteps whose λ falls below it (searchsorted on the flipped λ table).
        int clipped = 0;
        for (int t = C.NumTrainTimesteps - 1; t >= 0; t--)
        {
            float ac = C.AlphasCumprod[t];
            float lambda = MathF.Log(MathF.Sqrt(ac)) - MathF.Log(MathF.Sqrt(1f - ac));
            if (lambda < lambdaMinClipped) clipped++;
            else break;
        }
        var (ts, s) = Schedule(steps, C.NumTrainTimesteps - clipped, null, null, karrasFinalIsLast: false, roundKarras: !cosine);
        timesteps = ts.Select(t => (double)t).ToArray();
        sigmas = s;
        Array.Clear(modelOutputs);
        lowerOrderNums = 0;
    }

    public override float[] Step(float[] modelOutput, int index, float[] sample, Func<float[]>? noise = null)
    {
        CheckStep(modelOutput, index, sample);
        int count = timesteps.Length;
        bool finalStep = index == count - 1;
        bool lowerFinal = finalStep && (eulerAtFinal || (lowerOrderFinal && count < 15) || !finalSigmaMin);
        bool lowerSecond = index == count - 2 && lowerOrderFinal && count < 15;

        var x0 = DataPrediction(modelOutput, sample, index);
        for (int i = 0; i < solverOrder - 1; i++) modelOutputs[i] = modelOutputs[i + 1];
        modelOutputs[^1] = x0;
        var z = sde ? Draw(noise, sample.Length) : null;

        float[] prev;
        if (solverOrder == 1 || lowerOrderNums < 1 || lowerFinal) prev = FirstOrder(x0, sample, index, z);
        else if (solverOrder == 2 || lowerOrderNums < 2 || lowerSecond) prev = SecondOrder(sample, index, z);
        else prev = ThirdOrder(sample, index, z);
        if (lowerOrderNums < solverOrder) lowerOrderNums++;
        return prev;
    }

    private float[] FirstOrder(float[] x0, float[] sample, int index, float[]? z)
    {
        double sT = sigmas[index + 1], sS = sigmas[index];
        var (aT, sigT) = AlphaSigma(sT);
        var (_, sigS) = AlphaSigma(sS);
        double h = Lambda(sT) - Lambda(sS);
        if (!sde) return F32.Lin((float)(sigT / sigS), sample, -(float)(aT * (Math.Exp(-h) - 1.0)), x0);
        return F32.Lin((float)(sigT / sigS * Math.Exp(-h)), sample, (float)(aT * (1 - Math.Exp(-2.0 * h))), x0,
                       (float)(sigT * Math.Sqrt(1.0 - Math.Exp(-2 * h))), z!);
    }

    private float[] SecondOrder(float[] sample, int index, float[]? z)
    {
        double sT = sigmas[index + 1], s0 = sigmas[index], s1 = sigmas[index - 1];
        var (aT, sigT) = AlphaSigma(sT);
        var (_, sig0) = AlphaSigma(s0);
        double lT = Lambda(sT), l0 = Lambda(s0), l1 = Lambda(s1);
        var m0 = modelOutputs[^1]!;
        var m1 = modelOutputs[^2]!;
        double h = lT - l0, h0 = l0 - l1, r0 = h0 / h;
        float inv = (float)(1.0 / r0);
        var d1 = new float[m0.Length];
        for (int i = 0; i < d1.Length; i++) d1[i] = inv * (m0[i] - m1[i]);
        if (!sde)
        {
            double c = aT * (Math.Exp(-h) - 1.0);
            double c1 = heunSolver ? aT * ((Math.Exp(-h) - 1.0) / h + 1.0) : -0.5 * c;
            return F32.Lin((float)(sigT / sig0), sample, -(float)c, m0, (float)c1, d1);
        }
        double e = aT * (1 - Math.Exp(-2.0 * h));
        double e1 = heunSolver ? aT * ((1.0 - Math.Exp(-2.0 * h)) / (-2.0 * h) + 1.0) : 0.5 * e;
        return F32.Lin((float)(sigT / sig0 * Math.Exp(-h)), sample, (float)e, m0, (float)e1, d1,
                       (float)(sigT * Math.Sqrt(1.0 - Math.Exp(-2 * h))), z!);
    }

    private float[] ThirdOrder(float[] sample, int index, float[]? z)
    {
        double sT = sigmas[index + 1], s0 = sigmas[index], s1 = sigmas[index - 1], s2 = sigmas[index - 2];
        var (aT, sigT) = AlphaSigma(sT);
        var (_, sig0) = AlphaSigma(s0);
        double lT = Lambda(sT), l0 = Lambda(s0), l1 = Lambda(s1), l2 = Lambda(s2);
        var m0 = modelOutputs[^1]!;
        var m1 = modelOutputs[^2]!;
        var m2 = modelOutputs[^3]!;
        double h = lT - l0, h0 = l0 - l1, h1 = l1 - l2, r0 = h0 / h, r1 = h1 / h;
        int n = m0.Length;
        float i0 = (float)(1.0 / r0), i1 = (float)(1.0 / r1), w = (float)(r0 / (r0 + r1)), w2 = (float)(1.0 / (r0 + r1));
        var d1 = new float[n];
        var d2 = new float[n];
        for (int i = 0; i < n; i++)
        {
            float d10 = i0 * (m0[i] - m1[i]), d11 = i1 * (m1[i] - m2[i]);
            d1[i] = d10 + w * (d10 - d11);
            d2[i] = w2 * (d10 - d11);
        }
        if (!sde)
        {
            return F32.Lin((float)(sigT / sig0), sample, -(float)(aT * (Math.Exp(-h) - 1.0)), m0,
                           (float)(aT * ((Math.Exp(-h) - 1.0) / h + 1.0)), d1,
                           -(float)(aT * ((Math.Exp(-h) - 1.0 + h) / (h * h) - 0.5)), d2);
        }
        var r = F32.Lin((float)(sigT / sig0 * Math.Exp(-h)), sample, (float)(aT * (1.0 - Math.Exp(-2.0 * h))), m0,
                        (float)(aT * ((1.0 - Math.Exp(-2.0 * h)) / (-2.0 * h) + 1.0)), d1,
                        (float)(aT * ((1.0 - Math.Exp(-2.0 * h) - 2.0 * h) / (4 * h * h) - 0.5)), d2);
        float c = (float)(sigT * Math.Sqrt(1.0 - Math.Exp(-2 * h)));
        for (int i = 0; i < n; i++) r[i] += c * z![i];
        return r;
    }
}

/// <summary>
/// UniPC (Zhao et al. 2023): a multistep predictor (UniP) with a corrector (UniC) that reuses the next model
/// evaluation, B(h) = e^h - 1 ("bh2") or h ("bh1"). UniPCMultistepScheduler.
/// </summary>
internal sealed class UniPcSampler : MultistepSampler
{
    private readonly int solverOrder;
    private readonly bool bh1;
    private readonly bool predictX0;
    private readonly bool lowerOrderFinal;
    private readonly HashSet<int> disableCorrector;
    private readonly double? sigmaMin, sigmaMax;
    private readonly float[]?[] modelOutputs;
    private float[]? lastSample;
    private int lowerOrderNums;
    private int thisOrder;

    public UniPcSampler(SchedulerConfig c, SigmaSchedule? schedule, TimestepSpacing? spacing)
        : base("unipc", Common.Resolve(c, new ClassDefaults(TimestepSpacing.Linspace, RescaleFixesLastAlpha: true), spacing, "unipc"), c, schedule)
    {
        solverOrder = c.SolverOrder ?? 2;
        bh1 = c.SolverType == "bh1"; // midpoint, heun and logrho map to bh2 in diffusers
        predictX0 = c.PredictX0 ?? true;
        lowerOrderFinal = c.LowerOrderFinal ?? true;
        disableCorrector = [.. c.DisableCorrector ?? []];
        sigmaMin = c.SigmaMin;
        sigmaMax = c.SigmaMax;
        modelOutputs = new float[]?[solverOrder];
    }

    public override void SetTimesteps(int steps)
    {
        var (ts, s) = Schedule(steps, C.NumTrainTimesteps, sigmaMin, sigmaMax, karrasFinalIsLast: true, roundKarras: true);
        timesteps = ts.Select(t => (double)t).ToArray();
        sigmas = s;
        Array.Clear(modelOutputs);
        lastSample = null;
        lowerOrderNums = 0;
        thisOrder = 0;
    }

    public override float[] Step(float[] modelOutput, int index, float[] sample, Func<float[]>? noise = null)
    {
        CheckStep(modelOutput, index, sample);
        bool useCorrector = index > 0 && !disableCorrector.Contains(index - 1) && lastSample is not null;
        var converted = predictX0 ? DataPrediction(modelOutput, sample, index) : NoisePrediction(modelOutput, sample, index);
        if (useCorrector) sample = Corrector(converted, lastSample!, sample, thisOrder, index);

        for (int i = 0; i < solverOrder - 1; i++) modelOutputs[i] = modelOutputs[i + 1];
        modelOutputs[^1] = converted;

        int order = lowerOrderFinal ? Math.Min(solverOrder, timesteps.Length - index) : solverOrder;
        thisOrder = Math.Min(order, lowerOrderNums + 1); // warm-up: the order grows with the history
        lastSample = sample;
        var prev = Predictor(sample, thisOrder, index);
        if (lowerOrderNums < solverOrder) lowerOrderNums++;
        return prev;
    }

    /// <summary>The coefficients shared by UniP and UniC: h·φ₁, B(h), the ratios r_k and the b vector.</summary>
    private (double HPhi1, double Bh, double[] Rks, double[] B) Coefficients(double h, IReadOnlyList<double> rks, int order)
    {
        double hh = predictX0 ? -h : h;
        double hPhi1 = Expm1(hh);
        double hPhiK = hPhi1 / hh - 1;
        double factorial = 1;
        double bh = bh1 ? hh : hPhi1;
        var all = rks.Append(1.0).ToArray();
        var b = new double[order];
        for (int i = 1; i <= order; i++)
        {
            b[i - 1] = hPhiK * factorial / bh;
            factorial *= i + 1;
            hPhiK = hPhiK / hh - 1 / factorial;
        }
        return (hPhi1, bh, all, b);
    }

    /// <summary>e^x - 1 without cancellation for small x (Kahan's method); .NET has no expm1.</summary>
    internal static double Expm1(double x)
    {
        if (double.IsPositiveInfinity(x)) return x;
        double u = Math.Exp(x);
        if (u == 1.0) return x;
        double um1 = u - 1.0;
        if (um1 == -1.0) return -1.0;
        return um1 * x / Math.Log(u);
    }

    private static double[,] Vandermonde(double[] rks, int n)
    {
        var r = new double[n, n];
        for (int i = 0; i < n; i++)
        for (int k = 0; k < n; k++)
            r[i, k] = Math.Pow(rks[k], i);
        return r;
    }

    /// <summary>
    /// For the k = 1 … order-1 older model outputs m_k (taken at sigmas[at - k]): r_k = (λ_k - λ₀) / h and
    /// D_k = (m_k - m₀) / r_k. UniP works at the current index, UniC one behind it.
    /// </summary>
    private (List<double> Rks, List<float[]> D1s) Differences(int order, int at, double l0, double h, float[] m0)
    {
        var rks = new List<double>();
        var d1s = new List<float[]>();
        for (int k = 1; k < order; k++)
        {
            var mk = modelOutputs[^(k + 1)]!;
            double rk = (Lambda(sigmas[at - k]) - l0) / h;
            rks.Add(rk);
            float r = (float)rk;
            var d = new float[m0.Length];
            for (int i = 0; i < d.Length; i++) d[i] = (mk[i] - m0[i]) / r;
            d1s.Add(d);
        }
        return (rks, d1s);
    }

    private float[] Predictor(float[] x, int order, int index)
    {
        var m0 = modelOutputs[^1]!;
        double sT = sigmas[index + 1], s0 = sigmas[index];
        var (aT, sigT) = AlphaSigma(sT);
        var (a0, sig0) = AlphaSigma(s0);
        double l0 = Lambda(s0), h = Lambda(sT) - l0;
        var (rks, d1s) = Differences(order, index, l0, h, m0);
        var (hPhi1, bh, all, b) = Coefficients(h, rks, order);
        double[]? rhos = null;
        if (d1s.Count > 0)
        {
            rhos = order == 2 ? [0.5]
                : Solve(Vandermonde(all, order - 1), b[..(order - 1)]);
        }
        var xt = predictX0
            ? F32.Lin((float)(sigT / sig0), x, -(float)(aT * hPhi1), m0)
            : F32.Lin((float)(aT / a0), x, -(float)(sigT * hPhi1), m0);
        if (rhos is null) return xt;
        var res = Combine(rhos, d1s, d1s.Count);
        float c = (float)((predictX0 ? aT : sigT) * bh);
        for (int i = 0; i < xt.Length; i++) xt[i] -= c * res[i];
        return xt;
    }

    private float[] Corrector(float[] modelT, float[] x, float[] xT, int order, int index)
    {
        var m0 = modelOutputs[^1]!;
        double sT = sigmas[index], s0 = sigmas[index - 1];
        var (aT, sigT) = AlphaSigma(sT);
        var (a0, sig0) = AlphaSigma(s0);
        double l0 = Lambda(s0), h = Lambda(sT) - l0;
        var (rks, d1s) = Differences(order, index - 1, l0, h, m0);
        var (hPhi1, bh, all, b) = Coefficients(h, rks, order);
        double[] rhos = order == 1 ? [0.5] : Solve(Vandermonde(all, order), b);
        var xt = predictX0
            ? F32.Lin((float)(sigT / sig0), x, -(float)(aT * hPhi1), m0)
            : F32.Lin((float)(aT / a0), x, -(float)(sigT * hPhi1), m0);
        float last = (float)rhos[^1];
        var corr = d1s.Count > 0 ? Combine(rhos, d1s, d1s.Count) : null;
        float c = (float)((predictX0 ? aT : sigT) * bh);
        for (int i = 0; i < xt.Length; i++)
        {
            float d1t = modelT[i] - m0[i];
            float inner = corr is null ? last * d1t : corr[i] + last * d1t;
            xt[i] -= c * inner;
        }
        return xt;
    }

    /// <summary>Σ_k ρ_k·D_k over the first <paramref name="count"/> terms (the einsum "k,bk…->b…").</summary>
    private static float[] Combine(double[] rhos, List<float[]> d, int count)
    {
        var r = new float[d[0].Length];
        for (int k = 0; k < count; k++)
        {
            float w = (float)rhos[k];
            for (int i = 0; i < r.Length; i++) r[i] = k == 0 ? w * d[k][i] : r[i] + w * d[k][i];
        }
        return r;
    }
}
