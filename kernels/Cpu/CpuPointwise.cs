using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels.Cpu;

/// <summary>Element-wise fp32 kernels: activations, GEGLU, broadcast add/mul, affine scale, clamp.</summary>
public static unsafe class CpuPointwise
{
    private const int W = 16;
    private const long Grain = 1 << 16; // elements per parallel chunk: ~256 KB, amortises the fork
    private const float InvSqrt2 = 0.70710678118654752f;
    private const float Sqrt2OverPi = 0.79788456080286536f;

    public static void Activate(float* x, float* y, long n, Activation kind)
    {
        if (n <= 0) throw new KernelArgumentException($"cpu activate: element count {n} must be positive");
        if (x == null || y == null) throw new KernelArgumentException("cpu activate: null buffer");
        if (!Enum.IsDefined(kind)) throw new KernelArgumentException($"cpu activate: unknown kind {(int)kind}");
        CpuChunks.For(n, Grain, (s, e) =>
        {
            switch (kind)
            {
                case Activation.Silu: Apply<SiluOp>(x + s, y + s, e - s); break;
                case Activation.Gelu: Apply<GeluOp>(x + s, y + s, e - s); break;
                case Activation.GeluTanh: Apply<GeluTanhOp>(x + s, y + s, e - s); break;
                case Activation.QuickGelu: Apply<QuickGeluOp>(x + s, y + s, e - s); break;
                case Activation.Relu: Apply<ReluOp>(x + s, y + s, e - s); break;
                case Activation.Tanh: Apply<TanhOp>(x + s, y + s, e - s); break;
                default: Apply<ExpOp>(x + s, y + s, e - s); break;
            }
        });
    }

