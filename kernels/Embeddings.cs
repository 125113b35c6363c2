using ILGPU;
using ILGPU.Runtime;
using StableDiffusion.Runtime;
using Half = ILGPU.Half;

namespace StableDiffusion.Kernels;

// Sinusoidal timestep embedding (diffusers' get_timestep_embedding) and embedding-table gather (CLIP tokens).

public struct TimestepArgs<T> where T : unmanaged
{
    public ArrayView<float> Timesteps; // [N]
    public ArrayView<float> Freqs;     // [half], computed on the host exactly as PyTorch does in fp32
    public ArrayView<T> Y;             // [N, Dim]
    public long Total;
    public int Dim, Half, FlipSinToCos;
}

public struct GatherArgs<T> where T : unmanaged
{
    public ArrayView<T> Table; // [V, C]
    public ArrayView<int> Ids; // [R]
    public ArrayView<T> Y;     // [R, C]
    public long Total;
    public int C, V;
}

public static class EmbeddingKernels
{
    public static void Timestep<T, TE>(TimestepArgs<T> p)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < p.Total; i += stride)
        {
            long n = i / p.Dim;
            int j = (int)(i - n * p.Dim);
            float v = 0f; // the zero pad of an odd dimension
            if (j < 2 * p.Half)
            {
                bool first = j < p.Half;
                int k = first ? j : j - p.Half;
                float arg = p.Timesteps[n] * p.Freqs[k]; // fp32 product, as in PyTorch
                bool cos = first == (p.FlipSinToCos != 0);
                v = SinCos(arg, cos);
            }
            p.Y[i] = default(TE).FromFloat(v);
        }
    }

    /// <summary>
    /// sin or cos of a float argument that can reach ~1000 rad, where the GPU's sin.approx loses digits: Cody-Waite
    /// reduction by pi/2 in three float parts (exact products for the quadrant counts that occur), then minimax
    /// polynomials on [-pi/4, pi/4] (Cephes' single-precision coefficients). Float only, so OpenCL devices without
    /// cl_khr_fp64 can build it.
    /// </summary>
    public static float SinCos(float x, bool cos)
    {
        float kq = MathF.Floor(x * 0.636619772f + 0.5f);
        float r = x - kq * 1.5703125f;
        r -= kq * 4.837512969970703125e-4f;
        r -= kq * 7.54978995489188216e-8f;
        int q = (int)kq & 3;
        if (cos) q = (q + 1) & 3;
        float r2 = r * r;
        float s = r + r * r2 * (-1.6666654611e-1f + r2 * (8.3321608736e-3f + r2 * -1.9515295891e-4f));
        float c = 1f - 0.5f * r2 + r2 * r2 * (4.166664568298827e-2f + r2 * (-1.388731625493765e-3f + r2 * 2.443315711809948e-5f));
        return q == 0 ? s : q == 1 ? c : q == 2 ? -s : -c;
    }

    public static void Gather<T>(GatherArgs<T> p) where T : unmanaged
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < p.Total; i += stride)
        {
            long r = i / p.C;
            long c = i - r * p.C;
            int id = p.Ids[r];
            // Ids are checked on the host; the guard only keeps a stray id from reading out of bounds.
            if (id >= 0 && id < p.V) p.Y[i] = p.Table[(long)id * p.C + c];
        }
    }
}

public static class Embeddings
{
    /// <summary>
    /// The frequency table of get_timestep_embedding, computed with PyTorch's fp32 operation order:
    /// exp(-ln(max_period) * j / (half - shift)).
    /// </summary>
    public static float[] TimestepFrequencies(int half, float downscaleFreqShift, float maxPeriod)
    {
        var f = new float[half];
        float lnMax = (float)-Math.Log(maxPeriod);
        float denom = half - downscaleFreqShift;
        for (int j = 0; j < half; j++)
        {
            float exponent = lnMax * j / denom;
            f[j] = (float)Math.Exp(exponent);
        }
        return f;
    }

