using StableDiffusion.IO;
using StableDiffusion.Models.Clip;
using StableDiffusion.Models.Unet;
using StableDiffusion.Models.Vae;
using StableDiffusion.Pipelines.Conditioning;
using StableDiffusion.Pipelines.Images;
using StableDiffusion.Pipelines.Prompts;
using StableDiffusion.Runtime;
using StableDiffusion.Schedulers;

namespace StableDiffusion.Pipelines;

/// <summary>
/// Stable Diffusion 1.x/2.x as diffusers runs it (StableDiffusionPipeline, StableDiffusionImg2ImgPipeline,
/// StableDiffusionInpaintPipeline), step for step and draw for draw, so a seed gives diffusers' image:
/// <code>
/// context  = text_encoder([negative prompt, prompt])                    one batch: unconditional, conditional
/// latents  = randn(seed) · init_noise_sigma                              or: add_noise(vae.encode(image), randn, t_start)
/// for t in timesteps[t_start:]:
///     ε_u, ε_c = unet(scale_model_input([latents, latents]), t, context)   guidance batched into one UNet call
///     latents  = scheduler.step(ε_u + g·(ε_c − ε_u), latents)
/// image    = vae.decode(latents / scaling_factor)
/// </code>
/// Models are loaded on first use from the <see cref="ModelSource"/> (which must stay open while the pipeline is used)
/// and stay loaded unless <see cref="PipelineOptions.ReleaseModelsAfterUse"/> is set.
/// </summary>
public sealed partial class StableDiffusionPipeline : IDisposable
{
    private readonly ModelSource source;
    private readonly IOps ops;
    private readonly PipelineOptions options;
    private ClipTextModel? textEncoder;
    private ClipTextModelWithProjection? textEncoder2;
    private UNet2DConditionModel? unet;
    private AutoencoderKL? vae;
    private DType vaeDType;
    private readonly Dictionary<string, Dictionary<string, List<LoraUpdate>>> lora;

    private readonly ClipEncoderOptions encoderOptions;

    private readonly EmbeddingLibrary embeddings;

    private StableDiffusionPipeline(ModelSource source, IOps ops, PipelineOptions options, ModelConfigs configs, ClipTokenizer tokenizer,
        ClipTokenizer? tokenizer2, ClipEncoderOptions encoderOptions, EmbeddingLibrary embeddings)
    {
        this.embeddings = embeddings;
        this.source = source;
        this.ops = ops;
        this.options = options;
        Configs = configs;
        Tokenizer = tokenizer;
        Tokenizer2 = tokenizer2;
        this.encoderOptions = encoderOptions;
        vaeDType = configs.Vae.ComputeDType(options.DType);
        lora = Adapters.LoraMerge.Resolve(options.Loras, configs); // a LoRA that does not fit fails here, before any work
    }

