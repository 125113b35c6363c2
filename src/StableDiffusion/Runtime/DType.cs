namespace StableDiffusion.Runtime;

/// <summary>Element types a device tensor can hold.</summary>
public enum DType
{
    F32,
    F16,
    I32,
}

public static class DTypeExtensions
{
    public static int SizeInBytes(this DType t) => t switch
    {
        DType.F32 => 4,
        DType.F16 => 2,
        DType.I32 => 4,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, null),
    };

    public static string Name(this DType t) => t switch
    {
        DType.F32 => "fp32",
        DType.F16 => "fp16",
        DType.I32 => "int32",
        _ => t.ToString(),
    };

    public static bool IsFloat(this DType t) => t is DType.F32 or DType.F16;
}
