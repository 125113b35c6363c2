using System.Text.Json;
using StableDiffusion.Kernels;
using StableDiffusion.Runtime;

namespace StableDiffusion.Cli;

/// <summary>
/// <c>sd bench</c>: times the kernels at the SD1.5 shapes on a device (CUDA events when on CUDA) and writes the
/// results as a table and, with --json, as JSON that bench/gpu/compare.py puts beside PyTorch's figures.
/// </summary>
internal static class BenchCommand
{
    public static int Run(Args a, TextWriter stdout, TextWriter stderr)
    {
        if (a.Value("--unet") is { } unet) return UNetBenchCommand.Run(a, unet, stdout);
        var deviceName = a.Value("--device") ?? "auto";
        var jsonPath = a.Value("--json");
        bool quick = a.Flag("--quick");
        bool list = a.Flag("--list");
        var only = a.Value("--op");
        a.CheckDone();

        if (list)
        {
            var suite = Filter(KernelBench.Suite(quick), only);
            var text = JsonSerializer.Serialize(suite.Select(CaseJson), Json);
            if (jsonPath is null) stdout.WriteLine(text);
            else File.WriteAllText(jsonPath, text);
            return 0;
        }

        ComputeDevice.EnableProfiling = true;
        using var device = ComputeDevice.Open(deviceName, stdout);
        if (device.Kind == DeviceKind.IlgpuCpu && !quick)
        {
            stdout.WriteLine("note: the ILGPU CPU accelerator cannot run the full-size suite in useful time; running --quick");
            quick = true;
        }
        var ops = Backends.For(device);
        var cases = Filter(KernelBench.Suite(quick), only);
        var ceilings = KernelBench.MeasureCeilings(ops, quick);
        stdout.WriteLine($"measured ceilings: fp32 FMA {ceilings.Fp32GFlops:F1} GFLOP/s, device copy {ceilings.BandwidthGBps:F1} GB/s");
        stdout.WriteLine($"{"op",-11} {"dtype",-5} {"shape",-52} {"median ms",10} {"min ms",9} {"GFLOP/s",9} {"GB/s",8}  kernel");
        var results = new List<BenchResult>();
        foreach (var r in KernelBench.Run(ops, cases, minSeconds: device.Kind == DeviceKind.IlgpuCpu ? 0 : 0.3,
                     minIterations: device.Kind == DeviceKind.IlgpuCpu ? 1 : 5))
        {
            results.Add(r);
            var shape = string.Join(" ", r.Case.Shape.Select(kv => $"{kv.Key}={kv.Value}"));
            stdout.WriteLine($"{r.Case.Op,-11} {r.Case.DType.Name(),-5} {shape,-52} {r.MedianMs,10:F4} {r.MinMs,9:F4} {r.GFlops,9:F1} {r.GBps,8:F1}  {r.Kernel}");
            stdout.Flush();
        }
        if (jsonPath is not null)
        {
            File.WriteAllText(jsonPath, JsonSerializer.Serialize(new
            {
                device = device.Name,
                kind = device.Kind.ToString(),
                timing = "median of launches timed with stream profiling markers (CUDA events on CUDA)",
                ceilings = new { fp32_fma_gflops = ceilings.Fp32GFlops, bandwidth_gbps = ceilings.BandwidthGBps },
                results = results.Select(r => new
                {
                    @case = CaseJson(r.Case),
                    iterations = r.Iterations,
                    median_ms = r.MedianMs,
                    min_ms = r.MinMs,
                    gflops = r.GFlops,
                    gbps = r.GBps,
                    kernel = r.Kernel,
                }),
            }, Json));
            stdout.WriteLine($"wrote {jsonPath}");
        }
        return 0;
    }

    private static IReadOnlyList<BenchCase> Filter(IReadOnlyList<BenchCase> all, string? op)
    {
        if (op is null) return all;
        var r = all.Where(c => c.Op == op).ToList();
        if (r.Count == 0)
            throw new UsageException($"--op '{op}' is not in the suite; ops: {string.Join(", ", all.Select(c => c.Op).Distinct())}");
        return r;
    }

    internal static object CaseJson(BenchCase c) => new
    {
        op = c.Op,
        dtype = c.DType.Name(),
        shape = c.Shape,
        flops = c.Flops,
        bytes = c.Bytes,
    };

    internal static readonly JsonSerializerOptions Json = new() { WriteIndented = true };
}
