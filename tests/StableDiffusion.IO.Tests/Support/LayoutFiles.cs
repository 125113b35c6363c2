using StableDiffusion.IO;

namespace StableDiffusion.IO.Tests.Support;

/// <summary>
/// Header-accurate model files built from the reference layouts, with zero data left as holes: they take no disk
/// space, read as zeros, and have the real files' names, dtypes and shapes.
/// </summary>
public static class LayoutFiles
{
    public static WeightDType Cast(WeightDType t, bool fp16) => fp16 && t == WeightDType.F32 ? WeightDType.F16 : t;

    public static IEnumerable<Reference.Row> Rows(string tsv, bool fp16) =>
        Reference.Layout(tsv).Select(r => r with { DType = Cast(r.DType, fp16) });

    public static void Safetensors(string path, IEnumerable<Reference.Row> rows) =>
        SafetensorsWriter.Write(path, rows.Select(r => new SafetensorsEntry(r.Name, r.DType, r.Shape)));

    public static void Checkpoint(string path, IEnumerable<Reference.Row> rows) =>
        TorchWriter.Write(path, rows.Select(r => new TorchTensor(r.Name, StorageType(r.DType), r.Shape)), wrapInStateDict: true);

    public static string StorageType(WeightDType t) => t switch
    {
        WeightDType.F32 => "FloatStorage",
        WeightDType.F16 => "HalfStorage",
        WeightDType.BF16 => "BFloat16Storage",
        WeightDType.I64 => "LongStorage",
        _ => "IntStorage",
    };

    /// <summary>An SD1.5 diffusers folder: model_index.json, configs, and the three weight files (fp16 variant names if asked).</summary>
    public static string Sd15Diffusers(string dir, bool fp16, Func<string, string>? vaeName = null)
    {
        var configs = Reference.Require("configs", "sd15");
        File.Copy(Path.Combine(configs, "model_index.json"), Path.Combine(dir, "model_index.json"));
        foreach (var sub in new[] { "unet", "vae", "text_encoder", "tokenizer", "scheduler" })
        {
            Directory.CreateDirectory(Path.Combine(dir, sub));
            foreach (var f in Directory.GetFiles(Path.Combine(configs, sub))) File.Copy(f, Path.Combine(dir, sub, Path.GetFileName(f)));
        }
        string v = fp16 ? ".fp16" : "";
        Safetensors(Path.Combine(dir, "unet", $"diffusion_pytorch_model{v}.safetensors"), Rows("sd15_diffusers_unet.tsv", fp16));
        Safetensors(Path.Combine(dir, "vae", $"diffusion_pytorch_model{v}.safetensors"),
            Rows("sd15_diffusers_vae.tsv", fp16).Select(r => r with { Name = vaeName?.Invoke(r.Name) ?? r.Name }));
        Safetensors(Path.Combine(dir, "text_encoder", $"model{v}.safetensors"), Rows("sd15_diffusers_text_encoder.tsv", fp16));
        return dir;
    }
}
