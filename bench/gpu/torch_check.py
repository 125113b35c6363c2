#!/usr/bin/env python3
"""Recompute every kernel case that `sd selfcheck --dump DIR` wrote with PyTorch, and compare our outputs.

usage: torch_check.py DUMP_DIR OUT.json [--device cuda|cpu]

Each case is a JSON manifest (op, dtype, parameters, tolerance) with raw little-endian fp32 .bin files of its inputs
(as the device held them: fp16 values widened exactly) and of our output. The reference is PyTorch in float64 on
the device (NHWC activations and OHWI weights permuted to PyTorch's NCHW/OIHW); the error is the tests' relative
one, ||ours - ref|| / ||ref||, against the tolerance sd used (fp32 1e-5, fp16 2e-3, casts exact). For context the
same op in PyTorch's own kernels at the case's dtype (TF32 off) is compared with the float64 reference too.
"""
import argparse
import glob
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F


def activation(name, x):
    if name == "silu":
        return F.silu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "exp":
        return torch.exp(x)
    raise ValueError(f"unknown activation {name}")


def attention(q, k, v, p, exact):
    b, lq, hd = q.shape
    lk = k.shape[1]
    h, d = p["heads"], p["head_dim"]
    q = q.reshape(b, lq, h, d).transpose(1, 2)
    k = k.reshape(b, lk, h, d).transpose(1, 2)
    v = v.reshape(b, lk, h, d).transpose(1, 2)
    if exact:
        s = torch.matmul(q, k.transpose(-1, -2)) * p["scale"]
        if p["causal"]:  # key j is visible to query i when j <= i (top-left aligned, as PyTorch's is_causal)
            keep = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
            s = s.masked_fill(~keep, float("-inf"))
        y = torch.matmul(torch.softmax(s, dim=-1), v)
    else:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=p["causal"], scale=p["scale"])
    return y.transpose(1, 2).reshape(b, lq, hd)


def compute(m, t, exact):
    """The op of manifest m on inputs t (name -> tensor); exact: float64 reference, else PyTorch at the case's dtype."""
    op, p = m["op"], m["params"]
    if op == "gemm":
        a, b = t["a"], t["b"]
        if p["trans_a"]:
            a = a.transpose(-1, -2)
        if p["trans_b"]:
            b = b.transpose(-1, -2)
        y = p["alpha"] * torch.matmul(a, b)
        if "bias" in t:
            y = y + t["bias"]
        if "residual" in t:
            y = y + t["residual"]
        return y
    if op == "conv2d":  # x NHWC, weight OHWI, y NHWC
        x = t["x"].permute(0, 3, 1, 2)
        w = t["weight"].permute(0, 3, 1, 2)
        y = F.conv2d(x, w, t["bias"], stride=p["stride"], padding=p["padding"]).permute(0, 2, 3, 1)
        if "residual" in t:
            y = y + t["residual"]
        return y
    if op == "group_norm":  # x [N, HW, C]
        x = t["x"].permute(0, 2, 1)
        y = F.group_norm(x, p["groups"], t["gamma"], t["beta"], p["eps"])
        if p["silu"]:
            y = F.silu(y)
        return y.permute(0, 2, 1)
    if op == "layer_norm":
        x = t["x"]
        return F.layer_norm(x, (x.shape[-1],), t["gamma"], t["beta"], p["eps"])
    if op == "softmax":
        return torch.softmax(t["x"], dim=-1)
    if op == "attention":
        return attention(t["q"], t["k"], t["v"], p, exact)
    if op in ("silu", "gelu", "gelu_tanh", "quick_gelu", "exp"):
        return activation(p["activation"], t["x"])
    if op == "geglu":
        x = t["x"]
        c = x.shape[-1] // 2
        return x[..., :c] * F.gelu(x[..., c:])
    if op == "add":
        return t["a"] + t["b"]
    if op == "mul":
        return t["a"] * t["b"]
    if op == "scale":
        return t["x"] * p["scale"] + p["shift"]
    if op == "upsample2x":  # NHWC, nearest
        return t["x"].repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    if op == "concat":
        return torch.cat([t["a"], t["b"]], dim=-1)
    if op == "transpose":
        return t["x"].reshape(p["view"]).transpose(p["dims"][0], p["dims"][1])
    if op == "timestep_embedding":
        # diffusers' get_timestep_embedding: fp32 frequencies (computed here in float64, rounded once), t * freq in
        # fp32, then sin/cos; flip_sin_to_cos puts the cosines first.
        half = p["dim"] // 2
        expo = (-math.log(p["max_period"]) * torch.arange(half, dtype=torch.float32)) / (half - p["downscale_freq_shift"])
        freqs = torch.exp(expo.double()).float().to(t["t"].device)
        arg = t["t"].float()[:, None] * freqs[None, :]
        arg = arg.double() if exact else arg
        s, c = torch.sin(arg), torch.cos(arg)
        y = torch.cat([c, s] if p["flip_sin_to_cos"] else [s, c], dim=-1)
        if m["dtype"] == "fp16":  # sd's fp16 op writes fp16
            y = y.half()
        return y
    if op == "embedding":
        return t["table"][t["ids"].long()]
    if op == "cast":
        return t["x"].to(torch.float16 if p["to"] == "fp16" else torch.float32)
    raise ValueError(f"unknown op {op}")


