using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using StableDiffusion.Pipelines;
using StableDiffusion.Pipelines.Adapters;
using StableDiffusion.Pipelines.Images;
using StableDiffusion.Schedulers;

namespace StableDiffusion.Server;

/// <summary>One generation request, checked against <see cref="GenerationLimits"/>, whatever API it came through.</summary>
public sealed record GenerationSpec
{
    public required string Prompt { get; init; }
    public string NegativePrompt { get; init; } = "";
    public int Steps { get; init; } = 20;
    public float Cfg { get; init; } = 7f;
    public int Width { get; init; } = 512;
    public int Height { get; init; } = 512;
    public ulong Seed { get; init; }
    /// <summary>Our canonical sampler name (euler_a, dpmpp_2m, …).</summary>
    public string Sampler { get; init; } = "euler_a";
    /// <summary>karras, exponential or null (the sampler's own).</summary>
    public string? Schedule { get; init; }
    /// <summary>Images per draw of noise (one UNet batch).</summary>
    public int BatchSize { get; init; } = 1;
    /// <summary>Draws one after the other (A1111's n_iter); draw k uses seed + k.</summary>
    public int Iterations { get; init; } = 1;
    public RgbImage? InitImage { get; init; }
    public RgbImage? Mask { get; init; }
    public float Strength { get; init; } = 0.75f;
    /// <summary>The prompts without their &lt;lora:NAME:W&gt; tags (what the tokenizer sees; the infotext keeps the tags).</summary>
    public string CleanPrompt { get; init; } = "";
    public string CleanNegativePrompt { get; init; } = "";
    /// <summary>The tags' LoRAs, found in --lora-dir and merged at load.</summary>
    public IReadOnlyList<(string Name, float Weight)> Loras { get; init; } = [];
    /// <summary>A model to switch to first (a catalog name or title); null keeps the loaded one.</summary>
    public string? Model { get; init; }
    /// <summary>A1111's CLIP_stop_at_last_layers from override_settings; null (or 1, A1111's default) = the server's setting.</summary>
    public int? ClipSkip { get; init; }
    /// <summary>The request's fields as A1111 echoes them back in "parameters".</summary>
    public JsonObject Parameters { get; init; } = [];
}

