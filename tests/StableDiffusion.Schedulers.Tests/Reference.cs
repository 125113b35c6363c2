using System.Text.Json;

namespace StableDiffusion.Schedulers.Tests;

/// <summary>
/// ../shared/reference beside the repository (read-only, never copied into it). Tests that need it call
/// <see cref="Path"/> or <see cref="Json"/>, which skip the test where the folder is absent.
/// </summary>
internal static class Reference
{
    private static readonly Lazy<string?> Root = new(() =>
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(System.IO.Path.Combine(d.FullName, "StableDiffusion.Kernels.sln")))
                return System.IO.Path.GetFullPath(System.IO.Path.Combine(d.FullName, "..", "shared", "reference"));
        return null;
    });

    public static string Path(params string[] parts)
    {
        var root = Root.Value;
        Skip.If(root is null || !Directory.Exists(root), "../shared/reference is not present beside the repository");
        var p = System.IO.Path.Combine([root!, .. parts]);
        Skip.IfNot(File.Exists(p) || Directory.Exists(p), $"{p} is not present");
        return p;
    }

    public static JsonElement Json(params string[] parts)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path(parts)));
        return doc.RootElement.Clone();
    }

    public static double[] Doubles(JsonElement array) => array.EnumerateArray().Select(e => e.GetDouble()).ToArray();
}
