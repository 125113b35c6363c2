using System.Globalization;

namespace StableDiffusion.Models.Tests.Clip;

/// <summary>
/// The read-only reference material at <c>../shared/reference</c> beside the repository (tokenizer files, configs,
/// checkpoint layouts). Tests that need it skip, never pass, where it is absent.
/// </summary>
internal static class ClipReference
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

    public static string? Root => RootDir.Value;

    /// <summary>The path of a reference file or folder; skips the calling test where the reference folder is absent.</summary>
    public static string Require(params string[] parts)
    {
        Skip.If(Root is null, "../shared/reference is not present beside the repository");
        var p = Path.Combine([Root!, .. parts]);
        Assert.True(File.Exists(p) || Directory.Exists(p), $"reference file missing: {p}");
        return p;
    }

    /// <summary>A layouts/*.tsv file as name → shape (dtype column ignored); '#' lines are comments.</summary>
    public static List<(string Name, string DType, long[] Shape)> Layout(string file) =>
        File.ReadLines(Require("layouts", file))
            .Where(l => l.Length > 0 && !l.StartsWith('#'))
            .Select(l => l.Split('\t'))
            .Select(p => (p[0], p[1], p[2].Trim('[', ']').Split(',', StringSplitOptions.RemoveEmptyEntries)
                .Select(x => long.Parse(x, CultureInfo.InvariantCulture)).ToArray()))
            .ToList();
}

/// <summary>A temporary folder removed with everything in it.</summary>
internal sealed class TempFolder : IDisposable
{
    public TempFolder()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "sd-clip-tests-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
