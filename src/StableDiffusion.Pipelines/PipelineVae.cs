using StableDiffusion.Models.Vae;
using StableDiffusion.Pipelines.Images;
using StableDiffusion.Runtime;

namespace StableDiffusion.Pipelines;

/// <summary>How <see cref="StableDiffusionPipeline.Preview"/> turns latents into a picture.</summary>
public enum PreviewMethod
{
    /// <summary>A fixed linear map of the 4 latent channels to RGB, at latent resolution: free.</summary>
    Latent2Rgb,
    /// <summary>The tiny autoencoder's decode at full resolution (needs <see cref="PipelineOptions.TinyAutoencoder"/>).</summary>
    Taesd,
}

// The VAE stage: the full AutoencoderKL or the tiny autoencoder, whole or in tiles, and previews of latents.
public sealed partial class StableDiffusionPipeline
{
    private TinyAutoencoder? tiny;

    /// <summary>Decoding and encoding go through the tiny autoencoder instead of the model's VAE.</summary>
    private bool UsesTinyVae => options.TinyAutoencoder is not null;

    private TinyAutoencoder LoadTiny(StageTimings? timings)
    {
        if (tiny is not null) return tiny;
        var path = options.TinyAutoencoder ?? throw new UsageException("a tiny autoencoder preview needs a tiny autoencoder (--taesd)");
        TinyAutoencoder Load()
        {
            using var opened = TinyAutoencoderFiles.Open(path);
            if (opened.Config.LatentChannels != Configs.Vae.LatentChannels)
                throw new WeightsException($"{path}: the tiny autoencoder has {opened.Config.LatentChannels} latent channels, the model {Configs.Vae.LatentChannels}");
            // fp16 where the model runs in fp16: TAESD has no overflow-prone norms, diffusers runs it in fp16.
            return TinyAutoencoderFiles.Load(opened, ops, options.DType);
        }
        tiny = timings is null ? Load() : timings.Measure("load taesd", Load);
        return tiny;
    }

    /// <summary>
    /// An image [H, W, 3] in [-1, 1] → diffusion latents [1, h, w, C]. The VAE draws from its latent distribution
    /// with noise from <paramref name="random"/> (diffusers' retrieve_latents, sample_mode "sample"); the tiny
    /// autoencoder's latents are deterministic and draw nothing, as in diffusers.
    /// </summary>
    private float[] EncodeImage(float[] image, int width, int height, TorchRandom random, StageTimings timings)
    {
        int z = Configs.Vae.LatentChannels, f = VaeScaleFactor, h = height / f, w = width / f;
        bool tiled = Tiled(width, height, null);
        if (UsesTinyVae)
        {
            var tae = LoadTiny(timings);
            return Stage(timings, "taesd encode", () => tiled
                ? VaeTiling.Run(image, height, width, 3, z, 1, f, options.VaeTilePixels, (t, th, tw) => TinyEncode(tae, t, th, tw))
                : TinyEncode(tae, image, height, width));
        }
        var model = LoadVae(timings);
        return Stage(timings, tiled ? "vae encode (tiled)" : "vae encode", () =>
        {
            float[] Moments(float[] x, int th, int tw)
            {
                using var t = Tensor.FromArray(ops.Device, x, vaeDType, 1, th, tw, 3);
                using var m = model.Encode(ops, t);
                return m.ToFloatArray();
            }
            var moments = tiled
                ? VaeTiling.Run(image, height, width, 3, 2 * z, 1, f, options.VaeTilePixels, Moments)
                : Moments(image, height, width);
            using var mt = Tensor.FromArray(ops.Device, moments, vaeDType, 1, h, w, 2 * z);
            using var eps = Tensor.FromArray(ops.Device, random.RandnNhwc(1, z, h, w), vaeDType, 1, h, w, z);
            using var sample = model.Sample(ops, mt, eps);
            using var scaled = model.ScaleLatents(ops, sample);
            return scaled.ToFloatArray();
        });
    }

