using StableDiffusion.IO.Tests.Support;

namespace StableDiffusion.IO.Tests;

/// <summary>Textual-inversion files in each published layout, written here the way their tools write them.</summary>
public class TextualInversionFileTests
{
    private static float[] Values(int n, float scale) => Enumerable.Range(0, n).Select(i => (i % 7 - 3) * scale).ToArray();

    private static byte[] Bytes(float[] v)
    {
        var b = new byte[v.Length * 4];
        Buffer.BlockCopy(v, 0, b, 0, b.Length);
        return b;
    }

    private static SafetensorsEntry Entry(string name, float[] v, params long[] shape) => SafetensorsEntry.FromBytes(name, WeightDType.F32, shape, Bytes(v));

    [Fact]
    public void A1111_pt_reads_string_to_param_through_the_restricted_unpickler()
    {
        using var dir = new TempDir();
        var path = Path.Combine(dir.Path, "bad-hands.pt");
        var v = Values(3 * 8, 0.25f);
        // {"string_to_token": {"*": 265}, "string_to_param": {"*": tensor[3, 8]}, "name": "bad-hands", "step": 1500}
        var p = new PickleBuilder().Proto().EmptyDict().Put().Mark()
            .Str("string_to_token").EmptyDict().Put().Str("*").Int(265).SetItem()
            .Str("string_to_param").EmptyDict().Put().Str("*").Tensor("FloatStorage", "0", v.Length, 0, [3, 8], [8, 1]).SetItem()
            .Str("name").Str("bad-hands").Str("step").Int(1500)
            .SetItems().Stop().ToArray();
        TorchWriter.WriteZip(path, TorchWriter.CheckpointEntries(p, [("0", v.Length * 4L, Bytes(v))]));
        var e = TextualInversionFile.Read(path);
        var rows = e[TextualInversionFile.AnyEncoder];
        Assert.Equal(3, rows.Length);
        Assert.Equal(v[8..16], rows[1]);
    }

    [Fact]
    public void Safetensors_layouts_a1111_sdxl_and_diffusers()
    {
        using var dir = new TempDir();
        var a1111 = Path.Combine(dir.Path, "a.safetensors");
        SafetensorsWriter.Write(a1111, [Entry("emb_params", Values(2 * 8, 0.5f), 2, 8)]);
        Assert.Equal(2, TextualInversionFile.Read(a1111)[TextualInversionFile.AnyEncoder].Length);

        var sdxl = Path.Combine(dir.Path, "x.safetensors");
        SafetensorsWriter.Write(sdxl, [Entry("clip_l", Values(4 * 8, 0.5f), 4, 8), Entry("clip_g", Values(4 * 12, 0.5f), 4, 12)]);
        var x = TextualInversionFile.Read(sdxl);
        Assert.Equal((8, 12), (x["clip_l"][0].Length, x["clip_g"][3].Length));
        Assert.False(x.ContainsKey(TextualInversionFile.AnyEncoder));

        var diffusers = Path.Combine(dir.Path, "learned_embeds.safetensors");
        SafetensorsWriter.Write(diffusers, [Entry("<cat-toy>", Values(8, 1f), 8)]);
        var d = Assert.Single(TextualInversionFile.Read(diffusers)[TextualInversionFile.AnyEncoder]);
        Assert.Equal(Values(8, 1f), d);
    }

    [Fact]
    public void Malformed_files_are_one_line_errors_naming_the_file()
    {
        using var dir = new TempDir();
        var two = Path.Combine(dir.Path, "two.safetensors");
        SafetensorsWriter.Write(two, [Entry("foo", Values(8, 1f), 8), Entry("bar", Values(8, 1f), 8)]);
        var e = Assert.Throws<WeightsException>(() => TextualInversionFile.Read(two));
        Assert.StartsWith($"{two}: not a textual-inversion embedding", e.Message);
        var cube = Path.Combine(dir.Path, "cube.safetensors");
        SafetensorsWriter.Write(cube, [Entry("emb_params", Values(8, 1f), 2, 2, 2)]);
        Assert.Contains("expected [vectors, width]", Assert.Throws<WeightsException>(() => TextualInversionFile.Read(cube)).Message);
        Assert.Contains("not found", Assert.Throws<ConfigException>(() => TextualInversionFile.Read(Path.Combine(dir.Path, "none.pt"))).Message);
    }
}
