using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using StableDiffusion.IO;
using StableDiffusion.Models.Clip;
using StableDiffusion.Models.Unet;
using StableDiffusion.Models.Vae;

namespace StableDiffusion.Models;

public enum RandomModelFormat
{
    /// <summary>A diffusers folder: model_index.json and one folder per component.</summary>
    Diffusers,
    /// <summary>One .safetensors file in LDM (CompVis) naming, as the original checkpoints are published.</summary>
    SingleFile,
}

/// <summary>How far a write is: bytes written of all files so far, of the total, and the file being written.</summary>
public sealed record RandomModelProgress(string File, long Done, long Total);

/// <summary>One weight file of a random model: where it goes (relative to the output) and its tensors.</summary>
public sealed record RandomModelFile(string RelativePath, IReadOnlyList<SafetensorsEntry> Entries);

/// <summary>
/// Random-weight models in the exact layouts of the real checkpoints, for tests and for benchmarking without
/// downloads. Every tensor name and shape comes from the models' own config-driven parameter lists (DESIGN.md §4),
/// renamed through <see cref="NameMap"/> for single files; values come from <see cref="RandomWeights"/> keyed by the
/// diffusers path, so both formats of one seed hold the same model. Data is generated while the file is written.
/// </summary>
public static class RandomModel
{
    /// <summary>What diffusers and transformers write, and what transformers checks when it loads a file.</summary>
    public static readonly IReadOnlyDictionary<string, string> Metadata = new Dictionary<string, string> { ["format"] = "pt" };

    /// <summary>The components a random model ships; model_index.json declares the others absent.</summary>
    private static readonly string[] Shipped = ["scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae"];

    public static string WeightFileName(string component, WeightDType dtype) =>
        (component.StartsWith("text_encoder", StringComparison.Ordinal) ? "model" : "diffusion_pytorch_model") + (dtype == WeightDType.F16 ? ".fp16" : "") + ".safetensors";

    /// <summary>The three weight files of a diffusers folder: text_encoder, unet, vae.</summary>
    public static IReadOnlyList<RandomModelFile> DiffusersFiles(ModelPreset preset, WeightDType dtype, ulong seed)
    {
        var te = new ClipTextModel(preset.TextEncoder());
        var unet = new UNet2DConditionModel(preset.Unet());
        var vae = new AutoencoderKL(preset.Vae());
        var text = RandomWeights.Entries(te, seed, dtype, valuePrefix: "text_encoder/").ToList();
        // transformers keeps position_ids as a buffer, and the SD1.5 and SD2.1 files carry it (SDXL's do not).
        if (preset.TextEncoder2Json is null) text.Add(PositionIds("text_model.embeddings.position_ids", te.Config.MaxPositionEmbeddings));
        var second = new List<RandomModelFile>();
        if (preset.TextEncoder2() is { } c2)
        {
            // SDXL's text_encoder_2 file carries no position_ids.
            var te2 = new ClipTextModelWithProjection(c2);
            second.Add(new($"text_encoder_2/{WeightFileName("text_encoder_2", dtype)}", [.. RandomWeights.Entries(te2, seed, dtype, valuePrefix: "text_encoder_2/")]));
        }
        List<RandomModelFile> first = preset.Refiner ? [] : [new($"text_encoder/{WeightFileName("text_encoder", dtype)}", text)];
        return
        [
            .. first,
            .. second,
            new($"unet/{WeightFileName("unet", dtype)}", [.. RandomWeights.Entries(unet, seed, dtype, valuePrefix: "unet/")]),
            // The real SD1.5 and SD2.1 VAE files use the deprecated attention names (query/key/value/proj_attn);
            // loaders accept both, and writing these keeps the random files identical in layout to the real ones.
            new($"vae/{WeightFileName("vae", dtype)}", [.. RandomWeights.Entries(vae, seed, dtype, rename: NameMap.DeprecatedVaeName, valuePrefix: "vae/")]),
        ];
    }