/// <summary>
/// Reads A1111's txt2img/img2img JSON (StableDiffusionProcessingTxt2Img/Img2Img field names) into a
/// <see cref="GenerationSpec"/>. Unknown fields are ignored as A1111 does; a field of the wrong type is a 400, a value
/// out of range or a feature this engine lacks a 422, each naming the field.
/// </summary>
public static class A1111Request
{
    public static GenerationSpec Parse(JsonElement body, bool img2img, long maxPixels = ImageFiles.DefaultMaxPixels)
    {
        if (body.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("the body must be a JSON object");
        var prompt = Str(body, "prompt") ?? "";
        var negative = Str(body, "negative_prompt") ?? "";
        CheckPrompt(prompt, negative);
        int steps = Int(body, "steps", 20, GenerationLimits.MinSteps, GenerationLimits.MaxSteps);
        float cfg = Float(body, "cfg_scale", 7f, GenerationLimits.MinCfg, GenerationLimits.MaxCfg);
        int batch = Int(body, "batch_size", 1, GenerationLimits.MinBatch, GenerationLimits.MaxBatch);
        int iterations = Int(body, "n_iter", 1, 1, 100);
        var (sampler, schedule) = Sampler(Str(body, "sampler_name") ?? Str(body, "sampler_index") ?? "Euler a", Str(body, "scheduler"));
        ulong seed = Seed(body);
        if (Bool(body, "enable_hr")) throw ApiException.Invalid("enable_hr: the hires fix is not supported");

        var overrides = body.TryGetProperty("override_settings", out var o) && o.ValueKind == JsonValueKind.Object ? o : default;
        string? model = null;
        int? clipSkip = null;
        if (overrides.ValueKind == JsonValueKind.Object)
        {
            if (overrides.TryGetProperty("CLIP_stop_at_last_layers", out _))
                clipSkip = Int(overrides, "CLIP_stop_at_last_layers", 1, 1, 12);
            model = Str(overrides, "sd_model_checkpoint");
        }

        RgbImage? init = null, mask = null;
        float strength = 0.75f;
        int? width = Side(body, "width"), height = Side(body, "height");
        if (img2img)
        {
            if (!body.TryGetProperty("init_images", out var images) || images.ValueKind != JsonValueKind.Array || images.GetArrayLength() == 0)
                throw ApiException.Invalid("init_images: img2img needs one image (a base64 PNG, JPEG, BMP or WebP)");
            if (images.GetArrayLength() > 1) throw ApiException.Invalid("init_images: one image per request");
            init = Base64Image(images[0], "init_images[0]", maxPixels);
            strength = Float(body, "denoising_strength", 0.75f, 0f, 1f);
            if (strength <= 0f) throw ApiException.Invalid("denoising_strength must be above 0 (0 would leave the image unchanged)");
            if (body.TryGetProperty("mask", out var m) && m.ValueKind != JsonValueKind.Null)
            {
                mask = Base64Image(m, "mask", maxPixels);
                int fill = Int(body, "inpainting_fill", 1, 0, 3);
                if (fill != 1) throw ApiException.Invalid($"inpainting_fill {fill}: only 1 (original) is supported");
                if (Bool(body, "inpaint_full_res")) throw ApiException.Invalid("inpaint_full_res: only false (the whole picture) is supported");
            }
            // A1111 takes an init image's size unless told otherwise; rounded down to a multiple of 8 here.
            width ??= Math.Max(GenerationLimits.SideMultiple, Math.Min(GenerationLimits.MaxSide, init.Width) / 8 * 8);
            height ??= Math.Max(GenerationLimits.SideMultiple, Math.Min(GenerationLimits.MaxSide, init.Height) / 8 * 8);
        }
        return WithLoras(new GenerationSpec
        {
            Prompt = prompt, NegativePrompt = negative, Steps = steps, Cfg = cfg, Width = width ?? 512, Height = height ?? 512,
            Seed = seed, Sampler = sampler, Schedule = schedule, BatchSize = batch, Iterations = iterations,
            InitImage = init, Mask = mask, Strength = strength, Model = model, ClipSkip = clipSkip,
            Parameters = Echo(body),
        });
    }

    /// <summary>The request's fields without the images (A1111 echoes the request; the images would double the answer).</summary>
    private static JsonObject Echo(JsonElement body)
    {
        var o = JsonNode.Parse(body.GetRawText())!.AsObject();
        foreach (var big in new[] { "init_images", "mask" })
            if (o.ContainsKey(big)) o[big] = null;
        return o;
    }

    public static void CheckPrompt(string prompt, string negative)
    {
        if (prompt.Length + negative.Length > GenerationLimits.MaxPromptChars)
            throw ApiException.Invalid($"prompt and negative_prompt: {prompt.Length + negative.Length} characters; at most {GenerationLimits.MaxPromptChars}");
    }

    /// <summary>The spec with its prompts' LoRA tags taken out (a malformed tag is a 422).</summary>
    public static GenerationSpec WithLoras(GenerationSpec spec)
    {
        try
        {
            var (prompt, tags) = LoraTags.Extract(spec.Prompt);
            var (negative, negativeTags) = LoraTags.Extract(spec.NegativePrompt);
            return spec with { CleanPrompt = prompt, CleanNegativePrompt = negative, Loras = [.. tags, .. negativeTags] };
        }
        catch (UsageException e)
        {
            throw ApiException.Invalid(e.Message);
        }
    }

    /// <summary>A1111's sampler name ("DPM++ 2M", "Euler a", also "DPM++ 2M Karras") and scheduler ("Automatic", "Karras", "Exponential").</summary>
    public static (string Sampler, string? Schedule) Sampler(string name, string? scheduler)
    {
        var canonical = Samplers.Canonical(name)
            ?? throw ApiException.Invalid($"sampler_name '{name}' is unknown; GET /sdapi/v1/samplers lists them");
        string? schedule = scheduler?.Trim().ToLowerInvariant() switch
        {
            null or "" or "automatic" => null,
            "karras" => "karras",
            "exponential" => "exponential",
            "uniform" or "normal" or "default" => "default",
            _ => throw ApiException.Invalid($"scheduler '{scheduler}' is not supported; GET /sdapi/v1/schedulers lists them"),
        };
        var lower = name.Trim().ToLowerInvariant();
        if (lower.EndsWith("karras", StringComparison.Ordinal)) schedule ??= "karras";
        if (lower.EndsWith("exponential", StringComparison.Ordinal)) schedule ??= "exponential";
        return (canonical, schedule == "default" ? null : schedule);
    }

    private static ulong Seed(JsonElement body)
    {
        if (!body.TryGetProperty("seed", out var s) || s.ValueKind == JsonValueKind.Null) return RandomSeed();
        if (s.ValueKind != JsonValueKind.Number) throw ApiException.BadRequest("seed: expected an integer");
        if (s.TryGetInt64(out long v) && v == -1) return RandomSeed();
        if (s.TryGetUInt64(out ulong u)) return u;
        throw ApiException.Invalid($"seed {s.GetRawText()}: must be an integer from 0 to 18446744073709551615, or -1 for a random one");
    }

    private static ulong RandomSeed() => (ulong)Random.Shared.NextInt64(0, 1L << 32);

    public static RgbImage Base64Image(JsonElement e, string field, long maxPixels)
    {
        if (e.ValueKind != JsonValueKind.String) throw ApiException.BadRequest($"{field}: expected a base64 string");
        var text = e.GetString()!;
        // Browsers send data URLs: data:image/png;base64,....
        if (text.StartsWith("data:", StringComparison.Ordinal))
        {
            int comma = text.IndexOf(',');
            if (comma < 0) throw ApiException.BadRequest($"{field}: a data URL without a comma");
            text = text[(comma + 1)..];
        }
        if ((long)text.Length * 3 / 4 > ImageFiles.MaxFileBytes)
            throw ApiException.Invalid($"{field}: more than {ImageFiles.MaxFileBytes >> 20} MiB");
        byte[] bytes;
        try
        {
            bytes = Convert.FromBase64String(text);
        }
        catch (FormatException)
        {
            throw ApiException.BadRequest($"{field}: not valid base64");
        }
        try
        {
            return ImageFiles.Decode(bytes, field, maxPixels);
        }
        catch (ImageException x)
        {
            throw ApiException.Invalid(x.Message);
        }
    }

    // ---- typed fields: a wrong type is a 400, a value out of range a 422 ----

    public static string? Str(JsonElement o, string name) =>
        !o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.String ? v.GetString()
        : throw ApiException.BadRequest($"{name}: expected a string, got {Kind(v)}");

    public static int Int(JsonElement o, string name, int fallback, int min, int max)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
        if (v.ValueKind != JsonValueKind.Number) throw ApiException.BadRequest($"{name}: expected an integer, got {Kind(v)}");
        if (!v.TryGetInt32(out int i))
        {
            // 20.0 is an integer; 20.5 is not.
            if (v.TryGetDouble(out double d) && d == Math.Floor(d) && d >= int.MinValue && d <= int.MaxValue) i = (int)d;
            else throw ApiException.Invalid($"{name} {v.GetRawText()}: must be an integer from {min} to {max}");
        }
        if (i < min || i > max) throw ApiException.Invalid($"{name} {i}: must be an integer from {min} to {max}");
        return i;
    }

