using StableDiffusion.IO;

namespace StableDiffusion.Cli;

/// <summary><c>--taesd</c>: a local folder or file, or a hub id (org/name) whose diffusers AutoencoderTiny files are fetched.</summary>
internal static class TinyAutoencoderArgument
{
    public static string Resolve(string target, TextWriter stderr)
    {
        if (File.Exists(target) || Directory.Exists(target)) return target;
        if (!HubClient.IsRepoId(target))
            throw new UsageException($"--taesd '{target}': no such file or folder, and not a hub id (org/name such as madebyollin/taesd)");
        stderr.WriteLine($"sd: fetching the tiny autoencoder {target}");
        using var hub = new HubClient(HubOptions.FromEnvironment());
        return hub.DownloadFilesAsync(target, ["config.json", "diffusion_pytorch_model.safetensors"]).GetAwaiter().GetResult();
    }
}
