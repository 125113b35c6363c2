using System.Runtime.Intrinsics;
using StableDiffusion.Kernels.Cpu;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.Tests.Kernels.Cpu;

/// <summary>CpuMath, activations, GEGLU, broadcast binary ops, scale and clamp against libtorch in float64.</summary>
public unsafe class CpuPointwiseTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    private static TorchTensor Reference(Activation kind, TorchTensor x) => kind switch
    {
        Activation.Silu => torch.nn.functional.silu(x),
        Activation.Gelu => torch.nn.functional.gelu(x),
        Activation.GeluTanh => 0.5 * x * (1 + torch.tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x))),
        Activation.QuickGelu => x * torch.sigmoid(1.702 * x),
        _ => torch.exp(x),
    };

    [Theory]
    [InlineData(Activation.Silu, 1003, 8f)]
    [InlineData(Activation.Gelu, 1003, 8f)]
    [InlineData(Activation.GeluTanh, 1003, 8f)]
    [InlineData(Activation.QuickGelu, 1003, 8f)]
    [InlineData(Activation.Exp, 1003, 8f)]
    [InlineData(Activation.Gelu, 15, 3f)]
    [InlineData(Activation.Silu, 200_001, 20f)]
    [InlineData(Activation.Exp, 77, 80f)]
    public void Activate_matches_libtorch(Activation kind, int n, float range)
    {
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random(n, DType.F32, range);
        var y = CpuOracle.Poisoned(n);
        fixed (float* px = x, py = y) CpuPointwise.Activate(px, py, n, kind);
        CpuOracle.Check(oracle, "cpu_activate", $"{kind} n {n} range {range:g}", y, Reference(kind, Oracle.T(x, n)));
    }

    [Fact]
    public void Gelu_negative_tail_is_relatively_accurate()
    {
        // gelu(-6) ≈ -6e-9: 1 + erf would cancel; each element is checked on its own.
        var x = Enumerable.Range(0, 100).Select(i => -3f - i * 0.06f).ToArray();
        var y = new float[x.Length];
        fixed (float* px = x, py = y) CpuPointwise.Activate(px, py, x.Length, Activation.Gelu);
        double worst = 0;
        for (int i = 0; i < x.Length; i++)
        {
            double want = 0.5 * x[i] * Erfc(-x[i] / Math.Sqrt(2));
            worst = Math.Max(worst, Math.Abs(y[i] - want) / Math.Abs(want));
        }
        oracle.Record("cpu_activate", "gelu tail [-9,-3] max elementwise", DType.F32, worst, 1e-5);
        Assert.True(worst < 1e-5, $"worst elementwise relative error {worst:0.00e+00}");
    }

    // erfc(z) for z >= 2 by its continued fraction, without the cancellation of 1 - erf.
    private static double Erfc(double z)
    {
        double f = 0;
        for (int n = 80; n >= 1; n--) f = n / 2.0 / (z + f);
        return Math.Exp(-z * z) / Math.Sqrt(Math.PI) / (z + f);
    }

    [Fact]
    public void Exp_is_within_a_few_ulp_and_handles_the_range_ends()
    {
        var x = new float[20011];
        for (int i = 0; i < x.Length; i++) x[i] = -104f + 193f * i / (x.Length - 1); // [-104, 89]
        var y = new float[x.Length];
        fixed (float* px = x, py = y) CpuPointwise.Activate(px, py, x.Length, Activation.Exp);
        double worstUlp = 0;
        for (int i = 0; i < x.Length; i++)
        {
            double want = Math.Exp(x[i]);
            float wf = (float)want;
            if (float.IsInfinity(wf)) { Assert.True(float.IsPositiveInfinity(y[i]), $"exp({x[i]}) = {y[i]}"); continue; }
            double ulp = wf == 0 ? float.Epsilon : Math.Max(float.Epsilon, MathF.BitIncrement(MathF.Abs(wf)) - MathF.Abs(wf));
            worstUlp = Math.Max(worstUlp, Math.Abs(y[i] - want) / ulp);
            Assert.Equal(y[i], CpuMath.Exp(x[i])); // vector body and scalar tail agree
        }
        oracle.Record("cpu_exp", "[-104, 89] max ulp", DType.F32, worstUlp, 4);
        Assert.True(worstUlp <= 4, $"exp off by {worstUlp:0.0} ulp");
        var edge = new[] { -1000f, float.NegativeInfinity, 1000f, float.PositiveInfinity, float.NaN, 0f, -87.5f, 88.7f };
        var ey = new float[edge.Length];
        fixed (float* px = edge, py = ey) CpuPointwise.Activate(px, py, edge.Length, Activation.Exp);
        Assert.Equal(0f, ey[0]);
        Assert.Equal(0f, ey[1]);
        Assert.True(float.IsPositiveInfinity(ey[2]) && float.IsPositiveInfinity(ey[3]));
        Assert.True(float.IsNaN(ey[4]));
        Assert.Equal(1f, ey[5]);
        Assert.True(Math.Abs(ey[6] / Math.Exp(-87.5) - 1) < 1e-6);
        Assert.True(Math.Abs(ey[7] / Math.Exp(88.7f) - 1) < 1e-6);
    }

    [Fact]
    public void ExpNonPositive_is_within_a_few_ulp_above_its_cut_and_tiny_below()
    {
        var x = new float[20000];
        for (int i = 0; i < x.Length; i++) x[i] = -87f * i / (x.Length - 1); // [-87, 0]
        double worstUlp = 0;
        for (int i = 0; i < x.Length; i += 16)
        {
            var y = CpuMath.ExpNonPositive(System.Runtime.Intrinsics.Vector512.Create(x.AsSpan(i, 16)));
            for (int j = 0; j < 16; j++)
            {
                double want = Math.Exp(x[i + j]);
                float wf = (float)want;
                double ulp = MathF.BitIncrement(wf) - wf;
                worstUlp = Math.Max(worstUlp, Math.Abs(y[j] - want) / ulp);
            }
        }
        oracle.Record("cpu_exp_nonpositive", "[-87, 0] max ulp", DType.F32, worstUlp, 4);
        Assert.True(worstUlp <= 4, $"exp off by {worstUlp:0.0} ulp");
        var edge = System.Runtime.Intrinsics.Vector512.Create(
            [float.NegativeInfinity, -1000f, -87.5f, float.NaN, 0f, -1e-30f, -0.5f, -20f, 0, 0, 0, 0, 0, 0, 0, 0]);
        var ey = CpuMath.ExpNonPositive(edge);
        for (int j = 0; j < 3; j++) Assert.True(ey[j] > 0 && ey[j] < 2e-38f, $"exp({edge[j]}) = {ey[j]}");
        Assert.True(float.IsNaN(ey[3]));
        Assert.Equal(1f, ey[4]);
        Assert.Equal(1f, ey[5]);
        Assert.True(Math.Abs(ey[6] / Math.Exp(-0.5) - 1) < 3e-7 && Math.Abs(ey[7] / Math.Exp(-20) - 1) < 3e-7);
    }

    [Fact]
    public void Erf_tanh_sigmoid_match_libtorch()
    {
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random(4099, DType.F32, 6f);
        var erf = x.Select(CpuMath.Erf).ToArray();
        var tanh = x.Select(CpuMath.Tanh).ToArray();
        var sig = x.Select(CpuMath.Sigmoid).ToArray();
        var tx = Oracle.T(x, x.Length);
        CpuOracle.Check(oracle, "cpu_erf", "scalar [-6,6]", erf, torch.erf(tx));
        CpuOracle.Check(oracle, "cpu_tanh", "scalar [-6,6]", tanh, torch.tanh(tx));
        CpuOracle.Check(oracle, "cpu_sigmoid", "scalar [-6,6]", sig, torch.sigmoid(tx));
        var small = x.Select(a => a * 0.05f).ToArray();
        var vErf = new float[x.Length];
        var vTanh = new float[x.Length];
        for (int i = 0; i + 16 <= x.Length; i += 16)
        {
            var vx = Vector512.Create(small, i);
            CpuMath.Erf(vx).CopyTo(vErf.AsSpan(i));
            CpuMath.Tanh(vx).CopyTo(vTanh.AsSpan(i));
        }
        for (int i = x.Length / 16 * 16; i < x.Length; i++) { vErf[i] = CpuMath.Erf(small[i]); vTanh[i] = CpuMath.Tanh(small[i]); }
        var ts = Oracle.T(small, small.Length);
        CpuOracle.Check(oracle, "cpu_erf", "vector [-0.3,0.3]", vErf, torch.erf(ts));
        CpuOracle.Check(oracle, "cpu_tanh", "vector [-0.3,0.3]", vTanh, torch.tanh(ts));
    }

    [Theory]
    [InlineData(7, 33, false)]
    [InlineData(5, 320, false)]
    [InlineData(3, 1280, true)]
    [InlineData(1, 5, true)]
    public void Geglu_matches_libtorch(int rows, int c, bool approximate)
    {
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random((long)rows * 2 * c, DType.F32, 3f);
        var y = CpuOracle.Poisoned((long)rows * c);
        fixed (float* px = x, py = y) CpuPointwise.Geglu(px, py, rows, c, approximate);
        var tx = Oracle.T(x, rows, 2 * c);
        var gate = tx.narrow(1, c, c);
        var want = tx.narrow(1, 0, c) * Reference(approximate ? Activation.GeluTanh : Activation.Gelu, gate);
        CpuOracle.Check(oracle, "cpu_geglu", $"[{rows},{c}]{(approximate ? " tanh" : "")}", y, want);
    }

    public static TheoryData<int[], int[], BinaryOp> BinaryShapes() => new()
    {
        { [2, 5, 7, 33], [2, 5, 7, 33], BinaryOp.Add },
        { [2, 5, 7, 33], [33], BinaryOp.Mul },
        { [2, 5, 7, 33], [2, 1, 1, 33], BinaryOp.Add },
        { [2, 5, 7, 33], [1], BinaryOp.Mul },
        { [2, 5, 7, 33], [5, 1, 1], BinaryOp.Add },
        { [2, 5, 7, 33], [2, 1, 7, 1], BinaryOp.Mul },
        { [2, 5, 7, 33], [7, 33], BinaryOp.Add },
        { [3, 1, 4], [1, 1, 4], BinaryOp.Mul },
        { [4, 77, 768], [77, 768], BinaryOp.Add },
        { [1, 1], [1, 1], BinaryOp.Add },
    };

    [Theory]
    [MemberData(nameof(BinaryShapes))]
    public void Binary_broadcast_matches_libtorch(int[] aShape, int[] bShape, BinaryOp op)
    {
        using var scope = torch.NewDisposeScope();
        long na = aShape.Aggregate(1L, (p, d) => p * d), nb = bShape.Aggregate(1L, (p, d) => p * d);
        var a = oracle.Random(na, DType.F32, 2f);
        var b = oracle.Random(nb, DType.F32, 2f);
        var y = CpuOracle.Poisoned(na);
        fixed (float* pa = a, pb = b, py = y) CpuPointwise.Binary(op, pa, pb, py, aShape, bShape);
        var ta = Oracle.T(a, aShape.Select(d => (long)d).ToArray());
        var tb = Oracle.T(b, bShape.Select(d => (long)d).ToArray());
        var want = op == BinaryOp.Add ? ta + tb : ta * tb;
        CpuOracle.Check(oracle, "cpu_binary", $"{op} [{string.Join(",", aShape)}] by [{string.Join(",", bShape)}]", y, want);
    }

    [Fact]
    public void Binary_rejects_shapes_that_do_not_broadcast()
    {
        var x = new float[64];
        fixed (float* px = x)
        {
            float* p = px;
            Assert.Throws<KernelArgumentException>(() => CpuPointwise.Binary(BinaryOp.Add, p, p, p, [2, 4], [3]));
            Assert.Throws<KernelArgumentException>(() => CpuPointwise.Binary(BinaryOp.Add, p, p, p, [4], [2, 4]));
            Assert.Throws<KernelArgumentException>(() => CpuPointwise.Binary(BinaryOp.Add, p, p, p, [0, 4], [4]));
            Assert.Throws<KernelArgumentException>(() => CpuPointwise.Binary((BinaryOp)7, p, p, p, [4], [4]));
            Assert.Throws<KernelArgumentException>(() => CpuPointwise.Activate(p, p, 0, Activation.Silu));
            Assert.Throws<KernelArgumentException>(() => CpuPointwise.Activate(p, p, 4, (Activation)42));
            Assert.Throws<KernelArgumentException>(() => CpuPointwise.Clamp(p, p, 4, 1f, -1f));
        }
    }

    [Theory]
    [InlineData(1003, 0.18215f, 0f)]
    [InlineData(17, -2f, 0.5f)]
    public void Scale_and_clamp_match_libtorch(int n, float alpha, float beta)
    {
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random(n, DType.F32, 3f);
        var y = CpuOracle.Poisoned(n);
        var z = CpuOracle.Poisoned(n);
        fixed (float* px = x, py = y, pz = z)
        {
            CpuPointwise.Scale(px, py, n, alpha, beta);
            CpuPointwise.Clamp(px, pz, n, -1f, 1.5f);
        }
        var tx = Oracle.T(x, n);
        CpuOracle.Check(oracle, "cpu_scale", $"n {n} alpha {alpha:g} beta {beta:g}", y, tx * alpha + beta);
        CpuOracle.Check(oracle, "cpu_clamp", $"n {n} [-1, 1.5]", z, torch.clamp(tx, -1.0, 1.5));
    }
}
