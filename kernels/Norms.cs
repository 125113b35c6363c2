using ILGPU;
using ILGPU.Runtime;
using StableDiffusion.Runtime;
using Half = ILGPU.Half;

namespace StableDiffusion.Kernels;

// Group norm over NHWC activations and layer norm over the last dimension.
// Statistics are fp32 sums of (x - shift) and (x - shift)^2, with shift = the first element of the reduced set:
// shifting removes the cancellation of the naive sum-of-squares formula, and unlike Welford needs no division
// per element, so partial sums from many groups merge by plain addition.
//
// Group norm runs in three launches so that any size keeps every multiprocessor busy:
//   1. stats:    grid (chunks, N*G): partial sums of one chunk of one (n, g) slice;
//   2. finalize: one thread per (n, g): mean and 1/sqrt(var + eps);
//   3. apply:    elementwise (x - mean) * rstd * gamma + beta, optionally SiLU.

public struct GroupNormStatsArgs<T> where T : unmanaged
{
    public ArrayView<T> X;
    public int S, C, G, Cg;
    public int ChunkElems, Chunks;
    public ArrayView<float> Partials; // [N*G][Chunks][2]
}

public struct GroupNormFinalizeArgs<T> where T : unmanaged
{
    public ArrayView<T> X;
    public int S, C, G, Cg, Chunks, Count; // Count = N*G
    public float Eps;
    public ArrayView<float> Partials;
    public ArrayView<float> Stats; // [N*G][2]: mean, rstd
}

public struct GroupNormApplyArgs<T> where T : unmanaged
{
    public ArrayView<T> X, Y, Gamma, Beta;
    public int HasAffine, Silu;
    public int S, C, G, Cg;
    public long Total;
    public ArrayView<float> Stats;
}

public struct LayerNormArgs<T> where T : unmanaged
{
    public ArrayView<T> X, Y, Gamma, Beta;
    public int HasGamma, HasBeta;
    public int Rows, C;
    public float Eps;
}

public static class NormKernels
{
    public static void GroupNormStats<T, TE, TRow>(GroupNormStatsArgs<T> p)
        where T : unmanaged
        where TE : struct, IElem<T>
        where TRow : struct, IRowTile
    {
        var e = default(TE);
        int width = default(TRow).ThreadsPerRow;
        var scratch = SharedMemory.Allocate<float>(default(TRow).ThreadsPerRow);
        int lane = Group.IdxX;
        int ng = Grid.IdxY, chunk = Grid.IdxX;
        int n = ng / p.G, g = ng - n * p.G;
        long baseOff = (long)n * p.S * p.C + (long)g * p.Cg;
        float shift = e.ToFloat(p.X[baseOff]);
        long total = (long)p.S * p.Cg;
        long start = (long)chunk * p.ChunkElems;
        long end = Math.Min(total, start + p.ChunkElems);
        float sum = 0f, sq = 0f;
        for (long i = start + lane; i < end; i += width)
        {
            long s = i / p.Cg;
            long cl = i - s * p.Cg;
            float v = e.ToFloat(p.X[baseOff + s * p.C + cl]) - shift;
            sum += v;
            sq += v * v;
        }
        sum = GroupReduce.Sum(scratch, 0, lane, width, sum);
        sq = GroupReduce.Sum(scratch, 0, lane, width, sq);
        if (lane == 0)
        {
            long o = ((long)ng * p.Chunks + chunk) * 2;
            p.Partials[o] = sum;
            p.Partials[o + 1] = sq;
        }
    }

