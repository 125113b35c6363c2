using StableDiffusion.Runtime;

namespace StableDiffusion.Models.Clip;

/// <summary>
/// transformers' CLIPTextConfig as a diffusers <c>text_encoder/config.json</c> gives it; missing keys take
/// transformers' defaults. SD1.x: CLIP ViT-L/14 (768 wide, 12 layers, quick_gelu); SD2.x: OpenCLIP ViT-H/14 as
/// diffusers converts it (1024 wide, 23 of its 24 layers, gelu).
/// </summary>
public sealed record ClipTextConfig(
    int VocabSize,
    int HiddenSize,
    int IntermediateSize,
    int NumHiddenLayers,
    int NumAttentionHeads,
    int MaxPositionEmbeddings,
    Activation HiddenAct,
    float LayerNormEps)
{
    public int HeadDim => HiddenSize / NumAttentionHeads;

    /// <summary>CLIPTextModelWithProjection's text_projection width ("projection_dim"; SDXL's bigG: 1280).</summary>
    public int ProjectionDim { get; init; } = 512;

    /// <summary>
    /// transformers' eos_token_id; 2 (the value old configs carry, SDXL's bigG among them) means "the end-of-text
    /// position is the argmax of the ids", since the end-of-text token has the highest id in CLIP's vocabulary.
    /// </summary>
    public int EosTokenId { get; init; } = 2;

    public static ClipTextConfig Load(string path) => From(JsonConfig.Load(path));

    public static ClipTextConfig From(JsonConfig c)
    {
        var config = new ClipTextConfig(
            c.Int("vocab_size", 49408),
            c.Int("hidden_size", 512),
            c.Int("intermediate_size", 2048),
            c.Int("num_hidden_layers", 12),
            c.Int("num_attention_heads", 8),
            c.Int("max_position_embeddings", 77),
            ParseActivation(c.String("hidden_act", "quick_gelu"), c.Source),
            c.Float("layer_norm_eps", 1e-5f))
        {
            ProjectionDim = c.Int("projection_dim", 512),
            EosTokenId = c.Int("eos_token_id", 2),
        };
        config.Validate(c.Source);
        return config;
    }

    /// <summary>Refuses sizes the model cannot be built with, naming <paramref name="source"/>.</summary>
    public void Validate(string source = "<config>")
    {
        foreach (var (key, v) in new[]
                 {
                     ("vocab_size", VocabSize), ("hidden_size", HiddenSize), ("intermediate_size", IntermediateSize),
                     ("num_hidden_layers", NumHiddenLayers), ("num_attention_heads", NumAttentionHeads),
                     ("max_position_embeddings", MaxPositionEmbeddings),
                 })
            if (v <= 0) throw new ConfigException($"{source}: \"{key}\" must be positive, found {v}");
        if (ProjectionDim <= 0) throw new ConfigException($"{source}: \"projection_dim\" must be positive, found {ProjectionDim}");
        if (HiddenSize % NumAttentionHeads != 0)
            throw new ConfigException($"{source}: hidden_size {HiddenSize} does not split into {NumAttentionHeads} attention heads");
        if (!(LayerNormEps > 0)) throw new ConfigException($"{source}: \"layer_norm_eps\" must be positive, found {LayerNormEps}");
    }

    private static Activation ParseActivation(string name, string source) => name switch
    {
        "quick_gelu" => Activation.QuickGelu,
        "gelu" => Activation.Gelu,
        "gelu_new" or "gelu_pytorch_tanh" => Activation.GeluTanh,
        _ => throw new ConfigException($"{source}: \"hidden_act\" \"{name}\" is not supported (quick_gelu, gelu, gelu_new, gelu_pytorch_tanh)"),
    };
}
