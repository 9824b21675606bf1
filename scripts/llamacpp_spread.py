#!/usr/bin/env python3
"""How far one llama.cpp build is from the build that made the parity fixture (issue 13).

Runs the 28 suite sequences of Tests/LoRAFuseTests/Fixtures/llamacpp/STEM.safetensors through the
llama_cpp of the Python that runs this script (same settings as scripts/make_llamacpp_fixtures.py:
n_ctx 512, 2 threads, logits_all, flash attention off, F16 KV cache), and prints top-1 agreement and
mean KL(fixture ‖ this build) per token, computed as LlamaCppParityTests does (llama.cpp's top 32
plus the rest lumped). A llama.cpp built for another CPU (other kernels, other rounding of the 8-bit
activations) is the yardstick for the parity bars: see scripts/README-fixtures.md.

  PYTHON scripts/llamacpp_spread.py [MODEL.gguf] [STEM]

MODEL defaults to ~/.cache/lorafuse/models/SmolLM2-135M-Instruct.Q4_1.gguf, STEM to smollm2_q4_1.
The generic build measured in scripts/README-fixtures.md was made in a second venv (numpy only) from
the sdist scripts/setup_llamacpp.sh keeps:
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_AVX512=OFF -DGGML_FMA=OFF \
    -DGGML_F16C=OFF -DGGML_BMI2=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
    VENV/bin/pip install --no-binary llama-cpp-python ~/.cache/lorafuse/sdists/llama_cpp_python-0.3.36.tar.gz
(about 5 minutes on 2 cores). Run by the venv of scripts/setup_llamacpp.sh it must print KL 0.
"""
import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            assert info["dtype"] == "F32", (name, info["dtype"])
            a, b = info["data_offsets"]
            f.seek(base + a)
            out[name] = np.frombuffer(f.read(b - a), dtype=np.float32).reshape(info["shape"])
        return out


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
        "~/.cache/lorafuse/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    stem = sys.argv[2] if len(sys.argv) > 2 else "smollm2_q4_1"
    fx = read_safetensors(os.path.join(ROOT, "Tests/LoRAFuseTests/Fixtures/llamacpp", stem + ".safetensors"))
    import llama_cpp
    llm = llama_cpp.Llama(model_path=model, logits_all=True, n_ctx=512, n_threads=2, seed=0, verbose=False)
    print("llama-cpp-python", llama_cpp.__version__, "|", llama_cpp.llama_print_system_info().decode().strip())
    positions = top1 = 0
    kl_sum = kl_max = 0.0
    i = 0
    while f"suite.{i}.tokens" in fx:
        toks = [int(t) for t in fx[f"suite.{i}.tokens"]]
        llm.reset()
        llm.eval(toks)
        logits = np.array(llm.scores[: len(toks)], dtype=np.float64)
        ids = fx[f"suite.{i}.top_ids"].astype(np.int64)
        lp = fx[f"suite.{i}.top_logprobs"].astype(np.float64)
        tail = fx[f"suite.{i}.tail_logprob"].astype(np.float64)
        for j in range(len(toks)):
            row = logits[j]
            m = row.max()
            lse = m + np.log(np.exp(row - m).sum())
            if int(row.argmax()) == int(ids[j, 0]):
                top1 += 1
            lq = row[ids[j]] - lse
            p = np.exp(lp[j])
            kl = float((p * (lp[j] - lq)).sum())
            q_tail = max(1 - np.exp(lq).sum(), 1e-300)
            kl += float(np.exp(tail[j]) * (tail[j] - np.log(q_tail)))
            kl_sum += kl
            kl_max = max(kl_max, kl)
            positions += 1
        i += 1
    print(f"{i} sequences, {positions} positions: top-1 agreement {top1 / positions:.4f}, "
          f"mean KL(fixture ‖ this build) {kl_sum / positions:.2e}, max {kl_max:.3f}")


if __name__ == "__main__":
    main()
