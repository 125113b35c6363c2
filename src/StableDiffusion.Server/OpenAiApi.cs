using System.Globalization;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using StableDiffusion.Pipelines;

namespace StableDiffusion.Server;

/// <summary>OpenAI's images API (POST /v1/images/generations) and model list, for clients written against it.</summary>
public static class OpenAiApi
{
    public static void Map(WebApplication app)
    {
        app.MapPost("/v1/images/generations", Generate);
        app.MapGet("/v1/models", (ServerState s) => new
        {
            @object = "list",
            data = s.Host.Catalog.Select(e => new { id = e.Name, @object = "model", created = s.Started.ToUnixTimeSeconds(), owned_by = "sd" }),
        });
    }

    private static async Task<IResult> Generate(HttpContext c, ServerState s)
    {
        var spec = Parse(await ServerApp.ReadJson(c, s.Options.MaxBodyBytes), s.Host);
        var job = await s.RunAsync(spec, "openai", c.RequestAborted);
        return Results.Json(new
        {
            created = job.Result!.Finished.ToUnixTimeSeconds(),
            data = job.Result.Pngs.Select(p => new { b64_json = Convert.ToBase64String(p), revised_prompt = spec.Prompt }),
        });
    }

    /// <summary>prompt, n (images from one draw), size "WxH", response_format b64_json; model when it names one of ours.</summary>
    public static GenerationSpec Parse(JsonElement body, ModelHost host)
    {
        if (body.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("the body must be a JSON object");
        var prompt = A1111Request.Str(body, "prompt") ?? throw ApiException.Invalid("prompt: required");
        A1111Request.CheckPrompt(prompt, "");
        int n = A1111Request.Int(body, "n", 1, 1, 10);
        var format = A1111Request.Str(body, "response_format") ?? "b64_json";
        if (format != "b64_json") throw ApiException.Invalid($"response_format '{format}': only b64_json (this server keeps no image URLs)");
        var size = A1111Request.Str(body, "size") ?? "512x512";
        var parts = size.Split('x');
        if (parts.Length != 2 || !int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out int w)
            || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int h)
            || !GenerationLimits.IsSide(w) || !GenerationLimits.IsSide(h))
            throw ApiException.Invalid($"size '{size}': use WxH with multiples of {GenerationLimits.SideMultiple} from {GenerationLimits.MinSide} to {GenerationLimits.MaxSide}, e.g. 512x512");
        // OpenAI clients always send a model (dall-e-2, …): one of ours is honoured, any other name means "the loaded one".
        var model = A1111Request.Str(body, "model") is string m && host.Find(m) is not null ? m : null;
        return A1111Request.WithLoras(new GenerationSpec
        {
            Prompt = prompt, Width = w, Height = h, BatchSize = n, Seed = (ulong)Random.Shared.NextInt64(0, 1L << 32), Model = model,
            Parameters = System.Text.Json.Nodes.JsonNode.Parse(body.GetRawText())!.AsObject(),
        });
    }
}
