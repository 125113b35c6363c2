using System.Text.Json;
using StableDiffusion.Kernels;
using StableDiffusion.Models.Unet;
using StableDiffusion.Runtime;

namespace StableDiffusion.Cli;

/// <summary>
/// <c>sd bench --unet sd15|sd21|sdxl --latent H[xW]</c>: times every distinct GEMM/convolution shape of one UNet step
/// (fp16) as the planner launches it and, with --all-configs on CUDA, in every tensor-core configuration (each with
/// its best split); --list writes the cases for bench/gpu/torch_bench.py, and the JSON keeps each shape's layers so
/// bench/gpu/unet_layers.py can lay out one step layer by layer beside PyTorch.
/// </summary>
internal static class UNetBenchCommand
{
    public static int Run(Args a, string model, TextWriter stdout)
    {
        var latent = a.Value("--latent") ?? throw new UsageException("sd bench --unet needs --latent H[xW]");
        int batch = int.TryParse(a.Value("--batch") ?? "2", out int b) && b > 0 ? b : throw new UsageException("--batch: expected a positive integer");
        var deviceName = a.Value("--device") ?? "auto";
        var jsonPath = a.Value("--json");
        bool list = a.Flag("--list"), quick = a.Flag("--quick"), all = a.Flag("--all-configs");
        a.CheckDone();
        if (model is not ("sd15" or "sd21" or "sdxl")) throw new UsageException($"--unet {model}: expected sd15, sd21 or sdxl");
        var parts = latent.Split('x');
        if (parts.Length > 2 || !parts.All(p => int.TryParse(p, out int v) && v > 0))
            throw new UsageException($"--latent {latent}: expected H or HxW");
        int h = int.Parse(parts[0]), w = parts.Length == 2 ? int.Parse(parts[1]) : h;
        IReadOnlyList<UNetGemm> gemms;
        try
        {
            gemms = UNetGemms.Enumerate(UNetGemms.ConfigJson(model), h, w, batch);
        }
        catch (ConfigException e)
        {
            throw new UsageException(e.Message);
        }
        var cases = Cases(gemms);
        if (list)
        {
            var text = JsonSerializer.Serialize(cases.Select(c => BenchCommand.CaseJson(c.Case)), BenchCommand.Json);
            if (jsonPath is null) stdout.WriteLine(text);
            else File.WriteAllText(jsonPath, text);
            return 0;
        }

        ComputeDevice.EnableProfiling = true;
        using var device = ComputeDevice.Open(deviceName, stdout);
        var ops = Backends.For(device);
        var rt = (ops as IlgpuOps)?.Runtime;
        bool tensorCores = rt is not null && device.Kind == DeviceKind.Cuda;
        if (all && !tensorCores) stdout.WriteLine($"note: --all-configs needs CUDA; {device.Name} times each shape once");
        double minSeconds = quick ? 0 : 0.05;
        int minIterations = quick ? 1 : 10;
        var tc = rt?.TensorCoreDevice;
        stdout.WriteLine($"{model} UNet step, latent {h}x{w}, batch {batch}, fp16 on {device.Name}: {gemms.Count} GEMMs/convolutions, {cases.Count} distinct shapes" +
                         (tc is null ? "" : $"; planner: {tc.Sms} multiprocessors, > 48 KB shared memory {(tc.LargeShared ? "allowed" : "refused")}"));
        stdout.WriteLine($"{"op",-7} {"shape",-34} {"uses",4} {"ms",9} {"TFLOP/s",8}  plan / kernel");
        var results = new List<object>();
        foreach (var c in cases)
        {
            var g = c.Gemms[0];
            TcPlan? plan = tensorCores ? rt!.PlanTensorCore(g.M, g.N, g.K, 1) : null;
            var main = Time(ops, c.Case, minSeconds, minIterations);
            var configs = new List<object>();
            if (all && tensorCores && plan is not null)
                foreach (var cfg in TcPlanner.Configs)
                {
                    var p = TcPlanner.PlanFor(cfg, g.M, g.N, g.K, 1, rt!.TensorCoreDevice with { LargeShared = true });
                    rt.TensorCoreOverride = (cfg, p.SplitK);
                    try
                    {
                        var r = Time(ops, c.Case, minSeconds, minIterations);
                        configs.Add(new { config = cfg.Name, split_k = p.SplitK, median_ms = r.MedianMs, waves = p.Waves });
                    }
                    catch (KernelArgumentException e)
                    {
                        configs.Add(new { config = cfg.Name, split_k = p.SplitK, error = e.Message });
                    }
                    finally
                    {
                        rt.TensorCoreOverride = null;
                    }
                }
            string planText = plan is null ? main.Kernel : $"{plan.Config.Name} split {plan.SplitK}, {plan.Waves:F2} waves ({main.Kernel})";
            stdout.WriteLine($"{c.Case.Op,-7} {Shape(g),-34} {c.Gemms.Count,4} {main.MedianMs,9:F4} {c.Case.Flops / (main.MedianMs * 1e9),8:F1}  {planText}");
            stdout.Flush();
            results.Add(new
            {
                @case = BenchCommand.CaseJson(c.Case),
                layers = c.Gemms.Select(x => x.Layer),
                m = g.M,
                n = g.N,
                k = g.K,
                median_ms = main.MedianMs,
                min_ms = main.MinMs,
                iterations = main.Iterations,
                kernel = main.Kernel,
                plan = plan is null ? null : new { config = plan.Config.Name, split_k = plan.SplitK, blocks = plan.Blocks, waves = plan.Waves },
                configs,
            });
        }
        if (jsonPath is not null)
        {
            File.WriteAllText(jsonPath, JsonSerializer.Serialize(new
            {
                model,
                latent = $"{h}x{w}",
                batch,
                device = device.Name,
                sms = tc?.Sms,
                large_shared = tc?.LargeShared,
                timing = "median of launches timed with stream profiling markers (CUDA events on CUDA)",
                results,
            }, BenchCommand.Json));
            stdout.WriteLine($"wrote {jsonPath}");
        }
        return 0;
    }

