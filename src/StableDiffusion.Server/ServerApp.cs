using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace StableDiffusion.Server;

/// <summary>
/// Builds the <c>sd serve</c> application: Kestrel on the asked address, authentication, CORS when asked, JSON errors,
/// one log line per request, the APIs and the page. The model loads before the app is returned.
/// </summary>
public static class ServerApp
{
    public static WebApplication Create(ServerOptions options, TextWriter log, Action<IWebHostBuilder>? configureHost = null)
    {
        options.Validate();
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        var (address, port) = options.ParseListen();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(address, port);
            k.Limits.MaxRequestBodySize = options.MaxBodyBytes;
        });
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = TimeSpan.FromSeconds(30));
        if (options.CorsOrigin is not null)
            builder.Services.AddCors(c => c.AddDefaultPolicy(p => p.WithOrigins(options.CorsOrigin).AllowAnyHeader().AllowAnyMethod()));
        configureHost?.Invoke(builder.WebHost);

        var host = new ModelHost(options, log);
        var runner = new GenerationRunner(host);
        var queue = new JobQueue(runner.Run, options.MaxQueue, options.KeepJobs, log);
        var state = new ServerState(options, host, queue, log);
        builder.Services.AddSingleton(state);

        var app = builder.Build();
        app.Lifetime.ApplicationStopping.Register(() =>
        {
            log.WriteLine("sd serve: stopping: waiting jobs cancelled, the running one stops after its step");
            queue.Stop(TimeSpan.FromSeconds(25));
        });
        app.Lifetime.ApplicationStopped.Register(() =>
        {
            queue.Dispose();
            host.Dispose();
        });

        app.Use((context, next) => LogRequest(context, next, log));
        app.Use(Errors);
        if (options.CorsOrigin is not null) app.UseCors();
        app.Use((context, next) => Authenticate(context, next, options));
        app.Use((context, next) => LimitBody(context, next, options.MaxBodyBytes));

        WebPage.Map(app);
        A1111Api.Map(app);
        OpenAiApi.Map(app);
        JobsApi.Map(app);
        app.MapFallback(context => throw ApiException.NotFound($"{context.Request.Method} {context.Request.Path}: no such endpoint"));
        return app;
    }

    private static async Task LogRequest(HttpContext context, RequestDelegate next, TextWriter log)
    {
        var clock = Stopwatch.StartNew();
        try
        {
            await next(context);
        }
        finally
        {
            log.WriteLine($"sd serve: {context.Request.Method} {context.Request.Path} {context.Response.StatusCode} {clock.Elapsed.TotalMilliseconds:F1} ms");
        }
    }

    /// <summary>Every failure becomes <c>{"error", "detail"}</c> with its status; never a stack trace.</summary>
    private static async Task Errors(HttpContext context, RequestDelegate next)
    {
        try
        {
            await next(context);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            // The client went away; nothing to answer.
        }
        catch (Exception e)
        {
            var (status, error, detail) = e switch
            {
                ApiException a => (a.Status, a.Error, a.Detail),
                BadHttpRequestException b => (b.StatusCode, b.StatusCode == 413 ? "body too large" : "bad request", b.Message),
                JsonException j => (400, "malformed JSON", j.Message.Split('\n')[0]),
                SdException s => (422, "invalid request", s.Message),
                _ => (500, "internal error", e.GetType().Name),
            };
            if (context.Response.HasStarted) return;
            context.Response.Clear();
            context.Response.StatusCode = status;
            if (status == 401 && context.Items.ContainsKey("basic")) context.Response.Headers.WWWAuthenticate = "Basic realm=\"sd\"";
            await context.Response.WriteAsJsonAsync(new { error, detail });
        }
    }

    /// <summary>
    /// With --api-key or --api-auth every API call needs <c>Authorization: Bearer KEY</c> or basic credentials; the page
    /// itself (/, its script and style) loads without, and asks for the key.
    /// </summary>
    private static Task Authenticate(HttpContext context, RequestDelegate next, ServerOptions options)
    {
        if (options.ApiKey is null && options.ApiAuth is null) return next(context);
        if (HttpMethods.IsOptions(context.Request.Method) || WebPage.IsPageAsset(context.Request.Path)) return next(context);
        var header = context.Request.Headers.Authorization.ToString();
        if (options.ApiKey is not null && header.StartsWith("Bearer ", StringComparison.Ordinal) && Same(header[7..].Trim(), options.ApiKey))
            return next(context);
        if (options.ApiAuth is not null && header.StartsWith("Basic ", StringComparison.Ordinal))
        {
            try
            {
                if (Same(Encoding.UTF8.GetString(Convert.FromBase64String(header[6..].Trim())), options.ApiAuth)) return next(context);
            }
            catch (FormatException)
            {
            }
        }
        if (options.ApiAuth is not null) context.Items["basic"] = true;
        throw new ApiException(401, "unauthorized", options.ApiKey is not null
            ? "send Authorization: Bearer <the --api-key>" : "send HTTP basic credentials (--api-auth)");
    }

    private static bool Same(string a, string b) =>
        CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(a), Encoding.UTF8.GetBytes(b));

    /// <summary>The body limit also where Kestrel does not enforce it (the test host): a declared length over it is refused unread.</summary>
    private static Task LimitBody(HttpContext context, RequestDelegate next, long max)
    {
        if (context.Request.ContentLength > max)
            throw new ApiException(413, "body too large", $"{context.Request.ContentLength} bytes; at most {max}");
        return next(context);
    }

    /// <summary>Reads the body as JSON, at most <paramref name="max"/> bytes of it.</summary>
    public static async Task<JsonElement> ReadJson(HttpContext context, long max)
    {
        var buffer = new MemoryStream();
        var chunk = new byte[81920];
        int n;
        while ((n = await context.Request.Body.ReadAsync(chunk, context.RequestAborted)) > 0)
        {
            if (buffer.Length + n > max) throw new ApiException(413, "body too large", $"more than {max} bytes");
            buffer.Write(chunk, 0, n);
        }
        if (buffer.Length == 0) throw ApiException.BadRequest("the body is empty; send a JSON object");
        try
        {
            using var doc = JsonDocument.Parse(buffer.ToArray(), new JsonDocumentOptions { MaxDepth = 32 });
            return doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new ApiException(400, "malformed JSON", e.Message.Split('\n')[0]);
        }
    }

    /// <summary>The URLs Kestrel listens on once started (port 0 resolved).</summary>
    public static IReadOnlyList<string> Addresses(WebApplication app) =>
        app.Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>()
            .Features.Get<Microsoft.AspNetCore.Hosting.Server.Features.IServerAddressesFeature>()?.Addresses.ToList() ?? [];
}

/// <summary>What the endpoints share.</summary>
public sealed record ServerState(ServerOptions Options, ModelHost Host, JobQueue Queue, TextWriter Log)
{
    public DateTimeOffset Started { get; } = DateTimeOffset.UtcNow;

    /// <summary>Enqueues a generation; the answer waits for it, and a client that leaves cancels it.</summary>
    public async Task<Job> RunAsync(GenerationSpec spec, string kind, CancellationToken aborted)
    {
        var job = Queue.Enqueue(new Job(kind, spec));
        using (aborted.Register(() => Queue.Cancel(job, "the client disconnected")))
            await job.Done;
        if (job.Status is JobStatus.Failed or JobStatus.Cancelled)
            throw new ApiException(job.Status == JobStatus.Cancelled ? 409 : job.ErrorStatus, job.Error!, job.ErrorDetail!);
        return job;
    }
}
