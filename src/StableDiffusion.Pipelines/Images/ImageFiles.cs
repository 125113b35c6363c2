using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats;
using SixLabors.ImageSharp.Formats.Bmp;
using SixLabors.ImageSharp.Formats.Jpeg;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.Formats.Webp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;
using StableDiffusion.IO;

namespace StableDiffusion.Pipelines.Images;

/// <summary>
/// Image files in and out. Inputs are checked before they are decoded: ImageSharp 2.x has had decoder bugs with
/// crafted files, so only PNG, JPEG, BMP and WebP are accepted, and the size the header declares must fit a pixel
/// budget before any pixel memory is allocated. Outputs are PNG files with an A1111-style <c>parameters</c> text chunk,
/// written to a temporary file beside the target and renamed over it.
/// </summary>
public static class ImageFiles
{
    /// <summary>The largest input accepted by default: 4096 × 4096 pixels (SD works at 512–1024).</summary>
    public const long DefaultMaxPixels = 4096L * 4096;

    /// <summary>Input files larger than this are refused before they are read (a PNG of 4096² RGBA is about 64 MiB).</summary>
    public const long MaxFileBytes = 256L << 20;

    /// <summary>The PNG text keyword A1111 writes and reads (and ComfyUI's A1111 readers).</summary>
    public const string ParametersKeyword = "parameters";

    private static readonly Configuration Decoders = new(
        new PngConfigurationModule(), new JpegConfigurationModule(), new BmpConfigurationModule(), new WebpConfigurationModule());

    /// <summary>
    /// Reads an RGB image (alpha dropped, EXIF orientation applied as diffusers' load_image does). The declared size
    /// is checked against <paramref name="maxPixels"/> from the header alone before decoding.
    /// </summary>
    public static RgbImage Read(string path, long maxPixels = DefaultMaxPixels)
    {
        byte[] bytes;
        try
        {
            var info = new FileInfo(path);
            if (!info.Exists) throw new ImageException($"{Text.Q(path)}: no such image file");
            if (info.Length > MaxFileBytes)
                throw new ImageException($"{Text.Q(path)}: {info.Length / 1048576.0:F0} MiB is more than an input image may be ({MaxFileBytes >> 20} MiB)");
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ImageException($"{Text.Q(path)}: cannot read: {Text.OneLine(e.Message)}", e);
        }
        return Decode(bytes, Text.Q(path), maxPixels);
    }

    /// <summary>
    /// <see cref="Read"/> for an image already in memory (e.g. sent to the server); <paramref name="name"/> names it in
    /// errors. The same checks: the format, then the declared size from the header, then the decode.
    /// </summary>
    public static RgbImage Decode(byte[] bytes, string name, long maxPixels = DefaultMaxPixels)
    {
        try
        {
            if (bytes.LongLength > MaxFileBytes)
                throw new ImageException($"{name}: {bytes.LongLength / 1048576.0:F0} MiB is more than an input image may be ({MaxFileBytes >> 20} MiB)");
            var header = Image.Identify(Decoders, bytes, out IImageFormat? format);
            if (header is null || format is null)
                throw new ImageException($"{name}: not a PNG, JPEG, BMP or WebP image");
            long pixels = (long)header.Width * header.Height;
            if (header.Width <= 0 || header.Height <= 0 || pixels > maxPixels)
                throw new ImageException($"{name}: {header.Width}x{header.Height} {format.Name} image is larger than {maxPixels:N0} pixels");
            using var image = Image.Load<Rgb24>(Decoders, bytes);
            if (image.Width != header.Width || image.Height != header.Height)
                throw new ImageException($"{name}: decoded {image.Width}x{image.Height}, but the header says {header.Width}x{header.Height}");
            image.Mutate(c => c.AutoOrient());
            return RgbImage.FromImageSharp(image);
        }
        catch (Exception e) when (e is ImageFormatException or NotSupportedException or SixLabors.ImageSharp.Memory.InvalidMemoryOperationException)
        {
            throw new ImageException($"{name}: cannot decode: {Text.OneLine(e.Message)}", e);
        }
    }

    /// <summary>The PNG <see cref="SavePng"/> writes, in memory.</summary>
    public static byte[] EncodePng(RgbImage image, string? parameters)
    {
        using var stream = new MemoryStream();
        WritePng(image, parameters, stream);
        return stream.ToArray();
    }

    private static void WritePng(RgbImage image, string? parameters, Stream stream)
    {
        using var img = image.ToImageSharp();
        if (parameters is not null)
            img.Metadata.GetPngMetadata().TextData.Add(new PngTextData(ParametersKeyword, parameters, "", ""));
        img.SaveAsPng(stream, new PngEncoder
        {
            ColorType = PngColorType.Rgb,
            BitDepth = PngBitDepth.Bit8,
            // ImageSharp compresses text over 1 KiB into zTXt by default; A1111 writes plain tEXt.
            TextCompressionThreshold = int.MaxValue,
        });
    }

    /// <summary>
    /// Writes <paramref name="image"/> as an 8-bit RGB PNG, with <paramref name="parameters"/> (if any) in a
    /// <c>parameters</c> tEXt chunk (iTXt when the text is not Latin-1, as PIL and A1111 do). The file appears complete
    /// or not at all: it is written beside the target under a temporary name and renamed. An existing file is only
    /// replaced with <paramref name="overwrite"/>.
    /// </summary>
    public static void SavePng(RgbImage image, string path, string? parameters, bool overwrite)
    {
        var full = Path.GetFullPath(path);
        var dir = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(dir)) throw new ImageException($"{Text.Q(path)}: the folder {Text.Q(dir)} does not exist");
        if (!overwrite && File.Exists(full)) throw new ImageException($"{Text.Q(path)} exists; pass --overwrite to replace it");
        var temp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write))
                WritePng(image, parameters, stream);
            File.Move(temp, full, overwrite);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ImageException(!overwrite && File.Exists(full)
                ? $"{Text.Q(path)} exists; pass --overwrite to replace it"
                : $"{Text.Q(path)}: cannot write: {Text.OneLine(e.Message)}", e);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }

    /// <summary>The text chunks of PNG bytes by keyword; <paramref name="name"/> names them in errors.</summary>
    public static IReadOnlyDictionary<string, string> ReadPngText(byte[] png, string name)
    {
        try
        {
            using var image = Image.Load<Rgb24>(new Configuration(new PngConfigurationModule()), png);
            return image.Metadata.GetPngMetadata().TextData
                .GroupBy(t => t.Keyword).ToDictionary(g => g.Key, g => g.First().Value, StringComparer.Ordinal);
        }
        catch (Exception e) when (e is ImageFormatException or NotSupportedException or SixLabors.ImageSharp.Memory.InvalidMemoryOperationException)
        {
            throw new ImageException($"{name}: cannot read as PNG: {Text.OneLine(e.Message)}", e);
        }
    }

    /// <summary>The text chunks of a PNG file (tEXt, zTXt, iTXt) by keyword.</summary>
    public static IReadOnlyDictionary<string, string> ReadPngText(string path)
    {
        try
        {
            using var image = Image.Load<Rgb24>(new Configuration(new PngConfigurationModule()), path);
            return image.Metadata.GetPngMetadata().TextData
                .GroupBy(t => t.Keyword).ToDictionary(g => g.Key, g => g.First().Value, StringComparer.Ordinal);
        }
        catch (Exception e) when (e is ImageFormatException or IOException or UnauthorizedAccessException)
        {
            throw new ImageException($"{Text.Q(path)}: cannot read as PNG: {Text.OneLine(e.Message)}", e);
        }
    }
}
