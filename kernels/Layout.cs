using ILGPU;
using ILGPU.Runtime;
using StableDiffusion.Runtime;
using Half = ILGPU.Half;

namespace StableDiffusion.Kernels;

// Batched 2-D transpose [B, R, C] → [B, C, R] through a padded shared-memory tile, so both the read and the write
// are coalesced. It covers the layout changes the models need: NCHW ↔ NHWC images ([N, C, HW] ↔ [N, HW, C]) and
// OIHW → OHWI convolution weights ([O, I, KH*KW] → [O, KH*KW, I]).

public interface ITransposeTile
{
    /// <summary>Tile edge; the group is Tile x Rows threads, each moving Tile/Rows elements.</summary>
    int Tile { get; }
    int Rows { get; }
}

public struct TransposeTile32 : ITransposeTile
{
    public readonly int Tile => 32;
    public readonly int Rows => 8;
}

public struct TransposeTileTest : ITransposeTile
{
    public readonly int Tile => 4;
    public readonly int Rows => 2;
}

public struct TransposeArgs<T> where T : unmanaged
{
    public ArrayView<T> X, Y;
    public int R, C;
    public long BatchStride; // R*C
}

public static class LayoutKernels
{
    /// <summary>Grid (ceil(C/Tile), ceil(R/Tile), B); group Tile*Rows threads.</summary>
    public static void Transpose<T, TTile>(TransposeArgs<T> p)
        where T : unmanaged
        where TTile : struct, ITransposeTile
    {
        int tile = default(TTile).Tile, rows = default(TTile).Rows;
        var s = SharedMemory.Allocate<T>(default(TTile).Tile * (default(TTile).Tile + 1));
        int tx = Group.IdxX % tile, ty = Group.IdxX / tile;
        int c0 = Grid.IdxX * tile, r0 = Grid.IdxY * tile;
        long b = Grid.IdxZ * p.BatchStride;
        for (int y = ty; y < tile; y += rows)
        {
            int r = r0 + y, c = c0 + tx;
            if (r < p.R && c < p.C) s[y * (tile + 1) + tx] = p.X[b + (long)r * p.C + c];
        }
        SharedBarrier.Sync();
        for (int y = ty; y < tile; y += rows)
        {
            int c = c0 + y, r = r0 + tx;
            if (r < p.R && c < p.C) p.Y[b + (long)c * p.R + r] = s[tx * (tile + 1) + y];
        }
    }
}

public static class Layout
{
    /// <summary>x [..., R, C] → y [..., C, R] (leading dimensions are the batch).</summary>
    public static void Transpose(KernelRuntime rt, Tensor x, Tensor y)
    {
        if (x.Rank < 2 || y.Rank != x.Rank || y.DType != x.DType)
            throw new KernelArgumentException($"transpose: expected tensors of rank >= 2 and one dtype, got {x} → {y}");
        int r = x.Dim(-2), c = x.Dim(-1);
        for (int i = 0; i < x.Rank - 2; i++)
            if (y.Dim(i) != x.Dim(i))
                throw new KernelArgumentException($"transpose: output {y} must be {x} with the last two dimensions swapped");
        if (y.Dim(-2) != c || y.Dim(-1) != r)
            throw new KernelArgumentException($"transpose: output {y} must be {x} with the last two dimensions swapped");
        if (x.Length == 0) return;
        long batch = x.Length / ((long)r * c);
        if (batch > 65535) throw new KernelArgumentException($"transpose: batch {batch} exceeds 65535");
        bool test = rt.Profile == KernelProfile.Test;
        int tile = test ? 4 : 32, threads = test ? 8 : 256;
        var cfg = new KernelConfig(new Index3D(KernelMath.CeilDiv(c, tile), KernelMath.CeilDiv(r, tile), (int)batch),
            new Index3D(threads, 1, 1));
        if (KernelMath.CeilDiv(r, tile) > 65535)
            throw new KernelArgumentException($"transpose: {r} rows exceed the grid limit");
        long bs = (long)r * c;
        switch (x.DType.SizeInBytes(), test)
        {
            case (4, false):
                rt.Launch("transpose", LayoutKernels.Transpose<int, TransposeTile32>, cfg,
                    new TransposeArgs<int> { X = x.View<int>(), Y = y.View<int>(), R = r, C = c, BatchStride = bs });
                break;
            case (4, true):
                rt.Launch("transpose", LayoutKernels.Transpose<int, TransposeTileTest>, cfg,
                    new TransposeArgs<int> { X = x.View<int>(), Y = y.View<int>(), R = r, C = c, BatchStride = bs });
                break;
            case (_, false):
                rt.Launch("transpose", LayoutKernels.Transpose<Half, TransposeTile32>, cfg,
                    new TransposeArgs<Half> { X = x.View<Half>(), Y = y.View<Half>(), R = r, C = c, BatchStride = bs });
                break;
            default:
                rt.Launch("transpose", LayoutKernels.Transpose<Half, TransposeTileTest>, cfg,
                    new TransposeArgs<Half> { X = x.View<Half>(), Y = y.View<Half>(), R = r, C = c, BatchStride = bs });
                break;
        }
    }

    internal static IEnumerable<KernelEntry> Entries()
    {
        yield return KernelRuntime.Entry<TransposeArgs<int>>("transpose", "32-bit 32x32", LayoutKernels.Transpose<int, TransposeTile32>);
        yield return KernelRuntime.Entry<TransposeArgs<Half>>("transpose", "16-bit 32x32", LayoutKernels.Transpose<Half, TransposeTile32>);
    }
}
