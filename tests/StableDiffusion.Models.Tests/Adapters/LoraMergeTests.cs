using System.Security.Cryptography;
using StableDiffusion.IO;
using StableDiffusion.IO.Tests.Support;
using StableDiffusion.Models.Clip;
using StableDiffusion.Models;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using StableDiffusion.TestSupport.Torch;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using TorchTensor = TorchSharp.torch.Tensor;
using ZipTensor = StableDiffusion.IO.Tests.Support.TorchTensor;

namespace StableDiffusion.Models.Tests.Adapters;

/// <summary>
/// LoRA files in every format sd reads, merged into weights at load (Module.Load), against libtorch: the merged
/// layer's output equals the base layer's output plus the low-rank path m·(alpha/r)·up(down(x)) computed in float64;
/// a whole tiny CLIP text encoder with two LoRAs against transformers' CLIPTextModel on W + m·(alpha/r)·up·down.
/// </summary>
public class LoraMergeTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);
    private const float Multiplier = 0.8f;
    private const int Rank = 4;

    /// <summary>One layer under a real model path.</summary>
    private sealed class At : Module
    {
        public At(string path, Module leaf) => Child(path, leaf);
    }

    private sealed record Pair(string Name, long[] Shape, float[] Values);

    private static byte[] Bytes(float[] v, WeightDType dt) => dt == WeightDType.F16
        ? v.SelectMany(x => BitConverter.GetBytes((Half)x)).ToArray()
        : v.SelectMany(BitConverter.GetBytes).ToArray();

    private static string Write(TempFolder dir, string file, IEnumerable<Pair> tensors, WeightDType dt, Dictionary<string, string>? metadata = null)
    {
        var path = Path.Combine(dir.Path, file);
        if (file.EndsWith(".pt", StringComparison.Ordinal))
            TorchWriter.Write(path, tensors.Select(t => new ZipTensor(t.Name, dt == WeightDType.F16 ? "HalfStorage" : "FloatStorage", t.Shape, Bytes(t.Values, dt))));
        else
            SafetensorsWriter.Write(path, tensors.Select(t => SafetensorsEntry.FromBytes(t.Name, dt, t.Shape, Bytes(t.Values, dt))), metadata);
        return path;
    }

    // (format, the layer's module path, LoRA tensor names for down/up/alpha, metadata)
    private static (string Down, string Up, string? Alpha, Dictionary<string, string>? Meta) Names(string format, string module) => format switch
    {
        "kohya" or "lcm" or "ckpt" => Kohya("lora_unet_" + module.Replace('.', '_')),
        "kohya-ldm" => Kohya("lora_unet_" + LdmName(module)),
        "peft" => ($"unet.{module}.lora_A.weight", $"unet.{module}.lora_B.weight", null,
            new() { ["lora_adapter_metadata"] = """{"unet.r": 4, "unet.lora_alpha": 3.0}""" }),
        "diffusers" => ($"unet.{module}.lora.down.weight", $"unet.{module}.lora.up.weight", $"unet.{module}.alpha", null),
        "processor" => Processor(module),
        _ => throw new ArgumentOutOfRangeException(nameof(format)),
    };

    private static (string, string, string?, Dictionary<string, string>?) Kohya(string stem) =>
        ($"{stem}.lora_down.weight", $"{stem}.lora_up.weight", $"{stem}.alpha", null);

    // The attention-processor form has no alpha (scale 1); to_out.0 is spelled to_out_lora.
    private static (string, string, string?, Dictionary<string, string>?) Processor(string module)
    {
        int at = module.LastIndexOf(".to_", StringComparison.Ordinal);
        var proj = module[(at + 1)..].Replace("to_out.0", "to_out");
        return ($"{module[..at]}.processor.{proj}_lora.down.weight", $"{module[..at]}.processor.{proj}_lora.up.weight", null, null);
    }

    // down_blocks.1.attentions.0.* is input_blocks.4.1.* with two layers per block.
    private static string LdmName(string module) => module.Replace("down_blocks.1.attentions.0.", "input_blocks.4.1.").Replace('.', '_');

    [Theory]
    [InlineData("kohya", "linear", "fp32")]
    [InlineData("kohya", "linear", "fp16")]
    [InlineData("kohya-ldm", "linear", "fp32")]
    [InlineData("peft", "linear", "fp32")]
    [InlineData("peft", "linear", "fp16")]
    [InlineData("diffusers", "linear", "fp32")]
    [InlineData("processor", "linear", "fp32")]
    [InlineData("processor", "linear-out", "fp32")]
    [InlineData("ckpt", "linear", "fp32")]
    [InlineData("ckpt", "conv3", "fp16")]
    [InlineData("kohya", "conv1", "fp32")]
    [InlineData("kohya", "conv1", "fp16")]
    [InlineData("kohya-ldm", "conv1", "fp32")]
    [InlineData("peft", "conv1", "fp32")]
    [InlineData("lcm", "conv3", "fp32")]
    [InlineData("lcm", "conv3", "fp16")]
    [InlineData("kohya", "linear", "fp32", "cpu")]
    [InlineData("kohya", "linear", "fp16", "cpu")]
    [InlineData("peft", "conv1", "fp32", "cpu")]
    [InlineData("lcm", "conv3", "fp32", "cpu")]
    [InlineData("lcm", "conv3", "fp16", "cpu")]
    [InlineData("ckpt", "linear", "fp16", "cpu")]
    public void Merged_layer_is_base_plus_the_low_rank_path(string format, string layer, string dtype, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        var wdt = dt == DType.F16 ? WeightDType.F16 : WeightDType.F32;
        using var scope = torch.NewDisposeScope();
        using var dir = new TempFolder();
        var (module, leaf, cin, cout, k) = layer switch
        {
            "linear" => ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", (Module)new Linear(24, 16), 24, 16, 1),
            "linear-out" => ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0", new Linear(16, 16), 16, 16, 1),
            "conv1" => ("down_blocks.1.attentions.0.proj_in", new Conv2d(8, 12, 1), 8, 12, 1),
            _ => ("down_blocks.0.resnets.0.conv1", new Conv2d(8, 12, 3, padding: 1), 8, 12, 3),
        };
        using var model = new At(module, leaf);
        using var w = TestWeights.LoadInto(model, ops, dt, seed: 21);

        bool conv = layer.StartsWith("conv", StringComparison.Ordinal);
        long[] downShape = conv ? [Rank, cin, k, k] : [Rank, cin], upShape = conv ? [cout, Rank, 1, 1] : [cout, Rank];
        var down = oracle.Random(Rank * cin * k * k, dt, 0.5f);
        var up = oracle.Random(cout * Rank, dt, 0.5f);
        var (downName, upName, alphaName, meta) = Names(format, module);
        var tensors = new List<Pair> { new(downName, downShape, down), new(upName, upShape, up) };
        if (alphaName is not null && format != "ckpt") tensors.Add(new(alphaName, [], [3f]));
        float alpha = format is "processor" or "ckpt" ? Rank : 3f;
        var path = Write(dir, format == "ckpt" ? "lora.pt" : "lora.safetensors", tensors, wdt, meta);

        using var lora = LoraFile.Open(path, Multiplier);
        Assert.Equal(format is "kohya" or "kohya-ldm" or "lcm" or "ckpt" ? "kohya" : "diffusers", lora.Format);
        var updates = LoraFile.ResolveAll([lora], new Dictionary<string, IReadOnlyDictionary<string, long[]>> { ["unet"] = model.ExpectedLayout() });
        Assert.Equal([module + ".weight"], updates["unet"].Keys);
        model.Load(w.Component, ops, dt, updates["unet"]);

        float s = Multiplier * alpha / Rank;
        var tdown = Oracle.T(down, downShape);
        var tup = Oracle.T(up, upShape);
        var bias = w.Torch(module + ".bias");
        var weight = w.Torch(module + ".weight");
        TorchTensor baseOut, want;
        DeviceTensor y;
        if (!conv)
        {
            var x = oracle.Random(3 * cin, dt, 1f);
            using var tx = Oracle.Upload(ops, x, dt, 3, cin);
            y = ((Linear)leaf).Forward(ops, tx);
            var xt = Oracle.T(x, 3, cin);
            baseOut = F.linear(xt, weight, bias);
            want = baseOut + s * F.linear(F.linear(xt, tdown), tup);
        }
        else
        {
            int h = 5, wd = 6;
            var x = oracle.Random(h * wd * cin, dt, 1f);
            using var tx = Oracle.Upload(ops, x, dt, 1, h, wd, cin);
            y = ((Conv2d)leaf).Forward(ops, tx);
            var xt = Oracle.T(x, 1, h, wd, cin).permute(0, 3, 1, 2);
            int pad = k / 2;
            baseOut = F.conv2d(xt, weight, bias, padding: [pad, pad]).permute(0, 2, 3, 1);
            want = baseOut + s * F.conv2d(F.conv2d(xt, tdown, padding: [pad, pad]), tup).permute(0, 2, 3, 1);
        }
        using (y)
        {
            // The LoRA must matter: its path moves the output by far more than the tolerance.
            double moved = (want - baseOut).norm().item<double>() / baseOut.norm().item<double>();
            Assert.True(moved > 0.1, $"the LoRA moved the output by only {moved:0.000}");
            Assert.Equal(dt, leaf.NamedParameters().First().Parameter.Value.DType);
            oracle.Check("LoRA merge", $"{format} {layer} r{Rank} m{Multiplier}", y, want, Devices.Tolerance(dt));
        }
    }

    private static ClipTextConfig Tiny() => new(
        VocabSize: 100, HiddenSize: 32, IntermediateSize: 64, NumHiddenLayers: 2, NumAttentionHeads: 2,
        MaxPositionEmbeddings: 77, HiddenAct: Activation.QuickGelu, LayerNormEps: 1e-5f);

    [Theory]
    [InlineData("fp32")]
    [InlineData("fp32", "cpu")]
    [InlineData("fp16", "cpu")]
    public void Text_encoder_with_two_loras_matches_libtorch(string dtype, string backend = "test")
    {
        var ops = Devices.Backend(backend);
        var dt = Devices.DType(dtype);
        var wdt = dt == DType.F16 ? WeightDType.F16 : WeightDType.F32;
        using var scope = torch.NewDisposeScope();
        using var dir = new TempFolder();
        var c = Tiny();
        using var model = new ClipTextModel(c);
        using var w = TestWeights.LoadInto(model, ops, dt, seed: 23);

        // A kohya LoRA on two attention projections (alpha 2, weight 0.7) and a PEFT one on an MLP layer (alpha 8, weight 1.2).
        var deltas = new Dictionary<string, TorchTensor>();
        var kohya = new List<Pair>();
        foreach (var module in new[] { "text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.1.self_attn.out_proj" })
        {
            var (down, up) = (oracle.Random(Rank * 32, dt, 0.5f), oracle.Random(32 * Rank, dt, 0.5f));
            var stem = "lora_te_" + module.Replace('.', '_');
            kohya.AddRange([new(stem + ".lora_down.weight", [Rank, 32], down), new(stem + ".lora_up.weight", [32, Rank], up), new(stem + ".alpha", [], [2f])]);
            deltas[module + ".weight"] = 0.7 * 2.0 / Rank * Oracle.T(up, 32, Rank).matmul(Oracle.T(down, Rank, 32));
        }
        var (d2, u2) = (oracle.Random(Rank * 32, dt, 0.5f), oracle.Random(64 * Rank, dt, 0.5f));
        const string fc1 = "text_model.encoder.layers.1.mlp.fc1";
        var peft = new List<Pair> { new($"text_encoder.{fc1}.lora_A.weight", [Rank, 32], d2), new($"text_encoder.{fc1}.lora_B.weight", [64, Rank], u2) };
        deltas[fc1 + ".weight"] = 1.2 * 8.0 / Rank * Oracle.T(u2, 64, Rank).matmul(Oracle.T(d2, Rank, 32));

        using var a = LoraFile.Open(Write(dir, "a.safetensors", kohya, wdt), 0.7f);
        using var b = LoraFile.Open(Write(dir, "b.safetensors", peft, wdt, new() { ["lora_adapter_metadata"] = """{"text_encoder": {"r": 4, "lora_alpha": 8}}""" }), 1.2f);
        var updates = LoraFile.ResolveAll([a, b], new Dictionary<string, IReadOnlyDictionary<string, long[]>> { ["text_encoder"] = model.ExpectedLayout() });
        Assert.Equal(3, updates["text_encoder"].Count);
        model.Load(w.Component, ops, dt, updates["text_encoder"]);

        var rng = new Random(5);
        var ids = Enumerable.Range(0, 77).Select(_ => rng.Next(c.VocabSize)).ToArray();
        using var tids = DeviceTensor.FromInts(ops.Device, ids, 1, 77);
        using var y = model.Forward(ops, tids);
        TorchTensor Merged(string name) => deltas.TryGetValue(name, out var d) ? w.Torch(name) + d : w.Torch(name);
        var want = new TorchClip(c, Merged).Forward(ids, 1, 77);
        var without = new TorchClip(c, w.Torch).Forward(ids, 1, 77);
        double moved = (want - without).norm().item<double>() / without.norm().item<double>();
        Assert.True(moved > 0.05, $"the LoRAs moved the encoder output by only {moved:0.000}");
        oracle.Check("CLIPTextModel + LoRA", "kohya q/out_proj + PEFT fc1, 2 layers 1x77", y, want, dt == DType.F32 ? 1e-4 : 2e-3);
    }

    // ---- files that do not fit, malformed files ----

    private static Pair P(string name, params long[] shape) => new(name, shape, new float[shape.Aggregate(1L, (x, y) => x * y)]);

    private static IReadOnlyDictionary<string, IReadOnlyDictionary<string, long[]>> Sd15Like()
    {
        var te = new ClipTextModel(Tiny());
        var attn = new At("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", new Linear(24, 16));
        return new Dictionary<string, IReadOnlyDictionary<string, long[]>> { ["text_encoder"] = te.ExpectedLayout(), ["unet"] = attn.ExpectedLayout() };
    }

    [Fact]
    public void A_lora_for_another_family_is_refused_with_how_many_modules_matched()
    {
        using var dir = new TempFolder();
        // SDXL-style: te1 fits the CLIP-L-like encoder, te2 has no encoder here, the UNet layer has other widths.
        var path = Write(dir, "xl.safetensors", [
            P("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", Rank, 32),
            P("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", 32, Rank),
            P("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", Rank, 1280),
            P("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", 1280, Rank),
            P("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight", Rank, 2048),
            P("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight", 640, Rank),
            P("lora_unet_input_blocks_7_1_transformer_blocks_0_attn1_to_q.lora_down.weight", Rank, 640),
            P("lora_unet_input_blocks_7_1_transformer_blocks_0_attn1_to_q.lora_up.weight", 640, Rank),
        ], WeightDType.F16);
        using var lora = LoraFile.Open(path);
        var e = Assert.Throws<WeightsException>(() => LoraFile.ResolveAll([lora], Sd15Like()));
        output.WriteLine(e.Message);
        Assert.Contains("xl.safetensors: LoRA does not fit this model: 1 of 4 modules matched", e.Message);
        Assert.Contains("text_encoder_2, which this model does not have", e.Message);
        Assert.Contains("and 2 more", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Theory]
    [InlineData("loha", "LyCORIS LoHa is not supported")]
    [InlineData("lokr", "LyCORIS LoKr is not supported")]
    [InlineData("dora", "DoRA is not supported")]
    [InlineData("tucker", "Tucker (CP) decomposition is not supported")]
    [InlineData("no-up", "has no up (lora_up/lora_B) weight")]
    [InlineData("rank", "do not form a low-rank pair")]
    [InlineData("alpha", "alpha has shape [2], expected a scalar")]
    [InlineData("stranger", "is not part of a LoRA sd reads")]
    [InlineData("metadata", "lora_adapter_metadata is not valid JSON")]
    [InlineData("checkpoint", "is not part of a LoRA sd reads")]
    public void Malformed_and_unsupported_files_are_one_line_errors_naming_the_file(string kind, string expected)
    {
        using var dir = new TempFolder();
        const string s = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k";
        Pair[] pair = [P(s + ".lora_down.weight", Rank, 24), P(s + ".lora_up.weight", 16, Rank)];
        Dictionary<string, string>? meta = null;
        Pair[] tensors = kind switch
        {
            "loha" => [P(s + ".hada_w1_a", 16, Rank), P(s + ".hada_w1_b", Rank, 24), P(s + ".alpha")],
            "lokr" => [P(s + ".lokr_w1", 4, 4), P(s + ".lokr_w2", 4, 6)],
            "dora" => [.. pair, P(s + ".dora_scale", 16, 1)],
            "tucker" => [.. pair, P(s + ".lora_mid.weight", Rank, Rank, 3, 3)],
            "no-up" => [pair[0]],
            "rank" => [pair[0], P(s + ".lora_up.weight", 16, Rank + 1)],
            "alpha" => [.. pair, P(s + ".alpha", 2)],
            "stranger" => [.. pair, P("lora_unet_something.weight", 2)],
            "metadata" => [P("unet.a.lora_A.weight", Rank, 24), P("unet.a.lora_B.weight", 16, Rank)],
            _ => [P("model.diffusion_model.input_blocks.0.0.weight", 320, 4, 3, 3)],
        };
        if (kind == "metadata") meta = new() { ["lora_adapter_metadata"] = "{not json" };
        var path = Write(dir, kind + ".safetensors", tensors, WeightDType.F32, meta);
        var e = Assert.Throws<WeightsException>(() => LoraFile.Open(path).Dispose());
        output.WriteLine(e.Message);
        Assert.StartsWith(path + ":", e.Message);
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void Truncated_and_missing_files_are_errors()
    {
        using var dir = new TempFolder();
        var path = Write(dir, "t.safetensors", [P("unet.a.lora_A.weight", Rank, 24), P("unet.a.lora_B.weight", 16, Rank)], WeightDType.F32);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^40]);
        Assert.Contains("t.safetensors", Assert.Throws<WeightsException>(() => LoraFile.Open(path).Dispose()).Message);
        Assert.Contains("LoRA file not found", Assert.Throws<WeightsException>(() => LoraFile.Open(Path.Combine(dir.Path, "nope.safetensors"))).Message);
    }

    [Fact]
    public void Short_hash_is_the_sha256_of_the_safetensors_data_after_the_header()
    {
        using var dir = new TempFolder();
        var path = Write(dir, "h.safetensors", [P("unet.a.lora_A.weight", Rank, 24), P("unet.a.lora_B.weight", 16, Rank)], WeightDType.F16);
        var bytes = File.ReadAllBytes(path);
        long header = BitConverter.ToInt64(bytes, 0);
        var want = Convert.ToHexStringLower(SHA256.HashData(bytes.AsSpan((int)(8 + header))))[..12];
        using var lora = LoraFile.Open(path);
        Assert.Equal(want, lora.ShortHash());
        // Changing only the metadata keeps the hash (it covers the tensors, not the header).
        var again = Write(dir, "h2.safetensors", [P("unet.a.lora_A.weight", Rank, 24), P("unet.a.lora_B.weight", 16, Rank)], WeightDType.F16,
            new() { ["ss_output_name"] = "other" });
        using var other = LoraFile.Open(again);
        Assert.Equal(want, other.ShortHash());
    }
}

