using System.Globalization;
using StableDiffusion.IO;

namespace StableDiffusion.IO.Tests.Support;

/// <summary>
/// The read-only reference material at <c>../shared/reference</c> beside the repository. Tests that need it skip
/// (never pass) where it is absent.
/// </summary>
public static class Reference
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

    /// <summary>The path of a reference file; skips the calling test where the reference folder is absent.</summary>
    public static string Require(params string[] parts)
    {
        Skip.If(Root is null, "../shared/reference is not present beside the repository");
        var p = Path.Combine([Root!, .. parts]);
        Assert.True(File.Exists(p) || Directory.Exists(p), $"reference file missing: {p}");
        return p;
    }

    public sealed record Row(string Name, WeightDType DType, long[] Shape);

    /// <summary>A layouts/*.tsv file: name, dtype, shape per line; '#' lines are comments.</summary>
    public static List<Row> Layout(string file)
    {
        var rows = new List<Row>();
        foreach (var line in File.ReadLines(Require("layouts", file)))
        {
            if (line.StartsWith('#') || line.Length == 0) continue;
            var p = line.Split('\t');
            Assert.True(WeightDTypeExtensions.TryParse(p[1], out var dt), $"dtype {p[1]} in {file}");
            rows.Add(new Row(p[0], dt, ParseShape(p[2])));
        }
        return rows;
    }

    public static long[] ParseShape(string s) =>
        s.Trim('[', ']').Split(',', StringSplitOptions.RemoveEmptyEntries).Select(x => long.Parse(x, CultureInfo.InvariantCulture)).ToArray();

    /// <summary>Real file sizes: (mirror, path) → bytes, from configs/real_file_sizes.tsv.</summary>
    public static Dictionary<string, long> RealFileSizes()
    {
        var d = new Dictionary<string, long>();
        foreach (var line in File.ReadLines(Require("configs", "real_file_sizes.tsv")))
        {
            if (line.StartsWith('#')) continue;
            var p = line.Split('\t');
            d[p[0] + "/" + p[1]] = long.Parse(p[3], CultureInfo.InvariantCulture);
        }
        return d;
    }
}

/// <summary>A temporary folder removed with everything in it.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "sd-io-tests-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(params string[] parts)
    {
        var p = System.IO.Path.Combine([Path, .. parts]);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(p)!);
        return p;
    }

    public string Dir(params string[] parts)
    {
        var p = System.IO.Path.Combine([Path, .. parts]);
        Directory.CreateDirectory(p);
        return p;
    }

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
