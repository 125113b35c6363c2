namespace StableDiffusion.IO;

/// <summary>
/// A tensor as a weight file stores it: name, element type, row-major shape and its bytes' absolute range in the
/// file. Nothing is read until asked for (<see cref="WeightFile.Bytes"/>, <see cref="WeightFile.Upload"/>).
/// </summary>
public sealed record TensorInfo(string Name, WeightDType DType, long[] Shape, long Offset, long ByteLength)
{
    public long ElementCount => Shapes.ElementCount(Shape);

    public string ShapeString => Shapes.Format(Shape);

    public override string ToString() => $"{Name} {DType.Name()}{ShapeString}";
}

public static class Shapes
{
    public static string Format(IEnumerable<long> shape) => "[" + string.Join(", ", shape) + "]";

    public static long ElementCount(ReadOnlySpan<long> shape)
    {
        long n = 1;
        foreach (var d in shape) n *= d;
        return n;
    }

    public static bool Equal(ReadOnlySpan<long> a, ReadOnlySpan<long> b) => a.SequenceEqual(b);

    /// <summary>Elements × element size, or -1 where a dimension is negative or the product overflows a long.</summary>
    public static long CheckedByteCount(ReadOnlySpan<long> shape, int elementSize)
    {
        long n = elementSize;
        foreach (var d in shape)
        {
            if (d < 0) return -1;
            if (d != 0 && n > long.MaxValue / d) return -1;
            n *= d;
        }
        return n;
    }
}
