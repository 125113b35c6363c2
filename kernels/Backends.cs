using StableDiffusion.Kernels.Cpu;
using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels;

/// <summary>The composition root's one call: the <see cref="IOps"/> backend for an open device.</summary>
public static class Backends
{
    /// <summary>
    /// <see cref="CpuOps"/> for the C# CPU device; <see cref="IlgpuOps"/> (our ILGPU kernels) for CUDA, OpenCL and the
    /// ILGPU CPU accelerator.
    /// </summary>
    public static IOps For(ComputeDevice device, KernelProfile? profile = null) =>
        device.Kind == DeviceKind.Cpu ? new CpuOps(device) : new IlgpuOps(device, profile);
}
