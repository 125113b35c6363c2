using System.Globalization;
using System.Text;

namespace StableDiffusion.Pipelines.Images;

/// <summary>What a generated image records about how it was made (A1111's "infotext").</summary>
public sealed record GenerationParameters
{
    public required string Prompt { get; init; }
    public string NegativePrompt { get; init; } = "";
    public required int Steps { get; init; }
    /// <summary>The sampler's canonical name (euler_a, dpmpp_2m, ...); written under A1111's display name.</summary>
    public required string Sampler { get; init; }
    /// <summary>karras, exponential, or null/"default" for the sampler's own schedule.</summary>
    public string? Schedule { get; init; }
    public required float CfgScale { get; init; }
    public required ulong Seed { get; init; }
    public required int Width { get; init; }
    public required int Height { get; init; }
    /// <summary>A1111's short model hash: the first 10 hex digits of the checkpoint's sha256.</summary>
    public string? ModelHash { get; init; }
    public string? Model { get; init; }
    /// <summary>Image-to-image and inpainting strength.</summary>
    public float? DenoisingStrength { get; init; }
    /// <summary>Written, as A1111 does, only above 1.</summary>
    public int? ClipSkip { get; init; }
    public int BatchSize { get; init; } = 1;
    /// <summary>0-based position of this image in its batch.</summary>
    public int BatchPosition { get; init; }
    /// <summary>A1111's "Lora hashes": "name: short hash, …".</summary>
    public string? LoraHashes { get; init; }
    /// <summary>A1111's "VAE hash" and "VAE" (file name) of a VAE that replaced the model's.</summary>
    public string? VaeHash { get; init; }
    public string? Vae { get; init; }
    /// <summary>A1111's "Refiner" (short title: "name [hash]") and "Refiner switch at".</summary>
    public string? Refiner { get; init; }
    public float? RefinerSwitchAt { get; init; }
}

/// <summary>
/// The text A1111 stores in a PNG's <c>parameters</c> chunk, in its exact format, so A1111 ("PNG Info"), ComfyUI's
/// A1111 readers and civitai read ours back:
/// <code>
/// a photo of a cat
/// Negative prompt: blurry
/// Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly
/// </code>
/// The negative prompt line is left out when it is empty; a value containing ',', ':' or a line break is written as a
/// JSON string (A1111's <c>infotext_utils.quote</c>).
/// </summary>
public static class Infotext
{
    /// <summary>Our sampler names → A1111's.</summary>
    private static readonly Dictionary<string, string> SamplerNames = new(StringComparer.OrdinalIgnoreCase)
    {
        ["euler"] = "Euler",
        ["euler_a"] = "Euler a",
        ["heun"] = "Heun",
        ["lms"] = "LMS",
        ["dpmpp_2m"] = "DPM++ 2M",
        ["dpmpp_2m_sde"] = "DPM++ 2M SDE",
        ["unipc"] = "UniPC",
        ["lcm"] = "LCM",
        ["ddim"] = "DDIM",
        ["pndm"] = "PLMS",
    };

    public static string SamplerDisplayName(string sampler) => SamplerNames.GetValueOrDefault(sampler, sampler);

    public static string Format(GenerationParameters p)
    {
        var fields = new List<(string Key, string? Value)>
        {
            ("Steps", Num(p.Steps)),
            ("Sampler", SamplerDisplayName(p.Sampler)),
            ("Schedule type", p.Schedule is null or "default" ? null : CultureInfo.InvariantCulture.TextInfo.ToTitleCase(p.Schedule)),
            ("CFG scale", Num(p.CfgScale)),
            ("Seed", p.Seed.ToString(CultureInfo.InvariantCulture)),
            ("Size", $"{p.Width}x{p.Height}"),
            ("Model hash", p.ModelHash),
            ("Model", p.Model),
            ("VAE hash", p.VaeHash),
            ("VAE", p.Vae),
            ("Denoising strength", p.DenoisingStrength is float s ? Num(s) : null),
            ("Clip skip", p.ClipSkip is > 1 ? Num(p.ClipSkip.Value) : null),
            ("Batch size", p.BatchSize > 1 ? Num(p.BatchSize) : null),
            ("Batch pos", p.BatchSize > 1 ? Num(p.BatchPosition) : null),
            ("Lora hashes", p.LoraHashes),
            ("Refiner", p.Refiner),
            ("Refiner switch at", p.RefinerSwitchAt is float r ? Num(r) : null),
        };
        var text = new StringBuilder(p.Prompt);
        if (p.NegativePrompt.Length > 0) text.Append("\nNegative prompt: ").Append(p.NegativePrompt);
        text.Append('\n').AppendJoin(", ", fields.Where(f => f.Value is not null).Select(f => $"{f.Key}: {Quote(f.Value!)}"));
        return text.ToString().Trim();
    }

    private static string Num(int v) => v.ToString(CultureInfo.InvariantCulture);

    /// <summary>The shortest text that reads back as the same float, as A1111's UI values print: 7 → "7", 7.5 → "7.5".</summary>
    private static string Num(float v) => v.ToString(CultureInfo.InvariantCulture);

    /// <summary>A1111's quote(): as is, unless it holds ',', ':' or '\n'; then json.dumps(text, ensure_ascii=False).</summary>
    public static string Quote(string value)
    {
        if (value.IndexOfAny([',', ':', '\n']) < 0) return value;
        var b = new StringBuilder(value.Length + 2).Append('"');
        foreach (var c in value)
        {
            switch (c)
            {
                case '"': b.Append("\\\""); break;
                case '\\': b.Append("\\\\"); break;
                case '\n': b.Append("\\n"); break;
                case '\r': b.Append("\\r"); break;
                case '\t': b.Append("\\t"); break;
                case '\b': b.Append("\\b"); break;
                case '\f': b.Append("\\f"); break;
                case < ' ': b.Append($"\\u{(int)c:x4}"); break;
                default: b.Append(c); break;
            }
        }
        return b.Append('"').ToString();
    }
}
