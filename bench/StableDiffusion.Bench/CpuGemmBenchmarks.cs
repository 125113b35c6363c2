using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Exporters;
using BenchmarkDotNet.Exporters.Json;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using StableDiffusion.Kernels.Cpu;
using StableDiffusion.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace StableDiffusion.Bench;

/// <summary>One SD1.5 shape: a linear layer (x[M,K]·W[N,K]ᵀ) or a 3×3 pad-1 conv (NHWC, batch 2).</summary>
public sealed class CpuCase(string name, bool conv, int m, int n, int k, int h = 0, int w = 0, int c = 0, int batch = 1)
{
    public string Name { get; } = name;
    public bool Conv { get; } = conv;
    public int M { get; } = m;
    public int N { get; } = n;
    public int K { get; } = k;
    public int H { get; } = h;
    public int W { get; } = w;
    public int C { get; } = c;
    public int Batch { get; } = batch;
    public double Flops => 2.0 * M * N * K;
    public override string ToString() => Name;

    public static CpuCase Gemm(int m, int n, int k) => new($"gemm {m}x{n}x{k}", false, m, n, k);
    public static CpuCase Conv3x3(int batch, int hw, int c) =>
        new($"conv3x3 {batch}x{hw}x{hw}x{c}", true, batch * hw * hw, c, 9 * c, hw, hw, c, batch);

    /// <summary>The up blocks' first convolutions, whose input is the skip connection concatenated (cin &gt; cout).</summary>
    public static CpuCase Conv3x3(int batch, int hw, int cin, int cout) =>
        new($"conv3x3 {batch}x{hw}x{hw}x{cin}>{cout}", true, batch * hw * hw, cout, 9 * cin, hw, hw, cin, batch);

    public static IEnumerable<CpuCase> All(bool quick) => quick
        ? [Gemm(1024, 320, 320), Gemm(77, 320, 768), Conv3x3(2, 16, 320)]
        :
        [
            Gemm(4096, 320, 320), Gemm(4096, 1280, 320), Gemm(4096, 320, 1280), Gemm(77, 320, 768), Gemm(8192, 320, 320),
            Conv3x3(2, 64, 320), Conv3x3(2, 32, 640), Conv3x3(2, 16, 1280), Conv3x3(2, 8, 1280),
            Conv3x3(2, 64, 960, 320), Conv3x3(2, 16, 2560, 1280), Conv3x3(2, 8, 2560, 1280),
        ];
}

/// <summary>
/// Ours (packing B on the fly), ours with B pre-packed once (the weight cache), and libtorch on the same inputs and
/// thread count. libtorch gets F.linear for GEMMs and conv2d on channels-last (NHWC memory) inputs: its oneDNN fast
/// path on CPU and the layout ours reads (the probe also times NCHW).
/// </summary>
public unsafe class CpuGemmBenchmarks
{
    private float* x, wt, y;
    private void* panels16;
    private CpuPackedB? packed, packed16;
    private torch.Tensor? tx, tw;

    public static IEnumerable<CpuCase> Cases() => CpuBench.CaseList;

    [ParamsSource(nameof(Cases))]
    public CpuCase Case { get; set; } = null!;

