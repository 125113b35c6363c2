using StableDiffusion.IO;
using StableDiffusion.Pipelines.Conditioning;
using StableDiffusion.TestSupport;

namespace StableDiffusion.Pipelines.Tests.Conditioning;

public class EmbeddingLibraryTests
{
    private static void Write(string path, string name, int n, int width)
    {
        var b = new byte[n * width * 4];
        SafetensorsWriter.Write(path, [SafetensorsEntry.FromBytes(name, WeightDType.F32, [n, width], b)]);
    }

    [Fact]
    public void Only_named_files_are_read_and_a_foreign_width_is_an_error_naming_the_file()
    {
        using var dir = new TempFolder("sd-embeddings");
        Write(Path.Combine(dir.Path, "style.safetensors"), "emb_params", 2, 32);
        Write(Path.Combine(dir.Path, "sdxl-thing.safetensors"), "clip_g", 1, 1280);
        File.WriteAllText(Path.Combine(dir.Path, "broken.pt"), "not a zip");
        var lib = EmbeddingLibrary.Open(dir.Path);

        Assert.Empty(lib.For(["a cat"], "clip_l", 32));
        Assert.Equal(2, lib.For(["a cat, style"], "clip_l", 32)["style"].Length);
        Assert.Single(lib.For(["x", "embedding:STYLE"], "clip_l", 32)); // ComfyUI's prefix, any case, in the negative too
        Assert.Empty(lib.For(["stylish"], "clip_l", 32));

        var e = Assert.Throws<WeightsException>(() => lib.For(["style"], "clip_l", 768));
        Assert.Contains("style.safetensors: embedding style is 32 wide; this model's text encoder takes 768", e.Message);
        e = Assert.Throws<WeightsException>(() => lib.For(["sdxl-thing"], "clip_l", 768));
        Assert.Contains("sdxl-thing.safetensors", e.Message);
        Assert.Throws<WeightsException>(() => lib.For(["broken"], "clip_l", 32));
        Assert.Contains("no such folder", Assert.Throws<UsageException>(() => EmbeddingLibrary.Open(Path.Combine(dir.Path, "nope"))).Message);
    }
}

public class ClipSkipTests
{
    [Fact]
    public void Clip_skip_counts_from_the_full_encoder_and_sd2s_starts_at_the_penultimate_layer()
    {
        Assert.Equal(1, StableDiffusionPipeline.ModelClipSkip(IO.ModelFamily.Sd1, 12, null));
        Assert.Equal(1, StableDiffusionPipeline.ModelClipSkip(IO.ModelFamily.Sd1, 12, 1));
        Assert.Equal(2, StableDiffusionPipeline.ModelClipSkip(IO.ModelFamily.Sd1, 12, 2));
        Assert.Equal(11, StableDiffusionPipeline.ModelClipSkip(IO.ModelFamily.Sd1, 12, 11));
        Assert.Throws<UsageException>(() => StableDiffusionPipeline.ModelClipSkip(IO.ModelFamily.Sd1, 12, 12));
        // SD2's published encoder has 23 of OpenCLIP's 24 layers: its last is already the penultimate.
        Assert.Equal(1, StableDiffusionPipeline.ModelClipSkip(IO.ModelFamily.Sd2, 23, null));
        Assert.Equal(1, StableDiffusionPipeline.ModelClipSkip(IO.ModelFamily.Sd2, 23, 2));
        Assert.Equal(2, StableDiffusionPipeline.ModelClipSkip(IO.ModelFamily.Sd2, 23, 3));
        var e = Assert.Throws<UsageException>(() => StableDiffusionPipeline.ModelClipSkip(IO.ModelFamily.Sd2, 23, 1));
        Assert.Contains("takes 2 to 23", e.Message);
    }
}