    /// <summary>Every tensor of an LDM single file: the three models under their LDM names plus the non-weight keys real files carry.</summary>
    public static IReadOnlyList<SafetensorsEntry> SingleFileEntries(ModelPreset preset, WeightDType dtype, ulong seed)
    {
        var teConfig = preset.TextEncoder();
        var unetConfig = preset.Unet();
        var vaeConfig = preset.Vae();
        var te = new ClipTextModel(teConfig);
        var unet = new UNet2DConditionModel(unetConfig);
        var vae = new AutoencoderKL(vaeConfig);
        if (unetConfig.LayersPerBlock.Distinct().Count() != 1)
            throw new ConfigException($"{preset.Name}: LDM single files need the same layers_per_block in every UNet block");
        bool openClip = preset.TextTower == LdmTextEncoder.OpenClip;
        var layout = new LdmLayout(
            unetConfig.LayersPerBlock[0],
            Enumerable.Range(0, unetConfig.Blocks).Where(i => unetConfig.UpBlockTypes[i] == "CrossAttnUpBlock2D").ToHashSet(),
            vaeConfig.Blocks, preset.TextTower, openClip ? teConfig.NumHiddenLayers + 1 : 0);

        // LDM name → its parts (one, or q/k/v of a fused in_proj) and whether diffusers squeezed a 1x1 convolution.
        var tensors = new Dictionary<string, (RandomWeights.Part?[] Parts, bool Squeeze)>(StringComparer.Ordinal);
        void Map(string component, Module module, string prefix = "")
        {
            foreach (var (path, p) in module.NamedParameters(prefix))
            {
                var ldm = NameMap.ToLdm(component, path, layout)
                          ?? throw new InvalidOperationException($"{component}/{path} has no LDM name");
                if (!tensors.TryGetValue(ldm.Ldm, out var t))
                    tensors[ldm.Ldm] = t = (new RandomWeights.Part?[ldm.Parts], ldm.Squeeze);
                t.Parts[ldm.Part] = new RandomWeights.Part($"{component}/{path}", p.Kind, p.Shape);
            }
        }
        Map("unet", unet);
        Map("vae", vae);
        Map("text_encoder", te);
        // OpenCLIP keeps a last layer that SD2 never uses (it conditions on the penultimate one) and diffusers drops.
        if (openClip) Map("text_encoder", new ClipEncoderLayer(teConfig), $"text_model.encoder.layers.{teConfig.NumHiddenLayers}.");
        var te2Config = preset.TextEncoder2();
        ClipTextModelWithProjection? te2 = te2Config is null ? null : new ClipTextModelWithProjection(te2Config);
        if (te2 is not null) Map("text_encoder_2", te2.TextModel, "text_model."); // text_projection is written below, transposed

        var entries = new List<SafetensorsEntry>(tensors.Count + 20);
        foreach (var (name, (parts, squeeze)) in tensors)
        {
            var all = parts.Select(p => p ?? throw new InvalidOperationException($"{name}: a part of the fused tensor is not declared")).ToArray();
            var shape = (long[])all[0].Shape.Clone();
            shape[0] *= all.Length;
            if (squeeze) shape = [.. shape, 1, 1];
            entries.Add(RandomWeights.Entry(name, seed, dtype, shape, all));
        }
        if (openClip)
        {
            // OpenCLIP's contrastive head: text_projection [width, embed_dim] (ViT-H: embed_dim = width) and logit_scale.
            long h = teConfig.HiddenSize;
            string projection = NameMap.OpenClipPrefix + "text_projection";
            entries.Add(RandomWeights.Entry(projection, seed, dtype, [h, h], new RandomWeights.Part(projection, ParamKind.Weight, [h, h])));
            entries.Add(Floats(NameMap.OpenClipPrefix + "logit_scale", dtype, [], [Math.Log(100)]));
        }
        else
        {
            var prefix = preset.TextTower == LdmTextEncoder.Sdxl ? NameMap.SgmClipPrefix : NameMap.ClipPrefix;
            entries.Add(PositionIds(prefix + "text_model.embeddings.position_ids", teConfig.MaxPositionEmbeddings));
        }
        if (te2 is not null)
        {
            // OpenCLIP applies text_projection as x @ M: the stored matrix is diffusers' Linear weight transposed,
            // holding the same values as the diffusers file of this seed.
            var p = te2.TextProjection.Weight;
            var values = RandomWeights.Generate(seed, "text_encoder_2/text_projection.weight", p);
            int rows = (int)p.Shape[0], cols = (int)p.Shape[1];
            var stored = new double[values.Length];
            for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                stored[(long)c * rows + r] = values[(long)r * cols + c];
            entries.Add(Floats(NameMap.BigGPrefix + "text_projection", dtype, [cols, rows], stored));
            entries.Add(Floats(NameMap.BigGPrefix + "logit_scale", dtype, [], [Math.Log(100)]));
        }
        if (te2 is not null) return entries; // SGM files carry no LDM schedule buffers or EMA bookkeeping
        // Float32 whatever the weights' dtype, as LDM registers them: readers that take their noise schedule from the
        // file (stable-diffusion.cpp builds its sigmas from alphas_cumprod) would sample another one from fp16 values.
        foreach (var (name, values) in DdpmBuffers(preset.Scheduler()))
            entries.Add(Floats(name, WeightDType.F32, [values.Length], values));
        entries.Add(Floats("model_ema.decay", dtype, [], [0.9999]));
        entries.Add(SafetensorsEntry.FromBytes("model_ema.num_updates", WeightDType.I32, [], new byte[4]));
        return entries;
    }

