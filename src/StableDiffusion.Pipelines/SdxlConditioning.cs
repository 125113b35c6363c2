using StableDiffusion.Models.Clip;
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
/// SDXL's prompt encoding as diffusers' StableDiffusionXLPipeline.encode_prompt does it: each prompt through CLIP
/// ViT-L (tokenizer) and OpenCLIP bigG (tokenizer_2, padding with "!"), hidden_states[-2] of both concatenated along
/// the channels; the pooled embedding from bigG; an empty negative prompt becomes zeros (context and pooled) when the
/// model sets force_zeros_for_empty_prompt. add_time_ids = original size (h, w), crop top-left (y, x), target size
/// (h, w), the same for both halves of the guidance batch.
/// </summary>
public static class SdxlConditioning
{
    /// <summary>
    /// Encodes [negative × batch, prompt × batch] (or prompt × batch without guidance) in the encoders' dtype.
    /// </summary>
    public static SdxlCondition Encode(IOps ops, ClipTokenizer tokenizer, ClipTokenizer tokenizer2, ClipTextModel encoder,
        ClipTextModelWithProjection encoder2, string prompt, string negativePrompt, bool guidance, int batch,
        bool forceZerosForEmptyNegative, (int Height, int Width) original, (int Top, int Left) crop, (int Height, int Width) target,
        Action<string>? warn = null)
    {
        var prompts = guidance ? new[] { negativePrompt, prompt } : new[] { prompt };
        int n = prompts.Length, length = tokenizer.MaxLength;
        if (tokenizer2.MaxLength != length)
            throw new UsageException($"SDXL tokenizers disagree on the prompt length ({length} and {tokenizer2.MaxLength})");
        var ids1 = prompts.SelectMany(p => tokenizer.Tokenize(p, warn).Ids).ToArray();
        var ids2 = prompts.SelectMany(p => tokenizer2.Tokenize(p).Ids).ToArray(); // the same text: warned once above

        float[] hidden1, hidden2, pooled;
        DType dtype;
        int c1, c2, p;
        using (var t1 = Tensor.FromInts(ops.Device, ids1, n, length))
        using (var h1 = encoder.Penultimate(ops, t1))
        {
            hidden1 = h1.ToFloatArray();
            c1 = h1.Dim(2);
            dtype = h1.DType;
        }
        using (var t2 = Tensor.FromInts(ops.Device, ids2, n, length))
        {
            var (h2, pool) = encoder2.Encode(ops, t2);
            using (h2)
            using (pool)
            {
                hidden2 = h2.ToFloatArray();
                pooled = pool.ToFloatArray();
                c2 = h2.Dim(2);
                p = pool.Dim(1);
            }
        }

        int c = c1 + c2;
        bool zeroNegative = guidance && forceZerosForEmptyNegative && negativePrompt.Length == 0;
        var context = new float[(long)n * batch * length * c];
        var pooledOut = new float[(long)n * batch * p];
        for (int i = 0; i < n; i++)
        {
            if (zeroNegative && i == 0) continue; // stays zero
            for (int b = 0; b < batch; b++)
            {
                long row = (long)i * batch + b;
                for (int t = 0; t < length; t++)
                {
                    Array.Copy(hidden1, ((long)i * length + t) * c1, context, (row * length + t) * c, c1);
                    Array.Copy(hidden2, ((long)i * length + t) * c2, context, (row * length + t) * c + c1, c2);
                }
                Array.Copy(pooled, (long)i * p, pooledOut, row * p, p);
            }
        }
        float[] ids = [original.Height, original.Width, crop.Top, crop.Left, target.Height, target.Width];
        var timeIds = Enumerable.Range(0, n * batch).SelectMany(_ => ids).ToArray();
        return new SdxlCondition(
            Tensor.FromArray(ops.Device, context, dtype, n * batch, length, c),
            Tensor.FromArray(ops.Device, pooledOut, dtype, n * batch, p),
            Tensor.FromArray(ops.Device, timeIds, DType.F32, n * batch, ids.Length));
    }
}
