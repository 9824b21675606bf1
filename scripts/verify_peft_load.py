#!/usr/bin/env python3
"""Checks that real PEFT loads a lorafuse-written adapter exactly.

Usage: /root/peers/bin/python scripts/verify_peft_load.py DIR [BASE_CONFIG ...] [--expected DELTAS.safetensors]

BASE_CONFIG items are either a base model `config.json` (LlamaConfig fields) or `key=value`
overrides (e.g. `hidden_size=16`). Anything not given is inferred from the adapter's tensor shapes
(hidden size, intermediate size, layers, vocab, key/value width). A tiny random Llama with that
shape is built, the adapter is loaded with `PeftModel.from_pretrained`, and for every LoRA layer:
  * lora_A / lora_B (or lora_embedding_A / _B) in the model equal the safetensors tensors bit for bit,
    so nothing was left at its random initialisation or dropped;
  * get_delta_weight equals scaling * B @ A from the file (transposed for embeddings / fan_in_fan_out);
  * with --expected, it also equals the dense ΔW stored under the module name (e.g. one lorafuse computed).
Every adapter tensor must be consumed by some layer. Exit status 0 only if all checks pass.
"""
import json
import math
import os
import re
import sys

import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM


def infer_config(tensors):
    hidden = inter = vocab = kv_out = None
    layers = 0
    for name, t in tensors.items():
        m = re.search(r"layers\.(\d+)\.", name)
        if m:
            layers = max(layers, int(m.group(1)) + 1)
        if name.endswith("lora_A.weight") or name.endswith("lora_B.weight"):
            mod = name.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1]
            is_a = ".lora_A." in name
            if mod in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj") and is_a:
                hidden = t.shape[1]
            if mod in ("o_proj", "down_proj") and not is_a:
                hidden = t.shape[0]
            if mod in ("q_proj",) and not is_a:
                hidden = t.shape[0]
            if mod in ("gate_proj", "up_proj") and not is_a:
                inter = t.shape[0]
            if mod == "down_proj" and is_a:
                inter = t.shape[1]
            if mod in ("k_proj", "v_proj") and not is_a:
                kv_out = t.shape[0]
            if mod == "lm_head" and not is_a:
                vocab = t.shape[0]
        if name.endswith("lora_embedding_A"):
            vocab = t.shape[1]
        if name.endswith("lora_embedding_B"):
            hidden = t.shape[0]
        if name.endswith("lm_head.weight") or name.endswith("embed_tokens.base_layer.weight") or name.endswith("embed_tokens.weight"):
            vocab, hidden = t.shape[0], t.shape[1]
    cfg = {"hidden_size": hidden or 16, "intermediate_size": inter or 32, "vocab_size": vocab or 64,
           "num_hidden_layers": max(layers, 1), "tie_word_embeddings": False, "max_position_embeddings": 32}
    h = cfg["hidden_size"]
    kv = kv_out or h
    head_dim = math.gcd(h, kv)
    cfg["num_attention_heads"] = h // head_dim
    cfg["num_key_value_heads"] = kv // head_dim
    cfg["head_dim"] = head_dim
    return cfg


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    expected_path = None
    if "--expected" in argv:
        expected_path = argv[argv.index("--expected") + 1]
        args.remove(expected_path)
    if not args:
        print(__doc__)
        return 2
    adir = args[0]
    with safe_open(os.path.join(adir, "adapter_model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k).to(torch.float32) for k in f.keys()}
    cfg = infer_config(tensors)
    for item in args[1:]:
        if item.endswith(".json"):
            with open(item) as fh:
                cfg.update(json.load(fh))
        else:
            k, v = item.split("=", 1)
            cfg[k] = json.loads(v)
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.float32)
    model = PeftModel.from_pretrained(base, adir)
    expected = {}
    if expected_path:
        with safe_open(expected_path, "pt") as f:
            expected = {k: f.get_tensor(k).to(torch.float32) for k in f.keys()}

    used, failures, checked = set(), [], 0
    for mname, module in model.named_modules():
        if not (hasattr(module, "get_delta_weight") and "default" in getattr(module, "scaling", {})):
            continue
        if "default" in getattr(module, "lora_A", {}):
            a_key, b_key = mname + ".lora_A.weight", mname + ".lora_B.weight"
            A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
            emb = False
        else:
            a_key, b_key = mname + ".lora_embedding_A", mname + ".lora_embedding_B"
            A, B = module.lora_embedding_A["default"], module.lora_embedding_B["default"]
            emb = True
        if a_key not in tensors or b_key not in tensors:
            # Targeted by the config but absent from the file: PEFT leaves B at zero.
            if B.abs().max().item() != 0:
                failures.append(f"{mname}: not in the file but B is nonzero")
            continue
        used.update([a_key, b_key])
        fa, fb = tensors[a_key], tensors[b_key]
        if A.shape != fa.shape or not torch.equal(A.detach().float(), fa):
            failures.append(f"{mname}: loaded A differs from {a_key}")
        if B.shape != fb.shape or not torch.equal(B.detach().float(), fb):
            failures.append(f"{mname}: loaded B differs from {b_key}")
        s = module.scaling["default"]
        want = fb @ fa * s
        if emb or getattr(module, "fan_in_fan_out", False):
            want = want.T
        got = module.get_delta_weight("default").detach().float()
        tol = 1e-5 * max(1.0, want.abs().max().item())
        if (got - want).abs().max().item() > tol:
            failures.append(f"{mname}: get_delta_weight differs from scaling*B@A (max {(got - want).abs().max().item():.3g})")
        if mname in expected:
            e = expected[mname]
            if emb and e.shape != got.shape:
                e = e.T
            err = (got - e).abs().max().item()
            if err > 1e-4 * max(1.0, e.abs().max().item()):
                failures.append(f"{mname}: ΔW differs from --expected by {err:.3g}")
            expected.pop(mname)
        checked += 1
        print(f"ok {mname} r={fa.shape[0]} scaling={s:.6g}")
    lora_keys = {k for k in tensors if ".lora_" in k}
    if lora_keys - used:
        failures.append(f"adapter tensors not loaded by any layer: {sorted(lora_keys - used)}")
    if expected:
        failures.append(f"--expected modules with no LoRA layer: {sorted(expected)}")
    for f in failures:
        print("FAIL", f)
    print(f"{checked} modules checked, {len(failures)} failures")
    return 1 if failures or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
