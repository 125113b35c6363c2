using StableDiffusion.Models.Clip;
using StableDiffusion.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.TestSupport.Torch;

/// <summary>
/// transformers' CLIPTextModel written with libtorch ops in float64 from the published architecture
/// (models/clip/modeling_clip.py), reading every weight by its name through <paramref name="w"/>; independent of the
/// engine's code but for the config record.
/// </summary>
public sealed class TorchClip(ClipTextConfig c, Func<string, TorchTensor> w)
{
    public const string Prefix = "text_model.";

    private static TorchTensor Activate(TorchTensor h, Activation act) =>
        act == Activation.Gelu ? F.gelu(h) : h * torch.sigmoid(1.702 * h);

    private TorchTensor LayerNorm(string at, TorchTensor x) =>
        F.layer_norm(x, [c.HiddenSize], w(at + ".weight"), w(at + ".bias"), c.LayerNormEps);

    private TorchTensor Linear(string at, TorchTensor x) => F.linear(x, w(at + ".weight"), w(at + ".bias"));

    /// <summary>One pre-norm encoder layer with causal self-attention; <paramref name="at"/> ends in a dot (or is empty).</summary>
    public TorchTensor Layer(string at, TorchTensor x)
    {
        long b = x.shape[0], l = x.shape[1];
        int heads = c.NumAttentionHeads, d = c.HeadDim;
        TorchTensor Heads(TorchTensor t) => t.reshape(b, l, heads, d).transpose(1, 2);
        var h = LayerNorm(at + "layer_norm1", x);
        var q = Heads(Linear(at + "self_attn.q_proj", h)) * Math.Pow(d, -0.5);
        var k = Heads(Linear(at + "self_attn.k_proj", h));
        var v = Heads(Linear(at + "self_attn.v_proj", h));
        var scores = torch.matmul(q, k.transpose(-2, -1));
        var future = torch.ones(l, l, dtype: ScalarType.Bool).triu(1); // causal: key j > query i is masked
        scores = scores.masked_fill(future, double.NegativeInfinity);
        var o = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(b, l, c.HiddenSize);
        x = x + Linear(at + "self_attn.out_proj", o);
        h = LayerNorm(at + "layer_norm2", x);
        h = Linear(at + "mlp.fc2", Activate(Linear(at + "mlp.fc1", h), c.HiddenAct));
        return x + h;
    }

    /// <summary>Token plus position embeddings of ids [b × l] (row-major).</summary>
    public TorchTensor Embeddings(int[] ids, int b, int l)
    {
        var flat = torch.tensor(ids.Select(i => (long)i).ToArray(), dtype: ScalarType.Int64);
        var tok = w(Prefix + "embeddings.token_embedding.weight").index_select(0, flat).reshape(b, l, -1);
        return tok + w(Prefix + "embeddings.position_embedding.weight").narrow(0, 0, l);
    }

    /// <summary>hidden_states[-clipSkip] of CLIPTextModel(output_hidden_states=True), through final_layer_norm.</summary>
    public TorchTensor Forward(int[] ids, int b, int l, int clipSkip = 1) => Forward(Embeddings(ids, b, l), clipSkip);

    /// <summary>The same from the embedding layer's output [b, l, C] (token plus position embeddings).</summary>
    public TorchTensor Forward(TorchTensor embeddings, int clipSkip = 1)
    {
        var x = embeddings;
        for (int i = 0; i < c.NumHiddenLayers - (clipSkip - 1); i++) x = Layer($"{Prefix}encoder.layers.{i}.", x);
        return LayerNorm(Prefix + "final_layer_norm", x);
    }

    /// <summary>hidden_states[-(skip + 1)] of output_hidden_states (no final layer norm): SDXL's context.</summary>
    public TorchTensor Penultimate(int[] ids, int b, int l, int skip = 1)
    {
        var x = Embeddings(ids, b, l);
        for (int i = 0; i < c.NumHiddenLayers - skip; i++) x = Layer($"{Prefix}encoder.layers.{i}.", x);
        return x;
    }

    /// <summary>
    /// CLIPTextModelWithProjection's text_embeds: last_hidden_state[arange(b), ids.argmax(-1)] @ text_projection.weightᵀ
    /// (transformers' legacy eos_token_id == 2 rule, which SDXL's bigG config takes).
    /// </summary>
    public TorchTensor Pooled(int[] ids, int b, int l)
    {
        var last = Forward(ids, b, l);
        var idx = torch.tensor(ids.Select(i => (long)i).ToArray(), [b, l], dtype: ScalarType.Int64).argmax(-1);
        var rows = last[torch.arange(b, dtype: ScalarType.Int64), idx];
        return F.linear(rows, w("text_projection.weight"));
    }
}
