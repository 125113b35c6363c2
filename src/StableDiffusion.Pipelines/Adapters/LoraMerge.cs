using StableDiffusion.IO;
using StableDiffusion.Models.Clip;
using StableDiffusion.Models.Unet;

namespace StableDiffusion.Pipelines.Adapters;

/// <summary>Which weights of a model's components the pipeline's LoRAs update (DESIGN.md §9: adapters act on parameter paths).</summary>
public static class LoraMerge
{
    /// <summary>Component → parameter path → updates; every module of every file must fit (<see cref="LoraFile.Resolve"/>).</summary>
    public static Dictionary<string, Dictionary<string, List<LoraUpdate>>> Resolve(IReadOnlyList<LoraFile> loras, ModelConfigs configs)
    {
        if (loras.Count == 0) return [];
        // Declaring the modules touches no weights: only their parameter names and shapes are read.
        using var unet = new UNet2DConditionModel(configs.Unet);
        using var textEncoder = new ClipTextModel(configs.TextEncoder);
        var layouts = new Dictionary<string, IReadOnlyDictionary<string, long[]>>
        {
            ["unet"] = unet.ExpectedLayout(),
            ["text_encoder"] = textEncoder.ExpectedLayout(),
        };
        if (configs.TextEncoder2 is { } c2)
        {
            using var textEncoder2 = new ClipTextModelWithProjection(c2);
            layouts["text_encoder_2"] = textEncoder2.ExpectedLayout();
        }
        return LoraFile.ResolveAll(loras, layouts);
    }

    /// <summary>A1111's <c>Lora hashes</c> infotext value: "name: hash, …" (names without ':' and ',').</summary>
    public static string? Hashes(IEnumerable<LoraFile> loras)
    {
        var items = loras.Select(l => $"{l.Name.Replace(":", "").Replace(",", "")}: {l.ShortHash()}").Distinct().ToList();
        return items.Count == 0 ? null : string.Join(", ", items);
    }
}
