#!/usr/bin/env bash
# Retrains the suite's task adapters (`make adapters`): one PEFT adapter per task in tasks/,
# rank 8, α 16, all seven projections, bf16, written to adapters/<task>/ with training.json and the
# loss curve; checkpoints (the trajectories ICM-Fusion learns from) go to out/trajectories/<task>/.
# Then adapters/manifest.json collects every training.json, and docs/adapters.md compares each
# adapter with the base model on its task's test split.
#   scripts/train_adapters.sh [TASK...]     (default: every task in tasks/)
# Environment: LORAFUSE (binary, default .build/release/lorafuse), THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
LF="${LORAFUSE:-.build/release/lorafuse}"
THREADS="${THREADS:-2}"
if [ $# -gt 0 ]; then TASKS=("$@"); else
  TASKS=(); for f in tasks/*.train.jsonl; do b=$(basename "$f"); TASKS+=("${b%%.*}"); done
fi

# One recipe for every task. Steps × batch = 800 sequences (4 epochs of 200); the long-tailed task
# has 8 training examples, so it gets fewer steps (it still sees each example 30 times).
steps_for() { case "$1" in reverse_upper) echo 30 ;; *) echo 100 ;; esac; }

for t in "${TASKS[@]}"; do
  out="adapters/$t"; traj="out/trajectories/$t"
  rm -rf "$out" "$traj"; mkdir -p "$out" "$traj"
  steps=$(steps_for "$t")
  echo "== $t: $steps steps"
  "$LF" train --data "tasks/$t.train.jsonl" --val "tasks/$t.val.jsonl" -o "$out" \
    --rank 8 --alpha 16 --targets all --steps "$steps" --batch 8 --lr 1e-3 --warmup 5 \
    --seed 1 --dtype bf16 --eval-every 50 --save-every 25 --keep 4 --checkpoint-dir "$traj" \
    --threads "$THREADS"
done

# adapters/manifest.json (every training.json plus the measured test results) and the table.
"$LF" tasks experts --tasks tasks --adapters adapters --split test --threads "$THREADS" \
  --manifest adapters/manifest.json -o docs/adapters.md
