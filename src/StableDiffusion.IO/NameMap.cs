namespace StableDiffusion.IO;

/// <summary>
/// Where one LDM tensor goes in diffusers naming: component ("unet", "vae", "text_encoder") and name. An OpenCLIP
/// fused <c>in_proj</c> is split along dimension 0 into <paramref name="Parts"/> pieces (q, k, v); the VAE's
/// attention projections are 1×1 convolutions in LDM and linear layers in diffusers (<paramref name="Squeeze"/>).
/// </summary>
public sealed record MappedName(string Component, string Name, int Part = 0, int Parts = 1, bool Squeeze = false)
{
    /// <summary>A bare matrix applied as x @ M (OpenCLIP's text_projection): diffusers' Linear weight is Mᵀ.</summary>
    public bool Transpose { get; init; }

    public string Path => $"{Component}/{Name}";

    /// <summary>The diffusers shape of this piece of an LDM tensor of shape <paramref name="ldm"/>, or null if it cannot be.</summary>
    public long[]? DiffusersShape(long[] ldm)
    {
        var s = (long[])ldm.Clone();
        if (Parts > 1)
        {
            if (s.Length == 0 || s[0] % Parts != 0) return null;
            s[0] /= Parts;
        }
        if (Squeeze)
        {
            if (s.Length != 4 || s[2] != 1 || s[3] != 1) return null;
            s = s[..2];
        }
        if (Transpose)
        {
            if (s.Length != 2) return null;
            s = [s[1], s[0]];
        }
        return s;
    }
}

/// <summary>Text towers an LDM single file may carry.</summary>
public enum LdmTextEncoder
{
    /// <summary>SD1.x: Hugging Face CLIPTextModel names under <c>cond_stage_model.transformer.</c>.</summary>
    Clip,
    /// <summary>SD2.x: OpenCLIP ViT-H names under <c>cond_stage_model.model.</c>, fused q/k/v.</summary>
    OpenClip,
    /// <summary>
    /// SDXL (Stability's SGM naming): CLIP ViT-L under <c>conditioner.embedders.0.transformer.</c> and OpenCLIP
    /// ViT-bigG under <c>conditioner.embedders.1.model.</c> (every layer kept, text_projection used).
    /// </summary>
    Sdxl,
}

/// <summary>
/// The few facts about a model's block structure the name map needs, inferred from its tensor names (either naming):
/// UNet resnets per down block, which UNet up blocks have attention, VAE up block count, the text tower and, for
/// OpenCLIP, its layer count (diffusers drops the last layer, which SD2 never uses).
/// </summary>
public sealed record LdmLayout(int LayersPerBlock, IReadOnlySet<int> UpBlocksWithAttention, int VaeUpBlocks, LdmTextEncoder TextEncoder, int OpenClipLayers)
{
    public static readonly LdmLayout Sd1 = new(2, new HashSet<int> { 1, 2, 3 }, 4, LdmTextEncoder.Clip, 0);
    public static readonly LdmLayout Sd2 = Sd1 with { TextEncoder = LdmTextEncoder.OpenClip, OpenClipLayers = 24 };

