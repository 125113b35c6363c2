using StableDiffusion.Kernels.Cpu;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;

namespace StableDiffusion.Tests.Kernels.Cpu;

/// <summary>CpuLayout data movement against libtorch, the timestep embedding against diffusers' formula, half conversions against System.Half.</summary>
public unsafe class CpuLayoutTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    [Theory]
    [InlineData(2, 3, 5, 7)]
    [InlineData(1, 8, 8, 320)]
    [InlineData(1, 1, 1, 1)]
    public void Upsample2x_matches_libtorch(int n, int h, int w, int c)
    {
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random((long)n * h * w * c, DType.F32);
        var y = CpuOracle.Poisoned(x.Length * 4L);
        fixed (float* px = x, py = y) CpuLayout.Upsample2x(px, py, n, h, w, c);
        var want = torch.nn.functional.interpolate(Oracle.T(x, n, h, w, c).permute(0, 3, 1, 2), scale_factor: [2.0, 2.0],
            mode: torch.InterpolationMode.Nearest).permute(0, 2, 3, 1);
        CpuOracle.Check(oracle, "cpu_upsample2x", $"[{n},{h},{w},{c}]", y, want, 0);
    }

    [Theory]
    [InlineData(7, 5, 3)]
    [InlineData(64, 320, 640)]
    public void Concat_and_slice_match_libtorch(int rows, int ca, int cb)
    {
        using var scope = torch.NewDisposeScope();
        var a = oracle.Random((long)rows * ca, DType.F32);
        var b = oracle.Random((long)rows * cb, DType.F32);
        var y = CpuOracle.Poisoned((long)rows * (ca + cb));
        int start = ca / 2, length = cb;
        var s = CpuOracle.Poisoned((long)rows * length);
        fixed (float* pa = a, pb = b, py = y, ps = s)
        {
            CpuLayout.Concat(pa, pb, py, rows, ca, cb);
            CpuLayout.SliceLast(py, ps, rows, ca + cb, start, length);
        }
        var cat = torch.cat([Oracle.T(a, rows, ca), Oracle.T(b, rows, cb)], 1);
        CpuOracle.Check(oracle, "cpu_concat", $"[{rows},{ca}]+[{rows},{cb}]", y, cat, 0);
        CpuOracle.Check(oracle, "cpu_slice_last", $"[{rows},{ca + cb}][{start}:{start + length}]", s, cat.narrow(1, start, length), 0);
    }

    [Fact]
    public void SliceLast_rejects_out_of_range()
    {
        var x = new float[12];
        fixed (float* px = x)
        {
            float* p = px;
            Assert.Throws<KernelArgumentException>(() => CpuLayout.SliceLast(p, p, 2, 6, 4, 3));
            Assert.Throws<KernelArgumentException>(() => CpuLayout.SliceLast(p, p, 2, 6, -1, 2));
            Assert.Throws<KernelArgumentException>(() => CpuLayout.Concat(p, p, p, 2, 0, 3));
        }
    }

    [Theory]
    [InlineData(1, 5, 7)]
    [InlineData(3, 33, 65)]
    [InlineData(2, 77, 768)]
    [InlineData(1, 1, 40)]
    public void Transpose_matches_libtorch(int batch, int r, int c)
    {
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random((long)batch * r * c, DType.F32);
        var y = CpuOracle.Poisoned(x.Length);
        fixed (float* px = x, py = y) CpuLayout.Transpose(px, py, batch, r, c);
        CpuOracle.Check(oracle, "cpu_transpose", $"[{batch},{r},{c}]", y, Oracle.T(x, batch, r, c).transpose(1, 2), 0);
    }

    [Fact]
    public void Embedding_matches_libtorch_and_rejects_bad_ids()
    {
        using var scope = torch.NewDisposeScope();
        int vocab = 50, c = 37;
        var table = oracle.Random((long)vocab * c, DType.F32);
        var ids = new[] { 0, 49, 3, 3, 17, 1, 48 };
        var y = CpuOracle.Poisoned((long)ids.Length * c);
        fixed (float* pt = table, py = y)
        fixed (int* pi = ids)
            CpuLayout.Embedding(pt, pi, py, ids.Length, vocab, c);
        var want = Oracle.T(table, vocab, c).index_select(0, torch.tensor(ids.Select(i => (long)i).ToArray()));
        CpuOracle.Check(oracle, "cpu_embedding", $"{ids.Length} ids of [{vocab},{c}]", y, want, 0);
        var bad = new[] { 1, 50 };
        fixed (float* pt = table, py = y)
        fixed (int* pi = bad)
        {
            float* t = pt, o = py;
            int* b = pi;
            var e = Assert.Throws<KernelArgumentException>(() => CpuLayout.Embedding(t, b, o, 2, vocab, c));
            Assert.Contains("id 50 at position 1", e.Message);
        }
    }

    [Theory]
    [InlineData(320, true, 0f, 10000f)]
    [InlineData(33, false, 1f, 10000f)]
    [InlineData(256, true, 1f, 1000f)]
    public void TimestepEmbedding_matches_diffusers_formula(int dim, bool flip, float shift, float maxPeriod)
    {
        using var scope = torch.NewDisposeScope();
        var t = new[] { 999f, 500.5f, 0f, 1f, 37f };
        var y = CpuOracle.Poisoned((long)t.Length * dim);
        fixed (float* pt = t, py = y) CpuLayout.TimestepEmbedding(pt, py, t.Length, dim, flip, shift, maxPeriod);
        // diffusers' get_timestep_embedding, in fp32 as diffusers runs it, then widened.
        int half = dim / 2;
        var exponent = -Math.Log(maxPeriod) * torch.arange(0, half, dtype: torch.float32) / (half - shift);
        var emb = torch.tensor(t).unsqueeze(1) * torch.exp(exponent).unsqueeze(0);
        var sin = torch.sin(emb.to_type(torch.float64));
        var cos = torch.cos(emb.to_type(torch.float64));
        var want = flip ? torch.cat([cos, sin], 1) : torch.cat([sin, cos], 1);
        if ((dim & 1) != 0) want = torch.nn.functional.pad(want, [0, 1]);
        CpuOracle.Check(oracle, "cpu_timestep_embedding", $"dim {dim}{(flip ? " flip" : "")} shift {shift:g} max {maxPeriod:g}", y, want);
        var exact = StableDiffusion.Kernels.Reference.TimestepEmbedding(t, dim, flip, shift, maxPeriod);
        if ((dim & 1) == 0) Assert.Equal(exact, y);
    }

    [Fact]
    public void Half_conversions_match_system_half_on_every_pattern()
    {
        var bits = Enumerable.Range(0, 65536).Select(i => (ushort)i).ToArray();
        var f = new float[bits.Length];
        var back = new ushort[bits.Length];
        fixed (ushort* pb = bits, pk = back)
        fixed (float* pf = f)
        {
            CpuLayout.HalfToFloat(pb, pf, bits.Length);
            CpuLayout.FloatToHalf(pf, pk, bits.Length);
        }
        int mismatches = 0;
        for (int i = 0; i < bits.Length; i++)
        {
            float want = (float)BitConverter.UInt16BitsToHalf(bits[i]);
            if (BitConverter.SingleToUInt32Bits(want) != BitConverter.SingleToUInt32Bits(f[i])) mismatches++;
            if (BitConverter.HalfToUInt16Bits((Half)want) != back[i]) mismatches++;
        }
        oracle.Record("cpu_half", "all 65536 patterns, mismatches", DType.F16, mismatches, 0);
        Assert.Equal(0, mismatches);
    }

    [Fact]
    public void HalfToFloatFinite_matches_system_half_on_every_finite_pattern_and_the_check_finds_every_other()
    {
        var finite = Enumerable.Range(0, 65536).Select(i => (ushort)i).Where(h => (h & 0x7C00) != 0x7C00).ToArray();
        var f = new float[finite.Length + 5]; // odd length: the scalar tail runs too
        var bits = finite.Concat(finite.Take(5)).ToArray();
        fixed (ushort* pb = bits)
        fixed (float* pf = f)
            CpuLayout.HalfToFloatFiniteRange(pb, pf, bits.Length);
        int mismatches = 0;
        for (int i = 0; i < bits.Length; i++)
            if (BitConverter.SingleToUInt32Bits((float)BitConverter.UInt16BitsToHalf(bits[i])) != BitConverter.SingleToUInt32Bits(f[i]))
                mismatches++;
        oracle.Record("cpu_half_finite", $"{finite.Length} finite patterns, mismatches", DType.F16, mismatches, 0);
        Assert.Equal(0, mismatches);

        fixed (ushort* pb = finite) Assert.False(CpuLayout.AnyHalfNonFinite(pb, finite.Length));
        foreach (ushort special in new ushort[] { 0x7C00, 0xFC00, 0x7C01, 0xFE00, 0x7FFF })
            foreach (int at in new[] { 0, 31, 32, 63, 70 })
            {
                var x = new ushort[71];
                x[at] = special;
                fixed (ushort* px = x) Assert.True(CpuLayout.AnyHalfNonFinite(px, x.Length), $"0x{special:X4} at {at}");
            }
    }

    [Fact]
    public void FloatToHalf_rounds_like_system_half()
    {
        var rng = new Random(7);
        var src = new List<float>();
        for (int i = 0; i < 200_000; i++) src.Add(BitConverter.UInt32BitsToSingle((uint)rng.NextInt64(0, 1L << 32)));
        // Ties, subnormal boundaries, the overflow threshold and values near 1 at every rounding position.
        for (uint m = 0; m < 0x4000; m++) src.Add(BitConverter.UInt32BitsToSingle(0x3F800000u + m));
        foreach (var v in new[] { 65504f, 65519.99f, 65520f, 6.1035156e-5f, 6.0975552e-5f, 5.9604645e-8f, 2.9802322e-8f,
                     2.9802326e-8f, 1e-10f, float.Epsilon, float.MaxValue, float.PositiveInfinity, float.NaN })
        {
            src.Add(v);
            src.Add(-v);
        }
        for (int e = 100; e < 145; e++)
        for (uint m = 0; m < 64; m++)
            src.Add(BitConverter.UInt32BitsToSingle(((uint)e << 23) | (m << 12) | (m & 1u) << 11 | 0x800u));
        var x = src.ToArray();
        var h = new ushort[x.Length];
        fixed (float* px = x)
        fixed (ushort* ph = h)
            CpuLayout.FloatToHalf(px, ph, x.Length);
        int mismatches = 0;
        for (int i = 0; i < x.Length; i++)
            if (BitConverter.HalfToUInt16Bits((Half)x[i]) != h[i]) mismatches++;
        oracle.Record("cpu_half", $"{x.Length} floats to half, mismatches", DType.F16, mismatches, 0);
        Assert.Equal(0, mismatches);
    }
}
