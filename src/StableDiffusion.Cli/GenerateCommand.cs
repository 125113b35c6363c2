using System.Diagnostics;
using System.Globalization;
using StableDiffusion.IO;
using StableDiffusion.Kernels;
using StableDiffusion.Pipelines;
using StableDiffusion.Pipelines.Adapters;
using StableDiffusion.Pipelines.Images;
using StableDiffusion.Runtime;
using StableDiffusion.Schedulers;

namespace StableDiffusion.Cli;

/// <summary>
/// <c>sd generate</c>: text-to-image, image-to-image (<c>--init-image</c>) and inpainting (<c>--mask</c>) to PNG files
/// with A1111's parameters chunk; a progress bar on stderr and, at the end, where the time went.
/// </summary>
internal static class GenerateCommand
{
    /// <summary>The sampler for the model's scheduler_config.json; a <see cref="UsageException"/> for a schedule it cannot use.</summary>
    private static IScheduler CreateSampler(string name, string config, string? schedule, TimestepSpacing? spacing = null) =>
        Samplers.Create(name, SchedulerConfig.Parse(config, "the model's scheduler config"),
            schedule is null ? null : Samplers.ParseSchedule(schedule), spacing);

    public const string DefaultSampler = "euler_a";

    private sealed record Options(
        string Model, string Prompt, string NegativePrompt, int Steps, float Cfg, string Sampler, string? Schedule,
        ulong Seed, int? Width, int? Height, int Batch, string? InitImage, float? Strength, string? Mask, string Device,
        DType? Precision, string Output, bool Overwrite, string? Tokenizer, bool Profile, LoraArguments Loras, int? ClipSkip = null, string? EmbeddingsDir = null,
        PredictionType? Prediction = null)
    {
        public string? Taesd { get; init; }
        public bool VaeTiling { get; init; }
        public int VaeTile { get; init; } = Pipelines.VaeTiling.DefaultTilePixels;
        public long? MaxMemory { get; init; }
        public PreviewMethod? Preview { get; init; }
        public int PreviewEvery { get; init; } = 1;
        public string PreviewFile { get; init; } = "preview.png";
        public string? Vae { get; init; }
        public string? Refiner { get; init; }
        public float RefinerSwitch { get; init; } = 0.8f;
        public float AestheticScore { get; init; } = 6f;
        public float NegativeAestheticScore { get; init; } = 2.5f;
        public string? Preset { get; init; }
        public bool StepsGiven { get; init; }
        public bool CfgGiven { get; init; }
        public bool SamplerGiven { get; init; }
    }

    public static int Run(Args a, TextWriter stdout, TextWriter stderr)
    {
        var o = Parse(a);
        var clock = Stopwatch.StartNew();
        var outputs = OutputPaths(o.Output, o.Batch);
        if (!o.Overwrite && outputs.FirstOrDefault(File.Exists) is string existing)
            throw new UsageException($"{existing} exists; pass --overwrite to replace it");

        using var cancel = new CancellationTokenSource();
        ConsoleCancelEventHandler onCtrlC = (_, e) =>
        {
            e.Cancel = true; // finish the current step, then stop
            cancel.Cancel();
        };
        Console.CancelKeyPress += onCtrlC;
        try
        {
            return Generate(o, outputs, clock, stdout, stderr, cancel.Token);
        }
        catch (OperationCanceledException)
        {
            throw new GenerationCancelledException("cancelled; nothing was written");
        }
        finally
        {
            Console.CancelKeyPress -= onCtrlC;
        }
    }

