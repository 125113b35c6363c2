using System.Diagnostics;
using StableDiffusion.Pipelines.Images;
using StableDiffusion.Runtime;

namespace StableDiffusion.Pipelines;

/// <summary>What to generate. Sizes are image pixels; the latents are smaller by the VAE's factor (8 for SD).</summary>
public sealed record GenerationRequest
{
    public required string Prompt { get; init; }
    public string NegativePrompt { get; init; } = "";
    public int Steps { get; init; } = 20;
    /// <summary>Classifier-free guidance scale; at 1 or below the unconditional pass is skipped, as in diffusers.</summary>
    public float GuidanceScale { get; init; } = 7.5f;
    public ulong Seed { get; init; }
    public int Width { get; init; } = 512;
    public int Height { get; init; } = 512;
    /// <summary>Images per prompt, generated together from one draw of noise (diffusers' num_images_per_prompt).</summary>
    public int BatchSize { get; init; } = 1;
    /// <summary>Image-to-image and inpainting start from this image (resized to Width × Height if it differs).</summary>
    public RgbImage? InitImage { get; init; }
    /// <summary>Inpainting: white (luma ≥ ½) is repainted, black kept. Needs <see cref="InitImage"/>.</summary>
    public RgbImage? Mask { get; init; }
    /// <summary>How much of the schedule an init image goes through: 1 starts from pure noise.</summary>
    public float Strength { get; init; } = 0.75f;

    // Two-stage SDXL (base, then refiner on the same latents): diffusers' denoising_end / denoising_start.

    /// <summary>Stop once this fraction of the schedule is done: the timesteps ≥ round(T − end·T) run.</summary>
    public float? DenoisingEnd { get; init; }
    /// <summary>Continue <see cref="Latents"/> from this fraction of the schedule: the timesteps &lt; round(T − start·T) run.</summary>
    public float? DenoisingStart { get; init; }
    /// <summary>Latents [batch, h, w, C] to continue from (with <see cref="DenoisingStart"/>); no noise is added to them.</summary>
    public float[]? Latents { get; init; }
    /// <summary>Stop at the latents (diffusers' output_type="latent"): no VAE decode, no images.</summary>
    public bool LatentsOnly { get; init; }
    /// <summary>The SDXL refiner's aesthetic-score conditioning (diffusers' defaults).</summary>
    public float AestheticScore { get; init; } = 6f;
    public float NegativeAestheticScore { get; init; } = 2.5f;
}

public enum GenerationMode
{
    TextToImage,
    ImageToImage,
    Inpaint,
}

/// <summary>Reported after every denoising step.</summary>
public readonly record struct StepProgress(int Step, int Steps, double Timestep, TimeSpan StepTime)
{
    /// <summary>The latents after this step, channels-last [batch, h, w, channels] (for previews; do not modify).</summary>
    public float[]? Latents { get; init; }
    public int LatentHeight { get; init; }
    public int LatentWidth { get; init; }
}

/// <summary>The images, the final latents (channels-last [batch, h, w, channels], before decoding) and what took how long.</summary>
public sealed record GenerationResult(
    IReadOnlyList<RgbImage> Images,
    float[] Latents,
    int LatentHeight,
    int LatentWidth,
    int LatentChannels,
    StageTimings Timings,
    IReadOnlyList<string> Notes);

/// <summary>Wall time per stage, in order: model loads, the text encoder, each UNet step, VAE encode/decode.</summary>
public sealed class StageTimings
{
    private readonly List<(string Stage, TimeSpan Time)> stages = [];

    public IReadOnlyList<(string Stage, TimeSpan Time)> Stages => stages;

    public const string UnetStep = "unet step";

    public void Add(string stage, TimeSpan time) => stages.Add((stage, time));

    /// <summary>Runs <paramref name="work"/> and records its wall time (device work is synchronous: results are downloaded).</summary>
    public T Measure<T>(string stage, Func<T> work)
    {
        var clock = Stopwatch.StartNew();
        var result = work();
        Add(stage, clock.Elapsed);
        return result;
    }

    public IEnumerable<TimeSpan> UnetSteps => stages.Where(s => s.Stage == UnetStep).Select(s => s.Time);
}

/// <summary>How a pipeline holds its models.</summary>
public sealed record PipelineOptions
{
    /// <summary>Precision of the text encoder and UNet weights and activations (the VAE follows its force_upcast).</summary>
    public DType DType { get; init; } = DType.F32;

    /// <summary>A tokenizer/ folder to use instead of the model's (single files carry none).</summary>
    public string? TokenizerDirectory { get; init; }

    /// <summary>A1111's clip skip: 1 = the text encoder's last layer, 2 = the penultimate; null = the family's own (SD1 1, SD2 2).</summary>
    public int? ClipSkip { get; init; }

    /// <summary>A folder of textual-inversion embeddings (.pt, .safetensors, .bin), named in prompts by file name.</summary>
    public string? EmbeddingsDirectory { get; init; }

    /// <summary>
    /// Free each model as soon as a generation no longer needs it (text encoder after the prompt, UNet after the last
    /// step, VAE after decoding), so the peak is the largest model rather than all three; the next generation loads
    /// them again. For one-shot use such as the command line.
    /// </summary>
    public bool ReleaseModelsAfterUse { get; init; }

    /// <summary>LoRAs merged into the UNet and text encoder weights as they load (the files stay open meanwhile).</summary>
    public IReadOnlyList<IO.LoraFile> Loras { get; init; } = [];

    /// <summary>What the UNet predicts, overriding the model's scheduler config or (SD2.x single files) the detection.</summary>
    public PredictionType? PredictionType { get; init; }

    /// <summary>Receives a line on what was decided about the model (the detected prediction type).</summary>
    public Action<string>? Notice { get; init; }
    /// <summary>A tiny autoencoder (TAESD: a diffusers AutoencoderTiny folder or .safetensors, or taesd_*.pth) that decodes and encodes instead of the VAE.</summary>
    public string? TinyAutoencoder { get; init; }

    /// <summary>Decode and encode in overlapping tiles (<see cref="VaeTiling"/>) even when the whole image would fit the memory budget.</summary>
    public bool VaeTiling { get; init; }

    /// <summary>The tile side in image pixels (a multiple of 64).</summary>
    public int VaeTilePixels { get; init; } = Pipelines.VaeTiling.DefaultTilePixels;

    /// <summary>Bytes the VAE's activations may take before it tiles on its own; null: what the device has free.</summary>
    public long? MemoryBudgetBytes { get; init; }

    /// <summary>A VAE to use instead of the model's (<c>--vae</c>); it must stay open while the pipeline is used.</summary>
    public VaeOverride? Vae { get; init; }
}
