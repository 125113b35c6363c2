using StableDiffusion.Kernels.Cpu;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;

namespace StableDiffusion.Tests.Kernels.Cpu;

/// <summary>CpuAttention.Attention against torch.nn.functional.scaled_dot_product_attention in float64.</summary>
public unsafe class CpuAttentionTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    [Theory]
    // B, heads, Lq, Lk, D, causal, scale (0: 1/sqrt(D))
    [InlineData(1, 2, 9, 11, 8, false, 0f)]
    [InlineData(2, 1, 6, 6, 16, true, 0f)]
    [InlineData(1, 1, 5, 77, 40, false, 0f)]
    [InlineData(2, 3, 70, 77, 40, false, 0f)]
    [InlineData(1, 2, 130, 130, 40, true, 0f)]
    [InlineData(1, 1, 67, 90, 80, false, 0f)]
    [InlineData(1, 2, 33, 20, 160, false, 0f)]
    [InlineData(2, 2, 77, 77, 64, true, 0f)]
    [InlineData(1, 1, 40, 70, 512, false, 0f)]
    [InlineData(1, 1, 65, 1, 40, false, 0f)]
    [InlineData(1, 1, 1, 5, 40, false, 0f)]
    [InlineData(1, 2, 100, 60, 40, true, 0f)]
    [InlineData(1, 1, 3, 5, 7, false, 0f)]
    [InlineData(2, 2, 50, 129, 24, false, 0.3f)]
    public void Attention_matches_libtorch_sdpa(int b, int heads, int lq, int lk, int d, bool causal, float scale)
    {
        using var scope = torch.NewDisposeScope();
        int hd = heads * d;
        var q = oracle.Random((long)b * lq * hd, DType.F32, 2f);
        var k = oracle.Random((long)b * lk * hd, DType.F32, 2f);
        var v = oracle.Random((long)b * lk * hd, DType.F32);
        var o = CpuOracle.Poisoned((long)b * lq * hd);
        float s = scale == 0 ? 1f / MathF.Sqrt(d) : scale;
        fixed (float* pq = q, pk = k, pv = v, po = o)
            CpuAttention.Attention(pq, pk, pv, po, b, lq, lk, heads, d, s, causal);

        torch.Tensor Heads(float[] x, int l) => Oracle.T(x, b, l, heads, d).transpose(1, 2);
        // This TorchSharp's SDPA has no scale argument: fold s / (1/sqrt(D)) into q.
        var want = torch.nn.functional.scaled_dot_product_attention(Heads(q, lq) * (s * Math.Sqrt(d)), Heads(k, lk), Heads(v, lk),
            is_casual: causal).transpose(1, 2).reshape(b, lq, hd);
        CpuOracle.Check(oracle, "cpu_attention", $"b{b} h{heads} {lq}x{lk} d{d}{(causal ? " causal" : "")} scale {s:g}", o, want);
    }

    [Fact]
    public void Attention_rejects_bad_sizes()
    {
        var x = new float[16];
        fixed (float* px = x)
        {
            float* p = px;
            Assert.Throws<KernelArgumentException>(() => CpuAttention.Attention(p, p, p, p, 1, 0, 1, 1, 16, 1f, false));
            Assert.Throws<KernelArgumentException>(() => CpuAttention.Attention(p, p, p, p, 1, 1, 1, 1, 0, 1f, false));
            Assert.Throws<KernelArgumentException>(() => CpuAttention.Attention(p, p, p, p, 1, 1, 1, 1, 16, float.NaN, false));
            Assert.Throws<KernelArgumentException>(() => CpuAttention.Attention(p, null, p, p, 1, 1, 1, 1, 16, 1f, false));
        }
    }
}
