using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;
using ILGPU.Backends.OpenCL;

namespace StableDiffusion.Runtime;

/// <summary>Which kind of ILGPU accelerator a device is.</summary>
public enum DeviceKind
{
    Cuda,
    OpenCL,
    /// <summary>ILGPU's CPU accelerator: a GPU simulator for correctness tests at small shapes.</summary>
    IlgpuCpu,
    /// <summary>The vectorized C# CPU backend (host memory held in an ILGPU CPU buffer; no kernels are simulated).</summary>
    Cpu,
}

/// <summary>A parsed <c>--device</c> value: <c>auto</c>, <c>cuda[:N]</c>, <c>opencl[:N]</c>, <c>cpu</c>, <c>ilgpu-cpu</c>.</summary>
public readonly record struct DeviceRequest(DeviceKind? Kind, int? Index)
{
    public static readonly string Accepted = "auto, cuda, cuda:N, opencl, opencl:N, cpu (the C# CPU backend), ilgpu-cpu (ILGPU's CPU accelerator, for testing GPU kernels)";

    public static DeviceRequest Parse(string text)
    {
        var s = (text ?? "").Trim().ToLowerInvariant();
        int? index = null;
        int colon = s.IndexOf(':');
        if (colon >= 0)
        {
            if (!int.TryParse(s[(colon + 1)..], out var i) || i < 0)
                throw new UsageException($"--device '{text}': the index after ':' must be a non-negative integer");
            index = i;
            s = s[..colon];
        }
        DeviceKind? kind = s switch
        {
            "auto" => null,
            "cuda" or "gpu" => DeviceKind.Cuda,
            "opencl" or "cl" => DeviceKind.OpenCL,
            "cpu" => DeviceKind.Cpu,
            "ilgpu-cpu" => DeviceKind.IlgpuCpu,
            _ => throw new UsageException($"--device '{text}' is not a device; use one of: {Accepted}"),
        };
        if (kind is null && index is not null) throw new UsageException($"--device '{text}': 'auto' takes no index");
        return new DeviceRequest(kind, index);
    }

    public override string ToString() =>
        (Kind switch { null => "auto", DeviceKind.Cuda => "cuda", DeviceKind.OpenCL => "opencl", DeviceKind.IlgpuCpu => "ilgpu-cpu", _ => "cpu" }) +
        (Index is int i ? ":" + i : "");
}

/// <summary>
/// An open accelerator with its ILGPU context and memory pool. Everything the engine runs on a device goes
/// through one of these; the kind is checked, never assumed (ILGPU's OpenCL builder silently falls back to a
/// CPU-only context when no OpenCL device qualifies).
/// </summary>
public sealed class ComputeDevice : IDisposable
{
    private ComputeDevice(Context context, Accelerator accelerator, DeviceKind kind)
    {
        Context = context;
        Accelerator = accelerator;
        Kind = kind;
        Pool = new MemoryPool(accelerator);
    }

    public Context Context { get; }
    public Accelerator Accelerator { get; }
    public DeviceKind Kind { get; }
    public MemoryPool Pool { get; }

    /// <summary>
    /// Frees the pool's cached buffers and, on the host, gives the C heap's free pages back to the system: called when
    /// a model is released, so that memory no longer counts against the process.
    /// </summary>
    public void ReleaseCachedMemory()
    {
        Pool.Trim();
        if (Kind is DeviceKind.Cpu or DeviceKind.IlgpuCpu) Runtime.HostMemory.Trim(); // the type, not this device's HostMemory size
    }

    public string Name => Kind == DeviceKind.Cpu ? HostName : Accelerator.Name;
    public long MemoryBytes => Accelerator.MemorySize;
    public int MaxGroupSize => Accelerator.MaxNumThreadsPerGroup;
    public int MaxSharedMemoryPerGroup => Accelerator.MaxSharedMemoryPerGroup;
    public int WarpSize => Accelerator.WarpSize;

    /// <summary>Whether kernels may store fp16: OpenCL devices need cl_khr_fp16; CUDA and the CPU backends always can.</summary>
    public bool SupportsFp16 => Accelerator.Capabilities is not CLCapabilityContext cl || cl.Float16;

