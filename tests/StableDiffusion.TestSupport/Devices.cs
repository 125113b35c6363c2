using StableDiffusion.Kernels;
using StableDiffusion.Kernels.Cpu;
using StableDiffusion.Runtime;

namespace StableDiffusion.TestSupport;

/// <summary>
/// One ILGPU CPU accelerator for the whole test run (32-thread warps like NVIDIA, groups up to 256 threads), its pool
/// poisoning every rented buffer with NaN so that elements a kernel fails to write show up, and two kernel runtimes on
/// it: the tiny "Test" tiles, and the real CUDA tile configurations run at shapes that span only a few tiles.
/// </summary>
public static class Devices
{
    private static readonly Lazy<ComputeDevice> Cpu = new(() =>
    {
        var d = ComputeDevice.OpenIlgpuCpu(warpsPerGroup: 8, multiprocessors: 2);
        d.Pool.PoisonOnRent = true;
        return d;
    });

    private static readonly Lazy<IlgpuOps> TestOps = new(() => new IlgpuOps(Cpu.Value, KernelProfile.Test));
    private static readonly Lazy<IlgpuOps> CudaOps = new(() => new IlgpuOps(Cpu.Value, KernelProfile.Cuda));
    private static readonly Lazy<CpuOps> CSharpOps = new(() => new CpuOps(Cpu.Value));

    public static ComputeDevice Device => Cpu.Value;

    /// <summary>Ops with the given tile profile ("test" or "cuda") on the CPU accelerator.</summary>
    public static IlgpuOps Ops(string profile) => profile switch
    {
        "test" => TestOps.Value,
        "cuda" => CudaOps.Value,
        _ => throw new ArgumentOutOfRangeException(nameof(profile), profile, "expected test or cuda"),
    };

    /// <summary>
    /// A backend by name: "test" and "cuda" are the ILGPU kernels at those tile profiles on the CPU accelerator,
    /// "cpu" the C# CPU backend on the same (NaN-poisoning) device memory.
    /// </summary>
    public static IOps Backend(string name)
    {
        Oracle.CurrentBackend.Value = name;
        return name == "cpu" ? CSharpOps.Value : Ops(name);
    }

    public static DType DType(string name) => name switch
    {
        "fp32" => global::StableDiffusion.Runtime.DType.F32,
        "fp16" => global::StableDiffusion.Runtime.DType.F16,
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, "expected fp32 or fp16"),
    };

    public static double Tolerance(DType dt) => dt == global::StableDiffusion.Runtime.DType.F32 ? 1e-5 : 2e-3;
}
