using System.Security.Cryptography;
using StableDiffusion.IO;

namespace StableDiffusion.Pipelines;

/// <summary>
/// The "Model hash" of A1111's infotext: the first 10 hex digits of the checkpoint file's sha256 (what civitai looks
/// models up by). A diffusers folder has no single checkpoint; its UNet weights file stands in. Files in the Hugging
/// Face cache are links to blobs named by their sha256, so those names are used instead of reading gigabytes.
/// </summary>
public static class ModelHash
{
    public static string Compute(ModelSource source)
    {
        var file = source.Format == "diffusers"
            ? source.Files.Select(f => f.Path).FirstOrDefault(p => Path.GetFileName(Path.GetDirectoryName(p)) == "unet")
            : source.Path;
        if (file is null) throw new WeightsException($"{source.Path}: no UNet weights file to hash");
        return Sha256(file)[..10];
    }

    /// <summary>A1111's "VAE hash": the first 10 hex digits of the VAE weight file's sha256.</summary>
    public static string OfFile(string path) => Sha256(path)[..10];

    private static string Sha256(string path)
    {
        var target = File.ResolveLinkTarget(path, returnFinalTarget: true)?.FullName;
        var blob = target is null ? null : Path.GetFileName(target);
        if (blob is { Length: 64 } && blob.All(Uri.IsHexDigit)) return blob.ToLowerInvariant();
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }
}
