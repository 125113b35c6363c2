#!/usr/bin/env python3
"""Put one bench/gpu/run.sh results folder into summary.md, and the end-to-end runs into e2e.json.

usage: summarize.py OUT_DIR
       summarize.py --estimate E2E.txt STEPS   seconds a STEPS-step run would take, from the stderr of a shorter one

Reads what run.sh left in OUT_DIR: gpu.txt, selfcheck.txt, torch_check.json, kernels.md (compare.py), launch.json or
launch.txt, e2e-N.txt (`sd generate --profile` stderr). Standard library only.
"""
import glob
import json
import math
import os
import re
import sys

STAGE = re.compile(r"^  (\S(?:.*?\S)?)\s+(-?[0-9.]+) s(?:\s+(.*))?$")
OP = re.compile(r"^  (\S(?:.*?\S)?)\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)%(?:\s+([0-9.]+)\s+([0-9.]+))?$")
HEADER = re.compile(r"^sd: (.+?) (\d+)x(\d+), (\d+) steps? of (\S+), cfg (\S+), seed (\S+), (\S+) on (.+)$")


def parse_generate(text):
    """The numbers of one `sd generate --profile` stderr."""
    run = {"stages": {}, "ops": []}
    section = None
    for line in text.splitlines():
        m = HEADER.match(line)
        if m:
            run.update(mode=m.group(1), width=int(m.group(2)), height=int(m.group(3)), steps=int(m.group(4)),
                       sampler=m.group(5), cfg=float(m.group(6)), dtype=m.group(8), device=m.group(9))
            continue
        if line.startswith("sd: where the time went"):
            section = "stages"
            continue
        if line.startswith("sd: per-op profile"):
            section = "ops"
            continue
        m = re.match(r"^sd-run: exit (-?\d+), wall (\d+) s, limit (\d+) s", line)
        if m:
            run.update(exit=int(m.group(1)), wall_s=int(m.group(2)), limit_s=int(m.group(3)))
            continue
        if section == "stages":
            m = STAGE.match(line)
            if not m:
                continue
            name, secs, rest = m.group(1), float(m.group(2)), m.group(3) or ""
            run["stages"][name] = secs
            if name == "unet":
                each = rest.split(":", 1)[1].split() if ":" in rest else []
                run["unet_step_s"] = [float(x) for x in each]
            if name == "total":
                p = re.search(r"peak device memory ([0-9.]+) MiB", rest)
                if p:
                    run["peak_mib"] = float(p.group(1))
        elif section == "ops":
            m = OP.match(line)
            if m and m.group(1) != "op":
                run["ops"].append({"op": m.group(1), "calls": int(m.group(2)), "total_s": float(m.group(3)),
                                   "share_pct": float(m.group(4)),
                                   "calls_per_step": float(m.group(5)) if m.group(5) else None,
                                   "ms_per_step": float(m.group(6)) if m.group(6) else None})
    steps = run.get("unet_step_s", [])
    s = run["stages"]
    unet = s.get("unet")
    # Steps 2..N from the UNet total (printed to 0.01 s) less the first step: finer than the per-step list.
    if len(steps) > 1 and unet is not None:
        mean = max(unet - steps[0], 0.0) / (len(steps) - 1)
    else:
        mean = steps[0] if steps else None
    run.update(text_encoder_s=s.get("text encoder"), unet_s=unet, vae_decode_s=s.get("vae decode"),
               total_s=s.get("total"), first_step_s=steps[0] if steps else None, step_mean_s=mean,
               profiled=bool(run["ops"]))
    run["ok"] = run.get("exit") == 0 and run["total_s"] is not None
    return run


def estimate(path, steps):
    run = parse_generate(open(path).read())
    if not run["ok"] or run["step_mean_s"] is None:
        return -1
    done = len(run["unet_step_s"])
    return int(math.ceil(run["total_s"] + (steps - done) * run["step_mean_s"]))


def read(path):
    try:
        return open(path).read()
    except OSError:
        return None


