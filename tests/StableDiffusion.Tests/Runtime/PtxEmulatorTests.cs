using ILGPU;
using ILGPU.Runtime;
using StableDiffusion.Kernels;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;

namespace StableDiffusion.Tests.Runtime;

/// <summary>
/// The PTX emulator on its own (the tensor-core kernels' oracle tests cover it at full use): lanes meet in lockstep,
/// cross-lane instructions see every lane, fp16 packing follows the ISA, and a snippet it cannot run fails the launch
/// with the statement named instead of ending the process.
/// </summary>
public class PtxEmulatorTests
{
    public struct Args
    {
        public ArrayView<int> Out;
    }

    private const string Butterfly =
        ".reg .b32 r<2>; mov.b32 r0, %0; shfl.sync.bfly.b32 r1, r0, 1, 0x1f, 0xffffffff; st.shared.b32 [%1], r1;";

    private const string Pack =
        ".reg .b32 h; .reg .f32 f<2>; mov.b32 f0, %0; mov.b32 f1, %1; cvt.rn.f16x2.f32 h, f1, f0; st.shared.b32 [%2], h;";

    private const string Unknown = "frobnicate.b32 r0, r1;";

    internal static void ButterflyKernel(Args a)
    {
        var shared = SharedMemory.Allocate<int>(32);
        PtxEmulator.BindShared(shared.Cast<byte>());
        int lane = Group.IdxX;
        PtxEmulator.Exec(Butterfly, (uint)lane, (uint)(lane * 4));
        Group.Barrier();
        a.Out[lane] = shared[lane];
    }

    internal static void PackKernel(Args a)
    {
        var shared = SharedMemory.Allocate<int>(32);
        PtxEmulator.BindShared(shared.Cast<byte>());
        int lane = Group.IdxX;
        PtxEmulator.Exec(Pack, Interop.FloatAsInt(1.5f), Interop.FloatAsInt(-2f), (uint)(lane * 4));
        Group.Barrier();
        a.Out[lane] = shared[lane];
    }

    internal static void UnknownKernel(Args a)
    {
        var shared = SharedMemory.Allocate<int>(32);
        PtxEmulator.BindShared(shared.Cast<byte>());
        PtxEmulator.Exec(Unknown);
        a.Out[Group.IdxX] = 1;
    }

    private static int[] Run(Action<Args> kernel)
    {
        var ops = Devices.Ops("test");
        using var buffer = ops.Device.Accelerator.Allocate1D<int>(32);
        ops.Runtime.Launch("emulator_test", kernel, new KernelConfig(1, 32), new Args { Out = buffer.View });
        return buffer.GetAsArray1D();
    }

    [Fact]
    public void Shuffles_see_every_lane_of_the_warp()
    {
        var got = Run(ButterflyKernel);
        Assert.Equal(Enumerable.Range(0, 32).Select(l => l ^ 1), got);
    }

    [Fact]
    public void Cvt_f16x2_puts_the_first_source_in_the_upper_half()
    {
        var got = Run(PackKernel);
        int want = (BitConverter.HalfToUInt16Bits((System.Half)(-2f)) << 16) | BitConverter.HalfToUInt16Bits((System.Half)1.5f);
        Assert.All(got, v => Assert.Equal(want, v));
    }

    [Fact]
    public void A_snippet_it_cannot_run_fails_the_launch_with_the_statement_named()
    {
        var e = Assert.Throws<InvalidOperationException>(() => Run(UnknownKernel));
        Assert.Contains("emulator_test", e.Message);
        Assert.Contains("frobnicate", e.Message);
        Assert.Null(PtxEmulator.TakeFailure());
    }
}