    private static int Generate(Options o, string[] outputs, Stopwatch clock, TextWriter stdout, TextWriter stderr, CancellationToken cancel)
    {
        var init = o.InitImage is null ? null : ImageFiles.Read(o.InitImage);
        var mask = o.Mask is null ? null : ImageFiles.Read(o.Mask);
        var path = ModelArgument.Resolve(o.Model, revision: null, variant: null, stderr);
        using var source = ModelSource.Open(path);
        using var loras = o.Loras.Open();
        using var vae = o.Vae is null ? null : VaeOverride.Open(ModelArgument.ResolveVae(o.Vae, stderr));
        using var device = ComputeDevice.Open(o.Device, stderr);
        device.Pool.Limit = o.MaxMemory;
        var backend = Backends.For(device);
        var profiler = o.Profile ? new ProfilingOps(backend) : null;
        IOps ops = profiler ?? backend;
        // fp16 only where it is native: the CPU backends compute in fp32 and would only round more.
        var dtype = o.Precision ?? (device.Kind is DeviceKind.IlgpuCpu or DeviceKind.Cpu || !device.SupportsFp16 ? DType.F32 : DType.F16);
        var taesd = o.Taesd is null ? null : TinyAutoencoderArgument.Resolve(o.Taesd, stderr);
        using var pipeline = StableDiffusionPipeline.Open(source, ops, new PipelineOptions
        {
            DType = dtype,
            TokenizerDirectory = o.Tokenizer,
            ClipSkip = o.ClipSkip,
            EmbeddingsDirectory = o.EmbeddingsDir,
            ReleaseModelsAfterUse = true, // one generation per process: free each model when done with it
            Loras = loras.Files,
            PredictionType = o.Prediction,
            Notice = line => stderr.WriteLine($"sd: {line}"),
            TinyAutoencoder = taesd,
            VaeTiling = o.VaeTiling,
            VaeTilePixels = o.VaeTile,
            Vae = vae,
        });
        var preset = GenerationPreset.Resolve(o.Preset, pipeline.SchedulerConfigJson, out bool implied);
        if (preset is not null)
        {
            o = o with
            {
                Steps = o.StepsGiven ? o.Steps : preset.Steps,
                Cfg = o.CfgGiven ? o.Cfg : preset.Cfg,
                Sampler = o.SamplerGiven || preset.Sampler is null ? o.Sampler : preset.Sampler,
            };
            if (!implied && o.Steps > preset.MaxSteps)
                throw new UsageException($"--preset {preset.Name}: {o.Steps} steps; a {preset.Name} model takes 1 to {preset.MaxSteps}");
            stderr.WriteLine($"sd: preset {preset.Name}{(implied ? " (the model's scheduler config implies it; --preset default for none)" : "")}: " +
                             $"{o.Steps} step{(o.Steps == 1 ? "" : "s")}, cfg {Num(o.Cfg)}{(o.Cfg <= 1f ? " (no unconditional pass)" : "")}" +
                             $"{(preset.Spacing is null ? "" : ", trailing timestep spacing")}{(o.SamplerGiven || preset.Sampler is null ? "" : $", sampler {o.Sampler}")}");
        }
        var scheduler = CreateSampler(o.Sampler, pipeline.SchedulerConfigJson, o.Schedule, preset?.Spacing);
        if (pipeline.Configs.IsRefiner)
            throw new UsageException($"{o.Model} is an SDXL refiner: it only continues a base model's latents; use --model BASE --refiner {o.Model}");
        using var refinerSource = o.Refiner is null ? null : ModelSource.Open(ModelArgument.Resolve(o.Refiner, revision: null, variant: null, stderr));
        using var refiner = refinerSource is null ? null : RefinerStage.Open(refinerSource, ops, new PipelineOptions
        {
            DType = dtype,
            ReleaseModelsAfterUse = true,
            Vae = vae, // the refiner decodes the final latents
        });
        if (refiner is not null && !pipeline.Configs.IsSdxl)
            throw new UsageException($"--refiner: {o.Model} is not an SDXL base model (family {source.Family.Name()}); the refiner continues SDXL latents");

        // Without --width/--height an init image keeps its size, rounded down to what the model takes.
        int multiple = pipeline.SizeMultiple;
        var request = new GenerationRequest
        {
            Prompt = o.Loras.Prompt, // without its <lora:…> tags; the infotext keeps them, as A1111's does
            NegativePrompt = o.Loras.NegativePrompt,
            Steps = o.Steps,
            GuidanceScale = o.Cfg,
            Seed = o.Seed,
            Width = o.Width ?? (init is null ? Size(preset, implied, pipeline) : Math.Max(multiple, init.Width / multiple * multiple)),
            Height = o.Height ?? (init is null ? Size(preset, implied, pipeline) : Math.Max(multiple, init.Height / multiple * multiple)),
            BatchSize = o.Batch,
            InitImage = init,
            Mask = mask,
            Strength = o.Strength ?? (mask is null ? 0.75f : 1f),
            AestheticScore = o.AestheticScore,
            NegativeAestheticScore = o.NegativeAestheticScore,
        };
        pipeline.Validate(request);
        refiner?.Validate(request with { DenoisingStart = o.RefinerSwitch, Latents = new float[request.BatchSize * (request.Height / refiner.VaeScaleFactor) * (request.Width / refiner.VaeScaleFactor) * refiner.Configs.Vae.LatentChannels] });
        var hash = new StageTimings();
        var modelHash = hash.Measure("model hash", () => ModelHash.Compute(source));
        var loraHashes = loras.Files.Count == 0 ? null : hash.Measure("lora hashes", () => LoraMerge.Hashes(loras.Files));
        var vaeHash = vae is null ? null : hash.Measure("vae hash", () => ModelHash.OfFile(vae.Weights.Source));
        var refinerTitle = refinerSource is null ? null
            : $"{ModelName(o.Refiner!)} [{hash.Measure("refiner hash", () => ModelHash.Compute(refinerSource))}]";

        stderr.WriteLine($"sd: {ModeName(pipeline.ModeOf(request))} {request.Width}x{request.Height}, {o.Steps} step{(o.Steps == 1 ? "" : "s")} of {o.Sampler}, " +
                         $"cfg {Num(o.Cfg)}, seed {o.Seed}, {dtype.Name()} on {device.Name}");
        // The per-op profile of the UNet steps leaves out the first step (kernel compilation, first weight packing).
        IReadOnlyList<(string Op, int Calls, TimeSpan Time)>? afterFirst = null, afterLast = null;
        IReadOnlyList<(string Shape, int Calls, TimeSpan Time, double Flops)>? shapesAfterFirst = null, shapesAfterLast = null;
        int stepsRun = 0;
        var bar = new ProgressBar(stderr);
        var previews = new StageTimings();
        if (o.Preview == PreviewMethod.Taesd) pipeline.PrepareTinyAutoencoder(previews);
        var progress = new StepHook(p =>
        {
            bar.Report(p);
            if (o.Preview is PreviewMethod method && p.Latents is not null && (p.Step % o.PreviewEvery == 0 || p.Step == p.Steps))
                previews.Measure("previews", () =>
                {
                    int f = pipeline.VaeScaleFactor;
                    ImageFiles.SavePng(pipeline.Preview(p.Latents, request.Height / f, request.Width / f, method), o.PreviewFile, null, overwrite: true);
                    return 0;
                });
            stepsRun = p.Step;
            if (profiler is null) return;
            if (p.Step == 1) (afterFirst, shapesAfterFirst) = (profiler.Entries, profiler.ShapeEntries);
            if (p.Step == p.Steps) (afterLast, shapesAfterLast) = (profiler.Entries, profiler.ShapeEntries);
        });
        var result = refiner is null
            ? pipeline.Generate(request, scheduler, progress, cancel)
            : RefinerStage.Run(pipeline, request, scheduler, refiner, CreateSampler(o.Sampler, refiner.SchedulerConfigJson, o.Schedule),
                o.RefinerSwitch, progress, cancel);
        foreach (var note in result.Notes) stderr.WriteLine($"sd: note: {note}");

        var write = Stopwatch.StartNew();
        for (int i = 0; i < result.Images.Count; i++)
        {
            var parameters = Infotext.Format(new GenerationParameters
            {
                Prompt = o.Prompt,
                NegativePrompt = o.NegativePrompt,
                Steps = o.Steps,
                Sampler = scheduler.Name,
                Schedule = o.Schedule,
                CfgScale = o.Cfg,
                Seed = o.Seed,
                Width = request.Width,
                Height = request.Height,
                ModelHash = modelHash,
                Model = ModelName(o.Model),
                DenoisingStrength = init is null ? null : request.Strength,
                ClipSkip = o.ClipSkip,
                BatchSize = o.Batch,
                BatchPosition = i,
                LoraHashes = loraHashes,
                VaeHash = vaeHash,
                Vae = vae is null ? null : Path.GetFileName(vae.Weights.Source),
                Refiner = refinerTitle,
                RefinerSwitchAt = refiner is null ? null : o.RefinerSwitch,
            });
            ImageFiles.SavePng(result.Images[i], outputs[i], parameters, o.Overwrite);
            stdout.WriteLine(outputs[i]);
        }
        var previewTime = previews.Stages.Where(st => st.Stage == "previews").Aggregate(TimeSpan.Zero, (x, st) => x + st.Time);
        var stages = hash.Stages.Concat(previews.Stages.Where(st => st.Stage != "previews")).Concat(result.Timings.Stages)
            .Concat(previewTime > TimeSpan.Zero ? [("previews", previewTime)] : []).Append(("write png", write.Elapsed)).ToList();
        Summary(stages, clock.Elapsed, device.Pool.PeakBytesInUse, stderr);
        if (profiler is not null)
        {
            Profile(profiler.Entries, afterFirst, afterLast, stepsRun, stderr);
            ProfileShapes(profiler.ShapeEntries, shapesAfterFirst, shapesAfterLast, stepsRun, stderr);
        }
        return 0;
    }

    private sealed class StepHook(Action<StepProgress> report) : IProgress<StepProgress>
    {
        public void Report(StepProgress value) => report(value);
    }

    /// <summary>
    /// <c>--profile</c>: time per op family over the whole run, and per UNet step (steps 2..N, so compilation and
    /// first-use costs stay out), each op synchronised.
    /// </summary>
    private static void Profile(IReadOnlyList<(string Op, int Calls, TimeSpan Time)> all,
        IReadOnlyList<(string Op, int Calls, TimeSpan Time)>? afterFirst, IReadOnlyList<(string Op, int Calls, TimeSpan Time)>? afterLast,
        int steps, TextWriter stderr)
    {
        double total = all.Sum(e => e.Time.TotalSeconds);
        bool perStep = afterFirst is not null && afterLast is not null && steps > 1;
        stderr.WriteLine($"sd: per-op profile (each op synchronised){(perStep ? $"; per UNet step: the mean of steps 2..{steps}" : "")}:");
        stderr.WriteLine($"  {"op",-24} {"calls",7} {"total s",9} {"share",7}{(perStep ? $" {"calls/step",11} {"ms/step",9}" : "")}");
        foreach (var (op, calls, time) in all)
        {
            var line = $"  {op,-24} {calls,7} {time.TotalSeconds,9:F3} {100 * time.TotalSeconds / Math.Max(total, 1e-12),6:F1}%";
            if (perStep)
            {
                var a = afterFirst!.FirstOrDefault(e => e.Op == op);
                var b = afterLast!.FirstOrDefault(e => e.Op == op);
                int n = steps - 1;
                line += $" {(double)(b.Calls - a.Calls) / n,11:F1} {(b.Time - a.Time).TotalMilliseconds / n,9:F2}";
            }
            stderr.WriteLine(line);
        }
        stderr.WriteLine($"  {"all ops",-24} {all.Sum(e => e.Calls),7} {total,9:F3}");
    }

    /// <summary>The shapes that took the most time, with their rate: per UNet step after the first when there are several.</summary>
    private static void ProfileShapes(IReadOnlyList<(string Shape, int Calls, TimeSpan Time, double Flops)> all,
        IReadOnlyList<(string Shape, int Calls, TimeSpan Time, double Flops)>? afterFirst,
        IReadOnlyList<(string Shape, int Calls, TimeSpan Time, double Flops)>? afterLast, int steps, TextWriter stderr)
    {
        bool perStep = afterFirst is not null && afterLast is not null && steps > 1;
        var rows = perStep
            ? afterLast!.Select(b =>
            {
                var a = afterFirst!.FirstOrDefault(e => e.Shape == b.Shape);
                return (b.Shape, Calls: (double)(b.Calls - a.Calls) / (steps - 1), Time: (b.Time - a.Time) / (steps - 1), Flops: (b.Flops - a.Flops) / (steps - 1));
            }).Where(r => r.Calls > 0).OrderByDescending(r => r.Time).ToList()
            : all.Select(e => (e.Shape, Calls: (double)e.Calls, e.Time, e.Flops)).ToList();
        const int top = 25;
        stderr.WriteLine($"sd: per-shape profile of linear, convolution and attention{(perStep ? $", per UNet step (steps 2..{steps})" : "")}, the {Math.Min(top, rows.Count)} slowest of {rows.Count}:");
        stderr.WriteLine($"  {"shape",-34} {"calls",7} {"ms",9} {"GFLOP/s",9}");
        foreach (var r in rows.Take(top))
            stderr.WriteLine($"  {r.Shape,-34} {r.Calls,7:0.#} {r.Time.TotalMilliseconds,9:F2} {r.Flops / Math.Max(r.Time.TotalSeconds, 1e-12) / 1e9,9:F1}");
        double flops = rows.Sum(r => r.Flops), seconds = rows.Sum(r => r.Time.TotalSeconds);
        stderr.WriteLine($"  {"all shapes",-34} {rows.Sum(r => r.Calls),7:0.#} {seconds * 1e3,9:F2} {flops / Math.Max(seconds, 1e-12) / 1e9,9:F1}");
        if (rows.Any(r => r.Shape.StartsWith("conv3x3", StringComparison.Ordinal)))
            stderr.WriteLine("  (FLOPs of the direct convolution: 3x3 convolutions computed by Winograd's algorithm on the CPU do fewer)");
    }

    // ---- options ----

    private static Options Parse(Args a)
    {
        string? Text(string name) => a.Value(name);
        var model = Text("--model") ?? throw new UsageException("'sd generate' needs --model (a diffusers folder, a .safetensors/.ckpt file or a hub id org/name)");
        var prompt = Text("--prompt") ?? throw new UsageException("'sd generate' needs --prompt \"...\"");
        var negative = Text("--negative-prompt") ?? "";
        if (prompt.Length + negative.Length > GenerationLimits.MaxPromptChars)
            throw new UsageException($"--prompt and --negative-prompt: {prompt.Length + negative.Length} characters; at most {GenerationLimits.MaxPromptChars}");
        // Whether steps, cfg and sampler were given: a preset fills in only the others.
        var stepsText = Text("--steps");
        var cfgText = Text("--cfg");
        var samplerText = Text("--sampler");
        int steps = stepsText is null ? 20 : ParseInt("--steps", stepsText, GenerationLimits.MinSteps, GenerationLimits.MaxSteps);
        float cfg = cfgText is null ? 7.5f : ParseFloat("--cfg", cfgText, GenerationLimits.MinCfg, GenerationLimits.MaxCfg);
        var sampler = samplerText ?? DefaultSampler;
        if (Samplers.Canonical(sampler) is null)
            throw new UsageException($"--sampler '{sampler}' is unknown; valid: {string.Join(", ", Samplers.Names)} (or a diffusers class name)");
        var schedule = Text("--schedule");
        if (schedule is not (null or "default" or "karras" or "exponential"))
            throw new UsageException($"--schedule '{schedule}': use default, karras or exponential");
        ulong seed = Seed(Text("--seed"));
        int? width = Size(a, "--width"), height = Size(a, "--height");
        int batch = Int(a, "--batch", 1, GenerationLimits.MinBatch, GenerationLimits.MaxBatch);
        var initImage = Text("--init-image");
        float? strength = a.Value("--strength") is string s ? ParseFloat("--strength", s, 0f, 1f) : null;
        var mask = Text("--mask");
        if (strength is <= 0f) throw new UsageException("--strength must be above 0 (0 would leave the init image unchanged)");
        if (strength is not null && initImage is null) throw new UsageException("--strength needs --init-image");
        if (mask is not null && initImage is null) throw new UsageException("--mask needs --init-image (the image to inpaint)");
        var device = Text("--device") ?? "auto";
        DeviceRequest.Parse(device); // a bad --device is a usage error before anything loads
        DType? precision = Text("--precision") switch
        {
            null => null,
            "fp16" => DType.F16,
            "fp32" => DType.F32,
            var p => throw new UsageException($"--precision '{p}': use fp16 or fp32"),
        };
        var output = Text("--output") ?? "out.png";
        if (!output.EndsWith(".png", StringComparison.OrdinalIgnoreCase)) throw new UsageException($"--output '{output}': sd writes PNG files; use a name ending in .png");
        bool overwrite = a.Flag("--overwrite");
        var tokenizer = Text("--tokenizer");
        bool profile = a.Flag("--profile");
        var taesd = Text("--taesd");
        bool vaeTiling = a.Flag("--vae-tiling");
        int vaeTile = Int(a, "--vae-tile", VaeTiling.DefaultTilePixels, 64, 8192);
        if (vaeTile % 64 != 0) throw new UsageException($"--vae-tile '{vaeTile}': must be a multiple of 64");
        long? maxMemory = Text("--max-memory") is string mm ? MemorySize.Parse("--max-memory", mm) : null;
        PreviewMethod? preview = Text("--preview") switch
        {
            null => null,
            "latent2rgb" => PreviewMethod.Latent2Rgb,
            "taesd" => PreviewMethod.Taesd,
            var p => throw new UsageException($"--preview '{p}': use latent2rgb or taesd"),
        };
        if (preview == PreviewMethod.Taesd && taesd is null) throw new UsageException("--preview taesd needs --taesd PATH|org/name (the tiny autoencoder to decode with)");
        var everyText = Text("--preview-every");
        var previewFile = Text("--preview-file");
        if ((everyText is not null || previewFile is not null) && preview is null)
            throw new UsageException("--preview-every and --preview-file need --preview latent2rgb|taesd");
        int previewEvery = 1;
        if (everyText is not null && (!int.TryParse(everyText, NumberStyles.Integer, CultureInfo.InvariantCulture, out previewEvery) || previewEvery is < 1 or > 1000))
            throw new UsageException($"--preview-every '{everyText}': must be an integer from 1 to 1000");
        previewFile ??= "preview.png";
        if (!previewFile.EndsWith(".png", StringComparison.OrdinalIgnoreCase)) throw new UsageException($"--preview-file '{previewFile}': use a name ending in .png");
        var loras = LoraArguments.Parse(a, prompt, negative);
        int? clipSkip = Text("--clip-skip") is string cs
            ? int.TryParse(cs, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n >= 1 ? n
                : throw new UsageException($"--clip-skip '{cs}': must be a whole number from 1 (1 = last layer, 2 = penultimate)")
            : null;
        var embeddingsDir = Text("--embeddings-dir");
        PredictionType? prediction = Text("--prediction-type") is string pt ? PredictionTypes.Parse(pt) : null;
        var vae = Text("--vae");
        if (vae is not null && taesd is not null) throw new UsageException("--vae and --taesd both replace the VAE; give one of them");
        var refiner = Text("--refiner");
        var switchText = Text("--refiner-switch");
        float refinerSwitch = switchText is null ? 0.8f : ParseFloat("--refiner-switch", switchText, 0f, 1f);
        if (refinerSwitch is <= 0f or >= 1f) throw new UsageException($"--refiner-switch {Num(refinerSwitch)}: must be between 0 and 1 (exclusive)");
        if (switchText is not null && refiner is null) throw new UsageException("--refiner-switch needs --refiner");
        float aesthetic = Float(a, "--aesthetic-score", 6f, 0f, 10f), negativeAesthetic = Float(a, "--negative-aesthetic-score", 2.5f, 0f, 10f);
        var preset = Text("--preset");
        if (preset is not null && !GenerationPreset.Names.Contains(preset))
            throw new UsageException($"--preset '{preset}': use {string.Join(", ", GenerationPreset.Names)}");
        a.CheckDone();
        return new Options(model, prompt, negative, steps, cfg, sampler, schedule, seed, width, height, batch, initImage, strength, mask,
            device, precision, output, overwrite, tokenizer, profile, loras, clipSkip, embeddingsDir, prediction)
        {
            Taesd = taesd,
            VaeTiling = vaeTiling,
            VaeTile = vaeTile,
            MaxMemory = maxMemory,
            Preview = preview,
            PreviewEvery = previewEvery,
            PreviewFile = previewFile,
            Preset = preset, StepsGiven = stepsText is not null, CfgGiven = cfgText is not null, SamplerGiven = samplerText is not null,
            Vae = vae, Refiner = refiner, RefinerSwitch = refinerSwitch, AestheticScore = aesthetic, NegativeAestheticScore = negativeAesthetic,
        };
    }

    /// <summary>An asked-for preset's size (turbo: 512), else the model's.</summary>
    private static int Size(GenerationPreset? preset, bool implied, StableDiffusionPipeline pipeline) =>
        !implied && preset?.Size is int s ? s : pipeline.DefaultSize;

    private static int Int(Args a, string name, int fallback, int min, int max) =>
        a.Value(name) is string s ? ParseInt(name, s, min, max) : fallback;

    private static int ParseInt(string name, string s, int min, int max)
    {
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) || v < min || v > max)
            throw new UsageException($"{name} '{s}': must be an integer from {min} to {max}");
        return v;
    }

