using System.Globalization;
using System.Text.RegularExpressions;

namespace StableDiffusion.Cli;

/// <summary>A size such as 2.5G, 2500M or 8GiB (binary units: K = 1024 bytes).</summary>
internal static partial class MemorySize
{
    [GeneratedRegex(@"^\s*(\d+(?:\.\d+)?)\s*([KMGT])(?:i?B)?\s*$", RegexOptions.IgnoreCase)]
    private static partial Regex Pattern();

    public static long Parse(string option, string text)
    {
        var m = Pattern().Match(text);
        if (!m.Success)
            throw new UsageException($"{option} '{text}': give a size with a unit, e.g. 2.5G or 2500M");
        double value = double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
        int shift = char.ToUpperInvariant(m.Groups[2].Value[0]) switch { 'K' => 10, 'M' => 20, 'G' => 30, _ => 40 };
        double bytes = value * (1L << shift);
        if (bytes < 1 << 20 || bytes > (double)(1L << 50))
            throw new UsageException($"{option} '{text}': must be between 1M and 1024T");
        return (long)bytes;
    }
}
