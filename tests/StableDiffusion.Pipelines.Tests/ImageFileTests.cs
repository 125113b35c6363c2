using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using System.Text.RegularExpressions;
using StableDiffusion.Pipelines.Images;
using StableDiffusion.TestSupport;

namespace StableDiffusion.Pipelines.Tests;

/// <summary>
/// PNG output with A1111's <c>parameters</c> chunk (checked on the raw chunks, as PIL reads them, and with A1111's own
/// parsing regex), input images checked for size from the header before decoding, and the pixel ↔ tensor conversions.
/// </summary>
public class ImageFileTests : IDisposable
{
    private readonly TempFolder temp = new("sd-image-tests");

    public void Dispose() => temp.Dispose();

    private static RgbImage Gradient(int w, int h)
    {
        var p = new byte[w * h * 3];
        for (int i = 0; i < p.Length; i++) p[i] = (byte)(i * 7 % 256);
        return new RgbImage(w, h, p);
    }

    private static readonly GenerationParameters Example = new()
    {
        Prompt = "a photo of a cat, highly detailed",
        NegativePrompt = "blurry",
        Steps = 20,
        Sampler = "euler_a",
        Schedule = "karras",
        CfgScale = 7.5f,
        Seed = 42,
        Width = 512,
        Height = 768,
        ModelHash = "6ce0161689",
        Model = "v1-5-pruned-emaonly",
    };

    [Fact]
    public void Infotext_is_in_A1111s_format()
    {
        Assert.Equal(
            "a photo of a cat, highly detailed\nNegative prompt: blurry\n" +
            "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly",
            Infotext.Format(Example));
        // No negative prompt: no line for it; whole numbers print without a fraction; batches say where the image is.
        Assert.Equal(
            "cat\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Denoising strength: 0.75, Clip skip: 2, Batch size: 2, Batch pos: 1",
            Infotext.Format(new GenerationParameters
            {
                Prompt = "cat", Steps = 4, Sampler = "euler", CfgScale = 7f, Seed = 1, Width = 64, Height = 64,
                DenoisingStrength = 0.75f, ClipSkip = 2, BatchSize = 2, BatchPosition = 1,
            }));
        // A value with a comma or colon is quoted as JSON (A1111's quote()).
        Assert.Equal("\"my, model\"", Infotext.Quote("my, model"));
        Assert.Equal("\"a:\\\"b\\\"\\n\"", Infotext.Quote("a:\"b\"\n"));
        Assert.Equal("plain", Infotext.Quote("plain"));
    }

    /// <summary>A1111's parse_generation_parameters: the last line, split by its regex; prompt and negative prompt above.</summary>
    private static Dictionary<string, string> ParseLikeA1111(string text)
    {
        var lines = text.Trim().Split('\n');
        var result = new Dictionary<string, string>();
        var re = new Regex(@"\s*(\w[\w \-/]+):\s*(""(?:\\.|[^\\""])+""|[^,]*)(?:,|$)");
        foreach (Match m in re.Matches(lines[^1]))
        {
            var v = m.Groups[2].Value;
            result[m.Groups[1].Value] = v.StartsWith('"') ? System.Text.Json.JsonSerializer.Deserialize<string>(v)! : v;
        }
        var prompt = new StringBuilder();
        string negative = "";
        bool inNegative = false;
        foreach (var line in lines[..^1])
        {
            if (line.StartsWith("Negative prompt:", StringComparison.Ordinal))
            {
                inNegative = true;
                negative = line["Negative prompt:".Length..].Trim();
            }
            else if (inNegative) negative += "\n" + line;
            else prompt.Append(prompt.Length > 0 ? "\n" : "").Append(line);
        }
        result["Prompt"] = prompt.ToString();
        result["Negative prompt"] = negative;
        return result;
    }

