using System.Globalization;
using StableDiffusion.IO;
using StableDiffusion.Pipelines.Adapters;

namespace StableDiffusion.Cli;

/// <summary>
/// The LoRAs of one <c>sd generate</c>: <c>--lora FILE[:W]</c> (repeatable) and the prompts' <c>&lt;lora:NAME:W&gt;</c>
/// tags, found as NAME.safetensors, NAME.ckpt or NAME.pt in <c>--lora-dir</c> (default weights/loras).
/// </summary>
internal sealed record LoraArguments(IReadOnlyList<(string Path, float Weight)> Files, string Prompt, string NegativePrompt)
{
    public const string DefaultDirectory = "weights/loras";

    private static readonly string[] Extensions = [".safetensors", ".ckpt", ".pt"];

    /// <summary>Reads the options and strips the tags from both prompts (usage errors); files are looked up here too.</summary>
    public static LoraArguments Parse(Args a, string prompt, string negativePrompt)
    {
        var files = new List<(string, float)>();
        while (a.Value("--lora") is string spec) files.Add(FileAndWeight(spec));
        var dir = a.Value("--lora-dir") ?? DefaultDirectory;
        var (cleanPrompt, tags) = LoraTags.Extract(prompt);
        var (cleanNegative, negativeTags) = LoraTags.Extract(negativePrompt);
        foreach (var (name, weight) in tags.Concat(negativeTags)) files.Add((Find(dir, name), weight));
        return new LoraArguments(files, cleanPrompt, cleanNegative);
    }

    /// <summary>FILE or FILE:W; a ':' after the last '/' starts the weight.</summary>
    private static (string, float) FileAndWeight(string spec)
    {
        int colon = spec.LastIndexOf(':');
        if (colon <= spec.LastIndexOf('/')) return (spec, 1f);
        var w = spec[(colon + 1)..];
        if (!float.TryParse(w, NumberStyles.Float, CultureInfo.InvariantCulture, out var weight) || !float.IsFinite(weight))
            throw new UsageException($"--lora '{spec}': the weight '{w}' is not a number (use --lora FILE or --lora FILE:WEIGHT)");
        return (spec[..colon], weight);
    }

    private static string Find(string dir, string name)
    {
        if (name.Contains('/') || name.Contains('\\') || name is "." or "..")
            throw new UsageException($"<lora:{name}>: a LoRA tag names a file in --lora-dir, without a path");
        foreach (var ext in Extensions)
        {
            var path = Path.Combine(dir, name + ext);
            if (File.Exists(path)) return path;
        }
        throw new WeightsException($"<lora:{name}>: no {name}.safetensors, {name}.ckpt or {name}.pt in {dir} (set the folder with --lora-dir)");
    }

    /// <summary>Opens every file (a bad one is a <see cref="WeightsException"/> naming it); the caller disposes them.</summary>
    public Opened Open()
    {
        var opened = new List<LoraFile>();
        try
        {
            foreach (var (path, weight) in Files) opened.Add(LoraFile.Open(path, weight));
            return new Opened(opened);
        }
        catch
        {
            foreach (var f in opened) f.Dispose();
            throw;
        }
    }
}

/// <summary>The open LoRA files of a generation.</summary>
internal sealed class Opened(List<LoraFile> files) : IDisposable
{
    public IReadOnlyList<LoraFile> Files => files;

    public void Dispose()
    {
        foreach (var f in files) f.Dispose();
    }
}
