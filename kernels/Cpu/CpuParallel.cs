namespace StableDiffusion.Kernels.Cpu;

/// <summary>
/// How many threads the C# CPU backend uses, and the one place its kernels fork work. Thread count defaults to the
/// machine's logical processors; benchmarks set it to the same count as libtorch's so ratios compare like with like.
/// </summary>
public static class CpuParallel
{
    private static int threads = Environment.ProcessorCount;

    public static int Threads
    {
        get => threads;
        set => threads = value >= 1 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "at least one thread");
    }

    /// <summary>Runs body(i) for i in [0, count) on up to <see cref="Threads"/> threads; inline when one suffices.</summary>
    public static void For(int count, Action<int> body)
    {
        if (count <= 0) return;
        if (count == 1 || threads == 1)
        {
            for (int i = 0; i < count; i++) body(i);
            return;
        }
        Parallel.For(0, count, new ParallelOptions { MaxDegreeOfParallelism = threads }, body);
    }
}
