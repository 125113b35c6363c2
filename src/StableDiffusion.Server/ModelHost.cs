using StableDiffusion.IO;
using StableDiffusion.Kernels;
using StableDiffusion.Pipelines;
using StableDiffusion.Pipelines.Adapters;
using StableDiffusion.Runtime;

namespace StableDiffusion.Server;

/// <summary>A model the server can switch to.</summary>
public sealed record ModelEntry(string Name, string Path)
{
    /// <summary>A1111's checkpoint title: "name [hash]" once the hash is known.</summary>
    public string Title(string? hash) => hash is null ? Name : $"{Name} [{hash}]";
}

/// <summary>
/// The device and the one loaded model. Only the job worker generates or switches; the endpoints read the catalog and
/// the current entry. Models stay loaded between generations.
/// </summary>
public sealed class ModelHost : IDisposable
{
    private readonly ServerOptions options;
    private readonly object gate = new();
    private ModelSource? source;
    private StableDiffusionPipeline? pipeline;
    private List<LoraFile> loraFiles = [];
    private string loraKey = "";

    public ModelHost(ServerOptions options, TextWriter log)
    {
        this.options = options;
        Log = log;
        Catalog = BuildCatalog(options);
        Device = ComputeDevice.Open(options.Device, log);
        Ops = Backends.For(Device);
        DType = options.Precision ?? (Device.Kind is DeviceKind.IlgpuCpu or DeviceKind.Cpu || !Device.SupportsFp16 ? DType.F32 : DType.F16);
        try
        {
            Switch(Catalog[0]);
        }
        catch
        {
            Device.Dispose();
            throw;
        }
    }

    public TextWriter Log { get; }
    public ComputeDevice Device { get; }
    public IOps Ops { get; }
    public DType DType { get; }
    public IReadOnlyList<ModelEntry> Catalog { get; }
    public ModelEntry Current { get; private set; } = null!;
    public string CurrentHash { get; private set; } = "";
    /// <summary>A1111's "Lora hashes" of the LoRAs merged into the loaded model, or null.</summary>
    public string? CurrentLoraHashes { get; private set; }

    /// <summary>The clip skip of requests that name none (A1111's CLIP_stop_at_last_layers option; 1 = the model's default).</summary>
    public int ClipSkip { get; set; } = 1;

    public StableDiffusionPipeline Pipeline => pipeline ?? throw new InvalidOperationException("no model loaded");

    /// <summary>Hashes of the models loaded so far (A1111 lists them in titles).</summary>
    private readonly Dictionary<string, string> hashes = new(StringComparer.Ordinal);

    public string? HashOf(ModelEntry e)
    {
        lock (gate) return hashes.GetValueOrDefault(e.Path);
    }

    /// <summary>A catalog entry by name, title ("name [hash]"), or path; null when none matches.</summary>
    public ModelEntry? Find(string name)
    {
        var n = name.Trim();
        int bracket = n.IndexOf(" [", StringComparison.Ordinal);
        var bare = bracket > 0 ? n[..bracket] : n;
        return Catalog.FirstOrDefault(e => e.Name == bare || e.Path == n || Path.GetFileName(e.Path) == bare);
    }

