#!/usr/bin/env bash
# Runs the benchmarks against their peers. Needs the peers' venv (torch, peft):
#   python3 -m venv ~/peers && ~/peers/bin/pip install torch peft transformers gguf safetensors
# and LORAFUSE_PEERS_PYTHON pointing at its python (default /root/peers/bin/python).
# The model and training benchmarks need the SmolLM2 GGUF that scripts/setup.sh fetches.
# Arguments go to the fusion benchmark (e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product lorafuse-bench
.build/release/lorafuse-bench fusion "$@"
.build/release/lorafuse-bench model
.build/release/lorafuse-bench train
# Routing's cost: a routed model over adapters/ against the base and one merged adapter (no
# external peer: the comparison is the fused answer on the same engine).
.build/release/lorafuse-bench route
# Training variants against plain LoRA (PEFT implements none of them): step time, peak RSS, bytes.
.build/release/lorafuse-bench variants
