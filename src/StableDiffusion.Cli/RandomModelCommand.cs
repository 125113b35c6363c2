using System.Diagnostics;
using System.Globalization;
using StableDiffusion.IO;
using StableDiffusion.Models;

namespace StableDiffusion.Cli;

/// <summary>
/// <c>sd random-model</c>: a model with random weights in the exact layout of a real one (or a tiny one with the
/// same names), as a diffusers folder or an LDM single file, for tests and for benchmarking without downloads.
/// </summary>
internal static class RandomModelCommand
{
    public static int Run(Args a, TextWriter stdout, TextWriter stderr)
    {
        var configName = a.Value("--config");
        var formatName = a.Value("--format") ?? "diffusers";
        var dtypeName = a.Value("--dtype") ?? "fp16";
        var seedText = a.Value("--seed") ?? "0";
        var outPath = a.Value("--out");
        var tokenizer = a.Value("--tokenizer");
        a.CheckDone();

        var names = string.Join(", ", Presets.All.Select(p => p.Name).Append("taesd").Append("taesdxl"));
        if (configName is "taesd" or "taesdxl") return WriteTiny(configName, formatName, dtypeName, seedText, outPath, stdout);
        if (configName is null) throw new UsageException($"'sd random-model' needs --config ({names})");
        var preset = Presets.Find(configName) ?? throw new UsageException($"--config '{configName}' is not one of {names}");
        var format = formatName switch
        {
            "diffusers" => RandomModelFormat.Diffusers,
            "single-file" => RandomModelFormat.SingleFile,
            _ => throw new UsageException($"--format '{formatName}' is not one of diffusers, single-file"),
        };
        var dtype = dtypeName switch
        {
            "fp16" => WeightDType.F16,
            "fp32" => WeightDType.F32,
            _ => throw new UsageException($"--dtype '{dtypeName}' is not one of fp16, fp32"),
        };
        if (!ulong.TryParse(seedText, NumberStyles.None, CultureInfo.InvariantCulture, out var seed))
            throw new UsageException($"--seed '{seedText}' is not a whole number from 0 to {ulong.MaxValue}");
        if (outPath is null || outPath.Length == 0) throw new UsageException("'sd random-model' needs --out (a folder for diffusers, a .safetensors file for single-file)");
        // The folder gets CLIP's built-in vocabulary; --tokenizer replaces it with another folder's.
        string[] vocabFiles = ["vocab.json", "merges.txt"];
        if (tokenizer is not null)
        {
            if (format != RandomModelFormat.Diffusers) throw new UsageException("--tokenizer goes with --format diffusers (single files carry no tokenizer)");
            foreach (var f in vocabFiles)
                if (!File.Exists(Path.Combine(tokenizer, f))) throw new UsageException($"--tokenizer {tokenizer}: no {f} there");
        }

        var clock = Stopwatch.StartNew();
        var progress = new StderrProgress(stderr, clock);
        long bytes = RandomModel.Write(preset, format, dtype, seed, outPath, progress);
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"wrote {preset.Name} ({formatName}, {dtypeName}, seed {seed}) to {outPath}: {bytes / 1048576.0:F1} MiB in {clock.Elapsed.TotalSeconds:F1} s"));
        if (tokenizer is not null)
            foreach (var dir in new[] { "tokenizer", "tokenizer_2" }.Where(d => Directory.Exists(Path.Combine(outPath, d))))
                foreach (var f in vocabFiles) File.Copy(Path.Combine(tokenizer, f), Path.Combine(outPath, dir, f), overwrite: true);
        return 0;
    }

    /// <summary>
    /// A random tiny autoencoder (TAESD's layout; taesdxl's is the same network) as a diffusers AutoencoderTiny folder:
    /// config.json and diffusion_pytorch_model.safetensors.
    /// </summary>
    private static int WriteTiny(string name, string format, string dtypeName, string seedText, string? outPath, TextWriter stdout)
    {
        if (format != "diffusers") throw new UsageException($"--config {name} is written as a diffusers folder only (--format diffusers)");
        var dtype = dtypeName switch
        {
            "fp16" => WeightDType.F16,
            "fp32" => WeightDType.F32,
            _ => throw new UsageException($"--dtype '{dtypeName}' is not one of fp16, fp32"),
        };
        if (!ulong.TryParse(seedText, NumberStyles.None, CultureInfo.InvariantCulture, out var seed))
            throw new UsageException($"--seed '{seedText}' is not a whole number from 0 to {ulong.MaxValue}");
        if (outPath is null || outPath.Length == 0) throw new UsageException("'sd random-model' needs --out (a folder)");
        Directory.CreateDirectory(outPath);
        using var model = new Models.Vae.TinyAutoencoder(Models.Vae.TinyVaeConfig.Default);
        File.WriteAllText(Path.Combine(outPath, "config.json"), TinyConfigJson);
        SafetensorsWriter.Write(Path.Combine(outPath, "diffusion_pytorch_model.safetensors"), RandomWeights.Entries(model, seed, dtype));
        stdout.WriteLine($"wrote {name} (diffusers, {dtypeName}, seed {seed}) to {outPath}");
        return 0;
    }

    /// <summary>madebyollin/taesd's config.json (taesdxl's is the same).</summary>
    private const string TinyConfigJson =
        "{\"_class_name\": \"AutoencoderTiny\", \"act_fn\": \"relu\", \"in_channels\": 3, \"out_channels\": 3, \"latent_channels\": 4, " +
        "\"encoder_block_out_channels\": [64, 64, 64, 64], \"decoder_block_out_channels\": [64, 64, 64, 64], " +
        "\"num_encoder_blocks\": [1, 3, 3, 3], \"num_decoder_blocks\": [3, 3, 3, 1], \"latent_magnitude\": 3, \"latent_shift\": 0.5, " +
        "\"scaling_factor\": 1.0, \"upsampling_scaling_factor\": 2, \"force_upcast\": false}";

    /// <summary>A line on stderr every few seconds while writing, so full-size models show progress and tiny ones stay quiet.</summary>
    private sealed class StderrProgress(TextWriter stderr, Stopwatch clock) : IProgress<RandomModelProgress>
    {
        private static readonly TimeSpan Every = TimeSpan.FromSeconds(2);
        private TimeSpan last = TimeSpan.Zero;

        public void Report(RandomModelProgress p)
        {
            if (clock.Elapsed - last < Every) return;
            last = clock.Elapsed;
            stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"sd: writing {p.File}: {p.Done / 1048576.0:F0} of {p.Total / 1048576.0:F0} MiB ({100.0 * p.Done / Math.Max(1, p.Total):F0}%)"));
        }
    }
}
