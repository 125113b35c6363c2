using System.Net.Http.Headers;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.TestHost;

namespace StableDiffusion.Server.Tests;

/// <summary>Authentication, CORS, the listen address rule, and a graceful stop with a job running.</summary>
[Collection(ServerCollection.Name)]
public sealed class SecurityTests(ServerFixture server)
{
    private async Task<T> With<T>(ServerOptions options, Func<HttpClient, WebApplication, Task<T>> test)
    {
        server.RequireModels();
        var app = ServerFixture.StartTestServer(options, new StringWriter());
        try
        {
            using var client = app.GetTestClient();
            return await test(client, app);
        }
        finally
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }

    [Fact]
    public async Task An_api_key_is_required_as_a_bearer_token_except_for_the_page()
    {
        await With(server.Options() with { Listen = "0.0.0.0:0", ApiKey = "s3cret-key" }, async (client, _) =>
        {
            var (status, body) = await client.Get("/sdapi/v1/options");
            Assert.Equal(401, status);
            Assert.Equal("unauthorized", body.GetProperty("error").GetString());
            client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "wrong-key!");
            Assert.Equal(401, (await client.Get("/sdapi/v1/options")).Status);
            client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "s3cret-key");
            Assert.Equal(200, (await client.Get("/sdapi/v1/options")).Status);
            client.DefaultRequestHeaders.Authorization = null;
            Assert.Equal(200, (int)(await client.GetAsync("/")).StatusCode);
            return 0;
        });
    }

    [Fact]
    public async Task Basic_credentials_work_as_a1111s_api_auth()
    {
        await With(server.Options() with { Listen = "0.0.0.0:0", ApiAuth = "user:pass" }, async (client, _) =>
        {
            using var response = await client.GetAsync("/sdapi/v1/samplers");
            Assert.Equal(401, (int)response.StatusCode);
            Assert.Equal("Basic", response.Headers.WwwAuthenticate.Single().Scheme);
            client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes("user:pass")));
            Assert.Equal(200, (await client.Get("/sdapi/v1/samplers")).Status);
            return 0;
        });
    }

    [Fact]
    public void A_non_loopback_address_without_credentials_is_refused()
    {
        server.RequireModels();
        var e = Assert.Throws<UsageException>(() => ServerApp.Create(server.Options() with { Listen = "0.0.0.0:7860" }, new StringWriter()));
        Assert.Contains("give --api-key KEY", e.Message);
        var (o, err) = (new StringWriter(), new StringWriter());
        Assert.Equal(2, Cli.Cli.Run(["serve", "--model", server.ModelPath, "--listen", "0.0.0.0:7860"], o, err));
        Assert.Contains("sd: error: --listen 0.0.0.0:7860 is reachable from other machines", err.ToString());
        Assert.Equal(2, Cli.Cli.Run(["serve", "--model", server.ModelPath, "--listen", "nowhere"], o, err));
        Assert.Equal(2, Cli.Cli.Run(["serve", "--model", server.ModelPath, "--max-queue", "-3"], o, err));
    }

    [Fact]
    public async Task Cors_headers_only_with_cors_origin()
    {
        async Task<string?> AllowOrigin(HttpClient client)
        {
            using var request = new HttpRequestMessage(HttpMethod.Options, "/sdapi/v1/txt2img");
            request.Headers.Add("Origin", "https://ui.example");
            request.Headers.Add("Access-Control-Request-Method", "POST");
            using var response = await client.SendAsync(request);
            return response.Headers.TryGetValues("Access-Control-Allow-Origin", out var v) ? v.Single() : null;
        }
        Assert.Null(await AllowOrigin(server.Client));
        Assert.Equal("https://ui.example", await With(server.Options() with { CorsOrigin = "https://ui.example" }, (client, _) => AllowOrigin(client)));
    }

    [Fact]
    public async Task Stopping_cancels_the_running_job_and_answers_its_caller()
    {
        server.RequireModels();
        var app = ServerFixture.StartTestServer(server.Options(), new StringWriter());
        using var client = app.GetTestClient();
        var generating = client.Post("/sdapi/v1/txt2img", new { prompt = "x", steps = 1000, width = 32, height = 32 });
        var state = (ServerState)app.Services.GetService(typeof(ServerState))!;
        while (state.Queue.Running is not { Step: > 0 }) await Task.Delay(5);
        var job = state.Queue.Running!;
        await app.StopAsync();
        Assert.Equal(JobStatus.Cancelled, job.Status);
        Assert.InRange(job.Step, 1, 999);
        var (status, body) = await generating;
        Assert.Equal(409, status);
        Assert.Equal("cancelled", body.GetProperty("error").GetString());
        Assert.Equal("the server is stopping", body.GetProperty("detail").GetString());
        await app.DisposeAsync();
    }
}
