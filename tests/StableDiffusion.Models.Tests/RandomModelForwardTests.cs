using StableDiffusion.IO;
using StableDiffusion.Models.Clip;
using StableDiffusion.Models.Tests.Clip;
using StableDiffusion.Models.Unet;
using StableDiffusion.Models.Vae;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using Xunit.Abstractions;

namespace StableDiffusion.Models.Tests;

/// <summary>
/// The tiny random models, written as real files in both formats, open through <see cref="ModelSource"/> and bind to
/// the models built from their configs (every declared tensor present with its shape, every stored one consumed).
/// Both formats of one seed are the same model, byte for byte under either naming, so one of them per preset is
/// loaded onto the ILGPU CPU accelerator and run: sd15-tiny from its diffusers folder (fp16 files), sd21-tiny from its
/// single file (fp32, OpenCLIP names). The two presets share their VAE config, so only sd15-tiny runs it. Inputs are
/// small (8 tokens, 2x2 latents, 16x16 images) and each model is uploaded once: the CPU accelerator pays for every
/// launch, and the OIHW → OHWI transposes of the convolution weights make loading a tiny UNet take seconds.
/// </summary>
public class RandomModelForwardTests(ITestOutputHelper output)
{
    private static readonly int[] Cat = [49406, 320, 1125, 539, 320, 2368, 49407, 49407]; // <start> a photo of a cat <end> <pad>
    private static readonly int[] Dog = [49406, 320, 1125, 539, 320, 1929, 49407, 49407]; // ... of a dog

    private sealed class Models(ModelPreset preset, ClipTextConfig te, UNetConfig unet, VaeConfig vae) : IDisposable
    {
        public ClipTextModel TextEncoder { get; } = new(te);
        public UNet2DConditionModel Unet { get; } = new(unet);
        public AutoencoderKL Vae { get; } = new(vae);
        public ModelPreset Preset => preset;

        /// <summary>Loads every component: each declared tensor bound, each stored one consumed.</summary>
        public void Load(ModelSource source, IOps ops, bool vae)
        {
            TextEncoder.Load(source.Require("text_encoder"), ops, DType.F32);
            Unet.Load(source.Require("unet"), ops, DType.F32);
            if (vae) Vae.Load(source.Require("vae"), ops, DType.F32);
        }

        /// <summary>The prompt's hidden states and the UNet's noise prediction for fixed 2x2 latents at t = 500.</summary>
        public (float[] Text, float[] Noise) Denoise(IOps ops, int[] prompt)
        {
            using var ids = DeviceTensor.FromInts(ops.Device, prompt, 1, prompt.Length);
            using var context = TextEncoder.Forward(ops, ids);
            using var latents = DeviceTensor.FromArray(ops.Device, Random(2 * 2 * 4, 1), DType.F32, 1, 2, 2, 4);
            using var t = DeviceTensor.FromArray(ops.Device, [500f], DType.F32, 1);
            using var noise = Unet.Forward(ops, latents, t, context);
            Assert.Equal([1, prompt.Length, TextEncoder.Config.HiddenSize], context.ShapeArray());
            Assert.Equal([1, 2, 2, 4], noise.ShapeArray());
            return (context.ToFloatArray(), noise.ToFloatArray());
        }

        public void Dispose()
        {
            TextEncoder.Dispose();
            Unet.Dispose();
            Vae.Dispose();
        }
    }

