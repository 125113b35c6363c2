using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace StableDiffusion.Kernels.Cpu;

public static unsafe class CpuSoftmax
{
    /// <summary>y = softmax(scale · x) over the last dimension of x [rows, cols] (y may alias x).</summary>
    public static void Softmax(float* x, float* y, long rows, int cols, float scale)
    {
        if (rows <= 0 || cols <= 0) throw new KernelArgumentException($"cpu softmax: rows {rows} and cols {cols} must be positive");
        if (x == null || y == null) throw new KernelArgumentException("cpu softmax: null buffer");
        if (!float.IsFinite(scale)) throw new KernelArgumentException($"cpu softmax: scale {scale} is not finite");
        CpuChunks.For(rows, Math.Max(1, (1 << 15) / cols), (r0, r1) =>
        {
            for (long r = r0; r < r1; r++) Row(x + r * cols, y + r * cols, cols, scale);
        });
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Row(float* x, float* y, int n, float scale)
    {
        const int W = 16;
        var vs = Vector512.Create(scale);
        var vm = Vector512.Create(float.NegativeInfinity);
        int i = 0;
        for (; i <= n - W; i += W) vm = Vector512.Max(vm, Vector512.Load(x + i) * vs);
        float m = CpuMath.Max(vm);
        for (; i < n; i++) m = MathF.Max(m, x[i] * scale);
        if (float.IsNegativeInfinity(m)) m = 0f; // a row of -inf: every exp is 0 and the sum below is NaN, as in PyTorch
        var vmax = Vector512.Create(m);
        var acc = Vector512<float>.Zero;
        for (i = 0; i <= n - W; i += W)
        {
            var e = CpuMath.Exp(Vector512.FusedMultiplyAdd(Vector512.Load(x + i), vs, -vmax));
            acc += e;
            Vector512.Store(e, y + i);
        }
        float sum = Vector512.Sum(acc);
        for (; i < n; i++)
        {
            float e = CpuMath.Exp(MathF.FusedMultiplyAdd(x[i], scale, -m));
            sum += e;
            y[i] = e;
        }
        float inv = 1f / sum;
        var vi = Vector512.Create(inv);
        for (i = 0; i <= n - W; i += W) Vector512.Store(Vector512.Load(y + i) * vi, y + i);
        for (; i < n; i++) y[i] *= inv;
    }
}