    [GlobalSetup]
    public void Setup()
    {
        torch.set_num_threads(CpuParallel.Threads);
        var c = Case;
        long xn = c.Conv ? (long)c.Batch * c.H * c.W * c.C : (long)c.M * c.K;
        x = Alloc(xn, 1);
        wt = Alloc((long)c.N * c.K, 0.05f);
        y = Alloc((long)c.M * c.N, 0);
        packed = c.Conv ? CpuConv.PackWeight(wt, DType.F32, c.N, 3, 3, c.C) : CpuGemm.PackB(wt, DType.F32, c.N, c.K, true);
        // what a model from an fp16 file holds: fp16 panels, widened inside the GEMM
        panels16 = NativeMemory.AlignedAlloc((nuint)CpuPackedB.BytesFor(DType.F16, c.N, c.K), 64);
        packed16 = CpuGemm.PackWeightInto(wt, DType.F32, c.N, c.Conv ? c.C : c.K, c.Conv ? 9 : 1, tapsInner: false, panels16, DType.F16);
        var xs = new ReadOnlySpan<float>(x, (int)xn).ToArray();
        var ws = new ReadOnlySpan<float>(wt, c.N * c.K).ToArray();
        if (c.Conv)
        {
            // ours: NHWC / OHWI; libtorch: logical NCHW / OIHW with channels-last strides
            tx = torch.tensor(xs, [c.Batch, c.H, c.W, c.C]).permute(0, 3, 1, 2);
            tw = torch.tensor(ws, [c.N, 3, 3, c.C]).permute(0, 3, 1, 2);
            if (CpuBench.TorchNchw) { tx = tx.contiguous(); tw = tw.contiguous(); }
        }
        else
        {
            tx = torch.tensor(xs, [c.M, c.K]);
            tw = torch.tensor(ws, [c.N, c.K]);
        }
    }

    private static float* Alloc(long n, float scale)
    {
        var p = (float*)NativeMemory.AlignedAlloc((nuint)(n * 4), 64);
        var rng = new Random(42);
        for (long i = 0; i < n; i++) p[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        return p;
    }

    private CpuGemmArgs GemmArgs() => new()
    {
        M = Case.M, N = Case.N, K = Case.K, Batch = 1, TransB = true, Alpha = 1,
        A = x, AType = DType.F32, B = wt, BType = DType.F32, C = y, CType = DType.F32,
    };

    private CpuConvArgs ConvArgs() => new()
    {
        N = Case.Batch, H = Case.H, W = Case.W, Cin = Case.C, Cout = Case.N, KH = 3, KW = 3, Stride = 1,
        PadTop = 1, PadLeft = 1, PadBottom = 1, PadRight = 1,
        X = x, XType = DType.F32, Weight = wt, WeightType = DType.F32, Y = y, YType = DType.F32,
    };

    [Benchmark]
    public void Ours()
    {
        if (Case.Conv) CpuConv.Run(ConvArgs());
        else CpuGemm.Run(GemmArgs());
    }

    [Benchmark]
    public void OursPrepacked()
    {
        if (Case.Conv) CpuConv.Run(ConvArgs(), packed!);
        else CpuGemm.Run(GemmArgs(), packed!);
    }

    [Benchmark]
    public void OursPrepackedFp16()
    {
        if (Case.Conv) CpuConv.Run(ConvArgs(), packed16!);
        else CpuGemm.Run(GemmArgs(), packed16!);
    }

    [Benchmark]
    public void Libtorch()
    {
        using var r = Case.Conv
            ? torch.nn.functional.conv2d(tx!, tw!, padding: [1, 1])
            : torch.nn.functional.linear(tx!, tw!);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        NativeMemory.AlignedFree(x);
        NativeMemory.AlignedFree(wt);
        NativeMemory.AlignedFree(y);
        packed?.Dispose();
        packed16?.Dispose();
        NativeMemory.AlignedFree(panels16);
        tx?.Dispose();
        tw?.Dispose();
    }
}

/// <summary>bench cpu: runs <see cref="CpuGemmBenchmarks"/> and writes results.md / results.json.</summary>
public static class CpuBench
{
    public static List<CpuCase> CaseList { get; private set; } = [];
    public static bool TorchNchw { get; private set; }

