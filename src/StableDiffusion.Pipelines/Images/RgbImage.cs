using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;

namespace StableDiffusion.Pipelines.Images;

/// <summary>
/// 8-bit RGB pixels, row-major, three bytes per pixel: what a PNG holds and what the pipeline exchanges with files.
/// The conversions to and from tensors follow diffusers' VaeImageProcessor in float32, so an image round-trips as it
/// does there.
/// </summary>
public sealed class RgbImage
{
    public RgbImage(int width, int height, byte[] pixels)
    {
        if (width <= 0 || height <= 0) throw new ArgumentOutOfRangeException(nameof(width), $"image size {width}x{height}");
        if (pixels.Length != (long)width * height * 3)
            throw new ArgumentException($"{pixels.Length} bytes do not hold a {width}x{height} RGB image", nameof(pixels));
        Width = width;
        Height = height;
        Pixels = pixels;
    }

    public int Width { get; }
    public int Height { get; }

    /// <summary>R, G, B per pixel, rows top to bottom.</summary>
    public byte[] Pixels { get; }

    /// <summary>
    /// One image of a decoder output [H, W, 3] (channels-last, about [-1, 1]) → pixels: (x / 2 + 0.5) clamped to
    /// [0, 1], times 255, rounded half to even (diffusers' postprocess and numpy_to_pil).
    /// </summary>
    public static RgbImage FromTensor(ReadOnlySpan<float> hwc, int width, int height)
    {
        if (hwc.Length != width * height * 3)
            throw new ArgumentException($"{hwc.Length} values are not a {width}x{height}x3 image", nameof(hwc));
        var pixels = new byte[hwc.Length];
        for (int i = 0; i < pixels.Length; i++)
        {
            float v = Math.Clamp(hwc[i] / 2f + 0.5f, 0f, 1f); // NaN stays NaN and becomes 0 below
            pixels[i] = (byte)MathF.Round(float.IsNaN(v) ? 0f : v * 255f);
        }
        return new RgbImage(width, height, pixels);
    }

    /// <summary>Pixels → [H, W, 3] in [-1, 1]: 2 · (p / 255) − 1 (diffusers' preprocess and normalize).</summary>
    public float[] ToTensor()
    {
        var x = new float[Pixels.Length];
        for (int i = 0; i < x.Length; i++) x[i] = 2f * (Pixels[i] / 255f) - 1f;
        return x;
    }

    /// <summary>
    /// An inpainting mask [H, W] from this image: grey levels as PIL's convert("L") computes them (ITU-R 601-2 luma in
    /// 16-bit fixed point), then binarised at one half: 1 where the image is to be repainted (white), 0 where it is kept.
    /// </summary>
    public float[] ToMask()
    {
        var mask = new float[Width * Height];
        for (int i = 0; i < mask.Length; i++)
        {
            int r = Pixels[3 * i], g = Pixels[3 * i + 1], b = Pixels[3 * i + 2];
            int luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
            mask[i] = luma / 255f < 0.5f ? 0f : 1f;
        }
        return mask;
    }

    /// <summary>This image at another size, Lanczos-3 resampled (diffusers resizes with PIL's LANCZOS filter).</summary>
    public RgbImage Resize(int width, int height)
    {
        if (width == Width && height == Height) return this;
        using var image = ToImageSharp();
        image.Mutate(c => c.Resize(width, height, KnownResamplers.Lanczos3));
        return FromImageSharp(image);
    }

    internal Image<Rgb24> ToImageSharp() => Image.LoadPixelData<Rgb24>(Pixels, Width, Height);

    internal static RgbImage FromImageSharp(Image<Rgb24> image)
    {
        var pixels = new byte[image.Width * image.Height * 3];
        image.Frames.RootFrame.CopyPixelDataTo(pixels);
        return new RgbImage(image.Width, image.Height, pixels);
    }
}
