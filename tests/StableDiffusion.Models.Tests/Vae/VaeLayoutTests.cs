using StableDiffusion.IO;
using StableDiffusion.Models.Vae;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;

namespace StableDiffusion.Models.Tests.Vae;

/// <summary>The module tree built from the real config.json declares exactly the real checkpoint's tensors.</summary>
public class VaeLayoutTests
{
    private static void AssertLayout(AutoencoderKL vae, string tsv)
    {
        // The SD1.5 file uses the deprecated attention names; the loader normalises them, so the layout is compared after that.
        var want = SharedReference.Layout(tsv).ToDictionary(r => NameMap.NormalizeVaeName(r.Name), r => r.Shape, StringComparer.Ordinal);
        var have = vae.ExpectedLayout();
        Assert.Empty(want.Keys.Except(have.Keys).Order());
        Assert.Empty(have.Keys.Except(want.Keys).Order());
        foreach (var (name, shape) in want)
            Assert.True(shape.SequenceEqual(have[name]), $"{name}: declared [{string.Join(", ", have[name])}], checkpoint [{string.Join(", ", shape)}]");
    }

    [SkippableFact]
    public void Sd15_vae_declares_the_248_tensors_and_83_653_863_parameters_of_the_checkpoint()
    {
        var config = VaeConfig.Load(SharedReference.Require("configs", "sd15", "vae", "config.json"));
        using var vae = new AutoencoderKL(config);
        AssertLayout(vae, "sd15_diffusers_vae.tsv");
        Assert.Equal(248, vae.NamedParameters().Count());
        Assert.Equal(83_653_863, vae.ParameterCount);
        // ANCHORS.md: encoder 34.16 M + decoder 49.49 M, quant_conv counted with the encoder and post_quant_conv with the decoder.
        Assert.Equal(34.16, Math.Round((vae.Encoder.ParameterCount + vae.QuantConv!.ParameterCount) / 1e6, 2));
        Assert.Equal(49.49, Math.Round((vae.Decoder.ParameterCount + vae.PostQuantConv!.ParameterCount) / 1e6, 2));
        Assert.Equal(0.18215f, config.ScalingFactor);
        Assert.Equal(8, config.DownscaleFactor);
        Assert.Equal(DType.F32, config.ComputeDType(DType.F16));
    }

    [SkippableFact]
    public void Sd21_base_vae_is_the_sd15_vae()
    {
        var config = VaeConfig.Load(SharedReference.Require("configs", "sd21-base", "vae", "config.json"));
        using var vae = new AutoencoderKL(config);
        AssertLayout(vae, "sd15_diffusers_vae.tsv");
        Assert.Equal(0.18215f, config.ScalingFactor);
    }

    [SkippableFact]
    public void Sdxl_vae_declares_its_checkpoint_and_reads_its_scaling_factor()
    {
        var config = VaeConfig.Load(SharedReference.Require("configs", "sdxl-base", "vae", "config.json"));
        using var vae = new AutoencoderKL(config);
        AssertLayout(vae, "sdxl_diffusers_vae.tsv");
        Assert.Equal(0.13025f, config.ScalingFactor);
        Assert.True(config.ForceUpcast);
    }

    [Fact]
    public void Module_tree_names_follow_diffusers()
    {
        var config = Tiny.Config();
        using var vae = new AutoencoderKL(config);
        var names = vae.NamedParameters().Select(p => p.Path).ToHashSet();
        foreach (var n in new[]
                 {
                     "encoder.conv_in.weight", "encoder.down_blocks.0.resnets.0.norm1.weight", "encoder.down_blocks.0.downsamplers.0.conv.weight",
                     "encoder.down_blocks.1.resnets.0.conv_shortcut.weight", "encoder.mid_block.attentions.0.group_norm.weight",
                     "encoder.mid_block.attentions.0.to_q.bias", "encoder.mid_block.attentions.0.to_out.0.weight",
                     "encoder.mid_block.resnets.1.conv2.bias", "encoder.conv_norm_out.bias", "encoder.conv_out.weight", "quant_conv.weight",
                     "post_quant_conv.bias", "decoder.conv_in.weight", "decoder.mid_block.resnets.0.norm1.bias",
                     "decoder.up_blocks.0.resnets.1.conv1.weight", "decoder.up_blocks.0.upsamplers.0.conv.weight",
                     "decoder.up_blocks.1.resnets.0.conv_shortcut.weight", "decoder.up_blocks.1.resnets.1.norm2.weight",
                     "decoder.conv_norm_out.weight", "decoder.conv_out.bias",
                 })
            Assert.Contains(n, names);
        // The last block of each side neither downsamples nor upsamples; decoder blocks have one more resnet than encoder blocks.
        Assert.DoesNotContain(names, n => n.StartsWith("encoder.down_blocks.1.downsamplers", StringComparison.Ordinal));
        Assert.DoesNotContain(names, n => n.StartsWith("decoder.up_blocks.1.upsamplers", StringComparison.Ordinal));
        Assert.DoesNotContain(names, n => n.StartsWith("encoder.down_blocks.0.resnets.1.", StringComparison.Ordinal));
        Assert.Equal([8, 8, 1, 1], vae.ExpectedLayout()["quant_conv.weight"]);
        Assert.Equal([3, 16, 3, 3], vae.ExpectedLayout()["decoder.conv_out.weight"]);
    }

