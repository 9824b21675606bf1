#!/usr/bin/env python3
"""Make the PEFT fusion fixtures under Tests/LoRAFuseTests/Fixtures/peft_fusion/.

Run with the peers venv:  /root/peers/bin/python scripts/make_peft_fusion_fixtures.py

What it writes (all small; see scripts/README-fixtures.md for what PEFT does):
  inputs/{a,b,c}/            three PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors)
                             on a tiny random Llama, targets q_proj, v_proj, down_proj:
                               a: r=4 alpha=8             (scale 2)
                               b: r=4 alpha=16            (scale 4)
                               c: r=2 alpha=4 use_rslora  (scale 4/sqrt(2))
                             A and B are seeded normals (B non-zero).
  peft_out/<combo>/          the adapter written by PEFT's add_weighted_adapter + save_pretrained
  expected.safetensors       float32 dense matrices, key "<entry>/<module>", module like
                             "model.layers.0.self_attn.q_proj" (out, in):
                               <combo>/...   get_delta_weight(combo) on each LoraLayer (PEFT's own ΔW)
                               exact/...     Σ w_i s_i B_i A_i over a,b,c (float64, stored float32)
                               exact_ab/...  same over a,b only (weights of the *_ab combos)
                               ties_dense/...            merge_utils.ties on the dense deltas (what
                                                         ties_svd feeds the SVD)
                               magnitude_prune_dense/... merge_utils.magnitude_prune on dense deltas
                               linear_factor_formula/... B'A' with A' = Σ sgn(w_i s_i)√|w_i s_i| A_i,
                                                         B' = Σ √|w_i s_i| B_i (float64, our own formula,
                                                         must equal linear/...)
  manifest.json              combinations, weights, densities, ranks, peft version, DARE statistics.
"""
import json
import math
import os
import shutil
import sys
import tempfile

import torch
import peft
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import merge_utils
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "LoRAFuseTests", "Fixtures", "peft_fusion")
SEED = 1234
TARGETS = ["q_proj", "v_proj", "down_proj"]
WEIGHTS = [1.0, -0.5, 0.7]          # for a, b, c
WEIGHTS_AB = [1.0, -0.5]            # for the equal-rank combos on a, b
DENSITY = 0.5
SVD_RANK = 4

INPUTS = {
    "a": dict(r=4, lora_alpha=8, use_rslora=False),
    "b": dict(r=4, lora_alpha=16, use_rslora=False),
    "c": dict(r=2, lora_alpha=4, use_rslora=True),
}

# name -> (adapters, weights, add_weighted_adapter kwargs)
COMBOS = {
    "cat": (["a", "b", "c"], WEIGHTS, dict(combination_type="cat")),
    "svd": (["a", "b", "c"], WEIGHTS, dict(combination_type="svd", svd_rank=SVD_RANK)),
    # a and b have rank 4 each; every module has min(out, in) >= 8, so rank 8 is full rank here.
    "svd_full_ab": (["a", "b"], WEIGHTS_AB, dict(combination_type="svd", svd_rank=8)),
    "ties_svd": (["a", "b", "c"], WEIGHTS, dict(combination_type="ties_svd", density=DENSITY,
                                                majority_sign_method="total", svd_rank=SVD_RANK)),
    "magnitude_prune_svd": (["a", "b", "c"], WEIGHTS, dict(combination_type="magnitude_prune_svd",
                                                           density=DENSITY, svd_rank=SVD_RANK)),
    "linear": (["a", "b"], WEIGHTS_AB, dict(combination_type="linear")),
    "ties": (["a", "b"], WEIGHTS_AB, dict(combination_type="ties", density=DENSITY,
                                           majority_sign_method="total")),
    # Shows that the result inherits use_rslora from adapters[0] (see README-fixtures.md):
    # same as "cat" but with c (rslora) first, so the saved adapter has scaling sqrt(r) instead of 1.
    "cat_rslora_first": (["c", "a", "b"], [WEIGHTS[2], WEIGHTS[0], WEIGHTS[1]], dict(combination_type="cat")),
}


