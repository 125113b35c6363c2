using System.Runtime.InteropServices;
using StableDiffusion.Kernels;
using StableDiffusion.Kernels.Cpu;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;

namespace StableDiffusion.Tests.Kernels.Cpu;

/// <summary>A native buffer holding floats as fp32 or fp16 bits, for the CPU kernels' raw pointers.</summary>
internal sealed unsafe class NativeBuf : IDisposable
{
    public readonly void* Ptr;
    public readonly DType Type;
    public readonly long Length;

    public NativeBuf(float[] data, DType t) : this(data.LongLength, t)
    {
        for (long i = 0; i < data.LongLength; i++)
            if (t == DType.F16) ((ushort*)Ptr)[i] = BitConverter.HalfToUInt16Bits((Half)data[i]);
            else ((float*)Ptr)[i] = data[i];
    }

    public NativeBuf(long n, DType t)
    {
        Type = t;
        Length = n;
        Ptr = NativeMemory.AlignedAlloc((nuint)(Math.Max(n, 1) * (t == DType.F16 ? 2 : 4)), 64);
        // NaN fill: an element the kernel forgets to write shows up in the error
        for (long i = 0; i < n; i++)
            if (t == DType.F16) ((ushort*)Ptr)[i] = 0x7E00;
            else ((float*)Ptr)[i] = float.NaN;
    }

    public float[] ToArray()
    {
        var r = new float[Length];
        for (long i = 0; i < Length; i++)
            r[i] = Type == DType.F16 ? (float)BitConverter.UInt16BitsToHalf(((ushort*)Ptr)[i]) : ((float*)Ptr)[i];
        return r;
    }

    public void Dispose() => NativeMemory.AlignedFree(Ptr);
}

