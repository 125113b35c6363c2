using StableDiffusion.Runtime;

namespace StableDiffusion.Models.Clip;

// transformers' CLIPTextModel (models/clip/modeling_clip.py) under its parameter names, so that a diffusers
// text_encoder file, or an LDM single file through the IO layer's name map, binds by path.

/// <summary>token_embedding [vocab, C] looked up by id, plus position_embedding [77, C] by position.</summary>
public sealed class ClipTextEmbeddings : Module
{
    public ClipTextEmbeddings(ClipTextConfig config)
    {
        TokenEmbedding = Child("token_embedding", new Embedding(config.VocabSize, config.HiddenSize));
        PositionEmbedding = Child("position_embedding", new Embedding(config.MaxPositionEmbeddings, config.HiddenSize));
    }

    public Embedding TokenEmbedding { get; }
    public Embedding PositionEmbedding { get; }

    /// <summary>
    /// ids int32 [B, L] → [B, L, C]. <paramref name="vectors"/> replace the token embeddings of some positions (row
    /// b·L + t): textual-inversion vectors enter the encoder here, where their placeholder tokens would.
    /// </summary>
    public Tensor Forward(IOps ops, Tensor ids, IReadOnlyList<(int Row, float[] Vector)>? vectors = null)
    {
        int length = ids.Dim(1);
        using var looked = TokenEmbedding.Forward(ops, ids);
        using var patched = vectors is { Count: > 0 } ? Patch(ops, looked, vectors) : null;
        var tokens = patched ?? looked;
        if (length == PositionEmbedding.Count)
            return ops.Add(tokens, PositionEmbedding.Weight.Value); // the whole table, broadcast over the batch
        using var positions = Tensor.FromInts(ops.Device, Enumerable.Range(0, length).ToArray(), length);
        using var table = PositionEmbedding.Forward(ops, positions);
        return ops.Add(tokens, table);
    }

    private static Tensor Patch(IOps ops, Tensor tokens, IReadOnlyList<(int Row, float[] Vector)> vectors)
    {
        int c = tokens.Dim(2);
        var host = tokens.ToFloatArray();
        foreach (var (row, v) in vectors)
        {
            if (v.Length != c) throw new UsageException($"text encoder: an embedding vector of width {v.Length} for a {c}-wide encoder");
            v.CopyTo(host, (long)row * c);
        }
        return Tensor.FromArray(ops.Device, host, tokens.DType, tokens.Dim(0), tokens.Dim(1), c);
    }
}

/// <summary>Causal multi-head self-attention: q_proj, k_proj, v_proj, out_proj, all with bias.</summary>
public sealed class ClipAttention : Module
{
    public ClipAttention(ClipTextConfig config)
    {
        Heads = config.NumAttentionHeads;
        int c = config.HiddenSize;
        KProj = Child("k_proj", new Linear(c, c));
        VProj = Child("v_proj", new Linear(c, c));
        QProj = Child("q_proj", new Linear(c, c));
        OutProj = Child("out_proj", new Linear(c, c));
    }

    public int Heads { get; }
    public Linear KProj { get; }
    public Linear VProj { get; }
    public Linear QProj { get; }
    public Linear OutProj { get; }

    /// <summary>x [B, L, C] → out_proj(attention) + <paramref name="residual"/> (fused into the projection).</summary>
    public Tensor Forward(IOps ops, Tensor x, Tensor? residual = null)
    {
        using var q = QProj.Forward(ops, x);
        using var k = KProj.Forward(ops, x);
        using var v = VProj.Forward(ops, x);
        // Causal: CLIP's text transformer lets a token see only itself and the tokens before it.
        using var o = ops.Attention(q, k, v, Heads, causal: true);
        return OutProj.Forward(ops, o, residual);
    }
}

/// <summary>fc1 → activation (quick_gelu for CLIP, gelu for OpenCLIP) → fc2.</summary>
public sealed class ClipMlp : Module
{
    public ClipMlp(ClipTextConfig config)
    {
        Act = config.HiddenAct;
        Fc1 = Child("fc1", new Linear(config.HiddenSize, config.IntermediateSize));
        Fc2 = Child("fc2", new Linear(config.IntermediateSize, config.HiddenSize));
    }

    public Activation Act { get; }
    public Linear Fc1 { get; }
    public Linear Fc2 { get; }

    public Tensor Forward(IOps ops, Tensor x, Tensor? residual = null)
    {
        using var h = Fc1.Forward(ops, x);
        using var a = ops.Activate(h, Act);
        return Fc2.Forward(ops, a, residual);
    }
}

