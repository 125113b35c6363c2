using System.Text.Json;

namespace StableDiffusion.IO;

/// <summary>
/// A model as the user has it: a diffusers folder (<c>model_index.json</c>, <c>unet/</c>, <c>vae/</c>,
/// <c>text_encoder/</c>, ...) or one LDM single file (.safetensors or .ckpt, SD1.x/SD2.x). Either way the
/// components come out in diffusers naming, ready to <see cref="ComponentWeights.Bind"/> to a model's parameters.
/// </summary>
public sealed class ModelSource : IDisposable
{
    public static readonly string[] ComponentOrder = ["text_encoder", "text_encoder_2", "unet", "vae"];

    private readonly List<WeightFile> files = [];
    private readonly Dictionary<string, ComponentWeights> components = new(StringComparer.Ordinal);
    private readonly List<(WeightFile File, TensorInfo Tensor, string Why)> ignored = [];
    private readonly List<(WeightFile File, TensorInfo Tensor)> unrecognised = [];

    private ModelSource(string path, string format)
    {
        Path = path;
        Format = format;
    }

    public string Path { get; }

    /// <summary>"diffusers", "safetensors" or "ckpt".</summary>
    public string Format { get; private set; }

    public ModelFamily Family { get; private set; }

    public IReadOnlyList<WeightFile> Files => files;

    /// <summary>Components present, in <see cref="ComponentOrder"/>.</summary>
    public IReadOnlyList<ComponentWeights> Components =>
        [.. ComponentOrder.Where(components.ContainsKey).Select(c => components[c])];

    /// <summary>Tensors that are not weights (position_ids, DDPM buffers, model_ema.*, unused OpenCLIP parts), with why.</summary>
    public IReadOnlyList<(WeightFile File, TensorInfo Tensor, string Why)> Ignored => ignored;

    /// <summary>Tensors of a single file the name map has no rule for.</summary>
    public IReadOnlyList<(WeightFile File, TensorInfo Tensor)> Unrecognised => unrecognised;

    /// <summary>The folder with the CLIP tokenizer files (diffusers folders only).</summary>
    public string? TokenizerDirectory { get; private set; }

    /// <summary>SDXL's second tokenizer folder (diffusers folders only).</summary>
    public string? Tokenizer2Directory { get; private set; }

    /// <summary>The scheduler's config.json (diffusers folders only).</summary>
    public string? SchedulerConfig { get; private set; }

    public ComponentWeights? Component(string name) => components.GetValueOrDefault(name);

    /// <summary>The component to load a model from; refuses families sd cannot run yet and absent components.</summary>
    public ComponentWeights Require(string name)
    {
        if (!Family.IsSupported())
            throw new WeightsException($"{Path}: not a Stable Diffusion 1.x, 2.x or XL model (family unknown)");
        return components.GetValueOrDefault(name) ?? throw new WeightsException($"{Path}: has no {name} weights");
    }

    /// <summary>Opens a diffusers folder or a single checkpoint file. <paramref name="variant"/> (e.g. "fp16") picks diffusers variant files.</summary>
    public static ModelSource Open(string path, string? variant = null)
    {
        if (Directory.Exists(path)) return OpenDiffusers(path, variant);
        if (!File.Exists(path)) throw new WeightsException($"{path}: no such file or directory");
        var source = new ModelSource(path, "");
        try
        {
            source.LoadSingleFile();
            return source;
        }
        catch
        {
            source.Dispose();
            throw;
        }
    }

    private void LoadSingleFile()
    {
        var file = WeightFile.Open(Path);
        files.Add(file);
        Format = file.Format;
        Family = ModelFamilies.Detect(file.Tensors.Select(t => (t.Name, t.Shape)));
        if (!Family.IsSupported())
        {
            GroupByPrefix(file);
            return;
        }
        var layout = LdmLayout.Infer(file.Tensors.Select(t => t.Name));
        foreach (var t in file.Tensors)
        {
            if (NameMap.IsOptional(t.Name))
            {
                ignored.Add((file, t, "not a weight (position ids, DDPM schedule buffer or EMA bookkeeping)"));
                continue;
            }
            var targets = NameMap.ToDiffusers(t.Name, layout, out var why);
            if (targets is null)
            {
                if (why is not null) ignored.Add((file, t, why));
                else unrecognised.Add((file, t));
                continue;
            }
            long partBytes = t.ByteLength / targets[0].Parts;
            foreach (var m in targets)
            {
                var shape = m.DiffusersShape(t.Shape)
                    ?? throw new WeightsException($"{Path}: tensor {Text.Q(t.Name)} {t.ShapeString} cannot become {Text.Q(m.Path)}");
                var info = new TensorInfo(m.Name, t.DType, shape, t.Offset + m.Part * partBytes, partBytes);
                Add(m.Component, new ModelTensor(info, file, t.Name) { Transposed = m.Transpose });
            }
        }
    }

    // Families sd cannot map (SDXL, unknown) are still shown by component, under their stored names.
    private void GroupByPrefix(WeightFile file)
    {
        (string Prefix, string Component)[] prefixes =
        [
            (NameMap.UnetPrefix, "unet"), (NameMap.VaePrefix, "vae"), ("cond_stage_model.", "text_encoder"),
            ("conditioner.embedders.0.", "text_encoder"), ("conditioner.embedders.1.", "text_encoder_2"),
        ];
        foreach (var t in file.Tensors)
        {
            if (NameMap.IsOptional(t.Name))
            {
                ignored.Add((file, t, "not a weight"));
                continue;
            }
            var p = prefixes.FirstOrDefault(p => t.Name.StartsWith(p.Prefix, StringComparison.Ordinal));
            if (p.Prefix is null) unrecognised.Add((file, t));
            else Add(p.Component, new ModelTensor(t, file, t.Name));
        }
    }

