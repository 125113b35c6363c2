using System.Globalization;
using System.Text.RegularExpressions;

namespace StableDiffusion.Pipelines.Adapters;

/// <summary>
/// A1111's LoRA tags in a prompt: <c>&lt;lora:NAME&gt;</c> or <c>&lt;lora:NAME:W&gt;</c> (W defaults to 1), removed from
/// the text the tokenizer sees, as A1111's extra-networks parser does.
/// </summary>
public static partial class LoraTags
{
    [GeneratedRegex("<lora:([^>]*)>", RegexOptions.CultureInvariant)]
    private static partial Regex Tag();

    /// <summary>The prompt without its LoRA tags, and each tag's name and weight in order.</summary>
    public static (string CleanPrompt, IReadOnlyList<(string Name, float Weight)> Loras) Extract(string prompt)
    {
        var loras = new List<(string, float)>();
        var clean = Tag().Replace(prompt, m =>
        {
            var items = m.Groups[1].Value.Split(':');
            var name = items[0].Trim();
            if (name.Length == 0) throw new UsageException($"{m.Value}: the tag names no LoRA; write <lora:NAME> or <lora:NAME:WEIGHT>");
            if (items.Length > 2)
                throw new UsageException($"{m.Value}: only <lora:NAME> and <lora:NAME:WEIGHT> are supported (one weight for text encoder and UNet)");
            float weight = 1f;
            if (items.Length == 2 &&
                (!float.TryParse(items[1].Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out weight) || !float.IsFinite(weight)))
                throw new UsageException($"{m.Value}: the weight '{items[1]}' is not a number");
            loras.Add((name, weight));
            return "";
        });
        return (clean, loras);
    }
}
