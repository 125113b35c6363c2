using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace StableDiffusion.Server;

/// <summary>
/// Asynchronous jobs: POST returns an id at once; GET gives the state and result; /events streams progress (step,
/// total, ETA, a preview) as Server-Sent Events and ends with the result; DELETE cancels (after the current step).
/// </summary>
public static class JobsApi
{
    public static void Map(WebApplication app)
    {
        app.MapPost("/v1/jobs", async (HttpContext c, ServerState s) =>
        {
            var body = await ServerApp.ReadJson(c, s.Options.MaxBodyBytes);
            // The body is A1111's txt2img fields; init_images makes it img2img.
            bool img2img = body.ValueKind == JsonValueKind.Object && body.TryGetProperty("init_images", out var ii) && ii.ValueKind == JsonValueKind.Array;
            var spec = A1111Request.Parse(body, img2img);
            if (body.TryGetProperty("model", out _) && A1111Request.Str(body, "model") is string m)
                spec = spec with { Model = s.Host.Find(m) is not null ? m : throw ApiException.Invalid($"model '{m}' is not one of {string.Join(", ", s.Host.Catalog.Select(e => e.Name))}") };
            var job = s.Queue.Enqueue(new Job(img2img ? "img2img" : "txt2img", spec));
            return Results.Json(State(job, s, withResult: false), statusCode: 202);
        });
        app.MapGet("/v1/jobs", (ServerState s) => new JsonArray([.. s.Queue.All().Select(j => (JsonNode)State(j, s, withResult: false))]));
        app.MapGet("/v1/jobs/{id}", (string id, ServerState s) => Results.Json(State(Find(s, id), s, withResult: true)));
        app.MapGet("/v1/jobs/{id}/images/{index:int}", (string id, int index, ServerState s) =>
        {
            var job = Find(s, id);
            var pngs = job.Result?.Pngs ?? [];
            if (index < 0 || index >= pngs.Count) throw ApiException.NotFound($"job {id} has no image {index}");
            return Results.File(pngs[index], "image/png", $"sd-{id}-{index}.png");
        });
        app.MapDelete("/v1/jobs/{id}", (string id, ServerState s) =>
        {
            var job = Find(s, id);
            if (!job.Finished) s.Queue.Cancel(job, "cancelled by DELETE");
            return Results.Json(State(job, s, withResult: false));
        });
        app.MapGet("/v1/jobs/{id}/events", Events);
    }

    private static Job Find(ServerState s, string id) =>
        s.Queue.Find(id) is { Spec: not null } job ? job : throw ApiException.NotFound($"no job {id}");

    public static JsonObject State(Job job, ServerState s, bool withResult)
    {
        var o = new JsonObject
        {
            ["id"] = job.Id,
            ["kind"] = job.Kind,
            ["status"] = job.Status.ToString().ToLowerInvariant(),
            ["created"] = job.Created.ToUnixTimeMilliseconds(),
            ["position"] = job.Status == JobStatus.Queued ? s.Queue.PositionOf(job) : null,
            ["step"] = job.Step,
            ["steps"] = job.Steps,
            ["eta_seconds"] = job.EtaSeconds,
            ["seconds"] = job.Clock.Elapsed.TotalSeconds,
            ["images"] = job.Result?.Pngs.Count ?? 0,
            ["infotexts"] = job.Result is null ? null : new JsonArray([.. job.Result.Infotexts.Select(t => (JsonNode)t)]),
            ["interrupted"] = job.Result?.Interrupted ?? false,
            ["error"] = job.Error,
            ["detail"] = job.ErrorDetail,
        };
        if (withResult && job.Result is not null) o["result"] = A1111Api.Answer(job);
        return o;
    }

    /// <summary>
    /// <c>event: progress</c> with {step, total, eta_seconds, preview} on each step (a late subscriber gets the current
    /// state first), then <c>event: result</c> with the job's state and A1111's answer, or <c>event: error</c>.
    /// </summary>
    private static async Task Events(HttpContext c, string id, ServerState s)
    {
        var job = Find(s, id);
        c.Response.ContentType = "text/event-stream";
        c.Response.Headers.CacheControl = "no-cache";
        c.Response.Headers["X-Accel-Buffering"] = "no";
        int sent = -1;
        var aborted = c.RequestAborted;
        while (!aborted.IsCancellationRequested)
        {
            var changed = job.Changed; // taken before reading the state, so no change is missed
            if (job.Finished)
            {
                if (job.Status == JobStatus.Done)
                {
                    var result = State(job, s, withResult: true);
                    await Send(c, "result", result.ToJsonString(), aborted);
                }
                else
                    await Send(c, "error", JsonSerializer.Serialize(new { status = job.Status.ToString().ToLowerInvariant(), error = job.Error, detail = job.ErrorDetail }), aborted);
                return;
            }
            if (job.Step != sent || sent < 0)
            {
                sent = job.Step;
                var preview = job.Preview;
                await Send(c, "progress", JsonSerializer.Serialize(new
                {
                    status = job.Status.ToString().ToLowerInvariant(),
                    step = job.Step, total = job.Steps, eta_seconds = job.EtaSeconds,
                    position = job.Status == JobStatus.Queued ? s.Queue.PositionOf(job) : (int?)null,
                    preview = preview is null ? null : "data:image/png;base64," + Convert.ToBase64String(preview),
                }), aborted);
            }
            await changed.WaitAsync(TimeSpan.FromSeconds(15), aborted).ContinueWith(_ => { }, TaskScheduler.Default);
        }
    }

    private static async Task Send(HttpContext c, string name, string json, CancellationToken aborted)
    {
        await c.Response.WriteAsync($"event: {name}\ndata: {json}\n\n", Encoding.UTF8, aborted);
        await c.Response.Body.FlushAsync(aborted);
    }
}