    /// <summary>timesteps fp32 [N] → y [N, dim]: [cos, sin] of t*freq when flipSinToCos, else [sin, cos].</summary>
    public static void Timestep(KernelRuntime rt, Tensor timesteps, Tensor y, bool flipSinToCos, float downscaleFreqShift,
        float maxPeriod = 10000f)
    {
        if (timesteps.DType != DType.F32 || timesteps.Rank != 1)
            throw new KernelArgumentException($"timestep_embedding: timesteps must be fp32 [N], got {timesteps}");
        if (y.Rank != 2 || y.Dim(0) != timesteps.Dim(0) || !y.DType.IsFloat())
            throw new KernelArgumentException($"timestep_embedding: output must be [{timesteps.Dim(0)}, dim], got {y}");
        int dim = y.Dim(1), half = dim / 2;
        if (half < 1) throw new KernelArgumentException($"timestep_embedding: dimension {dim} is too small");
        if (!(maxPeriod > 1f) || half - downscaleFreqShift == 0f)
            throw new KernelArgumentException($"timestep_embedding: invalid max_period {maxPeriod} or shift {downscaleFreqShift}");
        using var freqs = Tensor.FromArray(rt.Device, TimestepFrequencies(half, downscaleFreqShift, maxPeriod), DType.F32, half);
        var cfg = Elementwise.Config(rt, y.Length);
        if (y.DType == DType.F32)
            rt.Launch("timestep_embedding", EmbeddingKernels.Timestep<float, F32Elem>, cfg, new TimestepArgs<float>
            {
                Timesteps = timesteps.F32, Freqs = freqs.F32, Y = y.F32, Total = y.Length, Dim = dim, Half = half,
                FlipSinToCos = flipSinToCos ? 1 : 0,
            });
        else
            rt.Launch("timestep_embedding", EmbeddingKernels.Timestep<Half, F16Elem>, cfg, new TimestepArgs<Half>
            {
                Timesteps = timesteps.F32, Freqs = freqs.F32, Y = y.F16, Total = y.Length, Dim = dim, Half = half,
                FlipSinToCos = flipSinToCos ? 1 : 0,
            });
        rt.Device.Synchronize(); // freqs goes back to the pool when this returns
    }

    /// <summary>y[r, :] = table[ids[r], :]; an id outside the table is an error.</summary>
    public static void Gather(KernelRuntime rt, Tensor table, Tensor ids, Tensor y)
    {
        if (table.Rank != 2 || ids.DType != DType.I32)
            throw new KernelArgumentException($"embedding: table must be [V, C] and ids int32, got {table} and {ids}");
        int v = table.Dim(0), c = table.Dim(1);
        if (y.DType != table.DType || y.Length != ids.Length * c || y.Dim(-1) != c)
            throw new KernelArgumentException($"embedding: output {y} must be [{ids.Length}, {c}] of {table.DType.Name()}");
        if (y.Length == 0) return;
        // Ids are few (77 per prompt): read them back and check the range, since a device cannot report it.
        var host = new int[ids.Length];
        ids.I32.CopyToCPU(rt.Device.Accelerator.DefaultStream, host);
        rt.Device.Synchronize();
        for (int i = 0; i < host.Length; i++)
            if ((uint)host[i] >= (uint)v)
                throw new KernelArgumentException($"embedding: id {host[i]} at position {i} is outside the table's {v} rows");
        var cfg = Elementwise.Config(rt, y.Length);
        if (table.DType.SizeInBytes() == 4)
            rt.Launch("embedding", EmbeddingKernels.Gather<int>, cfg, new GatherArgs<int>
            {
                Table = table.View<int>(), Ids = ids.I32, Y = y.View<int>(), Total = y.Length, C = c, V = v,
            });
        else
            rt.Launch("embedding", EmbeddingKernels.Gather<Half>, cfg, new GatherArgs<Half>
            {
                Table = table.View<Half>(), Ids = ids.I32, Y = y.View<Half>(), Total = y.Length, C = c, V = v,
            });
    }

    internal static IEnumerable<KernelEntry> Entries()
    {
        yield return KernelRuntime.Entry<TimestepArgs<float>>("timestep_embedding", "fp32", EmbeddingKernels.Timestep<float, F32Elem>);
        yield return KernelRuntime.Entry<TimestepArgs<Half>>("timestep_embedding", "fp16", EmbeddingKernels.Timestep<Half, F16Elem>);
        yield return KernelRuntime.Entry<GatherArgs<int>>("embedding", "32-bit", EmbeddingKernels.Gather<int>);
        yield return KernelRuntime.Entry<GatherArgs<Half>>("embedding", "16-bit", EmbeddingKernels.Gather<Half>);
    }
}
