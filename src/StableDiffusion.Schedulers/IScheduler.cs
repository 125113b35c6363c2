namespace StableDiffusion.Schedulers;

/// <summary>
/// A diffusion sampler in diffusers' shape: configured from scheduler_config.json, <see cref="SetTimesteps"/> fixes
/// the schedule, then the pipeline runs
/// <code>
/// x = initial noise * InitNoiseSigma
/// for i in 0..Timesteps.Count-1:
///     eps = unet(ScaleModelInput(x, i), Timesteps[i], ...)   // with classifier-free guidance applied by the caller
///     x = Step(eps, i, x, noise)
/// </code>
/// Latents are host float arrays (the pipeline moves them between device and host once per step: a 512² image has
/// 16,384 latent values per sample). Arithmetic follows diffusers' order so results match its published numbers.
/// </summary>
public interface IScheduler
{
    /// <summary>The canonical short name (euler_a, dpmpp_2m, ...).</summary>
    string Name { get; }

    /// <summary>Sets the schedule for <paramref name="steps"/> denoising steps.</summary>
    void SetTimesteps(int steps);

    /// <summary>The model's timestep per loop iteration (fractional for some sigma-space samplers; Heun repeats them).</summary>
    IReadOnlyList<double> Timesteps { get; }

    /// <summary>The sigmas the sampler walks, final 0 included; empty for timestep-space samplers (DDIM, PNDM, LCM, ...).</summary>
    IReadOnlyList<double> Sigmas { get; }

    /// <summary>Standard deviation of the initial noise (1 for timestep-space samplers).</summary>
    double InitNoiseSigma { get; }

    /// <summary>
    /// Model evaluations per denoising step (diffusers' <c>scheduler.order</c>): 2 for Heun, else 1. Image-to-image
    /// needs it to find where a partial schedule starts (<see cref="ImageToImage"/>). Defaults to 1 so that other
    /// implementations (test doubles) need not declare it.
    /// </summary>
    int Order => 1;

    /// <summary>The model input for iteration <paramref name="index"/> (scaled for sigma-space samplers; else the sample).</summary>
    float[] ScaleModelInput(float[] sample, int index);

    /// <summary>
    /// One sampler update from the model output of iteration <paramref name="index"/>. <paramref name="noise"/> returns a
    /// fresh standard-normal array of the sample's length; only stochastic samplers call it, in diffusers' order.
    /// </summary>
    float[] Step(float[] modelOutput, int index, float[] sample, Func<float[]>? noise = null);

    /// <summary>
    /// Noises a clean sample to the level of iteration <paramref name="index"/> (image-to-image starts there).
    /// </summary>
    float[] AddNoise(float[] original, float[] noise, int index);
}
