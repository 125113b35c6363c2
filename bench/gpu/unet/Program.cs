using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using StableDiffusion;
using StableDiffusion.IO;
using StableDiffusion.Kernels;
using StableDiffusion.Models;
using StableDiffusion.Models.Unet;
using StableDiffusion.Runtime;

// A UNet2DConditionModel with random weights (full-size SD1.5 by default) on a device, for unet_reference.py to
// check against PyTorch: writes the weights (safetensors, fp32), the inputs, the resolved configuration and our
// outputs per dtype into WORK, and prints load/forward times and device memory (pool bytes) per dtype.
//
// usage: unet-check WORK [--device cuda] [--config JSON] [--size 64] [--batch 2] [--context 77] [--dtypes fp16,fp32] [--runs 3]
// --config overrides keys of a default config (SD1.5's unet/config.json values).

var opts = Options.Parse(args);
Directory.CreateDirectory(opts.Work);
var log = Console.Out;
string Mb(long b) => (b / 1048576.0).ToString("F1", CultureInfo.InvariantCulture) + " MiB";

var config = UNetConfig.FromJson(JsonConfig.Parse(opts.ConfigJson, "--config"));
using var unet = new UNet2DConditionModel(config);
log.WriteLine($"unet: {unet.NamedParameters().Count()} tensors, {unet.ParameterCount:N0} parameters, latents {opts.Batch}x{opts.Size}x{opts.Size}, context {opts.Context}");

var sw = Stopwatch.StartNew();
var weightsPath = Path.Combine(opts.Work, "unet.safetensors");
SafetensorsWriter.Write(weightsPath, RandomWeights.Entries(unet, 42, WeightDType.F32));
log.WriteLine($"random weights written in {sw.Elapsed.TotalSeconds:F1} s");

// Inputs exactly representable in fp16, so both dtypes and the reference see the same values.
var rng = new Random(7);
float[] Rand(long n, float scale) => Enumerable.Range(0, (int)n).Select(_ => (float)(Half)((rng.NextDouble() * 2 - 1) * scale)).ToArray();
int cin = config.InChannels, ctx = config.CrossAttentionDim[0];
var sample = Rand((long)opts.Batch * opts.Size * opts.Size * cin, 1.5f);
var context = Rand((long)opts.Batch * opts.Context * ctx, 1.5f);
var timesteps = Enumerable.Range(0, opts.Batch).Select(i => i % 2 == 0 ? 981f : 37f).ToArray();
Write("sample.f32", sample);
Write("context.f32", context);
Write("timesteps.f32", timesteps);
File.WriteAllText(Path.Combine(opts.Work, "spec.json"), JsonSerializer.Serialize(new
{
    in_channels = config.InChannels, out_channels = config.OutChannels, block_out_channels = config.BlockOutChannels,
    down_block_types = config.DownBlockTypes, up_block_types = config.UpBlockTypes, layers_per_block = config.LayersPerBlock,
    transformer_layers_per_block = config.TransformerLayersPerBlock, heads = config.NumAttentionHeads,
    cross_attention_dim = ctx, norm_num_groups = config.NormNumGroups, norm_eps = config.NormEps,
    use_linear_projection = config.UseLinearProjection, flip_sin_to_cos = config.FlipSinToCos, freq_shift = config.FreqShift,
    batch = opts.Batch, size = opts.Size, context = opts.Context, dtypes = opts.DTypes,
}));

using var device = ComputeDevice.Open(opts.Device, log);
var ops = new IlgpuOps(device);
using var file = WeightFile.Open(weightsPath);
var component = ComponentWeights.FromFile("unet", file);
// fp16 first: the pool's peak only grows, and the fp32 run needs more.
foreach (var name in opts.DTypes.OrderBy(d => d == "fp16" ? 0 : 1))
{
    var dt = name == "fp16" ? DType.F16 : DType.F32;
    sw.Restart();
    unet.Load(component, ops, dt);
    device.Accelerator.Synchronize();
    long weights = device.Pool.BytesInUse;
    log.WriteLine($"{name}: loaded in {sw.Elapsed.TotalSeconds:F1} s; weights {Mb(unet.ParameterCount * dt.SizeInBytes())} as parameters, {Mb(weights)} in pool buffers");
    using var tx = Tensor.FromArray(device, sample, dt, opts.Batch, opts.Size, opts.Size, cin);
    using var tt = Tensor.FromArray(device, timesteps, DType.F32, opts.Batch);
    using var tc = Tensor.FromArray(device, context, dt, opts.Batch, opts.Context, ctx);
    var times = new List<double>();
    float[]? output = null;
    for (int run = 0; run < opts.Runs; run++)
    {
        sw.Restart();
        using var y = unet.Forward(ops, tx, tt, tc);
        device.Accelerator.Synchronize();
        times.Add(sw.Elapsed.TotalSeconds);
        output ??= y.ToFloatArray();
    }
    Write($"out-{name}.f32", output!);
    log.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"{name}: forward {times[0]:F3} s first (kernel compilation included), best of the rest {(times.Count > 1 ? times.Skip(1).Min() : times[0]):F3} s; " +
        $"pool peak {Mb(device.Pool.PeakBytesInUse)} (weights {Mb(weights)} + activations {Mb(device.Pool.PeakBytesInUse - weights)}), reserved {Mb(device.Pool.BytesReserved)}"));
    unet.Dispose();
    device.Pool.Trim();
}

void Write(string name, float[] data)
{
    var bytes = new byte[data.Length * 4];
    Buffer.BlockCopy(data, 0, bytes, 0, bytes.Length);
    File.WriteAllBytes(Path.Combine(opts.Work, name), bytes);
}

internal sealed record Options(string Work, string Device, string ConfigJson, int Size, int Batch, int Context, string[] DTypes, int Runs)
{
    // SD1.5's unet/config.json values; the engine's defaults cover the rest.
    private const string Sd15 = """{"cross_attention_dim": 768, "attention_head_dim": 8}""";

    public static Options Parse(string[] args)
    {
        if (args.Length == 0) throw new UsageException("usage: unet-check WORK [--device D] [--config JSON] [--size N] [--batch N] [--context N] [--dtypes fp16,fp32] [--runs N]");
        var o = new Options(args[0], "cuda", Sd15, 64, 2, 77, ["fp16", "fp32"], 3);
        for (int i = 1; i < args.Length; i += 2)
        {
            string v = i + 1 < args.Length ? args[i + 1] : throw new UsageException($"{args[i]} needs a value");
            int Int() => int.Parse(v, CultureInfo.InvariantCulture);
            o = args[i] switch
            {
                "--device" => o with { Device = v },
                "--config" => o with { ConfigJson = Merge(Sd15, v) },
                "--size" => o with { Size = Int() },
                "--batch" => o with { Batch = Int() },
                "--context" => o with { Context = Int() },
                "--dtypes" => o with { DTypes = v.Split(',') },
                "--runs" => o with { Runs = Int() },
                _ => throw new UsageException($"unknown option {args[i]}"),
            };
        }
        return o;
    }

    private static string Merge(string baseJson, string overrides)
    {
        var merged = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(baseJson)!;
        foreach (var (k, v) in JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(overrides)!) merged[k] = v;
        return JsonSerializer.Serialize(merged);
    }
}
