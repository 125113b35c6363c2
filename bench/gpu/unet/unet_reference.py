"""The check for bench/gpu/unet: UNet2DConditionModel written with torch functional ops from the published diffusers
architecture (float64, NCHW), run on the weights and inputs unet-check wrote, compared with unet-check's outputs
(relative L2 error); then the same functional model in fp16/fp32 timed on the GPU as PyTorch's side of the table.

usage: python3 unet_reference.py WORK [--no-timing]
"""
import json
import math
import struct
import sys
import time

import torch
import torch.nn.functional as F


def load_safetensors(path):
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    n = struct.unpack("<Q", bytes(buf[:8]))[0]
    header = json.loads(bytes(buf[8:8 + n]))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = {"F32": torch.float32, "F16": torch.float16}[info["dtype"]]
        b, e = info["data_offsets"]
        count = (e - b) // torch.tensor([], dtype=dt).element_size()
        out[name] = torch.frombuffer(buf, dtype=dt, count=count, offset=8 + n + b).reshape(info["shape"])
    return out


def raw(path, shape):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    return torch.frombuffer(data, dtype=torch.float32).reshape(shape).clone()


class UNet:
    def __init__(self, spec, w):
        self.s, self.w = spec, w

    def conv(self, p, x, padding=0, stride=1):
        return F.conv2d(x, self.w[p + ".weight"], self.w[p + ".bias"], stride=stride, padding=padding)

    def linear(self, p, x):
        return F.linear(x, self.w[p + ".weight"], self.w.get(p + ".bias"))

    def group_norm(self, p, x, eps):
        return F.group_norm(x, self.s["norm_num_groups"], self.w[p + ".weight"], self.w[p + ".bias"], eps)

    def layer_norm(self, p, x):
        return F.layer_norm(x, (x.shape[-1],), self.w[p + ".weight"], self.w[p + ".bias"], 1e-5)

    def timestep_embedding(self, t, dim=None, shift=None):
        # diffusers get_timestep_embedding: frequencies and arguments in fp32
        half = (dim or self.s["block_out_channels"][0]) // 2
        shift = self.s["freq_shift"] if shift is None else shift
        exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32, device=t.device) / (half - shift)
        args = (t[:, None].float() * torch.exp(exponent)[None, :]).double()
        emb = torch.cat([torch.sin(args), torch.cos(args)], -1)
        if self.s["flip_sin_to_cos"]:
            emb = torch.cat([emb[:, half:], emb[:, :half]], -1)
        return emb

    def resnet(self, p, x, temb):
        eps = self.s["norm_eps"]
        h = self.conv(p + ".conv1", F.silu(self.group_norm(p + ".norm1", x, eps)), padding=1)
        h = h + self.linear(p + ".time_emb_proj", F.silu(temb))[:, :, None, None]
        h = self.conv(p + ".conv2", F.silu(self.group_norm(p + ".norm2", h, eps)), padding=1)
        shortcut = self.conv(p + ".conv_shortcut", x) if x.shape[1] != h.shape[1] else x
        return shortcut + h

    def attention(self, p, x, ctx, heads):
        ctx = x if ctx is None else ctx
        b, inner = x.shape[0], self.w[p + ".to_q.weight"].shape[0]
        d = inner // heads
        split = lambda t: t.reshape(b, -1, heads, d).transpose(1, 2)
        q = split(F.linear(x, self.w[p + ".to_q.weight"]))
        k = split(F.linear(ctx, self.w[p + ".to_k.weight"]))
        v = split(F.linear(ctx, self.w[p + ".to_v.weight"]))
        o = F.scaled_dot_product_attention(q, k, v)  # diffusers' attention; scale 1/sqrt(d)
        return self.linear(p + ".to_out.0", o.transpose(1, 2).reshape(b, -1, inner))

    def transformer(self, p, x, ctx, heads, layers):
        b, c, hh, ww = x.shape
        h = self.group_norm(p + ".norm", x, 1e-6)
        if self.s["use_linear_projection"]:
            h = self.linear(p + ".proj_in", h.permute(0, 2, 3, 1).reshape(b, hh * ww, c))
        else:
            h = self.conv(p + ".proj_in", h).permute(0, 2, 3, 1).reshape(b, hh * ww, c)
        for i in range(layers):
            q = f"{p}.transformer_blocks.{i}"
            h = self.attention(q + ".attn1", self.layer_norm(q + ".norm1", h), None, heads) + h
            h = self.attention(q + ".attn2", self.layer_norm(q + ".norm2", h), ctx, heads) + h
            a, g = self.linear(q + ".ff.net.0.proj", self.layer_norm(q + ".norm3", h)).chunk(2, -1)
            h = self.linear(q + ".ff.net.2", a * F.gelu(g)) + h
        if self.s["use_linear_projection"]:
            h = self.linear(p + ".proj_out", h).reshape(b, hh, ww, c).permute(0, 3, 1, 2)
        else:
            h = self.conv(p + ".proj_out", h.reshape(b, hh, ww, c).permute(0, 3, 1, 2))
        return h + x

    def forward(self, x, t, ctx, added=None):
        s = self.s
        n = len(s["block_out_channels"])
        temb = self.timestep_embedding(t).to(x.dtype)
        temb = self.linear("time_embedding.linear_2", F.silu(self.linear("time_embedding.linear_1", temb)))
        if added is not None:
            # SDXL's addition_embed_type "text_time": each add_time_id embedded sinusoidally (flip, shift 0),
            # concatenated after the pooled text embedding, through add_embedding, added to the time embedding.
            text_embeds, time_ids = added
            tid = self.timestep_embedding(time_ids.flatten(), s["addition_time_embed_dim"], 0)
            aug = torch.cat([text_embeds, tid.reshape(x.shape[0], -1).to(x.dtype)], -1)
            temb = temb + self.linear("add_embedding.linear_2", F.silu(self.linear("add_embedding.linear_1", aug)))
        h = self.conv("conv_in", x, padding=1)
        skips = [h]
        for i in range(n):
            cross = s["down_block_types"][i] == "CrossAttnDownBlock2D"
            for j in range(s["layers_per_block"][i]):
                h = self.resnet(f"down_blocks.{i}.resnets.{j}", h, temb)
                if cross:
                    h = self.transformer(f"down_blocks.{i}.attentions.{j}", h, ctx, s["heads"][i], s["transformer_layers_per_block"][i])
                skips.append(h)
            if i < n - 1:
                h = self.conv(f"down_blocks.{i}.downsamplers.0.conv", h, padding=1, stride=2)
                skips.append(h)
        h = self.resnet("mid_block.resnets.0", h, temb)
        h = self.transformer("mid_block.attentions.0", h, ctx, s["heads"][-1], s["transformer_layers_per_block"][-1])
        h = self.resnet("mid_block.resnets.1", h, temb)
        for i in range(n):
            level = n - 1 - i
            cross = s["up_block_types"][i] == "CrossAttnUpBlock2D"
            for j in range(s["layers_per_block"][level] + 1):
                h = self.resnet(f"up_blocks.{i}.resnets.{j}", torch.cat([h, skips.pop()], 1), temb)
                if cross:
                    h = self.transformer(f"up_blocks.{i}.attentions.{j}", h, ctx, s["heads"][level], s["transformer_layers_per_block"][level])
            if i < n - 1:
                h = self.conv(f"up_blocks.{i}.upsamplers.0.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"), padding=1)
        assert not skips
        h = F.silu(self.group_norm("conv_norm_out", h, s["norm_eps"]))
        return self.conv("conv_out", h, padding=1)


