using System.Security.Cryptography;
using System.Text.Json;
using StableDiffusion.IO.Tests.Support;
using StableDiffusion.Models;

namespace StableDiffusion.IO.Tests;

/// <summary>
/// <c>sd random-model</c>: the generated headers against the real layouts (names, dtypes, shapes; built as entry
/// lists, no data), the file sizes against the real files', <c>sd info</c> counts, determinism, and bad options.
/// </summary>
public class RandomModelTests
{
    private static WeightDType DType(bool fp16) => fp16 ? WeightDType.F16 : WeightDType.F32;

    private static string Key(string name, WeightDType dtype, long[] shape) => $"{name}\t{dtype.Name()}\t[{string.Join(",", shape)}]";

    /// <summary>The generated entries equal the reference layout exactly: same names, each with the same dtype and shape.</summary>
    private static void AssertLayout(IEnumerable<SafetensorsEntry> entries, string tsv, bool fp16, int count)
    {
        var have = entries.Select(e => Key(e.Name, e.DType, e.Shape)).Order(StringComparer.Ordinal).ToList();
        // The DDPM schedule buffers stay float32 in an fp16 file (LDM's dtype; readers build their sigmas from them).
        var want = Reference.Layout(tsv)
            .Select(r => Key(r.Name, NameMap.DdpmBuffers.Contains(r.Name) ? r.DType : LayoutFiles.Cast(r.DType, fp16), r.Shape))
            .Order(StringComparer.Ordinal).ToList();
        var missing = want.Except(have).ToList();
        var extra = have.Except(want).ToList();
        Assert.True(missing.Count == 0 && extra.Count == 0,
            $"{tsv}: missing {missing.Count} (e.g. {string.Join("; ", missing.Take(3))}), unexpected {extra.Count} (e.g. {string.Join("; ", extra.Take(3))})");
        Assert.Equal(count, have.Count);
        Assert.Equal(have.Count, have.Distinct().Count());
    }

    private static RandomModelFile File(IReadOnlyList<RandomModelFile> files, string component) =>
        files.Single(f => f.RelativePath.StartsWith(component + "/", StringComparison.Ordinal));

    [SkippableTheory]
    [InlineData(true)]
    [InlineData(false)]
    public void Sd15HeadersAreTheRealLayouts(bool fp16)
    {
        AssertLayout(RandomModel.SingleFileEntries(Presets.Sd15, DType(fp16), 0), "sd15_single_file_v1-5-pruned-emaonly.tsv", fp16, 1145);
        var files = RandomModel.DiffusersFiles(Presets.Sd15, DType(fp16), 0);
        Assert.Equal(3, files.Count);
        AssertLayout(File(files, "text_encoder").Entries, "sd15_diffusers_text_encoder.tsv", fp16, 197); // with position_ids
        AssertLayout(File(files, "unet").Entries, "sd15_diffusers_unet.tsv", fp16, 686);
        AssertLayout(File(files, "vae").Entries, "sd15_diffusers_vae.tsv", fp16, 248); // deprecated attention names, as the real file
        string v = fp16 ? ".fp16" : "";
        Assert.Equal([$"text_encoder/model{v}.safetensors", $"unet/diffusion_pytorch_model{v}.safetensors", $"vae/diffusion_pytorch_model{v}.safetensors"],
            files.Select(f => f.RelativePath));
    }

    [SkippableTheory]
    [InlineData(true)]
    [InlineData(false)]
    public void Sd21HeadersAreTheRealLayouts(bool fp16)
    {
        // OpenCLIP names, fused in_proj, the unused 24th layer, text_projection and logit_scale; no position_ids.
        AssertLayout(RandomModel.SingleFileEntries(Presets.Sd21, DType(fp16), 0), "sd21_single_file_v2-1_512-ema-pruned.tsv", fp16, 1242);
        var files = RandomModel.DiffusersFiles(Presets.Sd21, DType(fp16), 0);
        AssertLayout(File(files, "text_encoder").Entries, "sd21_diffusers_text_encoder.tsv", fp16, 373);
        AssertLayout(File(files, "unet").Entries, "sd21_diffusers_unet.tsv", fp16, 686);
        AssertLayout(File(files, "vae").Entries, "sd15_diffusers_vae.tsv", fp16, 248); // SD2.1-base's VAE file is SD1.5's layout
    }

