using StableDiffusion.IO;
using StableDiffusion.Models;
using StableDiffusion.TestSupport;
using Xunit.Abstractions;

namespace StableDiffusion.Pipelines.Tests;

/// <summary>
/// SD2.x single files: ε or v decided by running the UNet once (stable-diffusion.cpp's rule), one rule for
/// <c>sd schedule</c> and <c>sd generate</c>, and <c>--prediction-type</c> over it. The random sd21-tiny file predicts
/// small values around 0 (mean(out − 0.5) near −0.5: ε); a copy whose conv_out is zeroed with bias −2 returns −2
/// everywhere (mean −2.5: v), so both sides of the threshold are exercised. The UNet runs on the C# CPU backend.
/// </summary>
public class PredictionProbeTests : IDisposable
{
    private readonly ITestOutputHelper output;
    private readonly TempFolder temp = new("sd-prediction-tests");
    private readonly string eps, v;

    public PredictionProbeTests(ITestOutputHelper output)
    {
        this.output = output;
        eps = Path.Combine(temp.Path, "sd21-tiny.safetensors");
        v = Path.Combine(temp.Path, "sd21-tiny-v.safetensors");
        RandomModel.Write(Presets.Sd21Tiny, RandomModelFormat.SingleFile, WeightDType.F32, 11, eps);
        using var file = WeightFile.Open(eps);
        SafetensorsWriter.Write(v, file.Tensors.Select(t => SafetensorsEntry.FromBytes(t.Name, t.DType, t.Shape, t.Name switch
        {
            "model.diffusion_model.out.2.weight" => new byte[t.ByteLength],
            "model.diffusion_model.out.2.bias" => Floats(-2f, t.ElementCount),
            _ => file.Bytes(t).ToArray(),
        })));
    }

    public void Dispose() => temp.Dispose();

    private static byte[] Floats(float value, long count) =>
        System.Runtime.InteropServices.MemoryMarshal.AsBytes(Enumerable.Repeat(value, (int)count).ToArray().AsSpan()).ToArray();

    private (int Code, string Out, string Err) Sd(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Cli.Cli.Run(args, o, e);
        output.WriteLine($"sd {string.Join(" ", args)}\n→ {code}\n{o}{e}");
        return (code, o.ToString(), e.ToString());
    }

    private (int Code, string Out, string Err) Schedule(string model, params string[] more) =>
        Sd(["schedule", "--model", model, "--sampler", "euler", "--steps", "4", "--schedule", "karras", .. more]);

    [Fact]
    public void The_probe_tells_epsilon_from_v()
    {
        using var device = Runtime.ComputeDevice.Open("cpu");
        var ops = Kernels.Backends.For(device);
        foreach (var (path, want) in new[] { (eps, PredictionType.Epsilon), (v, PredictionType.V) })
        {
            // A single file gets the full-size built-in configs; the tiny UNet is built from its preset instead.
            using var source = ModelSource.Open(path);
            Assert.True(ModelConfigs.NeedsPrediction(source));
            using var unet = new Models.Unet.UNet2DConditionModel(Presets.Sd21Tiny.Unet());
            unet.Load(source.Component("unet")!, ops, Runtime.DType.F32);
            double mean = PredictionProbe.Measure(unet, ops, Runtime.DType.F32);
            output.WriteLine($"{Path.GetFileName(path)}: mean(out - in) = {mean:F4}");
            Assert.Equal(want, PredictionProbe.Detect(unet, ops, Runtime.DType.F32));

            // What ModelConfigs makes of the verdict: the scheduler config and the default size.
            var configs = ModelConfigs.For(source, null, _ => want);
            Assert.Equal(want, configs.Prediction);
            Assert.Equal(want == PredictionType.V ? 768 : 512, configs.DefaultSize);
            Assert.Contains(want == PredictionType.V ? "\"v_prediction\"" : "\"epsilon\"", configs.SchedulerConfigJson);
        }
        Assert.Equal("SD2.x file: ε-prediction (512-base)", PredictionProbe.Notice(PredictionType.Epsilon));
        Assert.Equal("SD2.x file: v-prediction (768-v)", PredictionProbe.Notice(PredictionType.V));
    }

    [Fact]
    public void Schedule_uses_the_configs_generate_uses()
    {
        using var source = ModelSource.Open(eps);
        foreach (var (word, p) in new[] { ("epsilon", PredictionType.Epsilon), ("v", PredictionType.V) })
        {
            var configs = ModelConfigs.For(source, p);
            var (code, json, err) = Schedule(eps, "--prediction-type", word);
            Assert.True(code == 0, err);
            Assert.Contains(configs.SchedulerSource, err);
            Assert.Contains("built-in sd2 defaults", err);
            Assert.DoesNotContain("1.5", err);
            var s = Schedulers.Samplers.Create("euler", Schedulers.SchedulerConfig.Parse(configs.SchedulerConfigJson, "test"), Schedulers.SigmaSchedule.Karras);
            s.SetTimesteps(4);
            Assert.StartsWith($"{{\"timesteps\": [{string.Join(", ", s.Timesteps.Select(t => ((float)t).ToString("R", System.Globalization.CultureInfo.InvariantCulture)))}]", json);
        }
    }

    [Fact]
    public void Prediction_type_overrides_the_probe_and_the_default_size_follows()
    {
        using var source = ModelSource.Open(eps);
        var forced = ModelConfigs.For(source, PredictionType.V, _ => throw new InvalidOperationException("probed although given"));
        Assert.Equal(PredictionType.V, forced.Prediction);
        Assert.Equal(768, forced.DefaultSize);
        Assert.Contains("\"v_prediction\"", forced.SchedulerConfigJson);
        Assert.Equal(512, ModelConfigs.For(source, PredictionType.Epsilon).DefaultSize);
        // Without a prediction type and no way to detect it, a clear error rather than a guess.
        var e = Assert.Throws<ConfigException>(() => ModelConfigs.For(source));
        Assert.Contains("--prediction-type epsilon or v", e.Message);

        var (code, _, err) = Schedule(v, "--prediction-type", "epsilon");
        Assert.True(code == 0, err);
        Assert.DoesNotContain("SD2.x file:", err); // no probe run
        Assert.Contains("ε-prediction", err);
        Assert.Equal(2, Schedule(eps, "--prediction-type", "x0").Code);
    }

    [Fact]
    public void A_diffusers_folder_without_scheduler_config_takes_the_override()
    {
        var folder = Path.Combine(temp.Path, "folder");
        RandomModel.Write(Presets.Sd21Tiny, RandomModelFormat.Diffusers, WeightDType.F32, 11, folder);
        Directory.Delete(Path.Combine(folder, "scheduler"), recursive: true);
        using var source = ModelSource.Open(folder);
        Assert.False(ModelConfigs.NeedsPrediction(source));
        Assert.Equal(PredictionType.V, ModelConfigs.For(source).Prediction); // stable-diffusion-2-1's, as before
        var eps = ModelConfigs.For(source, PredictionType.Epsilon);
        Assert.Equal(PredictionType.Epsilon, eps.Prediction);
        Assert.Contains("ε-prediction as asked", eps.SchedulerSource); // a folder's default size is its UNet's sample_size

        var (code, _, err) = Schedule(folder, "--prediction-type", "epsilon");
        Assert.True(code == 0, err);
        Assert.Contains("ε-prediction as asked", err);
    }
}
