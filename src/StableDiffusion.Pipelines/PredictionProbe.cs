using StableDiffusion.IO;
using StableDiffusion.Models.Unet;
using StableDiffusion.Runtime;

namespace StableDiffusion.Pipelines;

/// <summary>What a UNet's output is: the noise (ε) or the velocity v = √ᾱ·ε − √(1−ᾱ)·x₀.</summary>
public enum PredictionType { Epsilon, V }

public static class PredictionTypes
{
    /// <summary>--prediction-type's words: epsilon or v.</summary>
    public static PredictionType Parse(string text) => text switch
    {
        "epsilon" => PredictionType.Epsilon,
        "v" => PredictionType.V,
        _ => throw new UsageException($"--prediction-type '{text}': use epsilon or v"),
    };

    public static string Describe(this PredictionType p) => p == PredictionType.V ? "v-prediction" : "ε-prediction";
}

/// <summary>
/// Tells an SD2.x 512-base file (ε) from a 768-v one (v): they have the same tensors, so the UNet is run once and
/// judged by stable-diffusion.cpp's rule (A1111's too): latents all 0.5 (1×4×8×8), context all 0.5 (1×2×dim),
/// timestep 999, and v-prediction if mean(output − latents) &lt; −1. At t = 999 the latents are almost pure noise:
/// an ε model returns about them (mean near 0.5 − 0.5), a v model about −x (mean near −1). Inpainting UNets get
/// their 5 extra channels as zeros.
/// </summary>
public static class PredictionProbe
{
    /// <summary>The line the command line shows for a detected type.</summary>
    public static string Notice(PredictionType p) =>
        p == PredictionType.V ? "SD2.x file: v-prediction (768-v)" : "SD2.x file: ε-prediction (512-base)";

    /// <summary>mean(output − latents) of the probe call; below −1 means v-prediction.</summary>
    public static double Measure(UNet2DConditionModel unet, IOps ops, DType dtype)
    {
        const int side = 8, latentChannels = 4, tokens = 2;
        int c = unet.Config.InChannels, dim = unet.Config.CrossAttentionDim[0];
        var input = new float[side * side * c];
        for (int i = 0; i < side * side; i++)
        for (int k = 0; k < latentChannels; k++)
            input[i * c + k] = 0.5f; // channels-last; any concat channels stay 0
        using var x = Tensor.FromArray(ops.Device, input, dtype, 1, side, side, c);
        using var t = Tensor.FromArray(ops.Device, [999f], DType.F32, 1);
        using var context = Tensor.FromArray(ops.Device, Enumerable.Repeat(0.5f, tokens * dim).ToArray(), dtype, 1, tokens, dim);
        using var y = unet.Forward(ops, x, t, context);
        double sum = 0;
        var output = y.ToFloatArray();
        foreach (var v in output) sum += v - 0.5;
        return sum / output.Length;
    }

    public static PredictionType Detect(UNet2DConditionModel unet, IOps ops, DType dtype) =>
        Measure(unet, ops, dtype) < -1 ? PredictionType.V : PredictionType.Epsilon;

    /// <summary>
    /// The configurations of <paramref name="source"/>: <see cref="ModelConfigs.For"/> with the prediction type asked
    /// for, or, for an SD2.x single file without one, detected with its UNet loaded on <paramref name="ops"/> (reported
    /// through <paramref name="notice"/> and handed back in <paramref name="loaded"/> so that it need not load twice).
    /// </summary>
    public static ModelConfigs Resolve(ModelSource source, IOps ops, DType dtype, PredictionType? requested, Action<string>? notice,
        out UNet2DConditionModel? loaded)
    {
        UNet2DConditionModel? unet = null;
        try
        {
            var configs = ModelConfigs.For(source, requested, config =>
            {
                unet = new UNet2DConditionModel(config);
                unet.Load(source.Component("unet") ?? throw new WeightsException($"{source.Path}: has no unet weights"), ops, dtype);
                var p = Detect(unet, ops, dtype);
                notice?.Invoke(Notice(p));
                return p;
            });
            loaded = unet;
            return configs;
        }
        catch
        {
            unet?.Dispose();
            throw;
        }
    }
}
