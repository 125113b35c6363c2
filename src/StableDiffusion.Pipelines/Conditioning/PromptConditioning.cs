using StableDiffusion.Runtime;

namespace StableDiffusion.Pipelines.Conditioning;

/// <summary>
/// What the UNet is conditioned on, one row per prompt: <see cref="Context"/> [prompts, chunks·77, width] (the chunks'
/// encoder outputs one after another along the sequence) and, for models that take one, a pooled embedding
/// [prompts, width] taken from each prompt's first chunk.
/// </summary>
public sealed record PromptConditioning(Tensor Context, int Chunks, Tensor? Pooled) : IDisposable
{
    public void Dispose()
    {
        Context.Dispose();
        Pooled?.Dispose();
    }
}

/// <summary>Prompt text to conditioning: the one step that differs between model families' text encoders.</summary>
public interface IConditioner
{
    /// <summary>Every prompt padded to the same number of chunks, so the rows share one context length.</summary>
    PromptConditioning Encode(IOps ops, IReadOnlyList<string> prompts);
}
