using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using StableDiffusion.Runtime;

namespace StableDiffusion.IO;

/// <summary>
/// One low-rank update of one weight: W' = W + Scale · up · down, with up [out, r] (or [out, r, 1, 1]) and down
/// [r, in] or [r, in, kh, kw] (LoCon: the kernel is in down, up is 1×1). Scale = multiplier · alpha / rank.
/// </summary>
public sealed class LoraUpdate(LoraFile file, string key, TensorInfo down, TensorInfo up, float alpha)
{
    public LoraFile File { get; } = file;

    /// <summary>The module's name as the LoRA file spells it, for messages.</summary>
    public string Key { get; } = key;

    public TensorInfo Down { get; } = down;
    public TensorInfo Up { get; } = up;
    public int Rank => (int)Down.Shape[0];
    public float Alpha { get; } = alpha;
    public float Scale => File.Multiplier * Alpha / Rank;

    /// <summary>down as [r, in·kh·kw] in OIHW order, fp32.</summary>
    public float[] ReadDown() => File.Weights.ReadFloat32(Down);

    /// <summary>up as [out, r], fp32.</summary>
    public float[] ReadUp() => File.Weights.ReadFloat32(Up);

    public int KernelHeight => Down.Shape.Length == 4 ? (int)Down.Shape[2] : 1;
    public int KernelWidth => Down.Shape.Length == 4 ? (int)Down.Shape[3] : 1;
}

/// <summary>
/// A LoRA file (safetensors, or .ckpt/.pt through the restricted unpickler) read into its modules: kohya/A1111
/// (<c>lora_unet_*</c>, <c>lora_te_*</c>, SDXL <c>lora_te1_*</c>/<c>lora_te2_*</c>; <c>.lora_down</c>/<c>.lora_up</c>/
/// <c>.alpha</c>; linear, 1×1 and 3×3 convolution i.e. LoCon; diffusers or LDM module names), diffusers/PEFT
/// (<c>unet.….lora_A/lora_B</c>, <c>text_encoder.…</c>, <c>lora.down/up</c>, the older attention-processor
/// <c>…processor.to_q_lora.down</c>), which covers LCM-LoRA. LyCORIS LoHa/LoKr/(IA)³/OFT, DoRA and Tucker-decomposed
/// LoCon are recognised and refused.
/// </summary>
public sealed class LoraFile : IDisposable
{
    /// <summary>A module of the file: which component, its name as stored (without prefix), and its tensors.</summary>
    public sealed record Module(string Component, string Stem, bool Kohya, TensorInfo Down, TensorInfo Up, float? Alpha);

    private LoraFile(WeightFile weights, string name, float multiplier, string format, IReadOnlyList<Module> modules)
    {
        Weights = weights;
        Name = name;
        Multiplier = multiplier;
        Format = format;
        Modules = modules;
    }

    public WeightFile Weights { get; }
    public string Path => Weights.Path;

    /// <summary>The name the prompt and the infotext use: the file name without extension.</summary>
    public string Name { get; }

    public float Multiplier { get; }

    /// <summary>"kohya" or "diffusers" (PEFT and the older forms), for messages.</summary>
    public string Format { get; }

    public IReadOnlyList<Module> Modules { get; }

