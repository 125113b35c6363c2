#!/usr/bin/env python3
"""Put `sd bench` and torch_bench.py results side by side as a Markdown table.

usage: compare.py OURS.json TORCH.json SUMMARY.md
ratio = PyTorch time / our time (1.0 = as fast as PyTorch; 0.5 = half its speed).
"""
import json
import sys


def key(case):
    return case["op"], case["dtype"], json.dumps(case["shape"], sort_keys=True)


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    ours = json.load(open(sys.argv[1]))
    theirs = json.load(open(sys.argv[2]))
    t = {key(r["case"]): r for r in theirs["results"]}
    lines = [
        f"# sd kernels vs PyTorch on {ours.get('device', '?')}",
        "",
        f"PyTorch {theirs.get('torch', '?')} on {theirs.get('device', '?')}; both timed with CUDA events, median of launches;",
        "TF32 off. ratio = PyTorch time / sd time.",
        "",
        "| op | dtype | shape | sd kernel | sd ms | PyTorch ms | ratio | sd GFLOP/s | PyTorch GFLOP/s | sd GB/s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ours["results"]:
        c = r["case"]
        shape = " ".join(f"{k}={v}" for k, v in c["shape"].items())
        p = t.get(key(c))
        if p is None:
            lines.append(f"| {c['op']} | {c['dtype']} | {shape} | {r.get('kernel', '')} | {r['median_ms']:.4f} | n/a | n/a | {r['gflops']:.0f} | n/a | {r['gbps']:.0f} |")
            continue
        ratio = p["median_ms"] / r["median_ms"]
        lines.append(f"| {c['op']} | {c['dtype']} | {shape} | {r.get('kernel', '')} | {r['median_ms']:.4f} | {p['median_ms']:.4f} | {ratio:.2f} | "
                     f"{r['gflops']:.0f} | {p['gflops']:.0f} | {r['gbps']:.0f} |")
    text = "\n".join(lines) + "\n"
    open(sys.argv[3], "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
