using System.Text;
using System.Text.Json;
using StableDiffusion.IO.Tests.Support;

namespace StableDiffusion.IO.Tests;

public sealed class HubClientTests : IDisposable
{
    private const string RepoId = "test-org/tiny-sd";
    private readonly FakeHub hub = new();
    private readonly TempDir cache = new();
    private readonly FakeHub.Repo repo;

    public HubClientTests() => repo = hub.Add(RepoId, TinyPipeline(), IsLfs);

    public void Dispose()
    {
        hub.Dispose();
        cache.Dispose();
    }

    private static bool IsLfs(string path) => path.EndsWith(".safetensors") || path.EndsWith(".bin") || path.EndsWith(".ckpt");

    private static byte[] Safetensors(params SafetensorsEntry[] entries)
    {
        using var dir = new TempDir();
        var path = dir.File("x.safetensors");
        SafetensorsWriter.Write(path, entries);
        return File.ReadAllBytes(path);
    }

    private static byte[] Json(string s) => Encoding.UTF8.GetBytes(s);

    /// <summary>A diffusers repository with a small SD1-shaped model and the files a pipeline does not need.</summary>
    private static Dictionary<string, byte[]> TinyPipeline()
    {
        var rng = new Random(3);
        var big = new byte[3 << 20]; // a few MB so downloads take several reads
        rng.NextBytes(big);
        SafetensorsEntry Unet(WeightDType t) => new("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", t, [4, 768]);
        return new()
        {
            ["model_index.json"] = Json("""{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"]}"""),
            ["scheduler/scheduler_config.json"] = Json("""{"_class_name": "PNDMScheduler"}"""),
            ["tokenizer/vocab.json"] = Json("{}"),
            ["tokenizer/merges.txt"] = Json("#version: 0.2\n"),
            ["tokenizer/tokenizer_config.json"] = Json("{}"),
            ["unet/config.json"] = Json("""{"_class_name": "UNet2DConditionModel"}"""),
            ["unet/diffusion_pytorch_model.safetensors"] = Safetensors(Unet(WeightDType.F32)),
            ["unet/diffusion_pytorch_model.fp16.safetensors"] = Safetensors(Unet(WeightDType.F16), SafetensorsEntry.FromBytes("conv_in.weight", WeightDType.F16, [big.Length / 2], big)),
            ["unet/diffusion_pytorch_model.bin"] = [1, 2, 3],
            ["vae/config.json"] = Json("""{"_class_name": "AutoencoderKL"}"""),
            ["vae/diffusion_pytorch_model.safetensors"] = Safetensors(new SafetensorsEntry("decoder.conv_in.weight", WeightDType.F32, [512, 4, 3, 3])),
            ["vae/diffusion_pytorch_model.fp16.safetensors"] = Safetensors(new SafetensorsEntry("decoder.conv_in.weight", WeightDType.F16, [512, 4, 3, 3])),
            ["text_encoder/config.json"] = Json("""{"architectures": ["CLIPTextModel"]}"""),
            ["text_encoder/model.safetensors"] = Safetensors(new SafetensorsEntry("text_model.final_layer_norm.weight", WeightDType.F32, [768])),
            ["text_encoder/model.fp16.safetensors"] = Safetensors(new SafetensorsEntry("text_model.final_layer_norm.weight", WeightDType.F16, [768]), new SafetensorsEntry("text_model.embeddings.position_ids", WeightDType.I64, [1, 77])),
            ["safety_checker/model.safetensors"] = [9, 9, 9],
            ["feature_extractor/preprocessor_config.json"] = Json("{}"),
            ["v1-5-pruned.ckpt"] = [7, 7],
            ["README.md"] = Json("# tiny"),
        };
    }

    private static readonly string[] Fp16Pipeline =
    [
        "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
        "tokenizer/merges.txt", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
    ];

    private HubClient Client(string? token = null, bool offline = false, string? endpoint = null) =>
        new(new HubOptions(endpoint ?? hub.Endpoint, cache.Path, token, offline));

    private async Task<string> Download(string? token = null, string revision = "main", string? variant = "fp16", IProgress<HubProgress>? progress = null)
    {
        using var c = Client(token);
        return await c.DownloadModelAsync(RepoId, revision, variant, progress);
    }

    private static async Task<string> Refused(Func<Task> action) => (await Assert.ThrowsAsync<WeightsException>(action)).Message;

