using System.Diagnostics;
using System.Text.RegularExpressions;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels;

/// <summary>ptxas/cuobjdump findings for one kernel instantiation.</summary>
public sealed record PtxReportRow(
    string Kernel,
    string Config,
    int Registers,
    int SharedBytes,
    int StackBytes,
    int SpillBytes,
    int Hmma,
    int PtxBytes,
    double LoopSassPerHmma = 0);

/// <summary>
/// Offline CUDA toolchain checks, no GPU needed: ILGPU's PTX backend compiles each kernel of the CUDA catalog,
/// ptxas assembles it for sm_90 (ILGPU targets sm_80 PTX; ptxas accepts it for Hopper) and cuobjdump's SASS gives
/// the tensor-core (HMMA) instruction count.
/// </summary>
public static class PtxTools
{
    public const string SassArch = "sm_90";
    private static readonly object Gate = new();
    private static Context? context;
    private static PTXBackend? backend;
    private static readonly Dictionary<System.Reflection.MethodInfo, string> Compiled = new();

    /// <summary>The PTX ILGPU generates for <paramref name="entry"/> (sm_80, PTX ISA 7.8, as ptxas 11.8 accepts).</summary>
    public static string CompilePtx(KernelEntry entry)
    {
        lock (Gate)
        {
            context ??= Context.Create(b => ComputeDevice.Configure(b.DefaultCPU()));
            backend ??= new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_80), CudaArchitecture.SM_80,
                CudaInstructionSet.ISA_78, nvvmAPI: null);
            if (Compiled.TryGetValue(entry.Method, out var ptx)) return ptx;
            var desc = EntryPointDescription.FromExplicitlyGroupedKernel(entry.Method);
            var compiled = (PTXCompiledKernel)backend.Compile(desc, default);
            return Compiled[entry.Method] = compiled.PTXAssembly;
        }
    }

    /// <summary>
    /// Where a CUDA tool is: $SD_PTXAS / $SD_CUOBJDUMP; else the folders of $SD_TOOLS_PATH if set (and only those);
    /// else the repository's .tools/cuda (installed by .ci/run), PATH, /usr/local/cuda/bin.
    /// </summary>
    public static string? FindTool(string name)
    {
        var env = Environment.GetEnvironmentVariable(name == "ptxas" ? "SD_PTXAS" : "SD_CUOBJDUMP");
        if (!string.IsNullOrEmpty(env)) return File.Exists(env) ? env : null;
        var dirs = new List<string>();
        var toolsPath = Environment.GetEnvironmentVariable("SD_TOOLS_PATH");
        if (toolsPath is not null)
            dirs.AddRange(toolsPath.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries));
        else
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
                dirs.Add(Path.Combine(dir.FullName, ".tools", "cuda", "usr", "bin"));
            dirs.Add(Path.Combine(Environment.CurrentDirectory, ".tools", "cuda", "usr", "bin"));
            dirs.AddRange((Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries));
            dirs.Add("/usr/local/cuda/bin");
        }
        return dirs.Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);
    }

    /// <summary>Assembles the PTX with ptxas -v and counts HMMA instructions in the SASS.</summary>
    public static PtxReportRow Assemble(KernelEntry entry, string ptxas, string? cuobjdump, string workDir)
    {
        var ptx = CompilePtx(entry);
        Directory.CreateDirectory(workDir);
        var stem = Path.Combine(workDir, Sanitize($"{entry.Kernel}_{entry.Config}"));
        File.WriteAllText(stem + ".ptx", ptx);
        var (code, _, err) = Run(ptxas, $"-arch={SassArch} -v \"{stem}.ptx\" -o \"{stem}.cubin\"");
        if (code != 0)
            throw new InvalidOperationException($"ptxas failed on {entry.Kernel} [{entry.Config}]: {FirstLines(err, 3)}");
        int regs = Int(err, @"Used (\d+) registers");
        int smem = Int(err, @"(\d+) bytes smem");
        int stack = Int(err, @"(\d+) bytes stack frame");
        int spills = Int(err, @"(\d+) bytes spill stores") + Int(err, @"(\d+) bytes spill loads");
        int hmma = -1;
        double perHmma = 0;
        if (cuobjdump is not null)
        {
            var (c2, sass, err2) = Run(cuobjdump, $"-sass \"{stem}.cubin\"");
            if (c2 != 0) throw new InvalidOperationException($"cuobjdump failed on {entry.Kernel}: {FirstLines(err2, 3)}");
            hmma = Regex.Matches(sass, @"\bHMMA\b").Count;
            perHmma = LoopSassPerHmma(sass);
        }
        return new PtxReportRow(entry.Kernel, entry.Config, regs, smem + entry.DynamicSharedBytes, stack, spills, hmma, ptx.Length,
            perHmma);
    }

    /// <summary>
    /// Instructions per HMMA in the main loop: the largest loop of the SASS that contains HMMA (a backward branch's span,
    /// nested loops counted once), a static measure of how much of it is bookkeeping. 0 when no loop has HMMA.
    /// </summary>
    public static double LoopSassPerHmma(string sass)
    {
        var code = new List<(int Addr, string Text)>();
        foreach (Match m in Regex.Matches(sass, @"/\*([0-9a-f]{4,})\*/\s+([^;]*);"))
            code.Add((Convert.ToInt32(m.Groups[1].Value, 16), m.Groups[2].Value));
        var index = new Dictionary<int, int>();
        for (int i = 0; i < code.Count; i++) index[code[i].Addr] = i;
        double best = 0;
        int bestLength = 0;
        for (int i = 0; i < code.Count; i++)
        {
            var bra = Regex.Match(code[i].Text, @"\bBRA\s+(0x[0-9a-f]+)");
            if (!bra.Success) continue;
            int target = Convert.ToInt32(bra.Groups[1].Value[2..], 16);
            if (target >= code[i].Addr || !index.TryGetValue(target, out int start)) continue;
            int length = i - start + 1;
            int n = 0;
            for (int j = start; j <= i; j++) if (Regex.IsMatch(code[j].Text, @"\bHMMA\b")) n++;
            if (n > 0 && length > bestLength)
            {
                bestLength = length;
                best = (double)length / n;
            }
        }
        return best;
    }

    private static int Int(string text, string pattern)
    {
        var m = Regex.Match(text, pattern);
        return m.Success ? int.Parse(m.Groups[1].Value) : 0;
    }

    private static string Sanitize(string s) => Regex.Replace(s, @"[^A-Za-z0-9_.-]+", "_");

    private static string FirstLines(string s, int n) => string.Join(" | ", s.Split('\n', StringSplitOptions.RemoveEmptyEntries).Take(n));

    private static (int Code, string Out, string Err) Run(string exe, string args)
    {
        var psi = new ProcessStartInfo(exe, args)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {exe}");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }
}