    public static void GroupNormFinalize<T, TE>(GroupNormFinalizeArgs<T> p)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        int stride = Grid.DimX * Group.DimX;
        for (int ng = Grid.GlobalIndex.X; ng < p.Count; ng += stride)
        {
            int n = ng / p.G, g = ng - n * p.G;
            float shift = default(TE).ToFloat(p.X[(long)n * p.S * p.C + (long)g * p.Cg]);
            float sum = 0f, sq = 0f;
            for (int c = 0; c < p.Chunks; c++)
            {
                long o = ((long)ng * p.Chunks + c) * 2;
                sum += p.Partials[o];
                sq += p.Partials[o + 1];
            }
            float count = (float)p.S * p.Cg;
            float meanShifted = sum / count;
            float variance = Math.Max(0f, sq / count - meanShifted * meanShifted);
            p.Stats[ng * 2] = shift + meanShifted;
            p.Stats[ng * 2 + 1] = 1f / MathF.Sqrt(variance + p.Eps);
        }
    }

    public static void GroupNormApply<T, TE>(GroupNormApplyArgs<T> p)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        var e = default(TE);
        long stride = (long)Grid.DimX * Group.DimX;
        long sc = (long)p.S * p.C;
        for (long i = Grid.GlobalIndex.X; i < p.Total; i += stride)
        {
            long n = i / sc;
            int c = (int)(i % p.C);
            long ng = n * p.G + c / p.Cg;
            float v = (e.ToFloat(p.X[i]) - p.Stats[ng * 2]) * p.Stats[ng * 2 + 1];
            if (p.HasAffine != 0) v = v * e.ToFloat(p.Gamma[c]) + e.ToFloat(p.Beta[c]);
            if (p.Silu != 0) v *= KernelMath.Sigmoid(v);
            p.Y[i] = e.FromFloat(v);
        }
    }

    public static void LayerNorm<T, TE, TRow>(LayerNormArgs<T> p)
        where T : unmanaged
        where TE : struct, IElem<T>
        where TRow : struct, IRowTile
    {
        var e = default(TE);
        int width = default(TRow).ThreadsPerRow;
        var scratch = SharedMemory.Allocate<float>(default(TRow).ThreadsPerRow * default(TRow).RowsPerGroup);
        int local = Group.IdxX / width;
        int lane = Group.IdxX - local * width;
        int row = Grid.IdxX * default(TRow).RowsPerGroup + local;
        bool active = row < p.Rows;
        long b = (long)(active ? row : 0) * p.C;
        float shift = e.ToFloat(p.X[b]);
        float sum = 0f, sq = 0f;
        if (active)
        {
            for (int c = lane; c < p.C; c += width)
            {
                float v = e.ToFloat(p.X[b + c]) - shift;
                sum += v;
                sq += v * v;
            }
        }
        sum = GroupReduce.Sum(scratch, local, lane, width, sum);
        sq = GroupReduce.Sum(scratch, local, lane, width, sq);
        if (!active) return;
        float meanShifted = sum / p.C;
        float rstd = 1f / MathF.Sqrt(Math.Max(0f, sq / p.C - meanShifted * meanShifted) + p.Eps);
        float mean = shift + meanShifted;
        for (int c = lane; c < p.C; c += width)
        {
            float v = (e.ToFloat(p.X[b + c]) - mean) * rstd;
            if (p.HasGamma != 0) v *= e.ToFloat(p.Gamma[c]);
            if (p.HasBeta != 0) v += e.ToFloat(p.Beta[c]);
            p.Y[b + c] = e.FromFloat(v);
        }
    }
}

