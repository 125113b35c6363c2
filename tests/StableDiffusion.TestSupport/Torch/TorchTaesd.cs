using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.TestSupport.Torch;

/// <summary>
/// madebyollin's TAESD as diffusers' AutoencoderTiny runs it (autoencoder_tiny.py, vae.py EncoderTiny/DecoderTiny),
/// written with libtorch ops in float64, NCHW. Plain numbers stand in for the config: one width, the block counts of
/// each stage. <paramref name="w"/> gives each weight by its diffusers name.
/// </summary>
public sealed class TorchTaesd(Func<string, TorchTensor> w, int[] encoderBlocks, int[] decoderBlocks)
{
    private TorchTensor Conv(TorchTensor x, string p, bool bias = true, long stride = 1, long padding = 1) =>
        F.conv2d(x, w(p + "weight"), bias ? w(p + "bias") : null, strides: [stride, stride], padding: [padding, padding]);

    private TorchTensor Block(TorchTensor x, string p)
    {
        var h = F.relu(Conv(x, p + "conv.0."));
        h = F.relu(Conv(h, p + "conv.2."));
        h = Conv(h, p + "conv.4.");
        return F.relu(h + x); // equal widths: the skip is the identity
    }

    /// <summary>image NCHW in [-1, 1] → latents (scaling factor 1).</summary>
    public TorchTensor Encode(TorchTensor image)
    {
        var h = (image + 1) / 2;
        int i = 0;
        for (int s = 0; s < encoderBlocks.Length; s++)
        {
            var x = h;
            h = Scoped.Run(() => s == 0 ? Conv(x, $"encoder.layers.{i}.") : Conv(x, $"encoder.layers.{i}.", bias: false, stride: 2));
            i++;
            for (int b = 0; b < encoderBlocks[s]; b++, i++)
            {
                var y = h;
                int k = i;
                h = Scoped.Run(() => Block(y, $"encoder.layers.{k}."));
            }
        }
        return Conv(h, $"encoder.layers.{i}.");
    }

    /// <summary>latents NCHW → image NCHW in about [-1, 1].</summary>
    public TorchTensor Decode(TorchTensor latents)
    {
        var h = torch.tanh(latents / 3) * 3;
        h = F.relu(Conv(h, "decoder.layers.0."));
        int i = 2;
        for (int s = 0; s < decoderBlocks.Length; s++)
        {
            for (int b = 0; b < decoderBlocks[s]; b++, i++)
            {
                var y = h;
                int k = i;
                h = Scoped.Run(() => Block(y, $"decoder.layers.{k}."));
            }
            bool last = s == decoderBlocks.Length - 1;
            if (!last)
            {
                h = F.interpolate(h, scale_factor: [2.0, 2.0], mode: InterpolationMode.Nearest);
                i++;
            }
            h = Conv(h, $"decoder.layers.{i}.", bias: last);
            i++;
        }
        return h * 2 - 1;
    }
}
