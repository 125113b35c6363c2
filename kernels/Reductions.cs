using ILGPU;
using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels;

/// <summary>
/// Threads-per-row layout of the row-wise kernels (layer norm, softmax, group-norm statistics): each row is
/// reduced by <see cref="ThreadsPerRow"/> threads (a power of two) and a group holds <see cref="RowsPerGroup"/> rows.
/// </summary>
public interface IRowTile
{
    int ThreadsPerRow { get; }
    int RowsPerGroup { get; }
}

/// <summary>One warp per row, four rows per group (CUDA and OpenCL).</summary>
public struct RowTile32x4 : IRowTile
{
    public readonly int ThreadsPerRow => 32;
    public readonly int RowsPerGroup => 4;
}

/// <summary>256 threads on one row: the group-norm statistics kernel on GPUs.</summary>
public struct RowTile256x1 : IRowTile
{
    public readonly int ThreadsPerRow => 256;
    public readonly int RowsPerGroup => 1;
}

/// <summary>Four threads per row, two rows: tests on the ILGPU CPU accelerator.</summary>
public struct RowTileTest : IRowTile
{
    public readonly int ThreadsPerRow => 4;
    public readonly int RowsPerGroup => 2;
}

internal static class GroupReduce
{
    // Shared-memory tree reductions. They avoid warp shuffles, which ILGPU can only emit for CUDA and for
    // Intel OpenCL devices; every thread of the group must call them (they contain barriers).

    public static float Sum(ArrayView<float> scratch, int row, int lane, int width, float v)
    {
        int b = row * width;
        scratch[b + lane] = v;
        SharedBarrier.Sync();
        for (int s = width >> 1; s > 0; s >>= 1)
        {
            if (lane < s) scratch[b + lane] += scratch[b + lane + s];
            SharedBarrier.Sync();
        }
        float r = scratch[b];
        SharedBarrier.Sync();
        return r;
    }

    public static float Max(ArrayView<float> scratch, int row, int lane, int width, float v)
    {
        int b = row * width;
        scratch[b + lane] = v;
        SharedBarrier.Sync();
        for (int s = width >> 1; s > 0; s >>= 1)
        {
            if (lane < s) scratch[b + lane] = Math.Max(scratch[b + lane], scratch[b + lane + s]);
            SharedBarrier.Sync();
        }
        float r = scratch[b];
        SharedBarrier.Sync();
        return r;
    }
}
