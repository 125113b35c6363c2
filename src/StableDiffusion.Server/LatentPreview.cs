using StableDiffusion.Pipelines;
using StableDiffusion.Pipelines.Images;

namespace StableDiffusion.Server;

/// <summary>
/// A live preview without the VAE: each latent pixel's 4 channels mapped linearly to RGB (the "approximate cheap"
/// preview of SD front-ends; a least-squares fit of SD1.x's VAE decoder output colour to its latents), at latent
/// resolution (1/8 of the image). Costs microseconds per step; only the first image of a batch is shown.
/// </summary>
public static class LatentPreview
{
    // rows: latent channels 0..3; columns: R, G, B.
    private static readonly float[,] Factors =
    {
        { 0.298f, 0.207f, 0.208f },
        { 0.187f, 0.286f, 0.173f },
        { -0.158f, 0.189f, 0.264f },
        { -0.184f, -0.271f, -0.473f },
    };

    public static RgbImage? Image(float[] latents, int height, int width, int channels)
    {
        if (channels != 4 || latents.Length < height * width * channels) return null;
        var pixels = new byte[height * width * 3];
        for (int p = 0; p < height * width; p++)
        for (int c = 0; c < 3; c++)
        {
            float v = 0;
            for (int z = 0; z < 4; z++) v += latents[p * 4 + z] * Factors[z, c];
            pixels[p * 3 + c] = (byte)Math.Clamp((v + 1f) * 127.5f, 0f, 255f);
        }
        return new RgbImage(width, height, pixels);
    }

    /// <summary>The preview as PNG bytes; null for latents that are not SD's 4 channels.</summary>
    public static byte[]? Png(StepProgress p, int channels)
    {
        if (p.Latents is null || p.LatentHeight <= 0 || p.LatentWidth <= 0) return null;
        var image = Image(p.Latents, p.LatentHeight, p.LatentWidth, channels);
        return image is null ? null : ImageFiles.EncodePng(image, null);
    }
}
