namespace StableDiffusion.IO;

/// <summary>Element types a weight file may store. Names are the safetensors spellings.</summary>
public enum WeightDType
{
    F32,
    F16,
    BF16,
    I64,
    I32,
}

public static class WeightDTypeExtensions
{
    public static int SizeInBytes(this WeightDType t) => t switch
    {
        WeightDType.F32 or WeightDType.I32 => 4,
        WeightDType.F16 or WeightDType.BF16 => 2,
        WeightDType.I64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, null),
    };

    public static bool IsFloat(this WeightDType t) => t is WeightDType.F32 or WeightDType.F16 or WeightDType.BF16;

    /// <summary>The safetensors spelling ("F16", "BF16", ...).</summary>
    public static string Name(this WeightDType t) => t.ToString();

    public const string Supported = "F32, F16, BF16, I64, I32";

    public static bool TryParse(string s, out WeightDType t)
    {
        switch (s)
        {
            case "F32": t = WeightDType.F32; return true;
            case "F16": t = WeightDType.F16; return true;
            case "BF16": t = WeightDType.BF16; return true;
            case "I64": t = WeightDType.I64; return true;
            case "I32": t = WeightDType.I32; return true;
            default: t = default; return false;
        }
    }
}
