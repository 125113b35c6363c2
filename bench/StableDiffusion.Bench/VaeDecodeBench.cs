using System.Diagnostics;
using StableDiffusion.IO;
using StableDiffusion.Kernels;
using StableDiffusion.Pipelines;
using StableDiffusion.Runtime;

namespace StableDiffusion.Bench;

/// <summary>
/// <c>bench cpu decode MODEL [--size 2048] [--tile 512] [--whole]</c>: the pipeline's VAE decode of random latents on the
/// C# CPU backend at one image size, tiled (the default) or whole, with its time and the process's peak RSS: what
/// a large image costs after the UNet, without running the UNet. One process per measurement (peak RSS is a high-water mark).
/// </summary>
public static class VaeDecodeBench
{
    public static int Run(List<string> args)
    {
        string model = args.Count > 0 && !args[0].StartsWith("--", StringComparison.Ordinal) ? args[0]
            : throw new UsageException("bench cpu decode: give a model (a diffusers folder or single file)");
        args.RemoveAt(0);
        int size = IntOption(args, "--size", 2048), tile = IntOption(args, "--tile", VaeTiling.DefaultTilePixels);
        bool whole = args.Remove("--whole");
        if (args.Count > 0) throw new UsageException($"bench cpu decode: unexpected argument '{args[0]}'");
        using var source = ModelSource.Open(model);
        using var device = ComputeDevice.Open("cpu");
        var ops = Backends.For(device);
        using var pipeline = StableDiffusionPipeline.Open(source, ops, new PipelineOptions
        {
            DType = DType.F32, VaeTiling = !whole, VaeTilePixels = tile, ReleaseModelsAfterUse = true,
            MemoryBudgetBytes = whole ? long.MaxValue : null,
        });
        int f = pipeline.VaeScaleFactor, h = size / f, z = pipeline.Configs.Vae.LatentChannels;
        var rng = new Random(1);
        var latents = new float[h * h * z];
        for (int i = 0; i < latents.Length; i++) latents[i] = (float)(rng.NextDouble() * 2 - 1);
        long rssBefore = MemoryInfo.RssBytes() ?? 0;
        var clock = Stopwatch.StartNew();
        var notes = new List<string>();
        var images = pipeline.DecodeLatents(latents, 1, h, h, notes);
        double seconds = clock.Elapsed.TotalSeconds;
        if (images.Count != 1 || images[0].Width != size) throw new InvalidOperationException("decode returned no image of the asked size");
        Console.WriteLine($"vae decode {size}x{size} {(whole ? "whole" : $"in {tile}-pixel tiles")}: {seconds:F1} s, " +
                          $"peak RSS {(MemoryInfo.PeakRssBytes() ?? 0) / 1048576.0:F0} MiB (before decoding {rssBefore / 1048576.0:F0} MiB), " +
                          $"peak device memory {device.Pool.PeakBytesInUse / 1048576.0:F0} MiB");
        foreach (var n in notes) Console.WriteLine($"note: {n}");
        return 0;
    }

    private static int IntOption(List<string> args, string name, int fallback)
    {
        int i = args.IndexOf(name);
        if (i < 0) return fallback;
        if (i + 1 >= args.Count || !int.TryParse(args[i + 1], out int v) || v < 64 || v % 64 != 0)
            throw new UsageException($"bench cpu decode: {name} needs a multiple of 64");
        args.RemoveRange(i, 2);
        return v;
    }
}
