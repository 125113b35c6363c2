using StableDiffusion.IO;

namespace StableDiffusion.Models.Unet;

/// <summary>One GEMM of a UNet step as the kernels see it: C[m, n] = A[m, k] · B[n, k]ᵀ (a convolution as implicit GEMM).</summary>
/// <param name="Layer">The diffusers module path.</param>
/// <param name="Op">linear, conv1x1, conv3x3 or conv3x3s2.</param>
/// <param name="Cin">Input channels (the tensor-core convolution needs a multiple of 8).</param>
/// <param name="Batch">Latents in the batch; with <paramref name="H"/> x <paramref name="W"/> (a convolution's input size),
/// <paramref name="Kernel"/> and <paramref name="Stride"/> the convolution's geometry (padding kernel / 2).</param>
public sealed record UNetGemm(string Layer, string Op, long M, long N, long K, int Cin, int Batch = 1, int H = 0, int W = 0,
    int Kernel = 1, int Stride = 1)
{
    public double Gflop => 2.0 * M * N * K / 1e9;
}

/// <summary>
/// Every GEMM and convolution one UNet2DConditionModel call launches, derived from its config.json alone (so SDXL's is
/// covered before its modules exist): conv_in, the time (and SDXL's text_time) embedding, each resnet's convolutions,
/// time projection and shortcut, each transformer's projections, self- and cross-attention projections and GEGLU
/// feed-forward, the down/upsampling convolutions and conv_out, in the order diffusers runs them. The attention
/// products themselves (QKᵀ, PV) are the fused attention kernel's and not listed.
/// </summary>
public static class UNetGemms
{
    /// <summary>The UNet config.json of a known model: sd15, sd21 (the presets) or sdxl.</summary>
    public static string ConfigJson(string model) => model switch
    {
        "sd15" => Presets.Sd15.UnetJson,
        "sd21" => Presets.Sd21.UnetJson,
        "sdxl" => Presets.Sdxl.UnetJson,
        _ => throw new ConfigException($"unknown model config '{model}' (sd15, sd21 or sdxl)"),
    };

