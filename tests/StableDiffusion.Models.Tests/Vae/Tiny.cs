using System.Text.Json.Nodes;
using StableDiffusion.Models.Vae;

namespace StableDiffusion.Models.Tests.Vae;

/// <summary>
/// A VAE with SD's structure and naming at tiny widths: two blocks [16, 32] (so one down- and one upsampler, a
/// width change on each side, latents at half the image size), one resnet per encoder block, 8 groups, a
/// non-default scaling factor so that ignoring it shows.
/// </summary>
internal static class Tiny
{
    public const string Json = """
        {
          "_class_name": "AutoencoderKL",
          "act_fn": "silu",
          "block_out_channels": [16, 32],
          "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
          "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
          "in_channels": 3,
          "out_channels": 3,
          "latent_channels": 4,
          "layers_per_block": 1,
          "norm_num_groups": 8,
          "scaling_factor": 0.25
        }
        """;

    public static readonly int[] Widths = [16, 32];
    public const int Layers = 1, Groups = 8, Latent = 4;
    public const double ScalingFactor = 0.25;

    public static VaeConfig Config() => VaeConfig.FromJson(JsonConfig.Parse(Json, "tiny/config.json"));

    /// <summary>The tiny config with <paramref name="key"/> set to the JSON value <paramref name="value"/>.</summary>
    public static string With(string key, string value)
    {
        var node = JsonNode.Parse(Json)!.AsObject();
        node[key] = JsonNode.Parse(value);
        return node.ToJsonString();
    }
}