/// <summary>CpuGemm against torch.matmul (float64): odd sizes, transposes, batch, broadcast, alpha, bias, residual, dtypes.</summary>
public unsafe class CpuGemmTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    public static double Tolerance(params DType[] types) => types.Contains(DType.F16) ? 2e-3 : 1e-5;

    private static (DType A, DType B, DType C) Mix(string mix) => mix switch
    {
        "f32" => (DType.F32, DType.F32, DType.F32),
        "a32b16" => (DType.F32, DType.F16, DType.F32),
        "a16b32" => (DType.F16, DType.F32, DType.F32),
        "f16" => (DType.F16, DType.F16, DType.F16),
        _ => throw new ArgumentException(mix),
    };

    [Theory]
    // mix, batch, M, N, K, transA, transB, A batched (else stride 0), B batched, bias, residual, alpha, prepacked B
    [InlineData("f32", 1, 1, 1, 1, false, false, false, false, true, true, 1f, false)]
    [InlineData("f32", 1, 7, 17, 5, false, false, false, false, false, false, 1f, false)]
    [InlineData("f32", 1, 77, 130, 33, false, true, false, false, true, true, 1f, false)]
    [InlineData("f32", 2, 17, 40, 300, true, false, true, true, true, false, 1f, false)]
    [InlineData("f32", 3, 130, 77, 17, true, true, true, false, false, true, 0.5f, false)]
    [InlineData("f32", 2, 64, 65, 257, false, false, false, true, true, true, 2f, false)]
    [InlineData("f32", 1, 200, 600, 70, false, true, false, false, true, false, 1f, false)]
    [InlineData("f32", 2, 77, 320, 768, false, true, true, false, true, true, 1f, true)]
    [InlineData("f32", 1, 130, 33, 520, true, false, false, false, false, false, 0.125f, true)]
    [InlineData("a32b16", 1, 77, 130, 33, false, true, false, false, true, true, 1f, false)]
    [InlineData("a32b16", 2, 100, 96, 300, false, true, true, false, true, false, 1f, true)]
    [InlineData("a16b32", 2, 19, 33, 41, true, false, true, true, false, true, 1f, false)]
    [InlineData("f16", 1, 37, 29, 23, false, true, false, false, true, true, 1f, false)]
    [InlineData("f16", 2, 130, 70, 37, true, false, true, true, true, false, 0.5f, false)]
    [InlineData("f16", 1, 96, 200, 300, false, true, false, false, true, true, 1f, true)]
    public void Gemm_matches_libtorch(string mix, int batch, int m, int n, int k, bool transA, bool transB, bool batchA,
        bool batchB, bool withBias, bool withResidual, float alpha, bool prepacked)
    {
        var (at, bt, ct) = Mix(mix);
        using var scope = torch.NewDisposeScope();
        int ba = batchA ? batch : 1, bb = batchB ? batch : 1;
        var a = oracle.Random((long)ba * m * k, at);
        var b = oracle.Random((long)bb * k * n, bt);
        var bias = withBias ? oracle.Random(n, ct) : null;
        var res = withResidual ? oracle.Random((long)batch * m * n, ct) : null;
        using var na = new NativeBuf(a, at);
        using var nb = new NativeBuf(b, bt);
        using var nbias = bias is null ? null : new NativeBuf(bias, ct);
        using var nres = res is null ? null : new NativeBuf(res, ct);
        using var nc = new NativeBuf((long)batch * m * n, ct);
        var args = new CpuGemmArgs
        {
            M = m, N = n, K = k, Batch = batch, TransA = transA, TransB = transB, Alpha = alpha,
            A = na.Ptr, AType = at, StrideA = batchA ? (long)m * k : 0,
            B = nb.Ptr, BType = bt, StrideB = batchB ? (long)k * n : 0,
            Bias = nbias is null ? null : nbias.Ptr, BiasType = ct,
            Residual = nres is null ? null : nres.Ptr, ResidualType = ct,
            C = nc.Ptr, CType = ct,
        };
        if (prepacked)
        {
            Assert.False(batchB);
            using var packed = CpuGemm.PackB(nb.Ptr, bt, n, k, transB);
            CpuGemm.Run(args, packed);
        }
        else CpuGemm.Run(args);

        var ra = Oracle.T(a, ba, transA ? k : m, transA ? m : k);
        var rb = Oracle.T(b, bb, transB ? n : k, transB ? k : n);
        if (transA) ra = ra.transpose(1, 2);
        if (transB) rb = rb.transpose(1, 2);
        var want = torch.matmul(ra, rb) * alpha;
        if (bias is not null) want += Oracle.T(bias, n);
        if (res is not null) want += Oracle.T(res, batch, m, n);
        want = want.expand(batch, m, n);
        string name = $"{mix} b{batch} {m}x{n}x{k}{(transA ? " Aᵀ" : "")}{(transB ? " Bᵀ" : "")}" +
            $"{(batchA ? "" : " A-bcast")}{(batchB ? "" : " B-bcast")}{(withBias ? " +bias" : "")}{(withResidual ? " +res" : "")}" +
            $"{(alpha != 1 ? $" α={alpha}" : "")}{(prepacked ? " packedB" : "")}";
        Check("cpu_gemm", name, ct, nc.ToArray(), Oracle.Host(want), Tolerance(at, bt, ct));
    }

    [Theory]
    // A, stored weight, packed weight, C dtypes; M, N, cin, taps; taps inner (PyTorch OIHW) else outer (OHWI / linear); bias; residual.
    // Shapes cover N past whole panels, many row groups, one row block, and K × columns over the widening budget.
    [InlineData(DType.F32, DType.F16, DType.F16, DType.F32, 1000, 70, 33, 1, false, true, true)]
    [InlineData(DType.F32, DType.F16, DType.F16, DType.F32, 77, 320, 768, 1, false, true, false)]
    [InlineData(DType.F32, DType.F16, DType.F16, DType.F32, 200, 40, 16, 9, true, true, true)]
    [InlineData(DType.F32, DType.F16, DType.F16, DType.F32, 20, 256, 1280, 9, true, false, true)]
    [InlineData(DType.F32, DType.F32, DType.F16, DType.F32, 5, 3, 7, 9, true, true, false)]
    [InlineData(DType.F32, DType.F32, DType.F16, DType.F32, 130, 50, 20, 9, false, true, true)]
    [InlineData(DType.F16, DType.F16, DType.F16, DType.F16, 300, 96, 40, 9, true, true, true)]
    [InlineData(DType.F16, DType.F16, DType.F16, DType.F16, 64, 33, 130, 1, false, false, false)]
    [InlineData(DType.F32, DType.F32, DType.F32, DType.F32, 300, 70, 24, 9, true, true, true)]
    [InlineData(DType.F32, DType.F16, DType.F32, DType.F32, 100, 65, 257, 1, false, false, true)]
    public void Packed_weight_panels_match_libtorch(DType at, DType st, DType pt, DType ct, int m, int n, int cin, int taps, bool tapsInner,
        bool withBias, bool withResidual)
    {
        using var scope = torch.NewDisposeScope();
        int k = cin * taps;
        var a = oracle.Random((long)m * k, at);
        var w = oracle.Random((long)n * k, pt == DType.F16 ? pt : st); // values the packed dtype holds exactly
        var bias = withBias ? oracle.Random(n, ct) : null;
        var res = withResidual ? oracle.Random((long)m * n, ct) : null;
        using var na = new NativeBuf(a, at);
        using var nw = new NativeBuf(w, st);
        using var nbias = bias is null ? null : new NativeBuf(bias, ct);
        using var nres = res is null ? null : new NativeBuf(res, ct);
        using var nc = new NativeBuf((long)m * n, ct);
        using var panels = new NativeBuf(CpuPackedB.BytesFor(pt, n, k) / pt.SizeInBytes(), pt);
        using var packed = CpuGemm.PackWeightInto(nw.Ptr, st, n, cin, taps, tapsInner, panels.Ptr, pt);
        Assert.Equal(pt, packed.DType);
        var args = new CpuGemmArgs
        {
            M = m, N = n, K = k, Batch = 1, TransB = true, Alpha = 1, A = na.Ptr, AType = at,
            Bias = nbias is null ? null : nbias.Ptr, BiasType = ct, Residual = nres is null ? null : nres.Ptr, ResidualType = ct,
            C = nc.Ptr, CType = ct,
        };
        CpuGemm.Run(args, packed);
        // op(B)ᵀ [n, k] with column k = tap·cin + ci, whichever order the weight was stored in
        var wt = tapsInner ? Oracle.T(w, n, cin, taps).transpose(1, 2).reshape(n, k) : Oracle.T(w, n, k);
        var want = torch.matmul(Oracle.T(a, m, k), wt.t());
        if (bias is not null) want += Oracle.T(bias, n);
        if (res is not null) want += Oracle.T(res, m, n);
        string name = $"A {at.Name()} weight {st.Name()} panels {pt.Name()} C {ct.Name()} {m}x{n}x{cin}·{taps}{(tapsInner ? " OIHW" : "")}" +
                      $"{(withBias ? " +bias" : "")}{(withResidual ? " +res" : "")}";
        // fp16 panels under fp32 activations hold the weights exactly: fp32's tolerance applies
        Check("cpu_gemm_packed", name, ct, nc.ToArray(), Oracle.Host(want), Tolerance(at, ct));
    }

    [Theory]
    // 40 rows: one row group per column block; 1000 rows: several groups, each widening the same columns
    [InlineData(0x7C00, 40)] // +inf
    [InlineData(0xFC00, 40)] // -inf
    [InlineData(0x7E00, 40)] // NaN
    [InlineData(0x7C00, 1000)]
    [InlineData(0x7E00, 1000)]
    public void Packed_fp16_panels_with_a_non_finite_weight_propagate_it_like_libtorch(int special, int m)
    {
        using var scope = torch.NewDisposeScope();
        int n = 70, k = 300, col = 37, at = 123;
        var a = oracle.Random((long)m * k, DType.F32);
        var w = oracle.Random((long)n * k, DType.F16);
        using var na = new NativeBuf(a, DType.F32);
        using var nw = new NativeBuf(w, DType.F16);
        using var nc = new NativeBuf((long)m * n, DType.F32);
        using var panels = new NativeBuf(CpuPackedB.BytesFor(DType.F16, n, k) / 2, DType.F16);
        using (var finite = CpuGemm.PackWeightInto(nw.Ptr, DType.F16, n, k, 1, false, panels.Ptr, DType.F16))
            Assert.True(finite.HalfFinite);
        ((ushort*)nw.Ptr)[(long)col * k + at] = (ushort)special;
        w[(long)col * k + at] = (float)BitConverter.UInt16BitsToHalf((ushort)special);
        var wt = Oracle.T(w, n, k);
        using var packed = CpuGemm.PackWeightInto(nw.Ptr, DType.F16, n, k, 1, false, panels.Ptr, DType.F16);
        Assert.False(packed.HalfFinite);
        CpuGemm.Run(new CpuGemmArgs { M = m, N = n, K = k, Batch = 1, TransB = true, Alpha = 1, A = na.Ptr, AType = DType.F32, C = nc.Ptr, CType = DType.F32 }, packed);
        var got = nc.ToArray();
        var want = Oracle.Host(torch.matmul(Oracle.T(a, m, k), wt.t()));
        for (int i = 0; i < m; i++)
        {
            float g = got[i * n + col], r = want[i * n + col];
            Assert.True(float.IsNaN(r) ? float.IsNaN(g) : g == r, $"row {i}: {g} vs libtorch {r}");
        }
        Assert.True(got.Where((_, i) => i % n != col).All(float.IsFinite));
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    public void Residual_may_alias_C(DType dt)
    {
        using var scope = torch.NewDisposeScope();
        int m = 30, n = 64, k = 40;
        var a = oracle.Random(m * k, dt);
        var b = oracle.Random(n * k, dt);
        var res = oracle.Random(m * n, dt);
        using var na = new NativeBuf(a, dt);
        using var nb = new NativeBuf(b, dt);
        using var nc = new NativeBuf(res, dt);
        var args = new CpuGemmArgs
        {
            M = m, N = n, K = k, Batch = 1, TransB = true, Alpha = 1, A = na.Ptr, AType = dt, B = nb.Ptr, BType = dt,
            Residual = nc.Ptr, ResidualType = dt, C = nc.Ptr, CType = dt,
        };
        CpuGemm.Run(args);
        var want = torch.matmul(Oracle.T(a, m, k), Oracle.T(b, n, k).t()) + Oracle.T(res, m, n);
        Check("cpu_gemm", $"{dt.Name()} 30x64x40 Bᵀ residual == C (in place)", dt, nc.ToArray(), Oracle.Host(want), Tolerance(dt));
    }

    [Fact]
    public void Reference_matches_libtorch()
    {
        using var scope = torch.NewDisposeScope();
        int m = 13, n = 11, k = 9, batch = 2;
        var a = oracle.Random(batch * k * m, DType.F32);
        var b = oracle.Random(n * k, DType.F16);
        var bias = oracle.Random(n, DType.F32);
        using var na = new NativeBuf(a, DType.F32);
        using var nb = new NativeBuf(b, DType.F16);
        using var nbias = new NativeBuf(bias, DType.F32);
        using var nc = new NativeBuf(batch * m * n, DType.F32);
        var args = new CpuGemmArgs
        {
            M = m, N = n, K = k, Batch = batch, TransA = true, TransB = true, Alpha = 0.5f,
            A = na.Ptr, AType = DType.F32, StrideA = k * m, B = nb.Ptr, BType = DType.F16,
            Bias = nbias.Ptr, BiasType = DType.F32, C = nc.Ptr, CType = DType.F32,
        };
        CpuGemm.Reference(args);
        var want = torch.matmul(Oracle.T(a, batch, k, m).transpose(1, 2), Oracle.T(b, n, k).t()) * 0.5 + Oracle.T(bias, n);
        Check("cpu_gemm_reference", "b2 13x11x9 Aᵀ Bᵀ α=0.5 +bias", DType.F32, nc.ToArray(), Oracle.Host(want), 1e-6);
    }

    [Fact]
    public void Invalid_arguments_are_refused()
    {
        float* buf = stackalloc float[16];
        var ok = new CpuGemmArgs { M = 2, N = 2, K = 2, Batch = 1, Alpha = 1, A = buf, B = buf, C = buf + 8 };
        var bad = ok; bad.K = 0;
        Assert.Throws<KernelArgumentException>(() => CpuGemm.Run(bad));
        bad = ok; bad.B = null;
        Assert.Throws<KernelArgumentException>(() => CpuGemm.Run(bad));
        bad = ok; bad.AType = DType.I32;
        Assert.Throws<KernelArgumentException>(() => CpuGemm.Run(bad));
        bad = ok; bad.StrideA = -1;
        Assert.Throws<KernelArgumentException>(() => CpuGemm.Run(bad));
        using var packed = CpuGemm.PackB(buf, DType.F32, 3, 2, false);
        Assert.Throws<KernelArgumentException>(() => CpuGemm.Run(ok, packed));
    }

    [Fact]
    public void Half_conversion_matches_System_Half()
    {
        var bits = new ushort[65536];
        for (int i = 0; i < bits.Length; i++) bits[i] = (ushort)i;
        var f = new float[65536];
        fixed (ushort* pb = bits)
        fixed (float* pf = f)
            Half16.Widen(pb, pf, bits.Length);
        for (int i = 0; i < bits.Length; i++)
        {
            float want = (float)BitConverter.UInt16BitsToHalf((ushort)i);
            Assert.True(BitConverter.SingleToInt32Bits(want) == BitConverter.SingleToInt32Bits(f[i]) || (float.IsNaN(want) && float.IsNaN(f[i])),
                $"widen 0x{i:X4}: {f[i]} vs {want}");
        }
        var rng = new Random(7);
        var src = new float[1 << 16];
        for (int i = 0; i < src.Length; i++)
            src[i] = i % 4 == 0 ? BitConverter.Int32BitsToSingle(rng.Next()) * (rng.Next(2) == 0 ? 1 : -1)
                : (float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-30, 20)));
        src[0] = 65504f; src[1] = 65520f; src[2] = 65519.99f; src[3] = float.PositiveInfinity; src[4] = float.NaN;
        src[5] = 6.1035156e-05f; src[6] = 2.9802322e-08f; src[7] = 2.98023259e-08f; src[8] = -0f;
        var h = new ushort[src.Length];
        fixed (float* ps = src)
        fixed (ushort* ph = h)
            Half16.Narrow(ps, ph, src.Length);
        for (int i = 0; i < src.Length; i++)
        {
            var want = BitConverter.HalfToUInt16Bits((Half)src[i]);
            Assert.True(want == h[i] || (float.IsNaN(src[i]) && (h[i] & 0x7C00) == 0x7C00 && (h[i] & 0x3FF) != 0),
                $"narrow {src[i]:R}: 0x{h[i]:X4} vs 0x{want:X4}");
        }
    }

    internal void Check(string kernel, string name, DType dt, float[] got, float[] want, double tol)
    {
        Assert.Equal(want.Length, got.Length);
        double err = Reference.RelativeError(got, want);
        oracle.Record(kernel, name, dt, err, tol);
        Assert.True(err <= tol, $"{kernel} [{name}]: relative error {err:0.00e+00} exceeds {tol:0.0e+00}");
    }
}
