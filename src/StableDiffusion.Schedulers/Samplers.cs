namespace StableDiffusion.Schedulers;

/// <summary>
/// Creates samplers by the names A1111 and ComfyUI users write (<c>euler_a</c>, <c>dpmpp_2m</c>, "DPM++ 2M Karras",
/// <c>uni_pc</c>, …) or by diffusers class name (<c>EulerAncestralDiscreteScheduler</c>, …).
/// </summary>
public static class Samplers
{
    /// <summary>The canonical names, in the order they are listed to users.</summary>
    public static IReadOnlyList<string> Names { get; } =
        ["euler", "euler_a", "heun", "lms", "dpmpp_2m", "dpmpp_2m_sde", "unipc", "lcm", "ddim", "pndm"];

    /// <summary>Samplers that step through timesteps only: Karras/exponential sigma schedules do not apply to them.</summary>
    private static readonly HashSet<string> TimestepOnly = ["ddim", "pndm", "lcm"];

    private static readonly Dictionary<string, string> Aliases = new()
    {
        ["euler"] = "euler", ["k_euler"] = "euler", ["eulerdiscretescheduler"] = "euler",
        ["euler_a"] = "euler_a", ["euler_ancestral"] = "euler_a", ["k_euler_a"] = "euler_a", ["k_euler_ancestral"] = "euler_a",
        ["eulerancestraldiscretescheduler"] = "euler_a",
        ["heun"] = "heun", ["k_heun"] = "heun", ["heundiscretescheduler"] = "heun",
        ["lms"] = "lms", ["k_lms"] = "lms", ["lmsdiscretescheduler"] = "lms",
        ["dpmpp_2m"] = "dpmpp_2m", ["k_dpmpp_2m"] = "dpmpp_2m",
        ["dpmpp_2m_sde"] = "dpmpp_2m_sde", ["k_dpmpp_2m_sde"] = "dpmpp_2m_sde",
        ["dpmsolvermultistepscheduler"] = DpmClass,
        ["unipc"] = "unipc", ["uni_pc"] = "unipc", ["unipcmultistepscheduler"] = "unipc",
        ["lcm"] = "lcm", ["lcmscheduler"] = "lcm",
        ["ddim"] = "ddim", ["ddimscheduler"] = "ddim",
        ["pndm"] = "pndm", ["plms"] = "pndm", ["pndmscheduler"] = "pndm",
    };

    // DPMSolverMultistepScheduler: 2M or 2M SDE by the config's algorithm_type, with the config's solver order.
    private const string DpmClass = "DPMSolverMultistepScheduler";

