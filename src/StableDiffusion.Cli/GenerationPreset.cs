using StableDiffusion.Schedulers;

namespace StableDiffusion.Cli;

/// <summary>
/// <c>--preset turbo|lcm|default</c>: the settings distilled models are run with, applied where the user gave none.
/// turbo (SDXL-Turbo, SD-Turbo): trailing timestep spacing, CFG 0, 1 step (at most 4), 512² by default; lcm (LCM
/// and LCM-LoRA models): the LCM sampler, 4 steps, CFG 1. CFG ≤ 1 runs no unconditional pass at all. Without
/// <c>--preset</c> the model's scheduler config implies one: trailing spacing → turbo, LCMScheduler → lcm.
/// </summary>
internal sealed record GenerationPreset(string Name, int Steps, float Cfg, string? Sampler, TimestepSpacing? Spacing, int? Size, int MaxSteps)
{
    public static readonly GenerationPreset Turbo = new("turbo", 1, 0f, null, TimestepSpacing.Trailing, 512, 4);
    public static readonly GenerationPreset Lcm = new("lcm", 4, 1f, "lcm", null, null, 1000);

    public static readonly string[] Names = ["turbo", "lcm", "default"];

    /// <summary>The preset asked for, or (none asked for) the one the model's scheduler config implies; null for default.</summary>
    public static GenerationPreset? Resolve(string? asked, string schedulerConfigJson, out bool implied)
    {
        implied = asked is null;
        switch (asked)
        {
            case "turbo": return Turbo;
            case "lcm": return Lcm;
            case "default": return null;
        }
        var config = SchedulerConfig.Parse(schedulerConfigJson, "the model's scheduler config");
        if (config.ClassName == "LCMScheduler") return Lcm;
        return config.TimestepSpacing == "trailing" ? Turbo : null;
    }
}
