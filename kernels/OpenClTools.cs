using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.RegularExpressions;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.OpenCL;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.OpenCL;
using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels;

/// <summary>
/// The OpenCL device a check stands for: ILGPU's vendor switch (Intel gets <c>intel_sub_group_*</c> shuffles, every
/// other vendor none), the capabilities ILGPU generates code for, and the OpenCL extensions clang is told exist.
/// </summary>
public sealed record OpenClProfile(string Name, CLDeviceVendor Vendor, CLCapabilityContext Capabilities, IReadOnlyList<string> Extensions);

/// <summary>One kernel instantiation converted to OpenCL C for one profile and compiled by clang.</summary>
public sealed record OpenClCheckRow(
    string Kernel,
    string Config,
    string Vendor,
    bool Converted,
    bool Compiled,
    string? Error,
    int Barriers,
    int LocalFencedBarriers,
    IReadOnlyList<string> SubGroupCalls)
{
    public bool Ok => Converted && Compiled;
}

/// <summary>
/// Offline OpenCL checks, no device needed: ILGPU's <see cref="CLBackend"/> converts each kernel of the catalog to
/// the OpenCL C source a device would be given, and clang-15 compiles that source as OpenCL C 2.0 for spir64 with
/// warnings as errors and exactly the profile's extensions. It checks that the code builds (types, address spaces,
/// builtins, extensions), not how it runs.
/// </summary>
public static class OpenClTools
{
    /// <summary>Intel GPUs: fp16, fp64 and sub-groups (cl_khr_subgroups and cl_intel_subgroups).</summary>
    public static readonly OpenClProfile Intel = MakeProfile("Intel", CLDeviceVendor.Intel, subGroups: true,
        ["cl_khr_subgroups", "cl_intel_subgroups"]);

    /// <summary>
    /// Every other vendor (AMD- and NVIDIA-class devices): fp16 and fp64, no sub-group functions (NVIDIA's OpenCL
    /// has none), so a kernel that needs them fails here.
    /// </summary>
    public static readonly OpenClProfile Other = MakeProfile("Other", CLDeviceVendor.Other, subGroups: false, []);

    public static IReadOnlyList<OpenClProfile> Profiles { get; } = [Intel, Other];

    private static OpenClProfile MakeProfile(string name, CLDeviceVendor vendor, bool subGroups, string[] moreExtensions)
    {
        // fp16 on: half kernels need it, and ILGPU then emits '#pragma OPENCL EXTENSION cl_khr_fp16 : enable' in
        // every source. fp64: timestep_embedding reduces its sin/cos argument in double. No 64-bit atomics: no kernel
        // uses them. Generic address space: ILGPU refuses devices without it.
        var caps = new CLCapabilityContext(float16: true, float64: true, int64_Atomics: false,
            genericAddressSpace: true, subGroups: subGroups);
        return new OpenClProfile(name, vendor, caps, [.. caps.Extensions, .. moreExtensions]);
    }

    private static readonly object Gate = new();
    private static Context? context;
    private static readonly Dictionary<string, CLBackend> Backends = new();
    private static readonly Dictionary<(System.Reflection.MethodInfo, string), (string? Source, string? Error)> Converted = new();

    /// <summary>
    /// The OpenCL C source ILGPU generates for <paramref name="entry"/> on a device like <paramref name="profile"/>,
    /// built with the engine's context options (<see cref="ComputeDevice"/>'s, shared-memory barrier included).
    /// Throws <see cref="InvalidOperationException"/> naming the kernel when ILGPU cannot convert it.
    /// </summary>
    public static string Convert(KernelEntry entry, OpenClProfile profile)
    {
        var (source, error) = TryConvert(entry, profile);
        return source ?? throw new InvalidOperationException(
            $"{entry.Kernel} [{entry.Config}] does not convert to OpenCL C for vendor {profile.Name}: {error}");
    }

    private static (string? Source, string? Error) TryConvert(KernelEntry entry, OpenClProfile profile)
    {
        lock (Gate)
        {
            if (Converted.TryGetValue((entry.Method, profile.Name), out var done)) return done;
            context ??= Context.Create(b => ComputeDevice.Configure(b.DefaultCPU()));
            if (!Backends.TryGetValue(profile.Name, out var backend))
                Backends[profile.Name] = backend = new CLBackend(context, profile.Capabilities, profile.Vendor, CLCVersion.CL20);
            (string?, string?) result;
            try
            {
                var desc = EntryPointDescription.FromExplicitlyGroupedKernel(entry.Method);
                result = (((CLCompiledKernel)backend.Compile(desc, default)).Source, null);
            }
            catch (Exception e)
            {
                result = (null, Innermost(e));
            }
            return Converted[(entry.Method, profile.Name)] = result;
        }
    }

