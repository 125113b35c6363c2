"""PyTorch's side of the UNet-step comparison in run.sh: the SD1.x/SD2.x/SDXL UNet written with torch functional ops
(bench/gpu/unet/unet_reference.py, attention through F.scaled_dot_product_attention as diffusers uses it), on the
weights of a diffusers UNet folder (the one `sd random-model` wrote for the end-to-end run), eager, fp16, TF32 off,
timed with CUDA events at the batch and latent size of our end-to-end run (one call = one denoising step with CFG).

usage: python3 torch_unet.py UNET_DIR OUT_JSON [--batch 2] [--size 64] [--runs 10] [--spec-only]
  --spec-only: resolve the diffusers config.json into the functional model's spec, write it and stop (no torch;
  what the dry run checks).
"""
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def resolve_spec(config, batch, size):
    """diffusers' UNet2DConditionModel defaults and per-block expansion (attention_head_dim is the head count when
    num_attention_heads is absent: diffusers' long-standing naming)."""
    n = len(config["block_out_channels"])

    def per_block(value, default):
        value = default if value is None else value
        return list(value) if isinstance(value, (list, tuple)) else [value] * n

    cross = config.get("cross_attention_dim", 1280)
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    return {
        "in_channels": config.get("in_channels", 4),
        "out_channels": config.get("out_channels", 4),
        "block_out_channels": list(config["block_out_channels"]),
        "down_block_types": list(config["down_block_types"]),
        "up_block_types": list(config["up_block_types"]),
        "layers_per_block": per_block(config.get("layers_per_block"), 2),
        "transformer_layers_per_block": per_block(config.get("transformer_layers_per_block"), 1),
        "heads": per_block(config.get("num_attention_heads") or config.get("attention_head_dim"), 8),
        "cross_attention_dim": cross,
        "norm_num_groups": config.get("norm_num_groups", 32),
        "norm_eps": config.get("norm_eps", 1e-5),
        "use_linear_projection": config.get("use_linear_projection", False),
        "flip_sin_to_cos": config.get("flip_sin_to_cos", True),
        "freq_shift": config.get("freq_shift", 0),
        "batch": batch, "size": size, "context": 77,
        "addition_embed_type": config.get("addition_embed_type"),
        "addition_time_embed_dim": config.get("addition_time_embed_dim"),
        "projection_class_embeddings_input_dim": config.get("projection_class_embeddings_input_dim"),
    }


def arg(name, default):
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    unet_dir, out = sys.argv[1], sys.argv[2]
    batch, size, runs = arg("--batch", 2), arg("--size", 64), arg("--runs", 10)
    spec = resolve_spec(json.load(open(os.path.join(unet_dir, "config.json"))), batch, size)
    result = {"spec": spec}
    if "--spec-only" in sys.argv:
        json.dump(result, open(out, "w"), indent=1)
        print(json.dumps(spec))
        return

    import torch
    sys.path.insert(0, os.path.join(HERE, "unet"))
    from unet_reference import UNet, load_safetensors

    files = sorted(glob.glob(os.path.join(unet_dir, "diffusion_pytorch_model*.safetensors")))
    if not files:
        raise SystemExit(f"no diffusion_pytorch_model*.safetensors in {unet_dir}")
    dev, dt = "cuda", torch.float16
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    w = {k: v.to(dev, dt) for k, v in load_safetensors(files[0]).items()}
    model = UNet(spec, w)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(batch, spec["in_channels"], size, size, device=dev, dtype=dt, generator=g)
    ctx = torch.randn(batch, 77, spec["cross_attention_dim"], device=dev, dtype=dt, generator=g)
    t = torch.tensor([981.0, 37.0] * batch, device=dev)[:batch]
    added = None
    if spec["addition_embed_type"] == "text_time":  # SDXL: pooled text embedding and six add_time_ids per row
        ids = spec["projection_class_embeddings_input_dim"] // spec["addition_time_embed_dim"]
        pooled = spec["projection_class_embeddings_input_dim"] - ids * spec["addition_time_embed_dim"]
        side = float(size * 8)
        added = (torch.randn(batch, pooled, device=dev, dtype=dt, generator=g),
                 torch.tensor([[side, side, 0.0, 0.0, side, side][:ids]] * batch, device=dev))
    torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.no_grad():
        for i in range(runs + 3):  # 3 warm-up calls (cuDNN autotuning, allocator)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            y = model.forward(x, t, ctx, added)
            end.record()
            torch.cuda.synchronize()
            if i >= 3:
                times.append(start.elapsed_time(end))
    if not torch.isfinite(y).all():
        raise SystemExit("the PyTorch UNet produced non-finite values")
    times.sort()
    result.update({
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": "fp16", "attention": "sdpa",
        "tf32": False, "runs": runs, "ms_median": times[len(times) // 2], "ms_min": times[0],
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
    })
    json.dump(result, open(out, "w"), indent=1)
    print(f"PyTorch {torch.__version__} eager UNet call, batch {batch}, {size}x{size} latents, fp16, SDPA: "
          f"median {result['ms_median']:.2f} ms, min {result['ms_min']:.2f} ms over {runs} calls; "
          f"peak {result['peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
