using System.Net;
using System.Text;
using System.Text.Json;
using StableDiffusion.Pipelines.Images;
using StableDiffusion.TestSupport;
using Xunit.Abstractions;

namespace StableDiffusion.Server.Tests;

/// <summary>
/// Every endpoint of <c>sd serve</c> through the test host on the tiny model: answer shapes as A1111 and OpenAI define
/// them, PNGs of the asked size with A1111's parameters, the CLI's image for the same seed, the queue, interrupt and
/// cancel, and bad input answered 4xx while the server keeps serving.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class ApiTests(ServerFixture server, ITestOutputHelper output) : IDisposable
{
    private HttpClient Client => server.Client;

    public void Dispose() => output.WriteLine(server.Log.ToString());

    private static object Txt2Img(ulong seed = 42, int steps = 2, int width = 64, int height = 48, int batch = 1, int iterations = 1) => new
    {
        prompt = "a red fox in the snow", negative_prompt = "blurry", steps, cfg_scale = 7.5, width, height, seed,
        sampler_name = "Euler a", batch_size = batch, n_iter = iterations, some_future_field = new { ignored = true },
    };

    private static RgbImage Png(JsonElement b64) => ImageFiles.Decode(Convert.FromBase64String(b64.GetString()!), "answer");

    private static string Parameters(JsonElement b64) => ImageFiles.ReadPngText(Convert.FromBase64String(b64.GetString()!), "answer")[ImageFiles.ParametersKeyword];

    [Fact]
    public async Task Txt2img_answers_base64_pngs_of_the_asked_size_with_a1111_parameters_info_and_the_echoed_request()
    {
        var (status, body) = await Client.Post("/sdapi/v1/txt2img", Txt2Img(batch: 2, iterations: 2));
        Assert.Equal(200, status);
        var images = body.GetProperty("images").EnumerateArray().ToList();
        Assert.Equal(4, images.Count);
        foreach (var image in images) Assert.Equal((64, 48), (Png(image).Width, Png(image).Height));
        Assert.StartsWith("a red fox in the snow\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 64x48, Model hash: ", Parameters(images[0]));
        Assert.Contains("Model: tiny-a, Batch size: 2, Batch pos: 1", Parameters(images[1]));
        Assert.Contains("Seed: 43,", Parameters(images[2]));
        Assert.Equal(2, body.GetProperty("parameters").GetProperty("batch_size").GetInt32());
        var info = JsonDocument.Parse(body.GetProperty("info").GetString()!).RootElement;
        Assert.Equal(42UL, info.GetProperty("seed").GetUInt64());
        Assert.Equal([42UL, 42, 43, 43], info.GetProperty("all_seeds").EnumerateArray().Select(e => e.GetUInt64()));
        Assert.Equal(4, info.GetProperty("infotexts").GetArrayLength());
        Assert.Equal(Parameters(images[3]), info.GetProperty("infotexts")[3].GetString());
        Assert.Equal("tiny-a", info.GetProperty("sd_model_name").GetString());
        Assert.NotEqual(Png(images[0]).Pixels, Png(images[1]).Pixels);
    }

    [Fact]
    public async Task The_same_seed_gives_the_same_png_bytes_as_sd_generate()
    {
        var (status, body) = await Client.Post("/sdapi/v1/txt2img", new
        {
            prompt = "a lighthouse at dusk", steps = 3, cfg_scale = 7.5, width = 64, height = 48, seed = 7, sampler_name = "DPM++ 2M", scheduler = "Karras",
        });
        Assert.Equal(200, status);
        var served = Convert.FromBase64String(body.GetProperty("images")[0].GetString()!);

        using var temp = new TempFolder("sd-serve-cli");
        var file = Path.Combine(temp.Path, "cli.png");
        var (o, e) = (new StringWriter(), new StringWriter());
        int code = Cli.Cli.Run(["generate", "--model", server.ModelPath, "--prompt", "a lighthouse at dusk", "--steps", "3", "--cfg", "7.5",
            "--width", "64", "--height", "48", "--seed", "7", "--sampler", "dpmpp_2m", "--schedule", "karras", "--device", "cpu", "--output", file], o, e);
        Assert.True(code == 0, e.ToString());
        Assert.Equal(File.ReadAllBytes(file), served);
        // A different seed is a different image.
        var (_, other) = await Client.Post("/sdapi/v1/txt2img", new { prompt = "a lighthouse at dusk", steps = 3, width = 64, height = 48, seed = 8, sampler_name = "DPM++ 2M", scheduler = "Karras" });
        Assert.NotEqual(Png(body.GetProperty("images")[0]).Pixels, Png(other.GetProperty("images")[0]).Pixels);
    }

    [Fact]
    public async Task Clip_skip_from_override_settings_reaches_the_pipeline()
    {
        // The tiny model's text encoder has two layers: clip skip 2 would leave one, which the model's rule refuses,
        // exactly as sd generate --clip-skip 2 does.
        var (status, body) = await Client.Post("/sdapi/v1/txt2img",
            "{\"prompt\": \"a\", \"steps\": 1, \"width\": 64, \"height\": 48, \"override_settings\": {\"CLIP_stop_at_last_layers\": 2}}");
        Assert.True(status == 422, body.ToString());
        Assert.Contains("clip-skip 2: this text encoder takes 1 to 1", body.GetProperty("detail").GetString());
        var (o, e) = (new StringWriter(), new StringWriter());
        Assert.Equal(2, Cli.Cli.Run(["generate", "--model", server.ModelPath, "--prompt", "a", "--steps", "2", "--width", "64",
            "--height", "48", "--clip-skip", "2", "--device", "cpu", "--output", "/nonexistent/never.png"], o, e));
        Assert.Contains("clip-skip 2: this text encoder takes 1 to 1", e.ToString());
        // Clip skip 1 is A1111's default: each model's own layer.
        var (ok, answer) = await Client.Post("/sdapi/v1/txt2img",
            "{\"prompt\": \"a\", \"steps\": 1, \"width\": 64, \"height\": 48, \"override_settings\": {\"CLIP_stop_at_last_layers\": 1}}");
        Assert.True(ok == 200, answer.ToString());
    }

    [Fact]
    public async Task Img2img_and_inpainting_take_base64_images_and_record_the_strength()
    {
        var init = new RgbImage(70, 40, Enumerable.Range(0, 70 * 40 * 3).Select(i => (byte)(i * 13 % 256)).ToArray());
        var mask = new RgbImage(70, 40, Enumerable.Range(0, 70 * 40 * 3).Select(i => (byte)(i / 3 % 70 < 35 ? 255 : 0)).ToArray());
        string B64(RgbImage i) => Convert.ToBase64String(ImageFiles.EncodePng(i, null));
        var (status, body) = await Client.Post("/sdapi/v1/img2img", new
        {
            prompt = "a cat", init_images = new[] { "data:image/png;base64," + B64(init) }, denoising_strength = 0.5, steps = 4, seed = 3,
            width = 64, height = 32,
        });
        Assert.Equal(200, status);
        Assert.Equal((64, 32), (Png(body.GetProperty("images")[0]).Width, Png(body.GetProperty("images")[0]).Height));
        Assert.Contains("Denoising strength: 0.5", Parameters(body.GetProperty("images")[0]));
        Assert.Equal(JsonValueKind.Null, body.GetProperty("parameters").GetProperty("init_images").ValueKind);

        (status, body) = await Client.Post("/sdapi/v1/img2img", new
        {
            prompt = "a cat", init_images = new[] { B64(init) }, mask = B64(mask), inpainting_fill = 1, inpaint_full_res = false,
            denoising_strength = 1.0, steps = 2, seed = 3, width = 64, height = 32,
        });
        Assert.Equal(200, status);
        Assert.Contains("Denoising strength: 1", Parameters(body.GetProperty("images")[0]));

        (status, body) = await Client.Post("/sdapi/v1/img2img", new { prompt = "a cat", init_images = new[] { B64(init) }, mask = B64(mask), inpainting_fill = 0 });
        Assert.Equal(422, status);
        Assert.Contains("inpainting_fill 0", body.GetProperty("detail").GetString());
    }

    [Fact]
    public async Task Lists_options_model_switching_and_png_info()
    {
        var (status, samplers) = await Client.Get("/sdapi/v1/samplers");
        Assert.Equal(200, status);
        Assert.Contains(samplers.EnumerateArray(), s => s.GetProperty("name").GetString() == "DPM++ 2M");
        var (_, schedulers) = await Client.Get("/sdapi/v1/schedulers");
        Assert.Equal(["automatic", "karras", "exponential"], schedulers.EnumerateArray().Select(s => s.GetProperty("name").GetString()));
        var (_, models) = await Client.Get("/sdapi/v1/sd-models");
        Assert.Equal(["tiny-a", "tiny-b"], models.EnumerateArray().Select(m => m.GetProperty("model_name").GetString()));
        Assert.Matches(@"^tiny-a \[[0-9a-f]{10}\]$", models[0].GetProperty("title").GetString());
        var (_, loras) = await Client.Get("/sdapi/v1/loras");
        Assert.Equal("detail-tweaker", Assert.Single(loras.EnumerateArray()).GetProperty("name").GetString());
        var (_, openai) = await Client.Get("/v1/models");
        Assert.Equal("list", openai.GetProperty("object").GetString());
        Assert.Equal(["tiny-a", "tiny-b"], openai.GetProperty("data").EnumerateArray().Select(m => m.GetProperty("id").GetString()));

        var (_, options) = await Client.Get("/sdapi/v1/options");
        Assert.StartsWith("tiny-a [", options.GetProperty("sd_model_checkpoint").GetString());
        try
        {
            Assert.Equal(200, (await Client.Post("/sdapi/v1/options", new { sd_model_checkpoint = "tiny-b", something_else = 1 })).Status);
            (_, options) = await Client.Get("/sdapi/v1/options");
            Assert.StartsWith("tiny-b [", options.GetProperty("sd_model_checkpoint").GetString());
            var (_, generated) = await Client.Post("/sdapi/v1/txt2img", Txt2Img(steps: 1));
            Assert.Contains("Model: tiny-b", Parameters(generated.GetProperty("images")[0]));
            var (bad, error) = await Client.Post("/sdapi/v1/options", new { sd_model_checkpoint = "nope" });
            Assert.Equal(422, bad);
            Assert.Contains("'nope' is not one of tiny-a, tiny-b", error.GetProperty("detail").GetString());

            // png-info reads back what txt2img wrote.
            var (_, info) = await Client.Post("/sdapi/v1/png-info", new { image = generated.GetProperty("images")[0].GetString() });
            Assert.Equal(Parameters(generated.GetProperty("images")[0]), info.GetProperty("info").GetString());
            Assert.Equal("a red fox in the snow", info.GetProperty("parameters").GetProperty("Prompt").GetString());
            Assert.Equal("Euler a", info.GetProperty("parameters").GetProperty("Sampler").GetString());
            Assert.Equal("64x48", info.GetProperty("parameters").GetProperty("Size").GetString());
        }
        finally
        {
            await Client.Post("/sdapi/v1/options", new { sd_model_checkpoint = "tiny-a" });
        }
    }

    [Fact]
    public async Task OpenAI_images_generations_answers_b64_json_of_the_asked_size()
    {
        var (status, body) = await Client.Post("/v1/images/generations", new { model = "dall-e-2", prompt = "a boat", n = 2, size = "64x32", response_format = "b64_json" });
        Assert.Equal(200, status);
        Assert.True(body.GetProperty("created").GetInt64() > 1_700_000_000);
        var data = body.GetProperty("data").EnumerateArray().ToList();
        Assert.Equal(2, data.Count);
        Assert.Equal((64, 32), (Png(data[1].GetProperty("b64_json")).Width, Png(data[1].GetProperty("b64_json")).Height));
        Assert.Equal(422, (await Client.Post("/v1/images/generations", new { prompt = "a boat", response_format = "url" })).Status);
        Assert.Equal(422, (await Client.Post("/v1/images/generations", new { prompt = "a boat", size = "1024" })).Status);
    }

    [Fact]
    public async Task A_job_returns_an_id_at_once_streams_progress_with_previews_and_ends_with_the_result()
    {
        var (status, job) = await Client.Post("/v1/jobs", Txt2Img(steps: 4));
        Assert.Equal(202, status);
        var id = job.GetProperty("id").GetString()!;
        Assert.Contains(job.GetProperty("status").GetString(), new[] { "queued", "running" });

        using var response = await Client.GetAsync($"/v1/jobs/{id}/events", HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
        var events = await ReadEvents(response);
        var (lastName, lastData) = events[^1];
        Assert.Equal("result", lastName);
        Assert.Equal("done", lastData.GetProperty("status").GetString());
        Assert.Equal((64, 48), (Png(lastData.GetProperty("result").GetProperty("images")[0]).Width, 48));
        var progress = events.Where(e => e.Name == "progress").Select(e => e.Data).ToList();
        Assert.NotEmpty(progress);
        foreach (var p in progress.Where(p => p.GetProperty("step").GetInt32() > 0))
        {
            Assert.Equal(4, p.GetProperty("total").GetInt32());
            Assert.True(p.GetProperty("eta_seconds").GetDouble() >= 0);
            // The preview is the latents mapped to RGB, at 1/8 of the image.
            var preview = ImageFiles.Decode(Convert.FromBase64String(p.GetProperty("preview").GetString()!["data:image/png;base64,".Length..]), "preview");
            Assert.Equal((8, 6), (preview.Width, preview.Height));
        }

        var (_, state) = await Client.Get($"/v1/jobs/{id}");
        Assert.Equal("done", state.GetProperty("status").GetString());
        Assert.Equal(4, state.GetProperty("step").GetInt32());
        Assert.Equal(1, state.GetProperty("result").GetProperty("images").GetArrayLength());
        using var png = await Client.GetAsync($"/v1/jobs/{id}/images/0");
        Assert.Equal("image/png", png.Content.Headers.ContentType!.MediaType);
        Assert.Contains("Steps: 4", ImageFiles.ReadPngText(await png.Content.ReadAsByteArrayAsync(), "png")[ImageFiles.ParametersKeyword]);
        var (_, list) = await Client.Get("/v1/jobs");
        Assert.Contains(list.EnumerateArray(), j => j.GetProperty("id").GetString() == id);
        Assert.Equal(404, (await Client.Get("/v1/jobs/nosuchjob")).Status);
        Assert.Equal(404, (await Client.Get($"/v1/jobs/{id}/images/1")).Status);
    }

    private static async Task<List<(string Name, JsonElement Data)>> ReadEvents(HttpResponseMessage response)
    {
        var text = await response.Content.ReadAsStringAsync();
        return text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(block =>
        {
            var lines = block.Split('\n');
            return (lines.First(l => l.StartsWith("event: ")).Substring(7), JsonDocument.Parse(lines.First(l => l.StartsWith("data: ")).Substring(6)).RootElement.Clone());
        }).ToList();
    }

    /// <summary>Polls A1111's progress until the running job has done a step, checking its shape meanwhile.</summary>
    private async Task WaitForAStep()
    {
        for (int i = 0; i < 2000; i++)
        {
            var (_, p) = await Client.Get("/sdapi/v1/progress");
            var state = p.GetProperty("state");
            if (state.GetProperty("sampling_step").GetInt32() >= 1)
            {
                Assert.Equal(1000, state.GetProperty("sampling_steps").GetInt32());
                Assert.InRange(p.GetProperty("progress").GetDouble(), 0.0009, 1.0);
                Assert.True(p.GetProperty("eta_relative").GetDouble() > 0);
                Assert.Equal(JsonValueKind.String, p.GetProperty("current_image").ValueKind);
                Assert.True(state.GetProperty("job_count").GetInt32() >= 1);
                return;
            }
            await Task.Delay(5);
        }
        Assert.Fail("the job never reached a step");
    }

    [Fact]
    public async Task Interrupt_answers_the_images_reached_so_far_and_delete_cancels_a_running_job()
    {
        var (idle, p) = await Client.Get("/sdapi/v1/progress");
        Assert.Equal(200, idle);
        Assert.Equal(0, p.GetProperty("state").GetProperty("sampling_steps").GetInt32());
        Assert.Equal(JsonValueKind.Null, p.GetProperty("current_image").ValueKind);

        // A1111's interrupt: the call that was generating answers 200 with the image decoded from the latents so far.
        var generating = Client.Post("/sdapi/v1/txt2img", Txt2Img(steps: 1000));
        await WaitForAStep();
        Assert.Equal(200, (await Client.Post("/sdapi/v1/interrupt", new { })).Status);
        var (status, body) = await generating;
        Assert.Equal(200, status);
        Assert.Equal((64, 48), (Png(body.GetProperty("images")[0]).Width, Png(body.GetProperty("images")[0]).Height));
        Assert.True(JsonDocument.Parse(body.GetProperty("info").GetString()!).RootElement.GetProperty("interrupted").GetBoolean());

        // DELETE stops a running job after its current step: cancelled, no result.
        var (_, job) = await Client.Post("/v1/jobs", Txt2Img(steps: 1000));
        var id = job.GetProperty("id").GetString()!;
        await WaitForAStep();
        Assert.Equal(200, (await Client.Json(HttpMethod.Delete, $"/v1/jobs/{id}")).Status);
        var state = await WaitUntilFinished(id);
        Assert.Equal("cancelled", state.GetProperty("status").GetString());
        Assert.Equal("cancelled by DELETE", state.GetProperty("detail").GetString());
        Assert.InRange(state.GetProperty("step").GetInt32(), 1, 999);
        Assert.False(state.TryGetProperty("result", out _));
    }

    private async Task<JsonElement> WaitUntilFinished(string id)
    {
        for (int i = 0; i < 2000; i++)
        {
            var (_, state) = await Client.Get($"/v1/jobs/{id}");
            if (state.GetProperty("status").GetString() is "done" or "failed" or "cancelled") return state;
            await Task.Delay(10);
        }
        throw new TimeoutException($"job {id} did not finish");
    }

    /// <summary>
    /// The worker held on a first job: 20 concurrent txt2img calls find 16 places (--max-queue 16); the other 4 get
    /// 429 at once; released, every queued one answers 200 with its own seed's image, and a waiting job can be deleted.
    /// </summary>
    [Fact]
    public async Task Twenty_concurrent_requests_are_all_answered_none_lost_and_429_only_past_max_queue()
    {
        _ = Client;
        using var hold = new ManualResetEventSlim(false);
        server.State.Queue.BeforeJob = () => hold.Wait(TimeSpan.FromSeconds(60));
        try
        {
            var (_, first) = await Client.Post("/v1/jobs", Txt2Img(steps: 1));
            var firstId = first.GetProperty("id").GetString()!;
            while (server.State.Queue.Running is null) await Task.Delay(5);

            var calls = Enumerable.Range(0, 20).Select(i => Client.Post("/sdapi/v1/txt2img", Txt2Img(seed: (ulong)(100 + i), steps: 1, width: 32, height: 32))).ToList();
            var deadline = DateTime.UtcNow.AddSeconds(20);
            while (!(server.State.Queue.Pending == 17 && calls.Count(c => c.IsCompleted) == 4) && DateTime.UtcNow < deadline) await Task.Delay(5);
            var refused = calls.Where(c => c.IsCompleted).ToList();
            Assert.Equal(4, refused.Count);
            foreach (var r in refused)
            {
                var (status, body) = await r;
                Assert.Equal(429, status);
                Assert.Equal("queue full", body.GetProperty("error").GetString());
            }
            // A job past the limit is refused too; the queue is full.
            Assert.Equal(429, (await Client.Post("/v1/jobs", Txt2Img(steps: 1))).Status);
            server.State.Queue.BeforeJob = null;
            hold.Set();

            var answers = await Task.WhenAll(calls);
            var served = answers.Where(a => a.Status == 200).ToList();
            Assert.Equal(16, served.Count);
            Assert.Equal(20, answers.Length);
            var seeds = served.Select(a => JsonDocument.Parse(a.Body.GetProperty("info").GetString()!).RootElement.GetProperty("seed").GetUInt64()).ToList();
            Assert.Equal(16, seeds.Distinct().Count());
            Assert.All(served, a => Assert.Equal((32, 32), (Png(a.Body.GetProperty("images")[0]).Width, Png(a.Body.GetProperty("images")[0]).Height)));
            Assert.Equal("done", (await WaitUntilFinished(firstId)).GetProperty("status").GetString());
        }
        finally
        {
            server.State.Queue.BeforeJob = null;
            hold.Set();
        }

        // A waiting job is cancelled by DELETE before it starts.
        using var hold2 = new ManualResetEventSlim(false);
        server.State.Queue.BeforeJob = () => hold2.Wait(TimeSpan.FromSeconds(60));
        try
        {
            var (_, a) = await Client.Post("/v1/jobs", Txt2Img(steps: 1));
            var (_, b) = await Client.Post("/v1/jobs", Txt2Img(steps: 1));
            var bid = b.GetProperty("id").GetString()!;
            var (_, deleted) = await Client.Json(HttpMethod.Delete, $"/v1/jobs/{bid}");
            Assert.Equal("cancelled", deleted.GetProperty("status").GetString());
            server.State.Queue.BeforeJob = null;
            hold2.Set();
            Assert.Equal("done", (await WaitUntilFinished(a.GetProperty("id").GetString()!)).GetProperty("status").GetString());
            Assert.Equal("cancelled", (await WaitUntilFinished(bid)).GetProperty("status").GetString());
        }
        finally
        {
            server.State.Queue.BeforeJob = null;
            hold2.Set();
        }
    }

    public static TheoryData<string, string, int, string> BadRequests() => new()
    {
        { "/sdapi/v1/txt2img", "{\"prompt\": \"a\", ", 400, "malformed JSON" },
        { "/sdapi/v1/txt2img", "[1, 2]", 400, "must be a JSON object" },
        { "/sdapi/v1/txt2img", "{\"prompt\": 5}", 400, "prompt: expected a string, got a number" },
        { "/sdapi/v1/txt2img", "{\"steps\": \"many\"}", 400, "steps: expected an integer, got a string" },
        { "/sdapi/v1/txt2img", "{\"steps\": 0}", 422, "steps 0: must be an integer from 1 to 1000" },
        { "/sdapi/v1/txt2img", "{\"width\": 100000, \"height\": 64}", 422, "width 100000: must be a multiple of 8 from 8 to 8192" },
        { "/sdapi/v1/txt2img", "{\"width\": 72, \"height\": 64, \"steps\": 1}", 422, "width 72: this model needs a multiple of 16" },
        { "/sdapi/v1/txt2img", "{\"cfg_scale\": 1000}", 422, "cfg_scale 1000: must be a number from 0 to 100" },
        { "/sdapi/v1/txt2img", "{\"batch_size\": 65}", 422, "batch_size 65" },
        { "/sdapi/v1/txt2img", "{\"sampler_name\": \"Nope\"}", 422, "sampler_name 'Nope' is unknown" },
        { "/sdapi/v1/txt2img", "{\"scheduler\": \"Sideways\"}", 422, "scheduler 'Sideways'" },
        { "/sdapi/v1/txt2img", "{\"override_settings\": {\"CLIP_stop_at_last_layers\": 13}}", 422, "CLIP_stop_at_last_layers 13: must be an integer from 1 to 12" },
        { "/sdapi/v1/txt2img", "{\"prompt\": \"x <lora:nope:1>\", \"steps\": 1, \"width\": 32, \"height\": 32}", 422, "<lora:nope>: no nope.safetensors, nope.ckpt or nope.pt in --lora-dir" },
        { "/sdapi/v1/txt2img", "{\"prompt\": \"x <lora:detail-tweaker:0.5>\", \"steps\": 1, \"width\": 32, \"height\": 32}", 422, "detail-tweaker.safetensors" },
        { "/sdapi/v1/txt2img", "{\"prompt\": \"x <lora::1>\"}", 422, "the tag names no LoRA" },
        { "/sdapi/v1/img2img", "{\"init_images\": [\"!!!not base64!!!\"]}", 400, "init_images[0]: not valid base64" },
        { "/sdapi/v1/img2img", "{\"init_images\": [\"aGVsbG8gd29ybGQ=\"]}", 422, "init_images[0]: not a PNG, JPEG, BMP or WebP image" },
        { "/sdapi/v1/img2img", "{\"init_images\": []}", 422, "init_images: img2img needs one image" },
        { "/sdapi/v1/png-info", "{\"image\": 3}", 400, "image: expected a base64 string" },
        { "/v1/images/generations", "{\"n\": 1}", 422, "prompt: required" },
    };

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task Bad_input_is_a_json_4xx_naming_the_problem_and_the_server_keeps_serving(string path, string body, int status, string detail)
    {
        var (code, error) = await Client.Json(HttpMethod.Post, path, body);
        Assert.Equal(status, code);
        Assert.Contains(detail, error.GetProperty("error").GetString() + ": " + error.GetProperty("detail").GetString());
        Assert.DoesNotContain("   at ", error.GetRawText());
        Assert.Equal(200, (await Client.Get("/sdapi/v1/options")).Status);
    }

    [Fact]
    public async Task Oversized_bodies_huge_images_and_unknown_paths_are_refused()
    {
        var big = "{\"prompt\": \"" + new string('a', 5 << 20) + "\"}";
        var (code, error) = await Client.Json(HttpMethod.Post, "/sdapi/v1/txt2img", big);
        Assert.Equal(413, code);
        Assert.Equal("body too large", error.GetProperty("error").GetString());

        // A PNG whose header declares 5000x5000 is refused before its pixels are decoded.
        var header = ImageFiles.EncodePng(new RgbImage(1, 1, [0, 0, 0]), null);
        header[16] = 0; header[17] = 0; header[18] = 0x13; header[19] = 0x88; // IHDR width and height 5000
        header[20] = 0; header[21] = 0; header[22] = 0x13; header[23] = 0x88;
        uint crc = Crc32(header.AsSpan(12, 17)); // the chunk type and data
        header[29] = (byte)(crc >> 24); header[30] = (byte)(crc >> 16); header[31] = (byte)(crc >> 8); header[32] = (byte)crc;
        (code, error) = await Client.Post("/sdapi/v1/img2img", new { init_images = new[] { Convert.ToBase64String(header) } });
        Assert.Equal(422, code);
        Assert.Equal("init_images[0]: 5000x5000 PNG image is larger than 16,777,216 pixels", error.GetProperty("detail").GetString());

        (code, error) = await Client.Get("/sdapi/v1/nothing-here");
        Assert.Equal(404, code);
        Assert.Equal("not found", error.GetProperty("error").GetString());
        Assert.Equal(200, (await Client.Get("/sdapi/v1/samplers")).Status);
        Assert.Matches(@"sd serve: POST /sdapi/v1/txt2img 413 [0-9.]+ ms", server.Log.ToString());
        Assert.Matches(@"sd serve: job [0-9a-f]{16} txt2img done in [0-9.]+ s", server.Log.ToString());
    }

    private static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFF;
        foreach (var b in data)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
        }
        return ~c;
    }

    [Fact]
    public async Task The_page_and_its_assets_are_served_from_the_assembly()
    {
        using var page = await Client.GetAsync("/");
        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        Assert.Equal("text/html", page.Content.Headers.ContentType!.MediaType);
        var html = await page.Content.ReadAsStringAsync();
        foreach (var id in new[] { "prompt", "negative", "width", "height", "steps", "sampler", "scheduler", "cfg", "seed", "batch", "model", "lora", "init", "mask", "progress", "gallery", "generate" })
            Assert.Contains($"id=\"{id}\"", html);
        Assert.Contains("/v1/jobs", await Client.GetStringAsync("/app.js"));
        Assert.Equal(200, (int)(await Client.GetAsync("/style.css")).StatusCode);
    }
}
