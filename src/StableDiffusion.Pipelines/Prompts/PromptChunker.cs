using System.Text.RegularExpressions;
using StableDiffusion.Models.Clip;
using StableDiffusion;

namespace StableDiffusion.Pipelines.Prompts;

/// <summary>Where a textual-inversion embedding's vector goes: token <paramref name="Position"/> of the chunk.</summary>
public readonly record struct EmbeddingSlot(int Position, string Name, int Vector);

/// <summary>
/// One text-encoder call's worth of prompt: <see cref="PromptChunker.Length"/> ids (start, up to 75 tokens, end,
/// padding), a weight per id, and the positions that take an embedding's vectors instead of a token's.
/// </summary>
public sealed record PromptChunk(int[] Ids, float[] Weights, IReadOnlyList<EmbeddingSlot> Embeddings)
{
    public bool IsWeighted => Weights.Any(w => w != 1f);
}

/// <summary>
/// A1111's chunking (sd_hijack_clip's tokenize_line): the parsed prompt's tokens go into chunks of 75 with start and end
/// tokens around them; a BREAK pads the current chunk to its end; a chunk about to overflow is cut after its last
/// comma when that comma is within <see cref="CommaBacktrack"/> tokens of the end, and the tokens after it move to the
/// next chunk; an embedding's vectors never straddle two chunks. Padding follows the tokenizer (end token for SD1,
/// "!" for OpenCLIP) after the chunk's end token.
/// </summary>
public sealed class PromptChunker
{
    public const int ChunkTokens = 75;
    public const int Length = ChunkTokens + 2;
    public const int CommaBacktrack = 20;

    private readonly ClipTokenizer tokenizer;
    private readonly IReadOnlyDictionary<string, int> embeddings;
    private readonly Regex? embeddingNames;
    private readonly int comma;

    /// <param name="embeddings">textual-inversion names and how many vectors each has; a name in the prompt (as a
    /// word, or ComfyUI's <c>embedding:name</c>) becomes that many embedding slots</param>
    public PromptChunker(ClipTokenizer tokenizer, IReadOnlyDictionary<string, int>? embeddings = null)
    {
        this.tokenizer = tokenizer;
        this.embeddings = embeddings is null ? new Dictionary<string, int>() : new Dictionary<string, int>(embeddings, StringComparer.OrdinalIgnoreCase);
        foreach (var (name, n) in this.embeddings)
            if (n is < 1 or > ChunkTokens) throw new ConfigException($"embedding {name}: {n} vectors, a prompt chunk holds 1 to {ChunkTokens}");
        if (this.embeddings.Count > 0)
        {
            // Longest first, so "style-v2" wins over "style"; a name is a whole word, not part of one.
            var names = this.embeddings.Keys.OrderByDescending(n => n.Length).Select(Regex.Escape);
            embeddingNames = new Regex(@"(?<![\p{L}\p{N}_-])(?:embedding:)?(" + string.Join("|", names) + @")(?:\.(?:pt|safetensors|bin))?(?![\p{L}\p{N}_-])",
                RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);
        }
        var c = tokenizer.Encode(",");
        comma = c.Length == 3 ? c[1] : -1;
    }

    public ClipTokenizer Tokenizer => tokenizer;

    /// <summary>The chunks of a prompt; an empty prompt is one chunk of start, end and padding.</summary>
    public List<PromptChunk> Chunk(string prompt)
    {
        var chunks = new List<PromptChunk>();
        var ids = new List<int>();
        var weights = new List<float>();
        var slots = new List<EmbeddingSlot>();
        int lastComma = -1;

        void Next()
        {
            var chunkIds = new int[Length];
            var chunkWeights = new float[Length];
            Array.Fill(chunkIds, tokenizer.PadId);
            Array.Fill(chunkWeights, 1f);
            chunkIds[0] = tokenizer.StartId;
            ids.CopyTo(chunkIds, 1);
            weights.CopyTo(chunkWeights, 1);
            chunkIds[ids.Count + 1] = tokenizer.EndId;
            chunks.Add(new PromptChunk(chunkIds, chunkWeights, slots.Select(s => s with { Position = s.Position + 1 }).ToList()));
            ids.Clear();
            weights.Clear();
            slots.Clear();
            lastComma = -1;
        }

        foreach (var segment in PromptParser.Parse(prompt))
        {
            if (segment.IsBreak)
            {
                Next();
                continue;
            }
            float weight = (float)segment.Weight;
            foreach (var (tokens, embedding) in Pieces(segment.Text))
            {
                if (embedding is not null)
                {
                    int n = embeddings[embedding];
                    if (ids.Count + n > ChunkTokens) Next();
                    for (int v = 0; v < n; v++)
                    {
                        slots.Add(new EmbeddingSlot(ids.Count, embedding, v));
                        ids.Add(tokenizer.EndId); // a placeholder; the encoder takes the vector
                        weights.Add(weight);
                    }
                    continue;
                }
                foreach (var token in tokens)
                {
                    if (token == comma) lastComma = ids.Count;
                    else if (ids.Count == ChunkTokens && lastComma != -1 && ids.Count - lastComma <= CommaBacktrack)
                    {
                        // Move what follows the last comma into the next chunk.
                        int cut = lastComma + 1;
                        var movedIds = ids.GetRange(cut, ids.Count - cut);
                        var movedWeights = weights.GetRange(cut, weights.Count - cut);
                        var movedSlots = slots.Where(s => s.Position >= cut).Select(s => s with { Position = s.Position - cut }).ToList();
                        ids.RemoveRange(cut, ids.Count - cut);
                        weights.RemoveRange(cut, weights.Count - cut);
                        slots.RemoveAll(s => s.Position >= cut);
                        Next();
                        ids.AddRange(movedIds);
                        weights.AddRange(movedWeights);
                        slots.AddRange(movedSlots);
                    }
                    if (ids.Count == ChunkTokens) Next();
                    ids.Add(token);
                    weights.Add(weight);
                }
            }
        }
        if (ids.Count > 0 || chunks.Count == 0) Next();
        return chunks;
    }

    /// <summary>A chunk of start, end and padding: what pads a prompt to another's number of chunks.</summary>
    public PromptChunk Empty()
    {
        var ids = new int[Length];
        Array.Fill(ids, tokenizer.PadId);
        ids[0] = tokenizer.StartId;
        ids[1] = tokenizer.EndId;
        var w = new float[Length];
        Array.Fill(w, 1f);
        return new PromptChunk(ids, w, []);
    }

    /// <summary>Prompts chunked and padded with empty chunks to the same number of chunks (A1111 pads likewise).</summary>
    public List<List<PromptChunk>> ChunkAll(IReadOnlyList<string> prompts)
    {
        var all = prompts.Select(Chunk).ToList();
        int n = all.Max(c => c.Count);
        foreach (var c in all)
            while (c.Count < n) c.Add(Empty());
        return all;
    }

    /// <summary>A segment's text as token runs and embedding names, in order.</summary>
    private IEnumerable<(int[] Tokens, string? Embedding)> Pieces(string text)
    {
        int at = 0;
        if (embeddingNames is not null)
            foreach (Match m in embeddingNames.Matches(text))
            {
                if (m.Index > at) yield return (Body(text[at..m.Index]), null);
                yield return ([], embeddings.Keys.First(k => string.Equals(k, m.Groups[1].Value, StringComparison.OrdinalIgnoreCase)));
                at = m.Index + m.Length;
            }
        if (at < text.Length) yield return (Body(text[at..]), null);
    }

    private int[] Body(string text)
    {
        var all = tokenizer.Encode(text);
        return all[1..^1];
    }
}
