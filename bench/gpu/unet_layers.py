#!/usr/bin/env python3
"""One UNet step layer by layer: ours (as the planner launches it, and every tensor-core configuration) beside PyTorch.

usage: unet_layers.py OURS.json TORCH.json OUT.md
OURS.json is `sd bench --unet M --latent L --json` (each distinct shape with the layers that share it), TORCH.json
torch_bench.py's timings of the same cases (`sd bench --unet ... --list`). TORCH.json may be missing or hold no
results (dry run): the PyTorch columns are then empty.
"""
import json
import os
import sys


def ms(t):
    return "" if t is None else "%.4f" % t


def ratio_of(t, ours_ms):
    return "" if t is None else "%.2f" % (t / ours_ms)


def key(case):
    return json.dumps([case["op"], case["dtype"], sorted(case["shape"].items())])


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    ours = json.load(open(sys.argv[1]))
    torch = {}
    if os.path.exists(sys.argv[2]):
        for r in json.load(open(sys.argv[2])).get("results", []):
            torch[key(r["case"])] = r["median_ms"]
    configs = []
    for r in ours["results"]:
        for c in r.get("configs", []):
            if c["config"] not in configs:
                configs.append(c["config"])
    out = [f"# {ours['model']} UNet step, latent {ours['latent']}, batch {ours['batch']}, fp16: {ours['device']}", ""]
    out.append(f"Planner: {ours.get('sms')} multiprocessors, > 48 KB shared memory: {ours.get('large_shared')}. "
               "ms: median per launch (CUDA events). torch/ours > 1: ours is faster.")
    out += ["", "## Every distinct shape: the planner's choice and each configuration (best split) beside PyTorch", ""]
    head = "| " + " | ".join(["op", "m", "n", "k", "uses", "plan", "ours ms"] + [c + " ms" for c in configs]
                             + ["torch ms", "torch/ours"]) + " |"
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    step_ours = step_torch = 0.0
    rows = []
    for r in ours["results"]:
        t = torch.get(key(r["case"]))
        plan = r.get("plan")
        plan_text = f"{plan['config']} s{plan['split_k']} ({plan['waves']:.2f} waves)" if plan else r["kernel"]
        cells = []
        for c in configs:
            hit = [x for x in r.get("configs", []) if x["config"] == c]
            cells.append("" if not hit else "%.4f s%d" % (hit[0]["median_ms"], hit[0]["split_k"]) if "median_ms" in hit[0] else "refused")
        uses = len(r["layers"])
        out.append("| " + " | ".join([r["case"]["op"], str(r["m"]), str(r["n"]), str(r["k"]), str(uses), plan_text,
                                      "%.4f" % r["median_ms"]] + cells + [ms(t), ratio_of(t, r["median_ms"])]) + " |")
        for layer in r["layers"]:
            rows.append((layer, r, t))
        step_ours += uses * r["median_ms"]
        if t is not None:
            step_torch += uses * t
    out += ["", "## One UNet step, layer by layer (GEMMs and convolutions; attention products, norms and element-wise ops not included)", "",
            "| layer | op | m | n | k | plan | ours ms | torch ms | torch/ours |", "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for layer, r, t in rows:
        plan = r.get("plan")
        out.append(f"| {layer} | {r['case']['op']} | {r['m']} | {r['n']} | {r['k']} | "
                   f"{plan['config'] + ' s' + str(plan['split_k']) if plan else r['kernel']} | {r['median_ms']:.4f} | "
                   f"{ms(t)} | {ratio_of(t, r['median_ms'])} |")
    ratio = f"{step_torch / step_ours:.2f}" if step_torch > 0 else "n/a"
    theirs = f"{step_torch:.3f} ms" if step_torch > 0 else "not measured"
    out += ["", f"**Sum over the step's GEMMs/convolutions:** ours {step_ours:.3f} ms, PyTorch {theirs} "
                f"(torch/ours {ratio}; {len(rows)} layers)."]
    open(sys.argv[3], "w").write("\n".join(out) + "\n")
    print(out[0])
    print(out[-1])


if __name__ == "__main__":
    main()
