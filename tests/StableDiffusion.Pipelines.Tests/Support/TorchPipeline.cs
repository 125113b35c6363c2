using StableDiffusion.IO;
using StableDiffusion.Schedulers;
using StableDiffusion.TestSupport;
using StableDiffusion.TestSupport.Torch;
using TorchSharp;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.Pipelines.Tests.Support;

/// <summary>
/// The tiny model's pipeline written again with libtorch in float64, NCHW, as diffusers runs it: the libtorch CLIP,
/// UNet and VAE references (TestSupport/Torch) on the same weight files, noise from torch.randn on a seeded
/// torch.Generator, classifier-free guidance on a batch of two, and the Euler update written out here. Only the
/// schedule (timesteps and sigmas) comes from the sampler under test.
/// </summary>
public sealed class TorchPipeline : IDisposable
{
    private readonly WeightFile unetFile, vaeFile, clipFile;
    private readonly TorchUNet unet;
    private readonly TorchVae vae;
    private readonly TorchClip clip;

    public TorchPipeline(TinyModel model)
    {
        unetFile = model.OpenWeights("unet");
        vaeFile = model.OpenWeights("vae");
        clipFile = model.OpenWeights("text_encoder");
        unet = new TorchUNet(TinyModel.Unet, name => TestWeights.Torch(unetFile, name));
        vae = new TorchVae(name => TestWeights.Torch(vaeFile, name), TinyModel.VaeWidths, TinyModel.VaeLayers, TinyModel.VaeGroups, TinyModel.ScalingFactor);
        clip = new TorchClip(TinyModel.TextEncoder, name => TestWeights.Torch(clipFile, name));
    }

    /// <summary>[uncond, cond] hidden states [2, 77, 32] of two id rows.</summary>
    public TorchTensor Context(int[] negative, int[] prompt) => clip.Forward([.. negative, .. prompt], 2, negative.Length);

    /// <summary>Euler with guidance from iteration <paramref name="start"/> on: x ← x + ε̂ · (σ_{i+1} − σ_i).</summary>
    public TorchTensor Denoise(TorchTensor latents, IScheduler scheduler, int start, TorchTensor context, double guidance)
    {
        var sigmas = scheduler.Sigmas;
        for (int i = start; i < scheduler.Timesteps.Count; i++)
        {
            double sigma = sigmas[i];
            var input = latents / Math.Sqrt(sigma * sigma + 1);
            float t = (float)scheduler.Timesteps[i];
            var eps = unet.Forward(torch.cat([input, input], 0), [t, t], context).chunk(2, 0);
            var guided = eps[0] + guidance * (eps[1] - eps[0]);
            latents = latents + guided * (sigmas[i + 1] - sigma);
        }
        return latents;
    }

    /// <summary>The image latents img2img starts from: (mean + std · randn) · scaling factor, noise from the generator.</summary>
    public TorchTensor EncodeSample(TorchTensor imageNchw, torch.Generator generator)
    {
        var moments = vae.Encode(imageNchw);
        var mean = moments[.., ..4];
        var std = torch.exp(0.5 * torch.clamp(moments[.., 4..], -30, 20));
        var eps = torch.randn(mean.shape, generator: generator).to_type(torch.ScalarType.Float64);
        return (mean + std * eps) * TinyModel.ScalingFactor;
    }

    public TorchTensor Decode(TorchTensor latents) => vae.Decode(latents);

    public void Dispose()
    {
        unetFile.Dispose();
        vaeFile.Dispose();
        clipFile.Dispose();
    }
}