    /// <summary>
    /// Makes a sampler configured from <paramref name="config"/>. <paramref name="schedule"/> and
    /// <paramref name="spacing"/>, when given, replace the config's use_karras_sigmas/use_exponential_sigmas and
    /// timestep_spacing. A name may end in "karras" or "exponential" ("DPM++ 2M Karras").
    /// </summary>
    /// <exception cref="UsageException">an unknown name, or a schedule the sampler cannot use</exception>
    /// <exception cref="ConfigException">a config value the sampler cannot honour</exception>
    public static IScheduler Create(string name, SchedulerConfig config, SigmaSchedule? schedule = null, TimestepSpacing? spacing = null)
    {
        var (key, named) = Resolve(name);
        if (named is { } n)
        {
            if (schedule is { } s && s != n)
                throw new UsageException($"sampler '{name}' names the {n.ToString().ToLowerInvariant()} schedule but {s.ToString().ToLowerInvariant()} was asked for");
            schedule = n;
        }
        string canonical = key == DpmClass ? (config.AlgorithmType == "sde-dpmsolver++" ? "dpmpp_2m_sde" : "dpmpp_2m") : key;
        if (TimestepOnly.Contains(canonical) && schedule is SigmaSchedule.Karras or SigmaSchedule.Exponential)
            throw new UsageException($"sampler '{canonical}' steps through timesteps and has no sigma schedule; " +
                                     $"the {schedule.ToString()!.ToLowerInvariant()} schedule works with {string.Join(", ", Names.Where(x => !TimestepOnly.Contains(x)))}");
        if (canonical == "lcm" && spacing is not null)
            throw new UsageException("sampler 'lcm' takes its timesteps from the distillation schedule (original_inference_steps); timestep spacing does not apply");
        // The timestep-only samplers have no sigma schedule: "default" is what they do anyway.
        if (TimestepOnly.Contains(canonical)) schedule = null;
        return key switch
        {
            "euler" => new EulerSampler(config, schedule, spacing),
            "euler_a" => new EulerAncestralSampler(config, schedule, spacing),
            "heun" => new HeunSampler(config, schedule, spacing),
            "lms" => new LmsSampler(config, schedule, spacing),
            "dpmpp_2m" => new DpmSolverSampler(config, sde: false, solverOrder: 2, schedule, spacing),
            "dpmpp_2m_sde" => new DpmSolverSampler(config, sde: true, solverOrder: 2, schedule, spacing),
            DpmClass => new DpmSolverSampler(config, sde: null, solverOrder: null, schedule, spacing),
            "unipc" => new UniPcSampler(config, schedule, spacing),
            "lcm" => new LcmSampler(config, spacing),
            "ddim" => new DdimSampler(config, spacing),
            _ => new PndmSampler(config, spacing),
        };
    }

    /// <summary>The canonical name for a user-written or diffusers class name, or null when unknown.</summary>
    public static string? Canonical(string name)
    {
        try
        {
            var (key, _) = Resolve(name);
            return key == DpmClass ? "dpmpp_2m" : key;
        }
        catch (UsageException)
        {
            return null;
        }
    }

    /// <summary>Parses "default", "karras" or "exponential".</summary>
    public static SigmaSchedule ParseSchedule(string s) => s.Trim().ToLowerInvariant() switch
    {
        "default" or "normal" => SigmaSchedule.Default,
        "karras" => SigmaSchedule.Karras,
        "exponential" => SigmaSchedule.Exponential,
        _ => throw new UsageException($"unknown schedule '{s}'; valid: default, karras, exponential"),
    };

    /// <summary>Parses "leading", "linspace" or "trailing".</summary>
    public static TimestepSpacing ParseSpacing(string s) => s.Trim().ToLowerInvariant() switch
    {
        "leading" => TimestepSpacing.Leading,
        "linspace" => TimestepSpacing.Linspace,
        "trailing" => TimestepSpacing.Trailing,
        _ => throw new UsageException($"unknown timestep spacing '{s}'; valid: leading, linspace, trailing"),
    };

    private static (string Key, SigmaSchedule? Schedule) Resolve(string name)
    {
        // "DPM++ 2M Karras" → "dpmpp_2m_karras"; "Euler a" → "euler_a"; "sample_euler_ancestral" (k-diffusion) → "euler_ancestral".
        var s = name.Trim().ToLowerInvariant().Replace("++", "pp").Replace(' ', '_').Replace('-', '_');
        if (s.StartsWith("sample_", StringComparison.Ordinal)) s = s["sample_".Length..];
        SigmaSchedule? schedule = null;
        foreach (var (suffix, value) in new[] { ("_karras", SigmaSchedule.Karras), ("_exponential", SigmaSchedule.Exponential) })
        {
            if (s.EndsWith(suffix, StringComparison.Ordinal) && s.Length > suffix.Length)
            {
                s = s[..^suffix.Length];
                schedule = value;
            }
        }
        if (Aliases.TryGetValue(s, out var key)) return (key, schedule);
        throw new UsageException($"unknown sampler '{name}'; valid: {string.Join(", ", Names)} (or a diffusers class name such as EulerAncestralDiscreteScheduler)");
    }
}
