using System.Collections.Concurrent;
using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels;

/// <summary>Which set of compile-time tile configurations the launchers pick from.</summary>
public enum KernelProfile
{
    /// <summary>Large tiles for NVIDIA GPUs (what the PTX report covers).</summary>
    Cuda,
    /// <summary>Moderate tiles that fit any OpenCL GPU's group limits.</summary>
    Portable,
    /// <summary>Tiny groups for correctness tests on the ILGPU CPU accelerator, which runs a thread per OS thread.</summary>
    Test,
}

/// <summary>
/// One kernel instantiation (method + configuration) the engine can launch; DynamicSharedBytes is the most dynamic
/// shared memory its launcher requests (ptxas only sees the static part).
/// </summary>
public sealed record KernelEntry(string Kernel, string Config, MethodInfo Method, int DynamicSharedBytes = 0,
    bool TensorCore = false);

/// <summary>
/// Loads kernels once per device, launches them on the device's stream, and checks group and shared-memory
/// limits on the host first (a bad launch on the CPU accelerator kills the process).
/// </summary>
public sealed class KernelRuntime
{
    private readonly ConcurrentDictionary<MethodInfo, Delegate> cache = new();
    private readonly ConcurrentDictionary<string, (long Launches, double Ms)> profile = new();

    public KernelRuntime(ComputeDevice device, KernelProfile? profile = null)
    {
        Device = device;
        Profile = profile ?? DefaultProfile(device.Kind);
    }

    public ComputeDevice Device { get; }
    public KernelProfile Profile { get; }

    /// <summary>When set, every launch synchronises and its wall time is added to a per-kernel profile.</summary>
    public bool Profiling { get; set; }

    public static KernelProfile DefaultProfile(DeviceKind kind) => kind switch
    {
        DeviceKind.Cuda => KernelProfile.Cuda,
        DeviceKind.OpenCL => KernelProfile.Portable,
        _ => KernelProfile.Test,
    };

    public IReadOnlyDictionary<string, (long Launches, double Ms)> ProfileTable => profile;

    /// <summary>The family of the most recent launch ("gemm", "gemm_mma", ...): which variant an op chose.</summary>
    public string? LastFamily { get; internal set; }

    public void Launch<TArgs>(string family, Action<TArgs> kernel, KernelConfig config, in TArgs args)
        where TArgs : struct
    {
        var acc = Device.Accelerator;
        long groupSize = (long)config.GroupDim.X * config.GroupDim.Y * config.GroupDim.Z;
        if (groupSize <= 0 || groupSize > acc.MaxNumThreadsPerGroup)
            throw new KernelArgumentException(
                $"{family}: a group of {groupSize} threads exceeds {acc.Name}'s limit of {acc.MaxNumThreadsPerGroup}");
        if (config.GridDim.X <= 0 || config.GridDim.Y <= 0 || config.GridDim.Z <= 0)
            throw new KernelArgumentException($"{family}: empty grid {config.GridDim}");
        if (config.GridDim.Y > 65535 || config.GridDim.Z > 65535)
            throw new KernelArgumentException($"{family}: grid {config.GridDim} exceeds 65535 in y or z");
        if (config.SharedMemoryConfig.ArraySize > acc.MaxSharedMemoryPerGroup)
            throw new KernelArgumentException(
                $"{family}: {config.SharedMemoryConfig.ArraySize} bytes of dynamic shared memory exceed {acc.Name}'s " +
                $"{acc.MaxSharedMemoryPerGroup} per group");

        var launcher = Loaded(kernel);
        LastFamily = family;
        // The simulator runs emulated inline PTX (the tensor-core kernels), whose failures are recorded, not thrown:
        // its launches are waited for and checked.
        bool simulator = Device.Kind == DeviceKind.IlgpuCpu;
        if (!Profiling && !simulator)
        {
            launcher(acc.DefaultStream, config, args);
            return;
        }
        if (Profiling) acc.DefaultStream.Synchronize();
        long t0 = Stopwatch.GetTimestamp();
        launcher(acc.DefaultStream, config, args);
        acc.DefaultStream.Synchronize();
        if (simulator && PtxEmulator.TakeFailure() is { } failure)
            throw new InvalidOperationException($"{family}: {failure.Message}", failure);
        if (!Profiling) return;
        double ms = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
        profile.AddOrUpdate(family, (1, ms), (_, v) => (v.Launches + 1, v.Ms + ms));
    }

