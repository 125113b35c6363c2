using System.Reflection;
using System.Text.Json;
using StableDiffusion.Kernels;
using StableDiffusion.Runtime;

namespace StableDiffusion.Cli;

/// <summary>The <c>sd</c> command line. Usage errors exit 2, other failures 1, with one line on stderr.</summary>
public static class Cli
{
    public const string Usage = """
        sd — Stable Diffusion inference on kernels written in C# and compiled by ILGPU.

        usage: sd <command> [options]

        commands:
          devices [--json]                       list every accelerator ILGPU can see, and why any is refused
          selfcheck [--device D] [--dump DIR]    run every kernel on a device against the host reference; --dump writes
                                                 each case's inputs, output and parameters (bench/gpu/torch_check.py)
          kernels [--ptx-report] [--json]        list kernels; with --ptx-report, assemble each CUDA kernel with ptxas
                  [--keep DIR]                   (sm_90) and report registers, shared memory, stack, spills and HMMA count
          kernels --opencl-check [--json]        convert each kernel to OpenCL C (vendors Intel, Other), compile it with clang-15
          kernels --plan --config sd15|sd21|sdxl --latent H[xW] [--batch 2] [--sms 132] [--json|--markdown]
                                                 the tensor-core configuration and split-K chosen for every GEMM/convolution
                                                 of one UNet step, with blocks and waves ([--no-large-shared]: <= 48 KB)
          info <path|org/name> [--json] [--tensors] [--revision R] [--variant fp16]   format, family, dtypes, per-component counts
          bench [--device D] [--quick]           time the kernels at the SD1.5 shapes (CUDA events on CUDA);
                [--op OP] [--json FILE]          --list writes the case list only (what bench/gpu feeds PyTorch)
                [--list]
          random-model --config C --out PATH     random weights in a real layout: C is sd15, sd21, sdxl or a -tiny one
                                                 (sdxl-refiner-tiny, sdxl-inpaint-tiny too);
                                                 or taesd / taesdxl (tiny autoencoders, diffusers folders);
                [--format F] [--dtype D] [--seed N]   F diffusers (a folder, default) or single-file (LDM .safetensors), D fp16 (default) or fp32
                [--tokenizer DIR]                use DIR's vocab.json and merges.txt (default: CLIP's built-in vocabulary)
          tokenize [--tokenizer DIR | --model DIR] [--vocab DIR|bpe.txt.gz] [--chunks] "<text>"   CLIP token ids as JSON (default: built-in vocabulary)
          schedule (--model M | --config F) --sampler S --steps N [--schedule karras|exponential|default] [--spacing leading|linspace|trailing]   a sampler's timesteps and sigmas as JSON
                   [--prediction-type epsilon|v]   with --model: as sd generate takes it
          generate --model M --prompt "..."      text-to-image into a PNG with A1111's parameters chunk; M is a diffusers
                   [--negative-prompt "..."]     folder, a .safetensors/.ckpt file or a hub id (org/name)
                   [--steps 20] [--cfg 7.5]      denoising steps; classifier-free guidance scale (1 or less: none)
                   [--sampler euler_a]           sampler; --schedule default|karras|exponential (default: the sampler's)
                   [--schedule S] [--seed N]     seed 0 to 2^64-1 as torch.manual_seed takes it (none or -1: random)
                   [--width 512] [--height 512]  multiples of 8 (the model may need 64); an init image's own size by default
                   [--batch N]                   N images from one draw of noise: out-1.png ... out-N.png
                   [--init-image F]              image-to-image from F (PNG, JPEG, BMP or WebP, at most 4096x4096)
                   [--strength 0.75]             how far to noise it (1: all the way); inpainting defaults to 1
                   [--mask F]                    inpaint: white is repainted, black kept (needs --init-image)
                   [--precision fp16|fp32]       default fp16 on GPUs, fp32 on the CPU
                   [--tokenizer DIR]             a tokenizer/ folder (default: the model's, else CLIP's built-in vocabulary)
                   [--clip-skip N]               1 = last text-encoder layer, 2 = penultimate (default: SD1 1, SD2 2)
                   [--embeddings-dir DIR]        textual inversions (.pt/.safetensors), named in prompts by file name
                   [--prediction-type epsilon|v] what the UNet predicts (default: the scheduler config's; SD2.x single
                                                 files: detected by running the UNet once); v makes the default size 768
                   [--output out.png] [--overwrite]   never replaces a file without --overwrite
                   [--profile]                   time every op (synchronised): per op family, in all and per UNet step
                   [--lora FILE[:W]]...          merge a LoRA at load with weight W (default 1); repeatable
                   [--lora-dir weights/loras]    where the prompt's <lora:NAME:W> tags find NAME.safetensors/.ckpt/.pt
                   [--taesd PATH|org/name]       decode (and encode) with a tiny autoencoder (TAESD) instead of the VAE
                   [--vae-tiling] [--vae-tile 512]   VAE in overlapping tiles of that many pixels (automatic when memory is short)
                   [--max-memory SIZE]           cap the device memory (weights + activations), e.g. 2.5G: refused before
                                                 loading if the largest model cannot fit; the VAE tiles to stay under it
                   [--preview latent2rgb|taesd]  write the image while sampling, every --preview-every N steps (1),
                   [--preview-every N] [--preview-file preview.png]   to --preview-file (preview.png)
                   [--vae FILE|DIR|org/name]     decode (and encode) with this VAE instead of the model's
                   [--preset turbo|lcm|default]  turbo: trailing spacing, cfg 0, 1 step, 512²; lcm: lcm sampler, 4 steps, cfg 1
                   [--refiner M] [--refiner-switch 0.8]   SDXL: the refiner takes over at that fraction of the schedule
                   [--aesthetic-score 6] [--negative-aesthetic-score 2.5]   the refiner's aesthetic conditioning
          serve --model M                        keep models loaded and answer HTTP: A1111's /sdapi/v1, OpenAI's
                [--listen 127.0.0.1:7860]        /v1/images/generations, /v1/jobs with streamed progress, a page at /;
                [--max-queue 16]                 one generation at a time, the rest queued (429 past --max-queue);
                [--models-dir D] [--lora-dir D]  models to switch to; <lora:NAME:W> from --lora-dir;
                [--embeddings-dir D]             --api-key KEY (Bearer) or --api-auth user:pass, needed off loopback;
                [--api-key KEY] [--api-auth U:P] --cors-origin URL allows that origin; --precision, --tokenizer as
                [--cors-origin URL]              for generate

        options:
          --device D     auto (default: CUDA, then OpenCL, then the C# CPU backend), cuda[:N], opencl[:N], cpu,
                         ilgpu-cpu (ILGPU's CPU accelerator: runs the GPU kernels slowly, for testing them)
          --verbose      print stack traces of errors
          --help         this text
          --version      the version
        """;

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        bool verbose = args.Contains("--verbose");
        try
        {
            var a = new Args(args.Where(x => x != "--verbose").ToArray());
            bool help = a.Flag("--help") | a.Flag("-h");
            if (a.Flag("--version"))
            {
                stdout.WriteLine($"sd {Version}");
                return 0;
            }
            if (help || a.Command == "help")
            {
                stdout.WriteLine(Usage);
                return 0;
            }
            if (a.Command is null)
            {
                stderr.WriteLine(Usage);
                return 2;
            }
            return a.Command switch
            {
                "devices" => Devices(a, stdout),
                "selfcheck" => RunSelfCheck(a, stdout, stderr),
                "kernels" => Kernels(a, stdout, stderr),
                "info" => InfoCommand.Run(args.Where(x => x != "--verbose").Skip(1).ToArray(), stdout, stderr),
                "bench" => BenchCommand.Run(a, stdout, stderr),
                "debug" => DebugCommand.Run(a, stdout),
                "random-model" => RandomModelCommand.Run(a, stdout, stderr),
                "tokenize" => TokenizeCommand.Run(args.Where(x => x != "--verbose").Skip(1).ToArray(), stdout, stderr),
                "schedule" => ScheduleCommand.Run(a, stdout, stderr),
                "generate" => GenerateCommand.Run(a, stdout, stderr),
#if !SD_NO_SERVER
                "serve" => ServeCommand.Run(a, stdout, stderr),
#endif
                _ => throw new UsageException($"unknown command '{a.Command}'; run 'sd --help'"),
            };
        }
        catch (SdException e)
        {
            stderr.WriteLine($"sd: error: {e.Message}");
            if (verbose) stderr.WriteLine(e);
            return e.ExitCode;
        }
        catch (Exception e)
        {
            stderr.WriteLine($"sd: internal error: {e.GetType().Name}: {FirstLine(e.Message)}");
            if (verbose) stderr.WriteLine(e);
            else stderr.WriteLine("sd: run again with --verbose for the stack trace");
            return 1;
        }
    }

    public static string Version =>
        typeof(Cli).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0.0.0";

    private static string FirstLine(string s) => s.Split('\n')[0].TrimEnd('\r');

    private static int Devices(Args a, TextWriter stdout)
    {
        bool json = a.Flag("--json");
        a.CheckDone();
        var devices = DeviceCatalog.Enumerate(out var notes);
        if (json)
        {
            stdout.WriteLine(JsonSerializer.Serialize(new
            {
                devices = devices.Select(d => new
                {
                    id = d.Usable ? d.Id : null,
                    kind = d.Kind.ToString(),
                    name = d.Name,
                    memory_bytes = d.MemoryBytes,
                    max_group_size = d.MaxGroupSize,
                    warp_size = d.WarpSize,
                    multiprocessors = d.Multiprocessors,
                    capabilities = d.Capabilities,
                    usable = d.Usable,
                    refused_because = d.Refusal,
                }),
                notes,
            }, JsonOptions));
            return 0;
        }
        foreach (var n in notes) stdout.WriteLine(n);
        stdout.WriteLine();
        foreach (var d in devices)
        {
            var id = d.Usable ? d.Id : "refused";
            stdout.WriteLine($"{id,-10} {ComputeDevice.KindName(d.Kind),-22} {d.Name}");
            stdout.WriteLine($"{"",-10} memory {d.MemoryBytes / (1024.0 * 1024 * 1024):F1} GiB, {d.Multiprocessors} multiprocessors, " +
                             $"warp {d.WarpSize}, max group {d.MaxGroupSize}");
            stdout.WriteLine($"{"",-10} {d.Capabilities}");
            if (d.Refusal is not null) stdout.WriteLine($"{"",-10} refused: {d.Refusal}");
        }
        var auto = devices.FirstOrDefault(d => d.Usable && d.Kind == DeviceKind.Cuda)
                   ?? devices.FirstOrDefault(d => d.Usable && d.Kind == DeviceKind.OpenCL)
                   ?? devices.First(d => d.Kind == DeviceKind.Cpu);
        stdout.WriteLine();
        stdout.WriteLine($"--device auto would choose {auto.Id} ({auto.Name})");
        return 0;
    }

    private static int RunSelfCheck(Args a, TextWriter stdout, TextWriter stderr)
    {
        var deviceName = a.Value("--device") ?? "auto";
        var dump = a.Value("--dump");
        a.CheckDone();
        using var device = ComputeDevice.Open(deviceName, stdout);
        var ops = Backends.For(device);
        stdout.WriteLine($"{(ops is IlgpuOps i ? $"kernel profile: {i.Runtime.Profile}" : "the C# CPU backend")}; tolerance fp32 {SelfCheck.F32Tolerance:g}, fp16 {SelfCheck.F16Tolerance:g} (relative L2 vs host reference)");
        stdout.WriteLine($"{"op",-20} {"dtype",-12} {"shape",-44} {"rel. error",10}  result  kernel");
        var results = SelfCheck.Run(ops, r =>
        {
            stdout.WriteLine($"{r.Op,-20} {r.DType,-12} {r.Shape,-44} {r.RelativeError,10:0.00e+00}  {(r.Passed ? "ok  " : "FAIL")}    {r.Kernel}");
            stdout.Flush();
        }, note => stdout.WriteLine(note), dump);
        if (dump is not null) stdout.WriteLine($"wrote every case's inputs and output to {dump}");
        int failed = results.Count(r => !r.Passed);
        stdout.WriteLine($"selfcheck on {device.Name}: {results.Count - failed} passed, {failed} failed");
        if (failed > 0) stderr.WriteLine($"sd: error: {failed} kernel check(s) failed on {device.Name}");
        return failed > 0 ? 1 : 0;
    }

    private static int Kernels(Args a, TextWriter stdout, TextWriter stderr)
    {
        if (a.Flag("--opencl-check")) return OpenClCheckCommand.Run(a, stdout, stderr);
        if (a.Flag("--plan")) return PlanCommand.Run(a, stdout);
        bool report = a.Flag("--ptx-report");
        bool json = a.Flag("--json");
        var keep = a.Value("--keep");
        a.CheckDone();
        var catalog = KernelRuntime.CudaCatalog();
        if (!report)
        {
            if (json)
                stdout.WriteLine(JsonSerializer.Serialize(catalog.Select(e => new { kernel = e.Kernel, config = e.Config }), JsonOptions));
            else
                foreach (var e in catalog) stdout.WriteLine($"{e.Kernel,-24} {e.Config}");
            return 0;
        }
        var ptxas = PtxTools.FindTool("ptxas")
            ?? throw new ToolMissingException("ptxas was not found (set SD_PTXAS, put it on PATH, or run .ci/run once to install it into .tools/cuda)");
        var cuobjdump = PtxTools.FindTool("cuobjdump")
            ?? throw new ToolMissingException("cuobjdump was not found (it comes with ptxas; set SD_CUOBJDUMP or put it on PATH)");
        var dir = keep ?? Path.Combine(Path.GetTempPath(), $"sd-ptx-{Environment.ProcessId}");
        var rows = new List<PtxReportRow>();
        try
        {
            foreach (var e in catalog)
            {
                rows.Add(PtxTools.Assemble(e, ptxas, cuobjdump, dir));
                if (!json) stderr.Write('.');
            }
            if (!json) stderr.WriteLine();
        }
        finally
        {
            if (keep is null && Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
        if (json)
        {
            stdout.WriteLine(JsonSerializer.Serialize(rows.Select(r => new
            {
                kernel = r.Kernel,
                config = r.Config,
                registers = r.Registers,
                shared_bytes = r.SharedBytes,
                stack_bytes = r.StackBytes,
                spill_bytes = r.SpillBytes,
                hmma = r.Hmma,
                loop_sass_per_hmma = Math.Round(r.LoopSassPerHmma, 2),
            }), JsonOptions));
        }
        else
        {
            stdout.WriteLine($"PTX from ILGPU (sm_80, ISA 7.8) assembled by {ptxas} for {PtxTools.SassArch}");
            stdout.WriteLine($"{"kernel",-24} {"config",-32} {"regs",5} {"shared B",9} {"stack B",8} {"spill B",8} {"HMMA",5} {"loop/HMMA",9}");
            foreach (var r in rows)
                stdout.WriteLine($"{r.Kernel,-24} {r.Config,-32} {r.Registers,5} {r.SharedBytes,9} {r.StackBytes,8} {r.SpillBytes,8} {r.Hmma,5} " +
                                 (r.LoopSassPerHmma > 0 ? $"{r.LoopSassPerHmma,9:F1}" : $"{"",9}"));
            stdout.WriteLine("loop/HMMA: SASS instructions per HMMA in the main loop (the largest loop with HMMA; static, nested loops once; lower is less bookkeeping)");
            int spilling = rows.Count(r => r.SpillBytes > 0);
            stdout.WriteLine($"{rows.Count} kernels, {spilling} with spills");
        }
        return rows.Any(r => r.SpillBytes > 0) ? 1 : 0;
    }

    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true };
}

/// <summary>A tool a command needs is not installed.</summary>
public sealed class ToolMissingException(string message) : SdException(message);

/// <summary>Minimal argument reader: a command word, flags and --name value pairs; anything unread is an error.</summary>
internal sealed class Args
{
    private readonly List<string> rest;

    public Args(string[] args)
    {
        rest = args.ToList();
        if (rest.Count > 0 && !rest[0].StartsWith('-'))
        {
            Command = rest[0];
            rest.RemoveAt(0);
        }
    }

    public string? Command { get; }

    public bool Flag(string name) => rest.Remove(name);

    public string? Value(string name)
    {
        int i = rest.IndexOf(name);
        if (i < 0)
        {
            var eq = rest.FirstOrDefault(x => x.StartsWith(name + "=", StringComparison.Ordinal));
            if (eq is null) return null;
            rest.Remove(eq);
            return eq[(name.Length + 1)..];
        }
        if (i + 1 >= rest.Count || rest[i + 1].StartsWith("--", StringComparison.Ordinal))
            throw new UsageException($"option {name} needs a value");
        var v = rest[i + 1];
        rest.RemoveRange(i, 2);
        return v;
    }

    public void CheckDone()
    {
        if (rest.Count > 0)
            throw new UsageException($"unexpected argument '{rest[0]}' for 'sd {Command}'; run 'sd --help'");
    }
}
