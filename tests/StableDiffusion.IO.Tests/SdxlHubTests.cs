using System.Text;
using StableDiffusion.IO.Tests.Support;

namespace StableDiffusion.IO.Tests;

/// <summary>
/// Hub downloads for SDXL: from a fake hub holding stable-diffusion-xl-base-1.0's real file list (every LFS file of the
/// repository, with placeholder contents, and its real small config files), only the files an SDXL pipeline needs
/// are fetched; a VAE repository laid out like madebyollin/sdxl-vae-fp16-fix gives its config.json and one weight file.
/// </summary>
public sealed class SdxlHubTests : IDisposable
{
    private readonly FakeHub hub = new();
    private readonly TempDir cache = new();

    public void Dispose()
    {
        hub.Dispose();
        cache.Dispose();
    }

    private static bool IsLfs(string path) => !path.EndsWith(".json", StringComparison.Ordinal) && !path.EndsWith(".txt", StringComparison.Ordinal) && !path.EndsWith(".md", StringComparison.Ordinal);

    private HubClient Client() => new(new HubOptions(hub.Endpoint, cache.Path, null, false));

    private static List<string> FilesUnder(string dir) =>
        [.. Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(dir, f).Replace('\\', '/')).Order(StringComparer.Ordinal)];

    private List<string> Fetched() => [.. hub.Requests.Where(r => !r.Path.StartsWith("/api/", StringComparison.Ordinal)).Select(r => r.Path)];

    [SkippableFact]
    public async Task Sdxl_base_fetches_only_the_pipeline_files_with_fp16_variants()
    {
        const string mirror = "HDRJ-One+stable-diffusion-xl-base-1.0";
        var files = new Dictionary<string, byte[]>();
        foreach (var key in Reference.RealFileSizes().Keys.Where(k => k.StartsWith(mirror + "/", StringComparison.Ordinal)))
        {
            var path = key[(mirror.Length + 1)..];
            files[path] = Encoding.UTF8.GetBytes("placeholder " + path); // contents do not matter for the choice
        }
        Assert.Contains("text_encoder_2/model.fp16.safetensors", files.Keys);
        var configs = Reference.Require("configs", "sdxl-base");
        foreach (var f in Directory.EnumerateFiles(configs, "*", SearchOption.AllDirectories))
            files[Path.GetRelativePath(configs, f).Replace('\\', '/')] = File.ReadAllBytes(f);
        files["vae_1_0/config.json"] = files["vae/config.json"];
        files["README.md"] = "# sdxl"u8.ToArray();
        hub.Add("stabilityai/stable-diffusion-xl-base-1.0", files, IsLfs);

        using var c = Client();
        var snapshot = await c.DownloadModelAsync("stabilityai/stable-diffusion-xl-base-1.0", "main", "fp16");
        string[] want =
        [
            "model_index.json", "scheduler/scheduler_config.json",
            "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
            "text_encoder_2/config.json", "text_encoder_2/model.fp16.safetensors",
            "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
            "tokenizer_2/special_tokens_map.json", "tokenizer_2/tokenizer_config.json",
            "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
        ];
        Assert.Equal(want, FilesUnder(snapshot));
        Assert.DoesNotContain(Fetched(), p => p.Contains("sd_xl_") || p.Contains("onnx") || p.Contains("openvino") || p.Contains("msgpack") ||
                                              p.Contains("vae_1_0") || p.Contains("vae_decoder") || p.Contains(".png"));

        // Without a variant: the full-precision files, still only the pipeline's.
        var full = await c.DownloadModelAsync("stabilityai/stable-diffusion-xl-base-1.0", "main", null);
        Assert.Contains("text_encoder_2/model.safetensors", FilesUnder(full));
    }

    [Fact]
    public async Task A_vae_repository_gives_its_config_and_one_weight_file()
    {
        hub.Add("madebyollin/sdxl-vae-fp16-fix", new()
        {
            ["config.json"] = """{"_class_name": "AutoencoderKL", "force_upcast": false, "scaling_factor": 0.13025}"""u8.ToArray(),
            ["diffusion_pytorch_model.safetensors"] = [1, 2, 3],
            ["diffusion_pytorch_model.bin"] = [4, 5],
            ["sdxl_vae.safetensors"] = [6],
            ["README.md"] = "# vae"u8.ToArray(),
        }, IsLfs);
        using var c = Client();
        var dir = await c.DownloadVaeAsync("madebyollin/sdxl-vae-fp16-fix");
        Assert.Equal(["config.json", "diffusion_pytorch_model.safetensors"], FilesUnder(dir));

        // A pipeline repository: its vae/.
        hub.Add("org/pipeline", new()
        {
            ["model_index.json"] = "{}"u8.ToArray(),
            ["vae/config.json"] = "{}"u8.ToArray(),
            ["vae/diffusion_pytorch_model.fp16.safetensors"] = [7],
            ["unet/diffusion_pytorch_model.safetensors"] = [8],
        }, IsLfs);
        Assert.Equal(["vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors"], FilesUnder(await c.DownloadVaeAsync("org/pipeline")));

        hub.Add("org/no-vae", new() { ["model.safetensors"] = [1] }, IsLfs);
        var e = await Assert.ThrowsAsync<WeightsException>(() => c.DownloadVaeAsync("org/no-vae"));
        Assert.Contains("org/no-vae: no VAE", e.Message);
    }
}
