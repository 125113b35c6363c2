using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using StableDiffusion.Kernels;
using StableDiffusion.Runtime;

namespace StableDiffusion.Cli;

/// <summary>
/// <c>sd debug --what launch</c>: the open questions of ILGPU.md measured on a CUDA device: what one kernel launch
/// costs from C# (queued, and synchronised each time), whether a kernel gets more than 48 KB of dynamic shared
/// memory once <c>cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)</c> is set on ILGPU's
/// <see cref="CudaKernel.FunctionPtr"/>, and which libcuda file the process loaded.
/// </summary>
public static unsafe class LaunchProbe
{
    public struct ProbeArgs
    {
        public ArrayView<int> Out;
        public int N;
    }

    /// <summary>Does nothing: the launch itself is what is timed.</summary>
    public static void Empty(ProbeArgs a)
    {
    }

    /// <summary>
    /// Fills N ints of dynamic shared memory (all of it), then every thread checks words other threads wrote:
    /// Out[0] = the view length ILGPU reports, Out[1] += wrong words, Out[2] = 1 once the kernel ran.
    /// </summary>
    public static void FillShared(ProbeArgs a)
    {
        var s = SharedMemory.GetDynamic<int>();
        int n = a.N;
        for (int i = Group.IdxX; i < n; i += Group.DimX) s[i] = i * 3 + 1;
        Group.Barrier();
        int bad = 0;
        for (int i = Group.IdxX; i < n; i += Group.DimX)
        {
            int j = n - 1 - i;
            if (s[j] != j * 3 + 1) bad++;
        }
        if (bad > 0) Atomic.Add(ref a.Out[1], bad);
        if (Group.IdxX == 0)
        {
            a.Out[0] = (int)s.Length;
            a.Out[2] = 1;
        }
    }

    // CUfunction_attribute and CUdevice_attribute values from cuda.h.
    private const int FuncSharedSizeBytes = 1, FuncNumRegs = 4, FuncMaxDynamicSharedSizeBytes = 8;
    private const int DevMaxSharedPerBlock = 8, DevMaxSharedPerMultiprocessor = 81, DevMaxSharedPerBlockOptin = 97;

