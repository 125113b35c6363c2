using System.Text.RegularExpressions;
using StableDiffusion.IO;

namespace StableDiffusion.Pipelines.Conditioning;

/// <summary>
/// The textual-inversion embeddings of a folder, by file name (A1111: the name as a word in the prompt; ComfyUI:
/// <c>embedding:name</c>). Only the files a prompt names are read, so one bad or foreign file in the folder does not
/// stop prompts that do not use it.
/// </summary>
public sealed class EmbeddingLibrary
{
    private readonly Dictionary<string, string> files = new(StringComparer.OrdinalIgnoreCase);
    private readonly Dictionary<string, IReadOnlyDictionary<string, float[][]>> loaded = new(StringComparer.OrdinalIgnoreCase);

    public static readonly EmbeddingLibrary None = new();

    private EmbeddingLibrary() { }

    public static EmbeddingLibrary Open(string? folder)
    {
        var lib = new EmbeddingLibrary();
        if (folder is null) return lib;
        if (!Directory.Exists(folder)) throw new UsageException($"--embeddings-dir {folder}: no such folder");
        foreach (var f in Directory.EnumerateFiles(folder).Order(StringComparer.Ordinal))
            if (TextualInversionFile.Extensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
                lib.files.TryAdd(Path.GetFileNameWithoutExtension(f), f);
        return lib;
    }

    public IReadOnlyCollection<string> Names => files.Keys;

    /// <summary>
    /// The vectors, for the encoder <paramref name="encoder"/> ("clip_l", "clip_g") of width <paramref name="width"/>,
    /// of every embedding the prompts name.
    /// </summary>
    public Dictionary<string, float[][]> For(IEnumerable<string> prompts, string encoder, int width)
    {
        var result = new Dictionary<string, float[][]>(StringComparer.OrdinalIgnoreCase);
        if (files.Count == 0) return result;
        var text = string.Join("\n", prompts);
        foreach (var (name, path) in files)
        {
            if (!Regex.IsMatch(text, @"(?<![\p{L}\p{N}_-])" + Regex.Escape(name) + @"(?![\p{L}\p{N}_-])", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant))
                continue;
            if (!loaded.TryGetValue(name, out var all)) loaded[name] = all = TextualInversionFile.Read(path);
            var vectors = all.GetValueOrDefault(encoder) ?? all.GetValueOrDefault(TextualInversionFile.AnyEncoder)
                ?? throw new WeightsException($"{path}: embedding {name} has vectors for {string.Join(" and ", all.Keys)} only, none for this model's {encoder} text encoder");
            if (vectors[0].Length != width)
                throw new WeightsException($"{path}: embedding {name} is {vectors[0].Length} wide; this model's text encoder takes {width} (an embedding for another model family)");
            if (vectors.Length > Prompts.PromptChunker.ChunkTokens)
                throw new WeightsException($"{path}: embedding {name} has {vectors.Length} vectors; a prompt chunk holds {Prompts.PromptChunker.ChunkTokens}");
            result[name] = vectors;
        }
        return result;
    }
}
