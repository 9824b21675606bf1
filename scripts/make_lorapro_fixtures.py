#!/usr/bin/env python3
"""LoRA-Pro's adjusted gradients as the authors' own code computes them
(Tests/LoRAFuseTests/Fixtures/train/lorapro-authors.safetensors).

Run with the peers venv (torch, safetensors) and a checkout of the authors' repository
(github.com/mrflogs/LoRA-Pro; its modified DeepSpeed holds the method):

    ~/.cache/lorafuse/venvs/peers/bin/python scripts/make_lorapro_fixtures.py LORA_PRO_CHECKOUT

The method lives in DeepSpeed-0.15.1/deepspeed/runtime/zero/stage_1_and_2.py as the optimizer
method `lorapro_full_adjustment` plus the module function `solve_sylvester`. Importing DeepSpeed
needs CUDA tooling, so this script takes the two functions' source out of that file with `ast`
and runs them unchanged against a stand-in for the optimizer object that carries exactly the
attributes they read (averaged_gradients, params_in_partition, global_step, exp_avg, exp_avg_sq).
Nothing of theirs is copied into lorafuse: the fixture holds inputs and outputs only.

Their scaling factor is hard-coded to 16/8 = 2, so the modules here use α = 2r (s = α/r = 2).
Two modules (out, in, r) = (12, 10, 4) and (7, 16, 4), A from PEFT-like uniform(±1/√in), B = 0,
three steps; at each step a random full gradient G per module gives the LoRA gradients
g_A = s·BᵀG, g_B = s·G·Aᵀ (what backpropagation would give), their function adjusts them, and
A, B take an SGD step A ← A − lr·dA (as their trainer's "sgd" optimizer does, no clipping).
`global_step` is set to t − 1 when their function runs, so its bias correction is Adam's usual
one at step t (in their training loop the counter is incremented first; lorafuse documents that).

Written per step t ∈ {1, 2, 3} and module i ∈ {0, 1}:
    t{t}.m{i}.A, t{t}.m{i}.B       factors before the step
    t{t}.m{i}.gA, t{t}.m{i}.gB     LoRA gradients given to the method
    t{t}.m{i}.dA, t{t}.m{i}.dB     the adjusted gradients it returns
metadata: lr, scale, steps, source (the file and its git blob id when known).
"""
import ast
import math
import os
import subprocess
import sys

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests/LoRAFuseTests/Fixtures/train/lorapro-authors.safetensors")
REL = "DeepSpeed-0.15.1/deepspeed/runtime/zero/stage_1_and_2.py"


def load_authors_functions(checkout):
    path = os.path.join(checkout, REL)
    src = open(path).read()
    tree = ast.parse(src)
    wanted = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in ("lorapro_full_adjustment", "solve_sylvester"):
            node.decorator_list = []     # @torch.no_grad(); we run under no_grad ourselves
            wanted[node.name] = ast.unparse(node)
    assert set(wanted) == {"lorapro_full_adjustment", "solve_sylvester"}, f"functions not found in {path}"
    ns = {"torch": torch, "math": math}
    exec(wanted["solve_sylvester"], ns)
    exec(wanted["lorapro_full_adjustment"], ns)
    blob = "unknown"
    try:
        blob = subprocess.run(["git", "-C", checkout, "hash-object", REL], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        pass
    return ns["lorapro_full_adjustment"], blob


class StandIn:
    """The attributes of DeepSpeed's ZeRO optimizer that `lorapro_full_adjustment` reads."""

    def __init__(self):
        self.global_step = 0
        self.exp_avg = {}
        self.exp_avg_sq = {}
        self.averaged_gradients = {0: []}
        self.params_in_partition = {0: []}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    adjust, blob = load_authors_functions(sys.argv[1])
    torch.manual_seed(0)
    shapes = [(12, 10, 4), (7, 16, 4)]
    s, lr, steps = 2.0, 0.05, 3
    A = [(torch.rand(r, n) * 2 - 1) / math.sqrt(n) for (m, n, r) in shapes]
    B = [torch.zeros(m, r) for (m, n, r) in shapes]
    opt = StandIn()
    tensors = {}
    with torch.no_grad():
        for t in range(1, steps + 1):
            gA, gB = [], []
            for i, (m, n, r) in enumerate(shapes):
                G = torch.randn(m, n)
                gA.append(s * B[i].T @ G)
                gB.append(s * G @ A[i].T)
            opt.global_step = t - 1
            opt.params_in_partition[0] = [p for i in range(len(shapes)) for p in (A[i].clone(), B[i].clone())]
            grads = [g.clone() for i in range(len(shapes)) for g in (gA[i], gB[i])]
            opt.averaged_gradients[0] = grads
            adjust(opt, 0)
            for i in range(len(shapes)):
                dA, dB = grads[2 * i].data, grads[2 * i + 1].data
                for k, v in (("A", A[i]), ("B", B[i]), ("gA", gA[i]), ("gB", gB[i]), ("dA", dA), ("dB", dB)):
                    tensors[f"t{t}.m{i}.{k}"] = v.contiguous().float()
                A[i] = A[i] - lr * dA
                B[i] = B[i] - lr * dB
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata={"lr": str(lr), "scale": str(s), "steps": str(steps),
                                       "source": f"mrflogs/LoRA-Pro {REL} (blob {blob})", "torch": torch.__version__})
    print(f"wrote {OUT} ({len(tensors)} tensors)")


if __name__ == "__main__":
    main()
