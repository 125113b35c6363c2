namespace StableDiffusion.IO;

/// <summary>
/// A textual-inversion embedding file: A1111 .pt (<c>string_to_param</c>, through the restricted unpickler) or
/// .safetensors (<c>emb_params</c>), SDXL's (<c>clip_l</c> and <c>clip_g</c>), diffusers' learned_embeds (one tensor
/// under its placeholder token). Vectors come out as fp32 rows, keyed by the encoder they are for.
/// </summary>
public static class TextualInversionFile
{
    /// <summary>Vectors for any CLIP encoder of the right width (SD1/SD2 embeddings and diffusers' files).</summary>
    public const string AnyEncoder = "";

    public static readonly string[] Extensions = [".safetensors", ".pt", ".bin"];

    /// <summary>Encoder key (<see cref="AnyEncoder"/>, "clip_l", "clip_g") → vectors [n][width].</summary>
    public static IReadOnlyDictionary<string, float[][]> Read(string path)
    {
        if (!File.Exists(path)) throw new ConfigException($"{path}: embedding file not found");
        bool pickle = !path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase);
        using var file = pickle ? PyTorchZipFile.OpenNested(path) : WeightFile.Open(path);
        var result = new Dictionary<string, float[][]>();
        var tensors = file.Tensors;
        TensorInfo? generic = tensors.FirstOrDefault(t => t.Name == "emb_params")
            ?? tensors.FirstOrDefault(t => t.Name.StartsWith("string_to_param.", StringComparison.Ordinal))
            ?? (tensors.Count == 1 && tensors[0].Name is not ("clip_l" or "clip_g") ? tensors[0] : null);
        if (generic is not null) result[AnyEncoder] = Rows(file, generic, path);
        foreach (var key in new[] { "clip_l", "clip_g" })
            if (file.Find(key) is TensorInfo t) result[key] = Rows(file, t, path);
        if (result.Count == 0)
            throw new WeightsException($"{path}: not a textual-inversion embedding (no string_to_param, emb_params, clip_l/clip_g or single tensor; found {string.Join(", ", tensors.Take(4).Select(t => t.Name))})");
        return result;
    }

    private static float[][] Rows(WeightFile file, TensorInfo t, string path)
    {
        if (t.Shape.Length is not (1 or 2) || t.Shape[^1] < 1 || (t.Shape.Length == 2 && t.Shape[0] < 1))
            throw new WeightsException($"{path}: embedding tensor {t.Name} has shape {t.ShapeString}, expected [vectors, width]");
        var all = file.ReadFloat32(t);
        int width = (int)t.Shape[^1], n = all.Length / width;
        return Enumerable.Range(0, n).Select(i => all.AsSpan(i * width, width).ToArray()).ToArray();
    }
}