/// <summary>LoRAs in kohya's naming built from the real SD1.5 and SDXL layouts, mapped onto sd's SD1.5 modules.</summary>
public class LoraRealLayoutTests(ITestOutputHelper output)
{
    /// <summary>A rank-1 kohya LoRA on every linear layer of the given component layouts (UNet attention blocks, text encoder).</summary>
    private static string Write(TempFolder dir, string name, params (string Prefix, string Tsv, bool Ldm)[] parts)
    {
        var entries = new List<SafetensorsEntry>();
        foreach (var (prefix, tsv, ldm) in parts)
            foreach (var (n, _, shape) in SharedReference.Layout(tsv))
            {
                if (shape.Length != 2 || !n.EndsWith(".weight", StringComparison.Ordinal) || n.Contains("embed", StringComparison.Ordinal)) continue;
                if (prefix == "lora_unet_" && !n.Contains("attentions.", StringComparison.Ordinal)) continue;
                var module = n[..^".weight".Length];
                if (ldm) module = module.Replace("down_blocks.1.attentions.0.", "input_blocks.4.1.");
                var stem = prefix + module.Replace('.', '_');
                entries.Add(new SafetensorsEntry(stem + ".lora_down.weight", WeightDType.F16, [1, shape[1]], s => s.Write(new byte[2 * shape[1]])));
                entries.Add(new SafetensorsEntry(stem + ".lora_up.weight", WeightDType.F16, [shape[0], 1], s => s.Write(new byte[2 * shape[0]])));
            }
        var path = Path.Combine(dir.Path, name);
        SafetensorsWriter.Write(path, entries);
        return path;
    }