    /// <summary>
    /// <c>bench cpu [gemm|ops|unet|generate|lora|all] [--quick] [--threads N] [--out DIR] [--only TEXT]</c>: the C# CPU backend against
    /// libtorch, same thread count: GEMM/convolution (default), the other ops, one SD1.5 UNet step, whole generations, the load time a LoRA merge adds.
    /// <c>--only</c> keeps the op cases whose name contains TEXT (their table goes to cpu-ops-TEXT.md); with
    /// <c>gemm --probe</c>, the GEMM and convolution cases.
    /// </summary>
    public static int Run(string[] args, string repoRoot)
    {
        var rest = args.ToList();
        string what = rest.Count > 0 && !rest[0].StartsWith("--", StringComparison.Ordinal) ? rest[0] : "gemm";
        if (rest.Count > 0 && rest[0] == what) rest.RemoveAt(0);
        if (what == "decode") return VaeDecodeBench.Run(rest);
        if (what is not ("gemm" or "ops" or "unet" or "generate" or "lora" or "all"))
            throw new UsageException($"bench cpu: unknown part '{what}'; use gemm, ops, unet, generate, lora or all");
        bool quick = rest.Remove("--quick"), probe = rest.Remove("--probe");
        TorchNchw = rest.Remove("--torch-nchw");
        string? outDir = Option(rest, "--out");
        string? only = Option(rest, "--only");
        if (Option(rest, "--threads") is { } th)
            CpuParallel.Threads = int.TryParse(th, out int n) && n >= 1 ? n : throw new UsageException($"bad --threads '{th}'");
        if (rest.Count > 0) throw new UsageException($"unexpected argument '{rest[0]}'");
        CaseList = CpuCase.All(quick).ToList();
        string cpu = CpuModel();
        Console.WriteLine($"cpu: {cpu}, {CpuParallel.Threads} threads, Vector512 {System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated}");
        if (probe)
        {
            if (only is not null)
            {
                CaseList = CaseList.Where(c => c.Name.Contains(only, StringComparison.Ordinal)).ToList();
                if (CaseList.Count == 0)
                    throw new UsageException($"--only '{only}' matches no gemm case; cases: {string.Join(", ", CpuCase.All(quick).Select(c => c.Name))}");
            }
            return Probe();
        }

        outDir ??= Path.Combine(repoRoot, "bench", "results", "cpu-" + Roofline.Slug(cpu), $"threads-{CpuParallel.Threads}");
        Directory.CreateDirectory(outDir);
        int failed = 0;
        if (what is "ops" or "all") CpuOpBenchmarks.RunAll(outDir, quick, only);
        if (what is "lora" or "all") CpuLoraBench.Run(outDir, cpu);
        if (what is "unet" or "generate" or "all")
        {
            CpuSd15Benchmarks.Threads = CpuParallel.Threads;
            // Seconds to minutes per call: a few iterations are all that fit, medians of them.
            var slow = ManualConfig.CreateEmpty()
                .AddJob(Job.Dry.WithIterationCount(what == "generate" ? 1 : 3).WithWarmupCount(0)
                    .WithToolchain(InProcessEmitToolchain.Instance).WithInvocationCount(1).WithUnrollFactor(1))
                .AddColumnProvider(DefaultColumnProviders.Instance)
                .AddExporter(MarkdownExporter.GitHub, JsonExporter.Brief)
                .AddLogger(BenchmarkDotNet.Loggers.ConsoleLogger.Default)
                .WithArtifactsPath(outDir)
                .WithOptions(ConfigOptions.DisableOptimizationsValidator | ConfigOptions.JoinSummary);
            var reports = new List<Summary>();
            if (what is "unet" or "all") reports.Add(BenchmarkRunner.Run<CpuUnetStepBenchmarks>(slow));
            if (what is "generate" or "all") reports.Add(BenchmarkRunner.Run<CpuGenerationBenchmarks>(slow));
            failed += reports.Count(r => r.HasCriticalValidationErrors || r.Reports.Any(x => !x.Success));
        }
        if (what is not ("gemm" or "all")) return failed > 0 ? 1 : 0;
        var job = (quick ? Job.Dry.WithIterationCount(3).WithWarmupCount(1) : Job.Default.WithIterationCount(10).WithWarmupCount(3))
            .WithToolchain(InProcessEmitToolchain.Instance).WithInvocationCount(1).WithUnrollFactor(1);
        var config = ManualConfig.CreateEmpty()
            .AddJob(job)
            .AddColumnProvider(DefaultColumnProviders.Instance)
            .AddExporter(MarkdownExporter.GitHub, JsonExporter.Brief)
            .AddLogger(BenchmarkDotNet.Loggers.ConsoleLogger.Default)
            .WithArtifactsPath(outDir)
            .WithOptions(ConfigOptions.DisableOptimizationsValidator | ConfigOptions.JoinSummary);
        var summary = BenchmarkRunner.Run<CpuGemmBenchmarks>(config);
        Write(summary, outDir, cpu);
        return failed > 0 || summary.HasCriticalValidationErrors || summary.Reports.Any(r => !r.Success) ? 1 : 0;
    }

