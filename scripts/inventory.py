#!/usr/bin/env python3
"""Counts and sizes the README quotes about the repository itself, measured from the files:
the task suite's splits, the committed adapters (file and tensor bytes; rank, dtype, steps and warm start from each training.json), and the
default model file that scripts/setup.sh fetches. Standard library only.

    python3 scripts/inventory.py [OUT]     (default Benchmarks/results/inventory.md)
"""
import datetime
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "Benchmarks", "results", "inventory.md")


def lines(path):
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def tensor_bytes(path):
    """Bytes of tensor data in a safetensors file (file size minus the 8-byte length and header)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")


def mb(b):
    return f"{b / 1e6:.2f} MB ({b / 2**20:.2f} MiB)"


out = []
out.append("# Repository inventory: tasks, adapters, model file")
out.append("")
out.append(f"Written by `python3 scripts/inventory.py` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ}.")
out.append("MB = 10^6 bytes, MiB = 2^20 bytes.")
out.append("")

tasks_dir = os.path.join(ROOT, "tasks")
tasks = sorted(f[: -len(".train.jsonl")] for f in os.listdir(tasks_dir) if f.endswith(".train.jsonl"))
out.append(f"## Task suite (`tasks/`): {len(tasks)} tasks")
out.append("")
out.append("| task | train | val | test |")
out.append("|---|---:|---:|---:|")
for t in tasks:
    counts = [lines(os.path.join(tasks_dir, f"{t}.{s}.jsonl")) for s in ("train", "val", "test")]
    out.append(f"| {t} | {counts[0]} | {counts[1]} | {counts[2]} |")
out.append("")

manifest = json.load(open(os.path.join(ROOT, "adapters", "manifest.json")))["adapters"]
out.append(f"## Committed adapters (`adapters/`): {len(manifest)}")
out.append("")
out.append("| adapter | adapter_model.safetensors bytes | tensor bytes | dtype | rank | steps | warm start |")
out.append("|---|---:|---:|---|---:|---:|---|")
file_total = tensor_total = 0
for name in sorted(manifest):
    p = os.path.join(ROOT, "adapters", name, "adapter_model.safetensors")
    fb, tb = os.path.getsize(p), tensor_bytes(p)
    file_total += fb
    tensor_total += tb
    tr = json.load(open(os.path.join(ROOT, "adapters", name, "training.json")))
    out.append(f"| {name} | {fb} | {tb} | {tr['dtype']} | {tr['rank']} | {tr['steps']} | {tr.get('initFrom') or ''} |")
out.append(f"| **total** | {file_total} | {tensor_total} | | | | |")
out.append("")
out.append(f"Per adapter file: {mb(file_total // len(manifest))}; tensor data {mb(tensor_total // len(manifest))}. "
           f"All {len(manifest)}: files {mb(file_total)}, tensor data {mb(tensor_total)}.")
out.append("")

home = os.environ.get("LORAFUSE_HOME", os.path.join(os.path.expanduser("~"), ".cache", "lorafuse"))
model = os.path.join(home, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
out.append("## Default model file")
out.append("")
if os.path.exists(model):
    out.append(f"`$LORAFUSE_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf`: {os.path.getsize(model)} bytes = {mb(os.path.getsize(model))}.")
else:
    out.append("Not present (run scripts/setup.sh).")
out.append("")

os.makedirs(os.path.dirname(OUT), exist_ok=True)
with open(OUT, "w") as f:
    f.write("\n".join(out))
print("\n".join(out))
