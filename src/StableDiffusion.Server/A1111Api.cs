using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using StableDiffusion.Pipelines.Images;
using StableDiffusion.Schedulers;

namespace StableDiffusion.Server;

/// <summary>
/// AUTOMATIC1111's web UI API (/sdapi/v1/*) with its field names and answer shapes, for the front-ends and plugins
/// that speak it.
/// </summary>
public static class A1111Api
{
    public static void Map(WebApplication app)
    {
        app.MapPost("/sdapi/v1/txt2img", (HttpContext c, ServerState s) => Generate(c, s, img2img: false));
        app.MapPost("/sdapi/v1/img2img", (HttpContext c, ServerState s) => Generate(c, s, img2img: true));
        app.MapGet("/sdapi/v1/progress", Progress);
        app.MapPost("/sdapi/v1/interrupt", (ServerState s) =>
        {
            if (s.Queue.Running is { Spec: not null } job)
            {
                job.Interrupt = true;
                job.Cancel.Cancel();
            }
            return Results.Json(new { });
        });
        app.MapPost("/sdapi/v1/skip", (ServerState s) => Results.Json(new { }));
        app.MapGet("/sdapi/v1/samplers", () => Samplers.Names.Select(n => new
        {
            name = Infotext.SamplerDisplayName(n),
            aliases = new[] { n },
            options = new Dictionary<string, string>(),
        }));
        app.MapGet("/sdapi/v1/schedulers", () => new[]
        {
            new { name = "automatic", label = "Automatic", aliases = (string[]?)null, default_rho = -1.0, need_inner_model = false },
            new { name = "karras", label = "Karras", aliases = (string[]?)null, default_rho = 7.0, need_inner_model = false },
            new { name = "exponential", label = "Exponential", aliases = (string[]?)null, default_rho = 1.0, need_inner_model = false },
        });
        app.MapGet("/sdapi/v1/sd-models", (ServerState s) => s.Host.Catalog.Select(e =>
        {
            var hash = s.Host.HashOf(e);
            return new { title = e.Title(hash), model_name = e.Name, hash, sha256 = (string?)null, filename = e.Path, config = (string?)null };
        }));
        app.MapGet("/sdapi/v1/loras", (ServerState s) => ModelHost.ListFiles(s.Options.LoraDir, ".safetensors", ".ckpt", ".pt")
            .Select(f => new { name = f.Name, alias = f.Name, path = f.Path, metadata = new Dictionary<string, string>() }));
        app.MapGet("/sdapi/v1/embeddings", (ServerState s) => new
        {
            // Read when a prompt names them (by file name, or embedding:name).
            loaded = ModelHost.ListFiles(s.Options.EmbeddingsDir, ".safetensors", ".pt", ".bin")
                .ToDictionary(f => f.Name, f => (object)new { filename = f.Path }),
            skipped = new Dictionary<string, object>(),
        });
        app.MapGet("/sdapi/v1/options", (ServerState s) => Options(s));
        app.MapPost("/sdapi/v1/options", SetOptions);
        app.MapPost("/sdapi/v1/png-info", PngInfo);
    }

    private static async Task<IResult> Generate(HttpContext c, ServerState s, bool img2img)
    {
        var spec = A1111Request.Parse(await ServerApp.ReadJson(c, s.Options.MaxBodyBytes), img2img);
        var job = await s.RunAsync(spec, img2img ? "img2img" : "txt2img", c.RequestAborted);
        return Results.Json(Answer(job));
    }

    /// <summary>A1111's answer: base64 PNGs, the request echoed, and "info" (a JSON string) with seeds and infotexts.</summary>
    public static JsonObject Answer(Job job)
    {
        var r = job.Result!;
        var spec = job.Spec!;
        var info = new JsonObject
        {
            ["prompt"] = spec.Prompt,
            ["all_prompts"] = new JsonArray([.. r.Seeds.Select(_ => (JsonNode)spec.Prompt)]),
            ["negative_prompt"] = spec.NegativePrompt,
            ["all_negative_prompts"] = new JsonArray([.. r.Seeds.Select(_ => (JsonNode)spec.NegativePrompt)]),
            ["seed"] = spec.Seed,
            ["all_seeds"] = new JsonArray([.. r.Seeds.Select(x => (JsonNode)x)]),
            ["subseed"] = -1,
            ["all_subseeds"] = new JsonArray([.. r.Seeds.Select(_ => (JsonNode)(-1))]),
            ["width"] = spec.Width,
            ["height"] = spec.Height,
            ["sampler_name"] = Infotext.SamplerDisplayName(spec.Sampler),
            ["scheduler"] = spec.Schedule ?? "automatic",
            ["cfg_scale"] = spec.Cfg,
            ["steps"] = spec.Steps,
            ["batch_size"] = spec.BatchSize,
            ["n_iter"] = spec.Iterations,
            ["denoising_strength"] = spec.InitImage is null ? null : spec.Strength,
            ["clip_skip"] = spec.ClipSkip ?? 1,
            ["sd_model_name"] = r.ModelName,
            ["sd_model_hash"] = r.ModelHash,
            ["infotexts"] = new JsonArray([.. r.Infotexts.Select(t => (JsonNode)t)]),
            ["interrupted"] = r.Interrupted,
            ["job_timestamp"] = job.Created.ToString("yyyyMMddHHmmss"),
        };
        return new JsonObject
        {
            ["images"] = new JsonArray([.. r.Pngs.Select(p => (JsonNode)Convert.ToBase64String(p))]),
            ["parameters"] = spec.Parameters.DeepClone(),
            ["info"] = info.ToJsonString(),
        };
    }

