using System.Text.Json;
using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels;

/// <summary>One comparison of a kernel with the host reference.</summary>
public sealed record SelfCheckResult(string Op, string DType, string Shape, double RelativeError, double Tolerance,
    string Kernel = "")
{
    public bool Passed => RelativeError <= Tolerance; // NaN fails
}

/// <summary>
/// Runs every op through <see cref="IOps"/> on the open device at shapes sized for it, against
/// <see cref="Reference"/>; outputs come from a poisoned pool, so elements a kernel fails to write show as NaN.
/// With a dump directory, each case's inputs (as the device holds them) and output are written there, with a JSON
/// manifest of the op's parameters, for bench/gpu/torch_check.py to recompute with PyTorch.
/// </summary>
public static class SelfCheck
{
    public const double F32Tolerance = 1e-5;
    public const double F16Tolerance = 2e-3;

    public static IReadOnlyList<SelfCheckResult> Run(IOps ops, Action<SelfCheckResult>? onResult = null,
        Action<string>? onSkip = null, string? dumpDirectory = null)
    {
        var dump = dumpDirectory is null ? null : new Dump(dumpDirectory);
        bool small = ops is IlgpuOps { Runtime.Profile: var profile } && profile == KernelProfile.Test;
        bool poison = ops.Device.Pool.PoisonOnRent;
        ops.Device.Pool.PoisonOnRent = true;
        var results = new List<SelfCheckResult>();
        try
        {
            foreach (var dt in new[] { DType.F32, DType.F16 })
            {
                if (dt == DType.F16 && !ops.Device.SupportsFp16)
                {
                    onSkip?.Invoke($"fp16 skipped: {ops.Device.Name} has no fp16 support (cl_khr_fp16)");
                    continue;
                }
                var c = new Checker(ops, dt, results, onResult, seed: dt == DType.F32 ? 1 : 2, dump);
                c.All(small);
            }
        }
        finally
        {
            ops.Device.Pool.PoisonOnRent = poison;
        }
        return results;
    }

    /// <summary>
    /// Writes one case: <c>NNNN_op_dtype.json</c> (op, dtype, parameters, tolerance, the host reference's error, and
    /// per input and the output its shape, dtype and file) and raw little-endian fp32 <c>.bin</c> files, fp16 values
    /// widened exactly. Layouts are the kernels' own: NHWC activations, OHWI convolution weights, [B, L, H*D] attention.
    /// </summary>
    private sealed class Dump
    {
        private readonly string dir;
        private int next;

        public Dump(string dir)
        {
            this.dir = dir;
            Directory.CreateDirectory(dir);
        }