    /// <summary>Infers the layout from LDM names (<c>model.diffusion_model.…</c>) or prefixed diffusers names (<c>unet/…</c>).</summary>
    public static LdmLayout Infer(IEnumerable<string> names)
    {
        int firstDown = int.MaxValue, vaeUp = 0, openClip = 0, maxOut = -1;
        bool openClipSeen = false, sgm = false;
        var outWithAttn = new HashSet<int>();
        var upAttn = new HashSet<int>();
        int diffusersLayers = 0;
        foreach (var n in names)
        {
            if (Segments(n, "model.diffusion_model.input_blocks.", out var a) && a.Tail.StartsWith("0.op.", StringComparison.Ordinal))
                firstDown = Math.Min(firstDown, a.Index);
            else if (Segments(n, "model.diffusion_model.output_blocks.", out var o))
            {
                maxOut = Math.Max(maxOut, o.Index);
                if (o.Tail.StartsWith("1.", StringComparison.Ordinal) && !o.Tail.StartsWith("1.conv.", StringComparison.Ordinal)) outWithAttn.Add(o.Index);
            }
            else if (Segments(n, "first_stage_model.decoder.up.", out var u)) vaeUp = Math.Max(vaeUp, u.Index + 1);
            else if (Segments(n, "vae/decoder.up_blocks.", out var du)) vaeUp = Math.Max(vaeUp, du.Index + 1);
            else if (Segments(n, "cond_stage_model.model.transformer.resblocks.", out var r))
            {
                openClipSeen = true;
                openClip = Math.Max(openClip, r.Index + 1);
            }
            else if (n.StartsWith("cond_stage_model.model.", StringComparison.Ordinal)) openClipSeen = true;
            else if (Segments(n, NameMap.BigGPrefix + "transformer.resblocks.", out var g))
            {
                sgm = true;
                openClip = Math.Max(openClip, g.Index + 1);
            }
            else if (n.StartsWith("conditioner.embedders.", StringComparison.Ordinal) || n.StartsWith("text_encoder_2/", StringComparison.Ordinal)) sgm = true;
            else if (Segments(n, "unet/up_blocks.", out var ub) && ub.Tail.StartsWith("attentions.", StringComparison.Ordinal)) upAttn.Add(ub.Index);
            else if (Segments(n, "unet/down_blocks.0.resnets.", out var dr)) diffusersLayers = Math.Max(diffusersLayers, dr.Index + 1);
        }
        int layers = firstDown != int.MaxValue ? firstDown - 1 : diffusersLayers > 0 ? diffusersLayers : 2;
        if (maxOut >= 0)
            foreach (var i in outWithAttn) upAttn.Add(i / (layers + 1));
        return new LdmLayout(layers, upAttn, vaeUp > 0 ? vaeUp : 4,
            sgm ? LdmTextEncoder.Sdxl : openClipSeen ? LdmTextEncoder.OpenClip : LdmTextEncoder.Clip, openClip);
    }

    internal static bool Segments(string name, string prefix, out (int Index, string Tail) r)
    {
        r = default;
        if (!name.StartsWith(prefix, StringComparison.Ordinal)) return false;
        int dot = name.IndexOf('.', prefix.Length);
        if (dot < 0 || !int.TryParse(name.AsSpan(prefix.Length, dot - prefix.Length), System.Globalization.NumberStyles.None, null, out var i)) return false;
        r = (i, name[(dot + 1)..]);
        return true;
    }
}

/// <summary>
/// The one LDM ↔ diffusers name map, as rules: the original Stable Diffusion checkpoints (CompVis LDM naming, SD1.x
/// and SD2.x) on one side, the diffusers/transformers module paths the models are built from on the other.
/// </summary>
public static class NameMap
{
    public const string UnetPrefix = "model.diffusion_model.";
    public const string VaePrefix = "first_stage_model.";
    public const string ClipPrefix = "cond_stage_model.transformer.";
    public const string OpenClipPrefix = "cond_stage_model.model.";
    /// <summary>SDXL single files (SGM naming): the CLIP ViT-L tower, in Hugging Face names below this prefix.</summary>
    public const string SgmClipPrefix = "conditioner.embedders.0.transformer.";
    /// <summary>SDXL single files: the OpenCLIP ViT-bigG tower, in OpenCLIP names below this prefix.</summary>
    public const string BigGPrefix = "conditioner.embedders.1.model.";

