using StableDiffusion.IO.Tests.Support;

namespace StableDiffusion.IO.Tests;

public class NameMapTests
{
    private static string Compact(long[] s) => "[" + string.Join(",", s) + "]";

    private static (List<string> Rows, List<string> Ignored, List<string> Unknown, Dictionary<string, Dictionary<string, long[]>> Components)
        MapSingleFile(List<Reference.Row> rows)
    {
        var layout = LdmLayout.Infer(rows.Select(r => r.Name));
        var mapped = new List<string>();
        var ignored = new List<string>();
        var unknown = new List<string>();
        var components = new Dictionary<string, Dictionary<string, long[]>>();
        foreach (var r in rows)
        {
            var targets = NameMap.ToDiffusers(r.Name, layout, out var why);
            if (targets is null)
            {
                (why is null ? unknown : ignored).Add(r.Name);
                continue;
            }
            foreach (var m in targets)
            {
                var shape = m.DiffusersShape(r.Shape);
                Assert.NotNull(shape);
                mapped.Add($"{r.Name}\t{m.Path}\t{Compact(r.Shape)}\t{Compact(shape!)}");
                if (!components.TryGetValue(m.Component, out var c)) components[m.Component] = c = [];
                Assert.True(c.TryAdd(m.Name, shape!), $"two tensors map to {m.Path}");
            }
        }
        return (mapped, ignored, unknown, components);
    }

    private static Dictionary<string, long[]> Diffusers(string tsv, bool normaliseVae = false, bool dropPositionIds = false) =>
        Reference.Layout(tsv)
            .Where(r => !dropPositionIds || !r.Name.EndsWith("position_ids", StringComparison.Ordinal))
            .ToDictionary(r => normaliseVae ? NameMap.NormalizeVaeName(r.Name) : r.Name, r => r.Shape);

    private static void SameLayout(Dictionary<string, long[]> expected, Dictionary<string, long[]> actual)
    {
        Assert.Equal(expected.Keys.Order(StringComparer.Ordinal), actual.Keys.Order(StringComparer.Ordinal));
        foreach (var (k, v) in expected) Assert.True(v.SequenceEqual(actual[k]), $"{k}: expected {Compact(v)}, mapped {Compact(actual[k])}");
    }

    [SkippableFact]
    public void Sd15MapReproducesTheOracleTsvExactly()
    {
        var (rows, ignored, unknown, _) = MapSingleFile(Reference.Layout("sd15_single_file_v1-5-pruned-emaonly.tsv"));
        var oracle = File.ReadLines(Reference.Require("layouts", "sd15_ldm_to_diffusers_map.tsv")).Where(l => !l.StartsWith('#')).ToList();
        Assert.Empty(unknown);
        Assert.Equal(14, ignored.Count); // 12 DDPM buffers + model_ema.decay + model_ema.num_updates
        Assert.Equal(oracle.Count, rows.Count);
        Assert.Equal(oracle.Order(StringComparer.Ordinal), rows.Order(StringComparer.Ordinal));
    }

    [SkippableFact]
    public void Sd15SingleFileMapsOntoTheDiffusersFiles()
    {
        var (_, _, _, c) = MapSingleFile(Reference.Layout("sd15_single_file_v1-5-pruned-emaonly.tsv"));
        SameLayout(Diffusers("sd15_diffusers_unet.tsv"), c["unet"]);
        SameLayout(Diffusers("sd15_diffusers_vae.tsv", normaliseVae: true), c["vae"]);
        SameLayout(Diffusers("sd15_diffusers_text_encoder.tsv"), c["text_encoder"]);
    }