    private static void Write(Summary summary, string outDir, string cpu)
    {
        var ms = new Dictionary<(string, string), double>();
        foreach (var r in summary.Reports.Where(r => r.Success && r.ResultStatistics is not null))
            ms[(((CpuCase)r.BenchmarkCase.Parameters["Case"]).Name, r.BenchmarkCase.Descriptor.WorkloadMethod.Name)] =
                r.ResultStatistics!.Median / 1e6;
        var md = new StringBuilder();
        md.AppendLine($"# C# CPU GEMM / conv vs libtorch — {cpu}, {CpuParallel.Threads} threads");
        md.AppendLine();
        md.AppendLine($"libtorch {torch.__version__} (TorchSharp), torch.set_num_threads({CpuParallel.Threads}); GEMM = F.linear(x[M,K], W[N,K]); " +
            $"conv = F.conv2d 3×3 pad 1 on {(TorchNchw ? "NCHW-contiguous" : "channels-last")} tensors. Ours: fp32, NHWC/OHWI; " +
            "\"prepacked\" = B (weights) packed once outside the timed region; \"fp16 panels\" = packed once as fp16 (what a " +
            "model from an fp16 file keeps) and widened inside the GEMM. Median of BenchmarkDotNet iterations.");
        md.AppendLine();
        md.AppendLine("| case | GFLOP | ours ms | ours GFLOP/s | prepacked GFLOP/s | fp16 panels GFLOP/s | libtorch ms | libtorch GFLOP/s | speed vs libtorch (libtorch ms / ours ms) | prepacked speed vs libtorch | fp16 panels speed vs libtorch |");
        md.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        var rows = new List<object>();
        foreach (var c in CaseList)
        {
            double o = ms.GetValueOrDefault((c.Name, "Ours"), double.NaN);
            double op = ms.GetValueOrDefault((c.Name, "OursPrepacked"), double.NaN);
            double oh = ms.GetValueOrDefault((c.Name, "OursPrepackedFp16"), double.NaN);
            double t = ms.GetValueOrDefault((c.Name, "Libtorch"), double.NaN);
            double g(double v) => c.Flops / (v * 1e6);
            md.AppendLine($"| {c.Name} | {c.Flops / 1e9:F2} | {o:F2} | {g(o):F1} | {g(op):F1} | {g(oh):F1} | {t:F2} | {g(t):F1} | {t / o:F2} | {t / op:F2} | {t / oh:F2} |");
            rows.Add(new { name = c.Name, flops = c.Flops, ours_ms = o, ours_prepacked_ms = op, ours_fp16_panels_ms = oh, libtorch_ms = t,
                ours_gflops = g(o), ours_prepacked_gflops = g(op), ours_fp16_panels_gflops = g(oh), libtorch_gflops = g(t) });
        }
        File.WriteAllText(Path.Combine(outDir, "results.md"), md.ToString());
        File.WriteAllText(Path.Combine(outDir, "results.json"), JsonSerializer.Serialize(new
        {
            cpu, threads = CpuParallel.Threads, torch_layout = TorchNchw ? "nchw" : "channels_last", results = rows,
        }, new JsonSerializerOptions { WriteIndented = true }));
        Console.WriteLine(md);
        Console.WriteLine($"wrote results.md and results.json in {outDir}");
    }

