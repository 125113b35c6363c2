using System.Runtime.InteropServices;
using StableDiffusion.IO.Tests.Support;

namespace StableDiffusion.IO.Tests;

public class ModelSourceTests
{
    private static Dictionary<string, long[]> Expected(string tsv, Func<string, string>? rename = null) =>
        Reference.Layout(tsv).Where(r => !r.Name.EndsWith("position_ids", StringComparison.Ordinal))
            .ToDictionary(r => rename?.Invoke(r.Name) ?? r.Name, r => r.Shape);

    [SkippableFact]
    public void SingleFileAndDiffusersFolderBindToTheSameModelDeclaration()
    {
        using var dir = new TempDir();
        var single = dir.File("sd15.safetensors");
        LayoutFiles.Safetensors(single, LayoutFiles.Rows("sd15_single_file_v1-5-pruned-emaonly.tsv", true));
        LayoutFiles.Sd15Diffusers(dir.Dir("folder"), fp16: true);

        // What a model built from the diffusers configs would declare: the diffusers files' own names and shapes.
        var unet = Expected("sd15_diffusers_unet.tsv");
        var vae = Expected("sd15_diffusers_vae.tsv", NameMap.NormalizeVaeName);
        var te = Expected("sd15_diffusers_text_encoder.tsv");
        foreach (var path in new[] { single, dir.Dir("folder") })
        {
            using var m = ModelSource.Open(path);
            Assert.Equal(ModelFamily.Sd1, m.Family);
            Assert.Equal(686, m.Require("unet").Bind(unet).Count);
            Assert.Equal(248, m.Require("vae").Bind(vae).Count);
            Assert.Equal(196, m.Require("text_encoder").Bind(te).Count);
            Assert.Equal(WeightDType.F16, m.Require("unet").Find("conv_in.weight")!.DType);
        }
        using (var m = ModelSource.Open(dir.Dir("folder")))
        {
            Assert.NotNull(m.TokenizerDirectory);
            Assert.NotNull(m.SchedulerConfig);
        }
    }

    [SkippableFact]
    public void BindNamesTheTensorWithExpectedAndFoundShapes()
    {
        using var dir = new TempDir();
        var path = dir.File("sd15.safetensors");
        LayoutFiles.Safetensors(path, LayoutFiles.Rows("sd15_single_file_v1-5-pruned-emaonly.tsv", true)
            .Where(r => r.Name != "model.diffusion_model.out.2.bias")
            .Select(r => r.Name == "model.diffusion_model.input_blocks.0.0.weight" ? r with { Shape = [320, 5, 3, 3] } : r));
        using var m = ModelSource.Open(path);
        var e = Assert.Throws<WeightsException>(() => m.Require("unet").Bind(Expected("sd15_diffusers_unet.tsv")));
        Assert.Contains("tensor 'conv_in.weight' (stored as 'model.diffusion_model.input_blocks.0.0.weight') has shape [320, 5, 3, 3], expected [320, 4, 3, 3]", e.Message);
        Assert.Contains("and 1 more problem", e.Message);
        Assert.StartsWith(path, e.Message);

        var expected = Expected("sd15_diffusers_unet.tsv");
        expected["conv_in.weight"] = [320, 5, 3, 3];
        e = Assert.Throws<WeightsException>(() => m.Require("unet").Bind(expected));
        Assert.Contains("missing tensor 'conv_out.bias' (expected shape [4])", e.Message);

        expected["conv_out.bias"] = [4];
        expected.Remove("conv_out.weight");
        expected.Remove("conv_out.bias");
        e = Assert.Throws<WeightsException>(() => m.Require("unet").Bind(expected));
        Assert.Contains("unexpected tensor 'conv_out.weight'", e.Message);
    }

    [SkippableFact]
    public void BothVaeNamingsGiveTheSameComponent()
    {
        using var dir = new TempDir();
        var old = LayoutFiles.Sd15Diffusers(dir.Dir("old"), fp16: false);
        var current = LayoutFiles.Sd15Diffusers(dir.Dir("new"), fp16: false, NameMap.NormalizeVaeName);
        using var a = ModelSource.Open(old);
        using var b = ModelSource.Open(current);
        Assert.Equal(b.Require("vae").Tensors.Select(t => t.Name).Order(), a.Require("vae").Tensors.Select(t => t.Name).Order());
        Assert.Contains(a.Require("vae").Tensors, t => t.StoredName.EndsWith("proj_attn.weight") && t.Name.EndsWith("to_out.0.weight"));
    }

