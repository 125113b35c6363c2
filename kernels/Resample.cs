using ILGPU;
using ILGPU.Runtime;
using StableDiffusion.Runtime;
using Half = ILGPU.Half;

namespace StableDiffusion.Kernels;

// Nearest-neighbour 2x upsampling and channel concatenation, both over NHWC.

public struct Upsample2xArgs<T> where T : unmanaged
{
    public ArrayView<T> X, Y;
    public long Total;
    public int H, W, C;
}

public struct ConcatArgs<T> where T : unmanaged
{
    public ArrayView<T> A, B, Y;
    public long Total;
    public int CA, CB;
}

/// <summary>y[r, c] = x[r, Start + c] for x [rows, CX], y [rows, CY].</summary>
public struct SliceArgs<T> where T : unmanaged
{
    public ArrayView<T> X, Y;
    public long Total;
    public int CX, CY, Start;
}

public static class ResampleKernels
{
    public static void SliceLast<T>(SliceArgs<T> p) where T : unmanaged
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < p.Total; i += stride)
        {
            long r = i / p.CY;
            long c = i - r * p.CY;
            p.Y[i] = p.X[r * p.CX + p.Start + c];
        }
    }

    public static void Upsample2x<T>(Upsample2xArgs<T> p) where T : unmanaged
    {
        long stride = (long)Grid.DimX * Group.DimX;
        int w2 = p.W * 2, h2 = p.H * 2;
        for (long i = Grid.GlobalIndex.X; i < p.Total; i += stride)
        {
            long c = i % p.C, r = i / p.C;
            long ox = r % w2;
            r /= w2;
            long oy = r % h2, n = r / h2;
            p.Y[i] = p.X[((n * p.H + (oy >> 1)) * p.W + (ox >> 1)) * p.C + c];
        }
    }

    public static void Concat<T>(ConcatArgs<T> p) where T : unmanaged
    {
        long stride = (long)Grid.DimX * Group.DimX;
        int cy = p.CA + p.CB;
        for (long i = Grid.GlobalIndex.X; i < p.Total; i += stride)
        {
            long r = i / cy;
            int c = (int)(i - r * cy);
            p.Y[i] = c < p.CA ? p.A[r * p.CA + c] : p.B[r * p.CB + c - p.CA];
        }
    }
}

public static class Resample
{
    /// <summary>x [N, H, W, C] → y [N, 2H, 2W, C], nearest neighbour.</summary>
    public static void Upsample2x(KernelRuntime rt, Tensor x, Tensor y)
    {
        if (x.Rank != 4 || y.Rank != 4 || y.DType != x.DType)
            throw new KernelArgumentException($"upsample2x: expected NHWC tensors of one dtype, got {x} → {y}");
        int n = x.Dim(0), h = x.Dim(1), w = x.Dim(2), c = x.Dim(3);
        if (y.Dim(0) != n || y.Dim(1) != 2 * h || y.Dim(2) != 2 * w || y.Dim(3) != c)
            throw new KernelArgumentException($"upsample2x: output must be [{n}, {2 * h}, {2 * w}, {c}], got {y.ShapeString()}");
        if (y.Length == 0) return;
        var cfg = Elementwise.Config(rt, y.Length);
        switch (x.DType.SizeInBytes())
        {
            case 4:
                rt.Launch("upsample2x", ResampleKernels.Upsample2x<int>, cfg,
                    new Upsample2xArgs<int> { X = x.View<int>(), Y = y.View<int>(), Total = y.Length, H = h, W = w, C = c });
                break;
            default:
                rt.Launch("upsample2x", ResampleKernels.Upsample2x<Half>, cfg,
                    new Upsample2xArgs<Half> { X = x.View<Half>(), Y = y.View<Half>(), Total = y.Length, H = h, W = w, C = c });
                break;
        }
    }