    private float[] TinyEncode(TinyAutoencoder tae, float[] image, int height, int width)
    {
        using var x = Tensor.FromArray(ops.Device, image, tae.DType, 1, height, width, 3);
        using var latents = tae.EncodeToLatents(ops, x);
        return latents.ToFloatArray();
    }

    private float[] DecodeOne(float[] latents, int h, int w, StageTimings timings, List<string>? notes = null)
    {
        int f = VaeScaleFactor, z = Configs.Vae.LatentChannels;
        bool tiled = Tiled(w * f, h * f, notes);
        int tile = options.VaeTilePixels / f;
        if (UsesTinyVae)
        {
            var tae = LoadTiny(timings);
            return Stage(timings, tiled ? "taesd decode (tiled)" : "taesd decode", () => tiled
                ? VaeTiling.Run(latents, h, w, z, 3, f, 1, tile, (t, th, tw) => TinyDecode(tae, t, th, tw))
                : TinyDecode(tae, latents, h, w));
        }
        var model = LoadVae(timings);
        float[] Decode(float[] x, int th, int tw)
        {
            using var t = Tensor.FromArray(ops.Device, x, DType.F32, 1, th, tw, z);
            using var image = model.Decode(ops, t);
            return image.ToFloatArray();
        }
        return Stage(timings, tiled ? "vae decode (tiled)" : "vae decode", () => tiled
            ? VaeTiling.Run(latents, h, w, z, 3, f, 1, tile, Decode)
            : Decode(latents, h, w));
    }

    private float[] TinyDecode(TinyAutoencoder tae, float[] latents, int h, int w)
    {
        using var x = Tensor.FromArray(ops.Device, latents, tae.DType, 1, h, w, Configs.Vae.LatentChannels);
        using var image = tae.Decode(ops, x);
        return image.ToFloatArray();
    }

    /// <summary>
    /// Whether a width × height image is coded in tiles: when asked, or when the untiled decode's activations would
    /// exceed the memory budget (<see cref="PipelineOptions.MemoryBudgetBytes"/>, else what the device has free),
    /// which adds a note.
    /// </summary>
    private bool Tiled(int width, int height, List<string>? notes)
    {
        if (options.VaeTilePixels <= 0 || options.VaeTilePixels % (4 * VaeScaleFactor) != 0)
            throw new UsageException($"VAE tile size {options.VaeTilePixels}: must be a positive multiple of {4 * VaeScaleFactor}");
        if (width <= options.VaeTilePixels && height <= options.VaeTilePixels) return false; // one tile: nothing to gain
        if (options.VaeTiling) return true;
        var dt = UsesTinyVae ? options.DType : vaeDType;
        int[] widths = UsesTinyVae ? [64, 64] : Configs.Vae.BlockOutChannels;
        long need = VaeTiling.DecodePeakBytes(width, height, widths, dt.SizeInBytes());
        long budget = options.MemoryBudgetBytes ?? FreeBytes();
        if (need <= budget) return false;
        notes?.Add($"decoding {width}x{height} whole needs about {need >> 20} MiB of activations, more than the {budget >> 20} MiB " +
                   $"available: decoded in {options.VaeTilePixels}-pixel tiles (as --vae-tiling)");
        return true;
    }

    /// <summary>
    /// Memory free for the VAE's activations: under the pool's limit, what the limit leaves beside the weights in use
    /// and the VAE's own (if not yet loaded); else the host's available memory on the CPU backends, the device's otherwise.
    /// </summary>
    private long FreeBytes()
    {
        if (ops.Device.Pool.Limit is long limit)
            return limit - ops.Device.Pool.BytesInUse - (vae is null && !UsesTinyVae ? WeightBytes(VaeWeights, vaeDType) : 0);
        if (ops.Device.Kind is DeviceKind.Cpu or DeviceKind.IlgpuCpu)
            return MemoryInfo.AvailableBytes() ?? long.MaxValue;
        return ops.Device.MemoryBytes - ops.Device.Pool.BytesInUse;
    }

