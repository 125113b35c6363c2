using System.Net;
using StableDiffusion.Runtime;

namespace StableDiffusion.Server;

/// <summary>What <c>sd serve</c> was started with.</summary>
public sealed record ServerOptions
{
    /// <summary>The model loaded at start (a local diffusers folder or single file).</summary>
    public required string Model { get; init; }
    /// <summary>host:port; loopback unless an API key or basic credentials are set. Port 0 picks a free one.</summary>
    public string Listen { get; init; } = "127.0.0.1:7860";
    public string Device { get; init; } = "auto";
    public DType? Precision { get; init; }
    /// <summary>More models to switch to (A1111's sd_model_checkpoint): diffusers folders and .safetensors/.ckpt files in it.</summary>
    public string? ModelsDir { get; init; }
    public string? LoraDir { get; init; }
    public string? EmbeddingsDir { get; init; }
    public string? Tokenizer { get; init; }
    /// <summary>Jobs that may wait behind the running one; past it a request gets 429.</summary>
    public int MaxQueue { get; init; } = 16;
    public string? ApiKey { get; init; }
    /// <summary>user:password for HTTP basic authentication (A1111's --api-auth).</summary>
    public string? ApiAuth { get; init; }
    public string? CorsOrigin { get; init; }
    /// <summary>The largest request body: enough for an init image and a mask of 4096² as base64 PNGs.</summary>
    public long MaxBodyBytes { get; init; } = 64L << 20;
    /// <summary>Finished jobs kept for GET /v1/jobs and the gallery (oldest dropped first).</summary>
    public int KeepJobs { get; init; } = 200;

    /// <summary>Parses <see cref="Listen"/>: an IP address (or localhost) and a port.</summary>
    public (IPAddress Address, int Port) ParseListen()
    {
        int colon = Listen.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(Listen[(colon + 1)..], out int port) || port is < 0 or > 65535)
            throw new UsageException($"--listen '{Listen}': use host:port, e.g. 127.0.0.1:7860 or 0.0.0.0:7860");
        var host = Listen[..colon].Trim('[', ']');
        if (host == "localhost") return (IPAddress.Loopback, port);
        if (!IPAddress.TryParse(host, out var address))
            throw new UsageException($"--listen '{Listen}': '{host}' is not an IP address (use 127.0.0.1, 0.0.0.0, ::1 or an interface's address)");
        return (address, port);
    }

    /// <summary>Refuses a non-loopback address without credentials, and malformed credentials.</summary>
    public void Validate()
    {
        var (address, _) = ParseListen();
        if (ApiAuth is not null && (ApiAuth.IndexOf(':') is <= 0 || ApiAuth.EndsWith(':')))
            throw new UsageException("--api-auth: use user:password");
        if (ApiKey is { Length: < 8 }) throw new UsageException("--api-key: use at least 8 characters");
        if (!IPAddress.IsLoopback(address) && ApiKey is null && ApiAuth is null)
            throw new UsageException($"--listen {Listen} is reachable from other machines: give --api-key KEY (or --api-auth user:password)");
        if (MaxQueue is < 0 or > 10_000) throw new UsageException($"--max-queue {MaxQueue}: must be 0 to 10000");
        foreach (var (name, dir) in new[] { ("--models-dir", ModelsDir), ("--lora-dir", LoraDir), ("--embeddings-dir", EmbeddingsDir) })
            if (dir is not null && !Directory.Exists(dir)) throw new UsageException($"{name} {dir}: no such folder");
    }
}