    /// <summary>One line for logs: kind, name, memory.</summary>
    public string Describe() =>
        Kind == DeviceKind.Cpu
            ? $"{KindName(Kind)} '{HostName}' ({HostMemory / (1024.0 * 1024 * 1024):F1} GiB, {Environment.ProcessorCount} threads, {HostVectors})"
            : $"{KindName(Kind)} device '{Name}' ({(Kind == DeviceKind.IlgpuCpu ? HostMemory : MemoryBytes) / (1024.0 * 1024 * 1024):F1} GiB, " +
              $"{Accelerator.NumMultiprocessors} multiprocessors, warp {WarpSize}, max group {MaxGroupSize})";

    internal static long HostMemory => GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;

    /// <summary>The host CPU's model name (from /proc/cpuinfo where there is one).</summary>
    public static string HostName { get; } = ReadHostName();

    /// <summary>The widest SIMD the C# backend uses here.</summary>
    public static string HostVectors =>
        System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated ? "AVX-512" :
        System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated ? "AVX2" :
        System.Runtime.Intrinsics.Vector128.IsHardwareAccelerated ? "128-bit SIMD" : "no SIMD";

    private static string ReadHostName()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("model name", StringComparison.Ordinal) && line.IndexOf(':') is int i and >= 0)
                    return line[(i + 1)..].Trim();
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture + " CPU";
    }

    public static string KindName(DeviceKind k) => k switch
    {
        DeviceKind.Cuda => "CUDA",
        DeviceKind.OpenCL => "OpenCL",
        DeviceKind.Cpu => "CPU",
        _ => "ILGPU CPU accelerator",
    };

    public void Synchronize() => Accelerator.Synchronize();

    /// <summary>Set before opening a device to record stream profiling markers (CUDA events) for benchmarks.</summary>
    public static bool EnableProfiling { get; set; }

    internal static Context.Builder Configure(Context.Builder b)
    {
        b = PtxEmulator.Register(SharedBarrier.Register(b.EnableAlgorithms().Optimize(OptimizationLevel.O2)));
        return EnableProfiling ? b.Profiling() : b;
    }

    /// <summary>
    /// Opens the device named by <paramref name="request"/>. <c>auto</c> takes CUDA, then OpenCL, then the C# CPU
    /// backend (never the ILGPU CPU accelerator, which only tests kernels), and writes which device it chose to <paramref name="log"/>. A named backend that is absent is a
    /// <see cref="DeviceException"/> that says what was found instead; nothing falls back silently.
    /// </summary>
    public static ComputeDevice Open(string request = "auto", TextWriter? log = null) =>
        Open(DeviceRequest.Parse(request), log);

    public static ComputeDevice Open(DeviceRequest request, TextWriter? log = null)
    {
        NativeLibraries.Install();
        if (request.Kind is DeviceKind kind)
        {
            var dev = TryOpen(kind, request.Index ?? 0, out var why)
                ?? throw new DeviceException($"{KindName(kind)} was requested but is not available: {why}. " +
                                             $"Found: {DeviceCatalog.Summary()}");
            log?.WriteLine($"device: {dev.Describe()}");
            return dev;
        }
        var reasons = new List<string>();
        foreach (var k in new[] { DeviceKind.Cuda, DeviceKind.OpenCL, DeviceKind.Cpu })
        {
            var dev = TryOpen(k, 0, out var why);
            if (dev is not null)
            {
                log?.WriteLine($"device: auto chose {dev.Describe()}" +
                               (reasons.Count > 0 ? $" ({string.Join("; ", reasons)})" : ""));
                return dev;
            }
            reasons.Add($"no {KindName(k)}: {why}");
        }
        throw new DeviceException("no device could be opened: " + string.Join("; ", reasons));
    }

    /// <summary>
    /// An ILGPU CPU accelerator with NVIDIA-like 32-thread warps, so warp-sized code is tested as it runs on a GPU.
    /// </summary>
    public static ComputeDevice OpenIlgpuCpu(int warpsPerGroup = 32, int multiprocessors = 0)
    {
        NativeLibraries.Install();
        if (multiprocessors <= 0) multiprocessors = Math.Max(1, Environment.ProcessorCount);
        var ctx = Context.Create(b => Configure(b.CPU(new CPUDevice(32, warpsPerGroup, multiprocessors))));
        return new ComputeDevice(ctx, ctx.CreateCPUAccelerator(0), DeviceKind.IlgpuCpu);
    }

    /// <summary>
    /// The C# CPU backend's device: an ILGPU CPU accelerator used only to hold host memory (its buffers are plain
    /// native memory the C# kernels address directly), the smallest one ILGPU allows, so it starts no thread pool
    /// of simulated GPU threads worth speaking of.
    /// </summary>
    public static ComputeDevice OpenCpu()
    {
        NativeLibraries.Install();
        var ctx = Context.Create(b => Configure(b.CPU(new CPUDevice(2, 1, 1))));
        return new ComputeDevice(ctx, ctx.CreateCPUAccelerator(0), DeviceKind.Cpu);
    }

    private static ComputeDevice? TryOpen(DeviceKind kind, int index, out string why)
    {
        why = "";
        Context? ctx = null;
        try
        {
            switch (kind)
            {
                case DeviceKind.Cuda:
                {
                    if (NativeLibraries.Probe("cuda") is null)
                    {
                        why = "the CUDA driver library (libcuda.so.1) was not found";
                        return null;
                    }
                    ctx = Context.Create(b => Configure(b.Cuda()));
                    var devices = ctx.GetCudaDevices();
                    if (devices.Count == 0)
                    {
                        why = "the CUDA driver reports no device that ILGPU 1.5.3 supports";
                        ctx.Dispose();
                        return null;
                    }
                    if (index >= devices.Count)
                    {
                        why = $"cuda:{index} does not exist ({devices.Count} CUDA device(s))";
                        ctx.Dispose();
                        return null;
                    }
                    var acc = ctx.CreateCudaAccelerator(index);
                    return Check(new ComputeDevice(ctx, acc, DeviceKind.Cuda), AcceleratorType.Cuda);
                }
                case DeviceKind.OpenCL:
                {
                    if (NativeLibraries.Probe("OpenCL") is null)
                    {
                        why = "no OpenCL loader (libOpenCL.so.1) was found";
                        return null;
                    }
                    ctx = Context.Create(b => Configure(b.OpenCL()));
                    var devices = ctx.GetCLDevices();
                    if (devices.Count == 0)
                    {
                        // The builder hands back a context holding only the CPU accelerator in this case.
                        why = "no OpenCL device meets ILGPU's needs (OpenCL C 2.0, or 3.0 with generic address space); " +
                              "see 'sd devices'";
                        ctx.Dispose();
                        return null;
                    }
                    if (index >= devices.Count)
                    {
                        why = $"opencl:{index} does not exist ({devices.Count} usable OpenCL device(s))";
                        ctx.Dispose();
                        return null;
                    }
                    var acc = ctx.CreateCLAccelerator(index);
                    return Check(new ComputeDevice(ctx, acc, DeviceKind.OpenCL), AcceleratorType.OpenCL);
                }
                default:
                    if (index != 0)
                    {
                        why = $"there is only one {KindName(kind)} ({(kind == DeviceKind.Cpu ? "cpu" : "ilgpu-cpu")}:0)";
                        return null;
                    }
                    return kind == DeviceKind.Cpu ? OpenCpu() : OpenIlgpuCpu();
            }
        }
        catch (Exception e) when (e is not SdException)
        {
            ctx?.Dispose();
            why = $"{e.GetType().Name}: {FirstLine(e.Message)}";
            return null;
        }
    }

    private static ComputeDevice Check(ComputeDevice d, AcceleratorType expected)
    {
        if (d.Accelerator.AcceleratorType != expected)
        {
            var got = d.Accelerator.AcceleratorType;
            d.Dispose();
            throw new DeviceException($"asked ILGPU for a {expected} accelerator and got {got}");
        }
        return d;
    }

    internal static string FirstLine(string s)
    {
        int nl = s.IndexOfAny(['\r', '\n']);
        return nl < 0 ? s : s[..nl];
    }

    public void Dispose()
    {
        Pool.Dispose();
        Accelerator.Dispose();
        Context.Dispose();
    }
}