    public static float Float(JsonElement o, string name, float fallback, float min, float max)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
        if (v.ValueKind != JsonValueKind.Number) throw ApiException.BadRequest($"{name}: expected a number, got {Kind(v)}");
        double d = v.GetDouble();
        if (!double.IsFinite(d) || d < min || d > max)
            throw ApiException.Invalid($"{name} {v.GetRawText()}: must be a number from {min.ToString(CultureInfo.InvariantCulture)} to {max.ToString(CultureInfo.InvariantCulture)}");
        return (float)d;
    }

    public static bool Bool(JsonElement o, string name) =>
        o.TryGetProperty(name, out var v) && v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False or JsonValueKind.Null => false,
            _ => throw ApiException.BadRequest($"{name}: expected true or false, got {Kind(v)}"),
        };

    private static int? Side(JsonElement o, string name)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        int i = Int(o, name, 0, int.MinValue, int.MaxValue);
        if (!GenerationLimits.IsSide(i))
            throw ApiException.Invalid($"{name} {i}: must be a multiple of {GenerationLimits.SideMultiple} from {GenerationLimits.MinSide} to {GenerationLimits.MaxSide}");
        return i;
    }

    private static string Kind(JsonElement v) => v.ValueKind switch
    {
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        _ => v.ValueKind.ToString().ToLowerInvariant(),
    };
}