def tiny_llama():
    torch.manual_seed(SEED)
    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64, max_position_embeddings=64, head_dim=4)
    return LlamaForCausalLM(cfg).eval()


def lora_layers(model):
    """(module key like 'model.layers.0.self_attn.q_proj', LoraLayer) in a stable order."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer):
            key = name
            for prefix in ("base_model.model.",):
                if key.startswith(prefix):
                    key = key[len(prefix):]
            out.append((key, mod))
    return out


def make_inputs(tmp_inputs):
    base = tiny_llama()
    model = None
    gen = torch.Generator().manual_seed(SEED + 1)
    for name, kw in INPUTS.items():
        cfg = LoraConfig(target_modules=TARGETS, lora_dropout=0.0, bias="none", **kw)
        if model is None:
            model = get_peft_model(base, cfg, adapter_name=f"in_{name}")
        else:
            model.add_adapter(f"in_{name}", cfg)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            for name in INPUTS:
                a = layer.lora_A[f"in_{name}"].weight
                b = layer.lora_B[f"in_{name}"].weight
                a.copy_(torch.randn(a.shape, generator=gen) * 0.5)
                b.copy_(torch.randn(b.shape, generator=gen) * 0.5)
    # Internal PEFT names are "in_<x>": a one-letter name like "a" is a substring of the "lora_" prefix,
    # which PEFT warns may re-initialise the adapter on load. The directories are renamed to <x> afterwards.
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, selected_adapters=[f"in_{n}" for n in INPUTS])
        os.makedirs(tmp_inputs, exist_ok=True)
        for name in INPUTS:
            shutil.move(os.path.join(tmp, f"in_{name}"), os.path.join(tmp_inputs, name))
    return {f"{key}/{name}": (layer.lora_A[f"in_{name}"].weight.detach().clone(),
                              layer.lora_B[f"in_{name}"].weight.detach().clone())
            for key, layer in lora_layers(model) for name in INPUTS}


def f64_delta(layer, name):
    a = layer.lora_A[name].weight.detach().double()
    b = layer.lora_B[name].weight.detach().double()
    return layer.scaling[name] * (b @ a)


def main():
    os.makedirs(OUT, exist_ok=True)
    for sub in ("inputs", "peft_out"):
        shutil.rmtree(os.path.join(OUT, sub), ignore_errors=True)
    inputs_dir = os.path.join(OUT, "inputs")
    written = make_inputs(inputs_dir)

    # Reload from disk, as a user would: PeftModel.from_pretrained + load_adapter.
    base = tiny_llama()
    model = PeftModel.from_pretrained(base, os.path.join(inputs_dir, "a"), adapter_name="a")
    model.load_adapter(os.path.join(inputs_dir, "b"), adapter_name="b")
    model.load_adapter(os.path.join(inputs_dir, "c"), adapter_name="c")
    layers = lora_layers(model)
    # The reloaded factors must be exactly the ones generated (guards against PEFT re-initialising them).
    for key, layer in layers:
        for name in INPUTS:
            a0, b0 = written[f"{key}/{name}"]
            assert torch.equal(layer.lora_A[name].weight, a0) and torch.equal(layer.lora_B[name].weight, b0), key

    expected = {}
    manifest = {
        "peft_version": peft.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "seed": SEED,
        "model": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4, "vocab_size": 64},
        "modules": {},
        "inputs": {},
        "combinations": {},
        "expected_entries": {},
        "notes": "expected.safetensors keys are '<entry>/<module>'; see scripts/README-fixtures.md",
    }
    for key, layer in layers:
        w = layer.get_base_layer().weight
        manifest["modules"][key] = {"out": int(w.shape[0]), "in": int(w.shape[1])}
    for name, kw in INPUTS.items():
        scales = {key: float(layer.scaling[name]) for key, layer in layers}
        manifest["inputs"][name] = dict(kw, path=f"inputs/{name}", scale=sorted(set(scales.values()))[0])

    # Input deltas, exact weighted sums, and our own factor formula for `linear`.
    for key, layer in layers:
        exact = sum(w * f64_delta(layer, n) for n, w in zip(["a", "b", "c"], WEIGHTS))
        expected[f"exact/{key}"] = exact.float()
        exact_ab = sum(w * f64_delta(layer, n) for n, w in zip(["a", "b"], WEIGHTS_AB))
        expected[f"exact_ab/{key}"] = exact_ab.float()
        ap = 0
        bp = 0
        for n, w in zip(["a", "b"], WEIGHTS_AB):
            ws = w * layer.scaling[n]
            ap = ap + math.copysign(math.sqrt(abs(ws)), ws) * layer.lora_A[n].weight.detach().double()
            bp = bp + math.sqrt(abs(ws)) * layer.lora_B[n].weight.detach().double()
        expected[f"linear_factor_formula/{key}"] = (bp @ ap).float()
        deltas = [layer.get_delta_weight(n).detach() for n in ["a", "b", "c"]]
        wt = torch.tensor(WEIGHTS)
        expected[f"ties_dense/{key}"] = merge_utils.ties(deltas, wt, DENSITY, "total").float()
        expected[f"magnitude_prune_dense/{key}"] = merge_utils.magnitude_prune(deltas, wt, DENSITY).float()
    manifest["expected_entries"] = {
        "exact": {"adapters": ["a", "b", "c"], "weights": WEIGHTS},
        "exact_ab": {"adapters": ["a", "b"], "weights": WEIGHTS_AB},
        "ties_dense": {"adapters": ["a", "b", "c"], "weights": WEIGHTS, "density": DENSITY,
                       "majority_sign_method": "total",
                       "formula": "peft.utils.merge_utils.ties(list of dense s_i B_i A_i, weights)"},
        "magnitude_prune_dense": {"adapters": ["a", "b", "c"], "weights": WEIGHTS, "density": DENSITY},
        "linear_factor_formula": {"adapters": ["a", "b"], "weights": WEIGHTS_AB,
                                  "formula": "B'A', A'=sum sgn(w_i s_i) sqrt|w_i s_i| A_i, B'=sum sqrt|w_i s_i| B_i"},
    }

    # PEFT's own combinations.
    peft_out = os.path.join(OUT, "peft_out")
    for combo, (adapters, weights, kw) in COMBOS.items():
        torch.manual_seed(SEED)
        model.add_weighted_adapter(adapters, weights, combo, **kw)
        model.save_pretrained(peft_out, selected_adapters=[combo])
        with open(os.path.join(peft_out, combo, "adapter_config.json")) as f:
            saved = json.load(f)
        deltas = {key: layer.get_delta_weight(combo).detach().float() for key, layer in layers}
        if combo != "cat_rslora_first":  # its ΔW is sqrt(10) * exact; not stored, to keep the fixture small
            for key in deltas:
                expected[f"{combo}/{key}"] = deltas[key]
        scaling = sorted({float(layer.scaling[combo]) for _, layer in layers})
        manifest["combinations"][combo] = {
            "adapters": adapters, "weights": weights, **kw,
            "path": f"peft_out/{combo}",
            "saved_r": saved["r"], "saved_lora_alpha": saved["lora_alpha"],
            "saved_use_rslora": saved["use_rslora"],
            "saved_rank_pattern": saved["rank_pattern"], "saved_alpha_pattern": saved["alpha_pattern"],
            "result_scaling": scaling,
            "result_rank_per_module": {key: int(layer.lora_A[combo].weight.shape[0]) for key, layer in layers},
        }

    # Relative errors against the exact sums, so the facts in the README are measured, not assumed.
    def rel(combo, ref):
        num = sum(float((expected[f"{combo}/{k}"].double() - expected[f"{ref}/{k}"].double()).norm() ** 2)
                  for k, _ in layers)
        den = sum(float(expected[f"{ref}/{k}"].double().norm() ** 2) for k, _ in layers)
        return math.sqrt(num / den)

    rslora_first = {k: v for k, v in deltas.items()}  # deltas of the last combo (cat_rslora_first)
    assert list(COMBOS)[-1] == "cat_rslora_first"
    num = sum(float((rslora_first[k].double() - expected[f"exact/{k}"].double()).norm() ** 2) for k, _ in layers)
    den = sum(float(expected[f"exact/{k}"].double().norm() ** 2) for k, _ in layers)
    checks = {
        "cat_rslora_first_vs_exact": math.sqrt(num / den),
        "cat_vs_exact": rel("cat", "exact"),
        "svd_full_ab_vs_exact_ab": rel("svd_full_ab", "exact_ab"),
        "svd_rank4_vs_exact": rel("svd", "exact"),
        "ties_svd_vs_ties_dense": rel("ties_svd", "ties_dense"),
        "magnitude_prune_svd_vs_magnitude_prune_dense": rel("magnitude_prune_svd", "magnitude_prune_dense"),
        "linear_vs_linear_factor_formula": rel("linear", "linear_factor_formula"),
        "linear_vs_exact_ab": rel("linear", "exact_ab"),
    }

    # DARE is random (torch.bernoulli): record statistics, not results.
    dare = {}
    for kind in ("dare_linear", "dare_ties"):
        errs = []
        nnz = []
        mean_acc = {k: torch.zeros_like(expected[f"exact/{k}"], dtype=torch.float64) for k, _ in layers}
        n_seeds = 200
        for s in range(n_seeds):
            torch.manual_seed(SEED + 100 + s)
            num = den = 0.0
            tot = nz = 0
            for key, layer in layers:
                deltas = [layer.get_delta_weight(n).detach() for n in ["a", "b", "c"]]
                wt = torch.tensor(WEIGHTS)
                if kind == "dare_linear":
                    d = merge_utils.dare_linear(deltas, wt, DENSITY)
                else:
                    d = merge_utils.dare_ties(deltas, wt, DENSITY, "total")
                mean_acc[key] += d.double() / n_seeds
                ref = expected[f"exact/{key}"].double()
                num += float((d.double() - ref).norm() ** 2)
                den += float(ref.norm() ** 2)
                tot += d.numel()
                nz += int((d != 0).sum())
            errs.append(math.sqrt(num / den))
            nnz.append(nz / tot)
        et = torch.tensor(errs, dtype=torch.float64)
        num = sum(float((mean_acc[k] - expected[f"exact/{k}"].double()).norm() ** 2) for k, _ in layers)
        den = sum(float(expected[f"exact/{k}"].double().norm() ** 2) for k, _ in layers)
        dare[kind] = {
            "adapters": ["a", "b", "c"], "weights": WEIGHTS, "density": DENSITY, "seeds": n_seeds,
            "dense_rel_error_vs_exact_mean": float(et.mean()), "dense_rel_error_vs_exact_std": float(et.std()),
            "dense_nonzero_fraction_mean": sum(nnz) / len(nnz),
            "rel_error_of_mean_over_seeds_vs_exact": math.sqrt(num / den),
        }
    manifest["dare_statistics"] = dare
    manifest["checks"] = checks

    # Remove README.md files PEFT writes next to each adapter (model cards; not needed, keeps size down).
    for dirpath, _, files in os.walk(OUT):
        for f in files:
            if f == "README.md":
                os.remove(os.path.join(dirpath, f))

    save_file({k: v.contiguous() for k, v in sorted(expected.items())}, os.path.join(OUT, "expected.safetensors"),
              metadata={"peft_version": peft.__version__, "layout": "row-major (out, in) float32"})
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps({"checks": checks, "dare": dare}, indent=1))


if __name__ == "__main__":
    main()
