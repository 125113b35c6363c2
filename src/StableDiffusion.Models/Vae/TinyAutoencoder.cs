using StableDiffusion.IO;
using StableDiffusion.Runtime;

namespace StableDiffusion.Models.Vae;

/// <summary>
/// diffusers' AutoencoderTiny (madebyollin's TAESD): convolutions, ReLUs and residual blocks only, about 1.2 M
/// parameters a side. Takes and gives the same tensors as <see cref="AutoencoderKL"/>: images NHWC in [-1, 1] and
/// diffusion latents (the published models' latents already are SD's scaled latents, scaling factor 1).
/// <code>
/// encode: layers((x + 1) / 2) · scaling_factor
/// decode: layers(3·tanh(z / scaling_factor / 3)) · 2 − 1
/// </code>
/// </summary>
public sealed class TinyAutoencoder : Module
{
    public TinyAutoencoder(TinyVaeConfig config)
    {
        Config = config;
        Encoder = Child("encoder", new TinyEncoder(config));
        Decoder = Child("decoder", new TinyDecoder(config));
    }

    public TinyVaeConfig Config { get; }
    public TinyEncoder Encoder { get; }
    public TinyDecoder Decoder { get; }
    public int LatentChannels => Config.LatentChannels;

    /// <summary>The precision the weights were loaded in, which the model computes in.</summary>
    public DType DType => Decoder.ComputeDType ?? PartDType(Encoder, "");

    // A part loaded on its own (a decoder-only .pth) has its dtype; loaded through this model, it is the model's.
    private DType PartDType(Module part, string what) =>
        part.ComputeDType ?? ComputeDType ?? throw new InvalidOperationException($"tiny VAE{what} used before its weights were loaded");

    /// <summary>image [N, H, W, in] in [-1, 1], H and W multiples of 8 → diffusion latents [N, H/8, W/8, latent].</summary>
    public Tensor EncodeToLatents(IOps ops, Tensor image)
    {
        int f = Config.DownscaleFactor;
        if (image.Rank != 4 || image.Dim(3) != Config.InChannels || image.Dim(1) % f != 0 || image.Dim(2) % f != 0)
            throw new UsageException($"tiny VAE encode: image {image} must be [N, H, W, {Config.InChannels}] with H and W multiples of {f}");
        var dt = PartDType(Encoder, " encoder");
        using var cast = image.DType == dt ? null : ops.Cast(image, dt);
        var h = ops.Scale(cast ?? image, 0.5f, 0.5f); // [-1, 1] → [0, 1], TAESD's image range
        h = h.Then(t => Encoder.Forward(ops, t));
        return Config.ScalingFactor == 1f ? h : h.Then(t => ops.Scale(t, Config.ScalingFactor));
    }

    /// <summary>diffusion latents [N, h, w, latent] → image [N, 8h, 8w, out], roughly in [-1, 1] (not clamped).</summary>
    public Tensor Decode(IOps ops, Tensor latents)
    {
        if (latents.Rank != 4 || latents.Dim(3) != LatentChannels)
            throw new UsageException($"tiny VAE decode: latents {latents} must be [N, h, w, {LatentChannels}]");
        var dt = PartDType(Decoder, " decoder");
        using var cast = latents.DType == dt ? null : ops.Cast(latents, dt);
        // 3·tanh(z/3): the decoder's soft clamp of out-of-range latents.
        var h = ops.Scale(cast ?? latents, 1f / (3f * Config.ScalingFactor));
        h = h.Then(t => ops.Activate(t, Activation.Tanh));
        h = h.Then(t => ops.Scale(t, 3f));
        h = h.Then(t => Decoder.Forward(ops, t));
        return h.Then(t => ops.Scale(t, 2f, -1f)); // [0, 1] → [-1, 1]
    }
}

/// <summary>A parameterless layer of an nn.Sequential (ReLU, nearest 2x upsampling): it only keeps the indices.</summary>
public sealed class TinyLayer(TinyLayer.Kind kind) : Module
{
    public enum Kind { Relu, Upsample }

    public Kind Op { get; } = kind;

    public Tensor Forward(IOps ops, Tensor x) =>
        Op == Kind.Relu ? ops.Activate(x, Activation.Relu) : ops.Upsample2x(x);
}

/// <summary>AutoencoderTinyBlock: conv-ReLU-conv-ReLU-conv (3x3) plus the input (a 1x1 skip when the width changes), then ReLU.</summary>
public sealed class TinyBlock : Module
{
    public TinyBlock(int inChannels, int outChannels)
    {
        Conv = Child("conv", new ModuleList<Module>([
            new Conv2d(inChannels, outChannels, 3, padding: 1), new TinyLayer(TinyLayer.Kind.Relu),
            new Conv2d(outChannels, outChannels, 3, padding: 1), new TinyLayer(TinyLayer.Kind.Relu),
            new Conv2d(outChannels, outChannels, 3, padding: 1)]));
        Skip = inChannels != outChannels ? Child("skip", new Conv2d(inChannels, outChannels, 1, bias: false)) : null;
    }

