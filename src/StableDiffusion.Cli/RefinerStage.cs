using StableDiffusion.IO;
using StableDiffusion.Pipelines;
using StableDiffusion.Runtime;
using StableDiffusion.Schedulers;

namespace StableDiffusion.Cli;

/// <summary>
/// <c>--refiner M</c>: the base model denoises the first <c>--refiner-switch</c> of the schedule and stops at its
/// latents (diffusers' denoising_end with output_type "latent"); the SDXL refiner continues those latents through the
/// rest of its own schedule of the same length (denoising_start) and decodes them.
/// </summary>
internal static class RefinerStage
{
    public static GenerationResult Run(StableDiffusionPipeline basePipeline, GenerationRequest request, IScheduler baseSampler,
        StableDiffusionPipeline refiner, IScheduler refinerSampler, float switchAt, IProgress<StepProgress>? progress, CancellationToken cancel)
    {
        var first = basePipeline.Generate(request with { DenoisingEnd = switchAt, LatentsOnly = true }, baseSampler, progress, cancel);
        var second = refiner.Generate(request with { DenoisingStart = switchAt, Latents = first.Latents }, refinerSampler, progress, cancel);
        var timings = new StageTimings();
        foreach (var (stage, time) in first.Timings.Stages) timings.Add(stage, time);
        foreach (var (stage, time) in second.Timings.Stages) timings.Add(stage == StageTimings.UnetStep ? stage : "refiner " + stage, time);
        return second with { Timings = timings, Notes = [.. first.Notes, .. second.Notes] };
    }

    /// <summary>The refiner model; anything but an SDXL refiner is a usage error naming it.</summary>
    public static StableDiffusionPipeline Open(ModelSource source, IOps ops, PipelineOptions options)
    {
        if (source.Family != ModelFamily.SdxlRefiner)
            throw new UsageException($"--refiner {source.Path}: not an SDXL refiner (family {source.Family.Name()}); it must be conditioned on bigG alone with aesthetic scores, like stabilityai/stable-diffusion-xl-refiner-1.0");
        return StableDiffusionPipeline.Open(source, ops, options);
    }
}
