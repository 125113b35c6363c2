using StableDiffusion.Models.Clip;
using StableDiffusion.Pipelines.Prompts;
using StableDiffusion.Runtime;

namespace StableDiffusion.Pipelines.Conditioning;

/// <summary>How one CLIP text encoder turns chunks into hidden states.</summary>
public sealed record ClipEncoderOptions
{
    /// <summary>1 = the loaded encoder's last layer, 2 = the one before it (counted on the layers the model holds).</summary>
    public int ClipSkip { get; init; } = 1;

    /// <summary>Textual-inversion vectors for this encoder by name, each of the encoder's width.</summary>
    public IReadOnlyDictionary<string, float[][]> Embeddings { get; init; } = new Dictionary<string, float[][]>();

    /// <summary>Also give the last layer's final-layer-normed state at the first chunk's end token (CLIP's pooled output).</summary>
    public bool Pooled { get; init; }

    /// <summary>The end token's id, where the pooled output is read.</summary>
    public int EndId { get; init; } = 49407;
}

/// <summary>
/// One CLIP text encoder over chunked prompts: every chunk of every prompt in one batch, textual-inversion vectors put
/// in at the token-embedding input, the chosen layer's hidden states, then A1111's emphasis per chunk. SDXL runs two
/// of these (its encoders differ in width, clip skip and pooling) and concatenates their contexts.
/// </summary>
public sealed class ClipPromptEncoder(ClipTextModel model, ClipEncoderOptions options)
{
    public ClipTextModel Model => model;
    public ClipEncoderOptions Options => options;

    /// <summary>
    /// chunks[p][j] (every prompt with the same number of chunks) → host context [prompts, chunks·77, width] and, if
    /// asked, pooled [prompts, width].
    /// </summary>
    public (float[] Context, float[]? Pooled) Encode(IOps ops, IReadOnlyList<IReadOnlyList<PromptChunk>> chunks)
    {
        int prompts = chunks.Count, n = chunks[0].Count, length = PromptChunker.Length, width = model.Config.HiddenSize;
        if (chunks.Any(c => c.Count != n)) throw new ArgumentException("every prompt needs the same number of chunks");
        var all = chunks.SelectMany(c => c).ToList();
        var vectors = Slots(all, options.Embeddings);
        var z = Run(ops, all, vectors, (t, v) => model.Forward(ops, t, options.ClipSkip, v), out _);

        float[]? pooled = null;
        if (options.Pooled)
        {
            // Each prompt's first chunk through every layer, unweighted, at its first end token.
            var first = Enumerable.Range(0, prompts).Select(p => chunks[p][0]).ToList();
            var firstVectors = vectors.Where(v => v.Row / length % n == 0)
                .Select(v => (v.Row / length / n * length + v.Row % length, v.Vector)).ToList();
            using var firstIds = Tensor.FromInts(ops.Device, first.SelectMany(c => c.Ids).ToArray(), prompts, length);
            using var last = model.Forward(ops, firstIds, 1, firstVectors);
            var h = last.ToFloatArray();
            pooled = new float[prompts * width];
            for (int p = 0; p < prompts; p++)
            {
                int eos = Array.IndexOf(first[p].Ids, options.EndId, 1);
                Array.Copy(h, ((long)p * length + eos) * width, pooled, (long)p * width, width);
            }
        }
        return (z, pooled);
    }

    /// <summary>Where each chunk's textual-inversion vectors go: row r·77 + position of the batch of all chunks.</summary>
    public static List<(int Row, float[] Vector)> Slots(IReadOnlyList<PromptChunk> all, IReadOnlyDictionary<string, float[][]>? embeddings)
    {
        var vectors = new List<(int Row, float[] Vector)>();
        for (int r = 0; r < all.Count; r++)
            foreach (var slot in all[r].Embeddings)
            {
                if (embeddings is null || !embeddings.TryGetValue(slot.Name, out var v))
                    throw new UsageException($"embedding {slot.Name}: no vectors for this text encoder");
                vectors.Add((r * PromptChunker.Length + slot.Position, v[slot.Vector]));
            }
        return vectors;
    }

    /// <summary>
    /// All chunks in one batch through <paramref name="forward"/> (ids [chunks, 77] and their vectors → hidden states)
    /// → host [chunks·77, width], each weighted chunk's emphasis applied.
    /// </summary>
    public static float[] Run(IOps ops, IReadOnlyList<PromptChunk> all, IReadOnlyList<(int Row, float[] Vector)> vectors,
        Func<Tensor, IReadOnlyList<(int Row, float[] Vector)>, Tensor> forward, out DType dtype)
    {
        int length = PromptChunker.Length;
        using var tokens = Tensor.FromInts(ops.Device, all.SelectMany(c => c.Ids).ToArray(), all.Count, length);
        using var hidden = forward(tokens, vectors);
        dtype = hidden.DType;
        int width = hidden.Dim(2);
        var z = hidden.ToFloatArray();
        for (int r = 0; r < all.Count; r++)
            if (all[r].IsWeighted) PromptEmphasis.Apply(z.AsSpan(r * length * width, length * width), all[r].Weights);
        return z;
    }
}
