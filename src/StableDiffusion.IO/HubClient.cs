using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace StableDiffusion.IO;

/// <summary>Where and how to reach the Hugging Face hub; <see cref="FromEnvironment"/> reads the usual HF_* variables.</summary>
public sealed record HubOptions(string Endpoint, string CacheDir, string? Token, bool Offline)
{
    public const string DefaultEndpoint = "https://huggingface.co";

    /// <summary>
    /// HF_ENDPOINT, HF_HUB_CACHE (else $HF_HOME/hub, HF_HOME defaulting to $XDG_CACHE_HOME/huggingface or
    /// ~/.cache/huggingface), HF_TOKEN (else the token file huggingface-cli login writes), HF_HUB_OFFLINE.
    /// </summary>
    public static HubOptions FromEnvironment(Func<string, string?>? getenv = null)
    {
        getenv ??= Environment.GetEnvironmentVariable;
        string? Get(string name) => getenv(name) is { Length: > 0 } v ? v : null;
        var home = Get("HF_HOME") ?? Path.Combine(
            Get("XDG_CACHE_HOME") ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache"),
            "huggingface");
        var token = Get("HF_TOKEN") ?? Get("HUGGING_FACE_HUB_TOKEN");
        if (token is null)
        {
            var file = Get("HF_TOKEN_PATH") ?? Path.Combine(home, "token");
            if (File.Exists(file)) token = File.ReadAllText(file).Trim() is { Length: > 0 } t ? t : null;
        }
        bool offline = Get("HF_HUB_OFFLINE")?.ToUpperInvariant() is "1" or "ON" or "YES" or "TRUE";
        return new HubOptions((Get("HF_ENDPOINT") ?? DefaultEndpoint).TrimEnd('/'), Get("HF_HUB_CACHE") ?? Path.Combine(home, "hub"), token, offline);
    }
}

/// <summary>Download progress of one file (bytes so far, of total; total 0 when unknown).</summary>
public readonly record struct HubProgress(string File, long Done, long Total);

/// <summary>
/// Fetches the files a Stable Diffusion pipeline needs from a diffusers repository on the Hugging Face hub into the
/// hub's own cache layout (<c>models--org--name/{blobs,refs,snapshots}</c>), so caches made by Python tools are
/// reused and the other way round. Partial files resume with HTTP ranges; LFS files are checked against their sha256.
/// </summary>
public sealed partial class HubClient : IDisposable
{
    private static readonly string[] Components = ["unet", "vae", "text_encoder", "text_encoder_2"];
    private readonly HttpClient http;
    private readonly HubOptions options;

    public HubClient(HubOptions options, HttpMessageHandler? handler = null)
    {
        this.options = options;
        // Redirects are followed by hand so the token never travels to another host (LFS files live on a CDN).
        http = new HttpClient(handler ?? new SocketsHttpHandler { AllowAutoRedirect = false, ConnectTimeout = TimeSpan.FromSeconds(30) })
        {
            Timeout = Timeout.InfiniteTimeSpan,
        };
        http.DefaultRequestHeaders.UserAgent.Add(new ProductInfoHeaderValue("sd", "1"));
    }

    public HubOptions Options => options;