    [SkippableFact]
    public void Sd21SingleFileSplitsOpenClipAndMapsOntoTheDiffusersFiles()
    {
        var rows = Reference.Layout("sd21_single_file_v2-1_512-ema-pruned.tsv");
        var layout = LdmLayout.Infer(rows.Select(r => r.Name));
        Assert.Equal(LdmTextEncoder.OpenClip, layout.TextEncoder);
        Assert.Equal(24, layout.OpenClipLayers);
        var (_, ignored, unknown, c) = MapSingleFile(rows);
        Assert.Empty(unknown);
        // DDPM 12 + model_ema 2 + text_projection + logit_scale + the 12 tensors of the unused last OpenCLIP layer.
        Assert.Equal(28, ignored.Count);
        Assert.All(ignored.Where(n => n.Contains("resblocks")), n => Assert.Contains("resblocks.23.", n));
        SameLayout(Diffusers("sd21_diffusers_unet.tsv"), c["unet"]);
        // The single file carries no position_ids; the diffusers file does (a non-weight).
        SameLayout(Diffusers("sd21_diffusers_text_encoder.tsv", dropPositionIds: true), c["text_encoder"]);
        // SD2.1's VAE is SD1.5's (same AutoencoderKL config, same file size in real_file_sizes.tsv).
        SameLayout(Diffusers("sd15_diffusers_vae.tsv", normaliseVae: true), c["vae"]);

        var q = NameMap.ToDiffusers("cond_stage_model.model.transformer.resblocks.5.attn.in_proj_weight", layout, out _)!;
        Assert.Equal(["q_proj", "k_proj", "v_proj"], q.Select(m => m.Name.Split('.')[^2]));
        Assert.Equal([0, 1, 2], q.Select(m => m.Part));
    }

    [SkippableTheory]
    [InlineData("sd15_single_file_v1-5-pruned-emaonly.tsv")]
    [InlineData("sd21_single_file_v2-1_512-ema-pruned.tsv")]
    public void DiffusersToLdmInvertsTheMap(string file)
    {
        var rows = Reference.Layout(file);
        var layout = LdmLayout.Infer(rows.Select(r => r.Name));
        int n = 0;
        foreach (var r in rows)
            foreach (var m in NameMap.ToDiffusers(r.Name, layout, out _) ?? [])
            {
                var back = NameMap.ToLdm(m.Component, m.Name, layout);
                Assert.True(back is not null, $"no way back from {m.Path}");
                Assert.Equal((r.Name, m.Part, m.Parts, m.Squeeze), back.Value);
                n++;
            }
        Assert.True(n > 1100);
    }

    [SkippableFact]
    public void LayoutInferredFromDiffusersNamesMatchesTheLdmOne()
    {
        var ldm = LdmLayout.Infer(Reference.Layout("sd15_single_file_v1-5-pruned-emaonly.tsv").Select(r => r.Name));
        var diffusers = LdmLayout.Infer(
            Reference.Layout("sd15_diffusers_unet.tsv").Select(r => "unet/" + r.Name)
                .Concat(Reference.Layout("sd15_diffusers_vae.tsv").Select(r => "vae/" + r.Name)));
        Assert.Equal(2, ldm.LayersPerBlock);
        Assert.Equal(4, ldm.VaeUpBlocks);
        Assert.Equal([1, 2, 3], ldm.UpBlocksWithAttention.Order());
        Assert.Equal(ldm.LayersPerBlock, diffusers.LayersPerBlock);
        Assert.Equal(ldm.UpBlocksWithAttention.Order(), diffusers.UpBlocksWithAttention.Order());
        Assert.Equal(ldm.VaeUpBlocks, diffusers.VaeUpBlocks);
    }

    [SkippableFact]
    public void BothVaeAttentionNamingsNormaliseToTheCurrentOne()
    {
        // The SD1.5 file uses query/key/value/proj_attn, the SDXL file to_q/to_k/to_v/to_out.0; same architecture.
        SameLayout(Diffusers("sdxl_diffusers_vae.tsv"), Diffusers("sd15_diffusers_vae.tsv", normaliseVae: true));
        Assert.Equal("decoder.mid_block.attentions.0.to_out.0.weight", NameMap.NormalizeVaeName("decoder.mid_block.attentions.0.proj_attn.weight"));
        Assert.Equal("decoder.mid_block.attentions.0.to_q.bias", NameMap.NormalizeVaeName("decoder.mid_block.attentions.0.to_q.bias"));
        Assert.Equal("decoder.mid_block.resnets.0.norm1.weight", NameMap.NormalizeVaeName("decoder.mid_block.resnets.0.norm1.weight"));

        // And back, for writers that reproduce the SD1.5 file.
        Assert.Equal("encoder.mid_block.attentions.0.query.weight", NameMap.DeprecatedVaeName("encoder.mid_block.attentions.0.to_q.weight"));
        Assert.Equal("decoder.mid_block.attentions.0.proj_attn.bias", NameMap.DeprecatedVaeName("decoder.mid_block.attentions.0.to_out.0.bias"));
        Assert.Equal("decoder.mid_block.attentions.0.group_norm.weight", NameMap.DeprecatedVaeName("decoder.mid_block.attentions.0.group_norm.weight"));
        Assert.Equal("decoder.mid_block.attentions.0.key.bias", NameMap.DeprecatedVaeName("decoder.mid_block.attentions.0.key.bias"));
        Assert.Equal("decoder.up_blocks.0.resnets.0.conv1.weight", NameMap.DeprecatedVaeName("decoder.up_blocks.0.resnets.0.conv1.weight"));
    }