    public ModuleList<Module> Conv { get; }
    public Conv2d? Skip { get; }

    /// <summary>Does not free x.</summary>
    public Tensor Forward(IOps ops, Tensor x)
    {
        var h = ((Conv2d)Conv[0]).Forward(ops, x);
        h = h.Then(t => ops.Activate(t, Activation.Relu));
        h = h.Then(t => ((Conv2d)Conv[2]).Forward(ops, t));
        h = h.Then(t => ops.Activate(t, Activation.Relu));
        using var skip = Skip?.Forward(ops, x);
        h = h.Then(t => ((Conv2d)Conv[4]).Forward(ops, t, residual: skip ?? x));
        return h.Then(t => ops.Activate(t, Activation.Relu));
    }
}

/// <summary>An nn.Sequential named "layers" of convolutions, <see cref="TinyBlock"/>s and <see cref="TinyLayer"/>s.</summary>
public abstract class TinySequential : Module
{
    private protected TinySequential(IEnumerable<Module> layers) => Layers = Child("layers", new ModuleList<Module>(layers));

    public ModuleList<Module> Layers { get; }

    /// <summary>The first convolution (its weight tells the precision).</summary>
    public Conv2d First => (Conv2d)Layers[0];

    /// <summary>Does not free x.</summary>
    public Tensor Forward(IOps ops, Tensor x)
    {
        Tensor? h = null;
        foreach (var layer in Layers.Items)
        {
            var input = h ?? x;
            var next = layer switch
            {
                Conv2d c => c.Forward(ops, input),
                TinyBlock b => b.Forward(ops, input),
                TinyLayer l => l.Forward(ops, input),
                _ => throw new InvalidOperationException($"tiny VAE: unexpected layer {layer.GetType().Name}"),
            };
            h?.Dispose();
            h = next;
        }
        return h ?? throw new InvalidOperationException("tiny VAE: no layers");
    }
}

/// <summary>
/// diffusers EncoderTiny: conv(in → w), blocks; then per further stage a stride-2 conv without bias and blocks; conv(w → latent).
/// </summary>
public sealed class TinyEncoder(TinyVaeConfig c) : TinySequential(Build(c))
{
    private static IEnumerable<Module> Build(TinyVaeConfig c)
    {
        int w = c.EncoderBlockOutChannels[0];
        for (int i = 0; i < c.NumEncoderBlocks.Length; i++)
        {
            yield return i == 0 ? new Conv2d(c.InChannels, w, 3, padding: 1) : new Conv2d(w, w, 3, stride: 2, padding: 1, bias: false);
            for (int b = 0; b < c.NumEncoderBlocks[i]; b++) yield return new TinyBlock(w, w);
        }
        yield return new Conv2d(w, c.LatentChannels, 3, padding: 1);
    }
}

/// <summary>
/// diffusers DecoderTiny: conv(latent → w), ReLU; per stage blocks, then (all but the last) nearest 2x upsampling and
/// a conv without bias; the last stage ends in conv(w → out) with bias.
/// </summary>
public sealed class TinyDecoder(TinyVaeConfig c) : TinySequential(Build(c))
{
    private static IEnumerable<Module> Build(TinyVaeConfig c)
    {
        int w = c.DecoderBlockOutChannels[0], n = c.NumDecoderBlocks.Length;
        yield return new Conv2d(c.LatentChannels, w, 3, padding: 1);
        yield return new TinyLayer(TinyLayer.Kind.Relu);
        for (int i = 0; i < n; i++)
        {
            for (int b = 0; b < c.NumDecoderBlocks[i]; b++) yield return new TinyBlock(w, w);
            bool last = i == n - 1;
            if (!last) yield return new TinyLayer(TinyLayer.Kind.Upsample);
            yield return new Conv2d(w, last ? c.OutChannels : w, 3, padding: 1, bias: last);
        }
    }
}

