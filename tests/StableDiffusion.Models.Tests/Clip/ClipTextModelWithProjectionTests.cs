using StableDiffusion.Models.Clip;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using StableDiffusion.TestSupport.Torch;
using TorchSharp;
using Xunit.Abstractions;

namespace StableDiffusion.Models.Tests.Clip;

/// <summary>
/// SDXL's second text encoder (transformers' CLIPTextModelWithProjection, OpenCLIP bigG) against libtorch in float64
/// (<see cref="TorchClip"/>): the penultimate hidden states and the pooled, projected output, on random weights in
/// the transformers layout; and the module's layout against the real SDXL checkpoint.
/// </summary>
public class ClipTextModelWithProjectionTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    // bigG's structure (gelu, a projection of its own width, eos_token_id 2) at tiny widths, with CLIP's 77 positions.
    private static ClipTextConfig Tiny() => new(
        VocabSize: 100, HiddenSize: 32, IntermediateSize: 64, NumHiddenLayers: 2, NumAttentionHeads: 2,
        MaxPositionEmbeddings: 77, HiddenAct: Activation.Gelu, LayerNormEps: 1e-5f) { ProjectionDim = 24 };

    // tokenizer_2's rows: start (98), words, end (99, the highest id), then "!" padding (id 0); the end sits at
    // different positions so a wrong row shows.
    private static int[] Ids(int b)
    {
        var rng = new Random(5);
        var ids = new int[b * 77];
        for (int r = 0; r < b; r++)
        {
            int words = 3 + 9 * r;
            ids[r * 77] = 98;
            for (int j = 1; j <= words; j++) ids[r * 77 + j] = 1 + rng.Next(90);
            ids[r * 77 + words + 1] = 99;
        }
        return ids;
    }

    [Theory]
    // The ILGPU CPU accelerator pays about a second per attention call at 77 tokens: fp32 only there.
    [InlineData("fp32")]
    [InlineData("fp32", "cpu")]
    [InlineData("fp16", "cpu")]
    public void Penultimate_states_and_pooled_output_match_libtorch(string dtype, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var c = Tiny();
        using var model = new ClipTextModelWithProjection(c);
        using var w = TestWeights.LoadInto(model, ops, dt, seed: 21);
        int b = 2, l = 77;
        var ids = Ids(b);
        using var tids = DeviceTensor.FromInts(ops.Device, ids, b, l);
        var (hidden, pooled) = model.Encode(ops, tids);
        using (hidden)
        using (pooled)
        {
            Assert.Equal(new[] { b, l, c.HiddenSize }, hidden.ShapeArray());
            Assert.Equal(new[] { b, c.ProjectionDim }, pooled.ShapeArray());
            var reference = new TorchClip(c, w.Torch);
            double tol = dt == DType.F32 ? 1e-4 : 5e-3;
            oracle.Check("CLIPTextModelWithProjection.hidden[-2]", $"{c.NumHiddenLayers} layers {b}x{l}", hidden, reference.Penultimate(ids, b, l), tol);
            oracle.Check("CLIPTextModelWithProjection.text_embeds", $"{c.NumHiddenLayers} layers {b}x{l} eos at 4/13", pooled, reference.Pooled(ids, b, l), tol);
        }
    }

    [Fact]
    public void End_of_text_is_the_argmax_of_the_ids_not_the_padding()
    {
        using var model = new ClipTextModelWithProjection(Tiny());
        var ids = Ids(2);
        Assert.Equal(new[] { 4, 77 + 13 }, model.EndOfTextRows(ids, 2, 77));
        // A config with another eos_token_id takes the first id equal to it.
        using var other = new ClipTextModelWithProjection(Tiny() with { EosTokenId = 99 });
        Assert.Equal(new[] { 4, 77 + 13 }, other.EndOfTextRows(ids, 2, 77));
        Assert.Contains("no end-of-text token", Assert.Throws<UsageException>(() => other.EndOfTextRows(new int[77], 1, 77)).Message);
    }

    [SkippableFact]
    public void Sdxl_text_encoders_declare_exactly_the_checkpoint_layouts()
    {
        using var g = ClipTextModelWithProjection.FromConfig(SharedReference.Require("configs", "sdxl-base", "text_encoder_2", "config.json"));
        var rows = SharedReference.Layout("sdxl_diffusers_text_encoder_2.tsv").Where(r => !r.Name.EndsWith("position_ids", StringComparison.Ordinal)).ToList();
        var want = rows.ToDictionary(r => r.Name, r => r.Shape);
        var got = g.ExpectedLayout();
        Assert.Equal(want.Keys.Order(StringComparer.Ordinal), got.Keys.Order(StringComparer.Ordinal));
        foreach (var (k, v) in want) Assert.True(v.SequenceEqual(got[k]), k);
        Assert.Equal(517, got.Count);
        Assert.Equal(694_659_840L, g.ParameterCount);
        Assert.Equal((32, 1280, Activation.Gelu), (g.Config.NumHiddenLayers, g.Config.HiddenSize, g.Config.HiddenAct));

        using var l = ClipTextModel.FromConfig(SharedReference.Require("configs", "sdxl-base", "text_encoder", "config.json"));
        var lrows = SharedReference.Layout("sdxl_diffusers_text_encoder.tsv").Where(r => !r.Name.EndsWith("position_ids", StringComparison.Ordinal)).ToList();
        Assert.Equal(lrows.Select(r => r.Name).Order(StringComparer.Ordinal), l.ExpectedLayout().Keys.Order(StringComparer.Ordinal));
        Assert.Equal(196, lrows.Count);
        Assert.Equal(123_060_480L, l.ParameterCount);
        output.WriteLine($"text_encoder_2: {got.Count} tensors, {g.ParameterCount:N0} parameters; text_encoder: {lrows.Count}, {l.ParameterCount:N0}");
    }
}

/// <summary>SDXL's first encoder: CLIP ViT-L's penultimate hidden state, without the final layer norm.</summary>
public class ClipPenultimateTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    [Theory]
    [InlineData("fp32")]
    [InlineData("fp32", "cpu")]
    public void Penultimate_state_matches_libtorch(string dtype, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var c = new ClipTextConfig(100, 32, 64, 2, 2, 77, Activation.QuickGelu, 1e-5f);
        using var model = new ClipTextModel(c);
        using var w = TestWeights.LoadInto(model, ops, dt, seed: 22);
        var rng = new Random(3);
        var ids = Enumerable.Range(0, 77).Select(_ => rng.Next(100)).ToArray();
        using var tids = DeviceTensor.FromInts(ops.Device, ids, 1, 77);
        using var y = model.Penultimate(ops, tids);
        oracle.Check("CLIPTextModel.hidden[-2]", "2 layers 1x77", y, new TorchClip(c, w.Torch).Penultimate(ids, 1, 77), 1e-4);
    }
}
