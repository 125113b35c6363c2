using System.Diagnostics;
using StableDiffusion.IO;

namespace StableDiffusion.Cli;

/// <summary>A model as the user names it: a file, a diffusers folder, or a hub id (org/name) fetched into the hub cache.</summary>
internal static class ModelArgument
{
    /// <summary>The local path of <paramref name="target"/>, downloading a hub id's pipeline files first.</summary>
    public static string Resolve(string target, string? revision, string? variant, TextWriter stderr)
    {
        if (!File.Exists(target) && !Directory.Exists(target) && HubClient.IsRepoId(target))
        {
            using var hub = new HubClient(HubOptions.FromEnvironment());
            return hub.DownloadModelAsync(target, revision ?? "main", variant, new DownloadProgress(stderr)).GetAwaiter().GetResult();
        }
        if (revision is not null) throw new UsageException("--revision applies to hub ids only");
        return target;
    }

    /// <summary>The local path of a <c>--vae</c>: a file, a folder, or a hub id whose VAE files are fetched.</summary>
    public static string ResolveVae(string target, TextWriter stderr)
    {
        if (File.Exists(target) || Directory.Exists(target) || !HubClient.IsRepoId(target)) return target;
        using var hub = new HubClient(HubOptions.FromEnvironment());
        return hub.DownloadVaeAsync(target, "main", new DownloadProgress(stderr)).GetAwaiter().GetResult();
    }

    /// <summary>Download progress on stderr: a line when a file starts, every few seconds, and when it is done.</summary>
    private sealed class DownloadProgress(TextWriter stderr) : IProgress<HubProgress>
    {
        private readonly Stopwatch clock = Stopwatch.StartNew();
        private string? file;
        private TimeSpan last;

        public void Report(HubProgress p)
        {
            bool done = p.Total > 0 && p.Done >= p.Total;
            if (p.File == file && !done && clock.Elapsed - last < TimeSpan.FromSeconds(3)) return;
            if (p.File == file && done && last == TimeSpan.MaxValue) return;
            file = p.File;
            last = done ? TimeSpan.MaxValue : clock.Elapsed;
            string size = p.Total > 0 ? $"{p.Done / 1048576.0:F1} of {p.Total / 1048576.0:F1} MiB ({100.0 * p.Done / p.Total:F0}%)" : $"{p.Done / 1048576.0:F1} MiB";
            stderr.WriteLine($"sd: downloading {p.File}: {size}");
        }
    }
}
