using System.Text.Json;
using StableDiffusion.Kernels;

namespace StableDiffusion.Cli;

/// <summary>
/// <c>sd kernels --opencl-check [--json] [--keep DIR]</c>: every kernel instantiation of the catalog converted to
/// OpenCL C by ILGPU for vendors Intel and Other and compiled by clang-15 (OpenCL C 2.0, spir64, -Werror). Needs
/// clang, not a device. Exits 1 if any conversion or compilation fails.
/// </summary>
internal static class OpenClCheckCommand
{
    /// <param name="a">the arguments of <c>sd kernels</c>, <c>--opencl-check</c> already taken</param>
    public static int Run(Args a, TextWriter stdout, TextWriter stderr)
    {
        bool json = a.Flag("--json");
        var keep = a.Value("--keep");
        a.CheckDone();
        var clang = OpenClTools.FindClang()
            ?? throw new ToolMissingException("clang-15 was not found (install it: apt-get install clang-15; or set SD_CLANG)");
        var version = OpenClTools.ClangVersion(clang);
        var rows = OpenClTools.Check(KernelRuntime.PortableCatalog(), clang, keep, progress: json ? null : () =>
        {
            lock (stderr) stderr.Write('.');
        });
        if (!json) stderr.WriteLine();

        if (json)
        {
            stdout.WriteLine(JsonSerializer.Serialize(rows.Select(r => new
            {
                kernel = r.Kernel,
                config = r.Config,
                vendor = r.Vendor,
                converted = r.Converted,
                compiled = r.Compiled,
                error = r.Error,
            }), JsonOptions));
        }
        else
        {
            stdout.WriteLine($"OpenCL C from ILGPU's CLBackend (OpenCL C 2.0), compiled by {clang} ({version}) for spir64 with -Werror");
            foreach (var p in OpenClTools.Profiles)
                stdout.WriteLine($"vendor {p.Name}: extensions {string.Join(", ", p.Extensions)}");
            stdout.WriteLine("barriers: work_group_barrier calls that fence local memory / all of them");
            stdout.WriteLine($"{"kernel",-22} {"config",-28} {"vendor",-6} {"converted",-9} {"compiled",-8} {"barriers",-8} error");
            foreach (var r in rows)
                stdout.WriteLine(($"{r.Kernel,-22} {r.Config,-28} {r.Vendor,-6} {YesNo(r.Converted),-9} {YesNo(r.Compiled),-8} " +
                                  $"{(r.Converted ? $"{r.LocalFencedBarriers}/{r.Barriers}" : ""),-8} {r.Error}").TrimEnd());
            int failed = rows.Count(r => !r.Ok);
            int barriers = rows.Sum(r => r.Barriers), local = rows.Sum(r => r.LocalFencedBarriers);
            var subGroups = rows.Where(r => r.Vendor == OpenClTools.Other.Name && r.SubGroupCalls.Count > 0).ToList();
            stdout.WriteLine($"{rows.Count} checks ({rows.Count / OpenClTools.Profiles.Count} kernels x {OpenClTools.Profiles.Count} vendors): " +
                             $"{rows.Count(r => r.Converted)} converted, {rows.Count(r => r.Compiled)} compiled, {failed} failed; " +
                             $"barriers (local fence/all) {local}/{barriers}; " +
                             $"sub-group calls for vendor {OpenClTools.Other.Name}: {(subGroups.Count == 0 ? "none" : string.Join(", ", subGroups.Select(r => r.Kernel).Distinct()))}");
        }
        return rows.All(r => r.Ok) ? 0 : 1;
    }

    private static string YesNo(bool b) => b ? "yes" : "no";

    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true };
}