    [Fact]
    public void UnknownNamesAreNotGuessed()
    {
        var l = LdmLayout.Sd1;
        Assert.Null(NameMap.ToDiffusers("model.diffusion_model.input_blocks.1.0.in_layers.1.weight", l, out var why));
        Assert.Null(why);
        Assert.Null(NameMap.ToDiffusers("lora_unet_down_blocks_0.alpha", l, out why));
        Assert.Null(why);
        Assert.Null(NameMap.ToDiffusers("model.diffusion_model.input_blocks.3.1.norm.weight", l, out _)); // downsampler slot has no attention
        Assert.Null(NameMap.ToDiffusers("betas", l, out why));
        Assert.NotNull(why);
    }

    [SkippableFact]
    public void FamilyIsDetectedFromTheTensors()
    {
        static ModelFamily Detect(IEnumerable<Reference.Row> rows, string prefix = "") =>
            ModelFamilies.Detect(rows.Select(r => (prefix + r.Name, r.Shape)));
        static IEnumerable<Reference.Row> Inpaint(IEnumerable<Reference.Row> rows, string convIn) =>
            rows.Select(r => r.Name == convIn ? r with { Shape = [r.Shape[0], 9, 3, 3] } : r);

        var sd15 = Reference.Layout("sd15_single_file_v1-5-pruned-emaonly.tsv");
        var sd21 = Reference.Layout("sd21_single_file_v2-1_512-ema-pruned.tsv");
        Assert.Equal(ModelFamily.Sd1, Detect(sd15));
        Assert.Equal(ModelFamily.Sd2, Detect(sd21));
        Assert.Equal(ModelFamily.Sd1Inpaint, Detect(Inpaint(sd15, "model.diffusion_model.input_blocks.0.0.weight")));
        Assert.Equal(ModelFamily.Sd2Inpaint, Detect(Inpaint(sd21, "model.diffusion_model.input_blocks.0.0.weight")));
        Assert.Equal(ModelFamily.Sd1, Detect(Reference.Layout("sd15_diffusers_unet.tsv"), "unet/"));
        Assert.Equal(ModelFamily.Sd2, Detect(Reference.Layout("sd21_diffusers_unet.tsv"), "unet/"));
        Assert.Equal(ModelFamily.Sd1Inpaint, Detect(Inpaint(Reference.Layout("sd15_diffusers_unet.tsv"), "conv_in.weight"), "unet/"));
        Assert.Equal(ModelFamily.Sdxl, Detect(Reference.Layout("sdxl_diffusers_unet.tsv"), "unet/"));
        Assert.Equal(ModelFamily.Unknown, Detect(Reference.Layout("sd15_diffusers_vae.tsv"), "vae/"));
        Assert.Equal("sd2-inpaint", ModelFamily.Sd2Inpaint.Name());
    }

    [Fact]
    public void SmallTestModelsFallBackOnTheProjectionShape()
    {
        // Cross-attention 32 (sd random-model --config sd15-tiny/sd21-tiny): 1x1-conv projections are SD1, linear ones SD2.
        (string, long[])[] Unet(string prefix, long[] projIn, long inChannels = 4) =>
        [
            (prefix + "conv_in.weight", [32, inChannels, 3, 3]),
            (prefix + "down_blocks.0.attentions.0.proj_in.weight", projIn),
            (prefix + "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", [32, 32]),
        ];
        Assert.Equal(ModelFamily.Sd1, ModelFamilies.Detect(Unet("unet/", [32, 32, 1, 1])));
        Assert.Equal(ModelFamily.Sd2, ModelFamilies.Detect(Unet("unet/", [32, 32])));
        Assert.Equal(ModelFamily.Sd2Inpaint, ModelFamilies.Detect(Unet("unet/", [32, 32], inChannels: 9)));
        Assert.Equal(ModelFamily.Unknown, ModelFamilies.Detect(Unet("vae/", [32, 32])));
        Assert.Equal(ModelFamily.Sd1, ModelFamilies.Detect(
        [
            ("model.diffusion_model.input_blocks.1.1.proj_in.weight", [32, 32, 1, 1]),
            ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", [32, 32]),
        ]));
    }
}
