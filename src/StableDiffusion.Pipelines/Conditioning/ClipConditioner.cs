using StableDiffusion.Pipelines.Prompts;
using StableDiffusion.Runtime;

namespace StableDiffusion.Pipelines.Conditioning;

/// <summary>SD1.x and SD2.x: one CLIP text encoder; its chunked, weighted hidden states are the context.</summary>
public sealed class ClipConditioner(PromptChunker chunker, Func<ClipPromptEncoder> encoder, DType dtype) : IConditioner
{
    public PromptChunker Chunker => chunker;

    public PromptConditioning Encode(IOps ops, IReadOnlyList<string> prompts)
    {
        var chunks = chunker.ChunkAll(prompts);
        var e = encoder();
        var (context, pooled) = e.Encode(ops, chunks);
        int n = chunks[0].Count, width = e.Model.Config.HiddenSize;
        return new PromptConditioning(
            Tensor.FromArray(ops.Device, context, dtype, prompts.Count, n * PromptChunker.Length, width), n,
            pooled is null ? null : Tensor.FromArray(ops.Device, pooled, dtype, prompts.Count, width));
    }
}