    /// <summary>x [rows, 2c] → y [rows, c]: x[..., :c] * gelu(x[..., c:]) (exact erf GELU, or tanh when approximate).</summary>
    public static void Geglu(float* x, float* y, long rows, int c, bool approximate)
    {
        if (rows <= 0 || c <= 0) throw new KernelArgumentException($"cpu geglu: rows {rows} and channels {c} must be positive");
        if (x == null || y == null) throw new KernelArgumentException("cpu geglu: null buffer");
        CpuChunks.For(rows, Math.Max(1, Grain / c), (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                float* a = x + r * 2 * c, g = a + c, o = y + r * c;
                if (approximate) Gated<GeluTanhOp>(a, g, o, c);
                else Gated<GeluOp>(a, g, o, c);
            }
        });
    }

    /// <summary>
    /// y = a op b with b broadcast to a's shape: b's shape is right-aligned against a's, each of its dimensions equal
    /// to a's or 1; b may have lower rank. y has a's shape (y may alias a).
    /// </summary>
    public static void Binary(BinaryOp op, float* a, float* b, float* y, ReadOnlySpan<int> aShape, ReadOnlySpan<int> bShape)
    {
        if (op != BinaryOp.Add && op != BinaryOp.Mul) throw new KernelArgumentException($"cpu binary: unknown op {(int)op}");
        if (a == null || b == null || y == null) throw new KernelArgumentException("cpu binary: null buffer");
        int rank = aShape.Length;
        if (rank == 0 || bShape.Length > rank)
            throw new KernelArgumentException($"cpu binary: b [{string.Join(",", bShape.ToArray())}] cannot broadcast to a [{string.Join(",", aShape.ToArray())}]");
        var bp = new int[rank];
        int pad = rank - bShape.Length;
        long total = 1, bTotal = 1;
        for (int d = 0; d < rank; d++)
        {
            bp[d] = d < pad ? 1 : bShape[d - pad];
            if (aShape[d] <= 0 || bp[d] <= 0 || (bp[d] != 1 && bp[d] != aShape[d]))
                throw new KernelArgumentException($"cpu binary: b [{string.Join(",", bShape.ToArray())}] cannot broadcast to a [{string.Join(",", aShape.ToArray())}]");
            total *= aShape[d];
            bTotal *= bp[d];
        }
        bool add = op == BinaryOp.Add;
        if (bTotal == total)
        {
            CpuChunks.For(total, Grain, (s, e) => Rows(add, a + s, b + s, y + s, e - s));
            return;
        }
        // Merge a's dimensions into runs where b is either all-broadcast or all-equal; the innermost run is a
        // contiguous row either shared by b (b stride 0 → scalar) or matching b element for element.
        var dims = new List<(long a, bool bc)>();
        for (int d = 0; d < rank; d++)
        {
            if (aShape[d] == 1) continue;
            bool bc = bp[d] == 1;
            if (dims.Count > 0 && dims[^1].bc == bc) dims[^1] = (dims[^1].a * aShape[d], bc);
            else dims.Add((aShape[d], bc));
        }
        if (dims.Count == 0) { Rows(add, a, b, y, 1); return; }
        long inner = dims[^1].a;
        bool innerBc = dims[^1].bc;
        int outerRank = dims.Count - 1;
        var outer = new long[outerRank];
        var bStride = new long[outerRank];
        long stride = innerBc ? 1 : inner;
        for (int d = outerRank - 1; d >= 0; d--)
        {
            outer[d] = dims[d].a;
            bStride[d] = dims[d].bc ? 0 : stride;
            if (!dims[d].bc) stride *= dims[d].a;
        }
        long rows = total / inner;
        CpuChunks.For(rows, Math.Max(1, Grain / inner), (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                long rem = r, bo = 0;
                for (int d = outerRank - 1; d >= 0; d--)
                {
                    long i = rem % outer[d];
                    rem /= outer[d];
                    bo += i * bStride[d];
                }
                float* ar = a + r * inner, yr = y + r * inner;
                if (innerBc) Scalar(add, ar, b[bo], yr, inner);
                else Rows(add, ar, b + bo, yr, inner);
            }
        });
    }

    /// <summary>y = x * alpha + beta.</summary>
    public static void Scale(float* x, float* y, long n, float alpha, float beta)
    {
        if (n <= 0) throw new KernelArgumentException($"cpu scale: element count {n} must be positive");
        if (x == null || y == null) throw new KernelArgumentException("cpu scale: null buffer");
        CpuChunks.For(n, Grain, (s, e) => ScaleRange(x + s, y + s, e - s, alpha, beta));
    }

    /// <summary>y = min(max(x, lo), hi).</summary>
    public static void Clamp(float* x, float* y, long n, float lo, float hi)
    {
        if (n <= 0) throw new KernelArgumentException($"cpu clamp: element count {n} must be positive");
        if (x == null || y == null) throw new KernelArgumentException("cpu clamp: null buffer");
        if (!(lo <= hi)) throw new KernelArgumentException($"cpu clamp: lower bound {lo} exceeds upper bound {hi}");
        CpuChunks.For(n, Grain, (s, e) => ClampRange(x + s, y + s, e - s, lo, hi));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ScaleRange(float* x, float* y, long n, float alpha, float beta)
    {
        long i = 0;
        var va = Vector512.Create(alpha);
        var vb = Vector512.Create(beta);
        for (; i <= n - W; i += W) Vector512.Store(Vector512.FusedMultiplyAdd(Vector512.Load(x + i), va, vb), y + i);
        for (; i < n; i++) y[i] = MathF.FusedMultiplyAdd(x[i], alpha, beta);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ClampRange(float* x, float* y, long n, float lo, float hi)
    {
        long i = 0;
        var vl = Vector512.Create(lo);
        var vh = Vector512.Create(hi);
        for (; i <= n - W; i += W) Vector512.Store(Vector512.Min(Vector512.Max(Vector512.Load(x + i), vl), vh), y + i);
        for (; i < n; i++) y[i] = MathF.Min(MathF.Max(x[i], lo), hi);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Rows(bool add, float* a, float* b, float* y, long n)
    {
        long i = 0;
        if (add)
        {
            for (; i <= n - W; i += W) Vector512.Store(Vector512.Load(a + i) + Vector512.Load(b + i), y + i);
            for (; i < n; i++) y[i] = a[i] + b[i];
        }
        else
        {
            for (; i <= n - W; i += W) Vector512.Store(Vector512.Load(a + i) * Vector512.Load(b + i), y + i);
            for (; i < n; i++) y[i] = a[i] * b[i];
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Scalar(bool add, float* a, float b, float* y, long n)
    {
        long i = 0;
        var vb = Vector512.Create(b);
        if (add)
        {
            for (; i <= n - W; i += W) Vector512.Store(Vector512.Load(a + i) + vb, y + i);
            for (; i < n; i++) y[i] = a[i] + b;
        }
        else
        {
            for (; i <= n - W; i += W) Vector512.Store(Vector512.Load(a + i) * vb, y + i);
            for (; i < n; i++) y[i] = a[i] * b;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Apply<TOp>(float* x, float* y, long n) where TOp : struct, IUnary
    {
        long i = 0;
        for (; i <= n - W; i += W) Vector512.Store(default(TOp).Of(Vector512.Load(x + i)), y + i);
        for (; i < n; i++) y[i] = default(TOp).Of(x[i]);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Gated<TOp>(float* a, float* g, float* y, int n) where TOp : struct, IUnary
    {
        int i = 0;
        for (; i <= n - W; i += W) Vector512.Store(Vector512.Load(a + i) * default(TOp).Of(Vector512.Load(g + i)), y + i);
        for (; i < n; i++) y[i] = a[i] * default(TOp).Of(g[i]);
    }

    internal interface IUnary
    {
        Vector512<float> Of(Vector512<float> x);
        float Of(float x);
    }

    internal struct SiluOp : IUnary
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector512<float> Of(Vector512<float> x) => x / (Vector512<float>.One + CpuMath.Exp(-x));
        public readonly float Of(float x) => x / (1f + CpuMath.Exp(-x));
    }

    // gelu(x) = x/2 * erfc(-x/√2): no cancellation for negative x.
    internal struct GeluOp : IUnary
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector512<float> Of(Vector512<float> x) =>
            x * Vector512.Create(0.5f) * CpuMath.Erfc(x * Vector512.Create(-InvSqrt2));
        public readonly float Of(float x) => x * 0.5f * CpuMath.Erfc(x * -InvSqrt2);
    }

    // 0.5x(1 + tanh(u)) = x * sigmoid(2u), which keeps the negative tail accurate.
    internal struct GeluTanhOp : IUnary
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector512<float> Of(Vector512<float> x)
        {
            var u = Vector512.Create(2f * Sqrt2OverPi) * Vector512.FusedMultiplyAdd(Vector512.Create(0.044715f) * x, x * x, x);
            return x * CpuMath.Sigmoid(u);
        }
        public readonly float Of(float x) => x * CpuMath.Sigmoid(2f * Sqrt2OverPi * MathF.FusedMultiplyAdd(0.044715f * x, x * x, x));
    }

    internal struct QuickGeluOp : IUnary
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector512<float> Of(Vector512<float> x) => x * CpuMath.Sigmoid(x * Vector512.Create(1.702f));
        public readonly float Of(float x) => x * CpuMath.Sigmoid(1.702f * x);
    }

    internal struct ReluOp : IUnary
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector512<float> Of(Vector512<float> x) => Vector512.Max(x, Vector512<float>.Zero);
        public readonly float Of(float x) => MathF.Max(x, 0f);
    }

    internal struct TanhOp : IUnary
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector512<float> Of(Vector512<float> x) => CpuMath.Tanh(x);
        public readonly float Of(float x) => CpuMath.Tanh(x);
    }

    internal struct ExpOp : IUnary
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly Vector512<float> Of(Vector512<float> x) => CpuMath.Exp(x);
        public readonly float Of(float x) => CpuMath.Exp(x);
    }
}
