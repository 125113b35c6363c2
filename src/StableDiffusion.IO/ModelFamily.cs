namespace StableDiffusion.IO;

public enum ModelFamily
{
    Unknown,
    Sd1,
    Sd2,
    Sd1Inpaint,
    Sd2Inpaint,
    Sdxl,
    /// <summary>SDXL's refiner: bigG only (cross-attention 1280), aesthetic-score time ids (add_embedding input 2560).</summary>
    SdxlRefiner,
}

public static class ModelFamilies
{
    /// <summary>The name <c>sd info</c> prints: sd1, sd2, sd1-inpaint, sd2-inpaint, sdxl, unknown.</summary>
    public static string Name(this ModelFamily f) => f switch
    {
        ModelFamily.Sd1 => "sd1",
        ModelFamily.Sd2 => "sd2",
        ModelFamily.Sd1Inpaint => "sd1-inpaint",
        ModelFamily.Sd2Inpaint => "sd2-inpaint",
        ModelFamily.Sdxl => "sdxl",
        ModelFamily.SdxlRefiner => "sdxl-refiner",
        _ => "unknown",
    };

    /// <summary>Families sd can load (SD1.x, SD2.x and SDXL).</summary>
    public static bool IsSupported(this ModelFamily f) =>
        f is ModelFamily.Sd1 or ModelFamily.Sd2 or ModelFamily.Sd1Inpaint or ModelFamily.Sd2Inpaint or ModelFamily.Sdxl;

    /// <summary>
    /// The family, from tensors in LDM naming or diffusers naming with a component prefix (<c>unet/…</c>): SDXL by
    /// its extra embeddings, otherwise the cross-attention width (768 SD1, 1024 SD2, 2048 SDXL) and the UNet's
    /// input channels (9 for inpainting: latents, mask and masked-image latents). Other widths (small test models
    /// such as <c>sd random-model --config sd15-tiny</c>) fall back on the transformer projections: 1x1 convolutions
    /// in SD1.x, linear layers in SD2.x.
    /// </summary>
    public static ModelFamily Detect(IEnumerable<(string Name, long[] Shape)> tensors)
    {
        long context = 0, inChannels = 0;
        int projRank = 0;
        bool sdxl = false;
        foreach (var (name, shape) in tensors)
        {
            // The refiner's add_embedding takes 5 time ids × 256 + the 1280 pooled channels (the base's: 6 × 256 + 1280).
            if ((name == "model.diffusion_model.label_emb.0.0.weight" || name == "unet/add_embedding.linear_1.weight") && shape.Length == 2)
                return shape[1] == 2560 ? ModelFamily.SdxlRefiner : ModelFamily.Sdxl;
            if (name.StartsWith("conditioner.embedders.", StringComparison.Ordinal) ||
                name.StartsWith("model.diffusion_model.label_emb.", StringComparison.Ordinal) ||
                name.StartsWith("unet/add_embedding.", StringComparison.Ordinal))
                sdxl = true;
            bool unet = name.StartsWith(NameMap.UnetPrefix, StringComparison.Ordinal) || name.StartsWith("unet/", StringComparison.Ordinal);
            if (unet && context == 0 && name.EndsWith("attn2.to_k.weight", StringComparison.Ordinal) && shape.Length == 2)
                context = shape[1];
            if (unet && projRank == 0 && name.EndsWith(".proj_in.weight", StringComparison.Ordinal))
                projRank = shape.Length;
            if ((name == NameMap.UnetPrefix + "input_blocks.0.0.weight" || name == "unet/conv_in.weight") && shape.Length == 4)
                inChannels = shape[1];
        }
        if (sdxl) return ModelFamily.Sdxl;
        bool inpaint = inChannels == 9;
        return context switch
        {
            768 => inpaint ? ModelFamily.Sd1Inpaint : ModelFamily.Sd1,
            1024 => inpaint ? ModelFamily.Sd2Inpaint : ModelFamily.Sd2,
            2048 => ModelFamily.Sdxl,
            > 0 when projRank == 4 => inpaint ? ModelFamily.Sd1Inpaint : ModelFamily.Sd1,
            > 0 when projRank == 2 => inpaint ? ModelFamily.Sd2Inpaint : ModelFamily.Sd2,
            _ => ModelFamily.Unknown,
        };
    }
}
