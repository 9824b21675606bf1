#!/usr/bin/env python3
"""Creates the PEFT fixtures under Tests/LoRAFuseTests/Fixtures/peft/ with real PEFT.

Each adapter sits on the same tiny random Llama (hidden 16, 2 layers, intermediate 32, vocab 64)
with fixed seeds and random, nonzero A and B. Next to each adapter directory, PEFT's own
`get_delta_weight` of every LoRA layer is stored in `<name>.expected.safetensors` (float32; key =
module name as it appears in the adapter keys, e.g. `base_model.model.model.layers.0.self_attn.q_proj`;
embedding deltas as PEFT returns them, [num_embeddings, dim]) with the per-module `scaling` in the
safetensors metadata. The Swift tests check lorafuse's scale handling against these.

Usage: /root/peers/bin/python scripts/make_format_fixtures.py [OUT_DIR]
"""
import json
import os
import shutil
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "Tests", "LoRAFuseTests", "Fixtures", "peft")


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=16, num_hidden_layers=2, intermediate_size=32, vocab_size=64,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def make(name, config, seed, dtype=torch.float32):
    model = get_peft_model(tiny_llama(), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_" in pname or "modules_to_save" in pname:
                v = torch.randn(p.shape, generator=gen) * 0.5
                # Values exactly representable in the saved dtype, so PEFT's float32 delta is exact.
                p.copy_(v.to(dtype).to(torch.float32))
    expected, scales = {}, {}
    for mname, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "scaling", {}):
            expected[mname] = module.get_delta_weight("default").detach().to(torch.float32).contiguous()
            scales[mname] = repr(float(module.scaling["default"]))
    out_dir = os.path.join(OUT, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    model.to(dtype)
    model.save_pretrained(out_dir)
    # Fixtures need no model card.
    readme = os.path.join(out_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    save_file(expected, os.path.join(OUT, f"{name}.expected.safetensors"), metadata=scales)
    print(name, sorted(expected))


def main():
    os.makedirs(OUT, exist_ok=True)
    # rank_pattern / alpha_pattern with regex keys; float32.
    make("patterns", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                rank_pattern={"layers.1.self_attn.q_proj": 2, "down_proj": 6},
                                alpha_pattern={"v_proj": 3, "layers\\.0\\.mlp\\.down_proj": 12},
                                lora_dropout=0.0, task_type="CAUSAL_LM"), seed=1)
    # rsLoRA: scale alpha / sqrt(r); saved in bfloat16.
    make("rslora", LoraConfig(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "o_proj"],
                              lora_dropout=0.0, task_type="CAUSAL_LM"), seed=2, dtype=torch.bfloat16)
    # Embedding LoRA plus a linear layer and a modules_to_save head; float16.
    make("embedding", LoraConfig(r=2, lora_alpha=4, target_modules=["embed_tokens", "k_proj"],
                                 modules_to_save=["lm_head"], lora_dropout=0.0, task_type="CAUSAL_LM"),
         seed=3, dtype=torch.float16)


if __name__ == "__main__":
    main()
