using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.TestHost;
using StableDiffusion.IO;
using StableDiffusion.Models;
using StableDiffusion.TestSupport;

namespace StableDiffusion.Server.Tests;

/// <summary>
/// Tiny random SD1.5 models as <c>sd random-model --config sd15-tiny</c> writes them (CLIP's built-in vocabulary in
/// tokenizer/), and <c>sd serve</c> on them through ASP.NET Core's test host on the C# CPU backend, loaded once for
/// the collection.
/// </summary>
public sealed class ServerFixture : IDisposable
{
    private readonly TempFolder folder = new("sd-serve-tests");
    private readonly object gate = new();
    private WebApplication? app;
    private HttpClient? client;

    public string Root => folder.Path;
    public string ModelPath => Path.Combine(folder.Path, "models", "tiny-a");
    public string OtherModelPath => Path.Combine(folder.Path, "models", "tiny-b");
    public string LoraDir => Path.Combine(folder.Path, "loras");
    public StringWriter Log { get; } = new();

    /// <summary>Writes the models once.</summary>
    public void RequireModels()
    {
        lock (gate)
        {
            if (Directory.Exists(ModelPath)) return;
            foreach (var (path, seed) in new[] { (ModelPath, 0UL), (OtherModelPath, 1UL) })
                RandomModel.Write(Presets.Sd15Tiny, RandomModelFormat.Diffusers, WeightDType.F16, seed, path);
            Directory.CreateDirectory(LoraDir);
            File.WriteAllBytes(Path.Combine(LoraDir, "detail-tweaker.safetensors"), []);
        }
    }

    public ServerOptions Options(int maxQueue = 16) => new()
    {
        Model = ModelPath, Device = "cpu", ModelsDir = Path.GetDirectoryName(ModelPath), LoraDir = LoraDir, MaxQueue = maxQueue,
        MaxBodyBytes = 4 << 20,
    };

    /// <summary>The shared server (max-queue 16).</summary>
    public HttpClient Client
    {
        get
        {
            RequireModels();
            lock (gate)
            {
                if (client is not null) return client;
                app = StartTestServer(Options(), Log);
                return client = app.GetTestClient();
            }
        }
    }

    public WebApplication App => app ?? throw new InvalidOperationException("no server yet");
    public ServerState State => App.Services.GetService(typeof(ServerState)) as ServerState ?? throw new InvalidOperationException();

    public static WebApplication StartTestServer(ServerOptions options, TextWriter log)
    {
        var a = ServerApp.Create(options, TextWriter.Synchronized(log), h => h.UseTestServer());
        a.StartAsync().GetAwaiter().GetResult();
        return a;
    }

    public void Dispose()
    {
        client?.Dispose();
        if (app is not null)
        {
            app.StopAsync().GetAwaiter().GetResult();
            ((IDisposable)app).Dispose();
        }
        folder.Dispose();
    }
}

[CollectionDefinition(Name)]
public sealed class ServerCollection : ICollectionFixture<ServerFixture>
{
    public const string Name = "sd serve";
}

public static class Http
{
    public static async Task<(int Status, JsonElement Body)> Json(this HttpClient client, HttpMethod method, string path, object? body = null)
    {
        using var request = new HttpRequestMessage(method, path);
        if (body is string raw) request.Content = new StringContent(raw, System.Text.Encoding.UTF8, "application/json");
        else if (body is not null) request.Content = JsonContent.Create(body);
        using var response = await client.SendAsync(request);
        var text = await response.Content.ReadAsStringAsync();
        var json = text.Length == 0 ? default : JsonDocument.Parse(text).RootElement.Clone();
        return ((int)response.StatusCode, json);
    }

    public static Task<(int Status, JsonElement Body)> Get(this HttpClient c, string path) => c.Json(HttpMethod.Get, path);
    public static Task<(int Status, JsonElement Body)> Post(this HttpClient c, string path, object body) => c.Json(HttpMethod.Post, path, body);
}