    /// <summary>
    /// A preview of the first image of latents [batch, h, w, C] (the latents a <see cref="StepProgress"/> carries):
    /// a latent-to-RGB linear approximation at latent resolution, or the tiny autoencoder's decode.
    /// </summary>
    public RgbImage Preview(float[] latents, int h, int w, PreviewMethod method)
    {
        int z = Configs.Vae.LatentChannels;
        var first = latents.AsSpan(0, h * w * z).ToArray();
        if (method == PreviewMethod.Taesd)
            return RgbImage.FromTensor(TinyDecode(LoadTiny(null), first, h, w), w * VaeScaleFactor, h * VaeScaleFactor);
        return RgbImage.FromTensor(LatentPreview.ToRgb(first, h, w, z, Configs.IsSdxl), w, h);
    }

    /// <summary>Loads the tiny autoencoder now (so previews do not load it in the middle of sampling).</summary>
    public void PrepareTinyAutoencoder(StageTimings timings) => LoadTiny(timings);
}

/// <summary>
/// The published linear latent → RGB approximations (ComfyUI's latent_rgb_factors): for SD1.x/SD2.x latents
/// rgb = Σ_c latent_c · F[c], for SDXL's its own factors plus a bias; the result is in about [-1, 1].
/// </summary>
public static class LatentPreview
{
    private static readonly float[,] Sd = { { 0.3512f, 0.2297f, 0.3227f }, { 0.3250f, 0.4974f, 0.2350f }, { -0.2829f, 0.1762f, 0.2721f }, { -0.2120f, -0.2616f, -0.7177f } };
    private static readonly float[,] Sdxl = { { 0.3651f, 0.4232f, 0.4341f }, { -0.2533f, -0.0042f, 0.1068f }, { 0.1076f, 0.1111f, -0.0362f }, { -0.3165f, -0.2492f, -0.2188f } };
    private static readonly float[] SdxlBias = [0.1084f, -0.0175f, -0.0011f];

    /// <summary>latents [h, w, 4] → [h, w, 3] in about [-1, 1] (SDXL's factors and bias for SDXL latents).</summary>
    public static float[] ToRgb(float[] latents, int h, int w, int channels, bool sdxl = false)
    {
        var f = sdxl ? Sdxl : Sd;
        if (channels != 4) throw new UsageException($"latent2rgb preview: {channels} latent channels; the factors are for 4");
        var rgb = new float[h * w * 3];
        for (int p = 0; p < h * w; p++)
        for (int o = 0; o < 3; o++)
        {
            float s = sdxl ? SdxlBias[o] : 0f;
            for (int c = 0; c < 4; c++) s += latents[p * 4 + c] * f[c, o];
            rgb[p * 3 + o] = s;
        }
        return rgb;
    }
}

/// <summary>Process memory figures from /proc (Linux); null where they cannot be read.</summary>
public static class MemoryInfo
{
    /// <summary>The peak resident set size of this process (VmHWM).</summary>
    public static long? PeakRssBytes() => Field("/proc/self/status", "VmHWM:");

    /// <summary>The resident set size of this process now (VmRSS).</summary>
    public static long? RssBytes() => Field("/proc/self/status", "VmRSS:");

    /// <summary>Memory the host can give without swapping (MemAvailable).</summary>
    public static long? AvailableBytes() => Field("/proc/meminfo", "MemAvailable:");

    private static long? Field(string file, string key)
    {
        try
        {
            foreach (var line in File.ReadLines(file))
                if (line.StartsWith(key, StringComparison.Ordinal))
                {
                    var parts = line[key.Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    return long.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture) * 1024; // kB
                }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
        return null;
    }
}
