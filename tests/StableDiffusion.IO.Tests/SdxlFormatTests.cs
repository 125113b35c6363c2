using StableDiffusion.IO.Tests.Support;

namespace StableDiffusion.IO.Tests;

/// <summary>
/// SDXL's original single file (Stability's SGM naming) against the real diffusers layouts of
/// stabilityai/stable-diffusion-xl-base-1.0: every diffusers tensor has one SGM source and maps back to itself,
/// the fused bigG q/k/v split and the bare text_projection transposed; and the component counts sd info reports.
/// </summary>
public class SdxlFormatTests
{
    private static readonly (string Component, string Tsv)[] Components =
    [
        ("unet", "sdxl_diffusers_unet.tsv"), ("vae", "sdxl_diffusers_vae.tsv"),
        ("text_encoder", "sdxl_diffusers_text_encoder.tsv"), ("text_encoder_2", "sdxl_diffusers_text_encoder_2.tsv"),
    ];

    private static List<(string Component, Reference.Row Row)> DiffusersRows() =>
        [.. Components.SelectMany(c => Reference.Layout(c.Tsv)
            .Where(r => !r.Name.EndsWith("position_ids", StringComparison.Ordinal))
            .Select(r => (c.Component, c.Component == "vae" ? r with { Name = NameMap.NormalizeVaeName(r.Name) } : r)))];

    private static LdmLayout Layout(List<(string Component, Reference.Row Row)> rows) =>
        LdmLayout.Infer(rows.Select(r => $"{r.Component}/{r.Row.Name}"));

    /// <summary>The SGM single file's tensors (name → dtype, stored shape), rebuilt from the diffusers layouts through the map.</summary>
    private static Dictionary<string, Reference.Row> SgmRows()
    {
        var rows = DiffusersRows();
        var layout = Layout(rows);
        var sgm = new Dictionary<string, Reference.Row>(StringComparer.Ordinal);
        foreach (var (component, r) in rows)
        {
            var back = NameMap.ToLdm(component, r.Name, layout);
            Assert.True(back is not null, $"no SGM name for {component}/{r.Name}");
            var (ldm, _, parts, squeeze) = back.Value;
            var shape = (long[])r.Shape.Clone();
            if (parts > 1) shape[0] *= parts;
            if (squeeze) shape = [.. shape, 1, 1];
            if (NameMap.StoredTransposed(component, r.Name)) shape = [shape[1], shape[0]];
            if (sgm.TryGetValue(ldm, out var seen)) Assert.Equal(shape, seen.Shape);
            else sgm[ldm] = new Reference.Row(ldm, r.DType, shape);
        }
        return sgm;
    }

