using ILGPU;
using ILGPU.Runtime;
using StableDiffusion.Runtime;
using Half = ILGPU.Half;

namespace StableDiffusion.Kernels;

// Softmax over the last dimension: row max, then sum of exp(x - max), then the normalised write.
// (Attention does not use this: Attention.cs keeps an online softmax and never stores the score matrix.)

public struct SoftmaxArgs<T> where T : unmanaged
{
    public ArrayView<T> X, Y;
    public int Rows, C;
    public float Scale;
}

public static class SoftmaxKernels
{
    public static void Softmax<T, TE, TRow>(SoftmaxArgs<T> p)
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
        float m = float.NegativeInfinity;
        if (active)
            for (int c = lane; c < p.C; c += width) m = Math.Max(m, p.Scale * e.ToFloat(p.X[b + c]));
        m = GroupReduce.Max(scratch, local, lane, width, m);
        float sum = 0f;
        if (active)
            for (int c = lane; c < p.C; c += width) sum += MathF.Exp(p.Scale * e.ToFloat(p.X[b + c]) - m);
        sum = GroupReduce.Sum(scratch, local, lane, width, sum);
        if (!active) return;
        float inv = 1f / sum;
        for (int c = lane; c < p.C; c += width)
            p.Y[b + c] = e.FromFloat(MathF.Exp(p.Scale * e.ToFloat(p.X[b + c]) - m) * inv);
    }
}

public static class Softmax
{
    /// <summary>y = softmax(scale * x) over the last dimension.</summary>
    public static void Run(KernelRuntime rt, Tensor x, Tensor y, float scale = 1f)
    {
        if (x.Rank < 1 || x.Length == 0) throw new KernelArgumentException($"softmax: empty input {x}");
        if (!x.DType.IsFloat() || y.DType != x.DType || !y.Shape.SequenceEqual(x.Shape))
            throw new KernelArgumentException($"softmax: output {y} must match input {x}");
        int c = x.Dim(-1);
        long rows = x.Length / c;
        if (rows > int.MaxValue) throw new KernelArgumentException($"softmax: too many rows in {x}");
        if (x.DType == DType.F32) Launch<float, F32Elem>(rt, x, y, (int)rows, c, scale);
        else Launch<Half, F16Elem>(rt, x, y, (int)rows, c, scale);
    }

    private static void Launch<T, TE>(KernelRuntime rt, Tensor x, Tensor y, int rows, int c, float scale)
        where T : unmanaged
        where TE : struct, IElem<T>
    {
        var args = new SoftmaxArgs<T> { X = x.View<T>(), Y = y.View<T>(), Rows = rows, C = c, Scale = scale };
        if (rt.Profile == KernelProfile.Test)
            rt.Launch("softmax", SoftmaxKernels.Softmax<T, TE, RowTileTest>, Norms.RowConfig<RowTileTest>(rows), args);
        else
            rt.Launch("softmax", SoftmaxKernels.Softmax<T, TE, RowTile32x4>, Norms.RowConfig<RowTile32x4>(rows), args);
    }

    internal static IEnumerable<KernelEntry> Entries()
    {
        yield return KernelRuntime.Entry<SoftmaxArgs<float>>("softmax", "fp32 32x4", SoftmaxKernels.Softmax<float, F32Elem, RowTile32x4>);
        yield return KernelRuntime.Entry<SoftmaxArgs<Half>>("softmax", "fp16 32x4", SoftmaxKernels.Softmax<Half, F16Elem, RowTile32x4>);
    }
}
