using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace StableDiffusion.Kernels.Cpu;

/// <summary>
/// The host's measured ceilings for the roofline: fp32 FMA throughput (independent register FMA chains at the widest
/// vector width, one chain set per thread) and copy bandwidth (a buffer well beyond the caches, read + write).
/// </summary>
public static unsafe class CpuCeilings
{
    public static DeviceCeilings Measure(string deviceName, bool quick)
    {
        long iters = quick ? 1 << 20 : 1 << 24; // quick still runs long enough to dwarf starting the threads
        double fmaSeconds = Best(quick ? 1 : 3, () => OnEveryThread(() => Sink(FmaChains(iters))));
        double flops = 2.0 * Chains * Vector512<float>.Count * iters * CpuParallel.Threads;

        long bytes = quick ? 1 << 20 : 1L << 29;
        var src = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
        var dst = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
        try
        {
            new Span<byte>(src, (int)Math.Min(bytes, int.MaxValue)).Fill(1);
            int chunks = CpuParallel.Threads * 4;
            long per = bytes / chunks;
            void Copy() => CpuParallel.For(chunks, c => Buffer.MemoryCopy(src + c * per, dst + c * per, per, per));
            Copy();
            double copySeconds = Best(quick ? 1 : 5, Copy);
            return new DeviceCeilings(deviceName, flops / fmaSeconds / 1e9, 2.0 * per * chunks / copySeconds / 1e9);
        }
        finally
        {
            NativeMemory.AlignedFree(src);
            NativeMemory.AlignedFree(dst);
        }
    }

    private static double Best(int runs, Action run)
    {
        double best = double.MaxValue;
        for (int i = 0; i < runs; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            run();
            best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
        }
        return best;
    }

    private const int Chains = 12;

    // One dedicated thread each: a thread pool may run two short work items one after the other on one thread.
    private static void OnEveryThread(Action body)
    {
        var threads = Enumerable.Range(0, CpuParallel.Threads).Select(_ => new Thread(() => body())).ToList();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) t.Join();
    }

    private static volatile float sink;

    private static void Sink(float v) => sink = v;

    // Twelve independent chains hide the FMA latency (4 cycles, up to 2 per cycle); Vector512 lowers to 256-bit halves where
    // AVX-512 is absent, which is then also the honest ceiling of the backend's kernels. Fully optimised from the
    // first call: it runs once, and tier-0 code would measure the JIT, not the FMA units.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static float FmaChains(long iters)
    {
        var a = Vector512.Create(0.999f);
        var b = Vector512.Create(1e-7f);
        Vector512<float> c0 = Vector512.Create(1f), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0,
            c8 = c0, c9 = c0, c10 = c0, c11 = c0;
        for (long i = 0; i < iters; i++)
        {
            c0 = Vector512.FusedMultiplyAdd(c0, a, b);
            c1 = Vector512.FusedMultiplyAdd(c1, a, b);
            c2 = Vector512.FusedMultiplyAdd(c2, a, b);
            c3 = Vector512.FusedMultiplyAdd(c3, a, b);
            c4 = Vector512.FusedMultiplyAdd(c4, a, b);
            c5 = Vector512.FusedMultiplyAdd(c5, a, b);
            c6 = Vector512.FusedMultiplyAdd(c6, a, b);
            c7 = Vector512.FusedMultiplyAdd(c7, a, b);
            c8 = Vector512.FusedMultiplyAdd(c8, a, b);
            c9 = Vector512.FusedMultiplyAdd(c9, a, b);
            c10 = Vector512.FusedMultiplyAdd(c10, a, b);
            c11 = Vector512.FusedMultiplyAdd(c11, a, b);
        }
        return Vector512.Sum(c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11);
    }
}