    /// <summary>The DDPM schedule buffers LDM checkpoints carry; sd computes its schedules itself.</summary>
    public static readonly IReadOnlySet<string> DdpmBuffers = new HashSet<string>
    {
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
        "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    };

    /// <summary>Tensors a checkpoint may carry that are not weights: position_ids, DDPM buffers, EMA bookkeeping.</summary>
    public static bool IsOptional(string name) =>
        name.EndsWith("position_ids", StringComparison.Ordinal) || DdpmBuffers.Contains(name) ||
        name.StartsWith("model_ema.", StringComparison.Ordinal);

    /// <summary>
    /// Maps an LDM name. Returns the target(s); null with <paramref name="ignored"/> set for tensors that have no
    /// diffusers counterpart by design; null with <paramref name="ignored"/> null for names the map does not know.
    /// Names only: position_ids map like any tensor, and loaders skip them by <see cref="IsOptional"/>.
    /// </summary>
    public static MappedName[]? ToDiffusers(string ldm, LdmLayout layout, out string? ignored)
    {
        ignored = null;
        if (DdpmBuffers.Contains(ldm) || ldm.StartsWith("model_ema.", StringComparison.Ordinal))
        {
            ignored = "not a weight (DDPM schedule buffer or EMA bookkeeping)";
            return null;
        }
        if (ldm.StartsWith(UnetPrefix, StringComparison.Ordinal))
            return One("unet", Unet(ldm[UnetPrefix.Length..], layout.LayersPerBlock));
        if (ldm.StartsWith(VaePrefix, StringComparison.Ordinal))
            return Vae(ldm[VaePrefix.Length..], layout.VaeUpBlocks);
        if (ldm.StartsWith(ClipPrefix, StringComparison.Ordinal))
        {
            var rest = ldm[ClipPrefix.Length..];
            return One("text_encoder", rest.StartsWith("text_model.", StringComparison.Ordinal) ? rest : "text_model." + rest);
        }
        if (ldm.StartsWith(OpenClipPrefix, StringComparison.Ordinal))
            return OpenClip(ldm[OpenClipPrefix.Length..], "text_encoder", layout.OpenClipLayers, out ignored);
        if (ldm.StartsWith(SgmClipPrefix, StringComparison.Ordinal))
            return One("text_encoder", ldm[SgmClipPrefix.Length..] is var c && c.StartsWith("text_model.", StringComparison.Ordinal) ? c : null);
        if (ldm.StartsWith(BigGPrefix, StringComparison.Ordinal))
            return OpenClip(ldm[BigGPrefix.Length..], "text_encoder_2", 0, out ignored);
        return null;
    }

    /// <summary>Whether the stored tensor behind a diffusers tensor is its transpose (SDXL's bigG text_projection).</summary>
    public static bool StoredTransposed(string component, string name) => component == "text_encoder_2" && name == "text_projection.weight";

    /// <summary>
    /// The LDM tensor a diffusers tensor comes from (and which part of it), or null if the map has no rule for it.
    /// A transposed one is told by <see cref="StoredTransposed"/>.
    /// </summary>
    public static (string Ldm, int Part, int Parts, bool Squeeze)? ToLdm(string component, string name, LdmLayout layout)
    {
        switch (component)
        {
            case "unet":
                var u = UnetBack(name, layout);
                return u is null ? null : (UnetPrefix + u, 0, 1, false);
            case "vae":
                return VaeBack(name, layout.VaeUpBlocks);
            case "text_encoder" when layout.TextEncoder == LdmTextEncoder.Clip:
                return name.StartsWith("text_model.", StringComparison.Ordinal) ? (ClipPrefix + name, 0, 1, false) : null;
            case "text_encoder" when layout.TextEncoder == LdmTextEncoder.Sdxl:
                return name.StartsWith("text_model.", StringComparison.Ordinal) ? (SgmClipPrefix + name, 0, 1, false) : null;
            case "text_encoder":
                return OpenClipBack(name, OpenClipPrefix);
            case "text_encoder_2":
                return name == "text_projection.weight" ? (BigGPrefix + "text_projection", 0, 1, false) : OpenClipBack(name, BigGPrefix);
            default:
                return null;
        }
    }

    private static MappedName[]? One(string component, string? name) => name is null ? null : [new MappedName(component, name)];

    // ---- UNet ----

    private static readonly (string Ldm, string Diffusers)[] ResnetParts =
    [
        ("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."),
    ];

    private static readonly (string Ldm, string Diffusers)[] UnetTop =
    [
        ("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
        // SDXL's text_time addition embedding
        ("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2."),
    ];

    private static string? Unet(string n, int layers)
    {
        if (Rename(n, UnetTop, false) is string top) return top;
        int per = layers + 1;
        if (LdmLayout.Segments(n, "input_blocks.", out var ib) && ib.Index >= 1)
        {
            int b = (ib.Index - 1) / per, k = (ib.Index - 1) % per;
            if (k < layers && ib.Tail.StartsWith("0.", StringComparison.Ordinal))
                return Resnet($"down_blocks.{b}.resnets.{k}.", ib.Tail[2..]);
            if (k < layers && ib.Tail.StartsWith("1.", StringComparison.Ordinal))
                return $"down_blocks.{b}.attentions.{k}.{ib.Tail[2..]}";
            if (k == layers && ib.Tail.StartsWith("0.op.", StringComparison.Ordinal))
                return $"down_blocks.{b}.downsamplers.0.conv.{ib.Tail[5..]}";
            return null;
        }
        if (LdmLayout.Segments(n, "middle_block.", out var mb))
            return mb.Index switch
            {
                0 => Resnet("mid_block.resnets.0.", mb.Tail),
                1 => "mid_block.attentions.0." + mb.Tail,
                2 => Resnet("mid_block.resnets.1.", mb.Tail),
                _ => null,
            };
        if (LdmLayout.Segments(n, "output_blocks.", out var ob) && LdmLayout.Segments(ob.Tail, "", out var sub))
        {
            int b = ob.Index / per, k = ob.Index % per;
            if (sub.Index == 0) return Resnet($"up_blocks.{b}.resnets.{k}.", sub.Tail);
            if (sub.Tail.StartsWith("conv.", StringComparison.Ordinal) && k == layers)
                return $"up_blocks.{b}.upsamplers.0.conv.{sub.Tail[5..]}";
            if (sub.Index == 1) return $"up_blocks.{b}.attentions.{k}.{sub.Tail}";
        }
        return null;
    }

    private static string? UnetBack(string n, LdmLayout layout)
    {
        if (Rename(n, UnetTop, true) is string top) return top;
        int per = layout.LayersPerBlock + 1;
        if (LdmLayout.Segments(n, "down_blocks.", out var db))
        {
            int i0 = 1 + db.Index * per;
            if (LdmLayout.Segments(db.Tail, "resnets.", out var r)) return ResnetBack($"input_blocks.{i0 + r.Index}.0.", r.Tail);
            if (LdmLayout.Segments(db.Tail, "attentions.", out var a)) return $"input_blocks.{i0 + a.Index}.1.{a.Tail}";
            if (db.Tail.StartsWith("downsamplers.0.conv.", StringComparison.Ordinal))
                return $"input_blocks.{i0 + layout.LayersPerBlock}.0.op.{db.Tail["downsamplers.0.conv.".Length..]}";
            return null;
        }
        if (n.StartsWith("mid_block.", StringComparison.Ordinal))
        {
            var rest = n["mid_block.".Length..];
            if (LdmLayout.Segments(rest, "resnets.", out var r) && r.Index < 2) return ResnetBack($"middle_block.{2 * r.Index}.", r.Tail);
            if (rest.StartsWith("attentions.0.", StringComparison.Ordinal)) return "middle_block.1." + rest["attentions.0.".Length..];
            return null;
        }
        if (LdmLayout.Segments(n, "up_blocks.", out var ub))
        {
            int i0 = ub.Index * per;
            if (LdmLayout.Segments(ub.Tail, "resnets.", out var r)) return ResnetBack($"output_blocks.{i0 + r.Index}.0.", r.Tail);
            if (LdmLayout.Segments(ub.Tail, "attentions.", out var a)) return $"output_blocks.{i0 + a.Index}.1.{a.Tail}";
            if (ub.Tail.StartsWith("upsamplers.0.conv.", StringComparison.Ordinal))
            {
                int slot = layout.UpBlocksWithAttention.Contains(ub.Index) ? 2 : 1;
                return $"output_blocks.{i0 + layout.LayersPerBlock}.{slot}.conv.{ub.Tail["upsamplers.0.conv.".Length..]}";
            }
        }
        return null;
    }

    private static string? Resnet(string at, string tail) => Rename(tail, ResnetParts, false) is string t ? at + t : null;

    private static string? ResnetBack(string at, string tail) => Rename(tail, ResnetParts, true) is string t ? at + t : null;

    // ---- VAE ----

    private static readonly (string Ldm, string Diffusers)[] VaeResnetParts =
        [("norm1.", "norm1."), ("conv1.", "conv1."), ("norm2.", "norm2."), ("conv2.", "conv2."), ("nin_shortcut.", "conv_shortcut.")];

    private static readonly (string Ldm, string Diffusers)[] VaeAttentionParts =
        [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")];

    private static readonly (string Ldm, string Diffusers)[] VaeTop =
    [
        ("encoder.conv_in.", "encoder.conv_in."), ("encoder.conv_out.", "encoder.conv_out."),
        ("encoder.norm_out.", "encoder.conv_norm_out."), ("decoder.conv_in.", "decoder.conv_in."),
        ("decoder.conv_out.", "decoder.conv_out."), ("decoder.norm_out.", "decoder.conv_norm_out."),
        ("quant_conv.", "quant_conv."), ("post_quant_conv.", "post_quant_conv."),
    ];

    private static readonly (string Ldm, string Diffusers)[] VaeMidResnets = [("mid.block_1.", "mid_block.resnets.0."), ("mid.block_2.", "mid_block.resnets.1.")];

    private static MappedName[]? Vae(string n, int upBlocks)
    {
        foreach (var half in new[] { "encoder.", "decoder." })
        {
            var attn = half + "mid.attn_1.";
            if (!n.StartsWith(attn, StringComparison.Ordinal)) continue;
            var tail = n[attn.Length..];
            if (Rename(tail, VaeAttentionParts, false) is not string t) return null;
            bool squeeze = t.EndsWith(".weight", StringComparison.Ordinal) && !t.StartsWith("group_norm.", StringComparison.Ordinal);
            return [new MappedName("vae", $"{half}mid_block.attentions.0.{t}", Squeeze: squeeze)];
        }
        foreach (var half in new[] { "encoder.", "decoder." })
            foreach (var (ldm, mid) in VaeMidResnets)
                if (n.StartsWith(half + ldm, StringComparison.Ordinal))
                    return One("vae", Rename(n[(half + ldm).Length..], VaeResnetParts, false) is string t ? half + mid + t : null);
        if (Rename(n, VaeTop, false) is string top) return One("vae", top);
        if (LdmLayout.Segments(n, "encoder.down.", out var d))
        {
            if (LdmLayout.Segments(d.Tail, "block.", out var r)) return One("vae", Rename(r.Tail, VaeResnetParts, false) is string t ? $"encoder.down_blocks.{d.Index}.resnets.{r.Index}.{t}" : null);
            if (d.Tail.StartsWith("downsample.conv.", StringComparison.Ordinal)) return One("vae", $"encoder.down_blocks.{d.Index}.downsamplers.0.conv.{d.Tail["downsample.conv.".Length..]}");
            return null;
        }
        if (LdmLayout.Segments(n, "decoder.up.", out var u) && u.Index < upBlocks)
        {
            int b = upBlocks - 1 - u.Index; // LDM counts decoder blocks from the output end
            if (LdmLayout.Segments(u.Tail, "block.", out var r)) return One("vae", Rename(r.Tail, VaeResnetParts, false) is string t ? $"decoder.up_blocks.{b}.resnets.{r.Index}.{t}" : null);
            if (u.Tail.StartsWith("upsample.conv.", StringComparison.Ordinal)) return One("vae", $"decoder.up_blocks.{b}.upsamplers.0.conv.{u.Tail["upsample.conv.".Length..]}");
        }
        return null;
    }

    private static (string, int, int, bool)? VaeBack(string n, int upBlocks)
    {
        foreach (var half in new[] { "encoder.", "decoder." })
        {
            var attn = half + "mid_block.attentions.0.";
            if (!n.StartsWith(attn, StringComparison.Ordinal)) continue;
            var tail = Deprecated(n[attn.Length..]);
            if (Rename(tail, VaeAttentionParts, true) is not string t) return null;
            bool squeeze = n.EndsWith(".weight", StringComparison.Ordinal) && !t.StartsWith("norm.", StringComparison.Ordinal);
            return (VaePrefix + half + "mid.attn_1." + t, 0, 1, squeeze);
        }
        foreach (var half in new[] { "encoder.", "decoder." })
        {
            foreach (var (ldm, mid) in VaeMidResnets)
                if (n.StartsWith(half + mid, StringComparison.Ordinal))
                    return Rename(n[(half + mid).Length..], VaeResnetParts, true) is string t ? (VaePrefix + half + ldm + t, 0, 1, false) : null;
        }
        if (Rename(n, VaeTop, true) is string top) return (VaePrefix + top, 0, 1, false);
        if (LdmLayout.Segments(n, "encoder.down_blocks.", out var d))
        {
            if (LdmLayout.Segments(d.Tail, "resnets.", out var r))
                return Rename(r.Tail, VaeResnetParts, true) is string t ? ($"{VaePrefix}encoder.down.{d.Index}.block.{r.Index}.{t}", 0, 1, false) : null;
            if (d.Tail.StartsWith("downsamplers.0.conv.", StringComparison.Ordinal))
                return ($"{VaePrefix}encoder.down.{d.Index}.downsample.conv.{d.Tail["downsamplers.0.conv.".Length..]}", 0, 1, false);
            return null;
        }
        if (LdmLayout.Segments(n, "decoder.up_blocks.", out var u) && u.Index < upBlocks)
        {
            int b = upBlocks - 1 - u.Index;
            if (LdmLayout.Segments(u.Tail, "resnets.", out var r))
                return Rename(r.Tail, VaeResnetParts, true) is string t ? ($"{VaePrefix}decoder.up.{b}.block.{r.Index}.{t}", 0, 1, false) : null;
            if (u.Tail.StartsWith("upsamplers.0.conv.", StringComparison.Ordinal))
                return ($"{VaePrefix}decoder.up.{b}.upsample.conv.{u.Tail["upsamplers.0.conv.".Length..]}", 0, 1, false);
        }
        return null;
    }

    // ---- VAE attention naming inside diffusers itself ----

    private static readonly (string Old, string New)[] DeprecatedAttention =
        [("query.", "to_q."), ("key.", "to_k."), ("value.", "to_v."), ("proj_attn.", "to_out.0.")];

    /// <summary>
    /// Diffusers VAE files come with two attention namings: the deprecated query/key/value/proj_attn (the SD1.5 file)
    /// and to_q/to_k/to_v/to_out.0 (current saves). This gives the current one for either.
    /// </summary>
    public static string NormalizeVaeName(string name)
    {
        int at = name.IndexOf(".attentions.", StringComparison.Ordinal);
        if (at < 0) return name;
        int start = name.IndexOf('.', at + ".attentions.".Length);
        if (start < 0) return name;
        return name[..(start + 1)] + Deprecated(name[(start + 1)..]);
    }

    /// <summary>The deprecated query/key/value/proj_attn spelling of a VAE name (the inverse of <see cref="NormalizeVaeName"/>).</summary>
    public static string DeprecatedVaeName(string name)
    {
        int at = name.IndexOf(".attentions.", StringComparison.Ordinal);
        if (at < 0) return name;
        int start = name.IndexOf('.', at + ".attentions.".Length);
        if (start < 0) return name;
        var tail = name[(start + 1)..];
        return name[..(start + 1)] + (Rename(tail, DeprecatedAttention, true) ?? tail);
    }

    private static string Deprecated(string tail) => Rename(tail, DeprecatedAttention, false) ?? tail;

    // ---- OpenCLIP (SD2.x ViT-H, SDXL ViT-bigG) ----

    private static readonly (string Open, string Hf)[] OpenClipLayerParts =
    [
        ("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."),
        ("attn.out_proj.", "self_attn.out_proj."),
    ];

    private static readonly string[] Qkv = ["q_proj", "k_proj", "v_proj"];

    // layers: the tower's depth when its last layer is dropped (SD2), 0 when every layer is kept (SDXL's bigG).
    private static MappedName[]? OpenClip(string n, string te, int layers, out string? ignored)
    {
        ignored = null;
        bool sdxl = te == "text_encoder_2";
        switch (n)
        {
            case "token_embedding.weight": return [new(te, "text_model.embeddings.token_embedding.weight")];
            case "positional_embedding": return [new(te, "text_model.embeddings.position_embedding.weight")];
            case "text_projection" when sdxl:
                return [new(te, "text_projection.weight") { Transpose = true }];
            case "logit_scale" when sdxl:
                ignored = "OpenCLIP's contrastive temperature, unused by Stable Diffusion";
                return null;
            case "text_projection" or "logit_scale":
                ignored = "OpenCLIP's contrastive head, unused by Stable Diffusion";
                return null;
        }
        if (n.StartsWith("ln_final.", StringComparison.Ordinal))
            return [new(te, "text_model.final_layer_norm." + n["ln_final.".Length..])];
        if (!LdmLayout.Segments(n, "transformer.resblocks.", out var r)) return null;
        if (!sdxl && r.Index == layers - 1)
        {
            ignored = "the last OpenCLIP layer, unused: SD2 conditions on the penultimate layer";
            return null;
        }
        string at = $"text_model.encoder.layers.{r.Index}.";
        if (r.Tail is "attn.in_proj_weight" or "attn.in_proj_bias")
        {
            string kind = r.Tail.EndsWith("weight", StringComparison.Ordinal) ? "weight" : "bias";
            return [.. Qkv.Select((p, i) => new MappedName(te, $"{at}self_attn.{p}.{kind}", i, 3))];
        }
        return Rename(r.Tail, OpenClipLayerParts, false) is string t ? [new(te, at + t)] : null;
    }

    private static (string, int, int, bool)? OpenClipBack(string n, string prefix)
    {
        switch (n)
        {
            case "text_model.embeddings.token_embedding.weight": return (prefix + "token_embedding.weight", 0, 1, false);
            case "text_model.embeddings.position_embedding.weight": return (prefix + "positional_embedding", 0, 1, false);
        }
        if (n.StartsWith("text_model.final_layer_norm.", StringComparison.Ordinal))
            return (prefix + "ln_final." + n["text_model.final_layer_norm.".Length..], 0, 1, false);
        if (!LdmLayout.Segments(n, "text_model.encoder.layers.", out var l)) return null;
        string at = $"{prefix}transformer.resblocks.{l.Index}.";
        for (int i = 0; i < Qkv.Length; i++)
            foreach (var kind in new[] { "weight", "bias" })
                if (l.Tail == $"self_attn.{Qkv[i]}.{kind}") return ($"{at}attn.in_proj_{kind}", i, 3, false);
        return Rename(l.Tail, OpenClipLayerParts, true) is string t ? (at + t, 0, 1, false) : null;
    }

    // Replaces a leading segment by its partner in a table of (from, to) prefixes, in either direction.
    private static string? Rename(string n, (string A, string B)[] table, bool backwards)
    {
        foreach (var (a, b) in table)
        {
            var (from, to) = backwards ? (b, a) : (a, b);
            if (n.StartsWith(from, StringComparison.Ordinal)) return to + n[from.Length..];
        }
        return null;
    }
}
