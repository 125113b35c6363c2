namespace StableDiffusion.Kernels;

/// <summary>
/// One tensor-core tile configuration the launchers can choose. Registers are ptxas's count for sm_90 (the PTX report,
/// held by a test to be no lower than what ptxas says), which with the threads and the shared memory decides how many
/// groups a multiprocessor holds.
/// </summary>
public sealed record TcConfig(string Name, int BM, int BN, int Stages, int Registers)
{
    public int Threads => GemmTensorCoreKernels.Threads(BM, BN);
    public int SharedBytes => GemmTensorCoreKernels.SharedBytes(BM, BN, Stages);
    /// <summary>More than the 48 KB a group gets without cuFuncSetAttribute's opt-in.</summary>
    public bool LargeShared => SharedBytes > 48 * 1024;
    /// <summary>Share of the tensor-core peak one group of this shape sustains (model: operand bytes per flop, pipeline depth).</summary>
    public double TileEfficiency => (BM, BN) switch
    {
        (128, 128) => Stages >= 4 ? 1.0 : 0.95,
        (64, 64) => 0.70,
        _ => 0.85,
    };
}

/// <summary>The per-multiprocessor limits the wave model uses, and the tensor-core peak and memory bandwidth it trades split-K against.</summary>
public sealed record TcDevice(int Sms, bool LargeShared = true, int RegistersPerSm = 65536, int SharedPerSm = 228 * 1024,
    int ThreadsPerSm = 2048, int GroupsPerSm = 32, double PeakTflopsPerSm = 989.0 / 132, double BandwidthGBs = 3350,
    long L2Bytes = 50L << 20, double L2BandwidthGBs = 5500)
{
    /// <summary>An H100 SXM's limits (228 KB shared memory and 64 K registers per multiprocessor) with <paramref name="sms"/> multiprocessors.</summary>
    public static TcDevice Hopper(int sms, bool largeShared = true) => new(sms, largeShared);
}

/// <summary>What the planner chose for one GEMM: configuration, K split, and the wave arithmetic behind it.</summary>
public sealed record TcPlan(TcConfig Config, int SplitK, int KTilesPerSplit, long Blocks, int BlocksPerSm, double Waves,
    double PredictedUs, double PeakFraction)
{
    /// <summary>waves ÷ ⌈waves⌉: how full the last wave is.</summary>
    public double WaveEfficiency => Waves / Math.Ceiling(Waves);
}

/// <summary>
/// Picks the tensor-core configuration and split-K for one GEMM (M x N x K, batch) from the device: registers, shared
/// memory and threads per group give groups per multiprocessor, which with the grid gives waves. The predicted time is
/// ⌈waves⌉ × the time of one wave (groups share a multiprocessor's peak, scaled by the tile's efficiency) plus, when K
/// is split, the fp32 partial sums' round trip through memory and the reduction launch. The same planner serves
/// `sd kernels --plan` and every tensor-core launch.
/// </summary>
public static class TcPlanner
{
    // Registers: the most ptxas 11.8 gives the GEMM or the implicit-GEMM convolution for sm_90 (127/126, 127/126,
    // 132/125, 128/125, 138/125), rounded up to the 8 a warp's allocation granule holds per thread.
    public static readonly TcConfig C128x128 = new("128x128x32 3-stage", 128, 128, 3, 128);
    public static readonly TcConfig C128x128S4 = new("128x128x32 4-stage", 128, 128, 4, 128);
    public static readonly TcConfig C128x64 = new("128x64x32 3-stage", 128, 64, 3, 136);
    public static readonly TcConfig C64x128 = new("64x128x32 3-stage", 64, 128, 3, 128);
    public static readonly TcConfig C64x64 = new("64x64x32 3-stage", 64, 64, 3, 144);

    /// <summary>Every configuration, largest first (ties go to the earlier one).</summary>
    public static IReadOnlyList<TcConfig> Configs { get; } = [C128x128S4, C128x128, C128x64, C64x128, C64x64];

    public const int MaxSplitK = 16;
    /// <summary>A split keeps at least this many k-tiles, so its pipeline fills.</summary>
    public const int MinKTilesPerSplit = 4;
    /// <summary>What the reduction launch costs beyond its memory traffic (a queued launch behind the GEMM).</summary>
    public const double ReduceLaunchUs = 2;

    public static int BlocksPerSm(TcConfig c, TcDevice d)
    {
        int warps = c.Threads / 32;
        int regsPerWarp = (c.Registers * 32 + 255) / 256 * 256;
        int byRegs = d.RegistersPerSm / (regsPerWarp * warps);
        int bySmem = d.SharedPerSm / (c.SharedBytes + 1024); // 1 KB per group is the driver's
        int byThreads = d.ThreadsPerSm / c.Threads;
        return Math.Max(0, Math.Min(Math.Min(byRegs, bySmem), Math.Min(byThreads, d.GroupsPerSm)));
    }