    public static LoraFile Open(string path, float multiplier = 1f)
    {
        if (!File.Exists(path)) throw new WeightsException($"{path}: LoRA file not found");
        var weights = WeightFile.Open(path);
        try
        {
            var (format, modules) = Parse(weights);
            return new LoraFile(weights, System.IO.Path.GetFileNameWithoutExtension(path), multiplier, format, modules);
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    public void Dispose() => Weights.Dispose();

    // ---- reading ----

    private static readonly (string Marker, string Format)[] Unsupported =
    [
        ("hada_w1_a", "LyCORIS LoHa"), ("hada_", "LyCORIS LoHa"),
        ("lokr_w1", "LyCORIS LoKr"), ("lokr_", "LyCORIS LoKr"),
        ("dora_scale", "DoRA"), ("lora_magnitude_vector", "DoRA"),
        ("lora_mid", "LyCORIS LoCon with a Tucker (CP) decomposition"),
        ("oft_blocks", "LyCORIS OFT"), ("oft_diag", "LyCORIS OFT"),
    ];

    private static readonly (string Suffix, string Format)[] UnsupportedSuffixes =
    [
        (".on_input", "LyCORIS (IA)³"), (".diff", "LyCORIS full weight difference"), (".diff_b", "LyCORIS full weight difference"),
        (".w_norm", "LyCORIS norm layers"), (".b_norm", "LyCORIS norm layers"),
    ];

    private static readonly (string Prefix, string Component)[] KohyaPrefixes =
    [
        ("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"), ("lora_te_", "text_encoder"),
    ];

    private static readonly (string Prefix, string Component)[] DiffusersPrefixes =
    [
        ("unet.", "unet"), ("text_encoder.", "text_encoder"), ("text_encoder_2.", "text_encoder_2"),
    ];

    private enum Role { Down, Up, Alpha }

    private static readonly (string Suffix, Role Role)[] KohyaSuffixes =
        [(".lora_down.weight", Role.Down), (".lora_up.weight", Role.Up), (".alpha", Role.Alpha)];

    private static readonly (string Suffix, Role Role)[] DiffusersSuffixes =
    [
        (".lora_A.weight", Role.Down), (".lora_B.weight", Role.Up),
        (".lora.down.weight", Role.Down), (".lora.up.weight", Role.Up),
        (".lora_linear_layer.down.weight", Role.Down), (".lora_linear_layer.up.weight", Role.Up),
        (".down.weight", Role.Down), (".up.weight", Role.Up), // attention processors: ….processor.to_q_lora.down.weight
        (".alpha", Role.Alpha),
    ];

    private static (string Format, List<Module> Modules) Parse(WeightFile w)
    {
        foreach (var t in w.Tensors)
        {
            var format = Unsupported.FirstOrDefault(u => t.Name.Contains(u.Marker, StringComparison.Ordinal)).Format ??
                         UnsupportedSuffixes.FirstOrDefault(u => t.Name.EndsWith(u.Suffix, StringComparison.Ordinal)).Format;
            if (format is not null)
                throw new WeightsException($"{w.Path}: {format} is not supported (tensor {Text.Q(t.Name)}); sd merges LoRA and LoCon (lora_down/lora_up, lora_A/lora_B)");
        }

        var parts = new Dictionary<(string Component, string Stem), (bool Kohya, TensorInfo? Down, TensorInfo? Up, TensorInfo? Alpha)>();
        bool anyKohya = false, anyDiffusers = false;
        foreach (var t in w.Tensors)
        {
            var key = Classify(t.Name, out var role, out bool kohya) ??
                      throw new WeightsException($"{w.Path}: tensor {Text.Q(t.Name)} is not part of a LoRA sd reads " +
                                                 "(kohya lora_unet_/lora_te_ …lora_down/lora_up/alpha, or diffusers unet./text_encoder. …lora_A/lora_B)");
            anyKohya |= kohya;
            anyDiffusers |= !kohya;
            parts.TryGetValue(key, out var p);
            p.Kohya = kohya;
            switch (role)
            {
                case Role.Down: p.Down = t; break;
                case Role.Up: p.Up = t; break;
                default: p.Alpha = t; break;
            }
            parts[key] = p;
        }
        if (parts.Count == 0) throw new WeightsException($"{w.Path}: has no tensors; not a LoRA");

        var alphas = PeftAlphas(w);
        var modules = new List<Module>();
        foreach (var ((component, stem), p) in parts)
        {
            string what = $"{w.Path}: LoRA module {Text.Q(stem)} ({component})";
            if (p.Down is null || p.Up is null)
                throw new WeightsException($"{what} has {(p.Down is null ? "no down (lora_down/lora_A)" : "no up (lora_up/lora_B)")} weight");
            var d = p.Down.Shape;
            var u = p.Up.Shape;
            if (d.Length is not (2 or 4) || u.Length is not (2 or 4) || (u.Length == 4 && (u[2] != 1 || u[3] != 1)) || u[1] != d[0] || d[0] < 1)
                throw new WeightsException($"{what}: down {Shapes.Format(d)} and up {Shapes.Format(u)} do not form a low-rank pair " +
                                           "(down [r, in] or [r, in, kh, kw], up [out, r] or [out, r, 1, 1])");
            float? alpha = null;
            if (p.Alpha is not null)
            {
                if (p.Alpha.ElementCount != 1) throw new WeightsException($"{what}: alpha has shape {p.Alpha.ShapeString}, expected a scalar");
                alpha = w.ReadFloat32(p.Alpha)[0];
            }
            else if (alphas.TryGetValue(component, out var a)) alpha = a;
            if (alpha is float f && !float.IsFinite(f)) throw new WeightsException($"{what}: alpha is {f}");
            modules.Add(new Module(component, stem, p.Kohya, p.Down, p.Up, alpha));
        }
        return (anyKohya && anyDiffusers ? "kohya+diffusers" : anyKohya ? "kohya" : "diffusers", modules);
    }

    /// <summary>(component, module stem) of a LoRA tensor name, or null if the name is not one.</summary>
    private static (string, string)? Classify(string name, out Role role, out bool kohya)
    {
        role = default;
        kohya = false;
        foreach (var (prefix, component) in KohyaPrefixes)
        {
            if (!name.StartsWith(prefix, StringComparison.Ordinal)) continue;
            kohya = true;
            foreach (var (suffix, r) in KohyaSuffixes)
                if (name.EndsWith(suffix, StringComparison.Ordinal) && name.Length > prefix.Length + suffix.Length)
                {
                    role = r;
                    return (component, name[prefix.Length..^suffix.Length]);
                }
            return null;
        }
        string comp = "unet", rest = name;
        foreach (var (prefix, component) in DiffusersPrefixes)
            if (name.StartsWith(prefix, StringComparison.Ordinal))
            {
                comp = component;
                rest = name[prefix.Length..];
                break;
            }
        foreach (var (suffix, r) in DiffusersSuffixes)
        {
            if (!rest.EndsWith(suffix, StringComparison.Ordinal)) continue;
            var stem = rest[..^suffix.Length];
            bool processor = suffix is ".down.weight" or ".up.weight";
            if (processor)
            {
                // ….attn1.processor.to_q_lora → ….attn1.to_q; to_out_lora → to_out.0
                int at = stem.LastIndexOf(".processor.", StringComparison.Ordinal);
                if (at < 0 || !stem.EndsWith("_lora", StringComparison.Ordinal)) return null;
                var proj = stem[(at + ".processor.".Length)..^"_lora".Length];
                if (proj is not ("to_q" or "to_k" or "to_v" or "to_out")) return null;
                stem = stem[..at] + "." + (proj == "to_out" ? "to_out.0" : proj);
            }
            else if (rest == name && !name.Contains(".processor.", StringComparison.Ordinal) && suffix != ".alpha")
                return null; // an unprefixed name is only the old attention-processor form
            if (stem.Length == 0) return null;
            role = r;
            return (comp, stem);
        }
        return null;
    }

    /// <summary>
    /// diffusers' <c>lora_adapter_metadata</c> (PEFT's lora_alpha per component, as <c>unet.lora_alpha</c> or
    /// <c>{"unet": {"lora_alpha": …}}</c>); without it PEFT's scale is alpha = rank.
    /// </summary>
    private static Dictionary<string, float> PeftAlphas(WeightFile w)
    {
        var result = new Dictionary<string, float>(StringComparer.Ordinal);
        if (!w.Metadata.TryGetValue("lora_adapter_metadata", out var json)) return result;
        try
        {
            using var doc = JsonDocument.Parse(json);
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new WeightsException($"{w.Path}: lora_adapter_metadata is not a JSON object");
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (p.Value.ValueKind == JsonValueKind.Object && p.Value.TryGetProperty("lora_alpha", out var nested) && nested.TryGetSingle(out var na))
                    result[p.Name] = na;
                else if (p.Name.EndsWith(".lora_alpha", StringComparison.Ordinal) && p.Value.TryGetSingle(out var fa))
                    result[p.Name[..^".lora_alpha".Length]] = fa;
            }
        }
        catch (JsonException e)
        {
            throw new WeightsException($"{w.Path}: lora_adapter_metadata is not valid JSON ({e.Message})");
        }
        return result;
    }

    // ---- mapping onto a model ----

    /// <summary>
    /// The updates of this file per component and parameter path, for a model whose components declare
    /// <paramref name="layouts"/> (component → diffusers parameter name → shape). Every module must land on a weight
    /// of the right shape; otherwise a <see cref="WeightsException"/> says how many did.
    /// </summary>
    public Dictionary<string, Dictionary<string, List<LoraUpdate>>> Resolve(IReadOnlyDictionary<string, IReadOnlyDictionary<string, long[]>> layouts)
    {
        var result = new Dictionary<string, Dictionary<string, List<LoraUpdate>>>(StringComparer.Ordinal);
        var kohyaNames = new Dictionary<string, Dictionary<string, string>>(StringComparer.Ordinal);
        var problems = new List<string>();
        int matched = 0;
        foreach (var m in Modules)
        {
            if (!layouts.TryGetValue(m.Component, out var layout))
            {
                problems.Add($"{Text.Q(m.Stem)} is for {m.Component}, which this model does not have");
                continue;
            }
            string? path;
            if (m.Kohya)
            {
                if (!kohyaNames.TryGetValue(m.Component, out var names)) kohyaNames[m.Component] = names = KohyaNames(m.Component, layout);
                path = names.GetValueOrDefault(m.Stem);
            }
            else path = layout.ContainsKey(m.Stem + ".weight") ? m.Stem + ".weight" : null;
            if (path is null)
            {
                problems.Add($"{Text.Q(m.Stem)} names no layer of the model's {m.Component}");
                continue;
            }
            var shape = layout[path];
            if (Fits(m, shape) is string why)
            {
                problems.Add($"{Text.Q(m.Stem)}: {why}");
                continue;
            }
            matched++;
            if (!result.TryGetValue(m.Component, out var byPath)) result[m.Component] = byPath = new(StringComparer.Ordinal);
            if (!byPath.TryGetValue(path, out var list)) byPath[path] = list = [];
            list.Add(new LoraUpdate(this, m.Stem, m.Down, m.Up, m.Alpha ?? m.Down.Shape[0]));
        }
        if (problems.Count > 0)
            throw new WeightsException($"{Path}: LoRA does not fit this model: {matched} of {Modules.Count} modules matched " +
                                       $"({problems[0]}{(problems.Count > 1 ? $"; and {problems.Count - 1} more" : "")}); is it for another model family?");
        return result;
    }

    /// <summary>Every file's updates together (<see cref="Resolve"/>), per component and parameter path, in file order.</summary>
    public static Dictionary<string, Dictionary<string, List<LoraUpdate>>> ResolveAll(IEnumerable<LoraFile> files,
        IReadOnlyDictionary<string, IReadOnlyDictionary<string, long[]>> layouts)
    {
        var all = new Dictionary<string, Dictionary<string, List<LoraUpdate>>>(StringComparer.Ordinal);
        foreach (var f in files)
            foreach (var (component, byPath) in f.Resolve(layouts))
            {
                if (!all.TryGetValue(component, out var into)) all[component] = into = new(StringComparer.Ordinal);
                foreach (var (path, updates) in byPath)
                {
                    if (!into.TryGetValue(path, out var list)) into[path] = list = [];
                    list.AddRange(updates);
                }
            }
        return all;
    }

    /// <summary>Null if the module's pair fits a weight of <paramref name="shape"/>, else why not.</summary>
    private static string? Fits(Module m, long[] shape)
    {
        long[] d = m.Down.Shape, u = m.Up.Shape;
        long kh = d.Length == 4 ? d[2] : 1, kw = d.Length == 4 ? d[3] : 1;
        long wkh = shape.Length == 4 ? shape[2] : 1, wkw = shape.Length == 4 ? shape[3] : 1;
        if (shape.Length is not (2 or 4) || u[0] != shape[0] || d[1] != shape[1] || kh != wkh || kw != wkw)
            return $"down {Shapes.Format(d)} · up {Shapes.Format(u)} does not fit the weight {Shapes.Format(shape)}";
        return null;
    }

    /// <summary>
    /// kohya's module names for a component: the module path with '.' → '_', for the UNet also the LDM path
    /// (input_blocks_1_1_proj_in …) that SDXL-era kohya scripts write.
    /// </summary>
    private static Dictionary<string, string> KohyaNames(string component, IReadOnlyDictionary<string, long[]> layout)
    {
        var names = new Dictionary<string, string>(StringComparer.Ordinal);
        var ldm = component == "unet" ? LdmLayout.Infer(layout.Keys.Select(k => "unet/" + k)) : null;
        foreach (var path in layout.Keys)
        {
            if (!path.EndsWith(".weight", StringComparison.Ordinal)) continue;
            var module = path[..^".weight".Length];
            names.TryAdd(module.Replace('.', '_'), path);
            if (ldm is not null && NameMap.ToLdm("unet", path, ldm) is { } back && back.Ldm.StartsWith(NameMap.UnetPrefix, StringComparison.Ordinal)
                && back.Ldm.EndsWith(".weight", StringComparison.Ordinal))
                names.TryAdd(back.Ldm[NameMap.UnetPrefix.Length..^".weight".Length].Replace('.', '_'), path);
        }
        return names;
    }

    // ---- hash ----

    /// <summary>
    /// A1111's short LoRA hash (its "Lora hashes" infotext): the first 12 hex digits of the sha256 of a safetensors
    /// file's data after its header (kohya/additional-networks' hash), of the whole file for other formats.
    /// </summary>
    public string ShortHash()
    {
        using var stream = File.OpenRead(Path);
        if (Weights.Format == "safetensors")
        {
            Span<byte> header = stackalloc byte[8];
            stream.ReadExactly(header);
            stream.Seek(8 + (long)BitConverter.ToUInt64(header), SeekOrigin.Begin);
        }
        return Convert.ToHexStringLower(SHA256.HashData(stream))[..12];
    }

    public override string ToString() => $"{Name}:{Multiplier.ToString(CultureInfo.InvariantCulture)}";
}
