#!/usr/bin/env python3
"""Creates Tests/LoRAFuseTests/Fixtures/merge/ with real PEFT: the tiny random Llama the PEFT
fixtures were made on (scripts/make_format_fixtures.py, same seed) saved as an HF checkpoint, and
for each fixture adapter (patterns, rslora, embedding) the state dict PEFT's `merge_and_unload`
gives, as `<name>.merged.safetensors` (float32). The Swift tests bake the same adapters with
`MergeIntoBase` and compare tensor by tensor.

Usage: /root/peers/bin/python scripts/make_merge_fixtures.py
"""
import os
import shutil
import sys

import torch
from peft import PeftModel
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_format_fixtures import tiny_llama  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "Tests", "LoRAFuseTests", "Fixtures")
OUT = os.path.join(FIX, "merge")


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    base = tiny_llama()
    base.save_pretrained(os.path.join(OUT, "base"), safe_serialization=True)
    for f in ("generation_config.json", "README.md"):
        p = os.path.join(OUT, "base", f)
        if os.path.exists(p):
            os.remove(p)
    for name in ("patterns", "rslora", "embedding"):
        model = PeftModel.from_pretrained(tiny_llama(), os.path.join(FIX, "peft", name)).to(torch.float32)
        merged = model.merge_and_unload()
        sd = {k: v.detach().to(torch.float32).contiguous() for k, v in merged.state_dict().items()}
        save_file(sd, os.path.join(OUT, f"{name}.merged.safetensors"))
        print(name, len(sd))


if __name__ == "__main__":
    main()
