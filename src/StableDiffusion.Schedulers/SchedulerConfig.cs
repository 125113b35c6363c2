using System.Globalization;
using System.Text.Json;

namespace StableDiffusion.Schedulers;

/// <summary>
/// The keys of a diffusers <c>scheduler_config.json</c> that the samplers read. A null property means the key was not
/// in the file: each sampler then applies the default of its own diffusers class, as diffusers' <c>from_config</c>
/// does (SD1.5's file names no <c>timestep_spacing</c>, so DDIM/PNDM take "leading" and Euler/DPM++ "linspace").
/// Unknown keys are ignored; a known key with a value of the wrong type or outside its set is a one-line
/// <see cref="ConfigException"/> naming the file and the key.
/// </summary>
public sealed record SchedulerConfig
{
    /// <summary>Where the values came from (a file path, or a description), used in error messages.</summary>
    public string Source { get; init; } = "scheduler config";

    /// <summary>The diffusers class the file was written for (<c>_class_name</c>).</summary>
    public string? ClassName { get; init; }

    public int? NumTrainTimesteps { get; init; }
    public double? BetaStart { get; init; }
    public double? BetaEnd { get; init; }
    public string? BetaSchedule { get; init; }
    public double[]? TrainedBetas { get; init; }
    public bool? RescaleBetasZeroSnr { get; init; }
    public string? PredictionType { get; init; }
    public string? TimestepSpacing { get; init; }
    public int? StepsOffset { get; init; }

    // DDIM, PNDM, LCM, Heun
    public bool? ClipSample { get; init; }
    public double? ClipSampleRange { get; init; }
    public bool? SetAlphaToOne { get; init; }
    public bool? SkipPrkSteps { get; init; }
    public bool? Thresholding { get; init; }

    // sigma schedules (Euler, Heun, LMS, DPM-Solver, UniPC)
    public bool? UseKarrasSigmas { get; init; }
    public bool? UseExponentialSigmas { get; init; }
    public bool? UseBetaSigmas { get; init; }
    public bool? UseLuLambdas { get; init; }
    public bool? UseFlowSigmas { get; init; }
    public double? SigmaMin { get; init; }
    public double? SigmaMax { get; init; }
    public string? InterpolationType { get; init; }
    public string? TimestepType { get; init; }
    public string? FinalSigmasType { get; init; }

    // DPM-Solver, UniPC
    public int? SolverOrder { get; init; }
    public string? AlgorithmType { get; init; }
    public string? SolverType { get; init; }
    public bool? LowerOrderFinal { get; init; }
    public bool? EulerAtFinal { get; init; }
    public double? LambdaMinClipped { get; init; }
    public string? VarianceType { get; init; }
    public bool? PredictX0 { get; init; }
    public int[]? DisableCorrector { get; init; }

    // LCM
    public int? OriginalInferenceSteps { get; init; }
    public double? TimestepScaling { get; init; }

    /// <summary>
    /// The scheduler of the Stable Diffusion 1.5 repository (scheduler/scheduler_config.json), for single-file
    /// checkpoints that carry no scheduler config. SD2.x and SDXL ship the same noise schedule.
    /// </summary>
    public static SchedulerConfig StableDiffusion15 { get; } = new()
    {
        Source = "the Stable Diffusion 1.5 scheduler defaults",
        ClassName = "PNDMScheduler",
        NumTrainTimesteps = 1000,
        BetaStart = 0.00085,
        BetaEnd = 0.012,
        BetaSchedule = "scaled_linear",
        SetAlphaToOne = false,
        SkipPrkSteps = true,
        StepsOffset = 1,
        ClipSample = false,
    };

    /// <summary>Reads a <c>scheduler_config.json</c>.</summary>
    public static SchedulerConfig Load(string path)
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (FileNotFoundException)
        {
            throw new ConfigException($"{path}: no such scheduler config file");
        }
        catch (DirectoryNotFoundException)
        {
            throw new ConfigException($"{path}: no such scheduler config file");
        }
        catch (IOException e)
        {
            throw new ConfigException($"{path}: cannot read the scheduler config ({e.Message})", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new ConfigException($"{path}: cannot read the scheduler config ({e.Message})", e);
        }
        return Parse(text, path);
    }

