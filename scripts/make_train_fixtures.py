#!/usr/bin/env python3
"""Reference LoRA gradients for lorafuse's training engine (Tests/LoRAFuseTests/Fixtures/train/).

Run with the peers venv: /root/peers/bin/python scripts/make_train_fixtures.py

For each tiny random model of the model fixtures (Tests/LoRAFuseTests/Fixtures/model/tiny-llama,
untied; tiny-qwen2, tied embeddings and q/k/v biases), PEFT puts a LoRA (r=4) on all seven
projections, with seeded normal A and B (B non-zero so every path has gradient; the Qwen one uses
rsLoRA). A batch of two token sequences of different lengths, each with a prompt part that carries
no loss, is run through the model one sequence at a time (no padding); the loss is the mean
cross-entropy over all answer positions of the batch:

    loss = Σ_seq Σ_{t: target_t ≥ 0} −log softmax(logits_t)[target_t]  /  #answer positions

and loss.backward() gives the gradient of every lora_A / lora_B.

Written per model <m> in {llama, qwen2}:
  <m>-lora/            the adapter (save_pretrained, F32) with the initial A and B
  <m>-grads.safetensors
      tokens0, targets0, tokens1, targets1  (float32 ids; target −1 = no loss)
      loss                                   (1,)
      <module>.lora_A, <module>.lora_B       gradients, module = base_model.model.model.layers.L.…
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "Tests", "LoRAFuseTests", "Fixtures", "model")
OUT = os.path.join(ROOT, "Tests", "LoRAFuseTests", "Fixtures", "train")
os.makedirs(OUT, exist_ok=True)

from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# (prompt, answer) token ids; the answer's last token plays the end-of-turn token.
BATCH = [
    ([5, 17, 8, 41, 22, 60, 3], [9, 30, 12, 2]),
    ([7, 6, 44, 90], [19, 2]),
]


def sequence(prompt, answer):
    tokens = prompt + answer[:-1]
    targets = [-1] * (len(prompt) - 1) + answer
    return tokens, targets


def make(tag, model_dir, rslora, seed):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(MODELS, model_dir), dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, use_rslora=rslora,
                     task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    pm.eval()  # dropout is 0 anyway; eval() keeps any other stochastic layer off

    total, count = 0.0, 0
    out = {}
    for i, (prompt, answer) in enumerate(BATCH):
        tokens, targets = sequence(prompt, answer)
        out[f"tokens{i}"] = torch.tensor(tokens, dtype=torch.float32)
        out[f"targets{i}"] = torch.tensor(targets, dtype=torch.float32)
        logits = pm(input_ids=torch.tensor([tokens])).logits[0]          # (T, V)
        t = torch.tensor(targets)
        total = total + torch.nn.functional.cross_entropy(logits, t, ignore_index=-1, reduction="sum")
        count += int((t >= 0).sum())
    loss = total / count
    loss.backward()
    out["loss"] = loss.detach().reshape(1)
    for name, p in pm.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
            module, factor = name.split(".lora_")
            out[f"{module}.lora_{factor[0]}"] = p.grad.detach().clone()
    save_file(out, os.path.join(OUT, f"{tag}-grads.safetensors"))
    ad = os.path.join(OUT, f"{tag}-lora")
    shutil.rmtree(ad, ignore_errors=True)
    pm.save_pretrained(ad)
    os.remove(os.path.join(ad, "README.md"))
    # A machine-independent base path (the fixture's folder name).
    cfg_path = os.path.join(ad, "adapter_config.json")
    with open(cfg_path) as f:
        c = json.load(f)
    c["base_model_name_or_path"] = model_dir
    c["target_modules"] = sorted(c["target_modules"])
    with open(cfg_path, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
    print(tag, "loss", float(loss), "count", count)


if __name__ == "__main__":
    make("llama", "tiny-llama", rslora=False, seed=11)
    make("qwen2", "tiny-qwen2", rslora=True, seed=12)
