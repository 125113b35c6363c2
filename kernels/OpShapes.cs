using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels;

/// <summary>The output shapes both backends give their ops, checked once, with the same messages.</summary>
internal static class OpShapes
{
    /// <summary>M, N, K, batch and per-operand batch strides of op(a)·op(b); a 2-D operand is broadcast.</summary>
    public readonly record struct MatMul(int M, int N, int K, int Batch, long StrideA, long StrideB, int[] Output);

    public static MatMul OfMatMul(Tensor a, Tensor b, bool transA, bool transB)
    {
        if (a.Rank is < 2 or > 3 || b.Rank is < 2 or > 3)
            throw new KernelArgumentException($"matmul: operands must be 2-D or 3-D, got {a} and {b}");
        int batchA = a.Rank == 3 ? a.Dim(0) : 1, batchB = b.Rank == 3 ? b.Dim(0) : 1;
        if (a.Rank == 3 && b.Rank == 3 && batchA != batchB)
            throw new KernelArgumentException($"matmul: batch sizes differ: {a} and {b}");
        int m = transA ? a.Dim(-1) : a.Dim(-2), k = transA ? a.Dim(-2) : a.Dim(-1);
        int kb = transB ? b.Dim(-1) : b.Dim(-2), n = transB ? b.Dim(-2) : b.Dim(-1);
        if (k != kb) throw new KernelArgumentException($"matmul: inner dimensions differ: {a}{(transA ? "ᵀ" : "")} · {b}{(transB ? "ᵀ" : "")}");
        int batch = Math.Max(batchA, batchB);
        int[] output = a.Rank == 3 || b.Rank == 3 ? [batch, m, n] : [m, n];
        return new MatMul(m, n, k, batch, a.Rank == 3 ? (long)m * k : 0, b.Rank == 3 ? (long)k * n : 0, output);
    }

    /// <summary>Rows and the output shape of x [..., in] times weight [out, in]ᵀ.</summary>
    public static (int Rows, int[] Output) OfLinear(Tensor x, Tensor weight)
    {
        if (weight.Rank != 2) throw new KernelArgumentException($"linear: weight must be [out, in], got {weight}");
        if (x.Rank < 1 || x.Dim(-1) != weight.Dim(1))
            throw new KernelArgumentException($"linear: input {x} does not end in the weight's {weight.Dim(1)} input features");
        long rows = x.Length / Math.Max(1, weight.Dim(1));
        if (rows > int.MaxValue) throw new KernelArgumentException($"linear: too many rows in {x}");
        var output = x.ShapeArray();
        output[^1] = weight.Dim(0);
        return ((int)rows, output);
    }

    /// <summary>The residual must have the output's shape: checked before anything is allocated.</summary>
    public static void Residual(string op, Tensor? residual, int[] output)
    {
        if (residual is not null && !residual.Shape.SequenceEqual(output))
            throw new KernelArgumentException($"{op}: residual {residual} must have the output's shape [{string.Join(", ", output)}]");
    }
}
