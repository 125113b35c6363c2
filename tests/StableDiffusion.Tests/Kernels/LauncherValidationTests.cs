using StableDiffusion.Kernels;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;

namespace StableDiffusion.Tests.Kernels;

/// <summary>
/// Launchers refuse bad shapes, dtypes and ranges on the host with a KernelArgumentException naming the op, before
/// anything reaches the device (an out-of-range index on the CPU accelerator would kill the test process).
/// </summary>
public class LauncherValidationTests
{
    private static IlgpuOps Ops => Devices.Ops("test");

    private static DeviceTensor T(DType dt, params int[] shape) => DeviceTensor.Empty(Devices.Device, dt, shape);

    private static void Refused(string op, Action a)
    {
        var e = Assert.Throws<KernelArgumentException>(a);
        Assert.StartsWith(op, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void Gemm_refuses_mismatched_and_undersized_operands()
    {
        using var a = T(DType.F32, 4, 5);
        using var b = T(DType.F32, 6, 7);
        using var h = T(DType.F16, 5, 7);
        using var bias = T(DType.F32, 3);
        using var small = T(DType.F32, 2, 2);
        Refused("matmul", () => Ops.MatMul(a, b));
        Refused("gemm", () => Ops.MatMul(a, h));
        using var b2 = T(DType.F32, 5, 7);
        Refused("gemm", () => Ops.MatMul(a, b2, bias: bias));
        Refused("gemm", () => Gemm.Run(Ops.Runtime, new GemmSpec(4, 7, 5), a, b2, small));
        Refused("gemm", () => Gemm.Run(Ops.Runtime, new GemmSpec(4, 7, 5) { Lda = 3 }, a, b2, T(DType.F32, 4, 7)));
        Refused("gemm", () => Gemm.Run(Ops.Runtime, new GemmSpec(0, 7, 5), a, b2, T(DType.F32, 4, 7)));
    }

    [Fact]
    public void Conv2d_refuses_bad_shapes()
    {
        using var x = T(DType.F32, 1, 4, 4, 3);
        using var w = T(DType.F32, 8, 3, 3, 5);
        using var w5 = T(DType.F32, 8, 5, 5, 3);
        using var ok = T(DType.F32, 8, 3, 3, 3);
        using var bias = T(DType.F32, 7);
        Refused("conv2d", () => Ops.Conv2d(x, w));
        Refused("conv2d", () => Ops.Conv2d(x, w5));
        Refused("conv2d", () => Ops.Conv2d(x, ok, bias, padding: 1));
        Refused("conv2d", () => Ops.Conv2d(x, ok, stride: 0));
        Refused("conv2d", () => Ops.Conv2d(T(DType.F32, 4, 4, 3), ok));
    }

    [Fact]
    public void Norms_refuse_bad_groups_and_parameters()
    {
        using var x = T(DType.F32, 2, 5, 12);
        using var g = T(DType.F32, 12);
        using var g5 = T(DType.F32, 5);
        Refused("group_norm", () => Ops.GroupNorm(x, 5, g, g, 1e-5f));
        Refused("group_norm", () => Ops.GroupNorm(x, 4, g5, g5, 1e-5f));
        Refused("group_norm", () => Ops.GroupNorm(x, 4, g, null, 1e-5f));
        Refused("group_norm", () => Ops.GroupNorm(x, 4, g, g, 0f));
        Refused("layer_norm", () => Ops.LayerNorm(x, g5, null, 1e-5f));
    }

    [Fact]
    public void Attention_refuses_unsupported_head_dims_and_mismatched_lengths()
    {
        using var q = T(DType.F32, 1, 4, 12);
        using var k = T(DType.F32, 1, 5, 12);
        using var v6 = T(DType.F32, 1, 6, 12);
        Refused("attention", () => Ops.Attention(q, k, k, 2)); // head dim 6 is not a multiple of 8
        using var q16 = T(DType.F32, 1, 4, 16);
        using var k16 = T(DType.F32, 1, 5, 16);
        using var v16 = T(DType.F32, 1, 6, 16);
        Refused("attention", () => Ops.Attention(q16, k16, v16, 2));
        Refused("attention", () => Ops.Attention(q16, k16, k16, 3));
        using var big = T(DType.F32, 1, 2, 1024);
        Refused("attention", () => Ops.Attention(big, big, big, 1)); // 1024 > 512
    }

    [Fact]
    public void Embedding_refuses_ids_outside_the_table()
    {
        using var table = T(DType.F32, 10, 4);
        using var ids = DeviceTensor.FromInts(Devices.Device, [1, 10, 2], 3);
        var e = Assert.Throws<KernelArgumentException>(() => Ops.Embedding(table, ids));
        Assert.Contains("id 10 at position 1", e.Message);
    }

    [Fact]
    public void Pointwise_ops_refuse_mismatched_outputs()
    {
        using var x = T(DType.F32, 3, 5);
        Refused("geglu", () => Ops.Geglu(x));
        Refused("concat", () => Ops.Concat(x, T(DType.F32, 4, 5)));
        Refused("upsample2x", () => Ops.Upsample2x(x));
        Refused("transpose", () => Ops.Transpose(T(DType.F32, 3)));
        Refused("timestep_embedding", () => Ops.TimestepEmbedding(T(DType.F16, 2), 32, DType.F32));
    }

    [Fact]
    public void Oversized_groups_are_refused_before_launch()
    {
        // The CPU accelerator here allows 256 threads per group; a 1024-thread launch must never reach it.
        var rt = Ops.Runtime;
        var e = Assert.Throws<KernelArgumentException>(() =>
            rt.Launch("probe", ElementwiseKernels.Affine<float, F32Elem>, new ILGPU.KernelConfig(1, 1024),
                new AffineArgs<float>()));
        Assert.Contains("exceeds", e.Message);
    }
}
