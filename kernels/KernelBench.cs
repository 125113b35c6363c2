using System.Diagnostics;
using ILGPU.Runtime;
using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels;

/// <summary>One benchmark case: an op at a shape and dtype, with the work it does.</summary>
public sealed record BenchCase(string Op, DType DType, IReadOnlyDictionary<string, int> Shape, double Flops, double Bytes)
{
    public string Describe() => $"{Op} {DType.Name()} " + string.Join(" ", Shape.Select(kv => $"{kv.Key}={kv.Value}"));

    /// <summary>Arithmetic intensity: FLOPs per byte of the minimum traffic.</summary>
    public double Intensity => Flops / Bytes;

    /// <summary>Compact form for table columns: op, dtype and the shape values.</summary>
    public override string ToString() => $"{Op} {DType.Name()} {string.Join("x", Shape.Values)}";
}

/// <summary>The measured limits of a device: what a roofline is drawn against.</summary>
public sealed record DeviceCeilings(string Device, double Fp32GFlops, double BandwidthGBps);

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
                : new[] { (1, 8, 4096, 4096, 40), (1, 8, 4096, 4096, 80), (1, 8, 4096, 77, 40), (2, 8, 1024, 1024, 80), (2, 8, 256, 256, 160) };
            foreach (var (b, heads, lq, lk, d) in attn)
                list.Add(new BenchCase("attention", dt, Dict(("b", b), ("heads", heads), ("lq", lq), ("lk", lk), ("d", d)),
                    4.0 * b * heads * lq * lk * d, (double)e * b * heads * d * (2L * lq + 2L * lk)));
            // fp16 self-attention once more on the SIMT kernel (simt=1), beside the tensor-core one it replaced.
            if (dt == DType.F16 && !quick)
                foreach (var (b, heads, lq, lk, d) in attn.Where(a => a.Item3 == a.Item4 && a.Item3 >= 4096))
                    list.Add(new BenchCase("attention", dt, Dict(("b", b), ("heads", heads), ("lq", lq), ("lk", lk), ("d", d), ("simt", 1)),
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
    public static IEnumerable<BenchResult> Run(IOps ops, IEnumerable<BenchCase> cases, double minSeconds = 0.3,
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
                yield return new BenchResult(c, times.Count, times[times.Count / 2], times[0], Family(ops));
            }
            finally
            {
                foreach (var t in inputs) t.Dispose();
            }
        }
    }

    /// <summary>
    /// Measures the device's fp32 FMA throughput (a register-only FMA chain on every thread) and its memory
    /// bandwidth (a large device-to-device copy, counted as read + write).
    /// </summary>
    public static DeviceCeilings MeasureCeilings(IOps ops, bool quick)
    {
        if (ops is not IlgpuOps ilgpu) return Cpu.CpuCeilings.Measure(ops.Device.Name, quick);
        var acc = ops.Device.Accelerator;
        int groups = quick ? 4 : acc.NumMultiprocessors * 8, threads = quick ? 32 : 256, iters = quick ? 64 : 4096;
        using var sink = Tensor.Empty(ops.Device, DType.F32, groups * threads);
        var cfg = new ILGPU.KernelConfig(groups, threads);
        var args = new FmaArgs { Out = sink.F32, Iterations = iters };
        void Fma() => ilgpu.Runtime.Launch("ceiling_fma", CeilingKernels.FmaChain, cfg, args);
        Fma();
        double fmaMs = Median(ops, Fma, quick ? 3 : 20);
        double flops = 2.0 * 8 * iters * groups * threads; // 8 independent chains, 2 FLOP per FMA

        long n = quick ? 1 << 16 : 1L << 28;
        using var src = Tensor.Empty(ops.Device, DType.F32, (int)Math.Min(n, int.MaxValue));
        using var dst = Tensor.Empty(ops.Device, DType.F32, (int)Math.Min(n, int.MaxValue));
        var from = src.Bytes;
        var to = dst.Bytes;
        void Copy() => from.CopyTo(acc.DefaultStream, in to);
        Copy();
        double copyMs = Median(ops, Copy, quick ? 3 : 20);
        return new DeviceCeilings(ops.Device.Name, flops / (fmaMs * 1e6), 2.0 * src.ByteLength / (copyMs * 1e6));
    }

    /// <summary>The kernel family the last op ran (the CPU backend has one of each).</summary>
    public static string Family(IOps ops) => ops is IlgpuOps i ? i.Runtime.LastFamily ?? "" : "cpu";

    private static double Median(IOps ops, Action launch, int runs)
    {
        var t = new List<double>();
        for (int i = 0; i < runs; i++) t.Add(TimeOne(ops, launch));
        t.Sort();
        return t[t.Count / 2];
    }

    private static double TimeOne(IOps ops, Action launch)
    {
        var acc = ops.Device.Accelerator;
        if (ComputeDevice.EnableProfiling && ops is IlgpuOps)
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

    /// <summary>Uploads random inputs for <paramref name="c"/> and returns the launch (one op, output disposed) and the inputs.</summary>
    public static (Action Launch, List<Tensor> Inputs) Prepare(IOps ops, BenchCase c)
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
                if (s.TryGetValue("simt", out int simt) && simt == 1 && ops is IlgpuOps io)
                    return (() =>
                    {
                        using var o = Tensor.Empty(ops.Device, c.DType, s["b"], s["lq"], hd);
                        Attention.Run(io.Runtime, q, k, v, o, s["heads"], 1f / MathF.Sqrt(s["d"]), variant: AttentionVariant.Simt);
                    }, inputs);
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

public struct FmaArgs
{
    public ILGPU.ArrayView<float> Out;
    public int Iterations;
}

public static class CeilingKernels
{
    /// <summary>Eight independent FMA chains per thread, kept in registers; the result is stored so nothing is dropped.</summary>
    public static void FmaChain(FmaArgs p)
    {
        int i = ILGPU.Grid.GlobalIndex.X;
        float a = i * 1e-7f, b = 0.999f, c = 1e-3f;
        float x0 = a, x1 = a + 1, x2 = a + 2, x3 = a + 3, x4 = a + 4, x5 = a + 5, x6 = a + 6, x7 = a + 7;
        for (int k = 0; k < p.Iterations; k++)
        {
            x0 = x0 * b + c; x1 = x1 * b + c; x2 = x2 * b + c; x3 = x3 * b + c;
            x4 = x4 * b + c; x5 = x5 * b + c; x6 = x6 * b + c; x7 = x7 * b + c;
        }
        p.Out[i] = x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7;
    }
}