    [SkippableFact]
    public void FileSizesAreTheRealFilesToWithinTheHeaderPadding()
    {
        // The data bytes are exact; headers differ by a few bytes with the writer's version (padding, metadata), and
        // for four files not at all: SD1.5's fp16 unet and text encoder, and both fp32 VAEs.
        var real = Reference.RealFileSizes();
        long Real(string repo, string path) => real[repo + "/" + path];
        const string sd15 = "HDRJ-One+runwayml-stable-diffusion-v1-5", sd21 = "jack-op11+stable-diffusion-2-1-base";
        var cases = new List<(string Name, long Ours, long Real)>
        {
            ("sd15 single", RandomModel.FileBytes(RandomModel.SingleFileEntries(Presets.Sd15, WeightDType.F32, 0)), Real(sd15, "v1-5-pruned-emaonly.safetensors")),
            ("sd21 single", RandomModel.FileBytes(RandomModel.SingleFileEntries(Presets.Sd21, WeightDType.F32, 0)), Real(sd21, "v2-1_512-ema-pruned.safetensors")),
        };
        foreach (var fp16 in new[] { false, true })
            foreach (var f in RandomModel.DiffusersFiles(Presets.Sd15, DType(fp16), 0))
                cases.Add(("sd15 " + f.RelativePath, RandomModel.FileBytes(f.Entries), Real(sd15, f.RelativePath)));
        foreach (var f in RandomModel.DiffusersFiles(Presets.Sd21, WeightDType.F32, 0))
            cases.Add(("sd21 " + f.RelativePath, RandomModel.FileBytes(f.Entries), Real(sd21, f.RelativePath)));
        Assert.Equal(11, cases.Count);
        foreach (var (name, ours, theirs) in cases)
            Assert.True(Math.Abs(ours - theirs) <= 8, $"{name}: {ours} bytes, the real file {theirs}");
        Assert.Equal(["sd15 text_encoder/model.fp16.safetensors", "sd15 unet/diffusion_pytorch_model.fp16.safetensors",
            "sd15 vae/diffusion_pytorch_model.safetensors", "sd21 vae/diffusion_pytorch_model.safetensors"],
            cases.Where(c => c.Ours == c.Real).Select(c => c.Name).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void SingleFileCarriesTheLdmScheduleBuffersAndTheSameWeightsAsTheDiffusersFiles()
    {
        using var dir = new TempDir();
        var single = Path.Combine(dir.Path, "tiny.safetensors");
        RandomModel.Write(Presets.Sd21Tiny, RandomModelFormat.SingleFile, WeightDType.F32, 5, single);
        RandomModel.Write(Presets.Sd21Tiny, RandomModelFormat.Diffusers, WeightDType.F32, 5, dir.Dir("folder"));
        using var file = WeightFile.Open(single);
        float[] Read(string name) => file.ReadFloat32(file.Find(name) ?? throw new KeyNotFoundException(name));

        // ldm register_schedule on scaled_linear betas (schedules.json: alphas_cumprod[0] 0.99914998, [999] 0.0046600951).
        Assert.Equal(0.99914998, Read("alphas_cumprod")[0], 7);
        Assert.Equal(0.0046600951, Read("alphas_cumprod")[999], 8);
        Assert.Equal(0.00085, Read("betas")[0], 8);
        Assert.Equal(0.012, Read("betas")[999], 8);
        Assert.Equal(1.0, Read("alphas_cumprod_prev")[0]);
        Assert.Equal(Math.Log(1e-20), Read("posterior_log_variance_clipped")[0], 3);
        Assert.Equal(Math.Sqrt((1 - 0.0046600951) / 0.0046600951), Read("sqrt_recipm1_alphas_cumprod")[999], 3); // sigma_max 14.6146
        Assert.Equal(0.9999f, Read("model_ema.decay")[0]);

        // Both formats of one seed hold the same model: the fused q/k/v is the three diffusers tensors stacked, the VAE
        // attention weights are the same values as 1x1 convolutions.
        using var source = ModelSource.Open(dir.Path + "/folder");
        var te = source.Require("text_encoder");
        float[] Diffusers(ComponentWeights c, string name) => c.Find(name)!.ReadFloat32();
        var fused = Read("cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight");
        Assert.Equal(
            [.. Diffusers(te, "text_model.encoder.layers.1.self_attn.q_proj.weight"), .. Diffusers(te, "text_model.encoder.layers.1.self_attn.k_proj.weight"),
             .. Diffusers(te, "text_model.encoder.layers.1.self_attn.v_proj.weight")], fused);
        Assert.Equal(Diffusers(source.Require("vae"), "decoder.mid_block.attentions.0.to_q.weight"), Read("first_stage_model.decoder.mid.attn_1.q.weight"));
        Assert.Equal(Diffusers(source.Require("unet"), "up_blocks.1.attentions.0.proj_in.weight"), Read("model.diffusion_model.output_blocks.2.1.proj_in.weight"));

        // DESIGN.md §8: norm scales near 1, weights variance-preserving.
        var scale = Read("model.diffusion_model.out.0.weight");
        Assert.All(scale, v => Assert.InRange(v, 0.9f, 1.1f));
        var conv = Read("model.diffusion_model.input_blocks.0.0.weight"); // [32, 4, 3, 3]: fan-in 36
        Assert.All(conv, v => Assert.InRange(Math.Abs(v), 0, Math.Sqrt(3.0 / 36)));
    }

    [Fact]
    public void ChunksOfATensorAreGeneratedIndependently()
    {
        long[] shape = [300_000, 7];
        var whole = new float[shape[0] * shape[1]];
        RandomWeights.Fill(3, "unet/x.weight", ParamKind.Weight, shape, whole);
        var part = new float[1000];
        RandomWeights.Fill(3, "unet/x.weight", ParamKind.Weight, shape, part, start: 1_500_123);
        Assert.Equal(whole.AsSpan(1_500_123, 1000).ToArray(), part);
    }

    // ---- the command ----

    private static (int Code, string Out, string Err) Sd(params string[] args) => InfoCommandTests.Sd(args);

    private static JsonElement Info(string path)
    {
        var (code, stdout, stderr) = Sd("info", path, "--json");
        Assert.True(code == 0, stderr);
        return JsonDocument.Parse(stdout).RootElement.Clone();
    }

    private static void AssertSd15Counts(JsonElement info)
    {
        var c = info.GetProperty("components");
        Assert.Equal((686, 859_520_964L), (c.GetProperty("unet").GetProperty("tensors").GetInt32(), c.GetProperty("unet").GetProperty("parameters").GetInt64()));
        Assert.Equal((196, 123_060_480L), (c.GetProperty("text_encoder").GetProperty("tensors").GetInt32(), c.GetProperty("text_encoder").GetProperty("parameters").GetInt64()));
        Assert.Equal((248, 83_653_863L), (c.GetProperty("vae").GetProperty("tensors").GetInt32(), c.GetProperty("vae").GetProperty("parameters").GetInt64()));
        Assert.Equal("sd1", info.GetProperty("family").GetString());
    }

    [Fact]
    public void InfoReportsTheSd15CountsForAHeaderOnlyModelInBothFormats()
    {
        // The full-size layout with the data left as holes: sparse files, no time, no disk space.
        using var dir = new TempDir();
        var single = Path.Combine(dir.Path, "sd15.safetensors");
        var folder = Path.Combine(dir.Path, "sd15");
        RandomModel.Write(Presets.Sd15, RandomModelFormat.SingleFile, WeightDType.F16, 0, single, writeData: false);
        RandomModel.Write(Presets.Sd15, RandomModelFormat.Diffusers, WeightDType.F16, 0, folder, writeData: false);
        var info = Info(single);
        Assert.Equal("safetensors", info.GetProperty("format").GetString());
        Assert.Equal(1145, info.GetProperty("tensors").GetArrayLength());
        AssertSd15Counts(info);
        info = Info(folder);
        Assert.Equal("diffusers", info.GetProperty("format").GetString());
        Assert.Equal(686 + 248 + 197, info.GetProperty("tensors").GetArrayLength());
        AssertSd15Counts(info);
        Assert.Contains("not counted: 15 non-weight", Sd("info", single).Out); // position_ids, 12 DDPM buffers, 2 model_ema
    }

    [SkippableFact]
    public void FullSizeSd15WrittenByTheCommandReportsTheRequiredCounts()
    {
        Skip.IfNot(Environment.GetEnvironmentVariable("SD_BIG_TESTS") == "1", "set SD_BIG_TESTS=1 to write two 2.1 GB models");
        using var dir = new TempDir();
        var single = Path.Combine(dir.Path, "sd15.safetensors");
        var folder = Path.Combine(dir.Path, "sd15");
        var (code, stdout, stderr) = Sd("random-model", "--config", "sd15", "--format", "single-file", "--dtype", "fp16", "--seed", "1", "--out", single);
        Assert.True(code == 0, stderr);
        Assert.Contains("sd: writing ", stderr); // progress for a full-size model
        Assert.StartsWith("wrote sd15 (single-file, fp16, seed 1)", stdout);
        AssertSd15Counts(Info(single));
        (code, _, stderr) = Sd("random-model", "--config", "sd15", "--out", folder, "--seed", "1");
        Assert.True(code == 0, stderr);
        AssertSd15Counts(Info(folder));
        // Same seed, same weights: the UNet's first convolution is the same bytes in both formats.
        using var a = ModelSource.Open(single);
        using var b = ModelSource.Open(folder);
        Assert.True(a.Require("unet").Find("conv_in.weight")!.Bytes().SequenceEqual(b.Require("unet").Find("conv_in.weight")!.Bytes()));
    }

    private static string Hash(string path) =>
        Directory.Exists(path)
            ? string.Join("\n", Directory.GetFiles(path, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
                .Select(f => Path.GetRelativePath(path, f) + " " + Hash(f)))
            : Convert.ToHexString(SHA256.HashData(System.IO.File.ReadAllBytes(path)));

    [Theory]
    [InlineData("sd15-tiny", "diffusers", "fp16", "sd1")]
    [InlineData("sd21-tiny", "single-file", "fp32", "sd2")]
    public void TheSameSeedGivesTheSameBytes(string config, string format, string dtype, string family)
    {
        using var dir = new TempDir();
        string ext = format == "single-file" ? ".safetensors" : "";
        string Make(string name, string seed)
        {
            var path = Path.Combine(dir.Path, name + ext);
            var (code, stdout, stderr) = Sd("random-model", "--config", config, "--format", format, "--dtype", dtype, "--seed", seed, "--out", path);
            Assert.True(code == 0, stderr);
            Assert.StartsWith($"wrote {config} ({format}, {dtype}, seed {seed}) to {path}", stdout);
            return path;
        }
        var first = Make("a", "42");
        var second = Make("b", "42");
        var other = Make("c", "43");
        Assert.Equal(Hash(first), Hash(second));
        Assert.NotEqual(Hash(first), Hash(other));
        var info = Info(first);
        Assert.Equal(family, info.GetProperty("family").GetString()); // tiny widths: the family comes from the projections
        Assert.Equal(format == "diffusers" ? "diffusers" : "safetensors", info.GetProperty("format").GetString());
        Assert.Contains(info.GetProperty("tensors").EnumerateArray(), t => t.GetProperty("dtype").GetString() == (dtype == "fp16" ? "F16" : "F32"));
    }

    [Fact]
    public void TheDiffusersFolderHasTheConfigsAPipelineReads()
    {
        using var dir = new TempDir();
        var folder = Path.Combine(dir.Path, "m");
        Assert.Equal(0, Sd("random-model", "--config", "sd21-tiny", "--out", folder, "--dtype", "fp32").Code);
        string[] expected =
        [
            "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
            "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
        ];
        Assert.Equal(expected, Directory.GetFiles(folder, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(folder, f).Replace('\\', '/')).Order(StringComparer.Ordinal));
        Assert.Empty(Directory.GetDirectories(dir.Path, "*.partial-*"));
        using var index = JsonDocument.Parse(System.IO.File.ReadAllText(Path.Combine(folder, "model_index.json")));
        Assert.Equal(JsonValueKind.Null, index.RootElement.GetProperty("feature_extractor")[0].ValueKind); // not shipped, declared absent
        Assert.Equal("UNet2DConditionModel", index.RootElement.GetProperty("unet")[1].GetString());
        using var pad = JsonDocument.Parse(System.IO.File.ReadAllText(Path.Combine(folder, "tokenizer", "special_tokens_map.json")));
        Assert.Equal("!", pad.RootElement.GetProperty("pad_token").GetString()); // SD2 pads with "!"
        using var source = ModelSource.Open(folder);
        Assert.NotNull(source.TokenizerDirectory);
        Assert.NotNull(source.SchedulerConfig);
        Assert.Equal(ModelFamily.Sd2, source.Family);
    }

    [SkippableFact]
    public void TheEmbeddedConfigsAreTheRealOnes()
    {
        // Presets re-type the real json; compare as parsed values (the product cannot read ../shared).
        static void Same(string reference, string ours)
        {
            var want = JsonDocument.Parse(System.IO.File.ReadAllText(reference)).RootElement;
            var have = JsonDocument.Parse(ours).RootElement;
            Assert.True(JsonElement.DeepEquals(want, have), $"{reference} differs from the embedded copy");
        }
        foreach (var (preset, dir) in new[] { (Presets.Sd15, "sd15"), (Presets.Sd21, "sd21-base") })
        {
            Same(Reference.Require("configs", dir, "unet", "config.json"), preset.UnetJson);
            Same(Reference.Require("configs", dir, "vae", "config.json"), preset.VaeJson);
            Same(Reference.Require("configs", dir, "text_encoder", "config.json"), preset.TextEncoderJson);
            Same(Reference.Require("configs", dir, "scheduler", "scheduler_config.json"), preset.SchedulerJson);
            Same(Reference.Require("configs", dir, "model_index.json"), preset.ModelIndexJson);
            Same(Reference.Require("configs", dir, "tokenizer", "tokenizer_config.json"), preset.TokenizerConfigJson);
            Same(Reference.Require("configs", dir, "tokenizer", "special_tokens_map.json"), preset.SpecialTokensMapJson);
        }
    }

    [Theory]
    [InlineData("--config sd3 --out X", "--config 'sd3' is not one of sd15, sd21, sd15-tiny, sd21-tiny")]
    [InlineData("--out X", "needs --config")]
    [InlineData("--config sd15", "needs --out")]
    [InlineData("--config sd15 --out X --format ckpt", "--format 'ckpt' is not one of diffusers, single-file")]
    [InlineData("--config sd15 --out X --dtype bf16", "--dtype 'bf16' is not one of fp16, fp32")]
    [InlineData("--config sd15 --out X --seed -1", "--seed '-1' is not a whole number")]
    [InlineData("--config sd15 --out X --seed 1.5", "--seed '1.5' is not a whole number")]
    [InlineData("--config sd15 --out X --seed 18446744073709551616", "--seed '18446744073709551616' is not a whole number")]
    [InlineData("--config sd15 --out X --seed", "option --seed needs a value")]
    [InlineData("--config sd15 --out X --bogus", "unexpected argument '--bogus'")]
    [InlineData("--config sd15 --format single-file --out X.ckpt", "name it *.safetensors")]
    [InlineData("--config sd15 --out EXISTING", "already exists and is not empty; not overwriting")]
    [InlineData("--config sd15 --format single-file --out EXISTING/f.safetensors", "already exists; not overwriting")]
    [InlineData("--config sd15 --out EXISTING/f.safetensors", "is a file; a diffusers model is a folder")]
    [InlineData("--config sd15 --format single-file --out EXISTING/d.safetensors", "is a folder")]
    public void BadOptionsExit2WithOneLine(string args, string message)
    {
        using var dir = new TempDir();
        var existing = dir.Dir("existing");
        System.IO.File.WriteAllText(Path.Combine(existing, "f.safetensors"), "x");
        Directory.CreateDirectory(Path.Combine(existing, "d.safetensors"));
        var argv = args.Split(' ').Select(a => a.Replace("EXISTING", existing).Replace("X", Path.Combine(dir.Path, "new"))).ToArray();
        var (code, stdout, stderr) = Sd(["random-model", .. argv]);
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        Assert.StartsWith("sd: error: ", stderr);
        Assert.Contains(message.Replace("EXISTING", existing), stderr);
        Assert.Single(stderr.TrimEnd().Split('\n'));
        Assert.Equal(["d.safetensors", "f.safetensors"], Directory.GetFileSystemEntries(existing).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal("x", System.IO.File.ReadAllText(Path.Combine(existing, "f.safetensors")));
        Assert.False(Path.Exists(Path.Combine(dir.Path, "new")));
    }

    [Fact]
    public void AnEmptyTargetIsUsed()
    {
        using var dir = new TempDir();
        var folder = dir.Dir("empty");
        Assert.Equal(0, Sd("random-model", "--config", "sd15-tiny", "--out", folder).Code);
        Assert.True(System.IO.File.Exists(Path.Combine(folder, "unet", "diffusion_pytorch_model.fp16.safetensors")));
        var file = Path.Combine(dir.Path, "empty.safetensors");
        System.IO.File.WriteAllBytes(file, []);
        Assert.Equal(0, Sd("random-model", "--config", "sd15-tiny", "--format=single-file", "--out", file).Code);
        Assert.True(new FileInfo(file).Length > 1_000_000);
        Assert.Contains("random-model --config C --out PATH", Sd("--help").Out);
    }
}
