using StableDiffusion.Models.Clip;
using StableDiffusion.Pipelines.Conditioning;
using StableDiffusion.Pipelines.Prompts;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using StableDiffusion.TestSupport.Torch;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.Pipelines.Tests.Conditioning;

/// <summary>
/// Chunked, weighted conditioning against libtorch: a tiny CLIP text encoder in transformers' layout with CLIP's real
/// vocabulary size, each chunk encoded by <see cref="TorchClip"/> (float64) with the embedding vectors put into its
/// input, multiplied by the weights and rescaled to the unweighted mean (A1111's rule), chunks concatenated.
/// </summary>
public class ClipConditionerTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    private static readonly ClipTextConfig Config = new(
        VocabSize: 49408, HiddenSize: 32, IntermediateSize: 64, NumHiddenLayers: 2, NumAttentionHeads: 2,
        MaxPositionEmbeddings: 77, HiddenAct: Activation.QuickGelu, LayerNormEps: 1e-5f);

    // Two chunks: words with weighted runs, BREAK, an embedding, a de-emphasised word; the negative has one chunk.
    private const string Prompt = "a fox in the snow, (golden hour:1.3) (((sharp))) " +
        "and more words to make the prompt run long enough to need a second chunk of text, and then some more words here BREAK " +
        "mystyle with a [blurry] background";
    private const string Negative = "lowres, (bad hands:1.2)";

    [Theory]
    // The ILGPU CPU accelerator pays ~10 s per 77-token attention batch: one row there, the rest on the C# backend.
    [InlineData("fp16", 2)]
    [InlineData("fp32", 1, "cpu")]
    [InlineData("fp32", 2, "cpu")]
    [InlineData("fp16", 1, "cpu")]
    public void Weighted_chunked_conditioning_with_an_embedding_matches_libtorch(string dtype, int clipSkip, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        using var model = new ClipTextModel(Config);
        using var w = TestWeights.LoadInto(model, ops, dt, seed: 21);
        var rng = new Random(5);
        // fp16-representable vectors, so both sides start from the same numbers.
        var style = Enumerable.Range(0, 2).Select(_ => Enumerable.Range(0, Config.HiddenSize)
            .Select(_ => (float)(Half)(rng.NextSingle() * 2 - 1)).ToArray()).ToArray();
        var embeddings = new Dictionary<string, float[][]> { ["mystyle"] = style };

        var chunker = new PromptChunker(ClipTokenizer.BuiltIn(), new Dictionary<string, int> { ["mystyle"] = 2 });
        var conditioner = new ClipConditioner(chunker, () => new ClipPromptEncoder(model, new ClipEncoderOptions { ClipSkip = clipSkip, Embeddings = embeddings }), dt);
        using var c = conditioner.Encode(ops, [Negative, Prompt]);
        var chunks = chunker.ChunkAll([Negative, Prompt]);
        Assert.Equal(2, c.Chunks); // the BREAK starts the second; the negative is padded to two
        Assert.Equal(new[] { 2, 2 * 77, Config.HiddenSize }, c.Context.ShapeArray());
        Assert.Contains(chunks[1], ch => ch.Embeddings.Count == 2);
        Assert.Contains(chunks[1], ch => ch.IsWeighted);

        var torchClip = new TorchClip(Config, w.Torch);
        TorchTensor Reference(bool withVectors)
        {
            var rows = new List<TorchTensor>();
            foreach (var prompt in chunks)
            {
                var parts = new List<TorchTensor>();
                foreach (var chunk in prompt)
                {
                    var ids = torch.tensor(chunk.Ids.Select(i => (long)i).ToArray(), dtype: ScalarType.Int64);
                    var tok = w.Torch(TorchClip.Prefix + "embeddings.token_embedding.weight").index_select(0, ids).clone();
                    if (withVectors)
                        foreach (var slot in chunk.Embeddings)
                            tok[slot.Position] = torch.tensor(style[slot.Vector].Select(v => (double)v).ToArray(), dtype: tok.dtype);
                    var x = (tok + w.Torch(TorchClip.Prefix + "embeddings.position_embedding.weight")).unsqueeze(0);
                    var z = torchClip.Forward(x, clipSkip)[0];
                    var weights = torch.tensor(chunk.Weights.Select(v => (double)v).ToArray(), dtype: z.dtype).unsqueeze(1);
                    var before = z.mean();
                    z = z * weights;
                    z = z * (before / z.mean());
                    parts.Add(z);
                }
                rows.Add(torch.cat(parts, 0));
            }
            return torch.stack(rows);
        }
        var want = Reference(true);
        double err = oracle.Check("ClipConditioner", $"2 prompts x 2 chunks, weights, BREAK, 2-vector embedding, clip skip {clipSkip}", c.Context, want,
            dt == DType.F32 ? 1e-4 : 2e-3);
        // The embedding reached the encoder: without its vectors the reference is far off.
        double without = Kernels.Reference.RelativeError(c.Context.ToFloatArray(), Oracle.Host(Reference(false)));
        output.WriteLine($"relative error {err:0.0e+00}; against the reference without the embedding's vectors {without:0.0e+00}");
        Assert.True(without > 100 * Math.Max(err, 1e-6), $"the embedding's vectors moved the output by only {without}");
    }

    [Fact]
    public void Emphasis_restores_the_chunk_mean()
    {
        var z = Enumerable.Range(0, 4 * 3).Select(i => (float)(i % 5) - 1.5f).ToArray();
        float mean = z.Average();
        PromptEmphasis.Apply(z, [1f, 1.5f, 0.5f, 1f]);
        Assert.Equal(mean, z.Average(), 5);
    }
}
