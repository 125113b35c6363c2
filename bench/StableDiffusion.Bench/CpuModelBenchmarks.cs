using BenchmarkDotNet.Attributes;
using StableDiffusion.IO;
using StableDiffusion.Kernels.Cpu;
using StableDiffusion.Models;
using StableDiffusion.Models.Unet;
using StableDiffusion.Pipelines;
using StableDiffusion.Runtime;
using StableDiffusion.Schedulers;
using StableDiffusion.TestSupport.Torch;
using TorchSharp;
using static TorchSharp.torch;
using DeviceTensor = StableDiffusion.Runtime.Tensor;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.Bench;

/// <summary>
/// SD1.5 at full size, random fp32 weights, on the C# CPU backend against the same graph in libtorch (TorchSharp:
/// the reference UNet/CLIP/VAE of the tests run in float32 with fused SDPA attention, NCHW as diffusers runs it), same
/// thread count on both sides: one UNet step (batch 2: guidance, 64×64 latent, 77 tokens) and whole 20-step Euler
/// generations with guidance (text encoder, 20 UNet steps, VAE decode). The model is written once with
/// <see cref="RandomModel"/> (CLIP's vocabulary from ../shared/reference), and both sides keep their weights loaded
/// (ours packed) across iterations, as a server would.
/// </summary>
public abstract class CpuSd15Benchmarks
{
    public static int Threads { get; set; } = Environment.ProcessorCount;

    protected const int Steps = 20;
    protected const float Guidance = 7.5f;
    private string dir = "";

    // One random model per process, shared by every benchmark case (each case sets up and cleans up on its own).
    private static readonly Lazy<string> ModelDir = new(() =>
    {
        var d = Path.Combine(Path.GetTempPath(), $"sd-bench-sd15-{Environment.ProcessId}");
        if (Directory.Exists(d)) Directory.Delete(d, recursive: true);
        RandomModel.Write(Presets.Sd15, RandomModelFormat.Diffusers, WeightDType.F32, 1, d);
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try
            {
                Directory.Delete(d, recursive: true);
            }
            catch (IOException) { }
        };
        return d;
    });
    private ComputeDevice? device;
    protected CpuOps? ops;
    private ModelSource? source;
    protected StableDiffusionPipeline? pipeline;
    protected UNet2DConditionModel? unet;
    protected DeviceTensor? x, t, ctx;
    private Dictionary<string, TorchTensor> unetW = [], vaeW = [], clipW = [];
    protected TorchUNet? torchUnet;
    protected TorchVae? torchVae;
    protected TorchClip? torchClip;
    protected TorchTensor? tx, tctx;
    protected IScheduler? euler;

    private static readonly UNetSpec Sd15 = new()
    {
        Channels = [320, 640, 1280, 1280], CrossAttn = [true, true, true, false], Heads = [8], CrossAttentionDim = 768,
        Groups = 32, LayersPerBlock = 2,
    };

    /// <summary>Writes the model (once per process), opens the CPU device, loads what <paramref name="side"/> times.</summary>
    protected string Side { get; private set; } = "both";

    protected void Setup(string side)
    {
        Side = side;
        CpuParallel.Threads = Threads;
        torch.set_num_threads(Threads);
        dir = ModelDir.Value;
        var vocab = Path.Combine(RepoRoot(), "..", "shared", "reference", "configs", "sd15", "tokenizer");
        foreach (var f in new[] { "vocab.json", "merges.txt" })
        {
            var from = Path.Combine(vocab, f);
            if (!File.Exists(from)) throw new FileNotFoundException($"the model benchmarks need CLIP's {f} from ../shared/reference", from);
            File.Copy(from, Path.Combine(dir, "tokenizer", f), overwrite: true);
        }

        device = ComputeDevice.OpenCpu();
        ops = new CpuOps(device);
        source = ModelSource.Open(dir);
        Prepare(source, side);
        // The weights' host copies made on the way into libtorch are garbage now; a 512² run needs that memory.
        GC.Collect();
        GC.WaitForPendingFinalizers();
        Warm();
    }

    /// <summary>Loads what this class times, on both sides.</summary>
    protected abstract void Prepare(ModelSource source, string side);

    protected void PrepareStep(ModelSource source)
    {
        unet = new UNet2DConditionModel(Presets.Sd15.Unet());
        unet.Load(source.Require("unet"), ops!, DType.F32);
        var rng = new Random(3);
        float[] R(long n) => Enumerable.Range(0, (int)n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var xs = R(2 * 64 * 64 * 4);
        var cs = R(2 * 77 * 768);
        x = DeviceTensor.FromArray(ops!.Device, xs, DType.F32, 2, 64, 64, 4);
        t = DeviceTensor.FromArray(ops.Device, [801f, 801f], DType.F32, 2);
        ctx = DeviceTensor.FromArray(ops.Device, cs, DType.F32, 2, 77, 768);
        unetW = Load(source.Require("unet"));
        torchUnet = new TorchUNet(Sd15, n => unetW[n]) { DType = ScalarType.Float32, UseSdpa = true };
        tx = torch.tensor(xs, [2, 64, 64, 4]).permute(0, 3, 1, 2).contiguous();
        tctx = torch.tensor(cs, [2, 77, 768]);
    }

    /// <summary>
    /// One side's generation models only: both sides in one process do not fit a 512² run in this machine's 23 GiB
    /// (ours: fp32 weights and their packed copies, 8.4 GiB; libtorch: its weights and a 512² working set).
    /// </summary>
    protected void PrepareGeneration(ModelSource source, string side)
    {
        pipeline = StableDiffusionPipeline.Open(source, ops!, new PipelineOptions { DType = DType.F32, ReleaseModelsAfterUse = false });
        euler = Samplers.Create("euler", SchedulerConfig.Parse(pipeline.SchedulerConfigJson));
        if (side == "ours") return;
        unetW = Load(source.Require("unet"));
        vaeW = Load(source.Require("vae"));
        clipW = Load(source.Require("text_encoder"));
        torchUnet = new TorchUNet(Sd15, n => unetW[n]) { DType = ScalarType.Float32, UseSdpa = true };
        torchVae = new TorchVae(n => vaeW[n], [128, 256, 512, 512], 2, 32, 0.18215);
        torchClip = new TorchClip(Presets.Sd15.TextEncoder(), n => clipW[n]);
    }

    /// <summary>First use packs our weights and warms libtorch's allocator: keep that out of the measurements.</summary>
    protected abstract void Warm();

    private static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "StableDiffusion.Kernels.sln"))) return d.FullName;
        return Directory.GetCurrentDirectory();
    }

    private static Dictionary<string, TorchTensor> Load(ComponentWeights c) =>
        c.Tensors.ToDictionary(w => w.Name, w => torch.tensor(w.ReadFloat32(), w.Shape));

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var d in new[] { unetW, vaeW, clipW }) foreach (var w in d.Values) w.Dispose();
        x?.Dispose();
        t?.Dispose();
        ctx?.Dispose();
        unet?.Dispose();
        pipeline?.Dispose();
        source?.Dispose();
        device?.Dispose();
        unetW = vaeW = clipW = [];
        GC.Collect();
        GC.WaitForPendingFinalizers(); // the packed weights are freed by their finalizers
    }

}