    /// <summary>
    /// The schedule buffers an LDM checkpoint carries (ldm.models.diffusion.ddpm.DDPM.register_schedule, computed in
    /// float64 from the scheduler config's betas, with v_posterior 0; the betas as torch.linspace spaces them).
    /// </summary>
    public static IReadOnlyList<(string Name, double[] Values)> DdpmBuffers(JsonConfig scheduler)
    {
        string schedule = scheduler.String("beta_schedule", "linear");
        int n = scheduler.Int("num_train_timesteps", 1000);
        double start = scheduler.Double("beta_start", 0.0001), end = scheduler.Double("beta_end", 0.02);
        if (n < 2) throw new ConfigException($"{scheduler.Source}: \"num_train_timesteps\" must be at least 2, found {n}");
        // LDM's "linear" is diffusers' scaled_linear: linspace(sqrt(start), sqrt(end)) ** 2.
        var betas = schedule switch
        {
            "scaled_linear" => Linspace(Math.Sqrt(start), Math.Sqrt(end), n).Select(b => b * b).ToArray(),
            "linear" => Linspace(start, end, n),
            _ => throw new ConfigException($"{scheduler.Source}: \"beta_schedule\" {schedule} is not supported for LDM buffers (scaled_linear or linear)"),
        };
        var ac = new double[n];
        var prev = new double[n];
        double product = 1;
        for (int i = 0; i < n; i++)
        {
            prev[i] = product;
            product *= 1 - betas[i];
            ac[i] = product;
        }
        double[] Map(Func<int, double> f) => Enumerable.Range(0, n).Select(f).ToArray();
        var posteriorVariance = Map(i => betas[i] * (1 - prev[i]) / (1 - ac[i]));
        return
        [
            ("betas", betas),
            ("alphas_cumprod", ac),
            ("alphas_cumprod_prev", prev),
            ("sqrt_alphas_cumprod", Map(i => Math.Sqrt(ac[i]))),
            ("sqrt_one_minus_alphas_cumprod", Map(i => Math.Sqrt(1 - ac[i]))),
            ("log_one_minus_alphas_cumprod", Map(i => Math.Log(1 - ac[i]))),
            ("sqrt_recip_alphas_cumprod", Map(i => Math.Sqrt(1 / ac[i]))),
            ("sqrt_recipm1_alphas_cumprod", Map(i => Math.Sqrt(1 / ac[i] - 1))),
            ("posterior_variance", posteriorVariance),
            ("posterior_log_variance_clipped", Map(i => Math.Log(Math.Max(posteriorVariance[i], 1e-20)))),
            ("posterior_mean_coef1", Map(i => betas[i] * Math.Sqrt(prev[i]) / (1 - ac[i]))),
            ("posterior_mean_coef2", Map(i => (1 - prev[i]) * Math.Sqrt(1 - betas[i]) / (1 - ac[i]))),
        ];
    }

