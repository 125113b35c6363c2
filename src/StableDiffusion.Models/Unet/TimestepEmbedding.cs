using StableDiffusion.Runtime;

namespace StableDiffusion.Models.Unet;

/// <summary>
/// diffusers Timesteps (time_proj): the sinusoidal embedding of fp32 timesteps, no parameters. Computed in fp32 like
/// diffusers (arguments reach ~1000 rad, where fp16 would lose the phase), then stored in the model's dtype.
/// </summary>
public sealed class Timesteps(int channels, bool flipSinToCos, float downscaleFreqShift) : Module
{
    public int Channels { get; } = channels;
    public bool FlipSinToCos { get; } = flipSinToCos;
    public float DownscaleFreqShift { get; } = downscaleFreqShift;

    /// <summary>timesteps fp32 [N] → [N, channels] in <paramref name="dtype"/>.</summary>
    public Tensor Forward(IOps ops, Tensor timesteps, DType dtype) =>
        ops.TimestepEmbedding(timesteps, Channels, dtype, FlipSinToCos, DownscaleFreqShift);
}

/// <summary>diffusers TimestepEmbedding (time_embedding): linear_1 → SiLU → linear_2.</summary>
public sealed class TimestepEmbedding : Module
{
    public TimestepEmbedding(int inChannels, int timeEmbedDim)
    {
        Linear1 = Child("linear_1", new Linear(inChannels, timeEmbedDim));
        Linear2 = Child("linear_2", new Linear(timeEmbedDim, timeEmbedDim));
    }

    public Linear Linear1 { get; }
    public Linear Linear2 { get; }

    public Tensor Forward(IOps ops, Tensor x)
    {
        using var h = Linear1.Forward(ops, x);
        using var a = ops.Activate(h, Activation.Silu);
        return Linear2.Forward(ops, a);
    }
}