    [Fact]
    public void Config_defaults_are_diffusers_defaults()
    {
        var c = VaeConfig.FromJson(JsonConfig.Parse("""{"block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]}"""));
        Assert.Equal(VaeConfig.DefaultScalingFactor, c.ScalingFactor);
        Assert.Equal((3, 3, 4, 1, 32), (c.InChannels, c.OutChannels, c.LatentChannels, c.LayersPerBlock, c.NormNumGroups));
        Assert.True(c.ForceUpcast && c.UseQuantConv && c.UsePostQuantConv && c.MidBlockAddAttention);
        Assert.Equal(2, c.DownscaleFactor);
        Assert.Equal(DType.F32, c.ComputeDType(DType.F16));
        Assert.Equal(DType.F16, (c with { ForceUpcast = false }).ComputeDType(DType.F16));

        // Optional parts that the config can switch off are not declared.
        VaeConfig Without(string key) => VaeConfig.FromJson(JsonConfig.Parse(Tiny.With(key, "false")));
        using var noQuant = new AutoencoderKL(Without("use_quant_conv"));
        using var noPostQuant = new AutoencoderKL(Without("use_post_quant_conv"));
        using var noAttention = new AutoencoderKL(Without("mid_block_add_attention"));
        Assert.DoesNotContain(noQuant.NamedParameters(), p => p.Path.StartsWith("quant_conv.", StringComparison.Ordinal));
        Assert.Contains(noQuant.NamedParameters(), p => p.Path.StartsWith("post_quant_conv.", StringComparison.Ordinal));
        Assert.DoesNotContain(noPostQuant.NamedParameters(), p => p.Path.StartsWith("post_quant_conv.", StringComparison.Ordinal));
        Assert.DoesNotContain(noAttention.NamedParameters(), p => p.Path.Contains(".attentions.", StringComparison.Ordinal));
        Assert.False(VaeConfig.FromJson(JsonConfig.Parse(Tiny.With("force_upcast", "false"))).ForceUpcast);
    }

    [Theory]
    [InlineData("act_fn", "\"gelu\"", "\"act_fn\" is gelu")]
    [InlineData("shift_factor", "0.1159", "\"shift_factor\" is not supported")]
    [InlineData("_class_name", "\"AutoencoderTiny\"", "expected AutoencoderKL")]
    [InlineData("norm_num_groups", "5", "does not split into \"norm_num_groups\" 5")]
    [InlineData("latent_channels", "0", "\"latent_channels\" must be positive")]
    [InlineData("scaling_factor", "-1", "\"scaling_factor\" must be positive")]
    [InlineData("layers_per_block", "1.5", "\"layers_per_block\" must be an integer")]
    [InlineData("down_block_types", "[\"DownEncoderBlock2D\"]", "\"down_block_types\" has 1 entries, \"block_out_channels\" 2")]
    [InlineData("up_block_types", "[\"UpDecoderBlock2D\", \"AttnUpDecoderBlock2D\"]", "AttnUpDecoderBlock2D is not supported")]
    public void Config_errors_name_the_file_and_key(string key, string value, string expected)
    {
        var json = Tiny.With(key, value);
        var e = Assert.Throws<ConfigException>(() => VaeConfig.FromJson(JsonConfig.Parse(json, "vae/config.json")));
        Assert.StartsWith("vae/config.json: ", e.Message);
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
