using System.Diagnostics;
using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels;

/// <summary>One benchmark case: an op at a shape and dtype, with the work it does.</summary>
public sealed record BenchCase(string Op, DType DType, IReadOnlyDictionary<string, int> Shape, double Flops, double Bytes)
{
    public string Describe() => $"{Op} {DType.Name()} " + string.Join(" ", Shape.Select(kv => $"{kv.Key}={kv.Value}"));
}

/// <summary>Timing of one case: median and best of the measured launches.</summary>
public sealed record BenchResult(BenchCase Case, int Iterations, double MedianMs, double MinMs, string Kernel = "")
{
    public double GFlops => Case.Flops / (MedianMs * 1e6);
    public double GBps => Case.Bytes / (MedianMs * 1e6);
}

/// <summary>
/// Times the kernels at the Stable Diffusion 1.5 shapes that matter (the same list the PyTorch side of
/// bench/gpu reads, so both time identical work). Launches are timed with stream profiling markers (CUDA events
/// on CUDA) when the device was opened with profiling, else with a stopwatch around a synchronised launch.
/// </summary>
public static class KernelBench
{
    public static IReadOnlyList<BenchCase> Suite(bool quick)
    {
        var list = new List<BenchCase>();
        foreach (var dt in new[] { DType.F32, DType.F16 })
        {
            int e = dt.SizeInBytes();
            // 3x3 convolutions (UNet at 64x64 latents with CFG batch 2, and the VAE decoder at 512x512).
            var convs = quick
                ? new[] { (1, 16, 16, 32, 32), (1, 8, 8, 64, 64) }
                : new[] { (2, 64, 64, 320, 320), (2, 32, 32, 640, 640), (2, 16, 16, 1280, 1280), (2, 8, 8, 1280, 1280),
                          (1, 512, 512, 128, 128), (1, 256, 256, 256, 256) };
            foreach (var (n, h, w, ci, co) in convs)
                list.Add(new BenchCase("conv2d", dt, Dict(("n", n), ("h", h), ("w", w), ("cin", ci), ("cout", co), ("k", 3), ("stride", 1), ("pad", 1)),
                    2.0 * n * h * w * co * ci * 9, (double)e * ((long)n * h * w * (ci + co) + (long)co * ci * 9 + co)));
            var gemms = quick
                ? new[] { (256, 64, 64), (77, 96, 64) }
                : new[] { (4096, 320, 320), (4096, 1280, 320), (4096, 320, 1280), (77, 768, 320) };
            foreach (var (m, nn, k) in gemms)
                list.Add(new BenchCase("linear", dt, Dict(("m", m), ("n", nn), ("k", k)),
                    2.0 * m * nn * k, (double)e * ((long)m * k + (long)nn * k + (long)m * nn + nn)));
            var attn = quick
                ? new[] { (1, 2, 128, 128, 40), (1, 2, 128, 77, 40) }
                : new[] { (1, 8, 4096, 4096, 40), (1, 8, 4096, 4096, 80), (1, 8, 4096, 77, 40) };
            foreach (var (b, heads, lq, lk, d) in attn)
                list.Add(new BenchCase("attention", dt, Dict(("b", b), ("heads", heads), ("lq", lq), ("lk", lk), ("d", d)),
                    4.0 * b * heads * lq * lk * d, (double)e * b * heads * d * (2L * lq + 2L * lk)));
            var norms = quick ? new[] { (1, 16 * 16, 64) } : new[] { (2, 64 * 64, 320), (1, 512 * 512, 128) };
            foreach (var (n, s, c) in norms)
                list.Add(new BenchCase("group_norm", dt, Dict(("n", n), ("s", s), ("c", c), ("groups", 32)),
                    8.0 * n * s * c, (double)e * 2 * n * s * c));
        }
        return list;
    }

    private static IReadOnlyDictionary<string, int> Dict(params (string, int)[] kv) => kv.ToDictionary(x => x.Item1, x => x.Item2);

    /// <summary>Runs every case; <paramref name="minSeconds"/> bounds the measuring time per case.</summary>
    public static IEnumerable<BenchResult> Run(IlgpuOps ops, IEnumerable<BenchCase> cases, double minSeconds = 0.3,
        int minIterations = 5, int maxIterations = 200)
    {
        foreach (var c in cases)
        {
            var (launch, inputs) = Prepare(ops, c);
            try
            {
                launch(); // compile and warm up
                launch();
                ops.Device.Synchronize();
                var times = new List<double>();
                var budget = Stopwatch.StartNew();
                while (times.Count < minIterations || (budget.Elapsed.TotalSeconds < minSeconds && times.Count < maxIterations))
                    times.Add(TimeOne(ops, launch));
                times.Sort();
                yield return new BenchResult(c, times.Count, times[times.Count / 2], times[0], ops.Runtime.LastFamily ?? "");
            }
            finally
            {
                foreach (var t in inputs) t.Dispose();
            }
        }
    }

    private static double TimeOne(IlgpuOps ops, Action launch)
    {
        var acc = ops.Device.Accelerator;
        if (ComputeDevice.EnableProfiling)
        {
            using var start = acc.DefaultStream.AddProfilingMarker();
            launch();
            using var end = acc.DefaultStream.AddProfilingMarker();
            end.Synchronize();
            return (end - start).TotalMilliseconds;
        }
        acc.Synchronize();
        long t0 = Stopwatch.GetTimestamp();
        launch();
        acc.Synchronize();
        return Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
    }

    private static (Action Launch, List<Tensor> Inputs) Prepare(IlgpuOps ops, BenchCase c)
    {
        var rng = new Random(7);
        var inputs = new List<Tensor>();
        Tensor Rand(params int[] shape)
        {
            var data = new float[Tensor.ElementCount(shape)];
            for (int i = 0; i < data.Length; i++) data[i] = (float)(rng.NextDouble() * 2 - 1);
            var t = Tensor.FromArray(ops.Device, data, c.DType, shape);
            inputs.Add(t);
            return t;
        }
        var s = c.Shape;
        switch (c.Op)
        {
            case "conv2d":
            {
                var x = Rand(s["n"], s["h"], s["w"], s["cin"]);
                var w = Rand(s["cout"], s["k"], s["k"], s["cin"]);
                var b = Rand(s["cout"]);
                return (() => ops.Conv2d(x, w, b, s["stride"], s["pad"]).Dispose(), inputs);
            }
            case "linear":
            {
                var x = Rand(s["m"], s["k"]);
                var w = Rand(s["n"], s["k"]);
                var b = Rand(s["n"]);
                return (() => ops.Linear(x, w, b).Dispose(), inputs);
            }
            case "attention":
            {
                int hd = s["heads"] * s["d"];
                var q = Rand(s["b"], s["lq"], hd);
                var k = Rand(s["b"], s["lk"], hd);
                var v = Rand(s["b"], s["lk"], hd);
                return (() => ops.Attention(q, k, v, s["heads"]).Dispose(), inputs);
            }
            case "group_norm":
            {
                var x = Rand(s["n"], s["s"], s["c"]);
                var g = Rand(s["c"]);
                var b = Rand(s["c"]);
                return (() => ops.GroupNorm(x, s["groups"], g, b, 1e-5f).Dispose(), inputs);
            }
            default:
                throw new UsageException($"unknown benchmark op '{c.Op}'");
        }
    }
}
