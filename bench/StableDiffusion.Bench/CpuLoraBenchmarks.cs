using System.Diagnostics;
using System.Text;
using System.Text.Json;
using StableDiffusion.IO;
using StableDiffusion.Kernels.Cpu;
using StableDiffusion.Models;
using StableDiffusion.Models.Clip;
using StableDiffusion.Models.Unet;
using StableDiffusion.Runtime;
using TorchSharp;

namespace StableDiffusion.Bench;

/// <summary>
/// <c>bench cpu lora</c>: the load time a rank-32 LoRA merge adds, full-size SD1.5 UNet and text encoder (random fp16
/// weights in the real layout, loaded as fp32 on the C# CPU backend as <c>sd generate --device cpu</c> does). Two
/// LoRAs: kohya's default (every linear layer of the UNet's transformers and of the text encoder) and LoCon (also
/// every UNet convolution, 3×3 included). Each load is timed alone, alternating without and with the LoRA; the
/// libtorch column is the same products W + s·up·down as fp32 addmm calls, for scale.
/// </summary>
public static class CpuLoraBench
{
    private const int Rank = 32, Repeats = 3;

    public static void Run(string outDir, string cpu)
    {
        torch.set_num_threads(CpuParallel.Threads);
        var dir = Path.Combine(Path.GetTempPath(), $"sd-bench-lora-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        try
        {
            using var device = ComputeDevice.OpenCpu();
            var ops = new CpuOps(device);
            var md = new StringBuilder();
            var rows = new List<object>();
            md.AppendLine($"# LoRA merge at load — {cpu}, {CpuParallel.Threads} threads");
            md.AppendLine();
            md.AppendLine($"Full-size SD1.5 components, random fp16 weights loaded as fp32 on the C# CPU backend; rank-{Rank} LoRAs, " +
                          $"fp16 files; median of {Repeats} loads each, alternating without and with the LoRA. \"merge\" is the time " +
                          "added; libtorch: the same W + s·up·down products as fp32 `addmm` on the host, for scale.");
            md.AppendLine();
            md.AppendLine("| component | LoRA | merged weights | LoRA parameters | load s | load + LoRA s | added s | libtorch addmm s |");
            md.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|");
            var unetConfig = Presets.Sd15.Unet();
            var teConfig = Presets.Sd15.TextEncoder();
            foreach (var (component, make) in new (string, Func<Module>)[]
                     {
                         ("text_encoder", () => new ClipTextModel(teConfig)), ("unet", () => new UNet2DConditionModel(unetConfig)),
                     })
            {
                string weights;
                using (var declared = make())
                {
                    weights = Path.Combine(dir, component + ".safetensors");
                    SafetensorsWriter.Write(weights, RandomWeights.Entries(declared, 1, WeightDType.F16));
                }
                using var file = WeightFile.Open(weights);
                var comp = ComponentWeights.FromFile(component, file);
                foreach (var kind in component == "unet" ? new[] { "lora", "locon" } : ["lora"])
                {
                    var layout = make().ExpectedLayout();
                    var loraPath = WriteLora(dir, component, kind, layout, out long loraParams);
                    using var lora = LoraFile.Open(loraPath, 0.8f);
                    var updates = LoraFile.ResolveAll([lora], new Dictionary<string, IReadOnlyDictionary<string, long[]>> { [component] = layout })[component];
                    var plain = new List<double>();
                    var merged = new List<double>();
                    for (int i = 0; i < Repeats; i++)
                    {
                        plain.Add(TimeLoad(make, comp, ops, null));
                        merged.Add(TimeLoad(make, comp, ops, updates));
                    }
                    double torchS = TorchMerge(comp, updates);
                    double p = Median(plain), m = Median(merged);
                    Console.WriteLine($"{component} {kind}: {updates.Count} weights, load {p:F2} s, with LoRA {m:F2} s, added {m - p:F2} s, libtorch addmm {torchS:F2} s");
                    md.AppendLine($"| {component} | {kind} r{Rank} | {updates.Count} | {loraParams / 1e6:F1} M | {p:F2} | {m:F2} | {m - p:F2} | {torchS:F2} |");
                    rows.Add(new { component, lora = kind, rank = Rank, merged_weights = updates.Count, lora_parameters = loraParams,
                        load_s = plain, load_with_lora_s = merged, added_s = m - p, libtorch_addmm_s = torchS });
                }
            }
            Directory.CreateDirectory(outDir);
            File.WriteAllText(Path.Combine(outDir, "lora.md"), md.ToString());
            File.WriteAllText(Path.Combine(outDir, "lora.json"), JsonSerializer.Serialize(new { cpu, threads = CpuParallel.Threads, results = rows },
                new JsonSerializerOptions { WriteIndented = true }));
            Console.WriteLine($"wrote lora.md and lora.json in {outDir}");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static double TimeLoad(Func<Module> make, ComponentWeights comp, CpuOps ops, Dictionary<string, List<LoraUpdate>>? updates)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var clock = Stopwatch.StartNew();
        using (var m = make()) m.Load(comp, ops, DType.F32, updates);
        return clock.Elapsed.TotalSeconds;
    }

    private static double Median(List<double> v) => v.Order().ElementAt(v.Count / 2);

    /// <summary>A kohya LoRA on the layers kohya trains: linear layers (lora), plus every convolution (locon).</summary>
    private static string WriteLora(string dir, string component, string kind, IReadOnlyDictionary<string, long[]> layout, out long parameters)
    {
        var entries = new List<SafetensorsEntry>();
        var rng = new Random(7);
        parameters = 0;
        foreach (var (path, shape) in layout)
        {
            if (!path.EndsWith(".weight", StringComparison.Ordinal) || path.Contains("embed", StringComparison.Ordinal)) continue;
            bool linear = shape.Length == 2 && (component != "unet" || path.Contains("attentions.", StringComparison.Ordinal));
            bool conv = kind == "locon" && shape.Length == 4;
            if (!linear && !conv) continue;
            var stem = (component == "unet" ? "lora_unet_" : "lora_te_") + path[..^".weight".Length].Replace('.', '_');
            long[] down = shape.Length == 4 ? [Rank, shape[1], shape[2], shape[3]] : [Rank, shape[1]];
            long[] up = shape.Length == 4 ? [shape[0], Rank, 1, 1] : [shape[0], Rank];
            entries.Add(Random(stem + ".lora_down.weight", down, rng));
            entries.Add(Random(stem + ".lora_up.weight", up, rng));
            entries.Add(SafetensorsEntry.FromBytes(stem + ".alpha", WeightDType.F16, [], BitConverter.GetBytes((Half)16f)));
            parameters += Shapes.ElementCount(down) + Shapes.ElementCount(up);
        }
        var path2 = Path.Combine(dir, $"{component}-{kind}.safetensors");
        SafetensorsWriter.Write(path2, entries);
        return path2;
    }

    private static SafetensorsEntry Random(string name, long[] shape, Random rng)
    {
        var bytes = new byte[Shapes.ElementCount(shape) * 2];
        for (int i = 0; i < bytes.Length; i += 2) BitConverter.TryWriteBytes(bytes.AsSpan(i), (Half)((rng.NextDouble() * 2 - 1) * 0.05));
        return SafetensorsEntry.FromBytes(name, WeightDType.F16, shape, bytes);
    }

    private static double TorchMerge(ComponentWeights comp, Dictionary<string, List<LoraUpdate>> updates)
    {
        var clock = Stopwatch.StartNew();
        foreach (var (path, list) in updates)
        {
            using var scope = torch.NewDisposeScope();
            var t = comp.Find(path)!;
            var w = torch.tensor(t.ReadFloat32(), [t.Shape[0], t.Info.ElementCount / t.Shape[0]]);
            foreach (var u in list)
            {
                var up = torch.tensor(u.ReadUp(), [u.Up.Shape[0], u.Rank]);
                var down = torch.tensor(u.ReadDown(), [u.Rank, u.Down.ElementCount / u.Rank]);
                w = torch.addmm(w, up, down, beta: 1, alpha: u.Scale);
            }
        }
        return clock.Elapsed.TotalSeconds;
    }
}
