using StableDiffusion.IO;
using StableDiffusion.Kernels;
using StableDiffusion.Pipelines;
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

    /// <summary>Loads <paramref name="entry"/> in place of the current model (worker thread only).</summary>
    public void Switch(ModelEntry entry)
    {
        if (pipeline is not null && Current == entry) return;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var newSource = ModelSource.Open(entry.Path);
        StableDiffusionPipeline newPipeline;
        string hash;
        try
        {
            newPipeline = StableDiffusionPipeline.Open(newSource, Ops, new PipelineOptions { DType = DType, TokenizerDirectory = options.Tokenizer });
            hash = ModelHash.Compute(newSource);
        }
        catch
        {
            newSource.Dispose();
            throw;
        }
        pipeline?.Dispose();
        source?.Dispose();
        (pipeline, source) = (newPipeline, newSource);
        lock (gate)
        {
            hashes[entry.Path] = hash;
            Current = entry;
            CurrentHash = hash;
        }
        Log.WriteLine($"sd serve: model {entry.Name} [{hash}] ({entry.Path}) ready in {clock.Elapsed.TotalSeconds:F2} s, {DType.Name()} on {Device.Name}");
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
        Device.Dispose();
    }
}