    [SkippableFact]
    public void Every_diffusers_tensor_has_one_sgm_source_and_maps_back_to_itself()
    {
        var rows = DiffusersRows();
        var layout = Layout(rows);
        Assert.Equal(LdmTextEncoder.Sdxl, layout.TextEncoder);
        Assert.Equal(new HashSet<int> { 0, 1 }, layout.UpBlocksWithAttention);
        var sgm = SgmRows();
        var sgmLayout = LdmLayout.Infer(sgm.Keys);
        Assert.Equal((2, 4, 32, LdmTextEncoder.Sdxl), (sgmLayout.LayersPerBlock, sgmLayout.VaeUpBlocks, sgmLayout.OpenClipLayers, sgmLayout.TextEncoder));
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (name, row) in sgm)
        {
            var targets = NameMap.ToDiffusers(name, sgmLayout, out var why);
            Assert.True(targets is not null, $"{name}: {why ?? "unknown to the map"}");
            foreach (var m in targets!)
            {
                Assert.True(seen.Add(m.Path), $"two SGM tensors map to {m.Path}");
                var want = rows.Single(r => r.Component == m.Component && r.Row.Name == m.Name).Row.Shape;
                Assert.Equal(want, m.DiffusersShape(row.Shape));
            }
        }
        Assert.Equal(rows.Count, seen.Count);
        // 1680 + 248 + 196 + (517 − 32 layers × 4 fused q/k/v tensors) = 2513; the real file adds position_ids and logit_scale (2515).
        Assert.Equal(2513, sgm.Count);
    }

    [SkippableTheory]
    [InlineData("model.diffusion_model.label_emb.0.0.weight", "unet/add_embedding.linear_1.weight")]
    [InlineData("model.diffusion_model.label_emb.0.2.bias", "unet/add_embedding.linear_2.bias")]
    [InlineData("model.diffusion_model.input_blocks.3.0.op.weight", "unet/down_blocks.0.downsamplers.0.conv.weight")]
    [InlineData("model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight", "unet/down_blocks.2.attentions.0.transformer_blocks.9.attn2.to_k.weight")]
    [InlineData("model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.bias", "unet/mid_block.attentions.0.transformer_blocks.9.ff.net.2.bias")]
    [InlineData("model.diffusion_model.output_blocks.2.2.conv.weight", "unet/up_blocks.0.upsamplers.0.conv.weight")]
    [InlineData("model.diffusion_model.output_blocks.5.2.conv.bias", "unet/up_blocks.1.upsamplers.0.conv.bias")]
    [InlineData("conditioner.embedders.0.transformer.text_model.final_layer_norm.weight", "text_encoder/text_model.final_layer_norm.weight")]
    [InlineData("conditioner.embedders.1.model.positional_embedding", "text_encoder_2/text_model.embeddings.position_embedding.weight")]
    [InlineData("conditioner.embedders.1.model.ln_final.bias", "text_encoder_2/text_model.final_layer_norm.bias")]
    [InlineData("conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_fc.weight", "text_encoder_2/text_model.encoder.layers.31.mlp.fc1.weight")]
    public void Published_sgm_names_map_to_the_diffusers_names(string sgm, string diffusers)
    {
        var layout = LdmLayout.Infer(SgmRows().Keys);
        var m = NameMap.ToDiffusers(sgm, layout, out _);
        Assert.NotNull(m);
        Assert.Equal(diffusers, Assert.Single(m!).Path);
    }

    [SkippableFact]
    public void Fused_in_proj_splits_into_q_k_v_and_text_projection_is_transposed()
    {
        var layout = LdmLayout.Infer(SgmRows().Keys);
        var qkv = NameMap.ToDiffusers("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", layout, out _)!;
        Assert.Equal(["q_proj", "k_proj", "v_proj"], qkv.Select(m => m.Name.Split('.')[^2]));
        Assert.All(qkv, m => Assert.Equal(new long[] { 1280, 1280 }, m.DiffusersShape([3840, 1280])));
        var proj = Assert.Single(NameMap.ToDiffusers("conditioner.embedders.1.model.text_projection", layout, out _)!);
        Assert.True(proj.Transpose);
        Assert.Equal(new long[] { 24, 32 }, proj.DiffusersShape([32, 24]));
        Assert.Null(NameMap.ToDiffusers("conditioner.embedders.1.model.logit_scale", layout, out var why));
        Assert.NotNull(why);
    }

    [Fact]
    public void A_single_file_text_projection_loads_transposed()
    {
        using var dir = new TempDir();
        var path = Path.Combine(dir.Path, "tiny-sdxl.safetensors");
        // x @ M with M [width 3, projection 2]: diffusers' Linear weight is Mᵀ [2, 3].
        float[] m = [1, 2, 3, 4, 5, 6];
        SafetensorsWriter.Write(path,
        [
            SafetensorsEntry.FromBytes("conditioner.embedders.1.model.text_projection", WeightDType.F32, [3, 2], m.SelectMany(BitConverter.GetBytes).ToArray()),
            SafetensorsEntry.FromBytes("model.diffusion_model.label_emb.0.0.bias", WeightDType.F32, [1], new byte[4]),
        ]);
        using var source = ModelSource.Open(path);
        Assert.Equal(ModelFamily.Sdxl, source.Family);
        var t = source.Component("text_encoder_2")!.Find("text_projection.weight")!;
        Assert.Equal(new long[] { 2, 3 }, t.Shape);
        Assert.Equal(new float[] { 1, 3, 5, 2, 4, 6 }, t.ReadFloat32());
    }

    /// <summary>sd info's figures for the base model, from header-accurate files (data left as holes).</summary>
    [SkippableTheory]
    [InlineData("diffusers")]
    [InlineData("single")]
    public void Base_model_components_have_the_published_counts(string format)
    {
        using var dir = new TempDir();
        string path;
        if (format == "diffusers")
        {
            path = Path.Combine(dir.Path, "sdxl");
            Directory.CreateDirectory(path);
            File.Copy(Reference.Require("configs", "sdxl-base", "model_index.json"), Path.Combine(path, "model_index.json"));
            foreach (var (component, tsv) in Components)
            {
                Directory.CreateDirectory(Path.Combine(path, component));
                var file = component.StartsWith("text_encoder", StringComparison.Ordinal) ? "model.safetensors" : "diffusion_pytorch_model.safetensors";
                LayoutFiles.Safetensors(Path.Combine(path, component, file), Reference.Layout(tsv));
            }
        }
        else
        {
            path = Path.Combine(dir.Path, "sd_xl_base_1.0.safetensors");
            LayoutFiles.Safetensors(path, SgmRows().Values);
        }
        using var source = ModelSource.Open(path);
        Assert.Equal(ModelFamily.Sdxl, source.Family);
        Assert.Empty(source.Unrecognised);
        var counts = source.Components.Select(c => (c.Name, c.TensorCount, c.ParameterCount)).ToArray();
        Assert.Equal(
        [
            ("text_encoder", 196, 123_060_480L), ("text_encoder_2", 517, 694_659_840L),
            ("unet", 1680, 2_567_463_684L), ("vae", 248, 83_653_863L),
        ], counts);
    }
}