/// <summary>Pre-norm transformer layer: x + attn(layer_norm1(x)), then + mlp(layer_norm2(·)).</summary>
public sealed class ClipEncoderLayer : Module
{
    public ClipEncoderLayer(ClipTextConfig config)
    {
        SelfAttn = Child("self_attn", new ClipAttention(config));
        LayerNorm1 = Child("layer_norm1", new LayerNorm(config.HiddenSize, config.LayerNormEps));
        Mlp = Child("mlp", new ClipMlp(config));
        LayerNorm2 = Child("layer_norm2", new LayerNorm(config.HiddenSize, config.LayerNormEps));
    }

    public ClipAttention SelfAttn { get; }
    public LayerNorm LayerNorm1 { get; }
    public ClipMlp Mlp { get; }
    public LayerNorm LayerNorm2 { get; }

    public Tensor Forward(IOps ops, Tensor x)
    {
        Tensor h;
        using (var n1 = LayerNorm1.Forward(ops, x))
            h = SelfAttn.Forward(ops, n1, residual: x);
        using (h)
        using (var n2 = LayerNorm2.Forward(ops, h))
            return Mlp.Forward(ops, n2, residual: h);
    }
}

public sealed class ClipEncoder : Module
{
    public ClipEncoder(ClipTextConfig config) =>
        Layers = Child("layers", new ModuleList<ClipEncoderLayer>(Enumerable.Range(0, config.NumHiddenLayers).Select(_ => new ClipEncoderLayer(config))));

    public ModuleList<ClipEncoderLayer> Layers { get; }
}

/// <summary>transformers' CLIPTextTransformer: embeddings → encoder layers → final_layer_norm.</summary>
public sealed class ClipTextTransformer : Module
{
    public ClipTextTransformer(ClipTextConfig config)
    {
        Embeddings = Child("embeddings", new ClipTextEmbeddings(config));
        Encoder = Child("encoder", new ClipEncoder(config));
        FinalLayerNorm = Child("final_layer_norm", new LayerNorm(config.HiddenSize, config.LayerNormEps));
    }

    public ClipTextEmbeddings Embeddings { get; }
    public ClipEncoder Encoder { get; }
    public LayerNorm FinalLayerNorm { get; }

    /// <summary>Embeddings, then the first <paramref name="layers"/> encoder layers (no final layer norm).</summary>
    public Tensor Hidden(IOps ops, Tensor ids, int layers, IReadOnlyList<(int Row, float[] Vector)>? vectors = null)
    {
        var x = Embeddings.Forward(ops, ids, vectors);
        for (int i = 0; i < layers; i++)
        {
            var next = Encoder.Layers[i].Forward(ops, x);
            x.Dispose();
            x = next;
        }
        return x;
    }

    internal static void CheckIds(ClipTextConfig config, Tensor ids)
    {
        if (ids.DType != DType.I32 || ids.Rank != 2)
            throw new UsageException($"text encoder: token ids must be int32 [batch, length], got {ids}");
        if (ids.Dim(1) < 1 || ids.Dim(1) > config.MaxPositionEmbeddings)
            throw new UsageException($"text encoder: {ids.Dim(1)} tokens per prompt, the model takes 1 to {config.MaxPositionEmbeddings}");
    }

    internal static void CheckSkip(int clipSkip, int layers, int least)
    {
        if (clipSkip < 1 || clipSkip > layers - least + 1)
            throw new UsageException($"clip skip {clipSkip} is out of range: this text encoder has {layers} layers (1 uses all of them)");
    }
}

/// <summary>
/// The Stable Diffusion text encoder: transformers' CLIPTextModel, built from <c>text_encoder/config.json</c>.
/// <see cref="Forward"/> gives last_hidden_state, the UNet's cross-attention context.
/// </summary>
public sealed class ClipTextModel : Module
{
    public ClipTextModel(ClipTextConfig config)
    {
        Config = config;
        TextModel = Child("text_model", new ClipTextTransformer(config));
    }

    public ClipTextConfig Config { get; }
    public ClipTextTransformer TextModel { get; }

    public static ClipTextModel FromConfig(string configPath) => new(ClipTextConfig.Load(configPath));

    /// <summary>
    /// ids int32 [B, L] (L ≤ 77; Stable Diffusion always passes 77) → [B, L, hidden] with the final layer norm applied.
    /// <paramref name="clipSkip"/> 1 uses every layer; n stops n − 1 layers early and applies the final layer norm to
    /// that output, as diffusers does for its clip_skip (diffusers' clip_skip k is clipSkip k + 1 here, the
    /// convention of the web UIs: "clip skip 2" is the penultimate layer).
    /// </summary>
    public Tensor Forward(IOps ops, Tensor ids, int clipSkip = 1, IReadOnlyList<(int Row, float[] Vector)>? vectors = null)
    {
        int layers = Config.NumHiddenLayers;
        ClipTextTransformer.CheckIds(Config, ids);
        ClipTextTransformer.CheckSkip(clipSkip, layers, 1);
        using var x = TextModel.Hidden(ops, ids, layers - (clipSkip - 1), vectors);
        return TextModel.FinalLayerNorm.Forward(ops, x);
    }

