#!/usr/bin/env python3
"""Load test for a running `sd serve` (python3 standard library only).

Submits N jobs at once through POST /v1/jobs, waits for each through GET /v1/jobs/{id}, and reports per job the wait
in the queue, the run time and the latency (submit to done), the wall time per job over the whole batch, and the
server's resident memory (VmRSS of --pid) before and after.

Start the server with --max-queue at least N - 1, or the jobs past it are refused (429) and reported as errors.

usage: load.py --url http://127.0.0.1:7860 --pid PID [--jobs 20] [--steps 4] [--size 64x64] [--api-key KEY] [--out DIR]
"""
import argparse, json, os, statistics, threading, time, urllib.request


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def call(url, method="GET", body=None, key=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if key:
        req.add_header("Authorization", "Bearer " + key)
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.status, json.loads(r.read() or b"null")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:7860")
    ap.add_argument("--pid", type=int, required=True, help="the sd serve process, for its resident memory")
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", default="64x64")
    ap.add_argument("--api-key")
    ap.add_argument("--out")
    a = ap.parse_args()
    w, h = (int(x) for x in a.size.split("x"))

    # One warm-up generation: kernel compilation and first weight loads are not what the queue measures.
    call(a.url + "/sdapi/v1/txt2img", "POST", {"prompt": "warm-up", "steps": a.steps, "width": w, "height": h, "seed": 0}, a.api_key)
    rss_before = rss_mib(a.pid)

    submitted, ids, errors = {}, [None] * a.jobs, []
    def submit(i):
        try:
            t = time.monotonic()
            status, job = call(a.url + "/v1/jobs", "POST",
                               {"prompt": f"load test {i}", "steps": a.steps, "width": w, "height": h, "seed": 1000 + i}, a.api_key)
            ids[i] = job["id"]
            submitted[job["id"]] = t
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            errors.append(f"job {i}: {e}")
    start = time.monotonic()
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(a.jobs)]
    for t in threads: t.start()
    for t in threads: t.join()

    done, results = {}, {}
    while len(done) + len(errors) < a.jobs:
        for job_id in [j for j in ids if j and j not in done]:
            _, state = call(f"{a.url}/v1/jobs/{job_id}", key=a.api_key)
            if state["status"] in ("done", "failed", "cancelled"):
                done[job_id] = time.monotonic()
                results[job_id] = state
        time.sleep(0.1)
    wall = time.monotonic() - start
    rss_after = rss_mib(a.pid)

    latencies = [done[j] - submitted[j] for j in done]
    runs = [results[j]["seconds"] for j in done]
    ok = sum(1 for j in done if results[j]["status"] == "done")
    summary = {
        "jobs": a.jobs, "done": ok, "failed_or_cancelled": len(done) - ok, "submit_errors": errors,
        "steps": a.steps, "size": a.size,
        "wall_s": round(wall, 3), "wall_per_done_job_s": round(wall / max(ok, 1), 3),
        "latency_mean_s": round(statistics.mean(latencies), 3), "latency_max_s": round(max(latencies), 3),
        "run_mean_s": round(statistics.mean(runs), 3),
        "rss_before_mib": round(rss_before, 1), "rss_after_mib": round(rss_after, 1),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "load.json"), "w") as f:
            f.write(text + "\n")
    return 0 if ok == a.jobs and not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
