using System.Diagnostics;
using StableDiffusion.Pipelines;
using StableDiffusion.Pipelines.Images;
using StableDiffusion.Schedulers;

namespace StableDiffusion.Server;

/// <summary>
/// Runs a job on the worker thread: switches model if asked, then one pipeline call per iteration (A1111's n_iter)
/// with seed + k, reporting each step with a cheap preview. An interrupt decodes the latents reached so far.
/// </summary>
public sealed class GenerationRunner(ModelHost host)
{
    public void Run(Job job)
    {
        if (job.Work is not null)
        {
            job.Start(0);
            Guard(job, () =>
            {
                job.Work(job);
                return null;
            });
            return;
        }
        var spec = job.Spec!;
        if (job.Cancel.IsCancellationRequested)
        {
            job.Cancelled(job.CancelReason ?? "cancelled before it started");
            return;
        }
        job.Start(spec.Steps * spec.Iterations);
        Guard(job, () => Generate(job, spec));
    }

    private static void Guard(Job job, Func<JobResult?> work)
    {
        try
        {
            var result = work();
            if (result is not null) job.Finish(result);
            else if (!job.Finished) job.Finish(new JobResult([], [], [], 0, 0, false, "", "", DateTimeOffset.UtcNow));
        }
        catch (OperationCanceledException)
        {
            job.Cancelled(job.CancelReason ?? "cancelled");
        }
        catch (ApiException e)
        {
            job.Fail(e.Status, e.Error, e.Detail);
        }
        catch (SdException e)
        {
            job.Fail(422, "invalid request", e.Message);
        }
        catch (Exception e)
        {
            // Never a stack trace in an answer; the type says enough to report it.
            job.Fail(500, "internal error", $"{e.GetType().Name}: {e.Message.Split('\n')[0]}");
        }
    }

    private JobResult? Generate(Job job, GenerationSpec spec)
    {
        var entry = spec.Model is null ? host.Current
            : host.Find(spec.Model) ?? throw ApiException.Invalid($"model '{spec.Model}' is not one of {string.Join(", ", host.Catalog.Select(e => e.Name))}");
        host.Switch(entry, spec.Loras, spec.ClipSkip ?? host.ClipSkip);
        var pipeline = host.Pipeline;
        var pngs = new List<byte[]>();
        var infotexts = new List<string>();
        var seeds = new List<ulong>();
        int timedSteps = 0;
        double firstStep = 0, laterSteps = 0;
        int total = spec.Steps * spec.Iterations, done = 0;
        var clock = Stopwatch.StartNew();
        bool interrupted = false;
        for (int k = 0; k < spec.Iterations && !interrupted; k++)
        {
            ulong seed = spec.Seed + (ulong)k;
            var scheduler = Samplers.Create(spec.Sampler, SchedulerConfig.Parse(pipeline.SchedulerConfigJson, "the model's scheduler config"),
                spec.Schedule is null ? null : Samplers.ParseSchedule(spec.Schedule));
            var request = new GenerationRequest
            {
                Prompt = spec.CleanPrompt, NegativePrompt = spec.CleanNegativePrompt, Steps = spec.Steps, GuidanceScale = spec.Cfg, Seed = seed,
                Width = spec.Width, Height = spec.Height, BatchSize = spec.BatchSize, InitImage = spec.InitImage, Mask = spec.Mask,
                Strength = spec.Strength,
            };
            pipeline.Validate(request);
            StepProgress last = default;
            int before = done;
            var progress = new Progress(p =>
            {
                last = p;
                // The first step (weight packing, warm-up) is left out of the rate once there are others.
                if (timedSteps++ == 0) firstStep = p.StepTime.TotalSeconds;
                else laterSteps += p.StepTime.TotalSeconds;
                // An init image runs only part of the schedule: count this iteration as that many steps.
                int step = before + p.Step, steps = before + p.Steps + (spec.Iterations - k - 1) * p.Steps;
                double rate = timedSteps > 1 ? (timedSteps - 1) / laterSteps : 1 / Math.Max(firstStep, 1e-6);
                job.Progress(step, steps, (steps - step) / rate, LatentPreview.Png(p, pipeline.Configs.Vae.LatentChannels));
                done = step;
            });
            var cancel = job.Cancel.Token;
            IReadOnlyList<RgbImage> images;
            try
            {
                images = pipeline.Generate(request, scheduler, progress, cancel).Images;
            }
            catch (OperationCanceledException) when (job.Interrupt)
            {
                // A1111's interrupt: what the latents reached, decoded, is the answer.
                interrupted = true;
                images = last.Latents is null ? [] : pipeline.DecodeLatents(last.Latents, spec.BatchSize, last.LatentHeight, last.LatentWidth);
            }
            for (int i = 0; i < images.Count; i++)
            {
                var text = Infotext.Format(new GenerationParameters
                {
                    Prompt = spec.Prompt, NegativePrompt = spec.NegativePrompt, Steps = spec.Steps, Sampler = scheduler.Name,
                    Schedule = spec.Schedule, CfgScale = spec.Cfg, Seed = seed, Width = spec.Width, Height = spec.Height,
                    ModelHash = host.CurrentHash, Model = host.Current.Name,
                    DenoisingStrength = spec.InitImage is null ? null : spec.Strength,
                    BatchSize = spec.BatchSize, BatchPosition = i, LoraHashes = host.CurrentLoraHashes,
                });
                pngs.Add(ImageFiles.EncodePng(images[i], text));
                infotexts.Add(text);
                seeds.Add(seed);
            }
        }
        return new JobResult(pngs, infotexts, seeds, spec.Width, spec.Height, interrupted, host.Current.Name, host.CurrentHash, DateTimeOffset.UtcNow);
    }

    private sealed class Progress(Action<StepProgress> report) : IProgress<StepProgress>
    {
        public void Report(StepProgress value) => report(value);
    }
}
