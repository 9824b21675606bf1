#!/usr/bin/env python3
"""Creates Tests/LoRAFuseTests/Fixtures/vectors/smollm2_qk_rows.safetensors: what transformers'
own GGUF loader (dequantize + undo llama.cpp's q/k row permutation) gives for layer 0's q_proj
(rows 0..127, two heads) and k_proj (rows 0..63, one KV head) of the default model
SmolLM2-135M-Instruct.Q4_1.gguf. The Swift test un-permutes the same GGUF tensors with
lorafuse's code and must match, which pins the permutation's direction on real data.

Usage: /root/peers/bin/python scripts/make_vector_fixtures.py
"""
import os

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "LoRAFuseTests", "Fixtures", "vectors")
MODELS = os.path.join(os.environ.get("LORAFUSE_HOME", os.path.expanduser("~/.cache/lorafuse")), "models")

m = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32)
sd = m.state_dict()
os.makedirs(OUT, exist_ok=True)
save_file({
    "model.layers.0.self_attn.q_proj.weight": sd["model.layers.0.self_attn.q_proj.weight"][:128].contiguous(),
    "model.layers.0.self_attn.k_proj.weight": sd["model.layers.0.self_attn.k_proj.weight"][:64].contiguous(),
}, os.path.join(OUT, "smollm2_qk_rows.safetensors"))
print("ok")