    private void Add(string component, ModelTensor t)
    {
        if (!components.TryGetValue(component, out var c))
            components[component] = c = new ComponentWeights(component, t.File.Path);
        c.Add(t);
    }

    // ---- diffusers folders ----

    private static ModelSource OpenDiffusers(string dir, string? variant)
    {
        var index = System.IO.Path.Combine(dir, "model_index.json");
        if (!File.Exists(index))
            throw new WeightsException($"{dir}: a folder without model_index.json is not a diffusers model");
        var source = new ModelSource(dir, "diffusers");
        try
        {
            source.LoadDiffusers(index, variant);
            return source;
        }
        catch
        {
            source.Dispose();
            throw;
        }
    }

    private void LoadDiffusers(string index, string? variant)
    {
        var declared = ReadModelIndex(index, out var className);
        foreach (var component in ComponentOrder)
        {
            if (!declared.Contains(component)) continue;
            var file = WeightFile.Open(FindWeights(component, variant));
            files.Add(file);
            foreach (var t in file.Tensors)
            {
                if (NameMap.IsOptional(t.Name))
                {
                    ignored.Add((file, t, "not a weight (position ids)"));
                    continue;
                }
                var name = component == "vae" ? NameMap.NormalizeVaeName(t.Name) : t.Name;
                Add(component, new ModelTensor(name == t.Name ? t : t with { Name = name }, file, t.Name));
            }
        }
        if (!components.ContainsKey("unet"))
            throw new WeightsException($"{Path}: model_index.json declares no unet");
        var detected = ModelFamilies.Detect(components["unet"].Tensors.Select(t => ("unet/" + t.Name, t.Shape)));
        // An SDXL pipeline with bigG alone (no text_encoder) is a refiner, whatever its widths.
        bool refiner = detected == ModelFamily.SdxlRefiner || (!declared.Contains("text_encoder") && declared.Contains("text_encoder_2"));
        Family = className.Contains("XL", StringComparison.Ordinal) ? refiner ? ModelFamily.SdxlRefiner : ModelFamily.Sdxl : detected;
        var tokenizer = System.IO.Path.Combine(Path, "tokenizer");
        TokenizerDirectory = Directory.Exists(tokenizer) ? tokenizer : null;
        var tokenizer2 = System.IO.Path.Combine(Path, "tokenizer_2");
        Tokenizer2Directory = Directory.Exists(tokenizer2) ? tokenizer2 : null;
        var scheduler = System.IO.Path.Combine(Path, "scheduler", "scheduler_config.json");
        SchedulerConfig = File.Exists(scheduler) ? scheduler : null;
    }

    private static HashSet<string> ReadModelIndex(string index, out string className)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(index));
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new ConfigException($"{index}: not a JSON object");
            className = doc.RootElement.TryGetProperty("_class_name", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString()! : "";
            // A component is declared as "name": [library, class]; [null, null] means absent.
            return doc.RootElement.EnumerateObject()
                .Where(p => p.Value.ValueKind == JsonValueKind.Array && p.Value.GetArrayLength() == 2 && p.Value[1].ValueKind == JsonValueKind.String)
                .Select(p => p.Name)
                .ToHashSet(StringComparer.Ordinal);
        }
        catch (JsonException e)
        {
            throw new ConfigException($"{index}: not valid JSON: {Text.OneLine(e.Message)}", e);
        }
        catch (IOException e)
        {
            throw new ConfigException($"{index}: cannot read: {Text.OneLine(e.Message)}", e);
        }
    }

    /// <summary>The weight file names a diffusers component may use, best first.</summary>
    public static IEnumerable<string> WeightFileCandidates(string component, string? variant)
    {
        bool transformers = component.StartsWith("text_encoder", StringComparison.Ordinal);
        string st = transformers ? "model" : "diffusion_pytorch_model";
        string pt = transformers ? "pytorch_model" : "diffusion_pytorch_model";
        if (variant is not null)
        {
            yield return $"{st}.{variant}.safetensors";
            yield return $"{pt}.{variant}.bin";
        }
        yield return $"{st}.safetensors";
        yield return $"{pt}.bin";
        if (variant is null)
        {
            // Repositories that ship only fp16 files are still usable without --variant.
            yield return $"{st}.fp16.safetensors";
            yield return $"{pt}.fp16.bin";
        }
    }

    private string FindWeights(string component, string? variant)
    {
        var dir = System.IO.Path.Combine(Path, component);
        var names = WeightFileCandidates(component, variant).ToList();
        foreach (var n in names)
        {
            var f = System.IO.Path.Combine(dir, n);
            if (File.Exists(f)) return f;
        }
        if (Directory.Exists(dir) && Directory.EnumerateFiles(dir, "*.index.json").FirstOrDefault() is string shards)
            throw new WeightsException($"{shards}: sharded weights are not supported yet");
        throw new WeightsException($"{dir}: no {component} weights (looked for {string.Join(", ", names.Distinct())})");
    }

    public void Dispose()
    {
        foreach (var f in files) f.Dispose();
        files.Clear();
    }
}