    /// <summary>
    /// Reads the configurations and the tokenizer (cheap; no weights are touched, except an SD2.x single file's UNet
    /// when <see cref="PipelineOptions.PredictionType"/> is not given: it is loaded and run once to tell ε from v, see
    /// <see cref="PredictionProbe"/>, and kept). The tokenizer is <see cref="PipelineOptions.TokenizerDirectory"/>, else
    /// the model folder's tokenizer/, else (single files) CLIP's built-in vocabulary with the family's pad token.
    /// </summary>
    public static StableDiffusionPipeline Open(ModelSource source, IOps ops, PipelineOptions options)
    {
        if (options.DType is not (DType.F32 or DType.F16)) throw new UsageException($"precision {options.DType.Name()}: use fp16 or fp32");
        var tokenizerDir = options.TokenizerDirectory ?? source.TokenizerDirectory;
        var tokenizer = tokenizerDir is not null
            ? ClipTokenizer.FromFolder(tokenizerDir)
            : ClipTokenizer.BuiltIn(source.Family is ModelFamily.Sd2 or ModelFamily.Sd2Inpaint ? ClipTokenizer.OpenClipPadToken : ClipTokenizer.EndToken);
        var configs = PredictionProbe.Resolve(source, ops, options.DType, options.PredictionType, options.Notice, out var probed);
        if (options.Vae is VaeOverride v) configs = configs with { Vae = v.ConfigFor(configs.Vae, source.Path) };
        try
        {
            ClipTokenizer? tokenizer2 = null;
            if (configs.IsSdxl)
            {
                // tokenizer_2 (it pads with "!"): the folder's, or the one beside --tokenizer DIR, else the built-in vocabulary.
                var dir2 = source.Tokenizer2Directory
                    ?? (tokenizerDir is null ? null : Path.Combine(Path.GetDirectoryName(Path.GetFullPath(tokenizerDir))!, "tokenizer_2"));
                if (dir2 is not null && Directory.Exists(dir2))
                    tokenizer2 = ClipTokenizer.FromFolder(dir2, File.Exists(Path.Combine(dir2, "vocab.json")) ? null : tokenizerDir);
                else
                    tokenizer2 = ClipTokenizer.BuiltIn(ClipTokenizer.OpenClipPadToken);
            }
            int clipSkip = ModelClipSkip(source.Family, configs.TextEncoder.NumHiddenLayers, options.ClipSkip);
            var pipeline = new StableDiffusionPipeline(source, ops, options, configs, tokenizer, tokenizer2,
                new ClipEncoderOptions { ClipSkip = clipSkip, EndId = tokenizer.EndId }, EmbeddingLibrary.Open(options.EmbeddingsDirectory));
            // The probe judged the file's own weights; with a LoRA on the UNet it loads again, merged.
            if (pipeline.lora.ContainsKey("unet")) probed?.Dispose();
            else pipeline.unet = probed;
            return pipeline;
        }
        catch
        {
            probed?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A1111's and stable-diffusion.cpp's clip skip (1 = the last layer, 2 = the penultimate) as layers to leave out of
    /// the loaded encoder. SD2's encoder, as published, already ends at OpenCLIP's penultimate layer: its default is 2
    /// and 1 does not exist.
    /// </summary>
    public static int ModelClipSkip(ModelFamily family, int layers, int? clipSkip)
    {
        int dropped = family is ModelFamily.Sd2 or ModelFamily.Sd2Inpaint || family == ModelFamily.Sdxl ? 1 : 0;
        if (clipSkip is null) return 1;
        int skip = clipSkip.Value - dropped, max = Math.Max(1, layers - 1);
        if (skip < 1 || skip > max)
            throw new UsageException($"--clip-skip {clipSkip}: this text encoder takes {1 + dropped} to {max + dropped}" +
                                     (dropped == 1 ? " (SD2 and SDXL already condition on the penultimate layer)" : " (1 = last layer, 2 = penultimate)"));
        return skip;
    }

    public ModelConfigs Configs { get; }
    public ClipTokenizer Tokenizer { get; }

    /// <summary>SDXL's second tokenizer (bigG's, padding with "!"); null for SD1.x/SD2.x.</summary>
    public ClipTokenizer? Tokenizer2 { get; }

    /// <summary>The image side the model was trained at: the UNet's sample_size times the VAE factor (512 SD1, 1024 SDXL); 512 if unstated.</summary>
    public int DefaultSize => Configs.DefaultSize;

    /// <summary>The prompts' conditioning, as the UNet gets it (loads the text encoder).</summary>
    public PromptConditioning Condition(IReadOnlyList<string> prompts, StageTimings? timings = null) =>
        Conditioner(prompts, timings ?? new StageTimings()).Encode(ops, prompts);

    /// <summary>A conditioner for these prompts: the embeddings they name are read now.</summary>
    private ClipConditioner Conditioner(IReadOnlyList<string> prompts, StageTimings timings)
    {
        // SD1's encoder is CLIP ViT-L (an SDXL embedding's clip_l fits it); SD2's is OpenCLIP ViT-H.
        var key = Configs.TextEncoder.HiddenAct == Activation.QuickGelu ? "clip_l" : "clip_h";
        var vectors = embeddings.For(prompts, key, Configs.TextEncoder.HiddenSize);
        var chunker = new PromptChunker(Tokenizer, vectors.ToDictionary(v => v.Key, v => v.Value.Length, StringComparer.OrdinalIgnoreCase));
        var opts = encoderOptions with { Embeddings = vectors };
        return new(chunker, () => new ClipPromptEncoder(LoadTextEncoder(timings), opts), options.DType);
    }

    private ClipTextModel LoadTextEncoder(StageTimings timings) => Load(ref textEncoder, "load text encoder", () =>
    {
        var m = new ClipTextModel(Configs.TextEncoder);
        m.Load(Component("text_encoder"), ops, options.DType, lora.GetValueOrDefault("text_encoder"));
        return m;
    }, timings);

    /// <summary>The scheduler_config.json text the sampler is configured from.</summary>
    public string SchedulerConfigJson => Configs.SchedulerConfigJson;

    /// <summary>Image side / latent side (8 for SD).</summary>
    public int VaeScaleFactor => Configs.Vae.DownscaleFactor;

    /// <summary>Image sides must be multiples of this: the VAE factor times the UNet's 2^halvings (64 for SD).</summary>
    public int SizeMultiple => VaeScaleFactor << Configs.Unet.DownsampleCount;

    /// <summary>A 9-channel UNet that takes the mask and the masked image's latents besides the noisy latents.</summary>
    public bool IsInpaintingModel => Configs.Unet.InChannels == Configs.Vae.LatentChannels * 2 + 1;

    public GenerationMode ModeOf(GenerationRequest r) =>
        r.Mask is not null ? GenerationMode.Inpaint : r.InitImage is not null ? GenerationMode.ImageToImage : GenerationMode.TextToImage;

    /// <summary>Checks a request against this model; every problem is a <see cref="UsageException"/>.</summary>
    public void Validate(GenerationRequest r)
    {
        if (r.Steps is < 1 or > 1000) throw new UsageException($"steps {r.Steps}: must be 1 to 1000");
        if (!float.IsFinite(r.GuidanceScale) || r.GuidanceScale < 0) throw new UsageException($"guidance scale {r.GuidanceScale}: must be a number ≥ 0");
        if (r.BatchSize is < 1 or > 64) throw new UsageException($"batch size {r.BatchSize}: must be 1 to 64");
        foreach (var (name, v) in new[] { ("width", r.Width), ("height", r.Height) })
            if (v <= 0 || v % SizeMultiple != 0)
                throw new UsageException($"{name} {v}: this model needs a multiple of {SizeMultiple} " +
                                         $"(the VAE divides by {VaeScaleFactor}, the UNet halves the latents {Configs.Unet.DownsampleCount} times)");
        if (r.Mask is not null && r.InitImage is null) throw new UsageException("a mask needs an init image to inpaint");
        if (r.InitImage is not null && !(r.Strength > 0f && r.Strength <= 1f))
            throw new UsageException($"strength {r.Strength}: must be in (0, 1]");
        foreach (var (name, f) in new[] { ("denoising end", r.DenoisingEnd), ("denoising start", r.DenoisingStart) })
            if (f is float v && !(v > 0f && v < 1f)) throw new UsageException($"{name} {v}: must be between 0 and 1 (exclusive)");
        if (Configs.IsRefiner && r.Latents is null)
            throw new UsageException($"{source.Path} is an SDXL refiner: it only continues a base model's latents (give it as the refiner of an SDXL base)");
        if (r.DenoisingStart is not null != r.Latents is not null)
            throw new UsageException("a denoising start needs the latents to continue from, and latents need a denoising start");
        int latentValues = r.BatchSize * (r.Height / VaeScaleFactor) * (r.Width / VaeScaleFactor) * Configs.Vae.LatentChannels;
        if (r.Latents is { } l && l.Length != latentValues)
            throw new UsageException($"{l.Length} latent values given; a batch of {r.BatchSize} at {r.Width}x{r.Height} has {latentValues}");
        if (IsInpaintingModel && r.Mask is null)
            throw new UsageException($"{source.Path} is an inpainting model (9-channel UNet): give an init image and a mask");
    }

    public GenerationResult Generate(GenerationRequest r, IScheduler scheduler, IProgress<StepProgress>? progress = null,
        CancellationToken cancel = default)
    {
        Validate(r);
        CheckMemoryLimit();
        var timings = new StageTimings();
        var notes = new List<string>();
        var mode = ModeOf(r);
        var random = new TorchRandom(r.Seed); // one generator for the whole generation, as diffusers passes it around
        int batch = r.BatchSize, h = r.Height / VaeScaleFactor, w = r.Width / VaeScaleFactor, z = Configs.Vae.LatentChannels;
        bool guidance = r.GuidanceScale > 1f;
        var init = r.InitImage?.Resize(r.Width, r.Height);
        var pixelMask = r.Mask?.Resize(r.Width, r.Height).ToMask();

        // 1. The prompt: [unconditional × batch, conditional × batch] embeddings (SDXL: + pooled and time ids).
        cancel.ThrowIfCancellationRequested();
        using var sdxl = Configs.IsSdxl ? EncodeSdxl(r, guidance, timings, notes) : null;
        using var ownContext = sdxl is null ? EncodePrompt(r, guidance, timings, notes) : null;
        var context = sdxl?.Context ?? ownContext!;
        if (options.ReleaseModelsAfterUse)
        {
            Release(ref textEncoder);
            Release(ref textEncoder2);
        }

        // 2. The schedule; an init image starts part-way, as far in as the strength says.
        scheduler.SetTimesteps(r.Steps);
        var timesteps = scheduler.Timesteps;
        int start = mode == GenerationMode.TextToImage ? 0 : ImageToImage.Plan(scheduler, r.Steps, r.Strength).StartIndex;
        int end = timesteps.Count;
        if (r.DenoisingEnd is float denoisingEnd)
        {
            double cutoff = Cutoff(denoisingEnd);
            end = timesteps.Count(t => t >= cutoff);
        }
        if (r.DenoisingStart is float denoisingStart)
        {
            double cutoff = Cutoff(denoisingStart);
            int n = timesteps.Count(t => t < cutoff);
            if (scheduler.Order == 2 && n % 2 == 0) n++; // diffusers: a second-order sampler must not stop between its two evaluations
            start = timesteps.Count - n;
        }

        // 3. The initial latents (drawn in diffusers' order: image latents, noise, masked-image latents). Inpainting at
        //    full strength starts from pure noise; image-to-image always noises the image, even at strength 1.
        bool fromNoise = mode == GenerationMode.TextToImage || (mode == GenerationMode.Inpaint && r.Strength >= 1f);
        bool blendLatents = mode == GenerationMode.Inpaint && !IsInpaintingModel;
        float[]? imageLatents = init is not null && (!fromNoise || blendLatents)
            ? Repeat(EncodeImage(init.ToTensor(), r.Width, r.Height, random, timings), batch) : null;
        var noise = r.Latents is null ? random.RandnNhwc(batch, z, h, w) : null;
        var latents = r.Latents is float[] given ? (float[])given.Clone()
            : fromNoise ? Scale(noise!, (float)scheduler.InitNoiseSigma) : scheduler.AddNoise(imageLatents!, noise!, start);

        float[]? latentMask = null, maskedImageLatents = null;
        if (mode == GenerationMode.Inpaint)
        {
            latentMask = Repeat(Nearest(pixelMask!, r.Width, r.Height, w, h), batch);
            if (IsInpaintingModel)
                maskedImageLatents = Repeat(EncodeImage(MaskOut(init!.ToTensor(), pixelMask!), r.Width, r.Height, random, timings), batch);
            else if (!UsesTinyVae)
                random.RandnNhwc(1, z, h, w); // diffusers encodes the masked image here anyway: keep the generator in step
        }

        // 4. Denoising.
        var model = Load(ref unet, "load unet", () =>
        {
            var m = new UNet2DConditionModel(Configs.Unet);
            m.Load(Component("unet"), ops, options.DType, lora.GetValueOrDefault("unet"));
            return m;
        }, timings);
        Busy("unet");
        for (int i = start; i < end; i++)
        {
            cancel.ThrowIfCancellationRequested();
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var modelInput = scheduler.ScaleModelInput(latents, i);
            if (IsInpaintingModel) modelInput = ConcatChannels(modelInput, z, latentMask!, 1, maskedImageLatents!, z);
            var eps = PredictNoise(model, modelInput, timesteps[i], context, guidance ? r.GuidanceScale : null, batch, h, w, sdxl);
            latents = scheduler.Step(eps, i, latents, () => random.RandnNhwc(batch, z, h, w));
            if (blendLatents)
            {
                // Keep the unmasked part on the init image's trajectory: noised to the next step's level.
                var proper = i < timesteps.Count - 1 ? scheduler.AddNoise(imageLatents!, noise!, i + 1) : imageLatents!;
                latents = Blend(proper, latents, latentMask!, z);
            }
            timings.Add(StageTimings.UnetStep, clock.Elapsed);
            progress?.Report(new StepProgress(i - start + 1, end - start, timesteps[i], clock.Elapsed)
                { Latents = latents, LatentHeight = h, LatentWidth = w });
        }
        if (options.ReleaseModelsAfterUse) Release(ref unet);

        // 5. Pixels.
        cancel.ThrowIfCancellationRequested();
        if (r.LatentsOnly) return new GenerationResult([], latents, h, w, z, timings, notes);
        var images = Decode(latents, batch, h, w, timings, notes);
        if (options.Vae is VaeOverride external)
            notes.Add($"the VAE from {external.Path} decoded in {vaeDType.Name()}" + (options.DType != DType.F16 ? ""
                : vaeDType == DType.F16 ? " (its config.json says it is fp16-safe: force_upcast false)"
                : external.Config is null ? " (a single file takes the model's VAE config, which asks for fp32)"
                : " (its config.json asks for fp32: force_upcast true or absent)"));
        else if (Configs.IsSdxl && options.DType == DType.F16)
            notes.Add(vaeDType == DType.F32
                ? "the SDXL VAE decoded in fp32: it overflows in fp16 unless it is an fp16-safe VAE (madebyollin's sdxl-vae-fp16-fix, force_upcast false)"
                : "the VAE decoded in fp16: its config says it is fp16-safe (force_upcast false, e.g. madebyollin's sdxl-vae-fp16-fix)");
        if (options.ReleaseModelsAfterUse)
        {
            Release(ref vae);
            Release(ref tiny);
        }
        return new GenerationResult(images, latents, h, w, z, timings, notes);
    }

    /// <summary>
    /// Decodes latents [batch, h, w, channels] (e.g. <see cref="StepProgress.Latents"/> of a generation stopped early)
    /// into images, as the end of <see cref="Generate"/> does.
    /// </summary>
    public IReadOnlyList<RgbImage> DecodeLatents(float[] latents, int batch, int latentHeight, int latentWidth, List<string>? notes = null)
    {
        var images = Decode(latents, batch, latentHeight, latentWidth, new StageTimings(), notes ?? []);
        if (options.ReleaseModelsAfterUse) Release(ref vae);
        return images;
    }

    /// <summary>diffusers' discrete_timestep_cutoff: int(round(T − fraction · T)).</summary>
    private double Cutoff(float fraction)
    {
        int t = SchedulerConfig.Parse(Configs.SchedulerConfigJson, "the model's scheduler config").NumTrainTimesteps ?? 1000;
        return Math.Round(t - (double)fraction * t, MidpointRounding.ToEven);
    }

    // ---- the text encoder ----

    /// <summary>[uncond × batch, cond × batch] contexts, each prompt chunked (the negative padded to the prompt's chunks).</summary>
    private Tensor EncodePrompt(GenerationRequest r, bool guidance, StageTimings timings, List<string> notes)
    {
        var prompts = guidance ? new[] { r.NegativePrompt, r.Prompt } : new[] { r.Prompt };
        var conditioner = Conditioner(prompts, timings);
        LoadTextEncoder(timings);
        using var c = Stage(timings, "text encoder", () => conditioner.Encode(ops, prompts));
        var context = c.Context;
        int length = context.Dim(1), width = context.Dim(2);
        // Each embedding once per image: [uncond × batch, cond × batch], the order the UNet batch uses.
        var e = context.ToFloatArray();
        int per = length * width;
        var repeated = new float[(long)per * prompts.Length * r.BatchSize];
        for (int p = 0; p < prompts.Length; p++)
        for (int b = 0; b < r.BatchSize; b++)
            Array.Copy(e, (long)p * per, repeated, ((long)p * r.BatchSize + b) * per, per);
        return Tensor.FromArray(ops.Device, repeated, context.DType, prompts.Length * r.BatchSize, length, width);
    }

    private SdxlCondition EncodeSdxl(GenerationRequest r, bool guidance, StageTimings timings, List<string> notes)
    {
        var prompts = guidance ? new[] { r.NegativePrompt, r.Prompt } : new[] { r.Prompt };
        // An SDXL embedding holds clip_l for text_encoder and clip_g for text_encoder_2.
        var vectors = Configs.IsRefiner ? null : embeddings.For(prompts, "clip_l", Configs.TextEncoder.HiddenSize);
        var vectors2 = embeddings.For(prompts, "clip_g", Configs.TextEncoder2!.HiddenSize);
        var counts = (vectors ?? vectors2).ToDictionary(v => v.Key, v => v.Value.Length, StringComparer.OrdinalIgnoreCase);
        // The refiner conditions on bigG alone.
        var encoder = Configs.IsRefiner ? null : LoadTextEncoder(timings);
        var encoder2 = Load(ref textEncoder2, "load text encoder 2", () =>
        {
            var m = new ClipTextModelWithProjection(Configs.TextEncoder2!);
            m.Load(Component("text_encoder_2"), ops, options.DType, lora.GetValueOrDefault("text_encoder_2"));
            return m;
        }, timings);
        var timeIds = Configs.IsRefiner
            ? SdxlConditioning.RefinerTimeIds((r.Height, r.Width), (0, 0), r.AestheticScore)
            : SdxlConditioning.TimeIds((r.Height, r.Width), (0, 0), (r.Height, r.Width));
        var negativeTimeIds = Configs.IsRefiner ? SdxlConditioning.RefinerTimeIds((r.Height, r.Width), (0, 0), r.NegativeAestheticScore) : null;
        return Stage(timings, "text encoder", () => SdxlConditioning.Encode(ops, Configs.IsRefiner ? null : new PromptChunker(Tokenizer, counts),
            new PromptChunker(Tokenizer2!, counts), encoder, encoder2, r.Prompt, r.NegativePrompt, guidance, r.BatchSize,
            Configs.ForceZerosForEmptyPrompt, timeIds, encoderOptions.ClipSkip, vectors, vectors2, negativeTimeIds));
    }

    // ---- the UNet ----

    /// <summary>
    /// ε for latents [batch, h, w, C]: with guidance, one UNet call on [x, x] against [uncond, cond], combined as
    /// ε_u + g·(ε_c − ε_u); without, one call on x against cond.
    /// </summary>
    private float[] PredictNoise(UNet2DConditionModel model, float[] modelInput, double timestep, Tensor context, float? guidanceScale,
        int batch, int h, int w, SdxlCondition? sdxl = null)
    {
        int c = Configs.Unet.InChannels, n = guidanceScale is null ? batch : 2 * batch;
        var input = guidanceScale is null ? modelInput : [.. modelInput, .. modelInput];
        using var x = Tensor.FromArray(ops.Device, input, options.DType, n, h, w, c);
        using var t = Tensor.FromArray(ops.Device, [(float)timestep], DType.F32, 1);
        using var y = model.Forward(ops, x, t, context, sdxl?.Pooled, sdxl?.TimeIds);
        var eps = y.ToFloatArray();
        if (guidanceScale is not float g) return eps;
        int half = eps.Length / 2;
        var guided = new float[half];
        for (int i = 0; i < half; i++) guided[i] = eps[i] + g * (eps[half + i] - eps[i]);
        return guided;
    }

    // ---- the VAE ----

    private AutoencoderKL LoadVae(StageTimings timings) => Load(ref vae, "load vae", () =>
    {
        var m = new AutoencoderKL(Configs.Vae);
        m.Load(VaeWeights ?? Component("vae"), ops, vaeDType);
        return m;
    }, timings);

    /// <summary>
    /// Latents → images, one image at a time (the decoder's activations dominate memory). An fp16 VAE that overflows
    /// (NaN or Inf in its output) is reloaded in fp32 and the image decoded again; the pipeline keeps the fp32 VAE.
    /// </summary>
    private RgbImage[] Decode(float[] latents, int batch, int h, int w, StageTimings timings, List<string> notes)
    {
        int z = Configs.Vae.LatentChannels, per = h * w * z, f = VaeScaleFactor;
        var images = new RgbImage[batch];
        for (int b = 0; b < batch; b++)
        {
            var one = latents.AsSpan(b * per, per).ToArray();
            var pixels = DecodeOne(one, h, w, timings, b == 0 ? notes : null);
            if (!AllFinite(pixels) && vaeDType == DType.F16 && !UsesTinyVae)
            {
                notes.Add("the fp16 VAE decode produced NaN/Inf values; decoded again in fp32 (the VAE stays fp32)");
                Release(ref vae);
                vaeDType = DType.F32;
                pixels = DecodeOne(one, h, w, timings);
            }
            if (!AllFinite(pixels)) notes.Add($"image {b + 1}: the decoded image has NaN/Inf values (written as black)");
            images[b] = RgbImage.FromTensor(pixels, w * f, h * f);
        }
        return images;
    }

    private static bool AllFinite(float[] x)
    {
        foreach (var v in x)
            if (!float.IsFinite(v)) return false;
        return true;
    }

    // ---- host-side latent arithmetic (a 512² image has 16,384 latent values per channel-set) ----

    private static float[] Scale(float[] x, float s)
    {
        var y = new float[x.Length];
        for (int i = 0; i < y.Length; i++) y[i] = x[i] * s;
        return y;
    }

    private static float[] Repeat(float[] x, int times)
    {
        var y = new float[(long)x.Length * times];
        for (int i = 0; i < times; i++) x.CopyTo(y, (long)i * x.Length);
        return y;
    }

    /// <summary>(1 − m)·proper + m·latents per pixel, m broadcast over the channels (diffusers' order of operations).</summary>
    private static float[] Blend(float[] proper, float[] latents, float[] mask, int channels)
    {
        var y = new float[latents.Length];
        for (int i = 0; i < y.Length; i++)
        {
            float m = mask[i / channels];
            y[i] = (1f - m) * proper[i] + m * latents[i];
        }
        return y;
    }

    /// <summary>Channels-last concatenation of three tensors with the same pixels: [.., a | b | c].</summary>
    private static float[] ConcatChannels(float[] a, int ca, float[] b, int cb, float[] c, int cc)
    {
        int pixels = a.Length / ca, total = ca + cb + cc;
        var y = new float[(long)pixels * total];
        for (int p = 0; p < pixels; p++)
        {
            Array.Copy(a, (long)p * ca, y, (long)p * total, ca);
            Array.Copy(b, (long)p * cb, y, (long)p * total + ca, cb);
            Array.Copy(c, (long)p * cc, y, (long)p * total + ca + cb, cc);
        }
        return y;
    }

    /// <summary>torch.nn.functional.interpolate(mode="nearest") of a [H, W] mask to [h, w]: source index ⌊i · H / h⌋.</summary>
    private static float[] Nearest(float[] mask, int width, int height, int w, int h)
    {
        var y = new float[w * h];
        float sy = (float)height / h, sx = (float)width / w;
        for (int i = 0; i < h; i++)
        for (int j = 0; j < w; j++)
            y[i * w + j] = mask[Math.Min((int)MathF.Floor(i * sy), height - 1) * width + Math.Min((int)MathF.Floor(j * sx), width - 1)];
        return y;
    }

    /// <summary>The inpainting UNet's masked image: the init image with the area to repaint set to 0 (mid grey).</summary>
    private static float[] MaskOut(float[] image, float[] mask)
    {
        var y = new float[image.Length];
        for (int i = 0; i < y.Length; i++) y[i] = mask[i / 3] < 0.5f ? image[i] : 0f;
        return y;
    }

    // ---- model lifetime ----

    // Not source.Require: that refuses families it does not recognise, while a diffusers folder's configs describe its
    // models whatever their widths (ModelConfigs.For has already refused SDXL and unknown single files).
    private ComponentWeights Component(string name) =>
        source.Component(name) ?? throw new WeightsException($"{source.Path}: has no {name} weights");

    private T Load<T>(ref T? model, string stage, Func<T> load, StageTimings timings) where T : class =>
        model ??= Stage(timings, stage, load);

    /// <summary>Names what the device is doing, for the message of an allocation that fails.</summary>
    private void Busy(string stage) => ops.Device.Pool.Stage = stage;

    /// <summary>
    /// The bytes a component's weights take once loaded (<see cref="Models.Module.ResidentDType"/>; biases and norms,
    /// a small part, counted as if they were GEMM weights).
    /// </summary>
    private long WeightBytes(ComponentWeights? c, DType dtype) => c is null ? 0 : c.Tensors.Sum(t =>
        t.Info.ElementCount * Models.Module.ResidentDType(ops, t.DType, dtype).SizeInBytes());

    /// <summary>The weights the VAE loads: the --vae override's, else the model's (null if it has none).</summary>
    private ComponentWeights? VaeWeights => options.Vae?.Weights ?? source.Component("vae");

    /// <summary>Names the stage for allocation messages (<see cref="Busy"/>) and times it.</summary>
    private T Stage<T>(StageTimings timings, string stage, Func<T> run)
    {
        Busy(stage);
        return timings.Measure(stage, run);
    }

    /// <summary>
    /// With a memory limit on the device's pool, refuses before anything loads a generation whose largest model's
    /// weights alone do not fit (the pipeline holds one model at a time when it releases them after use).
    /// </summary>
    private void CheckMemoryLimit()
    {
        if (ops.Device.Pool.Limit is not long limit) return;
        var parts = new List<(string Name, long Bytes)>
        {
            ("unet", WeightBytes(source.Component("unet"), options.DType)),
            ("text encoder", WeightBytes(source.Component("text_encoder"), options.DType)),
            ("text encoder 2", WeightBytes(Configs.IsSdxl ? source.Component("text_encoder_2") : null, options.DType)),
            ("vae", UsesTinyVae ? 0 : WeightBytes(VaeWeights, vaeDType)),
        };
        long held = options.ReleaseModelsAfterUse ? parts.Max(p => p.Bytes) : parts.Sum(p => p.Bytes);
        if (held <= limit) return;
        var largest = parts.MaxBy(p => p.Bytes);
        throw new UsageException($"memory limit of {limit / 1048576.0:F0} MiB: " + (options.ReleaseModelsAfterUse
            ? $"the {largest.Name}'s weights alone take {largest.Bytes / 1048576.0:F0} MiB"
            : $"the models kept loaded take {held / 1048576.0:F0} MiB (the {largest.Name} {largest.Bytes / 1048576.0:F0} MiB)"));
    }

    private void Release<T>(ref T? model) where T : Models.Module
    {
        if (model is null) return;
        model.Dispose();
        model = null;
        ops.Device.ReleaseCachedMemory(); // the next stage's memory comes back from the system, not on top of this one's
    }

    public void Dispose()
    {
        Release(ref textEncoder);
        Release(ref textEncoder2);
        Release(ref unet);
        Release(ref vae);
        Release(ref tiny);
    }
}
