using StableDiffusion.IO.Tests.Support;
using StableDiffusion.Models;

namespace StableDiffusion.IO.Tests;

/// <summary><c>sd random-model --config sdxl|sdxl-tiny</c>: the real SDXL layouts, and one model in both formats.</summary>
public class SdxlRandomModelTests
{
    private static string Key(string name, WeightDType dtype, long[] shape) => $"{name}\t{dtype.Name()}\t[{string.Join(",", shape)}]";

    [SkippableTheory]
    [InlineData("text_encoder", "sdxl_diffusers_text_encoder.tsv")]
    [InlineData("text_encoder_2", "sdxl_diffusers_text_encoder_2.tsv")]
    [InlineData("unet", "sdxl_diffusers_unet.tsv")]
    [InlineData("vae", "sdxl_diffusers_vae.tsv")]
    public void Diffusers_files_have_the_real_layouts(string component, string tsv)
    {
        var file = RandomModel.DiffusersFiles(Presets.Sdxl, WeightDType.F16, 1).Single(f => f.RelativePath.StartsWith(component + "/", StringComparison.Ordinal));
        // The real VAE file names its attention to_q/…; ours the deprecated query/… that loaders accept alike.
        var have = file.Entries.Select(e => Key(component == "vae" ? NameMap.NormalizeVaeName(e.Name) : e.Name, e.DType, e.Shape)).Order(StringComparer.Ordinal);
        var want = LayoutFiles.Rows(tsv, true).Select(r => Key(component == "vae" ? NameMap.NormalizeVaeName(r.Name) : r.Name, r.DType, r.Shape)).Order(StringComparer.Ordinal);
        Assert.Equal(want, have);
    }

    [SkippableFact]
    public void Single_file_maps_onto_the_same_components()
    {
        using var dir = new TempDir();
        var path = Path.Combine(dir.Path, "sdxl.safetensors");
        RandomModel.Write(Presets.Sdxl, RandomModelFormat.SingleFile, WeightDType.F16, 1, path, writeData: false);
        using var source = ModelSource.Open(path);
        Assert.Equal(ModelFamily.Sdxl, source.Family);
        Assert.Empty(source.Unrecognised);
        Assert.Equal(
        [
            ("text_encoder", 196, 123_060_480L), ("text_encoder_2", 517, 694_659_840L),
            ("unet", 1680, 2_567_463_684L), ("vae", 248, 83_653_863L),
        ], source.Components.Select(c => (c.Name, c.TensorCount, c.ParameterCount)).ToArray());
    }

    [Fact]
    public void Both_formats_of_one_seed_hold_the_same_values_text_projection_included()
    {
        using var dir = new TempDir();
        var folder = Path.Combine(dir.Path, "folder");
        var single = Path.Combine(dir.Path, "tiny.safetensors");
        RandomModel.Write(Presets.SdxlTiny, RandomModelFormat.Diffusers, WeightDType.F32, 5, folder);
        RandomModel.Write(Presets.SdxlTiny, RandomModelFormat.SingleFile, WeightDType.F32, 5, single);
        using var a = ModelSource.Open(folder);
        using var b = ModelSource.Open(single);
        foreach (var component in new[] { "text_encoder_2", "unet" })
        {
            var ca = a.Component(component)!;
            var cb = b.Component(component)!;
            Assert.Equal(ca.TensorCount, cb.TensorCount);
            foreach (var t in ca.Tensors)
                Assert.True(t.ReadFloat32().SequenceEqual(cb.Find(t.Name)!.ReadFloat32()), $"{component}/{t.Name} differs");
        }
        var projection = b.Component("text_encoder_2")!.Find("text_projection.weight")!;
        Assert.True(projection.Transposed);
    }
}
