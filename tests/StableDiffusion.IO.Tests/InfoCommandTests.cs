using System.Text.Json;
using StableDiffusion.IO.Tests.Support;

namespace StableDiffusion.IO.Tests;

public class InfoCommandTests
{
    // The counts issue 3 requires for the SD1.5 layout (position_ids and non-weight buffers not counted).
    private static readonly Dictionary<string, (int Tensors, long Parameters)> Sd15 = new()
    {
        ["unet"] = (686, 859_520_964),
        ["text_encoder"] = (196, 123_060_480),
        ["vae"] = (248, 83_653_863),
    };

    internal static (int Code, string Out, string Err) Sd(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = StableDiffusion.Cli.Cli.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    private static JsonElement Json(params string[] args)
    {
        var (code, stdout, stderr) = Sd(["info", .. args, "--json"]);
        Assert.True(code == 0, stderr);
        return JsonDocument.Parse(stdout).RootElement.Clone();
    }

    private static void AssertCounts(JsonElement info, Dictionary<string, (int Tensors, long Parameters)> expected)
    {
        var components = info.GetProperty("components");
        Assert.Equal(expected.Keys.Order(), components.EnumerateObject().Select(p => p.Name).Order());
        foreach (var (name, (tensors, parameters)) in expected)
        {
            Assert.Equal(tensors, components.GetProperty(name).GetProperty("tensors").GetInt32());
            Assert.Equal(parameters, components.GetProperty(name).GetProperty("parameters").GetInt64());
        }
    }

    [SkippableTheory]
    [InlineData("safetensors")]
    [InlineData("ckpt")]
    public void Sd15SingleFileReportsTheRequiredCounts(string format)
    {
        using var dir = new TempDir();
        var path = dir.File($"v1-5-pruned-emaonly.{format}");
        var rows = LayoutFiles.Rows("sd15_single_file_v1-5-pruned-emaonly.tsv", fp16: true).ToList();
        if (format == "ckpt") LayoutFiles.Checkpoint(path, rows);
        else LayoutFiles.Safetensors(path, rows);

        var info = Json(path);
        Assert.Equal(format, info.GetProperty("format").GetString());
        Assert.Equal("sd1", info.GetProperty("family").GetString());
        AssertCounts(info, Sd15);
        var tensors = info.GetProperty("tensors").EnumerateArray().ToList();
        Assert.Equal(1145, tensors.Count);
        var conv = tensors.Single(t => t.GetProperty("name").GetString() == "model.diffusion_model.input_blocks.0.0.weight");
        Assert.Equal("F16", conv.GetProperty("dtype").GetString());
        Assert.Equal([320L, 4, 3, 3], conv.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()));
        Assert.Equal(["components", "family", "format", "tensors"], info.EnumerateObject().Select(p => p.Name).Order());

        var (code, text, _) = Sd("info", path);
        Assert.Equal(0, code);
        Assert.Contains("859,520,964", text);
        Assert.Contains("not counted: 15 non-weight", text); // position_ids, 12 DDPM buffers, 2 model_ema
        Assert.DoesNotContain("model.diffusion_model.out.2.bias", text);
        Assert.Contains("model.diffusion_model.out.2.bias", Sd("info", path, "--tensors").Out);
    }

    [SkippableTheory]
    [InlineData(true, "--variant")]
    [InlineData(true, null)]
    [InlineData(false, null)]
    public void Sd15DiffusersFolderReportsTheRequiredCounts(bool fp16, string? variantFlag)
    {
        using var dir = new TempDir();
        LayoutFiles.Sd15Diffusers(dir.Path, fp16);
        var info = variantFlag is null ? Json(dir.Path) : Json(dir.Path, variantFlag, "fp16");
        Assert.Equal("diffusers", info.GetProperty("format").GetString());
        Assert.Equal("sd1", info.GetProperty("family").GetString());
        AssertCounts(info, Sd15);
        var names = info.GetProperty("tensors").EnumerateArray().Select(t => t.GetProperty("name").GetString()).ToList();
        Assert.Equal(686 + 248 + 197, names.Count);
        Assert.Contains("text_encoder/text_model.embeddings.position_ids", names);
        Assert.Contains("vae/decoder.mid_block.attentions.0.query.weight", names); // listed as stored
    }

