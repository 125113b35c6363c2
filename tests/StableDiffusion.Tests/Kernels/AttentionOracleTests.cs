using StableDiffusion.Kernels;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace StableDiffusion.Tests.Kernels;

/// <summary>attention_flash_simt against torch.nn.functional.scaled_dot_product_attention.</summary>
public class AttentionOracleTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    [Theory]
    // profile, dtype, B, heads, Lq, Lk, D, causal
    [InlineData("test", "fp32", 1, 2, 9, 11, 8, false)]
    [InlineData("cpu", "fp32", 1, 2, 9, 11, 8, false)]
    [InlineData("test", "fp32", 2, 1, 6, 6, 16, true)]
    [InlineData("cpu", "fp32", 2, 1, 6, 6, 16, true)]
    [InlineData("test", "fp32", 1, 1, 5, 77, 40, false)]
    [InlineData("cpu", "fp32", 1, 1, 5, 77, 40, false)]
    [InlineData("test", "fp32", 1, 2, 7, 7, 64, false)]
    [InlineData("cpu", "fp32", 1, 2, 7, 7, 64, false)]
    [InlineData("test", "fp32", 1, 1, 3, 5, 80, true)]
    [InlineData("cpu", "fp32", 1, 1, 3, 5, 80, true)]
    [InlineData("test", "fp32", 1, 1, 3, 6, 160, false)]
    [InlineData("cpu", "fp32", 1, 1, 3, 6, 160, false)]
    [InlineData("test", "fp32", 1, 1, 2, 3, 512, false)]
    [InlineData("cpu", "fp32", 1, 1, 2, 3, 512, false)]
    [InlineData("test", "fp16", 1, 2, 9, 11, 40, false)]
    [InlineData("cpu", "fp16", 1, 2, 9, 11, 40, false)]
    [InlineData("test", "fp16", 1, 1, 4, 5, 160, true)]
    [InlineData("cpu", "fp16", 1, 1, 4, 5, 160, true)]
    [InlineData("cuda", "fp32", 1, 2, 40, 77, 40, false)]
    [InlineData("cuda", "fp32", 2, 1, 33, 33, 64, true)]
    [InlineData("cuda", "fp32", 1, 1, 20, 40, 80, false)]
    [InlineData("cuda", "fp32", 1, 1, 17, 23, 160, false)]
    [InlineData("cuda", "fp32", 1, 1, 9, 12, 512, false)]
    [InlineData("cuda", "fp16", 1, 2, 40, 77, 40, false)]
    [InlineData("cuda", "fp16", 1, 1, 17, 23, 160, true)]
    public void Attention_matches_libtorch_sdpa(string profile, string dtype, int b, int heads, int lq, int lk, int d, bool causal)
    {
        var ops = Devices.Backend(profile);
        CheckAgainstSdpa(ops, Devices.DType(dtype), "attention_flash_simt", profile, b, heads, lq, lk, d, causal,
            (q, k, v) => ops.Attention(q, k, v, heads, causal: causal));
    }

    /// <summary>Random Q (scale 2), K (scale 2), V in [B, L, H*D]; <paramref name="run"/>'s output against SDPA.</summary>
    private void CheckAgainstSdpa(IOps ops, DType dt, string kernel, string label, int b, int heads, int lq, int lk, int d,
        bool causal, Func<StableDiffusion.Runtime.Tensor, StableDiffusion.Runtime.Tensor, StableDiffusion.Runtime.Tensor, StableDiffusion.Runtime.Tensor> run)
    {
        using var scope = torch.NewDisposeScope();
        int hd = heads * d;
        var q = oracle.Random((long)b * lq * hd, dt, 2f);
        var k = oracle.Random((long)b * lk * hd, dt, 2f);
        var v = oracle.Random((long)b * lk * hd, dt);
        using var tq = Oracle.Upload(ops, q, dt, b, lq, hd);
        using var tk = Oracle.Upload(ops, k, dt, b, lk, hd);
        using var tv = Oracle.Upload(ops, v, dt, b, lk, hd);
        using var y = run(tq, tk, tv);

        TorchSharp.torch.Tensor Heads(float[] x, int l) => Oracle.T(x, b, l, heads, d).transpose(1, 2);
        var want = torch.nn.functional.scaled_dot_product_attention(Heads(q, lq), Heads(k, lk), Heads(v, lk), is_casual: causal)
            .transpose(1, 2).reshape(b, lq, hd);
        oracle.Check(kernel, $"{label} b{b} h{heads} {lq}x{lk} d{d}{(causal ? " causal" : "")}", y, want, Devices.Tolerance(dt));
    }

    [Fact]
    public void Attention_reads_q_k_v_from_one_fused_projection()
    {
        var ops = Devices.Ops("test");
        using var scope = torch.NewDisposeScope();
        int b = 1, l = 6, heads = 2, d = 8, hd = heads * d;
        var qkv = oracle.Random((long)b * l * 3 * hd, DType.F32);
        using var t = Oracle.Upload(ops, qkv, DType.F32, b, l, 3 * hd);
        using var y = DeviceTensor.Empty(ops.Device, DType.F32, b, l, hd);
        Attention.Run(ops.Runtime, t, t, t, y, heads, 1f / MathF.Sqrt(d), qOffset: 0, kOffset: hd, vOffset: 2 * hd);
        var all = Oracle.T(qkv, b, l, 3, heads, d);
        TorchSharp.torch.Tensor Part(int i) => all.select(2, i).transpose(1, 2);
        var want = torch.nn.functional.scaled_dot_product_attention(Part(0), Part(1), Part(2)).transpose(1, 2).reshape(b, l, hd);
        oracle.Check("attention_flash_simt", "test fused qkv [1,6,48]", y, want, 1e-5);
    }

    /// <summary>
    /// attention_flash_mma (mma.sync, ldmatrix(.trans), cp.async, the online softmax on fragments) on the ILGPU CPU
    /// accelerator with its PTX emulated: every generated head dim, key tails, causal, several query groups and key
    /// tiles, batch and heads.
    /// </summary>
    [Theory]
    // B, heads, Lq, Lk, D, causal
    [InlineData(1, 2, 70, 77, 40, false)]
    [InlineData(2, 1, 65, 65, 64, true)]
    [InlineData(1, 2, 17, 200, 64, false)]
    [InlineData(1, 1, 130, 100, 80, false)]
    [InlineData(1, 1, 40, 70, 160, true)]
    [InlineData(1, 1, 64, 33, 160, false)]
    public void Tensor_core_attention_matches_libtorch_sdpa(int b, int heads, int lq, int lk, int d, bool causal)
    {
        var ops = Devices.Ops("test");
        CheckAgainstSdpa(ops, DType.F16, "attention_flash_mma", "emulated", b, heads, lq, lk, d, causal, (q, k, v) =>
        {
            var y = DeviceTensor.Empty(ops.Device, DType.F16, b, lq, heads * d);
            Attention.Run(ops.Runtime, q, k, v, y, heads, 1f / MathF.Sqrt(d), causal, variant: AttentionVariant.TensorCore);
            Assert.Equal("attention_mma", ops.Runtime.LastFamily);
            return y;
        });
    }

    [Fact]
    public void Tensor_core_attention_reads_q_k_v_from_one_fused_projection()
    {
        var ops = Devices.Ops("test");
        using var scope = torch.NewDisposeScope();
        int b = 1, l = 20, heads = 2, d = 40, hd = heads * d;
        var qkv = oracle.Random((long)b * l * 3 * hd, DType.F16, 2f);
        using var t = Oracle.Upload(ops, qkv, DType.F16, b, l, 3 * hd);
        using var y = DeviceTensor.Empty(ops.Device, DType.F16, b, l, hd);
        Attention.Run(ops.Runtime, t, t, t, y, heads, 1f / MathF.Sqrt(d), qOffset: 0, kOffset: hd, vOffset: 2 * hd,
            variant: AttentionVariant.TensorCore);
        var all = Oracle.T(qkv, b, l, 3, heads, d);
        TorchSharp.torch.Tensor Part(int i) => all.select(2, i).transpose(1, 2);
        var want = torch.nn.functional.scaled_dot_product_attention(Part(0), Part(1), Part(2)).transpose(1, 2).reshape(b, l, hd);
        oracle.Check("attention_flash_mma", "emulated fused qkv [1,20,240]", y, want, Devices.Tolerance(DType.F16));
    }

    [Fact]
    public void Tensor_core_attention_is_refused_for_shapes_it_was_not_built_for()
    {
        var ops = Devices.Ops("test");
        using var q = DeviceTensor.Empty(ops.Device, DType.F16, 1, 4, 48);
        using var y = DeviceTensor.Empty(ops.Device, DType.F16, 1, 4, 48);
        var e = Assert.Throws<KernelArgumentException>(() =>
            Attention.Run(ops.Runtime, q, q, q, y, 1, 1f, variant: AttentionVariant.TensorCore));
        Assert.Contains("head dim 48", e.Message);
        using var q32 = DeviceTensor.Empty(ops.Device, DType.F32, 1, 4, 40);
        using var y32 = DeviceTensor.Empty(ops.Device, DType.F32, 1, 4, 40);
        e = Assert.Throws<KernelArgumentException>(() =>
            Attention.Run(ops.Runtime, q32, q32, q32, y32, 1, 1f, variant: AttentionVariant.TensorCore));
        Assert.Contains("fp16", e.Message);
        // Auto on the simulator keeps the portable kernel.
        using var q40 = DeviceTensor.Empty(ops.Device, DType.F16, 1, 4, 40);
        using var y40 = DeviceTensor.Empty(ops.Device, DType.F16, 1, 4, 40);
        Attention.Run(ops.Runtime, q40, q40, q40, y40, 1, 1f);
        Assert.Equal("attention", ops.Runtime.LastFamily);
    }
}
