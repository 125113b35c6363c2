using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace StableDiffusion.IO.Tests.Support;

/// <summary>
/// A Hugging Face hub on loopback, speaking the part of its protocol a download uses: the revision API with
/// blob ids, <c>resolve</c> URLs, LFS files redirected to a "CDN" on another host (127.0.0.2), ranges, gated
/// repositories. Faults can be injected per file: a connection cut after N bytes, or wrong content.
/// </summary>
public sealed class FakeHub : IDisposable
{
    public sealed record Request(string Host, string Path, string? Range, string? Authorization);

    public sealed class Repo
    {
        public required string Sha { get; init; }
        public required Dictionary<string, byte[]> Files { get; init; }
        public HashSet<string> Lfs { get; } = [];
        public string? Token { get; set; }
        /// <summary>Files listed by the API but answered with 404.</summary>
        public HashSet<string> Missing { get; } = [];
        /// <summary>Bytes served instead of the listed content (wrong sha256).</summary>
        public Dictionary<string, byte[]> Serve { get; } = [];
        /// <summary>The first download of these files breaks off after this many bytes.</summary>
        public ConcurrentDictionary<string, int> CutAfter { get; } = [];
    }

    private readonly HttpListener listener = new();
    private readonly Dictionary<string, Repo> repos = [];
    private readonly Task loop;

    public FakeHub()
    {
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        Port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        listener.Prefixes.Add($"http://127.0.0.1:{Port}/");
        listener.Prefixes.Add($"http://127.0.0.2:{Port}/");
        listener.Start();
        loop = Task.Run(Serve);
    }

    public int Port { get; }
    public string Endpoint => $"http://127.0.0.1:{Port}";
    public ConcurrentQueue<Request> Requests { get; } = new();

    public Repo Add(string id, Dictionary<string, byte[]> files, Func<string, bool> isLfs, string? sha = null)
    {
        var r = new Repo { Sha = sha ?? Convert.ToHexStringLower(SHA1.HashData(Encoding.UTF8.GetBytes(id))), Files = files };
        foreach (var f in files.Keys.Where(isLfs)) r.Lfs.Add(f);
        repos[id] = r;
        return r;
    }

    public static string Sha256(byte[] b) => Convert.ToHexStringLower(SHA256.HashData(b));

    /// <summary>Git's blob id: sha1 of "blob &lt;size&gt;\0" and the content.</summary>
    public static string GitBlobId(byte[] b) => Convert.ToHexStringLower(SHA1.HashData([.. Encoding.ASCII.GetBytes($"blob {b.Length}\0"), .. b]));

    private async Task Serve()
    {
        while (listener.IsListening)
        {
            HttpListenerContext ctx;
            try
            {
                ctx = await listener.GetContextAsync();
            }
            catch (Exception) when (!listener.IsListening)
            {
                return;
            }
            catch (HttpListenerException)
            {
                return;
            }
            _ = Task.Run(() => Handle(ctx));
        }
    }

    private async Task Handle(HttpListenerContext ctx)
    {
        var req = ctx.Request;
        var res = ctx.Response;
        var path = Uri.UnescapeDataString(req.Url!.AbsolutePath);
        Requests.Enqueue(new Request(req.Url.Host, path, req.Headers["Range"], req.Headers["Authorization"]));
        try
        {
            var parts = path.Trim('/').Split('/');
            if (parts is ["api", "models", var org, var name, "revision", var rev])
            {
                if (!Authorised(org + "/" + name, req, res, out var repo)) return;
                if (rev != "main" && rev != repo.Sha)
                {
                    await Status(res, 404, "Revision not found");
                    return;
                }
                var siblings = repo.Files.Select(f => repo.Lfs.Contains(f.Key)
                    ? (object)new { rfilename = f.Key, blobId = GitBlobId(Encoding.ASCII.GetBytes("pointer " + f.Key)), size = f.Value.Length, lfs = new { sha256 = Sha256(f.Value), size = f.Value.Length, pointerSize = 134 } }
                    : new { rfilename = f.Key, blobId = GitBlobId(f.Value), size = f.Value.Length });
                await Send(res, 200, Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new { id = org + "/" + name, sha = repo.Sha, siblings })), null);
            }
            else if (parts.Length >= 5 && parts[2] == "resolve")
            {
                if (!Authorised(parts[0] + "/" + parts[1], req, res, out var repo)) return;
                var file = string.Join('/', parts[4..]);
                if (parts[3] != repo.Sha && parts[3] != "main" || !repo.Files.ContainsKey(file) || repo.Missing.Contains(file))
                {
                    res.Headers["X-Error-Code"] = "EntryNotFound";
                    await Status(res, 404, "Entry not found");
                    return;
                }
                if (repo.Lfs.Contains(file))
                {
                    // LFS content lives elsewhere: redirect, as the hub does, to a host that must not see the token.
                    res.StatusCode = 302;
                    res.RedirectLocation = $"http://127.0.0.2:{Port}/cdn/{parts[0]}/{parts[1]}/{file}";
                    res.Close();
                    return;
                }
                await Content(repo, file, req, res);
            }
            else if (parts is ["cdn", var cdnOrg, var cdnName, ..] && repos.TryGetValue(cdnOrg + "/" + cdnName, out var cdnRepo))
                await Content(cdnRepo, string.Join('/', parts[3..]), req, res);
            else
                await Status(res, 404, "Not found");
        }
        catch (Exception e) when (e is HttpListenerException or IOException or ObjectDisposedException or InvalidOperationException)
        {
            res.Abort(); // the client went away mid-answer
        }
    }

    private bool Authorised(string id, HttpListenerRequest req, HttpListenerResponse res, out Repo repo)
    {
        if (!repos.TryGetValue(id, out repo!))
        {
            _ = Status(res, 404, "Repository not found");
            return false;
        }
        if (repo.Token is not null && req.Headers["Authorization"] != "Bearer " + repo.Token)
        {
            _ = Status(res, 401, "Access to this repository is restricted");
            return false;
        }
        return true;
    }

    private static async Task Content(Repo repo, string file, HttpListenerRequest req, HttpListenerResponse res)
    {
        var data = repo.Serve.GetValueOrDefault(file) ?? repo.Files[file];
        long from = 0;
        if (req.Headers["Range"] is string range && range.StartsWith("bytes=") && range.EndsWith('-'))
            from = long.Parse(range[6..^1]);
        if (from > data.Length)
        {
            await Status(res, 416, "Range not satisfiable");
            return;
        }
        if (from > 0) res.Headers["Content-Range"] = $"bytes {from}-{data.Length - 1}/{data.Length}";
        var body = data.AsMemory((int)from);
        if (repo.CutAfter.TryRemove(file, out int cut))
        {
            res.StatusCode = from > 0 ? 206 : 200;
            res.ContentLength64 = body.Length;
            await res.OutputStream.WriteAsync(body[..cut]);
            await res.OutputStream.FlushAsync();
            res.Abort();
            return;
        }
        await Send(res, from > 0 ? 206 : 200, body, null);
    }

    private static Task Status(HttpListenerResponse res, int code, string message) =>
        Send(res, code, Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new { error = message })), null);

    private static async Task Send(HttpListenerResponse res, int code, ReadOnlyMemory<byte> body, string? type)
    {
        res.StatusCode = code;
        res.ContentType = type ?? "application/octet-stream";
        res.ContentLength64 = body.Length;
        await res.OutputStream.WriteAsync(body);
        res.Close();
    }

    public void Dispose()
    {
        listener.Stop();
        listener.Close();
        try { loop.Wait(TimeSpan.FromSeconds(5)); } catch (AggregateException) { }
    }
}