    [SkippableFact]
    public void Sd21SingleFileIsSd2WithTheDiffusersCounts()
    {
        using var dir = new TempDir();
        var path = dir.File("v2-1_512-ema-pruned.safetensors");
        LayoutFiles.Safetensors(path, LayoutFiles.Rows("sd21_single_file_v2-1_512-ema-pruned.tsv", fp16: true));
        static (int, long) Count(IEnumerable<Reference.Row> rows)
        {
            var w = rows.Where(r => !r.Name.EndsWith("position_ids", StringComparison.Ordinal)).ToList();
            return (w.Count, w.Sum(r => r.Shape.Aggregate(1L, (a, b) => a * b)));
        }
        var info = Json(path);
        Assert.Equal("sd2", info.GetProperty("family").GetString());
        AssertCounts(info, new()
        {
            ["unet"] = Count(Reference.Layout("sd21_diffusers_unet.tsv")),
            ["text_encoder"] = Count(Reference.Layout("sd21_diffusers_text_encoder.tsv")),
            ["vae"] = Count(Reference.Layout("sd15_diffusers_vae.tsv")),
        });
    }

    [SkippableFact]
    public void InpaintingAndSdxlAreRecognised()
    {
        using var dir = new TempDir();
        var inpaint = dir.File("inpaint.safetensors");
        LayoutFiles.Safetensors(inpaint, LayoutFiles.Rows("sd15_single_file_v1-5-pruned-emaonly.tsv", true)
            .Select(r => r.Name == "model.diffusion_model.input_blocks.0.0.weight" ? r with { Shape = [320, 9, 3, 3] } : r));
        Assert.Equal("sd1-inpaint", Json(inpaint).GetProperty("family").GetString());

        var xl = dir.File("xl", "model_index.json");
        File.Copy(Reference.Require("configs", "sdxl-base", "model_index.json"), xl);
        foreach (var (c, file) in new[] { ("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model"), ("text_encoder_2", "model") })
            LayoutFiles.Safetensors(dir.File("xl", c, file + ".fp16.safetensors"), LayoutFiles.Rows($"sdxl_diffusers_{c}.tsv", true));
        var info = Json(Path.GetDirectoryName(xl)!);
        Assert.Equal("sdxl", info.GetProperty("family").GetString());
        var components = info.GetProperty("components");
        Assert.Equal(4, components.EnumerateObject().Count());
        // stable-diffusion-xl-base-1.0's published counts
        foreach (var (c, tensors, parameters) in new[] { ("unet", 1680, 2_567_463_684L), ("text_encoder", 196, 123_060_480L),
                     ("text_encoder_2", 517, 694_659_840L), ("vae", 248, 83_653_863L) })
        {
            Assert.Equal(tensors, components.GetProperty(c).GetProperty("tensors").GetInt32());
            Assert.Equal(parameters, components.GetProperty(c).GetProperty("parameters").GetInt64());
        }
        var (_, text, _) = Sd("info", Path.GetDirectoryName(xl)!);
        Assert.Contains("family:  sdxl", text);
    }

    [Fact]
    public void BadInputExitsWithOneErrorLineAndNoStackTrace()
    {
        using var dir = new TempDir();
        var bad = dir.File("bad.safetensors");
        File.WriteAllBytes(bad, [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, (byte)'{', (byte)'}']);
        var (code, stdout, stderr) = Sd("info", bad);
        Assert.Equal(1, code);
        Assert.Equal("", stdout);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.StartsWith("sd: error: ", lines[0]);
        Assert.Contains("bad.safetensors", lines[0]);
        Assert.DoesNotContain("   at ", stderr);

        var hostile = dir.File("evil.ckpt");
        var pkl = new PickleBuilder().Proto().Global("os", "system").Mark().Str("echo hi").Tuple().Reduce().Stop().ToArray();
        TorchWriter.WriteZip(hostile, [("archive/data.pkl", pkl.Length, pkl)]);
        (code, _, stderr) = Sd("info", hostile, "--json");
        Assert.Equal(1, code);
        Assert.Matches("^sd: error: .*'os.system'.*not allowed.*\n$", stderr);

        (code, _, stderr) = Sd("info", dir.File("missing.safetensors"));
        Assert.Equal(1, code);
        Assert.Contains("no such file or directory", stderr);

        Assert.Equal(2, Sd("info").Code);
        Assert.Equal(2, Sd("info", bad, "--bogus").Code);
        Assert.Equal(2, Sd("info", bad, bad).Code);
    }
}
