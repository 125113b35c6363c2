using StableDiffusion.Pipelines.Images;

namespace StableDiffusion.Pipelines.Tests;

/// <summary>The SDXL fields of A1111's infotext: a replaced VAE (VAE hash, VAE) after Model, the refiner's after the extra networks.</summary>
public sealed class SdxlInfotextTests
{
    [Fact]
    public void Vae_and_refiner_fields_sit_where_A1111_writes_them()
    {
        // A1111 1.6+'s layout for SDXL base + refiner with a VAE file; the hashes are inputs (31e35c80fc is sd_xl_base_1.0.safetensors' own).
        Assert.Equal(
            "a lighthouse at dusk\nNegative prompt: blurry\n" +
            "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 1024x1024, Model hash: 31e35c80fc, " +
            "Model: sd_xl_base_1.0, VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, Lora hashes: \"ink: 0123456789ab\", " +
            "Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8",
            Infotext.Format(new GenerationParameters
            {
                Prompt = "a lighthouse at dusk", NegativePrompt = "blurry", Steps = 30, Sampler = "dpmpp_2m", Schedule = "karras", CfgScale = 7f,
                Seed = 1234, Width = 1024, Height = 1024, ModelHash = "31e35c80fc", Model = "sd_xl_base_1.0",
                VaeHash = "235745af8d", Vae = "sdxl_vae.safetensors", LoraHashes = "ink: 0123456789ab",
                Refiner = "sd_xl_refiner_1.0 [7440042bbd]", RefinerSwitchAt = 0.8f,
            }));
    }
}
