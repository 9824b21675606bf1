#!/usr/bin/env bash
# The converged tail of each suite adapter's training, as samples for ICM-Fusion's generator
# (part of `make adapters`; `make report` runs it when out/trajectories is missing):
# from each adapters/<task>/ final adapter, STEPS more low-rate AdamW steps on the task's train
# split (another data order: seed 2), a checkpoint after every step, into
# out/trajectories/<task>/checkpoint-<step>/ (adapter files only; the trainer state is removed).
# ICM-LoRA trains its generator on late checkpoints the same way. Nothing here is committed
# (about 5 MB a checkpoint); the adapters in adapters/ are never touched.
#   scripts/train_tails.sh [TASK...]     (default: every adapter in adapters/)
# Environment: LORAFUSE (binary, default .build/release/lorafuse), THREADS (default 2),
# STEPS (default 20), LR (default 3e-5, a thirtieth of the suite's peak rate: the tail stays near
# the final adapter, whose reconstruction is what the generator is measured on).
set -euo pipefail
cd "$(dirname "$0")/.."
LF="${LORAFUSE:-.build/release/lorafuse}"
THREADS="${THREADS:-2}"
STEPS="${STEPS:-20}"
LR="${LR:-3e-5}"
if [ $# -gt 0 ]; then TASKS=("$@"); else
  TASKS=(); for d in adapters/*/; do TASKS+=("$(basename "$d")"); done
fi
for t in "${TASKS[@]}"; do
  [ -f "adapters/$t/adapter_config.json" ] || { echo "train_tails: adapters/$t is not a PEFT adapter" >&2; exit 1; }
  [ -f "tasks/$t.train.jsonl" ] || { echo "train_tails: no tasks/$t.train.jsonl" >&2; exit 1; }
  traj="out/trajectories/$t"; tmp="out/tails/$t"
  rm -rf "$traj" "$tmp"; mkdir -p "$traj" "$tmp"
  echo "== $t: $STEPS tail steps at $LR"
  "$LF" train --data "tasks/$t.train.jsonl" -o "$tmp/final" --init-from "adapters/$t" \
    --rank 8 --alpha 16 --targets all --steps "$STEPS" --batch 8 --lr "$LR" --seed 2 --dtype bf16 \
    --save-every 1 --keep "$STEPS" --checkpoint-dir "$traj" --threads "$THREADS" --quiet
  rm -f "$traj"/checkpoint-*/trainer_state.safetensors
  rm -rf "$tmp"
done
rmdir out/tails 2>/dev/null || true
echo "wrote ${#TASKS[@]} trajectory tails to out/trajectories/"