    private static string Innermost(Exception e)
    {
        while (true)
        {
            var inner = e is AggregateException { InnerExceptions.Count: > 0 } agg ? agg.InnerExceptions[0] : e.InnerException;
            if (inner is null) break;
            e = inner;
        }
        return $"{e.GetType().Name}: {e.Message.Split('\n')[0].TrimEnd('\r')}";
    }

    /// <summary>
    /// Where clang is: $SD_CLANG; else clang-15 in the folders of $SD_TOOLS_PATH if set (and only those); else
    /// clang-15 on PATH, or /usr/lib/llvm-15/bin/clang (Debian 12's clang-15 package).
    /// </summary>
    public static string? FindClang()
    {
        var env = Environment.GetEnvironmentVariable("SD_CLANG");
        if (!string.IsNullOrEmpty(env)) return File.Exists(env) ? env : null;
        var toolsPath = Environment.GetEnvironmentVariable("SD_TOOLS_PATH");
        if (toolsPath is not null)
            return toolsPath.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
                .Select(d => Path.Combine(d, "clang-15")).FirstOrDefault(File.Exists);
        var candidates = (Environment.GetEnvironmentVariable("PATH") ?? "")
            .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, "clang-15"))
            .Append("/usr/lib/llvm-15/bin/clang");
        return candidates.FirstOrDefault(File.Exists);
    }

    private static readonly ConcurrentDictionary<string, (string Version, string Header)> ClangInfo = new();

    /// <summary>clang's version line, e.g. "Debian clang version 15.0.6".</summary>
    public static string ClangVersion(string clang) => Info(clang).Version;

    private static (string Version, string Header) Info(string clang) => ClangInfo.GetOrAdd(clang, c =>
    {
        var (code, version, err) = Run(c, ["--version"]);
        if (code != 0) throw new InvalidOperationException($"{c} --version failed: {FirstLine(err)}");
        var (code2, dir, err2) = Run(c, ["-print-resource-dir"]);
        var header = Path.Combine(dir.Trim(), "include", "opencl-c.h");
        if (code2 != 0 || !File.Exists(header))
            throw new InvalidOperationException($"{c} has no opencl-c.h in its resource folder ({FirstLine(err2)})");
        return (FirstLine(version), header);
    });

    /// <summary>
    /// The clang options for one profile: OpenCL C 2.0 for spir64, warnings as errors, clang's full builtin header,
    /// and only the extensions the profile has. <c>clang OPTIONS -x cl -include opencl-c.h -c -emit-llvm k.cl</c>
    /// checks a source by hand; <see cref="Compile"/> includes the header precompiled (a third of the time).
    /// </summary>
    public static IReadOnlyList<string> ClangOptions(string clang, OpenClProfile profile) =>
    [
        "-cl-std=CL2.0", "-target", "spir64",
        // Declarations of every OpenCL builtin, from a system folder so that the header's own warnings
        // (-Wcomment on its multi-line // comments) are not ours.
        "-cl-no-stdinc", "-isystem", Path.GetDirectoryName(Info(clang).Header)!,
        // Exactly the device's extensions: a half without cl_khr_fp16, a pragma for an extension the device
        // lacks (-Wignored-pragmas) or a sub-group builtin without cl_khr_subgroups is an error.
        "-Xclang", "-cl-ext=" + string.Join(",", profile.Extensions.Select(x => "+" + x).Prepend("-all")),
        "-Wall", "-Wextra", "-Werror",
        // ILGPU labels every basic block (L_n:) and emits many a label no goto jumps to.
        "-Wno-unused-label",
        "-O0",
    ];

    private static readonly Lazy<string> PchDir = new(() =>
    {
        var dir = Path.Combine(Path.GetTempPath(), $"sd-opencl-pch-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        };
        return dir;
    });

    private static readonly ConcurrentDictionary<(string Clang, string Profile), Lazy<string>> Pch = new();

    /// <summary>opencl-c.h precompiled with the profile's options (a PCH must match the options it is used with).</summary>
    private static string PrecompiledHeader(string clang, OpenClProfile profile) =>
        Pch.GetOrAdd((clang, profile.Name), _ => new Lazy<string>(() =>
        {
            var stem = Path.Combine(PchDir.Value, $"{Sanitize(profile.Name)}-{Guid.NewGuid():N}");
            // Included from a wrapper so that opencl-c.h is a system header here too.
            File.WriteAllText(stem + ".h", "#include <opencl-c.h>\n");
            var (code, _, err) = Run(clang, [.. ClangOptions(clang, profile), "-x", "cl-header", stem + ".h", "-o", stem + ".pch"]);
            if (code != 0)
                throw new InvalidOperationException($"{clang} could not precompile opencl-c.h: {FirstLine(err)}");
            return stem + ".pch";
        })).Value;

    // clang's verdict per kernel method, profile and clang: the source of a method is fixed within a process.
    private static readonly ConcurrentDictionary<(System.Reflection.MethodInfo, string, string), string?> CompileCache = new();

    /// <summary>Compiles one OpenCL C source with clang; returns null, or clang's first error.</summary>
    public static string? Compile(string clang, OpenClProfile profile, string sourcePath)
    {
        var output = Path.ChangeExtension(sourcePath, ".bc");
        try
        {
            var (code, stdout, stderr) = Run(clang, [.. ClangOptions(clang, profile),
                "-x", "cl", "-include-pch", PrecompiledHeader(clang, profile), "-c", "-emit-llvm", "-o", output, sourcePath]);
            if (code == 0) return null;
            var all = (stderr + "\n" + stdout).Split('\n');
            var first = all.FirstOrDefault(l => l.Contains("error:")) ?? all.FirstOrDefault(l => l.Trim().Length > 0)
                ?? $"clang exited {code}";
            var dir = Path.GetDirectoryName(sourcePath);
            return (dir is null ? first : first.Replace(dir + Path.DirectorySeparatorChar, "")).Trim();
        }
        finally
        {
            File.Delete(output);
        }
    }

    /// <summary>
    /// Converts every entry for every profile and compiles each source with clang (in parallel); with
    /// <paramref name="keepDir"/> the sources stay there as KERNEL_CONFIG_VENDOR.cl. Without clang only the
    /// conversion is checked (Compiled false, Error says why).
    /// </summary>
    public static IReadOnlyList<OpenClCheckRow> Check(IEnumerable<KernelEntry> entries, string? clang, string? keepDir = null,
        IEnumerable<OpenClProfile>? profiles = null, Action? progress = null)
    {
        var jobs = (from e in entries from p in profiles ?? Profiles select (Entry: e, Profile: p)).ToList();
        var dir = keepDir ?? Path.Combine(Path.GetTempPath(), $"sd-opencl-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        var rows = new OpenClCheckRow[jobs.Count];
        try
        {
            var sources = jobs.Select(j => TryConvert(j.Entry, j.Profile)).ToList();
            Parallel.For(0, jobs.Count, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, i =>
            {
                var (e, p) = jobs[i];
                var (source, error) = sources[i];
                if (source is null)
                    rows[i] = new OpenClCheckRow(e.Kernel, e.Config, p.Name, false, false, error, 0, 0, []);
                else
                {
                    var path = Path.Combine(dir, Sanitize($"{e.Kernel}_{e.Config}_{p.Name}") + ".cl");
                    File.WriteAllText(path, source);
                    string? clangError = clang is null
                        ? "clang was not found; not compiled"
                        : CompileCache.GetOrAdd((e.Method, p.Name, clang), _ => Compile(clang, p, path));
                    if (keepDir is null) File.Delete(path);
                    var (barriers, local) = CountBarriers(source);
                    rows[i] = new OpenClCheckRow(e.Kernel, e.Config, p.Name, true, clangError is null, clangError,
                        barriers, local, SubGroupCalls(source));
                }
                progress?.Invoke();
            });
        }
        finally
        {
            if (keepDir is null && Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
        return rows;
    }

    private static readonly Regex BarrierCall = new(@"\bwork_group_barrier\s*\(([^;]*)\)\s*;", RegexOptions.Compiled);

    /// <summary>work_group_barrier calls in a source, and how many of them fence local memory.</summary>
    public static (int Total, int LocalFenced) CountBarriers(string source)
    {
        var calls = BarrierCall.Matches(source);
        return (calls.Count, calls.Count(m => m.Groups[1].Value.Contains("CLK_LOCAL_MEM_FENCE")));
    }

    private static readonly Regex SubGroupCall = new(@"\b\w*sub_group\w*(?=\s*\()", RegexOptions.Compiled);

    /// <summary>The distinct sub-group builtins a source calls (sub_group_*, intel_sub_group_*, get_sub_group_*).</summary>
    public static IReadOnlyList<string> SubGroupCalls(string source) =>
        SubGroupCall.Matches(source).Select(m => m.Value).Distinct().Order(StringComparer.Ordinal).ToList();

    private static string Sanitize(string s) => Regex.Replace(s, @"[^A-Za-z0-9_.-]+", "_");

    private static string FirstLine(string s) => s.Split('\n').FirstOrDefault(l => l.Trim().Length > 0)?.Trim() ?? "";

    private static (int Code, string Out, string Err) Run(string exe, IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo(exe)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {exe}");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }
}