    /// <summary>Parses the JSON text of a scheduler config; <paramref name="source"/> names it in errors.</summary>
    public static SchedulerConfig Parse(string json, string source = "scheduler config")
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(QuotePythonLiterals(json), new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new ConfigException($"{source}: not valid JSON ({FirstLine(e.Message)})", e);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new ConfigException($"{source}: a scheduler config is a JSON object, not {Kind(root)}");
            var r = new Reader(root, source);
            return new SchedulerConfig
            {
                Source = source,
                ClassName = r.String("_class_name"),
                NumTrainTimesteps = r.Int("num_train_timesteps", min: 2),
                BetaStart = r.Double("beta_start", positive: true),
                BetaEnd = r.Double("beta_end", positive: true),
                BetaSchedule = r.String("beta_schedule", "linear", "scaled_linear", "squaredcos_cap_v2"),
                TrainedBetas = r.Doubles("trained_betas"),
                RescaleBetasZeroSnr = r.Bool("rescale_betas_zero_snr"),
                PredictionType = r.String("prediction_type", "epsilon", "v_prediction", "sample", "original_sample", "flow_prediction"),
                TimestepSpacing = r.String("timestep_spacing", "leading", "linspace", "trailing"),
                StepsOffset = r.Int("steps_offset", min: 0),
                ClipSample = r.Bool("clip_sample"),
                ClipSampleRange = r.Double("clip_sample_range", positive: true),
                SetAlphaToOne = r.Bool("set_alpha_to_one"),
                SkipPrkSteps = r.Bool("skip_prk_steps"),
                Thresholding = r.Bool("thresholding"),
                UseKarrasSigmas = r.Bool("use_karras_sigmas"),
                UseExponentialSigmas = r.Bool("use_exponential_sigmas"),
                UseBetaSigmas = r.Bool("use_beta_sigmas"),
                UseLuLambdas = r.Bool("use_lu_lambdas"),
                UseFlowSigmas = r.Bool("use_flow_sigmas"),
                SigmaMin = r.Double("sigma_min", positive: true),
                SigmaMax = r.Double("sigma_max", positive: true),
                InterpolationType = r.String("interpolation_type", "linear", "log_linear"),
                TimestepType = r.String("timestep_type", "discrete", "continuous"),
                FinalSigmasType = r.String("final_sigmas_type", "zero", "sigma_min"),
                SolverOrder = r.Int("solver_order", min: 1),
                AlgorithmType = r.String("algorithm_type", "dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver", "deis"),
                SolverType = r.String("solver_type", "midpoint", "heun", "bh1", "bh2", "logrho"),
                LowerOrderFinal = r.Bool("lower_order_final"),
                EulerAtFinal = r.Bool("euler_at_final"),
                LambdaMinClipped = r.Double("lambda_min_clipped", positive: false, allowInfinity: true),
                VarianceType = r.String("variance_type", "learned", "learned_range"),
                PredictX0 = r.Bool("predict_x0"),
                DisableCorrector = r.Ints("disable_corrector"),
                OriginalInferenceSteps = r.Int("original_inference_steps", min: 1),
                TimestepScaling = r.Double("timestep_scaling", positive: true),
            };
        }
    }

    /// <summary>
    /// Python's json module writes float('-inf') as a bare <c>-Infinity</c> (diffusers saves DPM-Solver's
    /// lambda_min_clipped that way), which is not JSON: quote such tokens outside strings so they parse.
    /// </summary>
    internal static string QuotePythonLiterals(string json)
    {
        if (!json.Contains("Infinity", StringComparison.Ordinal) && !json.Contains("NaN", StringComparison.Ordinal)) return json;
        var sb = new System.Text.StringBuilder(json.Length + 16);
        bool inString = false;
        for (int i = 0; i < json.Length; i++)
        {
            char c = json[i];
            if (inString)
            {
                sb.Append(c);
                if (c == '\\' && i + 1 < json.Length) sb.Append(json[++i]);
                else if (c == '"') inString = false;
                continue;
            }
            if (c == '"')
            {
                inString = true;
                sb.Append(c);
                continue;
            }
            string? token = null;
            foreach (var t in (ReadOnlySpan<string>)["-Infinity", "Infinity", "NaN"])
                if (string.CompareOrdinal(json, i, t, 0, t.Length) == 0) { token = t; break; }
            if (token is null)
            {
                sb.Append(c);
                continue;
            }
            sb.Append('"').Append(token).Append('"');
            i += token.Length - 1;
        }
        return sb.ToString();
    }

    private static string FirstLine(string s) => s.Split('\n')[0].TrimEnd('\r');

    private static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Array => "an array",
        JsonValueKind.Object => "an object",
        JsonValueKind.String => $"the string \"{e.GetString()}\"",
        JsonValueKind.Number => $"the number {e.GetRawText()}",
        JsonValueKind.True or JsonValueKind.False => e.GetRawText(),
        _ => "null",
    };

    /// <summary>Typed access to the keys of the root object; JSON null counts as "not given" (diffusers writes nulls).</summary>
    private readonly struct Reader(JsonElement root, string source)
    {
        private JsonElement? Get(string key) =>
            root.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

        private ConfigException Bad(string key, string expected, JsonElement v) =>
            new($"{source}: \"{key}\" must be {expected}, not {Kind(v)}");

        public string? String(string key, params string[] allowed)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind != JsonValueKind.String) throw Bad(key, allowed.Length > 0 ? "one of " + string.Join(", ", allowed) : "a string", v);
            var s = v.GetString()!;
            if (allowed.Length > 0 && !allowed.Contains(s))
                throw Bad(key, "one of " + string.Join(", ", allowed), v);
            return s;
        }

        public bool? Bool(string key)
        {
            if (Get(key) is not { } v) return null;
            return v.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Bad(key, "true or false", v),
            };
        }

        public int? Int(string key, int min)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int i) || i < min)
                throw Bad(key, $"an integer of at least {min}", v);
            return i;
        }

        public double? Double(string key, bool positive, bool allowInfinity = false)
        {
            if (Get(key) is not { } v) return null;
            double d;
            // Python's json writes -inf as -Infinity, which System.Text.Json reads only as a string: take both.
            if (allowInfinity && v.ValueKind == JsonValueKind.String &&
                double.TryParse(v.GetString(), NumberStyles.Float, CultureInfo.InvariantCulture, out var fromText))
                d = fromText;
            else if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out d))
                throw Bad(key, positive ? "a positive number" : "a number", v);
            if (double.IsNaN(d) || (positive && d <= 0) || (!allowInfinity && double.IsInfinity(d)))
                throw Bad(key, positive ? "a positive number" : "a number", v);
            return d;
        }

        public double[]? Doubles(string key)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind != JsonValueKind.Array) throw Bad(key, "an array of numbers", v);
            var list = new List<double>();
            foreach (var e in v.EnumerateArray())
            {
                if (e.ValueKind != JsonValueKind.Number || !e.TryGetDouble(out var d) || !double.IsFinite(d) || d <= 0 || d >= 1)
                    throw new ConfigException($"{source}: \"{key}\" must hold numbers between 0 and 1, not {Kind(e)}");
                list.Add(d);
            }
            if (list.Count < 2) throw new ConfigException($"{source}: \"{key}\" must hold at least 2 betas");
            return list.ToArray();
        }

        public int[]? Ints(string key)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind != JsonValueKind.Array) throw Bad(key, "an array of integers", v);
            var list = new List<int>();
            foreach (var e in v.EnumerateArray())
            {
                if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out var i))
                    throw new ConfigException($"{source}: \"{key}\" must hold integers, not {Kind(e)}");
                list.Add(i);
            }
            return list.ToArray();
        }
    }
}