    public static int Run(ComputeDevice device, string? jsonPath, TextWriter stdout)
    {
        if (device.Kind != DeviceKind.Cuda || device.Accelerator is not CudaAccelerator acc)
            throw new DeviceException($"sd debug --what launch needs CUDA; {device.Name} is {ComputeDevice.KindName(device.Kind)}");
        var report = new Dictionary<string, object?> { ["device"] = device.Name };
        stdout.WriteLine($"device: {device.Name}");

        // Which libcuda: what the dynamic loader mapped into this process, and what the resolver asked for.
        var mapped = File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(f => f.Length >= 6 && Path.GetFileName(f[5]).StartsWith("libcuda.so", StringComparison.Ordinal))
            .Select(f => f[5]).Distinct().ToList();
        bool unversioned = NativeLibrary.TryLoad("libcuda.so", out var h0);
        if (unversioned) NativeLibrary.Free(h0);
        report["libcuda_mapped"] = mapped;
        report["libcuda_resolver"] = NativeLibraries.Describe("cuda") ?? "(ILGPU loaded it without our resolver)";
        report["libcuda_unversioned_loads"] = unversioned;
        stdout.WriteLine($"libcuda: mapped {string.Join(", ", mapped.DefaultIfEmpty("(none found in /proc/self/maps)"))}; " +
                         $"resolver: {report["libcuda_resolver"]}; unversioned libcuda.so loads: {(unversioned ? "yes" : "no")}");

        var cuda = new Driver(mapped.FirstOrDefault());
        report["driver_version"] = cuda.DriverVersion();
        stdout.WriteLine($"CUDA driver API version {report["driver_version"]}");

        using var o = Tensor.FromInts(device, [0, 0, 0], 3);
        var args = new ProbeArgs { Out = o.I32 };
        var stream = acc.DefaultStream;

        // Launch overhead.
        var compile = Stopwatch.StartNew();
        var empty = acc.LoadKernel<ProbeArgs>(Empty);
        double compileMs = compile.Elapsed.TotalMilliseconds;
        var cfg = new KernelConfig(1, 32);
        for (int i = 0; i < 200; i++) empty(stream, cfg, args);
        stream.Synchronize();
        const int queued = 10_000, synced = 10_000;
        var t = Stopwatch.StartNew();
        for (int i = 0; i < queued; i++) empty(stream, cfg, args);
        double enqueueUs = t.Elapsed.TotalMicroseconds / queued;
        stream.Synchronize();
        double queuedUs = t.Elapsed.TotalMicroseconds / queued;
        t.Restart();
        for (int i = 0; i < synced; i++)
        {
            empty(stream, cfg, args);
            stream.Synchronize();
        }
        double syncedUs = t.Elapsed.TotalMicroseconds / synced;
        // The engine's own path: host-side checks and the kernel cache of KernelRuntime.Launch.
        var rt = new KernelRuntime(device);
        rt.Launch("probe", Empty, cfg, args);
        stream.Synchronize();
        t.Restart();
        for (int i = 0; i < queued; i++) rt.Launch("probe", Empty, cfg, args);
        stream.Synchronize();
        double runtimeUs = t.Elapsed.TotalMicroseconds / queued;
        report["launch"] = new
        {
            kernel = "empty, 1 group of 32 threads",
            compile_and_load_ms = compileMs,
            queued_launches = queued,
            enqueue_us = enqueueUs,
            queued_us_per_launch = queuedUs,
            synchronised_launches = synced,
            synchronised_us_per_launch = syncedUs,
            kernel_runtime_launch_us = runtimeUs,
        };
        stdout.WriteLine($"empty kernel: compile+load {compileMs:F1} ms; {queued} queued launches: {enqueueUs:F2} µs each to enqueue, " +
                         $"{queuedUs:F2} µs each until done; launch+synchronise: {syncedUs:F2} µs; through KernelRuntime.Launch: {runtimeUs:F2} µs");

        // Dynamic shared memory beyond 48 KB.
        var fill = acc.LoadKernel<ProbeArgs>(FillShared);
        var shared = new Dictionary<string, object?>();
        report["shared_memory"] = shared;
        if (!fill.TryGetKernel(out var kernel) || kernel is not CudaKernel ck)
        {
            var why = $"the launcher delegate ({fill.Method.DeclaringType}.{fill.Method.Name}) gave no CudaKernel through KernelUtil.TryGetKernel";
            shared["result"] = "cannot tell: " + why;
            stdout.WriteLine($"shared memory: cannot tell: {why}");
            return Finish(report, jsonPath, stdout);
        }
        int dev;
        using (acc.BindScoped()) dev = cuda.CurrentDevice();
        int perBlock = cuda.DeviceAttribute(DevMaxSharedPerBlock, dev);
        int optin = cuda.DeviceAttribute(DevMaxSharedPerBlockOptin, dev);
        int perSm = cuda.DeviceAttribute(DevMaxSharedPerMultiprocessor, dev);
        int staticBytes = cuda.FuncAttribute(FuncSharedSizeBytes, ck.FunctionPtr);
        shared["device_max_per_block"] = perBlock;
        shared["device_max_per_block_optin"] = optin;
        shared["device_max_per_multiprocessor"] = perSm;
        shared["kernel_static_bytes"] = staticBytes;
        shared["kernel_registers"] = cuda.FuncAttribute(FuncNumRegs, ck.FunctionPtr);
        shared["kernel_max_dynamic_before"] = cuda.FuncAttribute(FuncMaxDynamicSharedSizeBytes, ck.FunctionPtr);
        stdout.WriteLine($"shared memory: device per block {perBlock} B, opt-in {optin} B, per SM {perSm} B; probe kernel static {staticBytes} B, " +
                         $"max dynamic {shared["kernel_max_dynamic_before"]} B before cuFuncSetAttribute");

        string Try(int bytes)
        {
            try
            {
                using var counts = Tensor.FromInts(device, [-1, 0, 0], 3);
                fill(stream, new KernelConfig(1, 256, SharedMemoryConfig.RequestDynamic<int>(bytes / 4)),
                    new ProbeArgs { Out = counts.I32, N = bytes / 4 });
                stream.Synchronize();
                var r = counts.ToFloatArray();
                return r[2] == 1 && r[1] == 0
                    ? $"ok (view length {(int)r[0]} ints)"
                    : $"wrong: ran {r[2] == 1}, {(int)r[1]} wrong words, view length {(int)r[0]} ints";
            }
            catch (Exception e)
            {
                return $"failed: {e.GetType().Name}: {e.Message.Split('\n')[0]}";
            }
        }

        int big = Math.Min(96 * 1024, optin - staticBytes);
        int max = optin - staticBytes;
        var runs = new List<SharedRun>();
        void Record(string when, int bytes)
        {
            var r = Try(bytes);
            runs.Add(new SharedRun(when, bytes, r));
            stdout.WriteLine($"  {when,-40} {bytes,7} B dynamic: {r}");
        }
        Record("default attributes", 32 * 1024);
        Record("default attributes", big);
        int rc = cuda.SetFuncAttribute(ck.FunctionPtr, FuncMaxDynamicSharedSizeBytes, max);
        shared["cuFuncSetAttribute"] = rc == 0 ? "CUDA_SUCCESS" : cuda.ErrorName(rc);
        shared["kernel_max_dynamic_after"] = cuda.FuncAttribute(FuncMaxDynamicSharedSizeBytes, ck.FunctionPtr);
        stdout.WriteLine($"cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES, {max}) → {shared["cuFuncSetAttribute"]}; now {shared["kernel_max_dynamic_after"]} B");
        Record("after cuFuncSetAttribute", big);
        Record("after cuFuncSetAttribute", max);
        shared["runs"] = runs;
        bool unlocked = runs.Skip(2).All(r => r.result.StartsWith("ok", StringComparison.Ordinal)) && max > 48 * 1024;
        shared["result"] = unlocked
            ? $"yes: {max} B of dynamic shared memory worked after cuFuncSetAttribute on CudaKernel.FunctionPtr"
            : "no: see runs";
        stdout.WriteLine($"more than 48 KB of dynamic shared memory: {shared["result"]}");
        return Finish(report, jsonPath, stdout);
    }