    private static IReadOnlyDictionary<string, IReadOnlyDictionary<string, long[]>> Sd15()
    {
        using var unet = new StableDiffusion.Models.Unet.UNet2DConditionModel(Presets.Sd15.Unet());
        using var te = new ClipTextModel(Presets.Sd15.TextEncoder());
        return new Dictionary<string, IReadOnlyDictionary<string, long[]>> { ["unet"] = unet.ExpectedLayout(), ["text_encoder"] = te.ExpectedLayout() };
    }

    [SkippableFact]
    public void A_kohya_lora_on_the_real_sd15_layout_maps_every_module_and_an_sdxl_one_is_refused()
    {
        using var dir = new TempFolder();
        var sd15 = Write(dir, "sd15.safetensors", ("lora_unet_", "sd15_diffusers_unet.tsv", true), ("lora_te_", "sd15_diffusers_text_encoder.tsv", false));
        using (var lora = LoraFile.Open(sd15))
        {
            var updates = LoraFile.ResolveAll([lora], Sd15());
            Assert.Equal(lora.Modules.Count, updates.Values.Sum(u => u.Count));
            Assert.Equal(72, updates["text_encoder"].Count);
            output.WriteLine($"SD1.5: {lora.Modules.Count} kohya modules (UNet {updates["unet"].Count}, text encoder {updates["text_encoder"].Count}), all mapped");
        }
        var xl = Write(dir, "sdxl.safetensors", ("lora_unet_", "sdxl_diffusers_unet.tsv", false),
            ("lora_te1_", "sdxl_diffusers_text_encoder.tsv", false), ("lora_te2_", "sdxl_diffusers_text_encoder_2.tsv", false));
        using var xlLora = LoraFile.Open(xl);
        var e = Assert.Throws<WeightsException>(() => LoraFile.ResolveAll([xlLora], Sd15()));
        output.WriteLine(e.Message);
        Assert.Matches(@"sdxl\.safetensors: LoRA does not fit this model: \d+ of \d+ modules matched", e.Message);
    }
}
