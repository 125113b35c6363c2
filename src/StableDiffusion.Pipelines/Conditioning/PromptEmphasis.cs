namespace StableDiffusion.Pipelines.Conditioning;

/// <summary>
/// A1111's emphasis ("Original"): the encoder's output is multiplied token by token by the prompt weights, then the
/// whole chunk is scaled so that its mean equals the mean it had before weighting. Means are summed in double.
/// </summary>
public static class PromptEmphasis
{
    /// <param name="z">one chunk's encoder output [tokens, width], changed in place</param>
    /// <param name="weights">one weight per token</param>
    public static void Apply(Span<float> z, ReadOnlySpan<float> weights)
    {
        int tokens = weights.Length, width = z.Length / tokens;
        if (width * tokens != z.Length) throw new ArgumentException($"{z.Length} values are not {tokens} tokens of equal width");
        double before = 0, after = 0;
        for (int t = 0; t < tokens; t++)
        {
            var row = z.Slice(t * width, width);
            float w = weights[t];
            for (int i = 0; i < width; i++)
            {
                before += row[i];
                row[i] *= w;
                after += row[i];
            }
        }
        float scale = (float)(before / after);
        for (int i = 0; i < z.Length; i++) z[i] *= scale;
    }
}