    private static float[] Random(int n, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(r.NextDouble() * 2 - 1)).ToArray();
    }

    private static double Std(float[] a)
    {
        double mean = a.Average(v => (double)v);
        return Math.Sqrt(a.Average(v => (v - mean) * (v - mean)));
    }

    private static double MeanAbsDiff(float[] a, float[] b) => a.Zip(b, (x, y) => Math.Abs((double)x - y)).Average();

    [Theory]
    [InlineData("sd15-tiny", WeightDType.F16, ModelFamily.Sd1, RandomModelFormat.Diffusers, true)]
    [InlineData("sd21-tiny", WeightDType.F32, ModelFamily.Sd2, RandomModelFormat.SingleFile, false)]
    public void Tiny_models_load_in_both_formats_and_run(string name, WeightDType dtype, ModelFamily family, RandomModelFormat run, bool runVae)
    {
        var preset = Presets.Find(name)!;
        var ops = Devices.Ops("test");
        using var dir = new TempFolder();
        var folder = Path.Combine(dir.Path, "diffusers");
        var single = Path.Combine(dir.Path, "single.safetensors");
        RandomModel.Write(preset, RandomModelFormat.Diffusers, dtype, 11, folder);
        RandomModel.Write(preset, RandomModelFormat.SingleFile, dtype, 11, single);
        var clock = System.Diagnostics.Stopwatch.StartNew();

        using var fromFolder = ModelSource.Open(folder);
        using var fromFile = ModelSource.Open(single);
        Assert.Equal(family, fromFolder.Family);
        Assert.Equal(family, fromFile.Family);
        Assert.Empty(fromFolder.Unrecognised);
        Assert.Empty(fromFile.Unrecognised);
        Assert.Single(fromFolder.Ignored); // position_ids
        // position_ids (SD1) or OpenCLIP's head and last layer (SD2), 12 DDPM buffers, model_ema.decay and num_updates
        Assert.Equal(family == ModelFamily.Sd1 ? 15 : 2 + 12 + 14, fromFile.Ignored.Count);

        // The same model under either naming: every diffusers tensor has the same bytes in the single file (the
        // fused OpenCLIP q/k/v split apart, the VAE's 1x1-convolution attention squeezed, LDM block order undone).
        foreach (var component in new[] { "text_encoder", "unet", "vae" })
        {
            var a = fromFolder.Require(component);
            var b = fromFile.Require(component);
            Assert.Equal(a.TensorCount, b.TensorCount);
            foreach (var t in a.Tensors)
                Assert.True(t.Bytes().SequenceEqual(b.Find(t.Name)!.Bytes()), $"{component}/{t.Name} differs between the formats");
        }

        // The models are built from the folder's own config files, as a pipeline would; they bind both formats.
        using var models = new Models(preset, ClipTextConfig.Load(Path.Combine(folder, "text_encoder", "config.json")),
            UNetConfig.Load(Path.Combine(folder, "unet", "config.json")), VaeConfig.Load(Path.Combine(folder, "vae", "config.json")));
        foreach (var source in new[] { fromFolder, fromFile })
        {
            Assert.Equal(36, source.Require("text_encoder").Bind(models.TextEncoder.ExpectedLayout()).Count);
            Assert.Equal(208, source.Require("unet").Bind(models.Unet.ExpectedLayout()).Count);
            Assert.Equal(180, source.Require("vae").Bind(models.Vae.ExpectedLayout()).Count);
        }

        models.Load(run == RandomModelFormat.Diffusers ? fromFolder : fromFile, ops, runVae);
        var (text, noise) = models.Denoise(ops, Cat);
        var (_, dogNoise) = models.Denoise(ops, Dog);

        var outputs = new List<(string Part, float[] Values)> { ("text", text), ("noise", noise) };
        if (runVae)
        {
            using var latents = DeviceTensor.FromArray(ops.Device, noise, DType.F32, 1, 2, 2, 4);
            using var image = models.Vae.Decode(ops, latents);
            Assert.Equal([1, 16, 16, 3], image.ShapeArray());
            using var picture = DeviceTensor.FromArray(ops.Device, Random(16 * 16 * 3, 2), DType.F32, 1, 16, 16, 3);
            using var moments = models.Vae.Encode(ops, picture);
            Assert.Equal([1, 2, 2, 8], moments.ShapeArray());
            outputs.Add(("image", image.ToFloatArray()));
            outputs.Add(("moments", moments.ToFloatArray()));
        }
        output.WriteLine($"{name}: loads and forwards took {clock.Elapsed.TotalSeconds:F1} s");

        // Every part matters (DESIGN.md §8): outputs are finite and of unit-ish scale, and the prompt moves the noise.
        foreach (var (part, values) in outputs)
        {
            Assert.All(values, v => Assert.True(float.IsFinite(v), $"{part}: {v}"));
            double std = Std(values);
            output.WriteLine($"{name} {part}: std {std:F3}");
            Assert.InRange(std, 0.05, 20);
        }
        double promptEffect = MeanAbsDiff(noise, dogNoise);
        output.WriteLine($"{name}: another prompt moves the noise prediction by {promptEffect:F4} on average");
        Assert.True(promptEffect > 1e-3 * Std(noise), $"the prompt has no effect on the UNet ({promptEffect})");
    }
}