    /// <summary>
    /// Forces one tensor-core configuration and split-K on every tensor-core GEMM/convolution (tests and the
    /// benchmark's per-configuration timings); null lets <see cref="TcPlanner"/> choose.
    /// </summary>
    public (TcConfig Config, int SplitK)? TensorCoreOverride { get; set; }

    /// <summary>Where stderr notes go (the one-time large-shared-memory fallback); Console.Error unless set.</summary>
    public TextWriter Notes { get; set; } = Console.Error;

    private TcDevice? tcDevice;
    private bool? largeShared;
    private readonly ConcurrentDictionary<MethodInfo, bool> sharedOptIn = new();
    private MemoryBuffer1D<float, Stride1D.Dense>? workspace;

    /// <summary>The planner's view of this device: its multiprocessors, and whether > 48 KB configurations may be chosen.</summary>
    public TcDevice TensorCoreDevice
    {
        get
        {
            tcDevice ??= Describe(Device.Accelerator);
            return tcDevice with { LargeShared = largeShared ?? true };
        }
    }

    /// <summary>The loaded kernel behind <paramref name="kernel"/>, compiled once per runtime.</summary>
    private Action<AcceleratorStream, KernelConfig, TArgs> Loaded<TArgs>(Action<TArgs> kernel) where TArgs : struct =>
        (Action<AcceleratorStream, KernelConfig, TArgs>)cache.GetOrAdd(kernel.Method, _ => Device.Accelerator.LoadKernel(kernel));

    private static TcDevice Describe(Accelerator acc)
    {
        int sharedPerSm = acc is CudaAccelerator cuda && cuda.Architecture is { } a
            ? a.Major >= 9 ? 228 * 1024 : a.Major == 8 && a.Minor == 0 ? 164 * 1024 : 100 * 1024
            : 228 * 1024;
        return TcDevice.Hopper(Math.Max(1, acc.NumMultiprocessors)) with { SharedPerSm = sharedPerSm };
    }

    // A UNet step launches the same few shapes every step: each is planned once per device state.
    private readonly ConcurrentDictionary<(long M, long N, long K, int Batch, bool LargeShared), TcPlan> plans = new();

    /// <summary>The plan for one tensor-core GEMM: the override if set, else the planner's choice for this device.</summary>
    public TcPlan PlanTensorCore(long m, long n, long k, int batch) =>
        TensorCoreOverride is { } o
            ? TcPlanner.Evaluate(o.Config, o.SplitK, m, n, k, batch, TensorCoreDevice)
            : plans.GetOrAdd((m, n, k, batch, largeShared ?? true), _ => TcPlanner.Plan(m, n, k, batch, TensorCoreDevice));

    /// <summary>A device scratch buffer of at least <paramref name="floats"/> floats (split-K partial sums); launches on one stream share it in order.</summary>
    public ArrayView<float> Workspace(long floats)
    {
        if (workspace is null || workspace.Length < floats)
        {
            workspace?.Dispose();
            workspace = Device.Accelerator.Allocate1D<float>(Math.Max(floats, 1 << 20));
        }
        return workspace.View.SubView(0, floats);
    }

