#!/usr/bin/env bash
# One adapter per task with a training variant, on exactly the recipe of the task's LoRA expert in
# adapters/ (scripts/recipes.sh: steps, batch 8, warm-up 5, seed 1, rank 8, α 16, all seven
# projections), at the variant's own default --lr, then every one and its expert scored on the
# task's test split in the same run (`eval --compute f32`: token-weighted answer loss and greedy
# exact-match accuracy). The tables of docs/variants.md come from this script.
#   scripts/train_variant_experts.sh VARIANT [TASK...]   (default tasks: the six of docs/variants.md)
# Environment: LORAFUSE (binary, default .build/release/lorafuse), THREADS (2), OUT (out/variants),
# EXTRA (more `train` flags, e.g. "--nola-basis 256"), SUFFIX (appended to the output folder name).
# Warm-started tasks (reverse_upper) are skipped: a variant other than plain LoRA starts from its
# own initialisation.
set -euo pipefail
cd "$(dirname "$0")/.."
LF="${LORAFUSE:-.build/release/lorafuse}"
THREADS="${THREADS:-2}"
VARIANT="${1:?usage: scripts/train_variant_experts.sh VARIANT [TASK...]}"; shift
if [ $# -gt 0 ]; then TASKS=("$@"); else
  TASKS=(add_2digit count_vowels roman_numeral sub_2digit unit_convert uppercase)
fi
# shellcheck source=recipes.sh
source scripts/recipes.sh
OUT="${OUT:-out/variants}/$VARIANT${SUFFIX:-}"
mkdir -p "$OUT"
read -r -a extra <<< "${EXTRA:-}"
for t in "${TASKS[@]}"; do
  if [ -n "$(init_for "$t")" ]; then echo "skip $t (its expert is warm-started)"; continue; fi
  echo "== $VARIANT $t: $(steps_for "$t") steps"
  "$LF" train --variant "$VARIANT" --data "tasks/$t.train.jsonl" --val "tasks/$t.val.jsonl" -o "$OUT/$t" --force \
    --rank 8 --alpha 16 --targets all --steps "$(steps_for "$t")" --batch 8 --warmup 5 --seed 1 --eval-every 50 \
    --threads "$THREADS" --quiet "${extra[@]}"
done
{
  echo "| task | expert loss | $VARIANT loss | Δ | expert acc. | $VARIANT acc. |"
  echo "|---|---:|---:|---:|---:|---:|"
  for t in "${TASKS[@]}"; do
    [ -n "$(init_for "$t")" ] && continue
    e=$("$LF" eval --adapter "adapters/$t" --data "tasks/$t.test.jsonl" --json --quiet --compute f32 --threads "$THREADS")
    v=$("$LF" eval --adapter "$OUT/$t" --data "tasks/$t.test.jsonl" --json --quiet --compute f32 --threads "$THREADS")
    python3 - "$t" "$e" "$v" <<'PY'
import json, sys
t, e, v = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
le, lv = e["mean_loss"], v["mean_loss"]
print(f"| {t} | {le:.3f} | {lv:.3f} | {100 * (lv - le) / le:+.0f}% | {e['mean_accuracy']:.2f} | {v['mean_accuracy']:.2f} |")
PY
  done
} | tee "$OUT/test.md"
echo "wrote $OUT/test.md"
