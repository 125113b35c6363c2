using StableDiffusion.IO;
using StableDiffusion.Models.Clip;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using StableDiffusion.TestSupport.Torch;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace StableDiffusion.Models.Tests.Clip;

/// <summary>
/// The CLIP text encoder against transformers' CLIPTextModel written with libtorch ops (<see cref="TorchClip"/>, float64), on random
/// weights in the transformers layout loaded through a real safetensors file; and its layouts against the real
/// SD1.5 and SD2.1 checkpoints.
/// </summary>
public class ClipTextModelTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    // Tiny but with CLIP's 77 positions, so the causal mask and position table are the real ones.
    private static ClipTextConfig Tiny(Activation act, int layers = 2) => new(
        VocabSize: 100, HiddenSize: 32, IntermediateSize: 64, NumHiddenLayers: layers, NumAttentionHeads: 2,
        MaxPositionEmbeddings: 77, HiddenAct: act, LayerNormEps: 1e-5f);

    private static Activation Act(string name) => name == "gelu" ? Activation.Gelu : Activation.QuickGelu;

    private int[] RandomIds(int batch, int length, int vocab)
    {
        var rng = new Random(batch * 1000 + length);
        return Enumerable.Range(0, batch * length).Select(_ => rng.Next(vocab)).ToArray();
    }

    // ---- oracle tests ----

    // The ILGPU CPU accelerator takes about a second per attention call at 77 tokens, so the cases are few and small.
    [Theory]
    [InlineData("fp32", "quick_gelu", 2)]
    [InlineData("fp32", "gelu", 1)]
    [InlineData("fp16", "quick_gelu", 1)]
    [InlineData("fp32", "quick_gelu", 2, "cpu")]
    [InlineData("fp32", "gelu", 1, "cpu")]
    [InlineData("fp16", "quick_gelu", 1, "cpu")]
    public void Encoder_layer_matches_libtorch(string dtype, string act, int b, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var c = Tiny(Act(act));
        using var layer = new ClipEncoderLayer(c);
        using var w = TestWeights.LoadInto(layer, ops, dt, seed: 11);
        int l = 77;
        var x = oracle.Random((long)b * l * c.HiddenSize, dt, 2f);
        using var tx = Oracle.Upload(ops, x, dt, b, l, c.HiddenSize);
        using var y = layer.Forward(ops, tx);
        var want = new TorchClip(c, w.Torch).Layer("", Oracle.T(x, b, l, c.HiddenSize));
        oracle.Check("CLIPEncoderLayer", $"{act} {b}x{l}x{c.HiddenSize} {c.NumAttentionHeads} heads causal", y, want, Devices.Tolerance(dt));
    }

    [Theory]
    [InlineData("fp32", 77)]
    [InlineData("fp32", 9)]
    [InlineData("fp16", 77)]
    [InlineData("fp32", 77, "cpu")]
    [InlineData("fp32", 9, "cpu")]
    [InlineData("fp16", 77, "cpu")]
    public void Embeddings_match_libtorch(string dtype, int length, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var c = Tiny(Activation.QuickGelu);
        using var emb = new ClipTextEmbeddings(c);
        using var w = TestWeights.LoadInto(emb, ops, dt, seed: 12);
        var ids = RandomIds(2, length, c.VocabSize);
        using var tids = DeviceTensor.FromInts(ops.Device, ids, 2, length);
        using var y = emb.Forward(ops, tids);
        var flat = torch.tensor(ids.Select(i => (long)i).ToArray(), dtype: ScalarType.Int64);
        var want = w.Torch("token_embedding.weight").index_select(0, flat).reshape(2, length, -1) +
                   w.Torch("position_embedding.weight").narrow(0, 0, length);
        // A sum of two stored values: exact in fp32, one rounding in fp16.
        oracle.Check("CLIPTextEmbeddings", $"2x{length}", y, want, dt == DType.F32 ? 1e-6 : 1e-3);
    }

    [Theory]
    [InlineData("fp32", "quick_gelu", 2)]
    [InlineData("fp16", "gelu", 1)]
    [InlineData("fp32", "quick_gelu", 2, "cpu")]
    [InlineData("fp16", "gelu", 1, "cpu")]
    public void Text_model_matches_libtorch_with_clip_skip_1_and_2(string dtype, string act, int b, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var c = Tiny(Act(act));
        using var model = new ClipTextModel(c);
        using var w = TestWeights.LoadInto(model, ops, dt, seed: 13);
        int l = 77;
        var ids = RandomIds(b, l, c.VocabSize);
        using var tids = DeviceTensor.FromInts(ops.Device, ids, b, l);
        foreach (var clipSkip in new[] { 1, 2 })
        {
            using var y = model.Forward(ops, tids, clipSkip);
            Assert.Equal(new[] { b, l, c.HiddenSize }, y.ShapeArray());
            var want = new TorchClip(c, w.Torch).Forward(ids, b, l, clipSkip);
            oracle.Check("CLIPTextModel", $"{act} {c.NumHiddenLayers} layers clip_skip {clipSkip} {b}x{l}", y, want, dt == DType.F32 ? 1e-4 : 2e-3);
        }
    }

    [Fact]
    public void A_different_prompt_changes_the_output_from_the_changed_token_on_only()
    {
        var ops = Devices.Ops("test");
        var c = Tiny(Activation.QuickGelu, layers: 1);
        using var model = new ClipTextModel(c);
        using var w = TestWeights.LoadInto(model, ops, DType.F32, seed: 14);
        // start, "a photo of a cat" / "a photo of a dog", end, padding (ids scaled into the tiny vocabulary); one batch.
        int[] cat = [98, 20, 11, 39, 20, 68, 99, .. Enumerable.Repeat(99, 70)];
        int[] dog = [.. cat];
        dog[5] = 29;
        using var ids = DeviceTensor.FromInts(ops.Device, [.. cat, .. dog], 2, 77);
        using var y = model.Forward(ops, ids);
        var all = y.ToFloatArray();
        int n = 77 * c.HiddenSize;
        double Diff(int from, int to) => Enumerable.Range(from * c.HiddenSize, (to - from) * c.HiddenSize).Average(i => Math.Abs(all[i] - all[n + i]));
        // Causal attention: tokens before the change cannot see it; from the change on, every token does.
        Assert.Equal(0.0, Diff(0, 5));
        // Outputs are layer-normed (unit scale) and fp32 noise is ~1e-6: every later token moves, most by far more.
        for (int t = 5; t < 77; t++) Assert.True(Diff(t, t + 1) > 1e-2, $"token {t} moved by only {Diff(t, t + 1):0.0000}");
        Assert.True(Diff(5, 77) > 0.05, $"the prompt change moved the output by only {Diff(5, 77):0.000}");
        output.WriteLine($"mean |Δ| before the changed token {Diff(0, 5)}, from it on {Diff(5, 77):0.000}");
    }

    [Fact]
    public void Bad_ids_and_clip_skip_are_one_line_usage_errors()
    {
        var ops = Devices.Ops("test");
        var c = Tiny(Activation.QuickGelu, layers: 2);
        using var model = new ClipTextModel(c);
        using var ids = DeviceTensor.FromInts(ops.Device, new int[77], 1, 77);
        Assert.Contains("clip skip 3 is out of range: this text encoder has 2 layers",
            Assert.Throws<UsageException>(() => model.Forward(ops, ids, clipSkip: 3)).Message);
        Assert.Contains("clip skip 0", Assert.Throws<UsageException>(() => model.Forward(ops, ids, clipSkip: 0)).Message);
        using var longIds = DeviceTensor.FromInts(ops.Device, new int[78], 1, 78);
        Assert.Contains("78 tokens per prompt, the model takes 1 to 77", Assert.Throws<UsageException>(() => model.Forward(ops, longIds)).Message);
        using var floats = DeviceTensor.FromArray(ops.Device, new float[77], DType.F32, 1, 77);
        Assert.Contains("must be int32 [batch, length]", Assert.Throws<UsageException>(() => model.Forward(ops, floats)).Message);
    }

    // ---- layouts ----

    [Fact]
    public void Module_tree_names_follow_transformers()
    {
        using var model = new ClipTextModel(Tiny(Activation.QuickGelu, layers: 1));
        Assert.Equal(
            ["text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
             "text_model.encoder.layers.0.self_attn.k_proj.weight", "text_model.encoder.layers.0.self_attn.k_proj.bias",
             "text_model.encoder.layers.0.self_attn.v_proj.weight", "text_model.encoder.layers.0.self_attn.v_proj.bias",
             "text_model.encoder.layers.0.self_attn.q_proj.weight", "text_model.encoder.layers.0.self_attn.q_proj.bias",
             "text_model.encoder.layers.0.self_attn.out_proj.weight", "text_model.encoder.layers.0.self_attn.out_proj.bias",
             "text_model.encoder.layers.0.layer_norm1.weight", "text_model.encoder.layers.0.layer_norm1.bias",
             "text_model.encoder.layers.0.mlp.fc1.weight", "text_model.encoder.layers.0.mlp.fc1.bias",
             "text_model.encoder.layers.0.mlp.fc2.weight", "text_model.encoder.layers.0.mlp.fc2.bias",
             "text_model.encoder.layers.0.layer_norm2.weight", "text_model.encoder.layers.0.layer_norm2.bias",
             "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias"],
            model.NamedParameters().Select(p => p.Path).ToArray());
    }

    private static ClipTextModel RealModel(string config) =>
        ClipTextModel.FromConfig(SharedReference.Require("configs", config, "text_encoder", "config.json"));

    private static void SameLayout(IReadOnlyDictionary<string, long[]> expected, IReadOnlyDictionary<string, long[]> actual)
    {
        Assert.Equal(expected.Keys.Order(StringComparer.Ordinal), actual.Keys.Order(StringComparer.Ordinal));
        foreach (var (k, v) in expected) Assert.True(v.SequenceEqual(actual[k]), $"{k}: expected [{string.Join(",", v)}], module [{string.Join(",", actual[k])}]");
    }

    [SkippableTheory]
    [InlineData("sd15", "sd15_diffusers_text_encoder.tsv", 196, 123_060_480L, Activation.QuickGelu, 12)]
    [InlineData("sd21-base", "sd21_diffusers_text_encoder.tsv", 372, 340_387_840L, Activation.Gelu, 23)]
    public void Real_config_declares_exactly_the_checkpoint_layout(string config, string tsv, int tensors, long parameters, Activation act, int layers)
    {
        using var model = RealModel(config);
        Assert.Equal(act, model.Config.HiddenAct);
        Assert.Equal(layers, model.Config.NumHiddenLayers);
        // position_ids is a buffer (arange(77)), not a parameter; the loader ignores it.
        var rows = SharedReference.Layout(tsv).Where(r => !r.Name.EndsWith("position_ids", StringComparison.Ordinal)).ToList();
        Assert.All(rows, r => Assert.Equal("F32", r.DType));
        SameLayout(rows.ToDictionary(r => r.Name, r => r.Shape), model.ExpectedLayout());
        Assert.Equal(tensors, rows.Count);
        Assert.Equal(parameters, model.ParameterCount);
        output.WriteLine($"{config} text encoder: {tensors} tensors, {parameters:N0} parameters; weights on the device " +
                         $"fp16 {model.WeightBytes(DType.F16) / 1048576.0:0.0} MiB, fp32 {model.WeightBytes(DType.F32) / 1048576.0:0.0} MiB " +
                         $"(pool size classes: fp16 {PoolBytes(model, DType.F16) / 1048576.0:0.0} MiB, fp32 {PoolBytes(model, DType.F32) / 1048576.0:0.0} MiB)");
    }

    private static long PoolBytes(Module m, DType dt) =>
        m.NamedParameters().Sum(p => MemoryPool.SizeClass(p.Parameter.ElementCount * dt.SizeInBytes()));

    /// <summary>
    /// Device memory of the full-size text encoders' weights, measured: random weights in the real layout written to a
    /// safetensors file and loaded in fp16 and in fp32. Needs SD_BIG_TESTS=1 (writes up to 680 MB). A full-size forward
    /// is left to the GPU: on the CPU accelerator it takes many minutes.
    /// </summary>
    [SkippableTheory]
    [InlineData("sd15")]
    [InlineData("sd21-base")]
    public void Full_size_weights_on_the_device(string config)
    {
        Skip.IfNot(Environment.GetEnvironmentVariable("SD_BIG_TESTS") == "1", "set SD_BIG_TESTS=1 to write and load a full-size text encoder");
        using var model = RealModel(config);
        var ops = Devices.Ops("test");
        var pool = ops.Device.Pool;
        using var dir = new TempFolder("sd-clip-tests");
        var path = Path.Combine(dir.Path, "model.fp16.safetensors");
        SafetensorsWriter.Write(path, RandomWeights.Entries(model, 7, WeightDType.F16));
        using var file = WeightFile.Open(path);
        var weights = ComponentWeights.FromFile("text_encoder", file);
        foreach (var dt in new[] { DType.F16, DType.F32 })
        {
            long before = pool.BytesInUse;
            model.Load(weights, ops, dt);
            long bytes = pool.BytesInUse - before;
            Assert.Equal(PoolBytes(model, dt), bytes);
            output.WriteLine($"{config} {dt.Name()}: the weights take {bytes / 1048576.0:0.0} MiB of device memory " +
                             $"({model.WeightBytes(dt) / 1048576.0:0.0} MiB of values, the rest is the pool's size classes)");
            model.Dispose(); // frees the parameters; the module can be loaded again
        }
    }

    [SkippableFact]
    public void Sd2_single_file_open_clip_names_map_onto_the_sd2_module()
    {
        using var model = RealModel("sd21-base");
        var expected = model.ExpectedLayout();
        var rows = SharedReference.Layout("sd21_single_file_v2-1_512-ema-pruned.tsv");
        var layout = LdmLayout.Infer(rows.Select(r => r.Name));
        var mapped = new Dictionary<string, long[]>(StringComparer.Ordinal);
        int ignored = 0;
        foreach (var r in rows.Where(r => r.Name.StartsWith(NameMap.OpenClipPrefix, StringComparison.Ordinal)))
        {
            var targets = NameMap.ToDiffusers(r.Name, layout, out var why);
            if (targets is null)
            {
                Assert.True(why is not null, $"the name map does not know {r.Name}");
                ignored++;
                continue;
            }
            foreach (var m in targets)
            {
                Assert.Equal("text_encoder", m.Component);
                Assert.True(expected.ContainsKey(m.Name), $"{r.Name} maps to {m.Name}, which the SD2 text encoder does not declare");
                Assert.True(mapped.TryAdd(m.Name, m.DiffusersShape(r.Shape)!), $"two tensors map to {m.Name}");
            }
        }
        SameLayout(expected, mapped);
        Assert.Equal(2 + 12, ignored); // text_projection, logit_scale, and the 12 tensors of the unused 24th layer
    }
}
