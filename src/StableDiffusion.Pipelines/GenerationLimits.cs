namespace StableDiffusion.Pipelines;

/// <summary>
/// What a generation request may ask for, shared by <c>sd generate</c> and <c>sd serve</c> so both refuse the same
/// things. The model may narrow them further (<see cref="StableDiffusionPipeline.Validate"/>: its size multiple).
/// </summary>
public static class GenerationLimits
{
    public const int MinSteps = 1, MaxSteps = 1000;
    public const float MinCfg = 0f, MaxCfg = 100f;
    public const int MinBatch = 1, MaxBatch = 64;
    /// <summary>Image sides: multiples of 8 (the VAE's factor) up to 8192.</summary>
    public const int MinSide = 8, MaxSide = 8192, SideMultiple = 8;
    /// <summary>Prompt length in characters; CLIP reads 77 tokens, so anything near this is a mistake or an attack.</summary>
    public const int MaxPromptChars = 20_000;

    public static bool IsSide(int v) => v >= MinSide && v <= MaxSide && v % SideMultiple == 0;
}
