using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using StableDiffusion.Kernels.Cpu;
using TorchSharp;
using TT = TorchSharp.torch.Tensor;

namespace StableDiffusion.Bench;

/// <summary>
/// The C# CPU kernels at SD1.5 shapes, timed against libtorch (CPU) on the same thread count in the same process.
/// Timing is the median of at least five runs after
/// a warm-up, ours and libtorch alternating (a plain stopwatch: cases run 1 ms to 1 s, where BenchmarkDotNet's pilot
/// stages would take minutes on two cores).
/// </summary>
public static unsafe class CpuOpBenchmarks
{
    public sealed record Case(string Name, string Kind, long[] Shape, double Work, string Unit);

    public sealed record Row(Case Case, double OursMs, double? TorchMs);

    public static IReadOnlyList<Case> Cases(bool quick)
    {
        int big = quick ? 1024 : 4096;
        static double Attn(long b, long h, long lq, long lk, long d) => 4.0 * b * h * lq * lk * d;
        return
        [
            new($"attention self 2×8×{big}×{big}×40", "attn", [2, 8, big, big, 40], Attn(2, 8, big, big, 40), "GFLOP/s"),
            new("attention self 2×8×1024×1024×80", "attn", [2, 8, 1024, 1024, 80], Attn(2, 8, 1024, 1024, 80), "GFLOP/s"),
            new($"attention cross 2×8×{big}×77×40", "attn", [2, 8, big, 77, 40], Attn(2, 8, big, 77, 40), "GFLOP/s"),
            new($"attention VAE 1×1×{big}×{big}×512", "attn", [1, 1, big, big, 512], Attn(1, 1, big, big, 512), "GFLOP/s"),
            new("group norm 2×64×64×320 g32 +SiLU", "gn_silu", [2, 64 * 64, 320, 32], 2.0 * 2 * 4096 * 320 * 4, "GB/s"),
            new($"group norm 1×{big / 16}×{big / 16}×256 g32", "gn", [1, (long)big / 16 * (big / 16), 256, 32],
                2.0 * big / 16 * (big / 16) * 256 * 4, "GB/s"),
            new("layer norm 8192×320", "ln", [8192, 320], 2.0 * 8192 * 320 * 4, "GB/s"),
            new("GEGLU 8192×2560 → 8192×1280", "geglu", [8192, 1280], 8192.0 * (2560 + 1280) * 4, "GB/s"),
            new("softmax 16384×1024", "softmax", [16384, 1024], 2.0 * 16384 * 1024 * 4, "GB/s"),
            new("SiLU 2×64×64×1280", "silu", [2L * 64 * 64 * 1280], 2.0 * 2 * 64 * 64 * 1280 * 4, "GB/s"),
        ];
    }

    /// <summary>Runs every case, prints and returns the table, and writes it to outDir/cpu-ops.md.</summary>
    public static IReadOnlyList<Row> RunAll(string outDir, bool quick, string? only = null)
    {
        torch.set_num_threads(CpuParallel.Threads);
        var rows = new List<Row>();
        var cases = Cases(quick).Where(c => only is null || c.Name.Contains(only, StringComparison.OrdinalIgnoreCase)).ToList();
        if (cases.Count == 0)
            throw new UsageException($"bench cpu ops: no case name contains '{only}'; cases: {string.Join(", ", Cases(quick).Select(c => c.Name))}");
        foreach (var c in cases)
        {
            using var buffers = new Buffers();
            Action? baseline = null;
            using var scope = torch.NewDisposeScope();
            baseline = Torch(c);
            var (ours, torchMs) = Time(Ours(c, buffers), baseline, quick);
            var row = new Row(c, ours, torchMs);
            rows.Add(row);
            Console.WriteLine(Format(row));
        }
        Directory.CreateDirectory(outDir);
        File.WriteAllText(Path.Combine(outDir, only is null ? "cpu-ops.md" : $"cpu-ops-{Roofline.Slug(only)}.md"), Markdown(rows, quick));
        return rows;
    }

    // Ours and the baseline alternate run by run, so load from elsewhere on the machine hits both alike.
    private static (double Ours, double? Baseline) Time(Action ours, Action? baseline, bool quick)
    {
        ours(); // warm-up: JIT, page faults, thread pools
        baseline?.Invoke();
        var a = new List<double>();
        var b = new List<double>();
        var total = Stopwatch.StartNew();
        double budget = quick ? 600 : 3000;
        while (a.Count < 5 || (total.Elapsed.TotalMilliseconds < budget && a.Count < 50))
        {
            var sw = Stopwatch.StartNew();
            ours();
            a.Add(sw.Elapsed.TotalMilliseconds);
            if (baseline is null) continue;
            sw.Restart();
            baseline();
            b.Add(sw.Elapsed.TotalMilliseconds);
        }
        return (Median(a), baseline is null ? null : Median(b));
    }

    private static double Median(List<double> t)
    {
        t.Sort();
        return t[t.Count / 2];
    }

    private sealed class Buffers : IDisposable
    {
        private readonly List<nint> blocks = [];

        public float* Random(long n, float scale = 1f)
        {
            var p = (float*)NativeMemory.AlignedAlloc((nuint)(n * sizeof(float)), 64);
            blocks.Add((nint)p);
            var rng = new Random(42);
            for (long i = 0; i < n; i++) p[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
            return p;
        }

        public void Dispose()
        {
            foreach (var b in blocks) NativeMemory.AlignedFree((void*)b);
        }
    }