public static class Norms
{
    /// <summary>
    /// Group norm of x [N, ..., C] (channels last; the middle dimensions are the spatial positions) into y.
    /// gamma and beta are [C] or both null.
    /// </summary>
    public static void GroupNorm(KernelRuntime rt, Tensor x, Tensor y, int groups, Tensor? gamma, Tensor? beta,
        float eps, bool silu)
    {
        if (x.Rank < 2) throw new KernelArgumentException($"group_norm: input {x} needs at least [N, C]");
        if (!x.DType.IsFloat() || y.DType != x.DType || !y.Shape.SequenceEqual(x.Shape))
            throw new KernelArgumentException($"group_norm: output {y} must match input {x}");
        int n = x.Dim(0), c = x.Dim(-1);
        long s = x.Length / Math.Max(1L, (long)n * c);
        if (groups <= 0 || c % groups != 0)
            throw new KernelArgumentException($"group_norm: {c} channels do not split into {groups} groups");
        if ((gamma is null) != (beta is null))
            throw new KernelArgumentException("group_norm: give both gamma and beta, or neither");
        CheckVector("group_norm", "gamma", gamma, c, x.DType);
        CheckVector("group_norm", "beta", beta, c, x.DType);
        if (!(eps > 0f)) throw new KernelArgumentException($"group_norm: eps must be positive, got {eps}");
        if (s < 1 || n < 1 || s > int.MaxValue) throw new KernelArgumentException($"group_norm: bad input shape {x}");
        if ((long)n * groups > 65535) throw new KernelArgumentException($"group_norm: N*groups = {(long)n * groups} exceeds 65535");

        int cg = c / groups;
        long perGroup = s * cg;
        int width = rt.Profile == KernelProfile.Test ? 4 : 256;
        // About 16 elements per thread per chunk, at most 4096 chunks.
        long chunkElems = Math.Max(width * 16L, KernelMath.CeilDiv(perGroup, 4096));
        int chunks = (int)KernelMath.CeilDiv(perGroup, chunkElems);
        using var partials = Tensor.Empty(rt.Device, DType.F32, n * groups * chunks * 2);
        using var stats = Tensor.Empty(rt.Device, DType.F32, n * groups * 2);
        if (x.DType == DType.F32) Run<float, F32Elem>(rt, x, y, groups, cg, (int)s, c, n, gamma, beta, eps, silu, chunks, (int)chunkElems, partials, stats);
        else Run<Half, F16Elem>(rt, x, y, groups, cg, (int)s, c, n, gamma, beta, eps, silu, chunks, (int)chunkElems, partials, stats);
    }

    private static void Run<T, TE>(KernelRuntime rt, Tensor x, Tensor y, int groups, int cg, int s, int c, int n,
        Tensor? gamma, Tensor? beta, float eps, bool silu, int chunks, int chunkElems, Tensor partials, Tensor stats)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        var statsArgs = new GroupNormStatsArgs<T>
        {
            X = x.View<T>(), S = s, C = c, G = groups, Cg = cg, ChunkElems = chunkElems, Chunks = chunks,
            Partials = partials.F32,
        };
        var grid = new Index3D(chunks, n * groups, 1);
        if (rt.Profile == KernelProfile.Test)
            rt.Launch("group_norm", NormKernels.GroupNormStats<T, TE, RowTileTest>, new KernelConfig(grid, new Index3D(4, 1, 1)), statsArgs);
        else
            rt.Launch("group_norm", NormKernels.GroupNormStats<T, TE, RowTile256x1>, new KernelConfig(grid, new Index3D(256, 1, 1)), statsArgs);

        int count = n * groups;
        var fin = new GroupNormFinalizeArgs<T>
        {
            X = x.View<T>(), S = s, C = c, G = groups, Cg = cg, Chunks = chunks, Count = count, Eps = eps,
            Partials = partials.F32, Stats = stats.F32,
        };
        rt.Launch("group_norm", NormKernels.GroupNormFinalize<T, TE>, Elementwise.Config(rt, count), fin);

