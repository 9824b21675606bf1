#!/usr/bin/env bash
# Runs the benchmarks against their peers. Needs the peers' venv (torch, peft):
#   python3 -m venv ~/peers && ~/peers/bin/pip install torch peft transformers gguf safetensors
# and LORAFUSE_PEERS_PYTHON pointing at its python (default /root/peers/bin/python).
# The model and training benchmarks need the SmolLM2 GGUF that scripts/setup.sh fetches.
# Arguments go to the fusion benchmark (e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product lorafuse-bench
swift build -c release --product lorafuse
.build/release/lorafuse-bench fusion "$@"
.build/release/lorafuse-bench model
# The quantized engine against llama.cpp on the same GGUF at three types (issue 13). The venv with
# llama-cpp-python built from source, and the Q8_0/F16 files requantized from the Q4_1 one, come
# from scripts/setup_llamacpp.sh (~10-25 min the first time; idempotent).
CACHE="${LORAFUSE_CACHE:-${LORAFUSE_HOME:-$HOME/.cache/lorafuse}}"
bash scripts/setup_llamacpp.sh
for type in Q4_1 Q8_0-from-Q4_1 F16-from-Q4_1; do
  case "$type" in
    Q4_1) results=Benchmarks/results/model-llamacpp.json ;;
    Q8_0*) results=Benchmarks/results/model-llamacpp-q8_0.json ;;
    F16*) results=Benchmarks/results/model-llamacpp-f16.json ;;
  esac
  # A run started right after the previous one's llama.cpp process measured lorafuse's F16 prompt
  # at 344 tok/s against 447 after a pause (2026-12-08, 2-core VM): let the machine settle.
  sleep 30
  .build/release/lorafuse-bench model --peer llamacpp --python "$CACHE/venvs/llamacpp/bin/python" \
    --model "$CACHE/models/SmolLM2-135M-Instruct.$type.gguf" --results "$results"
done
.build/release/lorafuse-bench train
# Routing's cost: a routed model over adapters/ against the base and one merged adapter (no
# external peer: the comparison is the fused answer on the same engine).
.build/release/lorafuse-bench route
# Training variants against plain LoRA (PEFT implements none of them): step time, peak RSS, bytes.
.build/release/lorafuse-bench variants
# Serving (issue 15): lorafuse serve against llama.cpp's own server on the same GGUF and GGUF LoRA
# files, 64 concurrent requests over 1-64 adapters, and 1,000 adapters under a budget of 32.
# llama-server is built from the same vendored llama.cpp by scripts/setup_llama_server.sh.
bash scripts/setup_llama_server.sh
.build/release/lorafuse-bench serve --llama-server "$CACHE/bin/llama-server"