    /// <summary>torch.linspace in float64: the first half stepped from the start, the second half back from the end.</summary>
    private static double[] Linspace(double start, double end, int n)
    {
        double step = (end - start) / (n - 1);
        return Enumerable.Range(0, n).Select(i => i < n / 2 ? start + step * i : end - step * (n - 1 - i)).ToArray();
    }

    /// <summary>
    /// Writes a random model to <paramref name="outPath"/> (a folder for diffusers, a .safetensors file otherwise),
    /// refusing an existing non-empty target. A diffusers folder is assembled beside the target and moved into place
    /// at the end, so a failed write leaves nothing behind. Returns the bytes written. Without
    /// <paramref name="writeData"/> the tensors' bytes are left as holes (sparse zeros): the layout of a full-size
    /// model in no time and no disk space, for tests of everything but the values.
    /// </summary>
    public static long Write(ModelPreset preset, RandomModelFormat format, WeightDType dtype, ulong seed, string outPath,
        IProgress<RandomModelProgress>? progress = null, bool writeData = true)
    {
        if (preset.Refiner && format == RandomModelFormat.SingleFile)
            throw new UsageException($"{preset.Name}: written as a diffusers folder only (the refiner's single file uses other SGM names)");
        CheckTarget(outPath, format);
        var files = format == RandomModelFormat.Diffusers
            ? DiffusersFiles(preset, dtype, seed)
            : [new RandomModelFile(Path.GetFileName(outPath), SingleFileEntries(preset, dtype, seed))];
        long total = files.Sum(f => FileBytes(f.Entries));
        long done = 0;
        string current = files[0].RelativePath;
        void WriteFile(string path, RandomModelFile f)
        {
            long before = done;
            var entries = f.Entries.Select(e => writeData ? Counted(e) : e with { WriteData = null });
            SafetensorsWriter.Write(path, entries, Metadata);
            done = before + new FileInfo(path).Length;
            progress?.Report(new RandomModelProgress(f.RelativePath, done, total));
        }
        SafetensorsEntry Counted(SafetensorsEntry e) => e with
        {
            WriteData = s =>
            {
                e.WriteData!(s);
                done += e.ByteLength;
                progress?.Report(new RandomModelProgress(current, done, total));
            },
        };

        if (format == RandomModelFormat.SingleFile)
        {
            var dir = Path.GetDirectoryName(Path.GetFullPath(outPath));
            if (dir is not null) Directory.CreateDirectory(dir);
            WriteFile(outPath, files[0]);
            return done;
        }

        var full = Path.GetFullPath(outPath).TrimEnd(Path.DirectorySeparatorChar);
        var staging = $"{full}.partial-{Environment.ProcessId}";
        try
        {
            if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
            Directory.CreateDirectory(staging);
            WriteText(staging, "model_index.json", ModelIndex(preset.ModelIndexJson));
            WriteText(staging, "scheduler/scheduler_config.json", preset.SchedulerJson);
            if (!preset.Refiner)
            {
                WriteText(staging, "text_encoder/config.json", preset.TextEncoderJson);
                WriteText(staging, "tokenizer/tokenizer_config.json", preset.TokenizerConfigJson);
                WriteText(staging, "tokenizer/special_tokens_map.json", preset.SpecialTokensMapJson);
                ClipTokenizer.BuiltIn().WriteVocabulary(Path.Combine(staging, "tokenizer")); // CLIP's, not random: a complete folder
            }
            if (preset.TextEncoder2Json is string te2Json)
            {
                WriteText(staging, "text_encoder_2/config.json", te2Json);
                WriteText(staging, "tokenizer_2/tokenizer_config.json", preset.TokenizerConfigJson.Replace("\"pad_token\": \"<|endoftext|>\"", "\"pad_token\": \"!\""));
                WriteText(staging, "tokenizer_2/special_tokens_map.json", preset.SpecialTokensMap2Json ?? preset.SpecialTokensMapJson);
                ClipTokenizer.BuiltIn().WriteVocabulary(Path.Combine(staging, "tokenizer_2"));
            }
            WriteText(staging, "unet/config.json", preset.UnetJson);
            WriteText(staging, "vae/config.json", preset.VaeJson);
            foreach (var f in files)
            {
                current = f.RelativePath;
                WriteFile(Path.Combine(staging, f.RelativePath), f);
            }
            if (Directory.Exists(full)) Directory.Delete(full); // empty, CheckTarget made sure
            Directory.Move(staging, full);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new WeightsException($"{outPath}: cannot write: {e.Message.Split('\n')[0].TrimEnd('\r')}", e);
        }
        finally
        {
            if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
        }
        return done;
    }