    /// <summary>
    /// Lets <paramref name="kernel"/> use <paramref name="bytes"/> of dynamic shared memory: above 48 KB CUDA needs
    /// cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) on the loaded function, which ILGPU never
    /// calls. False when the call fails; the first failure is reported once and the planner stops choosing such
    /// configurations. The CPU accelerator has no such limit.
    /// </summary>
    public bool AllowDynamicShared<TArgs>(Action<TArgs> kernel, int bytes) where TArgs : struct
    {
        if (bytes <= 48 * 1024 || Device.Accelerator is not CudaAccelerator) return true;
        if (largeShared == false) return false;
        bool ok = sharedOptIn.GetOrAdd(kernel.Method, _ =>
        {
            var launcher = Loaded(kernel);
            string why;
            if (!launcher.TryGetKernel(out var k) || k is not CudaKernel ck) why = "no CudaKernel behind the launcher";
            else
            {
                int rc = CuFunc.SetMaxDynamicShared(ck.FunctionPtr, bytes);
                if (rc == 0) return true;
                why = rc == -1 ? "libcuda has no cuFuncSetAttribute" : $"CUresult {rc}";
            }
            Notes.WriteLine($"note: cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES, {bytes}) failed ({why}); " +
                            "tensor-core kernels use configurations of at most 48 KB of shared memory");
            return false;
        });
        if (!ok) largeShared = false;
        return ok;
    }

    /// <summary>Stops the planner choosing > 48 KB configurations (a launch with more failed although the attribute was set), reported once.</summary>
    public void RefuseLargeShared(string why)
    {
        if (largeShared == false) return;
        largeShared = false;
        Notes.WriteLine($"note: a tensor-core launch with more than 48 KB of shared memory failed ({why}); " +
                        "tensor-core kernels use configurations of at most 48 KB of shared memory");
    }

    private static unsafe class CuFunc
    {
        private const int MaxDynamicSharedSizeBytes = 8; // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        private static readonly delegate* unmanaged<IntPtr, int, int, int> Set = Load();

        private static delegate* unmanaged<IntPtr, int, int, int> Load()
        {
            foreach (var name in new[] { "libcuda.so.1", "libcuda.so", "nvcuda.dll" })
                if (NativeLibrary.TryLoad(name, out var lib) && NativeLibrary.TryGetExport(lib, "cuFuncSetAttribute", out var f))
                    return (delegate* unmanaged<IntPtr, int, int, int>)f;
            return null;
        }

        public static int SetMaxDynamicShared(IntPtr function, int bytes) =>
            Set == null ? -1 : Set(function, MaxDynamicSharedSizeBytes, bytes);
    }

    /// <summary>
    /// Launches a tensor-core kernel: its <see cref="NativePtx"/> instantiation on CUDA, its <see cref="EmulatedPtx"/>
    /// one on the ILGPU CPU accelerator (the launchers allow nothing else).
    /// </summary>
    public void LaunchTensorCore<TArgs>(string family, Action<TArgs> native, Action<TArgs> emulated, KernelConfig config,
        in TArgs args)
        where TArgs : struct =>
        Launch(family, Device.Kind == DeviceKind.IlgpuCpu ? emulated : native, config, args);

    /// <summary>Every kernel instantiation the CUDA profile launches, for PTX compilation and the report.</summary>
    public static IReadOnlyList<KernelEntry> CudaCatalog() =>
    [
        .. Gemm.Entries(),
        .. Conv2d.Entries(),
        .. Norms.Entries(),
        .. Softmax.Entries(),
        .. Attention.Entries(),
        .. Activations.Entries(),
        .. Elementwise.Entries(),
        .. Resample.Entries(),
        .. Embeddings.Entries(),
        .. Layout.Entries(),
    ];

    /// <summary>
    /// The instantiations OpenCL (and the CPU accelerator) can launch: the catalog without the tensor-core kernels,
    /// which are CUDA-only inline PTX.
    /// </summary>
    public static IReadOnlyList<KernelEntry> PortableCatalog() => [.. CudaCatalog().Where(e => !e.TensorCore)];

    internal static KernelEntry Entry<TArgs>(string kernel, string config, Action<TArgs> k, int dynamicSharedBytes = 0,
        bool tensorCore = false)
        where TArgs : struct =>
        new(kernel, config, k.Method, dynamicSharedBytes, tensorCore);
}
