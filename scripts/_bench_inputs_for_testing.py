#!/usr/bin/env python3
"""Write a fusion-benchmark input directory the way the Swift benchmark does, for testing
scripts/bench_peft_fusion.py without Swift.

  /root/peers/bin/python scripts/_bench_inputs_for_testing.py OUTDIR [--quick] [--seed N]

Layout (also described in the manifest it writes, which is what bench_peft_fusion.py reads):
  manifest.json
  A_{i}_{m}.bin  adapter i's lora_A for module m: float32 little-endian, row-major (rank, in)
  B_{i}_{m}.bin  adapter i's lora_B for module m: float32 little-endian, row-major (out, rank)
"""
import argparse
import json
import os

import numpy as np

FULL = [{"name": "q", "out": 4096, "in": 4096},
        {"name": "up", "out": 11008, "in": 4096},
        {"name": "down", "out": 4096, "in": 11008}]
QUICK = [{"name": "q", "out": 1024, "in": 1024},
         {"name": "up", "out": 2752, "in": 1024},
         {"name": "down", "out": 1024, "in": 2752}]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--quick", action="store_true", help="write the small shapes instead of the Llama-7B ones")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    modules = QUICK if args.quick else FULL
    rank, alpha, n = 16, 32, 4
    os.makedirs(args.outdir, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for i in range(n):
        for m in modules:
            a = (rng.standard_normal((rank, m["in"])) / np.sqrt(m["in"])).astype("<f4")
            b = (rng.standard_normal((m["out"], rank)) * 0.01).astype("<f4")
            a.tofile(os.path.join(args.outdir, f"A_{i}_{m['name']}.bin"))
            b.tofile(os.path.join(args.outdir, f"B_{i}_{m['name']}.bin"))
    manifest = {
        "format": "lorafuse-fusion-bench-v1",
        "dtype": "float32",
        "byte_order": "little",
        "adapters": n,
        "rank": rank,
        "alpha": alpha,
        "use_rslora": False,
        "weights": [0.4, 0.3, 0.2, 0.1],
        "modules": modules,
        "files": {"A": "A_{i}_{m}.bin", "A_shape": "(rank, in) row-major",
                  "B": "B_{i}_{m}.bin", "B_shape": "(out, rank) row-major"},
        "methods": ["svd", "cat", "ties", "dare_ties"],
        "svd_rank": 16,
        "density": 0.5,
        "majority_sign_method": "total",
        "threads": 2,
        "seed": args.seed,
    }
    with open(os.path.join(args.outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