    private static IResult Progress(HttpContext c, ServerState s)
    {
        bool skipImage = c.Request.Query["skip_current_image"] == "true";
        var job = s.Queue.Running;
        int pending = s.Queue.Pending;
        if (job is null || job.Spec is null)
            return Results.Json(new
            {
                progress = 0.0, eta_relative = 0.0,
                state = new { skipped = false, interrupted = false, job = "", job_count = pending, job_timestamp = "0", job_no = 0, sampling_step = 0, sampling_steps = 0 },
                current_image = (string?)null, textinfo = (string?)null,
            });
        double progress = job.Steps == 0 ? 0 : (double)job.Step / job.Steps;
        return Results.Json(new
        {
            progress, eta_relative = job.EtaSeconds,
            state = new
            {
                skipped = false, interrupted = job.Interrupt, job = job.Id, job_count = pending,
                job_timestamp = job.Created.ToString("yyyyMMddHHmmss"), job_no = 0,
                sampling_step = job.Step, sampling_steps = job.Steps,
            },
            current_image = skipImage || job.Preview is null ? null : Convert.ToBase64String(job.Preview),
            textinfo = (string?)null,
        });
    }

    private static object Options(ServerState s) => new Dictionary<string, object?>
    {
        ["sd_model_checkpoint"] = s.Host.Current.Title(s.Host.CurrentHash),
        ["CLIP_stop_at_last_layers"] = s.Host.ClipSkip,
        ["samples_format"] = "png",
        ["sd_lora"] = "None",
    };

    /// <summary>sd_model_checkpoint switches the model, in queue order with the generations; CLIP_stop_at_last_layers sets the default clip skip.</summary>
    private static async Task<IResult> SetOptions(HttpContext c, ServerState s)
    {
        var body = await ServerApp.ReadJson(c, s.Options.MaxBodyBytes);
        if (body.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("the body must be a JSON object");
        if (A1111Request.Str(body, "sd_model_checkpoint") is string name)
        {
            var entry = s.Host.Find(name) ?? throw ApiException.Invalid($"sd_model_checkpoint '{name}' is not one of {string.Join(", ", s.Host.Catalog.Select(e => e.Name))}");
            var job = s.Queue.Enqueue(new Job("switch model", null, _ => s.Host.Switch(entry)));
            await job.Done;
            if (job.Status != JobStatus.Done) throw new ApiException(job.ErrorStatus, job.Error!, job.ErrorDetail!);
        }
        if (body.TryGetProperty("CLIP_stop_at_last_layers", out _))
            s.Host.ClipSkip = A1111Request.Int(body, "CLIP_stop_at_last_layers", 1, 1, 12);
        return Results.Json((object?)null);
    }

    private static async Task<IResult> PngInfo(HttpContext c, ServerState s)
    {
        var body = await ServerApp.ReadJson(c, s.Options.MaxBodyBytes);
        if (body.ValueKind != JsonValueKind.Object || !body.TryGetProperty("image", out var image))
            throw ApiException.Invalid("image: send {\"image\": \"<base64 PNG>\"}");
        // Checked and decoded like an init image first: the size before the pixels.
        A1111Request.Base64Image(image, "image", ImageFiles.DefaultMaxPixels);
        var text = image.GetString()!;
        var bytes = Convert.FromBase64String(text.StartsWith("data:", StringComparison.Ordinal) ? text[(text.IndexOf(',') + 1)..] : text);
        IReadOnlyDictionary<string, string> chunks;
        try
        {
            chunks = ImageFiles.ReadPngText(bytes, "image");
        }
        catch (ImageException)
        {
            chunks = new Dictionary<string, string>(); // JPEG, WebP: no PNG text
        }
        var parameters = chunks.GetValueOrDefault(ImageFiles.ParametersKeyword) ?? "";
        return Results.Json(new { info = parameters, items = chunks, parameters = ParseInfotext(parameters) });
    }

    /// <summary>An infotext's fields as A1111's parse_generation_parameters returns them (Prompt, Negative prompt, Steps, …).</summary>
    public static Dictionary<string, string> ParseInfotext(string text)
    {
        var result = new Dictionary<string, string>();
        if (text.Length == 0) return result;
        var lines = text.Split('\n');
        var last = lines[^1];
        var prompt = new List<string>();
        string? negative = null;
        foreach (var line in lines[..^1])
        {
            if (line.StartsWith("Negative prompt: ", StringComparison.Ordinal)) negative = line["Negative prompt: ".Length..];
            else if (negative is not null) negative += "\n" + line;
            else prompt.Add(line);
        }
        result["Prompt"] = string.Join("\n", prompt);
        result["Negative prompt"] = negative ?? "";
        // key: value pairs; values with , or : are JSON-quoted.
        int i = 0;
        while (i < last.Length)
        {
            int colon = last.IndexOf(": ", i, StringComparison.Ordinal);
            if (colon < 0) break;
            var key = last[i..colon].Trim();
            int j = colon + 2;
            string value;
            if (j < last.Length && last[j] == '"')
            {
                int k = j + 1;
                while (k < last.Length && last[k] != '"') k += last[k] == '\\' ? 2 : 1;
                value = JsonSerializer.Deserialize<string>(last[j..Math.Min(k + 1, last.Length)]) ?? "";
                j = k + 1;
            }
            else
            {
                int comma = last.IndexOf(',', j);
                value = comma < 0 ? last[j..] : last[j..comma];
                j = comma < 0 ? last.Length : comma;
            }
            result[key] = value.Trim();
            i = j < last.Length && last[j] == ',' ? j + 1 : j;
        }
        return result;
    }
}
