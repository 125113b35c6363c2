using System.Globalization;

namespace StableDiffusion.Models.Tests.Unet;

/// <summary>
/// The read-only reference material at <c>../shared/reference</c> beside the repository: real configs and the tensor
/// layouts of real checkpoints. Tests that need it skip (never pass) where it is absent.
/// </summary>
internal static class ReferenceFiles
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

    /// <summary>The path of a reference file; skips the calling test where the reference folder is absent.</summary>
    public static string Require(params string[] parts)
    {
        Skip.If(RootDir.Value is null, "../shared/reference is not present beside the repository");
        var p = Path.Combine([RootDir.Value!, .. parts]);
        Assert.True(File.Exists(p), $"reference file missing: {p}");
        return p;
    }

    /// <summary>A layouts/*.tsv file as name → shape ('#' lines are comments; columns: name, dtype, shape).</summary>
    public static Dictionary<string, long[]> Layout(string file)
    {
        var rows = new Dictionary<string, long[]>(StringComparer.Ordinal);
        foreach (var line in File.ReadLines(Require("layouts", file)))
        {
            if (line.Length == 0 || line.StartsWith('#')) continue;
            var p = line.Split('\t');
            rows.Add(p[0], p[2].Trim('[', ']').Split(',', StringSplitOptions.RemoveEmptyEntries)
                .Select(x => long.Parse(x, CultureInfo.InvariantCulture)).ToArray());
        }
        return rows;
    }
}