    /// <summary>
    /// SDXL's use of this encoder: hidden_states[-(clipSkip + 1)] of transformers' output_hidden_states, without the
    /// final layer norm (clipSkip 1 = the penultimate layer's output, what SDXL conditions on).
    /// </summary>
    public Tensor Penultimate(IOps ops, Tensor ids, int clipSkip = 1, IReadOnlyList<(int Row, float[] Vector)>? vectors = null)
    {
        ClipTextTransformer.CheckIds(Config, ids);
        ClipTextTransformer.CheckSkip(clipSkip, Config.NumHiddenLayers, 2);
        return TextModel.Hidden(ops, ids, Config.NumHiddenLayers - clipSkip, vectors);
    }

    /// <summary>Device bytes of the weights in <paramref name="dtype"/> (exact sizes; the pool rounds each up to its size class).</summary>
    public long WeightBytes(DType dtype) => ParameterCount * dtype.SizeInBytes();
}

/// <summary>
/// transformers' CLIPTextModelWithProjection: the CLIP text transformer plus text_projection (no bias), SDXL's
/// second encoder (OpenCLIP ViT-bigG/14, built from <c>text_encoder_2/config.json</c>).
/// </summary>
public sealed class ClipTextModelWithProjection : Module
{
    public ClipTextModelWithProjection(ClipTextConfig config)
    {
        Config = config;
        TextModel = Child("text_model", new ClipTextTransformer(config));
        TextProjection = Child("text_projection", new Linear(config.HiddenSize, config.ProjectionDim, bias: false));
    }

    public ClipTextConfig Config { get; }
    public ClipTextTransformer TextModel { get; }
    public Linear TextProjection { get; }

    public static ClipTextModelWithProjection FromConfig(string configPath) => new(ClipTextConfig.Load(configPath));

    /// <summary>
    /// ids int32 [B, L] → (hidden_states[-(clipSkip + 1)] [B, L, hidden] without the final layer norm, the SDXL
    /// context; text_embeds [B, projection_dim]: the final-layer-normed last hidden state at each row's
    /// end-of-text position, times text_projection). The end-of-text position is found from the ids as transformers
    /// does: the argmax of the ids when eos_token_id is 2 (SDXL's tokenizer_2 pads with id 0, so the padding cannot
    /// be mistaken for it), else the first id equal to eos_token_id.
    /// </summary>
    public (Tensor Hidden, Tensor Pooled) Encode(IOps ops, Tensor ids, int clipSkip = 1, IReadOnlyList<(int Row, float[] Vector)>? vectors = null)
    {
        ClipTextTransformer.CheckIds(Config, ids);
        int layers = Config.NumHiddenLayers;
        ClipTextTransformer.CheckSkip(clipSkip, layers, 2);
        int b = ids.Dim(0), l = ids.Dim(1);
        var eos = EndOfTextRows(ids.ToFloatArray().Select(v => (int)v).ToArray(), b, l); // ids < 2^24: exact in fp32

        Tensor? hidden = null;
        var x = TextModel.Embeddings.Forward(ops, ids, vectors);
        try
        {
            for (int i = 0; i < layers; i++)
            {
                var next = TextModel.Encoder.Layers[i].Forward(ops, x);
                if (i == layers - clipSkip) hidden = x; // the input of this layer is kept: the context
                else x.Dispose();
                x = next;
            }
            // The final layer norm acts per token, so only the end-of-text rows need it.
            using var rows = Tensor.FromInts(ops.Device, eos, b);
            using var flat = x.Reshape(b * l, Config.HiddenSize);
            using var picked = ops.Embedding(flat, rows);
            using var normed = TextModel.FinalLayerNorm.Forward(ops, picked);
            var pooled = TextProjection.Forward(ops, normed);
            var result = (hidden!, pooled);
            hidden = null;
            return result;
        }
        finally
        {
            x.Dispose();
            hidden?.Dispose();
        }
    }

    /// <summary>For each row of ids [b × l], the flat row index (row · l + position) of its end-of-text token.</summary>
    public int[] EndOfTextRows(int[] ids, int b, int l)
    {
        var rows = new int[b];
        for (int r = 0; r < b; r++)
        {
            int at = 0;
            if (Config.EosTokenId == 2)
            {
                for (int j = 1; j < l; j++)
                    if (ids[r * l + j] > ids[r * l + at]) at = j; // first maximum, like torch.argmax
            }
            else
            {
                at = -1;
                for (int j = 0; j < l && at < 0; j++)
                    if (ids[r * l + j] == Config.EosTokenId) at = j;
                if (at < 0) throw new UsageException($"text encoder: prompt {r} has no end-of-text token (id {Config.EosTokenId})");
            }
            rows[r] = r * l + at;
        }
        return rows;
    }

    public long WeightBytes(DType dtype) => ParameterCount * dtype.SizeInBytes();
}
