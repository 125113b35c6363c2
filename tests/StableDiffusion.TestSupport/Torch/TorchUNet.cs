using System.Globalization;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.TestSupport.Torch;

/// <summary>
/// A UNet2DConditionModel configuration as the tests describe it: written out as config.json for the engine, read
/// directly by the libtorch reference (which never sees the engine's config parser).
/// </summary>
public sealed record UNetSpec
{
    public int InChannels { get; init; } = 4;
    public int OutChannels { get; init; } = 4;
    public required int[] Channels { get; init; }
    public required bool[] CrossAttn { get; init; }
    public int LayersPerBlock { get; init; } = 1;
    public int TransformerLayers { get; init; } = 1;
    /// <summary>Transformer blocks per down block (SDXL's transformer_layers_per_block list); overrides <see cref="TransformerLayers"/>.</summary>
    public int[]? TransformerDepths { get; init; }
    /// <summary>SDXL's text_time addition: width of each time id's sinusoidal embedding (0: none).</summary>
    public int AdditionTimeDim { get; init; }
    /// <summary>SDXL: add_embedding's input width (pooled text + ids × <see cref="AdditionTimeDim"/>).</summary>
    public int AdditionInputDim { get; init; }
    /// <summary>Heads per block (diffusers' "attention_head_dim"); one value is written as a plain integer.</summary>
    public required int[] Heads { get; init; }
    public int CrossAttentionDim { get; init; } = 24;
    public int Groups { get; init; } = 8;
    public double Eps { get; init; } = 1e-5;
    public bool LinearProjection { get; init; }
    public bool FlipSinToCos { get; init; } = true;
    public double FreqShift { get; init; }

    public string ToConfigJson()
    {
        var down = CrossAttn.Select(c => c ? "CrossAttnDownBlock2D" : "DownBlock2D").ToArray();
        var up = CrossAttn.Reverse().Select(c => c ? "CrossAttnUpBlock2D" : "UpBlock2D").ToArray();
        var config = new Dictionary<string, object>
        {
            ["_class_name"] = "UNet2DConditionModel",
            ["act_fn"] = "silu",
            ["attention_head_dim"] = Heads.Length == 1 ? Heads[0] : Heads,
            ["block_out_channels"] = Channels,
            ["center_input_sample"] = false,
            ["cross_attention_dim"] = CrossAttentionDim,
            ["down_block_types"] = down,
            ["downsample_padding"] = 1,
            ["flip_sin_to_cos"] = FlipSinToCos,
            ["freq_shift"] = FreqShift,
            ["in_channels"] = InChannels,
            ["layers_per_block"] = LayersPerBlock,
            ["transformer_layers_per_block"] = TransformerDepths is null ? TransformerLayers : TransformerDepths,
            ["mid_block_scale_factor"] = 1,
            ["norm_eps"] = Eps,
            ["norm_num_groups"] = Groups,
            ["out_channels"] = OutChannels,
            ["up_block_types"] = up,
            ["use_linear_projection"] = LinearProjection,
        };
        if (AdditionTimeDim > 0)
        {
            config["addition_embed_type"] = "text_time";
            config["addition_time_embed_dim"] = AdditionTimeDim;
            config["projection_class_embeddings_input_dim"] = AdditionInputDim;
        }
        return JsonSerializer.Serialize(config);
    }

    public int HeadsAt(int block) => Heads.Length == 1 ? Heads[0] : Heads[block];

    public int DepthAt(int block) => TransformerDepths?[block] ?? TransformerLayers;

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"in {InChannels}, [{string.Join(",", Channels)}], heads [{string.Join(",", Heads)}], {(LinearProjection ? "linear" : "conv")} proj");
}

/// <summary>
/// UNet2DConditionModel written with libtorch functional ops in float64 on NCHW tensors, from the published diffusers
/// architecture (unet_2d_condition.py, unet_2d_blocks.py, resnet.py, transformer_2d.py, attention.py), reading every
/// weight by its diffusers name. Independent of the engine's code: it shares only the weights.
/// </summary>
public sealed class TorchUNet(UNetSpec spec, Func<string, TorchTensor> w)
{
    /// <summary>
    /// Float32 weights with <see cref="ScalarType.Float32"/> here and <see cref="UseSdpa"/> make this the eager
    /// libtorch UNet the CPU benchmarks time ours against; the tests keep float64 and the explicit softmax.
    /// </summary>
    public ScalarType DType { get; init; } = ScalarType.Float64;

