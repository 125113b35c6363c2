using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.TestSupport.Torch;

/// <summary>
/// diffusers' AutoencoderKL written with libtorch ops in float64, NCHW, from the published architecture (vae.py,
/// unet_2d_blocks.py, resnet.py, attention_processor.py) and nothing of ours but the weights file. Plain numbers
/// stand in for the config so that a mistake in VaeConfig cannot hide here. <paramref name="w"/> gives each weight by
/// its diffusers name as a float64 tensor.
/// </summary>
public sealed class TorchVae(Func<string, TorchTensor> w, int[] widths, int layersPerBlock, int groups, double scalingFactor)
{
    private const double Eps = 1e-6;

    private TorchTensor W(string name) => w(name);

    private TorchTensor Conv(TorchTensor x, string prefix, long stride = 1, long padding = 0) =>
        F.conv2d(x, W(prefix + "weight"), W(prefix + "bias"), strides: [stride, stride], padding: [padding, padding]);

    private TorchTensor NormSilu(TorchTensor x, string prefix) =>
        F.silu(F.group_norm(x, groups, W(prefix + "weight"), W(prefix + "bias"), Eps));

    private TorchTensor Resnet(TorchTensor x, string p)
    {
        var h = Conv(NormSilu(x, p + "norm1."), p + "conv1.", padding: 1);
        h = Conv(NormSilu(h, p + "norm2."), p + "conv2.", padding: 1);
        // diffusers gives a resnet a 1x1 shortcut convolution exactly when it changes the width.
        var shortcut = x.shape[1] == h.shape[1] ? x : Conv(x, p + "conv_shortcut.");
        return shortcut + h;
    }

    /// <summary>Single-head self-attention over all pixels, group norm in front, input added back.</summary>
    private TorchTensor Attention(TorchTensor x, string p)
    {
        long b = x.shape[0], c = x.shape[1], hgt = x.shape[2], wid = x.shape[3];
        var normed = F.group_norm(x, groups, W(p + "group_norm.weight"), W(p + "group_norm.bias"), Eps);
        var tokens = normed.reshape(b, c, hgt * wid).transpose(1, 2);
        var q = F.linear(tokens, W(p + "to_q.weight"), W(p + "to_q.bias"));
        var k = F.linear(tokens, W(p + "to_k.weight"), W(p + "to_k.bias"));
        var v = F.linear(tokens, W(p + "to_v.weight"), W(p + "to_v.bias"));
        var scores = torch.matmul(q, k.transpose(1, 2)) / Math.Sqrt(c);
        var o = torch.matmul(F.softmax(scores, -1), v);
        o = F.linear(o, W(p + "to_out.0.weight"), W(p + "to_out.0.bias"));
        return o.transpose(1, 2).reshape(b, c, hgt, wid) + x;
    }

    private TorchTensor Mid(TorchTensor x, string p) =>
        Resnet(Attention(Resnet(x, p + "resnets.0."), p + "attentions.0."), p + "resnets.1.");

    /// <summary>image NCHW → encoder output (before quant_conv).</summary>
    public TorchTensor Encoder(TorchTensor x)
    {
        var h = Conv(x, "encoder.conv_in.", padding: 1);
        for (int i = 0; i < widths.Length; i++)
        {
            for (int j = 0; j < layersPerBlock; j++) h = Scoped.Run(() => Resnet(h, $"encoder.down_blocks.{i}.resnets.{j}."));
            if (i < widths.Length - 1) // pad right and bottom by one, then an unpadded stride-2 convolution
                h = Conv(F.pad(h, [0, 1, 0, 1]), $"encoder.down_blocks.{i}.downsamplers.0.conv.", stride: 2);
        }
        h = Scoped.Run(() => Mid(h, "encoder.mid_block."));
        return Conv(NormSilu(h, "encoder.conv_norm_out."), "encoder.conv_out.", padding: 1);
    }

    /// <summary>VAE latents NCHW (after post_quant_conv) → image NCHW.</summary>
    public TorchTensor Decoder(TorchTensor z)
    {
        var h = Conv(z, "decoder.conv_in.", padding: 1);
        h = Scoped.Run(() => Mid(h, "decoder.mid_block."));
        for (int i = 0; i < widths.Length; i++)
        {
            for (int j = 0; j < layersPerBlock + 1; j++) h = Scoped.Run(() => Resnet(h, $"decoder.up_blocks.{i}.resnets.{j}."));
            if (i < widths.Length - 1)
                h = Scoped.Run(() => Conv(F.interpolate(h, scale_factor: [2.0, 2.0], mode: InterpolationMode.Nearest), $"decoder.up_blocks.{i}.upsamplers.0.conv.", padding: 1));
        }
        return Conv(NormSilu(h, "decoder.conv_norm_out."), "decoder.conv_out.", padding: 1);
    }

    /// <summary>AutoencoderKL.encode: the moments (mean ‖ log-variance along channels).</summary>
    public TorchTensor Encode(TorchTensor image) => Conv(Encoder(image), "quant_conv.");

    /// <summary>The pipeline's decode of diffusion latents: divide by the scaling factor, post_quant_conv, decoder.</summary>
    public TorchTensor Decode(TorchTensor latents) => Decoder(Conv(latents / scalingFactor, "post_quant_conv."));

    /// <summary>The pipeline's image → diffusion latents: the distribution's mean, scaled.</summary>
    public TorchTensor Latents(TorchTensor moments, long latentChannels) => moments[.., ..(int)latentChannels] * scalingFactor;

    public static TorchTensor Nchw(TorchTensor nhwc) => nhwc.permute(0, 3, 1, 2);
    public static TorchTensor Nhwc(TorchTensor nchw) => nchw.permute(0, 2, 3, 1);
}