/// <summary>
/// Finds a tiny autoencoder's weights: a diffusers AutoencoderTiny folder (config.json and
/// diffusion_pytorch_model.safetensors), a .safetensors file in diffusers naming, or madebyollin's original
/// taesd*_encoder.pth / taesd*_decoder.pth (one file, or a folder holding them), whose nn.Sequential indices
/// map onto diffusers' names (the original decoder's index 0 is the tanh clamp, which diffusers has in forward()).
/// </summary>
public static class TinyAutoencoderFiles
{
    /// <summary>The open files and how each stored name maps to a diffusers name; dispose when loaded.</summary>
    public sealed class Opened(TinyVaeConfig config, string source, IReadOnlyList<(WeightFile File, Func<string, string> Rename)> files) : IDisposable
    {
        public TinyVaeConfig Config { get; } = config;
        public ComponentWeights Weights { get; } = ComponentWeights.FromFiles("tiny vae", source, files);
        public bool HasEncoder => Weights.Tensors.Any(t => t.Name.StartsWith("encoder.", StringComparison.Ordinal));
        public bool HasDecoder => Weights.Tensors.Any(t => t.Name.StartsWith("decoder.", StringComparison.Ordinal));

        /// <summary>The tensors under <paramref name="prefix"/>, named relative to it (to load one half on its own).</summary>
        public ComponentWeights Part(string prefix) => ComponentWeights.FromFiles("tiny vae", Weights.Source,
            files.Select(f => (f.File, (Func<string, string>)(n => f.Rename(n) is var d && d.StartsWith(prefix, StringComparison.Ordinal) ? d[prefix.Length..] : d))));

        public void Dispose()
        {
            foreach (var (f, _) in files) f.Dispose();
        }
    }

    public static Opened Open(string path)
    {
        var files = new List<(WeightFile, Func<string, string>)>();
        var config = TinyVaeConfig.Default;
        try
        {
            if (Directory.Exists(path))
            {
                var json = Path.Combine(path, "config.json");
                var st = new[] { "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors" }
                    .Select(n => Path.Combine(path, n)).FirstOrDefault(File.Exists);
                if (st is not null)
                {
                    if (File.Exists(json)) config = TinyVaeConfig.Load(json);
                    files.Add((WeightFile.Open(st), n => n));
                }
                else
                {
                    var pth = Directory.GetFiles(path, "*.pth").Where(f => Side(f) is not null).Order(StringComparer.Ordinal).ToList();
                    if (pth.Count == 0)
                        throw new WeightsException($"{path}: no tiny autoencoder here (expected diffusion_pytorch_model.safetensors or taesd_encoder.pth / taesd_decoder.pth)");
                    foreach (var f in pth) files.Add(OpenPth(f));
                }
            }
            else if (File.Exists(path))
            {
                if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
                {
                    var json = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "config.json");
                    if (File.Exists(json) && IsTinyConfig(json)) config = TinyVaeConfig.Load(json);
                    files.Add((WeightFile.Open(path), n => n));
                }
                else files.Add(OpenPth(path));
            }
            else throw new WeightsException($"{path}: tiny autoencoder not found");
            return new Opened(config, path, files);
        }
        catch
        {
            foreach (var (f, _) in files) f.Dispose();
            throw;
        }
    }

    /// <summary>Loads the halves a file provides (a decoder-only .pth gives only the decoder).</summary>
    public static TinyAutoencoder Load(Opened opened, IOps ops, DType dtype)
    {
        var model = new TinyAutoencoder(opened.Config);
        try
        {
            if (opened.HasEncoder && opened.HasDecoder) model.Load(opened.Weights, ops, dtype);
            else if (opened.HasDecoder) model.Decoder.Load(opened.Part("decoder."), ops, dtype);
            else if (opened.HasEncoder) model.Encoder.Load(opened.Part("encoder."), ops, dtype);
            else throw new WeightsException($"{opened.Weights.Source}: no encoder.* or decoder.* tensors");
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    private static bool IsTinyConfig(string json) =>
        JsonConfig.Load(json).String("_class_name", "") == "AutoencoderTiny";

    private static string? Side(string file)
    {
        var name = Path.GetFileName(file).ToLowerInvariant();
        return name.Contains("decoder", StringComparison.Ordinal) ? "decoder" : name.Contains("encoder", StringComparison.Ordinal) ? "encoder" : null;
    }

    private static (WeightFile, Func<string, string>) OpenPth(string file)
    {
        var side = Side(file) ?? throw new WeightsException($"{file}: a tiny autoencoder .pth must be named *encoder*.pth or *decoder*.pth (as taesd_encoder.pth / taesd_decoder.pth)");
        var f = WeightFile.Open(file);
        return (f, side == "encoder" ? n => "encoder.layers." + n : n => "decoder.layers." + DecoderIndex(file, n));
    }

    private static string DecoderIndex(string file, string name)
    {
        int dot = name.IndexOf('.');
        if (dot <= 0 || !int.TryParse(name.AsSpan(0, dot), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int i) || i == 0)
            throw new WeightsException($"{file}: tensor '{name}' is not an nn.Sequential entry of the TAESD decoder");
        return (i - 1).ToString(System.Globalization.CultureInfo.InvariantCulture) + name[dot..];
    }
}
