using StableDiffusion.Models.Clip;
using StableDiffusion.Pipelines.Conditioning;
using StableDiffusion.Pipelines.Prompts;
using StableDiffusion.Runtime;

namespace StableDiffusion.Pipelines;

/// <summary>
/// What SDXL's UNet is conditioned on for one UNet batch: context [N, 77, 768 + 1280] (both encoders' penultimate
/// hidden states side by side), text_embeds [N, 1280] (bigG's pooled, projected output) and add_time_ids fp32 [N, 6].
/// </summary>
public sealed class SdxlCondition(Tensor context, Tensor pooled, Tensor timeIds) : IDisposable
{
    public Tensor Context { get; } = context;
    public Tensor Pooled { get; } = pooled;
    public Tensor TimeIds { get; } = timeIds;

    public void Dispose()
    {
        Context.Dispose();
        Pooled.Dispose();
        TimeIds.Dispose();
    }
}

/// <summary>
/// SDXL's prompt encoding as diffusers' StableDiffusionXLPipeline.encode_prompt does it, with A1111's prompt rules:
/// each prompt chunked alike for CLIP ViT-L (tokenizer) and OpenCLIP bigG (tokenizer_2, padding with "!"), each chunk's
/// hidden_states[-2] of both encoders concatenated along the channels, emphasis applied per encoder; the pooled
/// embedding from bigG on each prompt's first chunk; an empty negative prompt becomes zeros (context and pooled) when
/// the model sets force_zeros_for_empty_prompt. add_time_ids = original size (h, w), crop top-left (y, x), target size
/// (h, w) — or, for the refiner, (h, w, y, x, aesthetic score) — the same for every row.
/// </summary>
public static class SdxlConditioning
{
    /// <summary>
    /// Encodes [negative × batch, prompt × batch] (or prompt × batch without guidance) in the encoders' dtype.
    /// <paramref name="clipSkip"/> 1 = the penultimate layer (SDXL's design); <paramref name="encoder"/> may be null
    /// (the refiner conditions on bigG alone).
    /// </summary>
    public static SdxlCondition Encode(IOps ops, PromptChunker? chunker, PromptChunker chunker2, ClipTextModel? encoder,
        ClipTextModelWithProjection encoder2, string prompt, string negativePrompt, bool guidance, int batch,
        bool forceZerosForEmptyNegative, float[] timeIds, int clipSkip = 1,
        IReadOnlyDictionary<string, float[][]>? vectors = null, IReadOnlyDictionary<string, float[][]>? vectors2 = null,
        float[]? negativeTimeIds = null)
    {
        var prompts = guidance ? new[] { negativePrompt, prompt } : new[] { prompt };
        int n = prompts.Length, length = PromptChunker.Length;
        var chunks2 = chunker2.ChunkAll(prompts);
        int k = chunks2[0].Count;
        List<List<PromptChunk>>? chunks1 = null;
        if (chunker is not null)
        {
            chunks1 = chunker.ChunkAll(prompts);
            if (chunks1[0].Count != k)
                throw new UsageException($"SDXL's tokenizers split the prompt into {chunks1[0].Count} and {k} chunks; they must use the same vocabulary");
        }

        float[]? hidden1 = null;
        int c1 = 0;
        DType dtype;
        if (encoder is not null)
        {
            (hidden1, c1) = Hidden(ops, chunks1!, vectors, (t, v) => encoder.Penultimate(ops, t, clipSkip, v), out dtype);
        }
        float[]? firstPooled = null;
        int p = encoder2.Config.ProjectionDim;
        var (hidden2, c2) = Hidden(ops, chunks2, vectors2, (t, v) =>
        {
            var (h, pool) = encoder2.Encode(ops, t, clipSkip, v);
            using (pool)
            {
                // Rows are [prompt 0 chunk 0.., prompt 1 chunk 0..]: the pooled output of each prompt's first chunk.
                var all = pool.ToFloatArray();
                firstPooled = new float[n * p];
                for (int i = 0; i < n; i++) Array.Copy(all, (long)i * k * p, firstPooled, (long)i * p, p);
            }
            return h;
        }, out dtype);

        int c = c1 + c2, seq = k * length;
        bool zeroNegative = guidance && forceZerosForEmptyNegative && negativePrompt.Length == 0;
        var context = new float[(long)n * batch * seq * c];
        var pooledOut = new float[(long)n * batch * p];
        for (int i = 0; i < n; i++)
        {
            if (zeroNegative && i == 0) continue; // stays zero
            for (int b = 0; b < batch; b++)
            {
                long row = (long)i * batch + b;
                for (int t = 0; t < seq; t++)
                {
                    if (hidden1 is not null) Array.Copy(hidden1, ((long)i * seq + t) * c1, context, (row * seq + t) * c, c1);
                    Array.Copy(hidden2, ((long)i * seq + t) * c2, context, (row * seq + t) * c + c1, c2);
                }
                Array.Copy(firstPooled!, (long)i * p, pooledOut, row * p, p);
            }
        }
        // The refiner's negative rows carry their own aesthetic score (negativeTimeIds).
        var ids = Enumerable.Range(0, n * batch).SelectMany(row => guidance && row < batch && negativeTimeIds is not null ? negativeTimeIds : timeIds).ToArray();
        return new SdxlCondition(
            Tensor.FromArray(ops.Device, context, dtype, n * batch, seq, c),
            Tensor.FromArray(ops.Device, pooledOut, dtype, n * batch, p),
            Tensor.FromArray(ops.Device, ids, DType.F32, n * batch, timeIds.Length));
    }

    /// <summary>All chunks of all prompts through one encoder in one batch → host [prompts, chunks·77, width], emphasis applied.</summary>
    private static (float[] Hidden, int Width) Hidden(IOps ops, List<List<PromptChunk>> chunks,
        IReadOnlyDictionary<string, float[][]>? embeddings, Func<Tensor, IReadOnlyList<(int Row, float[] Vector)>, Tensor> run, out DType dtype)
    {
        var all = chunks.SelectMany(x => x).ToList();
        var z = ClipPromptEncoder.Run(ops, all, ClipPromptEncoder.Slots(all, embeddings), run, out dtype);
        return (z, z.Length / (all.Count * PromptChunker.Length));
    }

    /// <summary>The base model's six add_time_ids.</summary>
    public static float[] TimeIds((int Height, int Width) original, (int Top, int Left) crop, (int Height, int Width) target) =>
        [original.Height, original.Width, crop.Top, crop.Left, target.Height, target.Width];

    /// <summary>The refiner's five add_time_ids: original size, crop top-left, aesthetic score.</summary>
    public static float[] RefinerTimeIds((int Height, int Width) original, (int Top, int Left) crop, float aestheticScore) =>
        [original.Height, original.Width, crop.Top, crop.Left, aestheticScore];
}