    /// <summary>The GEMMs of one UNet call on a batch of <paramref name="batch"/> latents of h x w, with 77 text tokens.</summary>
    public static IReadOnlyList<UNetGemm> Enumerate(string configJson, int h, int w, int batch, int tokens = 77)
    {
        var c = JsonConfig.Parse(configJson, "unet/config.json");
        var ch = c.IntArray("block_out_channels", [320, 640, 1280, 1280]);
        int n = ch.Length;
        var down = c.StringArray("down_block_types", ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]);
        var up = c.StringArray("up_block_types", ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]);
        var layers = c.IntOrArray("layers_per_block", n, 2);
        var tl = c.IntOrArray("transformer_layers_per_block", n, 1);
        int cross = c.IntOrArray("cross_attention_dim", n, 1280)[0];
        bool linearProj = c.Bool("use_linear_projection", false);
        int inCh = c.Int("in_channels", 4), outCh = c.Int("out_channels", 4);
        int kIn = c.Int("conv_in_kernel", 3), kOut = c.Int("conv_out_kernel", 3);
        int temb = c.Has("time_embedding_dim") ? c.Int("time_embedding_dim") : 4 * ch[0];
        int side = 1 << (n - 1);
        if (h <= 0 || w <= 0 || h % side != 0 || w % side != 0)
            throw new ConfigException($"latent {h}x{w}: sides must be positive multiples of {side} for this UNet");
        if (batch < 1) throw new ConfigException($"batch {batch} must be at least 1");

        var list = new List<UNetGemm>();
        long px(int level) => (long)batch * (h >> level) * (w >> level);
        void Linear(string layer, long m, int k, int nOut) => list.Add(new UNetGemm(layer, "linear", m, nOut, k, k, batch));
        void Conv(string layer, int level, int cin, int cout, int kernel, bool stride2 = false)
        {
            long m = stride2 ? px(level + 1) : px(level);
            string op = kernel == 1 ? "conv1x1" : stride2 ? $"conv{kernel}x{kernel}s2" : $"conv{kernel}x{kernel}";
            list.Add(new UNetGemm(layer, op, m, cout, (long)kernel * kernel * cin, cin, batch, h >> level, w >> level, kernel,
                stride2 ? 2 : 1));
        }
        void Resnet(string p, int level, int cin, int cout)
        {
            Conv($"{p}.conv1", level, cin, cout, 3);
            Linear($"{p}.time_emb_proj", batch, temb, cout);
            Conv($"{p}.conv2", level, cout, cout, 3);
            if (cin != cout) Conv($"{p}.conv_shortcut", level, cin, cout, 1);
        }
        void Transformer(string p, int level, int d, int depth)
        {
            long m = px(level), text = (long)batch * tokens;
            if (linearProj) Linear($"{p}.proj_in", m, d, d);
            else Conv($"{p}.proj_in", level, d, d, 1);
            for (int t = 0; t < depth; t++)
            {
                string b = $"{p}.transformer_blocks.{t}";
                foreach (var q in new[] { "to_q", "to_k", "to_v" }) Linear($"{b}.attn1.{q}", m, d, d);
                Linear($"{b}.attn1.to_out.0", m, d, d);
                Linear($"{b}.attn2.to_q", m, d, d);
                Linear($"{b}.attn2.to_k", text, cross, d);
                Linear($"{b}.attn2.to_v", text, cross, d);
                Linear($"{b}.attn2.to_out.0", m, d, d);
                Linear($"{b}.ff.net.0.proj", m, d, 8 * d);
                Linear($"{b}.ff.net.2", m, 4 * d, d);
            }
            if (linearProj) Linear($"{p}.proj_out", m, d, d);
            else Conv($"{p}.proj_out", level, d, d, 1);
        }

        Linear("time_embedding.linear_1", batch, ch[0], temb);
        Linear("time_embedding.linear_2", batch, temb, temb);
        if (c.Has("addition_embed_type"))
        {
            string kind = c.String("addition_embed_type");
            if (kind != "text_time") throw new ConfigException($"unet/config.json: \"addition_embed_type\" {kind} is not known (text_time)");
            int addIn = c.Int("projection_class_embeddings_input_dim");
            Linear("add_embedding.linear_1", batch, addIn, temb);
            Linear("add_embedding.linear_2", batch, temb, temb);
        }
        Conv("conv_in", 0, inCh, ch[0], kIn);

        var skips = new List<int> { ch[0] };
        int prev = ch[0];
        for (int i = 0; i < n; i++)
        {
            bool attn = down[i] == "CrossAttnDownBlock2D";
            for (int j = 0; j < layers[i]; j++)
            {
                Resnet($"down_blocks.{i}.resnets.{j}", i, j == 0 ? prev : ch[i], ch[i]);
                if (attn) Transformer($"down_blocks.{i}.attentions.{j}", i, ch[i], tl[i]);
                skips.Add(ch[i]);
            }
            if (i < n - 1)
            {
                Conv($"down_blocks.{i}.downsamplers.0.conv", i, ch[i], ch[i], 3, stride2: true);
                skips.Add(ch[i]);
            }
            prev = ch[i];
        }

        int last = n - 1, top = ch[last];
        Resnet("mid_block.resnets.0", last, top, top);
        Transformer("mid_block.attentions.0", last, top, tl[last]);
        Resnet("mid_block.resnets.1", last, top, top);

        var rev = ch.Reverse().ToArray();
        var revLayers = layers.Reverse().ToArray();
        var revTl = tl.Reverse().ToArray();
        prev = rev[0];
        for (int i = 0; i < n; i++)
        {
            int level = n - 1 - i;
            bool attn = up[i] == "CrossAttnUpBlock2D";
            for (int j = 0; j <= revLayers[i]; j++)
            {
                int skip = skips[^1];
                skips.RemoveAt(skips.Count - 1);
                int cin = (j == 0 ? prev : rev[i]) + skip;
                Resnet($"up_blocks.{i}.resnets.{j}", level, cin, rev[i]);
                if (attn) Transformer($"up_blocks.{i}.attentions.{j}", level, rev[i], revTl[i]);
            }
            if (i < n - 1) Conv($"up_blocks.{i}.upsamplers.0.conv", level - 1, rev[i], rev[i], 3);
            prev = rev[i];
        }
        Conv("conv_out", 0, ch[0], outCh, kOut);
        return list;
    }
}