    /// <summary>
    /// Loads <paramref name="entry"/> with <paramref name="loras"/> merged in place of the current model (worker thread
    /// only). LoRAs are merged into the weights at load, so another set of LoRAs loads the model again.
    /// </summary>
    public void Switch(ModelEntry entry, IReadOnlyList<(string Name, float Weight)>? loras = null, int clipSkip = 1)
    {
        loras ??= [];
        // A1111's clip skip 1 is each model's own default (SD2 and SDXL: the penultimate layer already).
        int? skip = clipSkip == 1 ? null : clipSkip;
        var key = string.Join("|", loras.Select(l => $"{l.Name}:{l.Weight}")) + (skip is null ? "" : $"|clip skip {skip}");
        if (pipeline is not null && Current == entry && key == loraKey) return;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var files = new List<LoraFile>();
        ModelSource? newSource = null;
        StableDiffusionPipeline newPipeline;
        string hash;
        string? loraHashes;
        try
        {
            foreach (var (name, weight) in loras) files.Add(LoraFile.Open(FindLora(name), weight));
            newSource = ModelSource.Open(entry.Path);
            newPipeline = StableDiffusionPipeline.Open(newSource, Ops,
                new PipelineOptions
                {
                    DType = DType, TokenizerDirectory = options.Tokenizer, Loras = files, ClipSkip = skip,
                    EmbeddingsDirectory = options.EmbeddingsDir,
                });
            hash = HashOf(entry) ?? ModelHash.Compute(newSource); // a reload with other LoRAs is the same file
            loraHashes = files.Count == 0 ? null : LoraMerge.Hashes(files);
        }
        catch
        {
            newSource?.Dispose();
            foreach (var f in files) f.Dispose();
            throw;
        }
        pipeline?.Dispose();
        source?.Dispose();
        foreach (var f in loraFiles) f.Dispose();
        (pipeline, source, loraFiles, loraKey) = (newPipeline, newSource, files, key);
        lock (gate)
        {
            hashes[entry.Path] = hash;
            Current = entry;
            CurrentHash = hash;
            CurrentLoraHashes = loraHashes;
        }
        Log.WriteLine($"sd serve: model {entry.Name} [{hash}]{(key.Length == 0 ? "" : $" with LoRAs {key}")} ({entry.Path}) ready in " +
                      $"{clock.Elapsed.TotalSeconds:F2} s, {DType.Name()} on {Device.Name}");
    }

    /// <summary>NAME.safetensors, .ckpt or .pt in --lora-dir.</summary>
    private string FindLora(string name)
    {
        if (options.LoraDir is null) throw ApiException.Invalid($"<lora:{name}>: the server was started without --lora-dir");
        if (name.Contains('/') || name.Contains('\\') || name is "." or "..")
            throw ApiException.Invalid($"<lora:{name}>: a LoRA tag names a file in --lora-dir, without a path");
        foreach (var ext in new[] { ".safetensors", ".ckpt", ".pt" })
        {
            var path = Path.Combine(options.LoraDir, name + ext);
            if (File.Exists(path)) return path;
        }
        throw ApiException.Invalid($"<lora:{name}>: no {name}.safetensors, {name}.ckpt or {name}.pt in --lora-dir (GET /sdapi/v1/loras lists them)");
    }

    private static List<ModelEntry> BuildCatalog(ServerOptions o)
    {
        var list = new List<ModelEntry> { new(NameOf(o.Model), Path.GetFullPath(o.Model)) };
        if (o.ModelsDir is not null)
        {
            foreach (var d in Directory.GetDirectories(o.ModelsDir).Order(StringComparer.Ordinal))
                if (File.Exists(Path.Combine(d, "model_index.json"))) list.Add(new(NameOf(d), Path.GetFullPath(d)));
            foreach (var f in Directory.GetFiles(o.ModelsDir).Order(StringComparer.Ordinal))
                if (f.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) || f.EndsWith(".ckpt", StringComparison.OrdinalIgnoreCase))
                    list.Add(new(NameOf(f), Path.GetFullPath(f)));
        }
        // The same model named twice (--model inside --models-dir) is listed once.
        return list.DistinctBy(e => e.Path).ToList();
    }

    private static string NameOf(string path) => Path.GetFileNameWithoutExtension(path.TrimEnd('/', Path.DirectorySeparatorChar));

    /// <summary>Files in a folder with the given extensions, by name (LoRAs, embeddings).</summary>
    public static IEnumerable<(string Name, string Path)> ListFiles(string? dir, params string[] extensions) =>
        dir is null ? [] : Directory.GetFiles(dir)
            .Where(f => extensions.Any(x => f.EndsWith(x, StringComparison.OrdinalIgnoreCase)))
            .Order(StringComparer.Ordinal)
            .Select(f => (Path.GetFileNameWithoutExtension(f), Path.GetFullPath(f)));

    public void Dispose()
    {
        pipeline?.Dispose();
        source?.Dispose();
        foreach (var f in loraFiles) f.Dispose();
        Device.Dispose();
    }
}
