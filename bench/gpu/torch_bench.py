#!/usr/bin/env python3
"""Time PyTorch on the GPU at exactly the cases `sd bench --list` wrote, the way `sd bench` times ours.

usage: torch_bench.py SUITE.json OUT.json [--min-seconds S]   (S: measuring time per case, default 0.3)

Each case runs PyTorch's own kernels (cuDNN convolution in channels-last, cuBLAS linear, SDPA with the
layout diffusers hands it, group_norm on NCHW as diffusers calls it), timed with CUDA events after warm-up,
median of many launches. TF32 is off so fp32 figures compare true fp32 with true fp32.
"""
import json
import sys
import time

import torch
import torch.nn.functional as F


def make(case, dev):
    s = case["shape"]
    dtype = torch.float16 if case["dtype"] == "fp16" else torch.float32
    gen = torch.Generator(device=dev).manual_seed(7)

    def r(*shape):
        return torch.rand(*shape, device=dev, dtype=dtype, generator=gen) * 2 - 1

    op = case["op"]
    if op == "conv2d":
        x = r(s["n"], s["cin"], s["h"], s["w"]).contiguous(memory_format=torch.channels_last)
        w = r(s["cout"], s["cin"], s["k"], s["k"]).contiguous(memory_format=torch.channels_last)
        b = r(s["cout"])
        return lambda: F.conv2d(x, w, b, stride=s["stride"], padding=s["pad"])
    if op == "linear":
        x, w, b = r(s["m"], s["k"]), r(s["n"], s["k"]), r(s["n"])
        return lambda: F.linear(x, w, b)
    if op == "attention":
        # diffusers: [B, L, H*D] projections viewed as [B, L, H, D] and transposed to [B, H, L, D]
        q = r(s["b"], s["lq"], s["heads"], s["d"]).transpose(1, 2)
        k = r(s["b"], s["lk"], s["heads"], s["d"]).transpose(1, 2)
        v = r(s["b"], s["lk"], s["heads"], s["d"]).transpose(1, 2)
        return lambda: F.scaled_dot_product_attention(q, k, v)
    if op == "group_norm":
        x, w, b = r(s["n"], s["c"], s["s"]), r(s["c"]), r(s["c"])
        return lambda: F.group_norm(x, s["groups"], w, b, 1e-5)
    raise SystemExit(f"unknown op {op}")


def time_case(fn, min_seconds=0.3, min_iters=5, max_iters=200):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    t0 = time.perf_counter()
    while len(times) < min_iters or (time.perf_counter() - t0 < min_seconds and len(times) < max_iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return len(times), times[len(times) // 2], times[0]


def main():
    args = sys.argv[1:]
    min_seconds = 0.3
    if len(args) == 4 and args[2] == "--min-seconds":
        min_seconds = float(args[3])
        args = args[:2]
    if len(args) != 2:
        raise SystemExit(__doc__)
    sys.argv[1:] = args
    suite = json.load(open(sys.argv[1]))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    results = []
    print(f"torch {torch.__version__}, cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}, "
          f"{torch.cuda.get_device_name(0)}")
    for case in suite:
        try:
            fn = make(case, dev)
            iters, median, best = time_case(fn, min_seconds)
            del fn
        except Exception as e:  # keep going: one failing case must not cost the whole GPU run
            print(f"{case['op']} {case['dtype']} {case['shape']}: FAILED {type(e).__name__}: {e}")
            continue
        gflops = case["flops"] / (median * 1e6)
        print(f"{case['op']:<11} {case['dtype']:<5} {json.dumps(case['shape']):<90} {median:10.4f} ms {gflops:10.1f} GFLOP/s")
        results.append({"case": case, "iterations": iters, "median_ms": median, "min_ms": best, "gflops": gflops,
                        "gbps": case["bytes"] / (median * 1e6)})
        torch.cuda.empty_cache()
    json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "results": results},
              open(sys.argv[2], "w"), indent=1)


if __name__ == "__main__":
    main()