    private sealed record SharedRun(string when, int bytes, string result);

    private static int Finish(Dictionary<string, object?> report, string? jsonPath, TextWriter stdout)
    {
        if (jsonPath is not null)
        {
            File.WriteAllText(jsonPath, JsonSerializer.Serialize(report, new JsonSerializerOptions { WriteIndented = true }));
            stdout.WriteLine($"wrote {jsonPath}");
        }
        return 0;
    }

    /// <summary>The few driver-API entry points ILGPU does not wrap, from the libcuda this process already mapped.</summary>
    private sealed class Driver
    {
        private readonly delegate* unmanaged<int*, int> driverGetVersion;
        private readonly delegate* unmanaged<int*, int> ctxGetDevice;
        private readonly delegate* unmanaged<int*, int, int, int> deviceGetAttribute;
        private readonly delegate* unmanaged<int*, int, IntPtr, int> funcGetAttribute;
        private readonly delegate* unmanaged<IntPtr, int, int, int> funcSetAttribute;
        private readonly delegate* unmanaged<int, IntPtr*, int> getErrorName;

        public Driver(string? path)
        {
            IntPtr lib = IntPtr.Zero;
            foreach (var p in new[] { path, "libcuda.so.1", "libcuda.so" })
                if (p is not null && NativeLibrary.TryLoad(p, out lib)) break;
            if (lib == IntPtr.Zero) throw new DeviceException("could not load libcuda for cuFuncSetAttribute");
            IntPtr F(string name) => NativeLibrary.GetExport(lib, name);
            driverGetVersion = (delegate* unmanaged<int*, int>)F("cuDriverGetVersion");
            ctxGetDevice = (delegate* unmanaged<int*, int>)F("cuCtxGetDevice");
            deviceGetAttribute = (delegate* unmanaged<int*, int, int, int>)F("cuDeviceGetAttribute");
            funcGetAttribute = (delegate* unmanaged<int*, int, IntPtr, int>)F("cuFuncGetAttribute");
            funcSetAttribute = (delegate* unmanaged<IntPtr, int, int, int>)F("cuFuncSetAttribute");
            getErrorName = (delegate* unmanaged<int, IntPtr*, int>)F("cuGetErrorName");
        }

        public string ErrorName(int rc)
        {
            IntPtr s;
            return getErrorName(rc, &s) == 0 && s != IntPtr.Zero ? Marshal.PtrToStringAnsi(s) ?? $"CUresult {rc}" : $"CUresult {rc}";
        }

        private int Check(int rc, string what) =>
            rc == 0 ? 0 : throw new DeviceException($"{what} failed: {ErrorName(rc)}");

        public int DriverVersion()
        {
            int v;
            Check(driverGetVersion(&v), "cuDriverGetVersion");
            return v;
        }

        public int CurrentDevice()
        {
            int d;
            Check(ctxGetDevice(&d), "cuCtxGetDevice");
            return d;
        }

        public int DeviceAttribute(int attribute, int dev)
        {
            int v;
            Check(deviceGetAttribute(&v, attribute, dev), $"cuDeviceGetAttribute({attribute})");
            return v;
        }

        public int FuncAttribute(int attribute, IntPtr function)
        {
            int v;
            Check(funcGetAttribute(&v, attribute, function), $"cuFuncGetAttribute({attribute})");
            return v;
        }

        public int SetFuncAttribute(IntPtr function, int attribute, int value) => funcSetAttribute(function, attribute, value);
    }
}
