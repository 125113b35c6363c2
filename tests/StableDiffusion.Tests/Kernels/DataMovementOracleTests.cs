using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace StableDiffusion.Tests.Kernels;

/// <summary>upsample2x, concat, transpose, embedding and timestep_embedding against libtorch.</summary>
public class DataMovementOracleTests(ITestOutputHelper output)
{
    private readonly Oracle oracle = new(output);

    [Theory]
    [InlineData("test", "fp32")]
    [InlineData("cpu", "fp32")]
    [InlineData("test", "fp16")]
    [InlineData("cpu", "fp16")]
    [InlineData("cuda", "fp32")]
    public void Upsample2x_matches_libtorch_nearest(string profile, string dtype)
    {
        var ops = Devices.Backend(profile);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random(2 * 5 * 3 * 7, dt);
        using var tx = Oracle.Upload(ops, x, dt, 2, 5, 3, 7);
        using var y = ops.Upsample2x(tx);
        var want = torch.nn.functional.interpolate(Oracle.T(x, 2, 5, 3, 7).permute(0, 3, 1, 2), scale_factor: [2.0, 2.0],
            mode: InterpolationMode.Nearest).permute(0, 2, 3, 1);
        oracle.Check("upsample2x", $"{profile} [2,5,3,7]", y, want, 0);
    }

    [Theory]
    [InlineData("test", "fp32")]
    [InlineData("cpu", "fp32")]
    [InlineData("test", "fp16")]
    [InlineData("cpu", "fp16")]
    public void Concat_matches_libtorch_cat(string profile, string dtype)
    {
        var ops = Devices.Backend(profile);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var a = oracle.Random(2 * 4 * 4 * 5, dt);
        var b = oracle.Random(2 * 4 * 4 * 3, dt);
        using var ta = Oracle.Upload(ops, a, dt, 2, 4, 4, 5);
        using var tb = Oracle.Upload(ops, b, dt, 2, 4, 4, 3);
        using var y = ops.Concat(ta, tb);
        oracle.Check("concat", $"{profile} [2,4,4,5]++[2,4,4,3]", y,
            torch.cat([Oracle.T(a, 2, 4, 4, 5), Oracle.T(b, 2, 4, 4, 3)], -1), 0);
    }

    [Theory]
    [InlineData("fp32", 8, 0, 4)]
    [InlineData("fp32", 8, 4, 4)]
    [InlineData("fp16", 7, 2, 3)]
    public void SliceLast_matches_libtorch_narrow(string dtype, int c, int start, int length)
    {
        var ops = Devices.Ops("test");
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random(2L * 3 * 5 * c, dt);
        using var tx = Oracle.Upload(ops, x, dt, 2, 3, 5, c);
        using var y = ops.SliceLast(tx, start, length);
        oracle.Check("slice", $"[2,3,5,{c}][..., {start}:{start + length}]", y, Oracle.T(x, 2, 3, 5, c).narrow(3, start, length), 0);
        Assert.Throws<KernelArgumentException>(() => ops.SliceLast(tx, c - 1, 2));
    }

    [Theory]
    [InlineData("test", "fp32", 3, 5, 21)]
    [InlineData("cpu", "fp32", 3, 5, 21)]
    [InlineData("test", "fp16", 2, 9, 4)]
    [InlineData("cpu", "fp16", 2, 9, 4)]
    [InlineData("cuda", "fp32", 2, 33, 70)]
    [InlineData("cuda", "fp16", 1, 64, 40)]
    public void Transpose_matches_libtorch(string profile, string dtype, int batch, int r, int c)
    {
        var ops = Devices.Backend(profile);
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var x = oracle.Random((long)batch * r * c, dt);
        using var tx = Oracle.Upload(ops, x, dt, batch, r, c);
        using var y = ops.Transpose(tx);
        oracle.Check("transpose", $"{profile} [{batch},{r},{c}]", y, Oracle.T(x, batch, r, c).transpose(1, 2), 0);
    }

    [Fact]
    public void Transpose_converts_oihw_weights_to_ohwi()
    {
        var ops = Devices.Ops("test");
        using var scope = torch.NewDisposeScope();
        var w = oracle.Random(6 * 4 * 3 * 3, DType.F32);
        using var tw = Oracle.Upload(ops, w, DType.F32, 6, 4, 9);
        using var y = ops.Transpose(tw);
        oracle.Check("transpose", "OIHW [6,4,3,3] → OHWI", y, Oracle.T(w, 6, 4, 3, 3).permute(0, 2, 3, 1), 0);
    }

    [Theory]
    [InlineData("fp32")]
    [InlineData("fp16")]
    public void Embedding_matches_libtorch(string dtype)
    {
        var ops = Devices.Ops("test");
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        var table = oracle.Random(50 * 16, dt);
        int[] ids = [49, 0, 3, 3, 17, 48];
        using var tt = Oracle.Upload(ops, table, dt, 50, 16);
        using var ti = DeviceTensor.FromInts(ops.Device, ids, 2, 3);
        using var y = ops.Embedding(tt, ti);
        Assert.Equal(new[] { 2, 3, 16 }, y.ShapeArray());
        var want = Oracle.T(table, 50, 16).index_select(0, torch.tensor(ids.Select(i => (long)i).ToArray())).reshape(2, 3, 16);
        oracle.Check("embedding", "[50,16] ids [2,3]", y, want, 0);
    }

    /// <summary>diffusers' get_timestep_embedding, written with libtorch ops in fp32 as diffusers runs it.</summary>
    private static TorchSharp.torch.Tensor DiffusersTimestepEmbedding(float[] t, int dim, bool flip, float shift, float maxPeriod)
    {
        int half = dim / 2;
        var exponent = -Math.Log(maxPeriod) * torch.arange(0, half, dtype: ScalarType.Float32);
        exponent = exponent / (half - shift);
        var emb = torch.exp(exponent);
        emb = torch.tensor(t)[.., TensorIndex.None] * emb[TensorIndex.None, ..];
        emb = torch.cat([torch.sin(emb), torch.cos(emb)], -1);
        if (flip) emb = torch.cat([emb[.., half..], emb[.., ..half]], -1);
        if (dim % 2 == 1) emb = torch.nn.functional.pad(emb, [0, 1, 0, 0]);
        return emb;
    }

    [Theory]
    [InlineData("fp32", 320, true, 0f)]
    [InlineData("fp32", 1280, true, 0f)]
    [InlineData("fp32", 33, false, 1f)]
    [InlineData("fp16", 320, true, 0f)]
    public void TimestepEmbedding_matches_diffusers_in_libtorch(string dtype, int dim, bool flip, float shift)
    {
        var ops = Devices.Ops("test");
        var dt = Devices.DType(dtype);
        using var scope = torch.NewDisposeScope();
        float[] t = [999f, 981f, 500.5f, 1f, 0f];
        using var tt = DeviceTensor.FromArray(ops.Device, t, DType.F32, t.Length);
        using var y = ops.TimestepEmbedding(tt, dim, dt, flip, shift);
        oracle.Check("timestep_embedding", $"t [{t.Length}] → {dim} flip={flip} shift={shift}", y,
            DiffusersTimestepEmbedding(t, dim, flip, shift, 10000f), Devices.Tolerance(dt));
    }
}