    private static List<string> FilesUnder(string dir) =>
        [.. Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(dir, f).Replace('\\', '/')).Order(StringComparer.Ordinal)];

    private List<FakeHub.Request> FileRequests() => [.. hub.Requests.Where(r => !r.Path.StartsWith("/api/"))];

    [Fact]
    public async Task FetchesOnlyThePipelineFilesIntoTheHubCacheLayout()
    {
        var reports = new List<HubProgress>();
        var snapshot = await Download(progress: new SyncProgress(reports));
        var repoDir = Path.Combine(cache.Path, "models--test-org--tiny-sd");
        Assert.Equal(Path.Combine(repoDir, "snapshots", repo.Sha), snapshot);
        Assert.Equal(repo.Sha, File.ReadAllText(Path.Combine(repoDir, "refs", "main")));
        Assert.Equal(Fp16Pipeline, FilesUnder(snapshot));
        foreach (var f in Fp16Pipeline)
        {
            var link = new FileInfo(Path.Combine(snapshot, f));
            var data = repo.Files[f];
            // A relative symlink into blobs/, named by sha256 for LFS files and by git blob id otherwise.
            var blob = IsLfs(f) ? FakeHub.Sha256(data) : FakeHub.GitBlobId(data);
            Assert.Equal(string.Concat(Enumerable.Repeat("../", f.Count(c => c == '/') + 2)) + "blobs/" + blob, link.LinkTarget);
            Assert.Equal(data, File.ReadAllBytes(link.FullName));
        }
        Assert.Empty(Directory.GetFiles(Path.Combine(repoDir, "blobs"), "*.incomplete"));
        // Equal contents share one blob, fetched once.
        Assert.Equal(new FileInfo(Path.Combine(snapshot, "tokenizer/vocab.json")).LinkTarget, new FileInfo(Path.Combine(snapshot, "tokenizer/tokenizer_config.json")).LinkTarget);
        Assert.Single(FileRequests(), r => r.Path.EndsWith("tokenizer/vocab.json") || r.Path.EndsWith("tokenizer/tokenizer_config.json"));
        Assert.DoesNotContain(FileRequests(), r => r.Path.Contains("safety_checker") || r.Path.EndsWith(".ckpt") || r.Path.EndsWith(".bin") ||
                                                   r.Path.EndsWith("diffusion_pytorch_model.safetensors") || r.Path.Contains("README"));
        // LFS content came from the CDN host.
        Assert.Contains(FileRequests(), r => r.Host == "127.0.0.2" && r.Path.EndsWith("unet/diffusion_pytorch_model.fp16.safetensors"));
        var last = reports.Last(r => r.File == "unet/diffusion_pytorch_model.fp16.safetensors");
        Assert.Equal(repo.Files[last.File].Length, last.Done);
        Assert.Equal(last.Total, last.Done);

        using var model = ModelSource.Open(snapshot);
        Assert.Equal(ModelFamily.Sd1, model.Family);
        Assert.Equal("diffusers", model.Format);
        Assert.Equal(WeightDType.F16, model.Component("unet")!.Find("conv_in.weight")!.DType);
    }

    [Fact]
    public async Task ASecondDownloadAndAPythonMadeCacheFetchNothing()
    {
        var first = await Download();
        int files = FileRequests().Count;
        Assert.True(files >= Fp16Pipeline.Length - 1); // two tokenizer files share one blob
        Assert.Equal(first, await Download());
        Assert.Equal(files, FileRequests().Count);

        // A cache laid out by huggingface_hub: blobs by etag, relative snapshot links, refs/main.
        var repoDir = Path.Combine(cache.Path, "models--test-org--other");
        var other = hub.Add("test-org/other", TinyPipeline(), IsLfs);
        foreach (var f in Fp16Pipeline)
        {
            var blob = Path.Combine(repoDir, "blobs", IsLfs(f) ? FakeHub.Sha256(other.Files[f]) : FakeHub.GitBlobId(other.Files[f]));
            Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
            File.WriteAllBytes(blob, other.Files[f]);
            var link = Path.Combine(repoDir, "snapshots", other.Sha, f);
            Directory.CreateDirectory(Path.GetDirectoryName(link)!);
            File.CreateSymbolicLink(link, Path.GetRelativePath(Path.GetDirectoryName(link)!, blob));
        }
        using var c = Client();
        var snapshot = await c.DownloadModelAsync("test-org/other", "main", "fp16");
        Assert.Equal(Path.Combine(repoDir, "snapshots", other.Sha), snapshot);
        Assert.Equal(files, FileRequests().Count);
    }

    [Fact]
    public async Task ABrokenDownloadResumesWithARangeRequest()
    {
        const string file = "unet/diffusion_pytorch_model.fp16.safetensors";
        repo.CutAfter[file] = 1 << 20;
        var msg = await Refused(() => Download());
        Assert.Contains($"'{file}'", msg);
        Assert.Contains("run again to resume", msg);
        var partial = Path.Combine(cache.Path, "models--test-org--tiny-sd", "blobs", FakeHub.Sha256(repo.Files[file]) + ".incomplete");
        long have = new FileInfo(partial).Length;
        Assert.InRange(have, 1, repo.Files[file].Length - 1);

        var snapshot = await Download();
        var resumed = FileRequests().Last(r => r.Path.EndsWith(file));
        Assert.Equal($"bytes={have}-", resumed.Range);
        Assert.Equal(repo.Files[file], File.ReadAllBytes(Path.Combine(snapshot, file)));
        Assert.False(File.Exists(partial));
    }

    [Fact]
    public async Task ContentWithTheWrongSha256IsDiscarded()
    {
        const string file = "vae/diffusion_pytorch_model.fp16.safetensors";
        var wrong = (byte[])repo.Files[file].Clone();
        wrong[^1] ^= 1;
        repo.Serve[file] = wrong;
        var msg = await Refused(() => Download());
        Assert.Contains("sha256", msg);
        Assert.Contains($"'{file}'", msg);
        Assert.Contains(FakeHub.Sha256(repo.Files[file]), msg);
        var blobs = Path.Combine(cache.Path, "models--test-org--tiny-sd", "blobs");
        Assert.False(File.Exists(Path.Combine(blobs, FakeHub.Sha256(repo.Files[file]))));
        Assert.Empty(Directory.GetFiles(blobs, "*.incomplete"));
        Assert.False(File.Exists(Path.Combine(cache.Path, "models--test-org--tiny-sd", "snapshots", repo.Sha, file)));

        repo.Serve[file] = repo.Files[file][..100];
        Assert.Contains("arrived with 100 bytes", await Refused(() => Download()));
    }

    [Fact]
    public async Task OfflineModeUsesOnlyTheCache()
    {
        var snapshot = await Download();
        int before = hub.Requests.Count;
        using (var offline = Client(offline: true, endpoint: "http://127.0.0.1:1"))
        {
            Assert.Equal(snapshot, await offline.DownloadModelAsync(RepoId, "main", "fp16"));
            Assert.Equal(snapshot, await offline.DownloadModelAsync(RepoId, repo.Sha, "fp16"));
            var msg = (await Assert.ThrowsAsync<WeightsException>(() => offline.DownloadModelAsync("test-org/never-fetched"))).Message;
            Assert.Contains("HF_HUB_OFFLINE=1", msg);
            Assert.Contains("not in the cache", msg);
        }
        Assert.Equal(before, hub.Requests.Count);

        // Online but unreachable: a cached snapshot still serves, an uncached repository is a clear error.
        using var down = Client(endpoint: "http://127.0.0.1:1");
        Assert.Equal(snapshot, await down.DownloadModelAsync(RepoId, "main", "fp16"));
        Assert.Contains("cannot reach http://127.0.0.1:1", (await Assert.ThrowsAsync<WeightsException>(() => down.DownloadModelAsync("test-org/never-fetched"))).Message);
    }

    [Fact]
    public async Task GatedRepositoriesNeedTheTokenWhichNeverLeavesTheHub()
    {
        repo.Token = "hf_secret";
        var msg = await Refused(() => Download());
        Assert.Contains("HTTP 401", msg);
        Assert.Contains("set HF_TOKEN", msg);
        Assert.Contains("denied", await Refused(() => Download(token: "hf_wrong")));

        int before = hub.Requests.Count;
        await Download(token: "hf_secret");
        var requests = hub.Requests.Skip(before).ToList();
        Assert.All(requests.Where(r => r.Host == "127.0.0.1" && r.Authorization is not null), r => Assert.Equal("Bearer hf_secret", r.Authorization));
        Assert.Contains(requests, r => r.Host == "127.0.0.2");
        Assert.All(requests.Where(r => r.Host == "127.0.0.2"), r => Assert.Null(r.Authorization));
    }

    [Fact]
    public async Task NotFoundAnswersNameWhatIsMissing()
    {
        using var c = Client();
        var msg = (await Assert.ThrowsAsync<WeightsException>(() => c.DownloadModelAsync("test-org/nope"))).Message;
        Assert.Contains("test-org/nope", msg);
        Assert.Contains("HTTP 404", msg);
        Assert.Contains("revision 'v9'", await Refused(() => Download(revision: "v9")));

        repo.Missing.Add("vae/config.json");
        msg = await Refused(() => Download());
        Assert.Contains("file 'vae/config.json' not found", msg);

        var bare = hub.Add("test-org/not-diffusers", new() { ["model.safetensors"] = [1] }, IsLfs);
        Assert.Contains("no model_index.json", (await Assert.ThrowsAsync<WeightsException>(() => c.DownloadModelAsync("test-org/not-diffusers"))).Message);
        await Assert.ThrowsAsync<UsageException>(() => c.DownloadModelAsync("../etc"));
    }

    [Fact]
    public async Task SingleFilesOfAnyRepositoryCanBeFetched()
    {
        hub.Add("openai/clip-vit-large-patch14", new()
        {
            ["vocab.json"] = Json("""{"a": 0}"""),
            ["merges.txt"] = Json("#version: 0.2\na b\n"),
            ["pytorch_model.bin"] = [1, 2, 3],
        }, IsLfs);
        using var c = Client();
        var dir = await c.DownloadFilesAsync("openai/clip-vit-large-patch14", ["vocab.json", "merges.txt"]);
        Assert.Equal(["merges.txt", "vocab.json"], FilesUnder(dir));
        Assert.DoesNotContain(hub.Requests, r => r.Path.EndsWith("pytorch_model.bin"));
        Assert.Contains("no file 'tokenizer.json'", await Refused(() => c.DownloadFilesAsync("openai/clip-vit-large-patch14", ["tokenizer.json"])));
        using var offline = Client(offline: true);
        Assert.Equal(dir, await offline.DownloadFilesAsync("openai/clip-vit-large-patch14", ["vocab.json"]));
        await Assert.ThrowsAsync<UsageException>(() => c.DownloadModelAsync(RepoId, "../../escape"));
    }

    [Fact]
    public async Task WithoutAVariantTheFullPrecisionFilesAreFetched()
    {
        var snapshot = await Download(variant: null);
        Assert.Contains("unet/diffusion_pytorch_model.safetensors", FilesUnder(snapshot));
        Assert.DoesNotContain("unet/diffusion_pytorch_model.fp16.safetensors", FilesUnder(snapshot));
    }

    [Fact]
    public void OptionsComeFromTheUsualEnvironmentVariables()
    {
        using var dir = new TempDir();
        File.WriteAllText(Path.Combine(dir.Path, "token"), "hf_fromfile\n");
        var env = new Dictionary<string, string> { ["HF_HOME"] = dir.Path, ["HF_HUB_OFFLINE"] = "1" };
        var o = HubOptions.FromEnvironment(env.GetValueOrDefault);
        Assert.Equal("https://huggingface.co", o.Endpoint);
        Assert.Equal(Path.Combine(dir.Path, "hub"), o.CacheDir);
        Assert.Equal("hf_fromfile", o.Token);
        Assert.True(o.Offline);

        env["HF_TOKEN"] = "hf_env";
        env["HF_HUB_CACHE"] = "/elsewhere";
        env["HF_ENDPOINT"] = "http://mirror.example/";
        env["HF_HUB_OFFLINE"] = "0";
        o = HubOptions.FromEnvironment(env.GetValueOrDefault);
        Assert.Equal(("http://mirror.example", "/elsewhere", "hf_env", false), (o.Endpoint, o.CacheDir, o.Token, o.Offline));
        Assert.EndsWith(Path.Combine(".cache", "huggingface", "hub"), HubOptions.FromEnvironment(_ => null).CacheDir);
    }

    [Fact]
    public async Task SdInfoFetchesAHubIdThroughTheEnvironment()
    {
        var saved = new[] { "HF_ENDPOINT", "HF_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE" }.ToDictionary(v => v, Environment.GetEnvironmentVariable);
        try
        {
            Environment.SetEnvironmentVariable("HF_ENDPOINT", hub.Endpoint);
            Environment.SetEnvironmentVariable("HF_HUB_CACHE", cache.Path);
            Environment.SetEnvironmentVariable("HF_TOKEN", null);
            Environment.SetEnvironmentVariable("HF_HUB_OFFLINE", null);
            var (code, stdout, stderr) = InfoCommandTests.Sd("info", RepoId, "--variant", "fp16", "--json");
            Assert.True(code == 0, stderr);
            Assert.Contains("sd: downloading unet/diffusion_pytorch_model.fp16.safetensors", stderr);
            var info = JsonDocument.Parse(stdout).RootElement;
            Assert.Equal("diffusers", info.GetProperty("format").GetString());
            Assert.Equal("sd1", info.GetProperty("family").GetString());
            Assert.Equal(1, info.GetProperty("components").GetProperty("text_encoder").GetProperty("tensors").GetInt32());

            Environment.SetEnvironmentVariable("HF_HUB_OFFLINE", "1");
            (code, _, stderr) = InfoCommandTests.Sd("info", "test-org/absent");
            Assert.Equal(1, code);
            Assert.Matches("^sd: error: test-org/absent: HF_HUB_OFFLINE=1 is set and revision 'main' is not in the cache at .*\n$", stderr);
        }
        finally
        {
            foreach (var (k, v) in saved) Environment.SetEnvironmentVariable(k, v);
        }
    }

    private sealed class SyncProgress(List<HubProgress> list) : IProgress<HubProgress>
    {
        public void Report(HubProgress value) => list.Add(value);
    }
}