    /// <summary>Concatenates a [..., CA] and b [..., CB] along the last dimension into y [..., CA+CB].</summary>
    public static void Concat(KernelRuntime rt, Tensor a, Tensor b, Tensor y)
    {
        if (a.Rank < 1 || b.Rank != a.Rank || y.Rank != a.Rank || b.DType != a.DType || y.DType != a.DType)
            throw new KernelArgumentException($"concat: tensors {a}, {b} → {y} must share rank and dtype");
        for (int i = 0; i < a.Rank - 1; i++)
            if (a.Dim(i) != b.Dim(i) || y.Dim(i) != a.Dim(i))
                throw new KernelArgumentException($"concat: {a} and {b} differ outside the last dimension (or output {y} does)");
        int ca = a.Dim(-1), cb = b.Dim(-1);
        if (y.Dim(-1) != ca + cb) throw new KernelArgumentException($"concat: output {y} must have {ca + cb} channels");
        if (y.Length == 0) return;
        var cfg = Elementwise.Config(rt, y.Length);
        switch (a.DType.SizeInBytes())
        {
            case 4:
                rt.Launch("concat", ResampleKernels.Concat<int>, cfg,
                    new ConcatArgs<int> { A = a.View<int>(), B = b.View<int>(), Y = y.View<int>(), Total = y.Length, CA = ca, CB = cb });
                break;
            default:
                rt.Launch("concat", ResampleKernels.Concat<Half>, cfg,
                    new ConcatArgs<Half> { A = a.View<Half>(), B = b.View<Half>(), Y = y.View<Half>(), Total = y.Length, CA = ca, CB = cb });
                break;
        }
    }

    /// <summary>y [..., length] = x[..., start:start+length] (e.g. the mean half of the VAE's latent moments).</summary>
    public static void SliceLast(KernelRuntime rt, Tensor x, Tensor y, int start)
    {
        if (x.Rank < 1 || y.Rank != x.Rank || y.DType != x.DType)
            throw new KernelArgumentException($"slice: tensors {x} → {y} must share rank and dtype");
        for (int i = 0; i < x.Rank - 1; i++)
            if (x.Dim(i) != y.Dim(i)) throw new KernelArgumentException($"slice: {x} and {y} differ outside the last dimension");
        int cx = x.Dim(-1), cy = y.Dim(-1);
        if (start < 0 || cy < 0 || start + cy > cx)
            throw new KernelArgumentException($"slice: [{start}, {start + cy}) is outside the last dimension of {x}");
        if (y.Length == 0) return;
        var cfg = Elementwise.Config(rt, y.Length);
        if (x.DType.SizeInBytes() == 4)
            rt.Launch("slice", ResampleKernels.SliceLast<int>, cfg,
                new SliceArgs<int> { X = x.View<int>(), Y = y.View<int>(), Total = y.Length, CX = cx, CY = cy, Start = start });
        else
            rt.Launch("slice", ResampleKernels.SliceLast<Half>, cfg,
                new SliceArgs<Half> { X = x.View<Half>(), Y = y.View<Half>(), Total = y.Length, CX = cx, CY = cy, Start = start });
    }

    internal static IEnumerable<KernelEntry> Entries()
    {
        yield return KernelRuntime.Entry<SliceArgs<int>>("slice", "32-bit", ResampleKernels.SliceLast<int>);
        yield return KernelRuntime.Entry<SliceArgs<Half>>("slice", "16-bit", ResampleKernels.SliceLast<Half>);
        yield return KernelRuntime.Entry<Upsample2xArgs<int>>("upsample2x", "32-bit", ResampleKernels.Upsample2x<int>);
        yield return KernelRuntime.Entry<Upsample2xArgs<Half>>("upsample2x", "16-bit", ResampleKernels.Upsample2x<Half>);
        yield return KernelRuntime.Entry<ConcatArgs<int>>("concat", "32-bit", ResampleKernels.Concat<int>);
        yield return KernelRuntime.Entry<ConcatArgs<Half>>("concat", "16-bit", ResampleKernels.Concat<Half>);
    }
}