        [System.Diagnostics.CodeAnalysis.UnconditionalSuppressMessage("Trimming", "IL2026",
            Justification = "anonymous manifest types of this assembly, which the trimmed publish keeps whole (TrimmerRootAssembly)")]
        public void Write(SelfCheckResult r, object? parameters, (string Name, Tensor Tensor)[] inputs, float[] output, int[] outputShape)
        {
            var stem = $"{next++:D4}_{r.Op}_{r.DType.Replace('→', '-')}";
            string Bin(string name, float[] data)
            {
                var file = $"{stem}.{name}.bin";
                var bytes = new byte[data.Length * 4L];
                for (int i = 0; i < data.Length; i++)
                    System.Buffers.Binary.BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * 4), data[i]);
                File.WriteAllBytes(Path.Combine(dir, file), bytes);
                return file;
            }
            var manifest = new
            {
                op = r.Op,
                dtype = r.DType,
                shape = r.Shape,
                kernel = r.Kernel,
                tolerance = r.Tolerance,
                host_rel_err = double.IsFinite(r.RelativeError) ? r.RelativeError : (double?)null,
                @params = parameters ?? new { },
                inputs = inputs.Select(i => new
                {
                    name = i.Name,
                    shape = i.Tensor.ShapeArray(),
                    dtype = i.Tensor.DType.Name(),
                    file = Bin(i.Name, i.Tensor.ToFloatArray()),
                }).ToArray(),
                output = new { shape = outputShape, file = Bin("out", output) },
            };
            File.WriteAllText(Path.Combine(dir, stem + ".json"), JsonSerializer.Serialize(manifest, JsonOptions));
        }

        private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true };
    }

    private sealed class Checker(IOps ops, DType dt, List<SelfCheckResult> results, Action<SelfCheckResult>? onResult, int seed,
        Dump? dump)
    {
        private readonly Random rng = new(seed);
        private double Tol => dt == DType.F32 ? F32Tolerance : F16Tolerance;

        private float[] Rand(long n, float scale = 1f)
        {
            var a = new float[n];
            for (long i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
            return dt == DType.F16 ? Reference.RoundToHalf(a) : a; // the reference sees exactly what the device holds
        }

        private Tensor Up(float[] data, params int[] shape) => Tensor.FromArray(ops.Device, data, dt, shape);

        /// <summary>Compares, records and, when dumping, writes the case (its parameters and input tensors).</summary>
        private void Report(string op, string shape, Tensor output, float[] expected, object? parameters = null,
            params (string Name, Tensor Tensor)[] inputs)
        {
            var kernel = KernelBench.Family(ops);
            var got = output.ToFloatArray();
            var outShape = output.ShapeArray();
            output.Dispose();
            var r = new SelfCheckResult(op, dt.Name(), shape, Reference.RelativeError(got, expected), Tol, kernel);
            results.Add(r);
            dump?.Write(r, parameters, inputs, got, outShape);
            onResult?.Invoke(r);
        }

        public void All(bool small)
        {
            // GEMM: odd sizes, both transposes, bias, residual, batch broadcast.
            foreach (var (m, n, k, ta, tb, batch) in small
                         ? new[] { (37, 29, 23, false, true, 1), (17, 21, 9, true, false, 2) }
                         : new[] { (300, 200, 150, false, true, 2), (77, 768, 320, false, true, 1), (129, 65, 257, true, false, 3),
                                   (300, 200, 160, false, true, 2), (4096, 320, 320, false, true, 1), (257, 1280, 1280, false, true, 1) })
            {
                var a = Rand((long)batch * m * k);
                var b = Rand((long)k * n);
                var bias = Rand(n);
                var res = Rand((long)batch * m * n);
                using var ta_ = batch > 1 ? Up(a, batch, ta ? k : m, ta ? m : k) : Up(a, ta ? k : m, ta ? m : k);
                using var tb_ = Up(b, tb ? n : k, tb ? k : n);
                using var tbias = Up(bias, n);
                using var tres = batch > 1 ? Up(res, batch, m, n) : Up(res, m, n);
                var y = ops.MatMul(ta_, tb_, ta, tb, 0.5f, tbias, tres);
                Report("gemm", $"b{batch} {m}x{n}x{k}{(ta ? " Aᵀ" : "")}{(tb ? " Bᵀ" : "")} +bias +res", y,
                    Reference.MatMul(a, b, batch, m, n, k, ta, tb, batch > 1, false, 0.5f, bias, res),
                    new { batch, m, n, k, trans_a = ta, trans_b = tb, alpha = 0.5f },
                    ("a", ta_), ("b", tb_), ("bias", tbias), ("residual", tres));
            }

            // Convolution: 3x3 pad 1 stride 1 and 2, 1x1, residual.
            foreach (var (n, h, w, cin, cout, kk, s, p, withRes) in small
                         ? new[] { (1, 6, 7, 5, 6, 3, 1, 1, true), (2, 7, 5, 3, 4, 3, 2, 1, false), (1, 4, 5, 6, 7, 1, 1, 0, false) }
                         : new[] { (2, 16, 16, 32, 64, 3, 1, 1, true), (1, 17, 15, 32, 48, 3, 2, 1, false), (2, 9, 9, 64, 40, 1, 1, 0, true),
                                   (1, 32, 32, 320, 320, 3, 1, 1, true), (1, 4, 4, 4, 32, 3, 1, 1, false) })
            {
                int ho = (h + 2 * p - kk) / s + 1, wo = (w + 2 * p - kk) / s + 1;
                var x = Rand((long)n * h * w * cin);
                var wt = Rand((long)cout * kk * kk * cin, 0.2f);
                var bias = Rand(cout);
                var res = withRes ? Rand((long)n * ho * wo * cout) : null;
                using var tx = Up(x, n, h, w, cin);
                using var tw = Up(wt, cout, kk, kk, cin);
                using var tbias = Up(bias, cout);
                using var tres = res is null ? null : Up(res, n, ho, wo, cout);
                var y = ops.Conv2d(tx, tw, tbias, s, p, tres);
                Report("conv2d", $"[{n},{h},{w},{cin}] {kk}x{kk}/{s} p{p} → {cout}{(withRes ? " +res" : "")}", y,
                    Reference.Conv2d(x, n, h, w, cin, wt, cout, kk, kk, bias, s, p, res),
                    new { layout = "x NHWC, weight OHWI, y NHWC", stride = s, padding = p },
                    tres is null ? [("x", tx), ("weight", tw), ("bias", tbias)] : [("x", tx), ("weight", tw), ("bias", tbias), ("residual", tres)]);
            }

            // Group norm with and without SiLU, both epsilons.
            foreach (var (n, hw, c, g, silu, eps) in small
                         ? new[] { (2, 5, 8, 4, true, 1e-5f), (1, 7, 6, 2, false, 1e-6f) }
                         : new[] { (2, 64, 320, 32, true, 1e-5f), (1, 100, 128, 32, false, 1e-6f) })
            {
                var x = Rand((long)n * hw * c, 2f);
                for (int i = 0; i < x.Length; i++) x[i] += 0.5f; // a non-zero mean exercises the shifted sums
                var gamma = Rand(c);
                var beta = Rand(c);
                using var tx = Up(x, n, hw, c);
                using var tg = Up(gamma, c);
                using var tb = Up(beta, c);
                var y = ops.GroupNorm(tx, g, tg, tb, eps, silu);
                Report("group_norm", $"[{n},{hw},{c}] g{g}{(silu ? " +silu" : "")} eps {eps:g}", y,
                    Reference.GroupNorm(dt == DType.F16 ? Reference.RoundToHalf(x) : x, n, hw, c, g, gamma, beta, eps, silu),
                    new { layout = "x [N, HW, C]", groups = g, eps, silu }, ("x", tx), ("gamma", tg), ("beta", tb));
            }

            {
                int rows = small ? 7 : 3 * 77, c = small ? 12 : 320;
                var x = Rand((long)rows * c, 3f);
                var gamma = Rand(c);
                var beta = Rand(c);
                using var tx = Up(x, rows, c);
                using var tg = Up(gamma, c);
                using var tb = Up(beta, c);
                Report("layer_norm", $"[{rows},{c}]", ops.LayerNorm(tx, tg, tb, 1e-5f), Reference.LayerNorm(x, c, gamma, beta, 1e-5),
                    new { eps = 1e-5f }, ("x", tx), ("gamma", tg), ("beta", tb));
            }

            {
                int rows = small ? 5 : 4 * 77, c = small ? 13 : 100;
                var x = Rand((long)rows * c, 4f);
                using var tx = Up(x, rows, c);
                Report("softmax", $"[{rows},{c}]", ops.Softmax(tx), Reference.Softmax(x, c), new { dim = -1 }, ("x", tx));
            }

            // Attention: self and cross, every SD head dim, causal.
            var attnCases = small
                ? new[] { (1, 2, 9, 11, 8, false), (1, 1, 5, 6, 40, true), (1, 1, 3, 5, 160, false) }
                : new[] { (2, 2, 100, 100, 40, false), (2, 2, 100, 77, 64, false), (1, 2, 64, 77, 80, false), (1, 2, 64, 64, 160, true), (1, 1, 40, 40, 512, false) };
            foreach (var (b, heads, lq, lk, d, causal) in attnCases)
            {
                int hd = heads * d;
                var q = Rand((long)b * lq * hd);
                var k = Rand((long)b * lk * hd);
                var v = Rand((long)b * lk * hd);
                using var tq = Up(q, b, lq, hd);
                using var tk = Up(k, b, lk, hd);
                using var tv = Up(v, b, lk, hd);
                var y = ops.Attention(tq, tk, tv, heads, causal: causal);
                Report("attention", $"b{b} h{heads} {lq}x{lk} d{d}{(causal ? " causal" : "")}", y,
                    Reference.Attention(q, k, v, b, lq, lk, heads, d, 1 / Math.Sqrt(d), causal),
                    new { layout = "q [B, Lq, H*D], k/v [B, Lk, H*D]", heads, head_dim = d, scale = 1 / Math.Sqrt(d), causal },
                    ("q", tq), ("k", tk), ("v", tv));
            }

            foreach (var kind in Enum.GetValues<Activation>())
            {
                var x = Rand(small ? 100 : 4096, 4f);
                using var tx = Up(x, x.Length);
                Report(Activations.Name(kind), $"[{x.Length}]", ops.Activate(tx, kind), Reference.Activate(kind, x),
                    new { activation = Activations.Name(kind) }, ("x", tx));
            }

            {
                int rows = small ? 3 : 77, c = small ? 8 : 320;
                var x = Rand((long)rows * 2 * c, 3f);
                using var tx = Up(x, rows, 2 * c);
                Report("geglu", $"[{rows},{2 * c}]", ops.Geglu(tx), Reference.Geglu(x, c),
                    new { rule = "x[..., :C] * gelu_erf(x[..., C:])" }, ("x", tx));
            }

            foreach (var (aShape, bShape, op) in new[]
                     {
                         (new[] { 2, 6, 10 }, new[] { 2, 1, 10 }, BinaryOp.Add),
                         (new[] { 2, 6, 10 }, new[] { 10 }, BinaryOp.Mul),
                         (new[] { 3, 4, 5, 6 }, new[] { 3, 4, 5, 6 }, BinaryOp.Add),
                     })
            {
                var a = Rand(aShape.Aggregate(1L, (x, y) => x * y));
                var bb = Rand(bShape.Aggregate(1L, (x, y) => x * y));
                using var ta = Up(a, aShape);
                using var tb = Up(bb, bShape);
                Report(op == BinaryOp.Add ? "add" : "mul", $"[{string.Join(",", aShape)}] · [{string.Join(",", bShape)}]",
                    ops.Binary(op, ta, tb), Reference.Binary(op, a, aShape, bb, bShape),
                    new { broadcast = "numpy (trailing dimensions)" }, ("a", ta), ("b", tb));
            }

            {
                var x = Rand(1000);
                using var tx = Up(x, 1000);
                var expected = x.Select(v => v * 0.18215f + 0.5f).ToArray();
                Report("scale", "[1000]", ops.Scale(tx, 0.18215f, 0.5f), expected, new { scale = 0.18215f, shift = 0.5f }, ("x", tx));
            }

            {
                var x = Rand(2 * 5 * 3 * 7);
                using var tx = Up(x, 2, 5, 3, 7);
                Report("upsample2x", "[2,5,3,7]", ops.Upsample2x(tx), Reference.Upsample2x(x, 2, 5, 3, 7),
                    new { layout = "NHWC", mode = "nearest" }, ("x", tx));
                var other = Rand(2 * 5 * 3 * 4);
                using var to = Up(other, 2, 5, 3, 4);
                Report("concat", "[2,5,3,7] ++ [2,5,3,4]", ops.Concat(tx, to), Reference.Concat(x, 7, other, 4),
                    new { dim = -1 }, ("a", tx), ("b", to));
                Report("transpose", "[2,5,21] → [2,21,5]", ops.Transpose(tx.Reshape(2, 5, 21)), Reference.Transpose(x, 2, 5, 21),
                    new { view = new[] { 2, 5, 21 }, dims = new[] { 1, 2 } }, ("x", tx));
            }

            {
                var t = new float[] { 999f, 1f, 500.5f };
                using var tt = Tensor.FromArray(ops.Device, t, DType.F32, 3);
                var y = ops.TimestepEmbedding(tt, 320, dt);
                var expected = Reference.TimestepEmbedding(t, 320, true, 0f, 10000f);
                Report("timestep_embedding", "t [3] → [3,320]", y, dt == DType.F16 ? Reference.RoundToHalf(expected) : expected,
                    new { dim = 320, flip_sin_to_cos = true, downscale_freq_shift = 0f, max_period = 10000f }, ("t", tt));
            }

            {
                var table = Rand(50 * 16);
                var ids = new[] { 49406, 3, 0, 49, 17, 17 }.Select(i => i % 50).ToArray();
                using var tt = Up(table, 50, 16);
                using var ti = Tensor.FromInts(ops.Device, ids, 2, 3);
                Report("embedding", "[50,16] ids [2,3]", ops.Embedding(tt, ti), Reference.Gather(table, 16, ids),
                    null, ("table", tt), ("ids", ti));
            }

            if (ops.Device.SupportsFp16)
            {
                var x = Rand(300, 10f);
                using var tx = Up(x, 300);
                var other = dt == DType.F32 ? DType.F16 : DType.F32;
                using var cast = ops.Cast(tx, other);
                var back = cast.ToFloatArray();
                var r = new SelfCheckResult("cast", $"{dt.Name()}→{other.Name()}", "[300]",
                    Reference.RelativeError(back, other == DType.F16 ? Reference.RoundToHalf(x) : x), 0);
                results.Add(r);
                dump?.Write(r, new { to = other.Name() }, [("x", tx)], back, cast.ShapeArray());
                onResult?.Invoke(r);
            }
        }
    }
}