def main():
    work = sys.argv[1]
    timing = "--no-timing" not in sys.argv
    spec = json.load(open(f"{work}/spec.json"))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'}")
    weights = load_safetensors(f"{work}/unet.safetensors")
    b, sz, lc = spec["batch"], spec["size"], spec["context"]
    x = raw(f"{work}/sample.f32", (b, sz, sz, spec["in_channels"])).permute(0, 3, 1, 2).contiguous()
    ctx = raw(f"{work}/context.f32", (b, lc, spec["cross_attention_dim"]))
    t = raw(f"{work}/timesteps.f32", (b,))
    for name in spec["dtypes"]:
        # the fp16 model holds fp16-rounded weights: the float64 reference uses exactly those values
        w = {k: (v.half() if name == "fp16" else v.float()).to(dev, torch.float64) for k, v in weights.items()}
        with torch.no_grad():
            ref = UNet(spec, w).forward(x.to(dev, torch.float64), t.to(dev), ctx.to(dev, torch.float64))
        ours = raw(f"{work}/out-{name}.f32", (b, sz, sz, spec["out_channels"])).permute(0, 3, 1, 2).to(dev, torch.float64)
        err = ((ours - ref).norm() / ref.norm()).item()
        print(f"{name}: relative L2 error vs float64 reference {err:.3e} (|ref| rms {ref.pow(2).mean().sqrt().item():.3f})")
        del w, ref
    if not timing or dev != "cuda":
        return
    for name, dt in (("fp16", torch.float16), ("fp32", torch.float32)):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        w = {k: v.to(dev, dt) for k, v in weights.items()}
        model = UNet(spec, w)
        xs, cs, ts = x.to(dev, dt), ctx.to(dev, dt), t.to(dev)
        times = []
        with torch.no_grad():
            for _ in range(4):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model.forward(xs, ts, cs)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        print(f"pytorch {name} (same functional model, eager, TF32 off): forward best {min(times[1:]):.4f} s; "
              f"peak allocated {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB (weights included)")
        del w, model


if __name__ == "__main__":
    main()