    [GeneratedRegex(@"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
    private static partial Regex RepoIdPattern();

    [GeneratedRegex("^[0-9a-f]{40}$")]
    private static partial Regex CommitPattern();

    public static bool IsRepoId(string s) => RepoIdPattern().IsMatch(s) && !s.Contains("..", StringComparison.Ordinal);

    /// <summary>The cache folder of a repository: <c>&lt;cache&gt;/models--org--name</c>.</summary>
    public string RepoDir(string repoId) => Path.Combine(options.CacheDir, "models--" + repoId.Replace("/", "--"));

    /// <summary>
    /// Makes the pipeline's files of <paramref name="repoId"/> at <paramref name="revision"/> present in the cache and
    /// returns the snapshot folder (a diffusers folder). Offline, only the cache is consulted.
    /// </summary>
    public Task<string> DownloadModelAsync(string repoId, string revision = "main", string? variant = null,
        IProgress<HubProgress>? progress = null, CancellationToken cancel = default) =>
        Download(repoId, revision, files => SelectFiles(repoId, files, variant), ["model_index.json"], progress, cancel);

    /// <summary>
    /// Makes the named files of any repository present in the cache (e.g. a CLIP tokenizer for a single-file model)
    /// and returns the snapshot folder holding them.
    /// </summary>
    public Task<string> DownloadFilesAsync(string repoId, IReadOnlyList<string> paths, string revision = "main",
        IProgress<HubProgress>? progress = null, CancellationToken cancel = default) =>
        Download(repoId, revision, files => [.. paths.Select(p => files.FirstOrDefault(f => f.Path == p)
            ?? throw new WeightsException($"{repoId}: the repository has no file {Text.Q(p)}"))], paths, progress, cancel);

    /// <summary>
    /// Makes a VAE of <paramref name="repoId"/> present in the cache (config.json and one weight file, at the top as
    /// madebyollin/sdxl-vae-fp16-fix has them, else a pipeline's vae/) and returns the snapshot folder.
    /// </summary>
    public Task<string> DownloadVaeAsync(string repoId, string revision = "main", IProgress<HubProgress>? progress = null,
        CancellationToken cancel = default) =>
        Download(repoId, revision, files => SelectVaeFiles(repoId, files), [], progress, cancel);

    internal static List<HubFile> SelectVaeFiles(string repoId, IReadOnlyList<HubFile> files)
    {
        var byName = files.ToDictionary(f => f.Path, StringComparer.Ordinal);
        foreach (var dir in new[] { "", "vae/" })
        {
            if (!byName.TryGetValue(dir + "config.json", out var config)) continue;
            var weights = ModelSource.WeightFileCandidates("vae", null).Select(n => dir + n).FirstOrDefault(byName.ContainsKey);
            if (weights is not null) return [config, byName[weights]];
        }
        throw new WeightsException($"{repoId}: no VAE in the repository (config.json with diffusion_pytorch_model weights, at the top or in vae/)");
    }

    private async Task<string> Download(string repoId, string revision, Func<IReadOnlyList<HubFile>, List<HubFile>> select,
        IReadOnlyList<string> needed, IProgress<HubProgress>? progress, CancellationToken cancel)
    {
        if (!IsRepoId(repoId)) throw new UsageException($"'{repoId}' is not a hub repository id (org/name)");
        if (!SafeRelativePath(revision)) throw new UsageException($"'{revision}' is not a revision (a branch, tag or commit)");
        if (options.Offline) return CachedSnapshot(repoId, revision, needed, "HF_HUB_OFFLINE=1 is set");

        RepoInfo info;
        try
        {
            info = await GetRepoInfo(repoId, revision, cancel);
        }
        catch (Exception e) when (IsNetworkFailure(e, cancel))
        {
            // As huggingface_hub does: no network, but a cached snapshot of that revision, is good enough.
            if (TryCachedSnapshot(repoId, revision, needed) is string cached) return cached;
            throw new WeightsException($"{repoId}: cannot reach {options.Endpoint}: {Text.OneLine(e.Message)} (set HF_HUB_OFFLINE=1 to use only the cache)", e);
        }

        var repoDir = RepoDir(repoId);
        var snapshot = Path.Combine(repoDir, "snapshots", info.Sha);
        try
        {
            foreach (var file in select(info.Files))
                await Fetch(repoId, info.Sha, file, repoDir, snapshot, progress, cancel);
            if (revision != info.Sha)
            {
                var refFile = Path.Combine(repoDir, "refs", revision);
                Directory.CreateDirectory(Path.GetDirectoryName(refFile)!);
                await File.WriteAllTextAsync(refFile, info.Sha, cancel);
            }
        }
        catch (Exception e) when (IsNetworkFailure(e, cancel))
        {
            throw new WeightsException($"{repoId}: download from {options.Endpoint} failed: {Text.OneLine(e.Message)}; run again to resume", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new WeightsException($"{repoId}: cannot write the cache at {repoDir}: {Text.OneLine(e.Message)}", e);
        }
        return snapshot;
    }

    private static bool IsNetworkFailure(Exception e, CancellationToken cancel) =>
        e is HttpRequestException || (e is TaskCanceledException && !cancel.IsCancellationRequested);

    // ---- choosing files ----

    /// <summary>model_index.json, the scheduler and tokenizer files, and per component its config and one weight file.</summary>
    internal static List<HubFile> SelectFiles(string repoId, IReadOnlyList<HubFile> files, string? variant)
    {
        var byName = files.ToDictionary(f => f.Path, StringComparer.Ordinal);
        if (!byName.ContainsKey("model_index.json"))
            throw new WeightsException($"{repoId}: the repository has no model_index.json, so it is not a diffusers pipeline");
        var chosen = new List<HubFile> { byName["model_index.json"] };
        foreach (var f in files)
            if (f.Path.StartsWith("tokenizer/", StringComparison.Ordinal) || f.Path.StartsWith("tokenizer_2/", StringComparison.Ordinal) ||
                f.Path == "scheduler/scheduler_config.json")
                chosen.Add(f);
        foreach (var c in Components)
        {
            if (!files.Any(f => f.Path.StartsWith(c + "/", StringComparison.Ordinal))) continue;
            if (byName.TryGetValue(c + "/config.json", out var config)) chosen.Add(config);
            var weights = ModelSource.WeightFileCandidates(c, variant).Select(n => $"{c}/{n}").FirstOrDefault(byName.ContainsKey)
                ?? throw new WeightsException($"{repoId}: no {c} weights{(variant is null ? "" : $" for variant '{variant}'")} in the repository");
            chosen.Add(byName[weights]);
        }
        return chosen;
    }

    // ---- the hub's API ----

    internal sealed record HubFile(string Path, string Blob, long Size, string? Sha256);

    private sealed record RepoInfo(string Sha, List<HubFile> Files);

    private async Task<RepoInfo> GetRepoInfo(string repoId, string revision, CancellationToken cancel)
    {
        var url = $"{options.Endpoint}/api/models/{repoId}/revision/{Uri.EscapeDataString(revision)}?blobs=true";
        using var response = await Send(url, null, cancel);
        Check(response, repoId, $"revision '{revision}'");
        byte[] body = await response.Content.ReadAsByteArrayAsync(cancel);
        try
        {
            using var doc = JsonDocument.Parse(body);
            var root = doc.RootElement;
            var sha = root.GetProperty("sha").GetString() ?? "";
            if (!CommitPattern().IsMatch(sha)) throw new WeightsException($"{repoId}: the hub named commit {Text.Q(sha)}, not a 40-digit hash");
            var files = new List<HubFile>();
            foreach (var s in root.GetProperty("siblings").EnumerateArray())
            {
                var path = s.GetProperty("rfilename").GetString()!;
                if (!SafeRelativePath(path)) throw new WeightsException($"{repoId}: the hub listed an unsafe file name {Text.Q(path)}");
                string? sha256 = null;
                long size = s.TryGetProperty("size", out var sz) && sz.ValueKind == JsonValueKind.Number ? sz.GetInt64() : -1;
                if (s.TryGetProperty("lfs", out var lfs) && lfs.ValueKind == JsonValueKind.Object)
                {
                    sha256 = lfs.GetProperty("sha256").GetString();
                    if (lfs.TryGetProperty("size", out var ls)) size = ls.GetInt64();
                }
                var blob = sha256 ?? (s.TryGetProperty("blobId", out var b) ? b.GetString() : null);
                if (blob is null || !BlobPattern().IsMatch(blob))
                    throw new WeightsException($"{repoId}: the hub gave no usable blob id for {Text.Q(path)}");
                files.Add(new HubFile(path, blob, size, sha256));
            }
            return new RepoInfo(sha, files);
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new WeightsException($"{repoId}: unexpected answer from {url}: {Text.OneLine(e.Message)}", e);
        }
    }

    [GeneratedRegex("^[0-9a-f]{40}([0-9a-f]{24})?$")]
    private static partial Regex BlobPattern();

    private static bool SafeRelativePath(string p) =>
        p.Length > 0 && !Path.IsPathRooted(p) && !p.Contains('\\') && p.Split('/').All(s => s is not ("" or "." or ".."));

    // ---- downloading one file ----

    private async Task Fetch(string repoId, string sha, HubFile file, string repoDir, string snapshot,
        IProgress<HubProgress>? progress, CancellationToken cancel)
    {
        var link = Path.Combine(snapshot, file.Path);
        if (File.Exists(link)) return; // cached (File.Exists follows the symlink, so a dangling one is refetched)
        var blobs = Path.Combine(repoDir, "blobs");
        var blob = Path.Combine(blobs, file.Blob);
        Directory.CreateDirectory(blobs);
        if (!File.Exists(blob))
        {
            var partial = blob + ".incomplete";
            await DownloadTo(partial, $"{options.Endpoint}/{repoId}/resolve/{sha}/{string.Join('/', file.Path.Split('/').Select(Uri.EscapeDataString))}",
                repoId, file, progress, cancel);
            Verify(partial, repoId, file);
            File.Move(partial, blob, overwrite: true);
        }
        Directory.CreateDirectory(Path.GetDirectoryName(link)!);
        if (File.Exists(link) || Directory.Exists(link)) return;
        try
        {
            File.CreateSymbolicLink(link, Path.GetRelativePath(Path.GetDirectoryName(link)!, blob));
        }
        catch (IOException)
        {
            File.Copy(blob, link); // file systems without symlinks: the Python tools fall back the same way
        }
    }

    private async Task DownloadTo(string partial, string url, string repoId, HubFile file, IProgress<HubProgress>? progress, CancellationToken cancel)
    {
        long have = File.Exists(partial) ? new FileInfo(partial).Length : 0;
        if (file.Size >= 0 && have > file.Size) have = 0;
        using var response = await Send(url, have > 0 ? have : null, cancel);
        if (response.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable)
        {
            File.Delete(partial);
            await DownloadTo(partial, url, repoId, file, progress, cancel);
            return;
        }
        Check(response, repoId, $"file {Text.Q(file.Path)}");
        bool resumed = response.StatusCode == HttpStatusCode.PartialContent;
        if (!resumed) have = 0; // the server ignored the range: start over
        long total = file.Size >= 0 ? file.Size : (response.Content.Headers.ContentLength ?? -1) + have;
        await using var output = new FileStream(partial, resumed ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        await using var input = await response.Content.ReadAsStreamAsync(cancel);
        var buffer = new byte[1 << 20];
        long done = have;
        progress?.Report(new HubProgress(file.Path, done, Math.Max(total, 0)));
        try
        {
            int n;
            while ((n = await input.ReadAsync(buffer, cancel)) > 0)
            {
                await output.WriteAsync(buffer.AsMemory(0, n), cancel);
                done += n;
                progress?.Report(new HubProgress(file.Path, done, Math.Max(total, 0)));
            }
        }
        catch (Exception e) when (e is IOException or HttpRequestException)
        {
            throw new WeightsException($"{repoId}: download of {Text.Q(file.Path)} broke off after {done} bytes ({Text.OneLine(e.Message)}); run again to resume", e);
        }
    }

    private static void Verify(string partial, string repoId, HubFile file)
    {
        long size = new FileInfo(partial).Length;
        if (file.Size >= 0 && size != file.Size)
        {
            if (size > file.Size) File.Delete(partial);
            throw new WeightsException($"{repoId}: {Text.Q(file.Path)} arrived with {size} bytes, the hub lists {file.Size}{(size < file.Size ? "; run again to resume" : "")}");
        }
        if (file.Sha256 is null) return;
        string actual;
        using (var s = File.OpenRead(partial)) actual = Convert.ToHexStringLower(SHA256.HashData(s));
        if (actual != file.Sha256)
        {
            File.Delete(partial);
            throw new WeightsException($"{repoId}: {Text.Q(file.Path)} has sha256 {actual}, the hub lists {file.Sha256}; the download was discarded");
        }
    }

    private async Task<HttpResponseMessage> Send(string url, long? from, CancellationToken cancel)
    {
        var uri = new Uri(url);
        var home = new Uri(options.Endpoint);
        for (int hop = 0; hop < 10; hop++)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, uri);
            if (options.Token is not null && uri.Host == home.Host && uri.Port == home.Port)
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", options.Token);
            if (from is long f) request.Headers.Range = new RangeHeaderValue(f, null);
            var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel);
            if ((int)response.StatusCode is >= 300 and < 400 && response.Headers.Location is Uri next)
            {
                response.Dispose();
                uri = next.IsAbsoluteUri ? next : new Uri(uri, next);
                continue;
            }
            return response;
        }
        throw new WeightsException($"{url}: more than 10 redirects");
    }

    private void Check(HttpResponseMessage r, string repoId, string what)
    {
        if (r.IsSuccessStatusCode) return;
        int code = (int)r.StatusCode;
        throw new WeightsException(code switch
        {
            401 or 403 => $"{repoId}: access denied (HTTP {code}) to {what}: the repository is gated or private; " +
                          (options.Token is null ? "set HF_TOKEN to a token that has access" : "the token in HF_TOKEN has no access to it"),
            404 => $"{repoId}: {what} not found at {options.Endpoint} (HTTP 404)" + (options.Token is null ? "; if the repository is private, set HF_TOKEN" : ""),
            _ => $"{repoId}: the hub answered HTTP {code} {r.ReasonPhrase} for {what}",
        });
    }

    // ---- the cache alone ----

    private string? TryCachedSnapshot(string repoId, string revision, IReadOnlyList<string> needed)
    {
        var repoDir = RepoDir(repoId);
        string? sha = CommitPattern().IsMatch(revision) ? revision : null;
        var refFile = Path.Combine(repoDir, "refs", revision);
        if (sha is null && File.Exists(refFile)) sha = File.ReadAllText(refFile).Trim();
        if (sha is null || !CommitPattern().IsMatch(sha)) return null;
        var snapshot = Path.Combine(repoDir, "snapshots", sha);
        return needed.All(f => File.Exists(Path.Combine(snapshot, f))) ? snapshot : null;
    }

    private string CachedSnapshot(string repoId, string revision, IReadOnlyList<string> needed, string why) =>
        TryCachedSnapshot(repoId, revision, needed)
        ?? throw new WeightsException($"{repoId}: {why} and revision '{revision}' is not in the cache at {RepoDir(repoId)}");

    public void Dispose() => http.Dispose();
}