    /// <summary>Every chunk of a PNG file: type and data, CRCs checked.</summary>
    internal static List<(string Type, byte[] Data)> Chunks(string path)
    {
        var b = File.ReadAllBytes(path);
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, b[..8]);
        var chunks = new List<(string, byte[])>();
        for (int at = 8; at < b.Length;)
        {
            int length = BinaryPrimitives.ReadInt32BigEndian(b.AsSpan(at));
            var type = Encoding.ASCII.GetString(b, at + 4, 4);
            chunks.Add((type, b[(at + 8)..(at + 8 + length)]));
            at += 12 + length;
        }
        return chunks;
    }

    [Fact]
    public void Png_holds_the_pixels_and_a_tEXt_parameters_chunk_that_A1111_parses_back()
    {
        var path = Path.Combine(temp.Path, "out.png");
        var image = Gradient(40, 24);
        var text = Infotext.Format(Example);
        ImageFiles.SavePng(image, path, text, overwrite: false);

        var chunks = Chunks(path);
        Assert.Equal("IHDR", chunks[0].Type);
        Assert.Equal(40, BinaryPrimitives.ReadInt32BigEndian(chunks[0].Data));
        Assert.Equal(24, BinaryPrimitives.ReadInt32BigEndian(chunks[0].Data.AsSpan(4)));
        Assert.Equal(8, chunks[0].Data[8]); // bit depth
        Assert.Equal(2, chunks[0].Data[9]); // colour type RGB
        var tEXt = Assert.Single(chunks, c => c.Type == "tEXt");
        Assert.Equal("parameters\0" + text, Encoding.Latin1.GetString(tEXt.Data));

        var parsed = ParseLikeA1111(ImageFiles.ReadPngText(path)[ImageFiles.ParametersKeyword]);
        Assert.Equal(Example.Prompt, parsed["Prompt"]);
        Assert.Equal("blurry", parsed["Negative prompt"]);
        Assert.Equal("20", parsed["Steps"]);
        Assert.Equal("Euler a", parsed["Sampler"]);
        Assert.Equal("Karras", parsed["Schedule type"]);
        Assert.Equal("7.5", parsed["CFG scale"]);
        Assert.Equal("42", parsed["Seed"]);
        Assert.Equal("512x768", parsed["Size"]);
        Assert.Equal("6ce0161689", parsed["Model hash"]);

        Assert.Equal(image.Pixels, ImageFiles.Read(path).Pixels);
        Assert.Empty(Directory.GetFiles(temp.Path, "*.tmp"));
    }

    [Fact]
    public void Long_prompts_stay_in_tEXt_and_non_Latin1_ones_go_to_iTXt()
    {
        var longPath = Path.Combine(temp.Path, "long.png");
        var longText = Infotext.Format(Example with { Prompt = string.Join(", ", Enumerable.Repeat("masterpiece", 300)) });
        ImageFiles.SavePng(Gradient(8, 8), longPath, longText, overwrite: false);
        Assert.Equal("parameters\0" + longText, Encoding.Latin1.GetString(Assert.Single(Chunks(longPath), c => c.Type == "tEXt").Data));

        var unicodePath = Path.Combine(temp.Path, "unicode.png");
        var unicodeText = Infotext.Format(Example with { Prompt = "富士山の写真, 夕焼け" });
        ImageFiles.SavePng(Gradient(8, 8), unicodePath, unicodeText, overwrite: false);
        var iTXt = Assert.Single(Chunks(unicodePath), c => c.Type == "iTXt").Data;
        Assert.Equal("parameters", Encoding.Latin1.GetString(iTXt, 0, Array.IndexOf(iTXt, (byte)0)));
        Assert.Equal(unicodeText, ImageFiles.ReadPngText(unicodePath)[ImageFiles.ParametersKeyword]);
        Assert.Equal("富士山の写真, 夕焼け", ParseLikeA1111(unicodeText)["Prompt"]);
    }

    [Fact]
    public void An_existing_file_is_replaced_only_with_overwrite()
    {
        var path = Path.Combine(temp.Path, "x.png");
        File.WriteAllText(path, "keep me");
        var e = Assert.Throws<ImageException>(() => ImageFiles.SavePng(Gradient(8, 8), path, null, overwrite: false));
        Assert.Contains("exists; pass --overwrite", e.Message);
        Assert.Equal("keep me", File.ReadAllText(path));
        ImageFiles.SavePng(Gradient(8, 8), path, null, overwrite: true);
        Assert.Equal(8, ImageFiles.Read(path).Width);
        Assert.Single(Directory.GetFiles(temp.Path));
        Assert.Throws<ImageException>(() => ImageFiles.SavePng(Gradient(8, 8), Path.Combine(temp.Path, "no", "such", "x.png"), null, false));
    }

    /// <summary>A PNG that is only a header: IHDR declaring the size, then IEND (no pixel data at all).</summary>
    private static byte[] HeaderOnlyPng(int width, int height)
    {
        using var ms = new MemoryStream();
        ms.Write([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]);
        void Chunk(string type, byte[] data)
        {
            var head = new byte[8];
            BinaryPrimitives.WriteInt32BigEndian(head, data.Length);
            Encoding.ASCII.GetBytes(type, head.AsSpan(4));
            ms.Write(head);
            ms.Write(data);
            var crc = new byte[4];
            BinaryPrimitives.WriteUInt32BigEndian(crc, Crc32(Encoding.ASCII.GetBytes(type).Concat(data).ToArray()));
            ms.Write(crc);
        }
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, width);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), height);
        ihdr[8] = 8;
        ihdr[9] = 2;
        Chunk("IHDR", ihdr);
        Chunk("IEND", []);
        return ms.ToArray();
    }

    private static uint Crc32(byte[] data)
    {
        uint c = 0xFFFFFFFF;
        foreach (var b in data)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
        }
        return ~c;
    }

    [Fact]
    public void Inputs_are_refused_by_their_declared_size_before_decoding()
    {
        // 60000 x 60000 RGB would need 10 GB; the header alone must stop it.
        var huge = Path.Combine(temp.Path, "huge.png");
        File.WriteAllBytes(huge, HeaderOnlyPng(60000, 60000));
        var e = Assert.Throws<ImageException>(() => ImageFiles.Read(huge));
        Assert.Contains("60000x60000", e.Message);
        Assert.Contains("larger than", e.Message);

        var small = Path.Combine(temp.Path, "small.png");
        ImageFiles.SavePng(Gradient(20, 10), small, null, false);
        Assert.Contains("larger than 100 pixels", Assert.Throws<ImageException>(() => ImageFiles.Read(small, maxPixels: 100)).Message);
        Assert.Equal(20, ImageFiles.Read(small, maxPixels: 200).Width);
    }

    [Fact]
    public void Broken_and_foreign_files_are_one_line_image_errors()
    {
        var text = Path.Combine(temp.Path, "notes.png");
        File.WriteAllText(text, "not an image");
        Assert.Contains("not a PNG, JPEG, BMP or WebP image", Assert.Throws<ImageException>(() => ImageFiles.Read(text)).Message);

        var good = Path.Combine(temp.Path, "good.png");
        ImageFiles.SavePng(Gradient(64, 64), good, null, false);
        var truncated = Path.Combine(temp.Path, "truncated.png");
        var bytes = File.ReadAllBytes(good);
        File.WriteAllBytes(truncated, bytes[..(bytes.Length / 2)]);
        var e = Assert.ThrowsAny<SdException>(() => ImageFiles.Read(truncated));
        Assert.DoesNotContain('\n', e.Message);

        var headerOnly = Path.Combine(temp.Path, "header-only.png");
        File.WriteAllBytes(headerOnly, HeaderOnlyPng(16, 16));
        Assert.DoesNotContain('\n', Assert.ThrowsAny<SdException>(() => ImageFiles.Read(headerOnly)).Message);

        Assert.Contains("no such image file", Assert.Throws<ImageException>(() => ImageFiles.Read(Path.Combine(temp.Path, "missing.png"))).Message);
    }

    [Fact]
    public void Pixels_round_trip_through_tensors_and_masks_binarise_by_luma()
    {
        var all = new byte[256 * 3];
        for (int i = 0; i < all.Length; i++) all[i] = (byte)(i / 3);
        var image = new RgbImage(256, 1, all);
        var x = image.ToTensor();
        Assert.Equal(-1f, x[0]);
        Assert.Equal(1f, x[^1]);
        Assert.Equal(all, RgbImage.FromTensor(x, 256, 1).Pixels);
        // Out-of-range decoder values clamp; NaN becomes black.
        Assert.Equal(new byte[] { 0, 255, 0 }, RgbImage.FromTensor([-3f, 2.5f, float.NaN], 1, 1).Pixels);

        // PIL's "L" of (128, 128, 128) is 128 → 0.502 ≥ 0.5 → repaint; (127, 127, 127) keeps; pure red is dark (76).
        var mask = new RgbImage(4, 1, [128, 128, 128, 127, 127, 127, 255, 0, 0, 255, 255, 255]).ToMask();
        Assert.Equal(new[] { 1f, 0f, 0f, 1f }, mask);
    }
}