        var apply = new GroupNormApplyArgs<T>
        {
            X = x.View<T>(), Y = y.View<T>(),
            Gamma = gamma?.View<T>() ?? x.View<T>(), Beta = beta?.View<T>() ?? x.View<T>(),
            HasAffine = gamma is null ? 0 : 1, Silu = silu ? 1 : 0,
            S = s, C = c, G = groups, Cg = cg, Total = x.Length, Stats = stats.F32,
        };
        rt.Launch("group_norm", NormKernels.GroupNormApply<T, TE>, Elementwise.Config(rt, x.Length), apply);
    }

    /// <summary>Layer norm over the last dimension. gamma and beta are [C] or null.</summary>
    public static void LayerNorm(KernelRuntime rt, Tensor x, Tensor y, Tensor? gamma, Tensor? beta, float eps)
    {
        if (x.Rank < 1 || x.Length == 0) throw new KernelArgumentException($"layer_norm: empty input {x}");
        if (!x.DType.IsFloat() || y.DType != x.DType || !y.Shape.SequenceEqual(x.Shape))
            throw new KernelArgumentException($"layer_norm: output {y} must match input {x}");
        int c = x.Dim(-1);
        CheckVector("layer_norm", "gamma", gamma, c, x.DType);
        CheckVector("layer_norm", "beta", beta, c, x.DType);
        if (!(eps > 0f)) throw new KernelArgumentException($"layer_norm: eps must be positive, got {eps}");
        long rows = x.Length / c;
        if (rows > int.MaxValue) throw new KernelArgumentException($"layer_norm: too many rows in {x}");
        if (x.DType == DType.F32) RunLayerNorm<float, F32Elem>(rt, x, y, gamma, beta, eps, (int)rows, c);
        else RunLayerNorm<Half, F16Elem>(rt, x, y, gamma, beta, eps, (int)rows, c);
    }

    private static void RunLayerNorm<T, TE>(KernelRuntime rt, Tensor x, Tensor y, Tensor? gamma, Tensor? beta,
        float eps, int rows, int c)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        var args = new LayerNormArgs<T>
        {
            X = x.View<T>(), Y = y.View<T>(),
            Gamma = gamma?.View<T>() ?? x.View<T>(), Beta = beta?.View<T>() ?? x.View<T>(),
            HasGamma = gamma is null ? 0 : 1, HasBeta = beta is null ? 0 : 1, Rows = rows, C = c, Eps = eps,
        };
        if (rt.Profile == KernelProfile.Test)
            rt.Launch("layer_norm", NormKernels.LayerNorm<T, TE, RowTileTest>, RowConfig<RowTileTest>(rows), args);
        else
            rt.Launch("layer_norm", NormKernels.LayerNorm<T, TE, RowTile32x4>, RowConfig<RowTile32x4>(rows), args);
    }

    internal static KernelConfig RowConfig<TRow>(int rows) where TRow : struct, IRowTile
    {
        var t = default(TRow);
        return new KernelConfig(KernelMath.CeilDiv(rows, t.RowsPerGroup), t.ThreadsPerRow * t.RowsPerGroup);
    }

    internal static void CheckVector(string op, string name, Tensor? v, int c, DType dtype)
    {
        if (v is null) return;
        if (v.DType != dtype || v.Length != c)
            throw new KernelArgumentException($"{op}: {name} {v} must be {dtype.Name()}[{c}]");
    }

    internal static IEnumerable<KernelEntry> Entries()
    {
        foreach (var e in EntriesFor<float, F32Elem>("fp32")) yield return e;
        foreach (var e in EntriesFor<Half, F16Elem>("fp16")) yield return e;
    }

    private static IEnumerable<KernelEntry> EntriesFor<T, TE>(string dt)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        yield return KernelRuntime.Entry<GroupNormStatsArgs<T>>("group_norm_stats", $"{dt} t256", NormKernels.GroupNormStats<T, TE, RowTile256x1>);
        yield return KernelRuntime.Entry<GroupNormFinalizeArgs<T>>("group_norm_finalize", dt, NormKernels.GroupNormFinalize<T, TE>);
        yield return KernelRuntime.Entry<GroupNormApplyArgs<T>>("group_norm_apply", dt, NormKernels.GroupNormApply<T, TE>);
        yield return KernelRuntime.Entry<LayerNormArgs<T>>("layer_norm", $"{dt} 32x4", NormKernels.LayerNorm<T, TE, RowTile32x4>);
    }
}