def rel_err(out, ref):
    out, ref = out.double().reshape(-1), ref.double().reshape(-1)
    num = torch.linalg.vector_norm(out - ref).item()
    den = torch.linalg.vector_norm(ref).item()
    return num if den == 0 else num / den


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump")
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda")
    opts = ap.parse_args()
    dump, out_path, device = opts.dump, opts.out, opts.device
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(device)
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}; reference: float64 on the device")
    results = []
    manifests = sorted(glob.glob(os.path.join(dump, "*.json")))
    if not manifests:
        raise SystemExit(f"no case manifests in {dump}")
    for path in manifests:
        m = json.load(open(path))
        row = {"case": os.path.basename(path)[:-5], "op": m["op"], "dtype": m["dtype"], "shape": m["shape"],
               "kernel": m.get("kernel", ""), "tolerance": m["tolerance"], "host_rel_err": m.get("host_rel_err")}
        try:
            def load(spec):
                return np.fromfile(os.path.join(dump, spec["file"]), dtype="<f4").reshape(spec["shape"])

            arrays = {i["name"]: (load(i), i["dtype"]) for i in m["inputs"]}
            ours = torch.from_numpy(load(m["output"])).to(dev)

            def tensors(exact):
                t = {}
                for k, (a, dt) in arrays.items():
                    x = torch.from_numpy(a).to(dev)
                    if dt == "int32":
                        t[k] = x.round().long()
                    elif exact:
                        t[k] = x.double()
                    else:
                        t[k] = x.half() if dt == "fp16" else x.float()
                return t

            ref = compute(m, tensors(True), True)
            if tuple(ref.shape) != tuple(ours.shape):
                raise ValueError(f"shape: ours {tuple(ours.shape)}, PyTorch {tuple(ref.shape)}")
            err = rel_err(ours, ref)
            row["rel_err"] = err if math.isfinite(err) else None
            row["passed"] = math.isfinite(err) and err <= m["tolerance"]
            try:
                row["torch_native_rel_err"] = rel_err(compute(m, tensors(False), False), ref)
            except Exception as e:  # context only
                row["torch_native_rel_err"] = None
                row["torch_native_error"] = f"{type(e).__name__}: {e}"
        except Exception as e:  # keep going: one failing case must not cost the whole GPU run
            row["rel_err"] = None
            row["passed"] = False
            row["error"] = f"{type(e).__name__}: {e}"
        results.append(row)
        err = "n/a" if row["rel_err"] is None else f"{row['rel_err']:.2e}"
        nat = row.get("torch_native_rel_err")
        print(f"{row['op']:<20} {row['dtype']:<10} {row['shape']:<44} {err:>9} tol {row['tolerance']:.0e}  "
              f"{'ok  ' if row['passed'] else 'FAIL'}  torch {('n/a' if nat is None else f'{nat:.2e}')}"
              f"{'  ' + row['error'] if 'error' in row else ''}")
    failed = sum(1 for r in results if not r["passed"])
    print(f"torch_check on {name}: {len(results) - failed} passed, {failed} failed")
    json.dump({"device": name, "torch": torch.__version__, "reference": "float64 on the device",
               "passed": len(results) - failed, "failed": failed, "results": results}, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
