using System.Text.Json;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Exporters;
using BenchmarkDotNet.Exporters.Json;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using StableDiffusion;
using StableDiffusion.Bench;
using StableDiffusion.Kernels;
using StableDiffusion.Runtime;

// bench [--quick] [--device D] [--out DIR]   the kernel suite under BenchmarkDotNet; results, ceilings and a roofline
//                                            go to DIR (default bench/results/<device>)
// bench plot RESULTS.json OUT.png            the roofline of a results file (ours or one brought back from a GPU run)
// bench cpu [gemm|ops|unet|generate|lora|all] [--quick] [--threads N] [--out DIR]   the C# CPU backend against libtorch
try
{
    if (args.Length > 0 && args[0] == "cpu") return CpuBench.Run(args[1..], RepoRoot());
    if (args.Length > 0 && args[0] == "plot")
    {
        if (args.Length != 3) throw new UsageException("usage: bench plot RESULTS.json OUT.png");
        Roofline.Plot(args[1], args[2]);
        Console.WriteLine($"wrote {args[2]}");
        return 0;
    }
    var rest = args.ToList();
    bool quick = rest.Remove("--quick");
    string device = Take(rest, "--device") ?? "auto";
    string? outDir = Take(rest, "--out");
    if (rest.Count > 0) throw new UsageException($"unexpected argument '{rest[0]}'");

    ComputeDevice.EnableProfiling = true;
    using var dev = ComputeDevice.Open(device, Console.Out);
    if (dev.Kind == DeviceKind.IlgpuCpu && !quick)
    {
        Console.WriteLine("note: the ILGPU CPU accelerator cannot run the full-size suite in useful time; running --quick");
        quick = true;
    }
    Suite.Ops = Backends.For(dev);
    Suite.Quick = quick;
    Suite.Ceilings = KernelBench.MeasureCeilings(Suite.Ops, quick);
    Console.WriteLine($"ceilings on {dev.Name}: fp32 FMA {Suite.Ceilings.Fp32GFlops:F1} GFLOP/s, copy {Suite.Ceilings.BandwidthGBps:F1} GB/s");

    outDir ??= Path.Combine(RepoRoot(), "bench", "results", Roofline.Slug(dev.Name));
    Directory.CreateDirectory(outDir);
    var job = (quick ? Job.Dry.WithIterationCount(2).WithWarmupCount(1) : Job.Default.WithIterationCount(15).WithWarmupCount(3))
        .WithToolchain(InProcessEmitToolchain.Instance).WithInvocationCount(1).WithUnrollFactor(1);
    var config = ManualConfig.CreateEmpty()
        .AddJob(job)
        .AddColumnProvider(DefaultColumnProviders.Instance)
        .AddColumn(new WorkColumn(WorkColumn.Kind.GFlops), new WorkColumn(WorkColumn.Kind.GBps),
            new WorkColumn(WorkColumn.Kind.PercentFma), new WorkColumn(WorkColumn.Kind.PercentBandwidth), new WorkColumn(WorkColumn.Kind.Kernel))
        .AddExporter(MarkdownExporter.GitHub, JsonExporter.Brief)
        .AddLogger(BenchmarkDotNet.Loggers.ConsoleLogger.Default)
        .WithArtifactsPath(outDir)
        .WithSummaryStyle(SummaryStyle.Default.WithMaxParameterColumnWidth(48))
        .WithOptions(ConfigOptions.DisableOptimizationsValidator | ConfigOptions.JoinSummary);
    var summary = BenchmarkRunner.Run<KernelBenchmarks>(config);
    var resultsPath = Path.Combine(outDir, "results.json");
    WriteResults(summary, resultsPath, dev.Name);
    Roofline.Plot(resultsPath, Path.Combine(outDir, "roofline.png"));
    Console.WriteLine($"wrote {resultsPath} and roofline.png in {outDir}");
    return summary.HasCriticalValidationErrors || summary.Reports.Any(r => !r.Success) ? 1 : 0;
}
catch (SdException e)
{
    Console.Error.WriteLine($"bench: error: {e.Message}");
    return e.ExitCode;
}

static string? Take(List<string> args, string name)
{
    int i = args.IndexOf(name);
    if (i < 0) return null;
    if (i + 1 >= args.Count) throw new UsageException($"option {name} needs a value");
    var v = args[i + 1];
    args.RemoveRange(i, 2);
    return v;
}

static string RepoRoot()
{
    for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        if (File.Exists(Path.Combine(d.FullName, "StableDiffusion.Kernels.sln"))) return d.FullName;
    return Environment.CurrentDirectory;
}

static void WriteResults(Summary summary, string path, string device)
{
    var c = Suite.Ceilings!;
    var rows = summary.Reports.Where(r => r.Success && r.ResultStatistics is not null).Select(r =>
    {
        var bc = (BenchCase)r.BenchmarkCase.Parameters["Case"];
        double ms = r.ResultStatistics!.Median / 1e6;
        return new
        {
            op = bc.Op,
            dtype = bc.DType.Name(),
            shape = bc.Shape,
            flops = bc.Flops,
            bytes = bc.Bytes,
            kernel = Suite.Kernels.GetValueOrDefault(bc.Describe(), ""),
            median_ms = ms,
            gflops = bc.Flops / (ms * 1e6),
            gbps = bc.Bytes / (ms * 1e6),
            percent_fp32_fma = 100 * bc.Flops / (ms * 1e6) / c.Fp32GFlops,
            percent_bandwidth = 100 * bc.Bytes / (ms * 1e6) / c.BandwidthGBps,
        };
    }).ToList();
    File.WriteAllText(path, JsonSerializer.Serialize(new
    {
        device,
        ceilings = new { fp32_fma_gflops = c.Fp32GFlops, bandwidth_gbps = c.BandwidthGBps },
        results = rows,
    }, new JsonSerializerOptions { WriteIndented = true }));
}
