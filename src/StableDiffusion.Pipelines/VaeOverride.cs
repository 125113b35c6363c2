using System.Globalization;
using StableDiffusion.IO;
using StableDiffusion.Models;
using StableDiffusion.Models.Vae;

namespace StableDiffusion.Pipelines;

/// <summary>
/// A VAE that replaces the model's own (<c>--vae</c>): a diffusers VAE folder (config.json beside its weights, e.g.
/// madebyollin/sdxl-vae-fp16-fix), a pipeline folder's vae/, or a single file in diffusers or LDM naming (with or
/// without the <c>first_stage_model.</c> prefix, as A1111's VAE files come). A single file carries no config: it takes
/// the model's, so only its latent channels can be checked; a folder's config must agree on the scaling factor too.
/// </summary>
public sealed class VaeOverride : IDisposable
{
    private readonly List<WeightFile> files = [];

    private VaeOverride(string path) => Path = path;

    /// <summary>The file or folder as given, for messages.</summary>
    public string Path { get; }

    /// <summary>The VAE's own config.json, or null for a single file.</summary>
    public VaeConfig? Config { get; private set; }

    public ComponentWeights Weights { get; private set; } = null!;

    /// <summary>The latent channels the weights decode (the decoder's conv_in input width).</summary>
    public int LatentChannels { get; private set; }

    public static VaeOverride Open(string path)
    {
        var vae = new VaeOverride(path);
        try
        {
            if (Directory.Exists(path)) vae.OpenFolder(path);
            else if (File.Exists(path)) vae.OpenFile(path);
            else throw new WeightsException($"{path}: no such file or directory (--vae)");
            return vae;
        }
        catch
        {
            vae.Dispose();
            throw;
        }
    }

    private void OpenFolder(string dir)
    {
        var root = File.Exists(System.IO.Path.Combine(dir, "config.json")) ? dir : System.IO.Path.Combine(dir, "vae");
        var config = System.IO.Path.Combine(root, "config.json");
        if (!File.Exists(config))
            throw new WeightsException($"{dir}: not a VAE folder (no config.json, and no vae/config.json)");
        Config = VaeConfig.Load(config);
        var weights = ModelSource.WeightFileCandidates("vae", null).Select(n => System.IO.Path.Combine(root, n)).FirstOrDefault(File.Exists)
            ?? throw new WeightsException($"{root}: no VAE weights beside config.json (diffusion_pytorch_model.safetensors or .bin, or their .fp16 variants)");
        var file = WeightFile.Open(weights);
        files.Add(file);
        var c = new ComponentWeights("vae", weights);
        foreach (var t in file.Tensors)
        {
            var name = NameMap.NormalizeVaeName(t.Name);
            c.Add(new ModelTensor(name == t.Name ? t : t with { Name = name }, file, t.Name));
        }
        Finish(c);
    }

    private void OpenFile(string path)
    {
        var file = WeightFile.Open(path);
        files.Add(file);
        var c = new ComponentWeights("vae", path);
        bool ldm = file.Tensors.Any(t => t.Name.Contains("decoder.up.", StringComparison.Ordinal) || t.Name.Contains("encoder.down.", StringComparison.Ordinal));
        foreach (var t in file.Tensors)
        {
            if (NameMap.IsOptional(t.Name)) continue;
            if (!ldm)
            {
                var name = NameMap.NormalizeVaeName(t.Name);
                c.Add(new ModelTensor(name == t.Name ? t : t with { Name = name }, file, t.Name));
                continue;
            }
            // A1111's VAE files are the checkpoint's first_stage_model without the prefix; full checkpoints keep it.
            string? ldmName = t.Name.StartsWith(NameMap.VaePrefix, StringComparison.Ordinal) ? t.Name
                : t.Name.StartsWith("encoder.", StringComparison.Ordinal) || t.Name.StartsWith("decoder.", StringComparison.Ordinal)
                  || t.Name.StartsWith("quant_conv.", StringComparison.Ordinal) || t.Name.StartsWith("post_quant_conv.", StringComparison.Ordinal)
                    ? NameMap.VaePrefix + t.Name
                    : null;
            if (ldmName is null) continue; // a whole checkpoint given as --vae: only its VAE is wanted
            var targets = NameMap.ToDiffusers(ldmName, LdmLayout.Sd1, out _);
            if (targets is null) continue;
            foreach (var m in targets.Where(m => m.Component == "vae"))
            {
                var shape = m.DiffusersShape(t.Shape)
                    ?? throw new WeightsException($"{path}: tensor {Text.Q(t.Name)} {t.ShapeString} cannot become {Text.Q(m.Path)}");
                long part = t.ByteLength / m.Parts;
                c.Add(new ModelTensor(new TensorInfo(m.Name, t.DType, shape, t.Offset + m.Part * part, part), file, t.Name));
            }
        }
        Finish(c);
    }

    private void Finish(ComponentWeights c)
    {
        var convIn = c.Find("decoder.conv_in.weight")
            ?? throw new WeightsException($"{Path}: not a VAE (no decoder.conv_in.weight, in diffusers or LDM naming)");
        if (convIn.Shape.Length != 4) throw new WeightsException($"{Path}: decoder.conv_in.weight has shape [{string.Join(", ", convIn.Shape)}], not a convolution");
        LatentChannels = (int)convIn.Shape[1];
        Weights = c;
    }

    /// <summary>
    /// The VAE config the pipeline uses with this VAE in place of <paramref name="model"/>'s: the folder's own, or the
    /// model's for a single file. A VAE for other latents (channels, or a folder's scaling factor) is refused.
    /// </summary>
    public VaeConfig ConfigFor(VaeConfig model, string modelName)
    {
        if (LatentChannels != model.LatentChannels)
            throw new WeightsException($"{Path}: a VAE with {LatentChannels} latent channels cannot decode {modelName}'s {model.LatentChannels}-channel latents");
        if (Config is null) return model;
        if (Config.LatentChannels != LatentChannels)
            throw new WeightsException($"{Path}: config.json says {Config.LatentChannels} latent channels, the weights have {LatentChannels}");
        if (Math.Abs(Config.ScalingFactor - model.ScalingFactor) > 1e-6f)
            throw new WeightsException($"{Path}: a VAE with scaling factor {Num(Config.ScalingFactor)} ({Family(Config.ScalingFactor)}) " +
                                       $"does not fit {modelName}, whose latents use {Num(model.ScalingFactor)} ({Family(model.ScalingFactor)})");
        return Config;
    }

    private static string Family(float scaling) =>
        Math.Abs(scaling - VaeConfig.DefaultScalingFactor) < 1e-6f ? "SD 1.x/2.x" : Math.Abs(scaling - 0.13025f) < 1e-6f ? "SDXL" : "another family";

    private static string Num(float v) => v.ToString(CultureInfo.InvariantCulture);

    public void Dispose()
    {
        foreach (var f in files) f.Dispose();
        files.Clear();
    }
}