    /// <summary>The plan of one configuration with a given split (clamped so no split is empty).</summary>
    public static TcPlan Evaluate(TcConfig c, int splitK, long m, long n, long k, int batch, TcDevice d)
    {
        int kTiles = (int)Math.Max(1, (k + GemmTensorCoreKernels.BK - 1) / GemmTensorCoreKernels.BK);
        int per = (kTiles + Math.Max(1, splitK) - 1) / Math.Max(1, splitK);
        int splits = (kTiles + per - 1) / per;
        long tiles = KernelMath.CeilDiv(m, c.BM) * KernelMath.CeilDiv(n, c.BN) * batch;
        long blocks = tiles * splits;
        int perSm = Math.Max(1, BlocksPerSm(c, d));
        double waves = (double)blocks / ((long)d.Sms * perSm);
        // One wave: each multiprocessor runs perSm groups side by side, sharing its peak.
        double groupFlops = 2.0 * c.BM * c.BN * per * GemmTensorCoreKernels.BK;
        double waveUs = perSm * groupFlops / (d.PeakTflopsPerSm * 1e6 * c.TileEfficiency);
        double us = Math.Ceiling(waves) * waveUs;
        if (splits > 1)
        {
            // The fp32 partials are written and read back once; while they fit in L2 they mostly stay there.
            double partialBytes = (double)splits * m * n * batch * 4;
            double bandwidth = partialBytes <= d.L2Bytes / 2 ? d.L2BandwidthGBs : d.BandwidthGBs;
            us += ReduceLaunchUs + 2 * partialBytes / (bandwidth * 1e3);
        }
        double flops = 2.0 * m * n * k * batch;
        double fraction = flops / (us * d.Sms * d.PeakTflopsPerSm * 1e6);
        return new TcPlan(c, splits, per, blocks, perSm, waves, us, fraction);
    }

    /// <summary>A plan whose last wave is at least this full is preferred to any that leaves more of the GPU idle.</summary>
    public const double TargetWaveEfficiency = 0.75;

    /// <summary>
    /// Prefers full waves: the fastest plan by the model among those with wave efficiency ≥ <see cref="TargetWaveEfficiency"/>
    /// (every configuration the device can run, split-K 1..16); the fastest of all only where none gets there.
    /// </summary>
    public static TcPlan Plan(long m, long n, long k, int batch, TcDevice d)
    {
        TcPlan? best = null, bestFull = null;
        int kTiles = (int)Math.Max(1, (k + GemmTensorCoreKernels.BK - 1) / GemmTensorCoreKernels.BK);
        foreach (var c in Configs)
        {
            if (c.LargeShared && !d.LargeShared) continue;
            if (BlocksPerSm(c, d) < 1) continue;
            int maxSplit = Math.Min(MaxSplitK, Math.Max(1, kTiles / MinKTilesPerSplit));
            for (int s = 1; s <= maxSplit; s++)
            {
                var p = Evaluate(c, s, m, n, k, batch, d);
                if (p.SplitK != s || (long)batch * p.SplitK > 65535) continue;
                if (best is null || p.PredictedUs < best.PredictedUs * (1 - 1e-9)) best = p;
                if (p.WaveEfficiency >= TargetWaveEfficiency && (bestFull is null || p.PredictedUs < bestFull.PredictedUs * (1 - 1e-9)))
                    bestFull = p;
            }
        }
        return bestFull ?? best ?? throw new KernelArgumentException($"tensor-core planner: no configuration fits this device ({d})");
    }

    /// <summary>The fastest split of one configuration (what the benchmark times each configuration with).</summary>
    public static TcPlan PlanFor(TcConfig c, long m, long n, long k, int batch, TcDevice d)
    {
        int kTiles = (int)Math.Max(1, (k + GemmTensorCoreKernels.BK - 1) / GemmTensorCoreKernels.BK);
        var best = Evaluate(c, 1, m, n, k, batch, d);
        for (int s = 2; s <= Math.Min(MaxSplitK, Math.Max(1, kTiles / MinKTilesPerSplit)); s++)
        {
            var p = Evaluate(c, s, m, n, k, batch, d);
            if (p.SplitK == s && p.PredictedUs < best.PredictedUs * (1 - 1e-9)) best = p;
        }
        return best;
    }

    public static TcConfig Find(string name) =>
        Configs.FirstOrDefault(c => c.Name == name || c.Name.StartsWith(name + " ", StringComparison.Ordinal)
                                    || c.Name.Replace("x32", "").Replace(" ", "-") == name)
        ?? throw new KernelArgumentException(
            $"unknown tensor-core configuration '{name}' (known: {string.Join(", ", Configs.Select(c => c.Name))})");
}
