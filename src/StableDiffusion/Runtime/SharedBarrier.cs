using ILGPU;
using ILGPU.Backends.OpenCL;
using ILGPU.Backends.PTX;
using ILGPU.IR;
using ILGPU.IR.Intrinsics;

namespace StableDiffusion.Runtime;

/// <summary>
/// The group barrier kernels use where threads exchange data through shared (OpenCL: local) memory.
/// <para>
/// ILGPU 1.5.3 emits <c>Group.Barrier()</c> for OpenCL as <c>work_group_barrier(CLK_GLOBAL_MEM_FENCE)</c> in every case
/// (<c>CLCodeGenerator.GenerateCode(Barrier)</c> passes <c>GetMemoryFenceFlags(true)</c>), and <c>MemoryFence.*</c>
/// become the same global-only fence; the OpenCL memory model orders local memory only with <c>CLK_LOCAL_MEM_FENCE</c>.
/// <see cref="Sync"/> is an ILGPU intrinsic with one implementation per backend, registered on the context by
/// <see cref="Register"/>: OpenCL gets <c>work_group_barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE)</c> (what
/// ILGPU emitted plus the local fence); PTX is redirected to <c>Group.Barrier()</c> (the same <c>bar.sync 0</c> as
/// before); the CPU accelerator runs the .NET body, <c>Group.Barrier()</c>.
/// </para>
/// <para>
/// Every context that compiles kernels for CUDA or OpenCL must be built with <see cref="Register"/>
/// (<see cref="ComputeDevice"/> does); without it ILGPU refuses the kernel with a <c>NotSupportedIntrinsicException</c>.
/// </para>
/// </summary>
public static class SharedBarrier
{
    /// <summary>
    /// Waits for every thread of the group; shared-memory writes before it are visible to the group after it
    /// (on OpenCL too). Every thread of the group must reach it, as with <c>Group.Barrier()</c>.
    /// </summary>
    [IntrinsicImplementation]
    public static void Sync() => Group.Barrier();

    /// <summary>Registers the per-backend implementations of <see cref="Sync"/> on a context builder.</summary>
    public static Context.Builder Register(Context.Builder builder)
    {
        var manager = builder.GetIntrinsicManager();
        var sync = typeof(SharedBarrier).GetMethod(nameof(Sync))!;
        manager.RegisterMethod(sync,
            new PTXIntrinsic(typeof(SharedBarrier), nameof(PtxBarrier), IntrinsicImplementationMode.Redirect));
        manager.RegisterMethod(sync,
            new CLIntrinsic(typeof(SharedBarrier), nameof(EmitOpenCL), IntrinsicImplementationMode.GenerateCode));
        return builder;
    }

    private static void PtxBarrier() => Group.Barrier();

    private static void EmitOpenCL(CLBackend backend, CLCodeGenerator codeGenerator, Value value)
    {
        using var statement = codeGenerator.BeginStatement("work_group_barrier");
        statement.BeginArguments();
        statement.AppendCommand("CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE");
        statement.EndArguments();
    }
}