    /// <summary>Attention through libtorch's fused scaled_dot_product_attention instead of softmax(q kᵀ) v.</summary>
    public bool UseSdpa { get; init; }

    /// <summary>
    /// x NCHW, timesteps [N], context [N, L, D] → NCHW. SDXL: text_embeds [N, P] and time_ids [N × ids] (row-major):
    /// emb += add_embedding(cat(text_embeds, add_time_proj(time_ids).reshape(N, -1))).
    /// </summary>
    public TorchTensor Forward(TorchTensor x, float[] timesteps, TorchTensor context, TorchTensor? textEmbeds = null, float[]? timeIds = null)
    {
        int n = spec.Channels.Length;
        var temb = Linear("time_embedding.linear_2", F.silu(Linear("time_embedding.linear_1", TimestepEmbedding(timesteps))));
        if (textEmbeds is not null)
        {
            long batch = textEmbeds.shape[0];
            var timeEmb = Sinusoid(timeIds!, spec.AdditionTimeDim).reshape(batch, -1);
            var added = torch.cat([textEmbeds.to_type(DType), timeEmb], -1);
            temb = temb + Linear("add_embedding.linear_2", F.silu(Linear("add_embedding.linear_1", added)));
        }

        var h = Conv("conv_in", x, padding: 1);
        var skips = new List<TorchTensor> { h };
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < spec.LayersPerBlock; j++)
            {
                h = Scoped.Run(() => Resnet($"down_blocks.{i}.resnets.{j}", h, temb));
                if (spec.CrossAttn[i]) h = Scoped.Run(() => Transformer($"down_blocks.{i}.attentions.{j}", h, context, spec.HeadsAt(i), spec.DepthAt(i)));
                skips.Add(h);
            }
            if (i < n - 1)
            {
                h = Conv($"down_blocks.{i}.downsamplers.0.conv", h, padding: 1, stride: 2);
                skips.Add(h);
            }
        }

        h = Scoped.Run(() => Resnet("mid_block.resnets.0", h, temb));
        h = Scoped.Run(() => Transformer("mid_block.attentions.0", h, context, spec.HeadsAt(n - 1), spec.DepthAt(n - 1)));
        h = Scoped.Run(() => Resnet("mid_block.resnets.1", h, temb));

        for (int i = 0; i < n; i++)
        {
            int level = n - 1 - i;
            for (int j = 0; j < spec.LayersPerBlock + 1; j++)
            {
                var skip = skips[^1];
                skips.RemoveAt(skips.Count - 1);
                h = Scoped.Run(() => Resnet($"up_blocks.{i}.resnets.{j}", torch.cat([h, skip], 1), temb));
                if (spec.CrossAttn[level]) h = Scoped.Run(() => Transformer($"up_blocks.{i}.attentions.{j}", h, context, spec.HeadsAt(level), spec.DepthAt(level)));
            }
            if (i < n - 1)
                h = Conv($"up_blocks.{i}.upsamplers.0.conv",
                    F.interpolate(h, scale_factor: [2.0, 2.0], mode: InterpolationMode.Nearest), padding: 1);
        }
        if (skips.Count != 0) throw new InvalidOperationException("reference UNet left skips unused");

        h = F.silu(GroupNorm("conv_norm_out", h, spec.Eps));
        return Conv("conv_out", h, padding: 1);
    }

    /// <summary>diffusers get_timestep_embedding: frequencies and arguments in fp32 as diffusers computes them.</summary>
    public TorchTensor TimestepEmbedding(float[] timesteps) => Sinusoid(timesteps, spec.Channels[0]);

    private TorchTensor Sinusoid(float[] timesteps, int channels)
    {
        int half = channels / 2;
        var exponent = -Math.Log(10000) * torch.arange(0, half, dtype: ScalarType.Float32) / (half - spec.FreqShift);
        var args = torch.tensor(timesteps)[.., TensorIndex.None] * torch.exp(exponent)[TensorIndex.None, ..];
        args = args.to_type(DType);
        var emb = torch.cat([torch.sin(args), torch.cos(args)], -1);
        return spec.FlipSinToCos ? torch.cat([emb[.., half..], emb[.., ..half]], -1) : emb;
    }

    /// <summary>ResnetBlock2D: norm1, SiLU, conv1, + time_emb_proj(SiLU(temb)), norm2, SiLU, conv2, + shortcut.</summary>
    public TorchTensor Resnet(string p, TorchTensor x, TorchTensor temb)
    {
        var h = Conv($"{p}.conv1", F.silu(GroupNorm($"{p}.norm1", x, spec.Eps)), padding: 1);
        h = h + Linear($"{p}.time_emb_proj", F.silu(temb))[.., .., TensorIndex.None, TensorIndex.None];
        h = Conv($"{p}.conv2", F.silu(GroupNorm($"{p}.norm2", h, spec.Eps)), padding: 1);
        var shortcut = x.shape[1] != h.shape[1] ? Conv($"{p}.conv_shortcut", x) : x;
        return shortcut + h;
    }

    /// <summary>Transformer2DModel on NCHW: group norm (eps 1e-6), proj_in, blocks on [N, HW, C] tokens, proj_out, + input.</summary>
    public TorchTensor Transformer(string p, TorchTensor x, TorchTensor context, int heads, int? depth = null)
    {
        long b = x.shape[0], c = x.shape[1], hh = x.shape[2], ww = x.shape[3];
        var h = GroupNorm($"{p}.norm", x, 1e-6);
        if (spec.LinearProjection)
            h = Linear($"{p}.proj_in", h.permute(0, 2, 3, 1).reshape(b, hh * ww, c));
        else
            h = Conv($"{p}.proj_in", h).permute(0, 2, 3, 1).reshape(b, hh * ww, c);
        for (int i = 0; i < (depth ?? spec.TransformerLayers); i++)
            h = BasicTransformerBlock($"{p}.transformer_blocks.{i}", h, context, heads);
        if (spec.LinearProjection)
            h = Linear($"{p}.proj_out", h).reshape(b, hh, ww, c).permute(0, 3, 1, 2);
        else
            h = Conv($"{p}.proj_out", h.reshape(b, hh, ww, c).permute(0, 3, 1, 2));
        return h + x;
    }

    /// <summary>BasicTransformerBlock: x + attn1(norm1 x); + attn2(norm2 x, context); + ff(norm3 x) with GEGLU.</summary>
    public TorchTensor BasicTransformerBlock(string p, TorchTensor x, TorchTensor context, int heads)
    {
        x = Attention($"{p}.attn1", LayerNorm($"{p}.norm1", x), null, heads) + x;
        x = Attention($"{p}.attn2", LayerNorm($"{p}.norm2", x), context, heads) + x;
        var proj = Linear($"{p}.ff.net.0.proj", LayerNorm($"{p}.norm3", x));
        var halves = proj.chunk(2, -1);
        var ff = Linear($"{p}.ff.net.2", halves[0] * F.gelu(halves[1]));
        return ff + x;
    }

    /// <summary>diffusers Attention: to_q/to_k/to_v without bias, softmax(q kᵀ / sqrt(d)) v per head, to_out.0.</summary>
    public TorchTensor Attention(string p, TorchTensor x, TorchTensor? context, int heads)
    {
        var ctx = context ?? x;
        long b = x.shape[0], inner = w($"{p}.to_q.weight").shape[0], d = inner / heads;
        TorchTensor Split(TorchTensor t) => t.reshape(b, -1, heads, d).transpose(1, 2);
        var q = Split(F.linear(x, w($"{p}.to_q.weight")));
        var k = Split(F.linear(ctx, w($"{p}.to_k.weight")));
        var v = Split(F.linear(ctx, w($"{p}.to_v.weight")));
        var o = UseSdpa
            ? F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, inner)
            : torch.matmul((torch.matmul(q, k.transpose(-1, -2)) / Math.Sqrt(d)).softmax(-1), v).transpose(1, 2).reshape(b, -1, inner);
        return Linear($"{p}.to_out.0", o);
    }

    private TorchTensor Conv(string p, TorchTensor x, long padding = 0, long stride = 1) =>
        F.conv2d(x, w($"{p}.weight"), w($"{p}.bias"), strides: [stride, stride], padding: [padding, padding]);

    private TorchTensor Linear(string p, TorchTensor x) => F.linear(x, w($"{p}.weight"), w($"{p}.bias"));

    private TorchTensor GroupNorm(string p, TorchTensor x, double eps) =>
        F.group_norm(x, spec.Groups, w($"{p}.weight"), w($"{p}.bias"), eps);

    private TorchTensor LayerNorm(string p, TorchTensor x) =>
        F.layer_norm(x, [x.shape[^1]], w($"{p}.weight"), w($"{p}.bias"), 1e-5);
}