    private static Action Ours(Case c, Buffers m)
    {
        var s = c.Shape;
        switch (c.Kind)
        {
            case "attn":
            {
                int b = (int)s[0], h = (int)s[1], lq = (int)s[2], lk = (int)s[3], d = (int)s[4];
                float* q = m.Random((long)b * lq * h * d), k = m.Random((long)b * lk * h * d), v = m.Random((long)b * lk * h * d);
                float* o = m.Random((long)b * lq * h * d);
                float scale = 1f / MathF.Sqrt(d);
                return () => CpuAttention.Attention(q, k, v, o, b, lq, lk, h, d, scale, false);
            }
            case "gn" or "gn_silu":
            {
                int n = (int)s[0], ch = (int)s[2], g = (int)s[3];
                long sp = s[1];
                float* x = m.Random(n * sp * ch), y = m.Random(n * sp * ch), w = m.Random(ch), bb = m.Random(ch);
                bool silu = c.Kind == "gn_silu";
                return () => CpuNorms.GroupNorm(x, y, n, sp, ch, g, w, bb, 1e-5f, silu);
            }
            case "ln":
            {
                long r = s[0];
                int ch = (int)s[1];
                float* x = m.Random(r * ch), y = m.Random(r * ch), w = m.Random(ch), bb = m.Random(ch);
                return () => CpuNorms.LayerNorm(x, y, r, ch, w, bb, 1e-5f);
            }
            case "geglu":
            {
                long r = s[0];
                int ch = (int)s[1];
                float* x = m.Random(r * 2 * ch, 3f), y = m.Random(r * ch);
                return () => CpuPointwise.Geglu(x, y, r, ch, false);
            }
            case "softmax":
            {
                long r = s[0];
                int ch = (int)s[1];
                float* x = m.Random(r * ch, 8f), y = m.Random(r * ch);
                return () => CpuSoftmax.Softmax(x, y, r, ch, 1f);
            }
            default:
            {
                float* x = m.Random(s[0], 6f), y = m.Random(s[0]);
                return () => CpuPointwise.Activate(x, y, s[0], StableDiffusion.Runtime.Activation.Silu);
            }
        }
    }

    // libtorch in its preferred layouts (NCHW for group norm); attention reads the same [B, L, H·D] layout as ours.
    private static Action Torch(Case c)
    {
        var s = c.Shape;
        TT R(params long[] shape) => torch.rand(shape, torch.float32) * 2 - 1;
        switch (c.Kind)
        {
            case "attn":
            {
                long b = s[0], h = s[1], lq = s[2], lk = s[3], d = s[4];
                TT q = R(b, lq, h, d).transpose(1, 2), k = R(b, lk, h, d).transpose(1, 2), v = R(b, lk, h, d).transpose(1, 2);
                return () => { using var o = torch.nn.functional.scaled_dot_product_attention(q, k, v); };
            }
            case "gn" or "gn_silu":
            {
                long n = s[0], sp = s[1], ch = s[2], g = s[3];
                long side = (long)Math.Sqrt(sp);
                TT x = R(n, ch, side, sp / side), w = R(ch), bb = R(ch);
                bool silu = c.Kind == "gn_silu";
                return () =>
                {
                    using var y = torch.nn.functional.group_norm(x, g, w, bb, 1e-5);
                    if (silu) torch.nn.functional.silu(y, inplace: true);
                };
            }
            case "ln":
            {
                TT x = R(s[0], s[1]), w = R(s[1]), bb = R(s[1]);
                return () => { using var y = torch.nn.functional.layer_norm(x, [s[1]], w, bb, 1e-5); };
            }
            case "geglu":
            {
                TT x = R(s[0], 2 * s[1]) * 3;
                return () =>
                {
                    using var a = x.narrow(1, 0, s[1]);
                    using var g = x.narrow(1, s[1], s[1]);
                    using var gg = torch.nn.functional.gelu(g);
                    using var y = a * gg;
                };
            }
            case "softmax":
            {
                TT x = R(s[0], s[1]) * 8;
                return () => { using var y = torch.softmax(x, -1); };
            }
            default:
            {
                TT x = R(s[0]) * 6;
                return () => { using var y = torch.nn.functional.silu(x); };
            }
        }
    }

    private static string Rate(Case c, double ms) => $"{c.Work / (ms * 1e-3) / 1e9:0.0}";

    private static string Format(Row r) =>
        $"{r.Case.Name,-40} ours {r.OursMs,9:0.00} ms ({Rate(r.Case, r.OursMs)} {r.Case.Unit})" +
        (r.TorchMs is { } t ? $"  libtorch {t,9:0.00} ms ({Rate(r.Case, t)} {r.Case.Unit})  ratio {r.OursMs / t:0.00}" : "  libtorch n/a");

    private static string Markdown(IReadOnlyList<Row> rows, bool quick)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"| case | ours ms | libtorch ms | time ratio (ours ms / libtorch ms) | ours rate | libtorch rate |{(quick ? " (quick shapes)" : "")}");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|");
        foreach (var r in rows)
        {
            string t = r.TorchMs is { } tm ? $"{tm:0.00}" : "n/a";
            string ratio = r.TorchMs is { } tr ? $"{r.OursMs / tr:0.00}" : "n/a";
            string tRate = r.TorchMs is { } tt ? $"{Rate(r.Case, tt)} {r.Case.Unit}" : "n/a";
            sb.AppendLine($"| {r.Case.Name} | {r.OursMs:0.00} | {t} | {ratio} | {Rate(r.Case, r.OursMs)} {r.Case.Unit} | {tRate} |");
        }
        return sb.ToString();
    }
}