    private static float Float(Args a, string name, float fallback, float min, float max) =>
        a.Value(name) is string s ? ParseFloat(name, s, min, max) : fallback;

    private static float ParseFloat(string name, string s, float min, float max) =>
        float.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && v >= min && v <= max
            ? v
            : throw new UsageException($"{name} '{s}': must be a number from {Num(min)} to {Num(max)}");

    /// <summary>Image sides are multiples of 8 (the VAE's factor); the model may need more, which the pipeline checks.</summary>
    private static int? Size(Args a, string name)
    {
        var s = a.Value(name);
        if (s is null) return null;
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) || !GenerationLimits.IsSide(v))
            throw new UsageException($"{name} '{s}': must be a multiple of {GenerationLimits.SideMultiple} from {GenerationLimits.MinSide} to {GenerationLimits.MaxSide}");
        return v;
    }

    /// <summary>Any seed from 0 to 2^64 − 1 as torch.manual_seed takes it; none or -1 (A1111's "random"): a random 32-bit one.</summary>
    private static ulong Seed(string? s)
    {
        if (s is null or "-1") return (ulong)Random.Shared.NextInt64(0, 1L << 32);
        return ulong.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var u)
            ? u
            : throw new UsageException($"--seed '{s}': must be an integer from 0 to 18446744073709551615, or -1 for a random one");
    }

    /// <summary>out.png for one image; out-1.png, out-2.png, ... for a batch.</summary>
    private static string[] OutputPaths(string output, int batch) =>
        batch == 1
            ? [output]
            : [.. Enumerable.Range(1, batch).Select(i => Path.Combine(Path.GetDirectoryName(output) ?? "", $"{Path.GetFileNameWithoutExtension(output)}-{i}{Path.GetExtension(output)}"))];

    private static string ModelName(string model) =>
        Path.GetFileNameWithoutExtension(model.TrimEnd('/', Path.DirectorySeparatorChar));

    private static string ModeName(GenerationMode m) => m switch
    {
        GenerationMode.TextToImage => "text-to-image",
        GenerationMode.ImageToImage => "image-to-image",
        _ => "inpainting",
    };

    private static string Num(float v) => v.ToString(CultureInfo.InvariantCulture);

    // ---- reporting ----

    /// <summary>
    /// Where the time went: each stage, the UNet's steps one by one (the first includes compiling the kernels), the
    /// total and the device memory peak.
    /// </summary>
    private static void Summary(IReadOnlyList<(string Stage, TimeSpan Time)> stages, TimeSpan total, long peakBytes, TextWriter stderr)
    {
        stderr.WriteLine("sd: where the time went:");
        var steps = stages.Where(s => s.Stage == StageTimings.UnetStep).Select(s => s.Time).ToList();
        bool unetShown = false;
        foreach (var (stage, time) in stages)
        {
            if (stage == StageTimings.UnetStep)
            {
                if (unetShown) continue;
                unetShown = true;
                var sum = steps.Aggregate(TimeSpan.Zero, (x, y) => x + y);
                var each = string.Join(" ", steps.Select(t => t.TotalSeconds.ToString("F2", CultureInfo.InvariantCulture)));
                stderr.WriteLine($"  {"unet",-18} {sum.TotalSeconds,8:F2} s  {steps.Count} step{(steps.Count == 1 ? "" : "s")}, {Rate(steps):F2} it/s: {each}");
                continue;
            }
            stderr.WriteLine($"  {stage,-18} {time.TotalSeconds,8:F2} s");
        }
        var accounted = stages.Aggregate(TimeSpan.Zero, (x, s) => x + s.Time);
        stderr.WriteLine($"  {"other",-18} {(total - accounted).TotalSeconds,8:F2} s  (device, model files, tokenizer, images)");
        var rss = MemoryInfo.PeakRssBytes();
        stderr.WriteLine($"  {"total",-18} {total.TotalSeconds,8:F2} s  peak device memory {peakBytes / 1048576.0:F1} MiB" +
                         (rss is long r ? $", peak RSS {r / 1048576.0:F1} MiB" : ""));
    }

    /// <summary>Steps per second, leaving out the first step (kernel compilation) when there are others.</summary>
    internal static double Rate(IReadOnlyList<TimeSpan> steps)
    {
        var timed = steps.Count > 1 ? steps.Skip(1).ToList() : steps.ToList();
        double seconds = timed.Sum(t => t.TotalSeconds);
        return seconds > 0 ? timed.Count / seconds : 0;
    }

    /// <summary>
    /// <c>step 3/20 [######--------------] 2.41 it/s, 0:07 left</c>, redrawn in place on a terminal, one line per step
    /// otherwise (logs, pipes).
    /// </summary>
    private sealed class ProgressBar(TextWriter stderr) : IProgress<StepProgress>
    {
        private readonly bool interactive = ReferenceEquals(stderr, Console.Error) && !Console.IsErrorRedirected;
        private readonly List<TimeSpan> times = [];

        public void Report(StepProgress p)
        {
            times.Add(p.StepTime);
            const int width = 20;
            int filled = p.Steps == 0 ? width : p.Step * width / p.Steps;
            double rate = Rate(times);
            var left = rate > 0 ? TimeSpan.FromSeconds((p.Steps - p.Step) / rate) : TimeSpan.Zero;
            var line = $"step {p.Step.ToString().PadLeft(p.Steps.ToString().Length)}/{p.Steps} [{new string('#', filled)}{new string('-', width - filled)}] " +
                       $"{rate:F2} it/s, {(int)left.TotalMinutes}:{left.Seconds:D2} left";
            if (interactive)
            {
                stderr.Write("\r" + line);
                if (p.Step == p.Steps) stderr.WriteLine();
            }
            else
                stderr.WriteLine(line);
        }
    }
}

/// <summary>The user stopped a generation (Ctrl+C).</summary>
internal sealed class GenerationCancelledException(string message) : SdException(message);