    /// <summary>Refuses to overwrite: the target must be absent, an empty folder (diffusers) or an empty file (single file).</summary>
    private static void CheckTarget(string outPath, RandomModelFormat format)
    {
        if (format == RandomModelFormat.SingleFile)
        {
            if (!outPath.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
                throw new UsageException($"--out {outPath}: a single-file model is a .safetensors file; name it *.safetensors");
            if (Directory.Exists(outPath)) throw new UsageException($"--out {outPath} is a folder; a single-file model needs a file path");
            if (File.Exists(outPath) && new FileInfo(outPath).Length > 0)
                throw new UsageException($"--out {outPath} already exists; not overwriting it (remove it or choose another path)");
            return;
        }
        if (File.Exists(outPath)) throw new UsageException($"--out {outPath} is a file; a diffusers model is a folder");
        if (Directory.Exists(outPath) && Directory.EnumerateFileSystemEntries(outPath).Any())
            throw new UsageException($"--out {outPath} already exists and is not empty; not overwriting it (remove it or choose another path)");
    }

    /// <summary>The real model_index.json with the components a random model does not ship (safety checker, feature extractor) declared absent.</summary>
    public static string ModelIndex(string json)
    {
        var node = JsonNode.Parse(json)!.AsObject();
        bool checkerRemoved = false;
        foreach (var (key, value) in node.ToList())
        {
            if (value is not JsonArray { Count: 2 } a || a[1] is null || Shipped.Contains(key)) continue;
            node[key] = JsonNode.Parse("[null, null]");
            checkerRemoved |= key == "safety_checker";
        }
        if (checkerRemoved) node["requires_safety_checker"] = false;
        return node.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>The size of a safetensors file holding <paramref name="entries"/>.</summary>
    public static long FileBytes(IReadOnlyList<SafetensorsEntry> entries) =>
        8 + SafetensorsWriter.Header(SafetensorsWriter.Order(entries), Metadata).Length + entries.Sum(e => e.ByteLength);

    private static SafetensorsEntry PositionIds(string name, int count) =>
        SafetensorsEntry.FromBytes(name, WeightDType.I64, [1, count],
            MemoryMarshal.AsBytes(Enumerable.Range(0, count).Select(i => (long)i).ToArray().AsSpan()).ToArray());

    private static SafetensorsEntry Floats(string name, WeightDType dtype, long[] shape, double[] values)
    {
        byte[] bytes = dtype == WeightDType.F16
            ? MemoryMarshal.AsBytes(values.Select(v => (Half)v).ToArray().AsSpan()).ToArray()
            : MemoryMarshal.AsBytes(values.Select(v => (float)v).ToArray().AsSpan()).ToArray();
        return SafetensorsEntry.FromBytes(name, dtype, shape, bytes);
    }

    private static void WriteText(string root, string relative, string text)
    {
        var path = Path.Combine(root, relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, text.TrimEnd() + "\n");
    }
}