    private sealed record UNetCase(BenchCase Case, List<UNetGemm> Gemms);

    private static string Shape(UNetGemm g) => g.Op == "linear"
        ? $"{g.M}x{g.N}x{g.K}"
        : $"[{g.Batch},{g.H},{g.W},{g.Cin}] {g.Kernel}x{g.Kernel}/{g.Stride} → {g.N}";

    /// <summary>One benchmark case per distinct shape, in first-use order, with the layers that share it.</summary>
    private static List<UNetCase> Cases(IReadOnlyList<UNetGemm> gemms)
    {
        var byKey = new Dictionary<string, UNetCase>();
        var order = new List<UNetCase>();
        foreach (var g in gemms)
        {
            string key = g.Op == "linear" ? $"linear {g.M} {g.N} {g.K}" : $"conv {g.Batch} {g.H} {g.W} {g.Cin} {g.N} {g.Kernel} {g.Stride}";
            if (!byKey.TryGetValue(key, out var c))
            {
                double flops = 2.0 * g.M * g.N * g.K;
                var shape = g.Op == "linear"
                    ? new Dictionary<string, int> { ["m"] = (int)g.M, ["n"] = (int)g.N, ["k"] = (int)g.K }
                    : new Dictionary<string, int>
                    {
                        ["n"] = g.Batch, ["h"] = g.H, ["w"] = g.W, ["cin"] = g.Cin, ["cout"] = (int)g.N, ["k"] = g.Kernel,
                        ["stride"] = g.Stride, ["pad"] = g.Kernel / 2,
                    };
                double bytes = 2.0 * (g.M * g.K + g.N * g.K + g.M * g.N + g.N);
                c = new UNetCase(new BenchCase(g.Op == "linear" ? "linear" : "conv2d", DType.F16, shape, flops, bytes), []);
                byKey[key] = c;
                order.Add(c);
            }
            c.Gemms.Add(g);
        }
        return order;
    }

    private static BenchResult Time(IOps ops, BenchCase c, double minSeconds, int minIterations) =>
        KernelBench.Run(ops, [c], minSeconds, minIterations, maxIterations: 100).Single();
}
