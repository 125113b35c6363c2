namespace StableDiffusion.Schedulers;

/// <summary>Where image-to-image sampling starts in a schedule, and how many denoising steps it runs.</summary>
/// <param name="StartIndex">The first iteration to run: noise the encoded image with
/// <see cref="IScheduler.AddNoise"/> at this index, then loop from it to the end of <see cref="IScheduler.Timesteps"/>.</param>
/// <param name="Steps">Denoising steps that will run (diffusers' returned num_inference_steps - t_start).</param>
/// <param name="Iterations">Loop iterations (model evaluations) from StartIndex to the end.</param>
public readonly record struct ImageToImagePlan(int StartIndex, int Steps, int Iterations);

/// <summary>diffusers' StableDiffusionImg2ImgPipeline.get_timesteps for an <see cref="IScheduler"/>.</summary>
public static class ImageToImage
{
    /// <summary>
    /// The partial schedule for <paramref name="strength"/> (0 to 1: how much of the schedule to run; 1 starts from
    /// pure noise). Call after <see cref="IScheduler.SetTimesteps"/>(<paramref name="steps"/>).
    /// init_timestep = min(int(steps · strength), steps); t_start = steps - init_timestep; the start iteration is
    /// t_start · order (Heun evaluates twice per step).
    /// </summary>
    /// <exception cref="UsageException">strength outside [0, 1], or so small that no step would run</exception>
    public static ImageToImagePlan Plan(IScheduler scheduler, int steps, double strength)
    {
        if (!(strength >= 0 && strength <= 1))
            throw new UsageException($"--strength must be between 0 and 1, not {strength}");
        if (steps < 1) throw new UsageException($"--steps must be at least 1, not {steps}");
        // int() in Python truncates toward zero; steps·strength is non-negative here.
        int init = Math.Min((int)(steps * strength), steps);
        int tStart = Math.Max(steps - init, 0);
        if (init == 0)
            throw new UsageException($"--strength {strength} with {steps} steps runs no denoising step; raise --strength or --steps");
        int start = tStart * scheduler.Order;
        int count = scheduler.Timesteps.Count;
        if (count == 0) throw new InvalidOperationException($"{scheduler.Name}: call SetTimesteps({steps}) before planning image-to-image");
        if (start >= count) throw new InvalidOperationException($"{scheduler.Name}: start {start} is past the {count} iterations of the schedule; was SetTimesteps called with {steps}?");
        return new ImageToImagePlan(start, steps - tStart, count - start);
    }
}
