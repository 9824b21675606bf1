#!/usr/bin/env python3
"""Runs mergekit (the peer of `lorafuse vector` / `extract-lora`) once and reports time and peak RSS.

Used by `lorafuse-bench vectors`; mergekit lives in its own venv (/root/peers-mk, see
scripts/setup_mergekit.sh) because its pins differ from /root/peers. Prints one JSON object:
{"seconds", "peak_rss_mb", "returncode", "command"}. Peak RSS is the child's ru_maxrss from
resource.getrusage(RUSAGE_CHILDREN), the same kernel counter /usr/bin/time reports.

  bench_mergekit.py task-arithmetic --base B --tuned T --weight 0.7 --dtype bfloat16 --out DIR
  bench_mergekit.py extract-lora --base B --tuned T --rank 16 --out DIR
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

VENV = os.environ.get("MERGEKIT_VENV", "/root/peers-mk")


def run(cmd):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dt = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:])
    return {"seconds": dt, "peak_rss_mb": ru.ru_maxrss / 1024.0, "returncode": p.returncode,
            "command": " ".join(cmd)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["task-arithmetic", "extract-lora"])
    ap.add_argument("--base", required=True)
    ap.add_argument("--tuned", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.mode == "task-arithmetic":
        # θ = θ_base + w·(θ_tuned − θ_base); normalize off so w is used as given.
        cfg = (f"merge_method: task_arithmetic\nbase_model: {a.base}\n"
               f"models:\n  - model: {a.tuned}\n    parameters:\n      weight: {a.weight}\n"
               f"parameters:\n  normalize: false\ndtype: {a.dtype}\nout_dtype: {a.dtype}\n")
        fd, path = tempfile.mkstemp(suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            f.write(cfg)
        cmd = [f"{VENV}/bin/mergekit-yaml", path, a.out, "--no-copy-tokenizer", "--no-write-model-card", "--quiet"]
    else:
        cmd = [f"{VENV}/bin/mergekit-extract-lora", "--model", a.tuned, "--base-model", a.base,
               "--out-path", a.out, "--max-rank", str(a.rank), "--include-regex", "_proj", "--quiet"]
    if a.threads:
        cmd += ["--num-threads", str(a.threads)]
    print(json.dumps(run(cmd)))


if __name__ == "__main__":
    main()
