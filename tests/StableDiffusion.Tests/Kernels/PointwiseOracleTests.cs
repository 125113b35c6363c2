using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace StableDiffusion.Tests.Kernels;

/// <summary>activation (SiLU, GELU, GELU-tanh, QuickGELU, exp, ReLU, tanh), geglu, binary_broadcast, scale and cast against libtorch.</summary>
public class PointwiseOracleTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    private static TorchSharp.torch.Tensor TorchActivation(Activation kind, TorchSharp.torch.Tensor x) => kind switch
    {
        Activation.Silu => torch.nn.functional.silu(x),
        Activation.Gelu => torch.nn.functional.gelu(x),
        Activation.GeluTanh => torch.nn.functional.gelu(x, approximate: TorchSharp.Modules.GELU.Approximate.tanh),
        Activation.QuickGelu => x * torch.sigmoid(1.702 * x),
        Activation.Relu => torch.nn.functional.relu(x),
        Activation.Tanh => torch.tanh(x),
        _ => torch.exp(x),
    };

    [Theory]
    [InlineData("test", "fp32", Activation.Silu)]
    [InlineData("cpu", "fp32", Activation.Silu)]
    [InlineData("test", "fp32", Activation.Gelu)]
    [InlineData("cpu", "fp32", Activation.Gelu)]
    [InlineData("test", "fp32", Activation.GeluTanh)]
    [InlineData("cpu", "fp32", Activation.GeluTanh)]
    [InlineData("test", "fp32", Activation.QuickGelu)]
    [InlineData("cpu", "fp32", Activation.QuickGelu)]
    [InlineData("test", "fp16", Activation.Silu)]
    [InlineData("cpu", "fp16", Activation.Silu)]
    [InlineData("test", "fp16", Activation.Gelu)]
    [InlineData("cpu", "fp16", Activation.Gelu)]
    [InlineData("test", "fp16", Activation.GeluTanh)]
    [InlineData("cpu", "fp16", Activation.GeluTanh)]
    [InlineData("test", "fp16", Activation.QuickGelu)]
    [InlineData("cpu", "fp16", Activation.QuickGelu)]
    [InlineData("test", "fp32", Activation.Exp)]
    [InlineData("cpu", "fp32", Activation.Exp)]
    [InlineData("test", "fp16", Activation.Exp)]
    [InlineData("cpu", "fp16", Activation.Exp)]
    [InlineData("test", "fp32", Activation.Relu)]
    [InlineData("cpu", "fp32", Activation.Relu)]
    [InlineData("test", "fp16", Activation.Tanh)]
    [InlineData("cpu", "fp16", Activation.Tanh)]
    [InlineData("test", "fp32", Activation.Tanh)]
    [InlineData("cpu", "fp32", Activation.Tanh)]
    [InlineData("cuda", "fp32", Activation.Gelu)]
    public void Activation_matches_libtorch(string profile, string dtype, Activation kind)
    {
        var ops = Devices.Backend(profile);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random(3000, dt, 8f);
        using var tx = Oracle.Upload(ops, x, dt, 3000);
        using var y = ops.Activate(tx, kind);
        oracle.Check(global::StableDiffusion.Kernels.Activations.Name(kind), $"{profile} [3000] in ±8", y,
            TorchActivation(kind, Oracle.T(x, 3000)), Devices.Tolerance(dt));

        // Far tails, checked on their own so they cannot dominate the norm above: no overflow into NaN or Inf.
        float big = kind == Activation.Exp ? (dt == DType.F16 ? 10f : 80f) : dt == DType.F16 ? 60000f : 90f;
        float[] tails = kind == Activation.Exp ? [0f, -big, big, -5f, 5f] : [0f, -big, big, -20f, 20f];
        using var tt = Oracle.Upload(ops, tails, dt, tails.Length);
        using var yt = ops.Activate(tt, kind);
        var got = yt.ToFloatArray();
        var want = Oracle.Host(TorchActivation(kind, Oracle.T(tails, tails.Length)));
        for (int i = 0; i < tails.Length; i++)
        {
            Assert.True(float.IsFinite(got[i]), $"{kind}({tails[i]}) = {got[i]}");
            Assert.True(Math.Abs(got[i] - want[i]) <= Devices.Tolerance(dt) * Math.Abs(want[i]) + 1e-6,
                $"{kind}({tails[i]}) = {got[i]}, libtorch {want[i]}");
        }
    }

    [Theory]
    [InlineData("test", "fp32", false)]
    [InlineData("cpu", "fp32", false)]
    [InlineData("test", "fp32", true)]
    [InlineData("cpu", "fp32", true)]
    [InlineData("test", "fp16", false)]
    [InlineData("cpu", "fp16", false)]
    [InlineData("cuda", "fp32", false)]
    public void Geglu_matches_libtorch(string profile, string dtype, bool approximate)
    {
        var ops = Devices.Backend(profile);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random(2 * 7 * 2 * 40, dt, 4f);
        using var tx = Oracle.Upload(ops, x, dt, 2, 7, 80);
        using var y = ops.Geglu(tx, approximate);
        var parts = Oracle.T(x, 2, 7, 80).chunk(2, -1);
        var gate = approximate
            ? torch.nn.functional.gelu(parts[1], approximate: TorchSharp.Modules.GELU.Approximate.tanh)
            : torch.nn.functional.gelu(parts[1]);
        oracle.Check("geglu", $"{profile} [2,7,80]{(approximate ? " tanh" : "")}", y, parts[0] * gate, Devices.Tolerance(dt));
    }

    [Theory]
    [InlineData("fp32", BinaryOp.Add, new[] { 2, 6, 10 }, new[] { 2, 6, 10 })]
    [InlineData("fp32", BinaryOp.Add, new[] { 2, 6, 10 }, new[] { 10 })]
    [InlineData("fp32", BinaryOp.Add, new[] { 2, 3, 4, 10 }, new[] { 2, 1, 1, 10 })]
    [InlineData("fp32", BinaryOp.Mul, new[] { 2, 6, 10 }, new[] { 2, 1, 10 })]
    [InlineData("fp32", BinaryOp.Mul, new[] { 3, 4, 5, 6, 7 }, new[] { 3, 1, 1, 6, 7 })]
    [InlineData("fp32", BinaryOp.Add, new[] { 3, 4, 5, 6 }, new[] { 4, 1, 6 })]
    [InlineData("fp32", BinaryOp.Add, new[] { 5, 1, 3 }, new[] { 1, 3 })]
    [InlineData("fp16", BinaryOp.Add, new[] { 2, 6, 10 }, new[] { 2, 1, 10 })]
    [InlineData("fp16", BinaryOp.Mul, new[] { 2, 6, 10 }, new[] { 10 })]
    public void Binary_broadcast_matches_libtorch(string dtype, BinaryOp op, int[] aShape, int[] bShape)
    {
        var ops = Devices.Ops("test");
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var a = oracle.Random(aShape.Aggregate(1L, (x, y) => x * y), dt);
        var b = oracle.Random(bShape.Aggregate(1L, (x, y) => x * y), dt);
        using var ta = Oracle.Upload(ops, a, dt, aShape);
        using var tb = Oracle.Upload(ops, b, dt, bShape);
        using var y = ops.Binary(op, ta, tb);
        var ra = Oracle.T(a, aShape.Select(v => (long)v).ToArray());
        var rb = Oracle.T(b, bShape.Select(v => (long)v).ToArray());
        oracle.Check("binary_broadcast", $"{op} [{string.Join(",", aShape)}]·[{string.Join(",", bShape)}]", y,
            op == BinaryOp.Add ? ra + rb : ra * rb, Devices.Tolerance(dt));
    }

    [Fact]
    public void Binary_refuses_broadcasts_it_cannot_index()
    {
        var ops = Devices.Ops("test");
        using var a = DeviceTensor.Empty(ops.Device, DType.F32, 3, 4, 5, 6, 7);
        using var b = DeviceTensor.Empty(ops.Device, DType.F32, 4, 1, 6, 1);
        using var c = DeviceTensor.Empty(ops.Device, DType.F32, 4, 5);
        var e = Assert.Throws<KernelArgumentException>(() => ops.Binary(BinaryOp.Mul, a, b));
        Assert.Contains("too irregular", e.Message);
        e = Assert.Throws<KernelArgumentException>(() => ops.Binary(BinaryOp.Add, a, c));
        Assert.Contains("cannot broadcast [4, 5]", e.Message);
    }

    [Theory]
    [InlineData("fp32")]
    [InlineData("fp16")]
    public void Scale_matches_libtorch(string dtype)
    {
        var ops = Devices.Ops("test");
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random(777, dt, 3f);
        using var tx = Oracle.Upload(ops, x, dt, 777);
        using var y = ops.Scale(tx, 0.18215f, -0.5f);
        oracle.Check("scale", "[777] *0.18215 -0.5", y, Oracle.T(x, 777) * 0.18215f - 0.5f, Devices.Tolerance(dt));
    }

    [Theory]
    [InlineData("fp32")]
    [InlineData("fp16")]
    public void Clamp_matches_libtorch(string dtype)
    {
        var ops = Devices.Ops("test");
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random(500, dt, 40f);
        using var tx = Oracle.Upload(ops, x, dt, 500);
        using var y = ops.Clamp(tx, -30f, 20f);
        oracle.Check("scale", "clamp [500] to [-30, 20]", y, torch.clamp(Oracle.T(x, 500), -30, 20), 0);
        Assert.Throws<KernelArgumentException>(() => ops.Clamp(tx, 1f, -1f));
    }

    [Fact]
    public void Cast_rounds_like_libtorch()
    {
        var ops = Devices.Ops("test");
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random(1000, DType.F32, 100f);
        x[0] = 70000f;       // overflows fp16 → inf
        x[1] = 1e-8f;        // fp16 subnormal range
        x[2] = 2049f;        // a tie: rounds to even (2048)
        x[3] = -65519f;      // largest value that still rounds to a finite half
        using var tx = Oracle.Upload(ops, x, DType.F32, 1000);
        using var h = ops.Cast(tx, DType.F16);
        var want = torch.tensor(x).to(ScalarType.Float16).to(ScalarType.Float32).data<float>().ToArray();
        var got = h.ToFloatArray();
        Assert.Equal(want, got); // bit-exact, inf included
        oracle.Record("cast", "fp32→fp16 [1000] incl. overflow, subnormal, tie", DType.F16, 0, 0);
        using var back = ops.Cast(h, DType.F32);
        Assert.Equal(want, back.ToFloatArray());
    }
}
