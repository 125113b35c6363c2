using ILGPU;
using ILGPU.Backends.OpenCL;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace StableDiffusion.Runtime;

/// <summary>One accelerator ILGPU can see, usable or not.</summary>
public sealed record DeviceInfo(
    DeviceKind Kind,
    int Index,
    string Name,
    long MemoryBytes,
    int MaxGroupSize,
    int WarpSize,
    int Multiprocessors,
    string Capabilities,
    string? Refusal)
{
    public bool Usable => Refusal is null;
    public string Id => Kind switch
    {
        DeviceKind.Cuda => $"cuda:{Index}",
        DeviceKind.OpenCL => $"opencl:{Index}",
        DeviceKind.IlgpuCpu => "ilgpu-cpu",
        _ => "cpu",
    };
}

/// <summary>Lists every accelerator ILGPU can see, and for each refused one the reason.</summary>
public static class DeviceCatalog
{
    public static IReadOnlyList<DeviceInfo> Enumerate(out IReadOnlyList<string> notes)
    {
        NativeLibraries.Install();
        var list = new List<DeviceInfo>();
        var n = new List<string>();

        var cudaLib = NativeLibraries.Probe("cuda");
        if (cudaLib is null) n.Add("CUDA: driver library libcuda.so.1 not found (no NVIDIA driver installed)");
        else
        {
            n.Add($"CUDA: driver library {cudaLib}");
            try
            {
                using var ctx = Context.Create(b => b.Cuda(_ => true));
                int usable = 0;
                foreach (var d in ctx.GetCudaDevices())
                {
                    string? refusal = null;
                    if (d.Architecture is null) refusal = "its compute capability is unknown to ILGPU 1.5.3";
                    else if (d.InstructionSet is null) refusal = $"the driver ({d.DriverVersion}) maps to no PTX ISA ILGPU 1.5.3 knows";
                    else if (!PTXCodeGenerator.SupportedInstructionSets.Contains(d.InstructionSet.Value))
                        refusal = $"PTX ISA {d.InstructionSet} is not supported by ILGPU 1.5.3";
                    list.Add(new DeviceInfo(DeviceKind.Cuda, refusal is null ? usable++ : -1, d.Name, d.MemorySize,
                        d.MaxNumThreadsPerGroup, d.WarpSize, d.NumMultiprocessors,
                        $"arch {d.Architecture?.ToString() ?? "?"}, PTX ISA {d.InstructionSet?.ToString() ?? "?"}, " +
                        $"driver {d.DriverVersion}, {d.MaxSharedMemoryPerGroup / 1024} KiB shared/group, " +
                        $"L2 {d.L2CacheSize / (1024 * 1024)} MiB",
                        refusal));
                }
                if (ctx.GetCudaDevices().Count == 0) n.Add("CUDA: the driver reports no devices");
            }
            catch (Exception e)
            {
                n.Add($"CUDA: enumeration failed: {ComputeDevice.FirstLine(e.Message)}");
            }
        }

        var clLib = NativeLibraries.Probe("OpenCL");
        if (clLib is null) n.Add("OpenCL: no OpenCL loader (libOpenCL.so.1) found");
        else
        {
            n.Add($"OpenCL: loader {clLib}");
            try
            {
                using var ctx = Context.Create(b => b.OpenCL(_ => true));
                int usable = 0;
                foreach (var d in ctx.GetCLDevices())
                {
                    var caps = (CLCapabilityContext)d.Capabilities;
                    string? refusal = null;
                    if (d.CLStdVersion < CLBackend.MinimumVersion)
                        refusal = $"OpenCL C {d.CLStdVersion} is older than the 2.0 ILGPU needs";
                    else if (!caps.GenericAddressSpace)
                        refusal = "no generic address space (ILGPU needs OpenCL C 2.0, or 3.0 with __opencl_c_generic_address_space)";
                    list.Add(new DeviceInfo(DeviceKind.OpenCL, refusal is null ? usable++ : -1, d.Name, d.MemorySize,
                        d.MaxNumThreadsPerGroup, d.WarpSize, d.NumMultiprocessors,
                        $"platform {d.PlatformName}, vendor {d.Vendor}, {d.DeviceType}, OpenCL C {d.CLStdVersion}, " +
                        $"generic address space {caps.GenericAddressSpace}, fp16 {caps.Float16}, fp64 {caps.Float64}, " +
                        // caps.SubGroups is only set once an accelerator is opened: read the extensions instead.
                        $"subgroups {d.HasExtension("cl_khr_subgroups") || d.HasExtension("cl_intel_subgroups")} (not needed), " +
                        $"{d.MaxSharedMemoryPerGroup / 1024} KiB local/group",
                        refusal));
                }
                if (ctx.GetCLDevices().Count == 0) n.Add("OpenCL: the loader reports no devices (no ICD installed?)");
            }
            catch (Exception e)
            {
                n.Add($"OpenCL: enumeration failed: {ComputeDevice.FirstLine(e.Message)}");
            }
        }

        int cores = Math.Max(1, Environment.ProcessorCount);
        list.Add(new DeviceInfo(DeviceKind.Cpu, 0, ComputeDevice.HostName, ComputeDevice.HostMemory, 1, 1, cores,
            $"the C# backend: {ComputeDevice.HostVectors}, {cores} thread(s), fp32 compute (fp16 tensors widened on the fly)", null));
        list.Add(new DeviceInfo(DeviceKind.IlgpuCpu, 0, "ILGPU CPU accelerator", ComputeDevice.HostMemory,
            32 * 32, 32, cores, $"simulates {cores} multiprocessor(s) with 32-thread warps on the host; for tests only", null));
        notes = n;
        return list;
    }

    /// <summary>Short one-line summary of what exists, for error messages.</summary>
    public static string Summary()
    {
        var all = Enumerate(out _);
        return string.Join(", ", all.Select(d => d.Usable ? $"{d.Id} '{d.Name}'" : $"'{d.Name}' (refused: {d.Refusal})"));
    }
}
