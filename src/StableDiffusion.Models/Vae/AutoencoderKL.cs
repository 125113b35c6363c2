using StableDiffusion.Runtime;

namespace StableDiffusion.Models.Vae;

/// <summary>
/// diffusers AutoencoderKL: encoder + quant_conv give the moments of a diagonal Gaussian over latents (mean, then
/// log-variance, along channels); post_quant_conv + decoder turn latents back into an image. Images are NHWC in
/// [-1, 1]; diffusion latents are the VAE's latents times the scaling factor. Runs in the precision it was loaded
/// in (<see cref="VaeConfig.ComputeDType"/> gives fp32 for SD1.x/SD2.x); inputs of another precision are cast.
/// </summary>
public sealed class AutoencoderKL : Module
{
    public AutoencoderKL(VaeConfig config)
    {
        Config = config;
        int z = config.LatentChannels;
        Encoder = Child("encoder", new Encoder(config));
        Decoder = Child("decoder", new Decoder(config));
        QuantConv = config.UseQuantConv ? Child("quant_conv", new Conv2d(2 * z, 2 * z, 1)) : null;
        PostQuantConv = config.UsePostQuantConv ? Child("post_quant_conv", new Conv2d(z, z, 1)) : null;
    }

    public VaeConfig Config { get; }
    public Encoder Encoder { get; }
    public Decoder Decoder { get; }
    public Conv2d? QuantConv { get; }
    public Conv2d? PostQuantConv { get; }

    public int LatentChannels => Config.LatentChannels;

    /// <summary>The precision the weights were loaded in, which the VAE computes in.</summary>
    public DType DType => ComputeDType ?? throw new InvalidOperationException("VAE used before its weights were loaded");

    /// <summary>
    /// image [N, H, W, in] in [-1, 1], H and W multiples of <see cref="VaeConfig.DownscaleFactor"/> →
    /// moments [N, H/f, W/f, 2 × latent]: the mean in the first latent channels, the log-variance in the rest.
    /// </summary>
    public Tensor Encode(IOps ops, Tensor image)
    {
        int f = Config.DownscaleFactor;
        if (image.Rank != 4 || image.Dim(3) != Config.InChannels || image.Dim(1) % f != 0 || image.Dim(2) % f != 0)
            throw new UsageException($"VAE encode: image {image} must be [N, H, W, {Config.InChannels}] with H and W multiples of {f}");
        using var cast = CastIn(ops, image);
        var h = Encoder.Forward(ops, cast ?? image);
        return QuantConv is null ? h : h.Then(t => QuantConv.Forward(ops, t));
    }

    /// <summary>The latent distribution's mean, which is also its mode: moments[..., :latent].</summary>
    public Tensor Mode(IOps ops, Tensor moments) => ops.SliceLast(CheckMoments(moments), 0, LatentChannels);

    /// <summary>The latent distribution's log-variance (unclamped): moments[..., latent:].</summary>
    public Tensor LogVariance(IOps ops, Tensor moments) => ops.SliceLast(CheckMoments(moments), LatentChannels, LatentChannels);

    /// <summary>VAE latents → diffusion latents (× scaling_factor).</summary>
    /// <summary>
    /// A draw from the latent distribution: mean + exp(0.5 * clamp(logvar, -30, 20)) * noise, with noise a standard
    /// normal tensor of the latent's shape (diffusers' DiagonalGaussianDistribution.sample).
    /// </summary>
    public Tensor Sample(IOps ops, Tensor moments, Tensor noise)
    {
        using var mean = Mode(ops, moments);
        if (!noise.Shape.SequenceEqual(mean.Shape) || noise.DType != mean.DType)
            throw new UsageException($"vae sample: noise {noise} must match the latent mean {mean}");
        using var logvar = LogVariance(ops, moments);
        using var clamped = ops.Clamp(logvar, -30f, 20f);
        using var half = ops.Scale(clamped, 0.5f);
        using var std = ops.Activate(half, Activation.Exp);
        using var scaledNoise = ops.Mul(std, noise);
        return ops.Add(mean, scaledNoise);
    }

    public Tensor ScaleLatents(IOps ops, Tensor latents) => ops.Scale(latents, Config.ScalingFactor);

    /// <summary>Diffusion latents → VAE latents (÷ scaling_factor).</summary>
    public Tensor UnscaleLatents(IOps ops, Tensor latents) => ops.Scale(latents, 1f / Config.ScalingFactor);

    /// <summary>The diffusion latents of an image, deterministically: the mode of its latent distribution, scaled.</summary>
    public Tensor EncodeToLatents(IOps ops, Tensor image)
    {
        using var moments = Encode(ops, image);
        using var mean = Mode(ops, moments);
        return ScaleLatents(ops, mean);
    }

    /// <summary>
    /// latents [N, h, w, latent] → image [N, h·f, w·f, out], roughly in [-1, 1] (not clamped). With
    /// <paramref name="scaled"/> the latents are diffusion latents and are divided by the scaling factor first.
    /// </summary>
    public Tensor Decode(IOps ops, Tensor latents, bool scaled = true)
    {
        if (latents.Rank != 4 || latents.Dim(3) != LatentChannels)
            throw new UsageException($"VAE decode: latents {latents} must be [N, h, w, {LatentChannels}]");
        using var cast = CastIn(ops, latents);
        using var z = scaled ? UnscaleLatents(ops, cast ?? latents) : null;
        using var q = PostQuantConv?.Forward(ops, z ?? cast ?? latents);
        return Decoder.Forward(ops, q ?? z ?? cast ?? latents);
    }

    private Tensor? CastIn(IOps ops, Tensor x) =>
        x.DType == DType ? null
        : x.DType is DType.F32 or DType.F16 ? ops.Cast(x, DType)
        : throw new UsageException($"VAE: input {x} must be fp32 or fp16");

    private Tensor CheckMoments(Tensor m) =>
        m.Rank == 4 && m.Dim(3) == 2 * LatentChannels ? m
        : throw new UsageException($"VAE: moments {m} must be [N, h, w, {2 * LatentChannels}]");
}
