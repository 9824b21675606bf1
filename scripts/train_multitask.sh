#!/usr/bin/env bash
# The multi-task baseline of docs/variants.md: one adapter trained on the union of every suite
# task's training split (the trainer shuffles it), with the suite's per-task recipe (rank 8, α 16,
# all seven projections, batch 8, lr 1e-3, seed 1, bf16) for STEPS steps, validated on the first
# 10 validation examples of each task; then scored on every task's test split beside the experts.
#   scripts/train_multitask.sh [OUT_DIR]     (default out/multitask)
# Environment: LORAFUSE (binary, default .build/release/lorafuse), THREADS (2), STEPS (400),
# VARIANT (lora; another --variant trains at that variant's default lr instead), EXTRA (more
# `train` flags, later ones win: e.g. "--rank 16 --alpha 32 --top-k 4 --lr 1e-3" for flylora at
# LoRA's trained-value count), KNOWLEDGE (task names, space-separated, whose training split goes
# to `--knowledge-data` instead of `--data`: LoRAMoE's world-knowledge examples).
set -euo pipefail
cd "$(dirname "$0")/.."
LF="${LORAFUSE:-.build/release/lorafuse}"
THREADS="${THREADS:-2}"
STEPS="${STEPS:-400}"
VARIANT="${VARIANT:-lora}"
OUT="${1:-out/multitask}"
mkdir -p "$OUT"
: > "$OUT/union.train.jsonl"
: > "$OUT/knowledge.train.jsonl"
know=()
for f in tasks/*.train.jsonl; do
  t="$(basename "$f" .train.jsonl)"
  if [[ " ${KNOWLEDGE:-} " == *" $t "* ]]; then cat "$f" >> "$OUT/knowledge.train.jsonl"; else cat "$f" >> "$OUT/union.train.jsonl"; fi
done
[ -s "$OUT/knowledge.train.jsonl" ] && know=(--knowledge-data "$OUT/knowledge.train.jsonl")
for f in tasks/*.val.jsonl; do head -n 10 "$f"; done > "$OUT/union.val.jsonl"
lr=(--lr 1e-3); [ "$VARIANT" != lora ] && lr=()
"$LF" train --variant "$VARIANT" --data "$OUT/union.train.jsonl" "${know[@]}" --val "$OUT/union.val.jsonl" -o "$OUT/adapter" --force \
  --rank 8 --alpha 16 --targets all --steps "$STEPS" --batch 8 "${lr[@]}" --warmup 10 --seed 1 --dtype bf16 \
  --eval-every 100 --threads "$THREADS" ${EXTRA:-}
tests=(); for f in tasks/*.test.jsonl; do tests+=("$f"); done
"$LF" eval --adapter "$OUT/adapter" --data "${tests[@]}" --json --threads "$THREADS" --compute f32 > "$OUT/test.json"
echo "wrote $OUT/adapter and $OUT/test.json"