    [Fact]
    public void OpenClipProjectionsAreSplitIntoQkvByByteRange()
    {
        using var dir = new TempDir();
        var path = dir.File("tiny-sd2.safetensors");
        var w = new float[6 * 2];
        for (int i = 0; i < w.Length; i++) w[i] = i;
        var b = new float[] { 10, 11, 12, 13, 14, 15 };
        var conv = new float[2 * 2];
        conv[0] = 7;
        SafetensorsWriter.Write(path,
        [
            SafetensorsEntry.FromBytes("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", WeightDType.F32, [6, 2], MemoryMarshal.AsBytes(w.AsSpan()).ToArray()),
            SafetensorsEntry.FromBytes("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias", WeightDType.F32, [6], MemoryMarshal.AsBytes(b.AsSpan()).ToArray()),
            new SafetensorsEntry("cond_stage_model.model.transformer.resblocks.1.ln_1.weight", WeightDType.F32, [2]),
            // The cross-attention width says SD2; the unused last OpenCLIP layer (1 of 2) is dropped.
            new SafetensorsEntry("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", WeightDType.F16, [320, 1024]),
            SafetensorsEntry.FromBytes("first_stage_model.decoder.mid.attn_1.q.weight", WeightDType.F32, [2, 2, 1, 1], MemoryMarshal.AsBytes(conv.AsSpan()).ToArray()),
            new SafetensorsEntry("model_ema.decay", WeightDType.F32, []),
            new SafetensorsEntry("some.lora.weight", WeightDType.F32, [1]),
        ]);
        using var m = ModelSource.Open(path);
        Assert.Equal(ModelFamily.Sd2, m.Family);
        var te = m.Require("text_encoder");
        Assert.Equal([0f, 1, 2, 3], te.Find("text_model.encoder.layers.0.self_attn.q_proj.weight")!.ReadFloat32());
        Assert.Equal([4f, 5, 6, 7], te.Find("text_model.encoder.layers.0.self_attn.k_proj.weight")!.ReadFloat32());
        Assert.Equal([8f, 9, 10, 11], te.Find("text_model.encoder.layers.0.self_attn.v_proj.weight")!.ReadFloat32());
        Assert.Equal([14f, 15], te.Find("text_model.encoder.layers.0.self_attn.v_proj.bias")!.ReadFloat32());
        Assert.Equal([2L, 2], te.Find("text_model.encoder.layers.0.self_attn.k_proj.weight")!.Shape);
        Assert.Equal(6, te.TensorCount);
        var q = m.Require("vae").Find("decoder.mid_block.attentions.0.to_q.weight")!;
        Assert.Equal([2L, 2], q.Shape);
        Assert.Equal([7f, 0, 0, 0], q.ReadFloat32());
        Assert.Equal(["cond_stage_model.model.transformer.resblocks.1.ln_1.weight", "model_ema.decay"], m.Ignored.Select(i => i.Tensor.Name).Order());
        Assert.Equal("some.lora.weight", Assert.Single(m.Unrecognised).Tensor.Name);
    }

    [SkippableFact]
    public void SdxlFoldersAreRecognisedAndLoadable()
    {
        using var dir = new TempDir();
        var xl = dir.File("xl", "model_index.json");
        File.Copy(Reference.Require("configs", "sdxl-base", "model_index.json"), xl);
        foreach (var (c, file) in new[] { ("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model"), ("text_encoder_2", "model") })
            LayoutFiles.Safetensors(dir.File("xl", c, file + ".safetensors"), LayoutFiles.Rows($"sdxl_diffusers_{c}.tsv", true));
        using var m = ModelSource.Open(Path.GetDirectoryName(xl)!);
        Assert.Equal(ModelFamily.Sdxl, m.Family);
        Assert.Equal(1680, m.Require("unet").TensorCount);
        Assert.Equal(517, m.Require("text_encoder_2").TensorCount);
    }

    [Fact]
    public void DiffusersFoldersWithoutWeightsOrIndexAreNamed()
    {
        using var dir = new TempDir();
        Assert.Contains("without model_index.json", Assert.Throws<WeightsException>(() => ModelSource.Open(dir.Path)).Message);
        File.WriteAllText(dir.File("model_index.json"), """{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}""");
        dir.Dir("unet");
        var e = Assert.Throws<WeightsException>(() => ModelSource.Open(dir.Path, "fp16"));
        Assert.Contains("no unet weights (looked for diffusion_pytorch_model.fp16.safetensors", e.Message);
        File.WriteAllText(dir.File("model_index.json"), "{ nope");
        Assert.Throws<ConfigException>(() => ModelSource.Open(dir.Path));
    }

    [Fact]
    public void DiffusersPrefersTheRequestedVariantAndPytorchBinWorks()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("model_index.json"), """{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], "safety_checker": [null, null]}""");
        SafetensorsWriter.Write(dir.File("unet", "diffusion_pytorch_model.safetensors"), [new SafetensorsEntry("conv_in.weight", WeightDType.F32, [320, 4, 3, 3])]);
        TorchWriter.Write(dir.File("unet", "diffusion_pytorch_model.fp16.bin"), [new TorchTensor("conv_in.weight", "HalfStorage", [320, 4, 3, 3])]);
        using (var plain = ModelSource.Open(dir.Path))
            Assert.Equal(WeightDType.F32, plain.Component("unet")!.Find("conv_in.weight")!.DType);
        using var fp16 = ModelSource.Open(dir.Path, "fp16");
        Assert.Equal(WeightDType.F16, fp16.Component("unet")!.Find("conv_in.weight")!.DType);
        Assert.Equal("diffusers", fp16.Format);
    }
}