/// <summary>One SD1.5 UNet step (batch 2, 64×64 latent): ours against libtorch.</summary>
public class CpuUnetStepBenchmarks : CpuSd15Benchmarks
{
    [GlobalSetup]
    public void SetupStep() => Setup("both");

    protected override void Prepare(ModelSource source, string side) => PrepareStep(source);

    protected override void Warm()
    {
        UnetStepOurs();
        UnetStepLibtorch();
    }

    [Benchmark(Description = "SD1.5 UNet step, batch 2, 64x64 latent: ours")]
    public void UnetStepOurs() => unet!.Forward(ops!, x!, t!, ctx!).Dispose();

    [Benchmark(Baseline = true, Description = "SD1.5 UNet step, batch 2, 64x64 latent: libtorch")]
    public void UnetStepLibtorch()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        torchUnet!.Forward(tx!, [801f, 801f], tctx!);
    }

}

/// <summary>Whole 20-step generations at 256² and 512²: ours against libtorch.</summary>
public class CpuGenerationBenchmarks : CpuSd15Benchmarks
{
    [Params(256, 512)]
    public int Size { get; set; }

    [GlobalSetup(Target = nameof(GenerateOurs))]
    public void SetupOurs() => Setup("ours");

    [GlobalSetup(Target = nameof(GenerateLibtorch))]
    public void SetupLibtorch() => Setup("libtorch");

    protected override void Prepare(ModelSource source, string side) => PrepareGeneration(source, side);

    /// <summary>Loads the pipeline's models (and packs their weights) with one small generation.</summary>
    protected override void Warm()
    {
        if (Side == "ours") pipeline!.Generate(new GenerationRequest { Prompt = "warm", Steps = 1, Width = 64, Height = 64 }, euler!);
    }

    [Benchmark(Description = "SD1.5 20-step Euler generation, guidance 7.5: ours")]
    public void GenerateOurs() => pipeline!.Generate(new GenerationRequest
    {
        Prompt = "a red fox in the snow", Steps = Steps, GuidanceScale = Guidance, Seed = 1, Width = Size, Height = Size,
    }, euler!);

    /// <summary>The same generation in libtorch: CLIP on [uncond, cond], 20 Euler steps with guidance, VAE decode.</summary>
    [Benchmark(Baseline = true, Description = "SD1.5 20-step Euler generation, guidance 7.5: libtorch")]
    public void GenerateLibtorch()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var tok = pipeline!.Tokenizer;
        int[] ids = [.. tok.Tokenize("").Ids, .. tok.Tokenize("a red fox in the snow").Ids];
        var context = torchClip!.Forward(ids, 2, ids.Length / 2);
        euler!.SetTimesteps(Steps);
        var sigmas = euler.Sigmas;
        using var g = new torch.Generator(1);
        var latents = torch.randn([1, 4, Size / 8, Size / 8], generator: g) * euler.InitNoiseSigma;
        for (int i = 0; i < euler.Timesteps.Count; i++)
        {
            using var step = torch.NewDisposeScope();
            double sigma = sigmas[i];
            var input = latents / Math.Sqrt(sigma * sigma + 1);
            float ts = (float)euler.Timesteps[i];
            var eps = torchUnet!.Forward(torch.cat([input, input], 0), [ts, ts], context).chunk(2, 0);
            latents = step.MoveToOuter(latents + (eps[0] + Guidance * (eps[1] - eps[0])) * (sigmas[i + 1] - sigma));
        }
        torchVae!.Decode(latents);
    }
}