    /// <summary>
    /// Quick Stopwatch timing of every case, ours and libtorch interleaved, best of N (the box may be shared).
    /// SD_PROBE_ROTATE=K instead times ours over K copies of each case in turn (weights leave the caches between calls,
    /// as each layer's do in a UNet step): median and best of fp32 panels and fp16 panels under both widenings, with
    /// direct convolutions, and for convolutions also fp16 panels through Winograd (F(4×4) or F(2×2), 3×3) where it applies.
    /// </summary>
    private static int Probe()
    {
        int reps = int.TryParse(Environment.GetEnvironmentVariable("SD_PROBE_REPS"), out int r0) ? r0 : 10;
        if (int.TryParse(Environment.GetEnvironmentVariable("SD_PROBE_ROTATE"), out int rot))
        {
            // fp16 panels widened with the general conversion ("exact") and, as models do, the finite-only one
            // (direct 3×3 convolution in these three; Winograd on fp16 panels in a fourth, where it applies)
            (string, Action<CpuGemmBenchmarks>)[] all =
            [
                ("fp32", b => { CpuConv.Winograd = false; b.OursPrepacked(); }),
                ("fp16 exact", b => { CpuConv.Winograd = false; CpuGemm.FiniteWidening = false; b.OursPrepackedFp16(); }),
                ("fp16 finite", b => { CpuConv.Winograd = false; CpuGemm.FiniteWidening = true; b.OursPrepackedFp16(); }),
                ("winograd", b => { CpuConv.Winograd = true; CpuGemm.FiniteWidening = true; b.OursPrepackedFp16(); }),
            ];
            foreach (var c in CaseList)
            {
                var modes = c.Conv ? all : all[..3];
                var bs = Enumerable.Range(0, rot).Select(_ => { var b = new CpuGemmBenchmarks { Case = c }; b.Setup(); return b; }).ToArray();
                var times = modes.Select(_ => new List<double>()).ToArray();
                foreach (var (_, f) in modes) foreach (var b in bs) f(b);
                for (int r = 0; r < reps; r++)
                    for (int m = 0; m < modes.Length; m++) // modes interleaved, so a busy moment of the machine hits all of them
                    {
                        long t0 = Stopwatch.GetTimestamp();
                        foreach (var b in bs) modes[m].Item2(b);
                        times[m].Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds / rot);
                    }
                CpuGemm.FiniteWidening = true;
                CpuConv.Winograd = true;
                Console.WriteLine($"{c.Name,-28} rotate {rot}, GFLOP/s median (best): " + string.Join("  ", modes.Select((md, m) =>
                {
                    var t = times[m].Order().ToList();
                    return $"{md.Item1} {c.Flops / (t[t.Count / 2] * 1e6),6:F1} ({c.Flops / (t[0] * 1e6),6:F1})";
                })));
                foreach (var b in bs) b.Cleanup();
            }
            return 0;
        }
        foreach (var c in CaseList)
        {
            var b = new CpuGemmBenchmarks { Case = c };
            b.Setup();
            Action[] fs = [b.Ours, b.OursPrepacked, b.OursPrepackedFp16, b.Libtorch];
            var best = new double[fs.Length];
            Array.Fill(best, double.MaxValue);
            foreach (var f in fs) { f(); f(); }
            var sw = new Stopwatch();
            for (int r = 0; r < reps; r++)
                for (int i = 0; i < fs.Length; i++)
                {
                    sw.Restart();
                    fs[i]();
                    best[i] = Math.Min(best[i], sw.Elapsed.TotalMilliseconds);
                }
            var g = best.Select(ms => c.Flops / (ms * 1e6)).ToArray();
            Console.WriteLine($"{c.Name,-28} ours {g[0],7:F1}  prepacked {g[1],7:F1}  fp16 panels {g[2],7:F1}  libtorch {g[3],7:F1} GFLOP/s  " +
                              $"ratio {g[0] / g[3]:F2} / {g[1] / g[3]:F2} / {g[2] / g[3]:F2}");
            b.Cleanup();
        }
        return 0;
    }

    private static string? Option(List<string> args, string name)
    {
        int i = args.IndexOf(name);
        if (i < 0) return null;
        if (i + 1 >= args.Count) throw new UsageException($"option {name} needs a value");
        var v = args[i + 1];
        args.RemoveRange(i, 2);
        return v;
    }

    private static string CpuModel()
    {
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
            if (line is not null) return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { }
        return "unknown-cpu";
    }
}