def fmt(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


def card(out):
    gpu = read(os.path.join(out, "gpu.txt")) or ""
    lines = [l for l in gpu.splitlines() if l.strip()]
    if len(lines) >= 2 and "," in lines[1]:
        return lines[1].split(",")[0].strip(), lines[1].strip()
    return "no GPU (dry run)", (lines[0] if lines else "")


def correctness(out):
    lines = ["## (a) Every kernel against PyTorch on the same device", ""]
    sc = read(os.path.join(out, "selfcheck.txt")) or ""
    m = re.search(r"^selfcheck on .*$", sc, re.M)
    lines.append(f"sd's own check against its host reference: {m.group(0) if m else 'no result (see selfcheck.txt)'}.")
    tc_path = os.path.join(out, "torch_check.json")
    if not os.path.exists(tc_path):
        why = (read(os.path.join(out, "torch_check.txt")) or "no torch_check.json").strip().splitlines()
        lines += ["", f"PyTorch comparison: {why[-1] if why else 'not run'}", ""]
        return lines
    tc = json.load(open(tc_path))
    lines += ["", f"PyTorch {tc.get('torch')} on {tc.get('device')}: **{tc.get('passed')} passed, {tc.get('failed')} failed**. "
              "Reference: PyTorch in float64 on the device, from the exact inputs our kernels read; error = "
              "‖ours − ref‖/‖ref‖, tolerance fp32 1e-5, fp16 2e-3 (casts exact). \"PyTorch's own\" is PyTorch's kernel at "
              "the case's dtype (TF32 off) against the same reference, for scale.", "",
              "| op | dtype | shape | sd kernel | rel. error | tolerance | result | vs host ref | PyTorch's own |",
              "|---|---|---|---|---:|---:|---|---:|---:|"]
    for r in tc["results"]:
        res = "ok" if r["passed"] else ("**FAIL**" + (f" ({r['error']})" if r.get("error") else ""))
        lines.append(f"| {r['op']} | {r['dtype']} | {r['shape']} | {r.get('kernel', '')} | {fmt(r.get('rel_err'), '.2e')} | "
                     f"{r['tolerance']:.0e} | {res} | {fmt(r.get('host_rel_err'), '.2e')} | {fmt(r.get('torch_native_rel_err'), '.2e')} |")
    lines.append("")
    return lines


def timings(out):
    text = read(os.path.join(out, "kernels.md"))
    if text is None:
        return ["## (b) Kernel timings against PyTorch", "", "no kernels.md (compare.py did not run)", ""]
    body = text.splitlines()
    title = body[0].lstrip("# ") if body and body[0].startswith("#") else "sd kernels vs PyTorch"
    return [f"## (b) Kernel timings: {title}", ""] + [l for l in body[1:]][1 if len(body) > 1 and not body[1].strip() else 0:] + [""]


def end_to_end(out):
    runs, notes = [], []
    for path in sorted(glob.glob(os.path.join(out, "e2e-*.txt")), key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0])):
        name = os.path.basename(path)
        if not re.fullmatch(r"e2e-\d+\.txt", name):
            continue
        run = parse_generate(open(path).read())
        run["file"] = name
        runs.append(run)
    for path in glob.glob(os.path.join(out, "e2e-*.skipped.txt")):
        notes.append(open(path).read().strip())
    model = (read(os.path.join(out, "random-model.txt")) or "").strip().splitlines()
    json.dump({"model": model[0] if model else None, "runs": runs, "notes": notes},
              open(os.path.join(out, "e2e.json"), "w"), indent=1)
    lines = ["## (c) End to end: random-weight model, text to image", ""]
    if model:
        lines += [f"Model: {model[0]}", ""]
    if not runs:
        return lines + ["no generation ran", ""] + notes + [""]
    dev = next((r.get("device") for r in runs if r.get("device")), "?")
    lines += [f"`sd generate` on {dev}, cfg 7.5, so every UNet call is batch 2. Step mean: steps 2..N (the first "
              "compiles kernels). With --profile every op is synchronised, so its steps run somewhat slower.", "",
              "| steps | size | dtype | --profile | exit | text encoder s | first step s | step mean s | it/s | VAE decode s | total s | peak MiB |",
              "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        ips = 1 / r["step_mean_s"] if r.get("step_mean_s") else None
        lines.append(f"| {r.get('steps', '?')} | {r.get('width', '?')}x{r.get('height', '?')} | {r.get('dtype', '?')} | "
                     f"{'yes' if r['profiled'] else 'no'} | "
                     f"{r.get('exit', '?')} | {fmt(r['text_encoder_s'], '.2f')} | {fmt(r['first_step_s'], '.2f')} | "
                     f"{fmt(r['step_mean_s'], '.3f')} | {fmt(ips, '.2f')} | {fmt(r['vae_decode_s'], '.2f')} | "
                     f"{fmt(r['total_s'], '.1f')} | {fmt(r.get('peak_mib'), '.0f')} |")
    lines.append("")
    lines += [f"Note: {n}" for n in notes]
    best = max((r for r in runs if r["ops"]), key=lambda r: r.get("steps", 0), default=None)
    if best is not None:
        lines += ["", f"Time per kernel family per UNet step ({best.get('steps')}-step run, mean of steps 2..N):", "",
                  "| op | calls/step | ms/step | share of all op time |", "|---|---:|---:|---:|"]
        for o in best["ops"]:
            lines.append(f"| {o['op']} | {fmt(o['calls_per_step'], '.1f')} | {fmt(o['ms_per_step'], '.2f')} | {o['share_pct']:.1f}% |")
    lines += unet_ratio(out, runs)
    failed = [r["file"] for r in runs if not r["ok"]]
    if failed:
        lines += ["", f"Failed or cut off: {', '.join(failed)} (see the file for its stderr)."]
    return lines + [""]


def unet_ratio(out, runs):
    """(e): PyTorch's eager UNet call on the same weights against our mean step (one batch-2 UNet call plus the
    sampler's few element-wise ops), preferring the run without --profile (whose ops are synchronised)."""
    path = os.path.join(out, "torch_unet.json")
    if not os.path.exists(path):
        return ["", "(e) PyTorch UNet call: not run (" + ((read(os.path.join(out, "torch_unet.txt")) or "no output").strip().splitlines() or ["?"])[-1] + ")"]
    j = json.load(open(path))
    if "ms_median" not in j:
        return ["", f"(e) PyTorch UNet call: not timed (spec resolved: {len(j.get('spec', {}).get('block_out_channels', []))} levels)"]
    ok = [r for r in runs if r.get("ok") and r.get("step_mean_s")]
    ours = min(ok, key=lambda r: (r["profiled"], -r.get("steps", 0)), default=None)
    lines = ["", f"(e) UNet call, batch {j['spec']['batch']}, {j['spec']['size']}x{j['spec']['size']} latents, fp16: PyTorch "
             f"{j['torch']} eager (functional model, SDPA, TF32 off) median {j['ms_median']:.2f} ms (min {j['ms_min']:.2f}, "
             f"peak {j['peak_mib']:.0f} MiB) on {j['device']}."]
    if ours is not None:
        ms = ours["step_mean_s"] * 1000
        lines.append(f"Ours: {ms:.2f} ms per step ({ours['steps']}-step run{', --profile' if ours['profiled'] else ''}); "
                     f"ours / PyTorch = {ms / j['ms_median']:.2f} (goal: at most 1.5).")
    return lines


def open_questions(out):
    lines = ["## (d) ILGPU's open questions (sd debug --what launch)", ""]
    path = os.path.join(out, "launch.json")
    if not os.path.exists(path):
        text = (read(os.path.join(out, "launch.txt")) or "not run").strip()
        return lines + ["```", text, "```", ""]
    j = json.load(open(path))
    la, sh = j.get("launch", {}), j.get("shared_memory", {})
    lines += [f"- **libcuda**: mapped {', '.join(j.get('libcuda_mapped') or ['?'])}; resolver: {j.get('libcuda_resolver')}; "
              f"unversioned libcuda.so loads: {j.get('libcuda_unversioned_loads')}; driver API {j.get('driver_version')}.",
              f"- **Launch overhead** ({la.get('kernel')}): {fmt(la.get('enqueue_us'), '.2f')} µs to enqueue, "
              f"{fmt(la.get('queued_us_per_launch'), '.2f')} µs per launch until done over {la.get('queued_launches')} queued launches, "
              f"{fmt(la.get('synchronised_us_per_launch'), '.2f')} µs launch + synchronise; through KernelRuntime.Launch "
              f"{fmt(la.get('kernel_runtime_launch_us'), '.2f')} µs; first compile + load {fmt(la.get('compile_and_load_ms'), '.1f')} ms.",
              f"- **More than 48 KB of dynamic shared memory**: {sh.get('result')} (device: {sh.get('device_max_per_block')} B per "
              f"block, {sh.get('device_max_per_block_optin')} B opt-in; cuFuncSetAttribute → {sh.get('cuFuncSetAttribute')}).", ""]
    for r in sh.get("runs", []):
        lines.append(f"  - {r['when']}, {r['bytes']} B: {r['result']}")
    return lines + [""]


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--estimate":
        print(estimate(sys.argv[2], int(sys.argv[3])))
        return
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = sys.argv[1]
    name, detail = card(out)
    run = json.load(open(os.path.join(out, "run.json"))) if os.path.exists(os.path.join(out, "run.json")) else {}
    lines = [f"# sd on {name}", ""]
    if detail and detail != name:
        lines += [f"nvidia-smi: {detail}", ""]
    if run.get("dry_run"):
        lines += ["**Dry run**: the same steps on the CPU (C# backend) at tiny shapes; PyTorch skipped unless it was installed.", ""]
    lines += correctness(out) + timings(out) + end_to_end(out) + open_questions(out)
    text = "\n".join(lines) + "\n"
    open(os.path.join(out, "summary.md"), "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
