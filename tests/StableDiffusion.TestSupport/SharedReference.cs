using System.Globalization;
using Xunit;

namespace StableDiffusion.TestSupport;

/// <summary>
/// The read-only reference material at <c>../shared/reference</c> beside the repository: real configs, tokenizer
/// files and the tensor layouts of real checkpoints. Tests that need it skip (never pass) where it is absent.
/// </summary>
public static class SharedReference
{
    private static readonly Lazy<string?> RootDir = new(() =>
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "StableDiffusion.Kernels.sln")))
            {
                var r = Path.GetFullPath(Path.Combine(d.FullName, "..", "shared", "reference"));
                return Directory.Exists(r) ? r : null;
            }
        return null;
    });

    /// <summary>The reference folder, or null where it is absent.</summary>
    public static string? Root => RootDir.Value;

    /// <summary>The path of a reference file or folder; skips the calling test where the reference folder is absent.</summary>
    public static string Require(params string[] parts)
    {
        Skip.If(RootDir.Value is null, "../shared/reference is not present beside the repository");
        var p = Path.Combine([RootDir.Value!, .. parts]);
        Assert.True(File.Exists(p) || Directory.Exists(p), $"reference path missing: {p}");
        return p;
    }

    /// <summary>A layouts/*.tsv file as rows of name, dtype, shape ('#' lines are comments).</summary>
    public static List<(string Name, string DType, long[] Shape)> Layout(string file) =>
        File.ReadLines(Require("layouts", file))
            .Where(line => line.Length > 0 && !line.StartsWith('#'))
            .Select(line => line.Split('\t'))
            .Select(p => (p[0], p[1], p[2].Trim('[', ']').Split(',', StringSplitOptions.RemoveEmptyEntries)
                .Select(x => long.Parse(x, CultureInfo.InvariantCulture)).ToArray()))
            .ToList();

    /// <summary>A layouts/*.tsv file as name → shape.</summary>
    public static Dictionary<string, long[]> Shapes(string file) =>
        Layout(file).ToDictionary(r => r.Name, r => r.Shape, StringComparer.Ordinal);
}
