#!/usr/bin/env bash
# The continual setting of docs/variants.md: four suite tasks arrive one after another
# (TASKS, in order), 100 steps each at rank 2 per task (the adapter ends at rank 8, the suite's),
# α 4 (scale 2, the suite's), batch 8, lr 1e-3, seed 1; forgetting measured on the first 50 test
# examples of every task after each one. Four rows: `continual --method ranks` (a frozen block of
# ranks per task), the same with `--top-k TOPK` (self-activated ranks: each token keeps the TOPK
# ranks of largest |x·a_j|; default 2, one task's worth), `continual --method lora` (one rank-8
# LoRA trained on each task in turn), and plain rank-8 LoRA trained once on the union of the four
# training splits for the same 400 steps.
#   scripts/continual.sh [OUT_DIR]     (default out/continual)
# Environment: LORAFUSE (binary, default .build/release/lorafuse), THREADS (2), STEPS (100 per task),
# TASKS (default "add_2digit date_eu capital_facts uppercase"), TOPK (2), ROWS (which rows to run,
# default "ranks gated lora union").
set -euo pipefail
cd "$(dirname "$0")/.."
LF="${LORAFUSE:-.build/release/lorafuse}"
THREADS="${THREADS:-2}"
STEPS="${STEPS:-100}"
TASKS="${TASKS:-add_2digit date_eu capital_facts uppercase}"
OUT="${1:-out/continual}"
TOPK="${TOPK:-2}"
ROWS="${ROWS:-ranks gated lora union}"
mkdir -p "$OUT"
train=(); tests=()
for t in $TASKS; do train+=("tasks/$t.train.jsonl"); tests+=("tasks/$t.test.jsonl"); done
common=(--rank 2 --alpha 4 --targets all --steps "$STEPS" --batch 8 --lr 1e-3 --warmup 10 --seed 1 --test-examples 50 --threads "$THREADS" --force)
want() { [[ " $ROWS " == *" $1 "* ]]; }
for m in ranks lora; do
  if want "$m"; then "$LF" continual "${train[@]}" --method "$m" -o "$OUT/$m" "${common[@]}"; fi
done
if want gated; then "$LF" continual "${train[@]}" --method ranks --top-k "$TOPK" -o "$OUT/gated" "${common[@]}"; fi
if ! want union; then echo "wrote the continual.md of: $ROWS under $OUT"; exit 0; fi
cat "${train[@]}" > "$OUT/union.train.jsonl"
n=$(( STEPS * ${#train[@]} ))
"$LF" train --data "$OUT/union.train.jsonl" -o "$OUT/union" --force --rank 8 --alpha 16 --targets all --steps "$n" \
  --batch 8 --lr 1e-3 --warmup 10 --seed 1 --threads "$THREADS"
for t in "${tests[@]}"; do head -n 50 "$t" > "$OUT/$(basename "$t")"; done
held=(); for t in $TASKS; do held+=("$OUT/$t.test.jsonl"); done
"$LF" eval --adapter "$OUT/union" --data "${held[@]}" --no-accuracy --json --compute f32 --threads "$THREADS" > "$OUT/union.test.json"
echo "wrote $OUT/{ranks,gated,lora}/continual.md and $OUT/union.test.json"
