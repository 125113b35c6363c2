using System.Reflection;
using System.Runtime.InteropServices;
using ILGPU;

namespace StableDiffusion.Runtime;

/// <summary>
/// .NET probes only the unversioned <c>libcuda.so</c> / <c>libOpenCL.so</c>, which most driver installs lack
/// (they ship <c>.so.1</c>). This resolver maps ILGPU's import names to the versioned files and records what it
/// found, so <c>sd devices</c> can say why a backend is missing.
/// </summary>
public static class NativeLibraries
{
    private static readonly object Gate = new();
    private static bool installed;
    private static readonly Dictionary<string, string> Outcome = new(StringComparer.OrdinalIgnoreCase);

    private static readonly Dictionary<string, string[]> Candidates = new(StringComparer.OrdinalIgnoreCase)
    {
        ["cuda"] = ["libcuda.so", "libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1",
                    "/usr/local/nvidia/lib64/libcuda.so.1", "/usr/lib/wsl/lib/libcuda.so.1"],
        ["OpenCL"] = ["libOpenCL.so", "libOpenCL.so.1", "/usr/lib/x86_64-linux-gnu/libOpenCL.so.1", "/usr/lib64/libOpenCL.so.1"],
    };

    /// <summary>Installs the resolver for ILGPU's assembly once per process (no-op on Windows).</summary>
    public static void Install()
    {
        lock (Gate)
        {
            if (installed) return;
            installed = true;
            if (!OperatingSystem.IsLinux()) return;
            try
            {
                NativeLibrary.SetDllImportResolver(typeof(Context).Assembly, Resolve);
            }
            catch (InvalidOperationException)
            {
                // ILGPU installed its own resolver first (it does so under WSL): keep that one.
            }
        }
    }

    /// <summary>What the resolver found for a library name ("cuda", "OpenCL"), or null if never asked.</summary>
    public static string? Describe(string name)
    {
        lock (Gate) return Outcome.TryGetValue(name, out var s) ? s : null;
    }

    /// <summary>Tries to load a native library the way the resolver would, and returns the path or null.</summary>
    public static string? Probe(string name)
    {
        if (!Candidates.TryGetValue(name, out var paths)) return null;
        foreach (var p in paths)
        {
            if (NativeLibrary.TryLoad(p, out var h))
            {
                NativeLibrary.Free(h);
                return p;
            }
        }
        return null;
    }

    private static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? path)
    {
        if (!Candidates.TryGetValue(name, out var paths)) return IntPtr.Zero;
        foreach (var p in paths)
        {
            if (NativeLibrary.TryLoad(p, out var handle))
            {
                lock (Gate) Outcome[name] = p;
                return handle;
            }
        }
        lock (Gate) Outcome[name] = "not found (tried " + string.Join(", ", paths) + ")";
        return IntPtr.Zero;
    }
}
