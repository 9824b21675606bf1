#!/usr/bin/env bash
# Retrains the suite's task adapters (`make adapters`): one PEFT adapter per task in tasks/,
# rank 8, α 16, all seven projections, bf16, written to adapters/<task>/ with training.json and the
# loss curve; then scripts/train_tails.sh writes the converged tail of each one's training (the
# trajectories ICM-Fusion learns from) to out/trajectories/<task>/.
# Then adapters/manifest.json collects every training.json, and docs/adapters.md compares each
# adapter with the base model on its task's test split.
#   scripts/train_adapters.sh [TASK...]     (default: every task in tasks/)
# Environment: LORAFUSE (binary, default .build/release/lorafuse), THREADS (default 2), SKIP_SCORE=1
# to only train (e.g. when several invocations split the tasks between them).
set -euo pipefail
cd "$(dirname "$0")/.."
LF="${LORAFUSE:-.build/release/lorafuse}"
THREADS="${THREADS:-2}"
if [ $# -gt 0 ]; then TASKS=("$@"); else
  TASKS=(); for f in tasks/*.train.jsonl; do b=$(basename "$f"); TASKS+=("${b%%.*}"); done
fi

# shellcheck source=recipes.sh
source scripts/recipes.sh

# Warm-started tasks go after the adapters they start from.
ordered=(); late=()
for t in "${TASKS[@]}"; do if [ -n "$(init_for "$t")" ]; then late+=("$t"); else ordered+=("$t"); fi; done
TASKS=("${ordered[@]}" "${late[@]}")

for t in "${TASKS[@]}"; do
  out="adapters/$t"
  rm -rf "$out"; mkdir -p "$out"
  steps=$(steps_for "$t")
  echo "== $t: $steps steps"
  init=(); [ -n "$(init_for "$t")" ] && init=(--init-from "$(init_for "$t")")
  "$LF" train --data "tasks/$t.train.jsonl" --val "tasks/$t.val.jsonl" -o "$out" \
    --rank 8 --alpha 16 --targets all --steps "$steps" --batch 8 --lr "$(lr_for "$t")" --warmup 5 \
    --seed 1 --dtype bf16 --eval-every 50 \
    --threads "$THREADS" "${init[@]}"
done

LORAFUSE="$LF" THREADS="$THREADS" bash scripts/train_tails.sh "${TASKS[@]}"

# adapters/manifest.json (every training.json plus the measured test results) and the table.
[ "${SKIP_SCORE:-0}" = 1 ] && exit 0
mkdir -p out docs
"$LF" tasks experts --tasks tasks --adapters adapters --split test --threads "$THREADS" \
  --manifest adapters/manifest.json -o out/experts.md --force
{
  echo "# The suite's task adapters against the base model"
  echo
  echo "Each task in \`tasks/\` has an adapter in \`adapters/<task>/\`, trained by \`lorafuse train\` with"
  echo "\`scripts/train_adapters.sh\` (\`make adapters\`): rank 8, α 16, all seven projections (q, k, v, o,"
  echo "gate, up, down), batches of 8, AdamW at 1e-3 with 5 warm-up steps then cosine, seed 1, saved in"
  echo "bf16; 100 steps for add_2digit, capital_facts, count_vowels, date_eu and date_us, 200 for"
  echo "reverse_word, 60 for the others; the long-tailed \`reverse_upper\` (8 training examples) starts"
  echo "from the reverse_word adapter and takes 24 steps at 3e-4. How each one was made (options, losses, time) is in its \`training.json\`,"
  echo "collected in \`adapters/manifest.json\` with the results below."
  echo
  echo "Below: the base model SmolLM2-135M-Instruct (GGUF Q4_1, dequantized) and each task's own adapter on"
  echo "that task's 50 held-out test examples; loss is the token-weighted cross-entropy of the answer"
  echo "tokens, accuracy the greedy exact match (\`lorafuse eval\`). Measured $(date -u +%Y-%m-%d) by"
  echo "\`lorafuse tasks experts --split test\`."
  echo
  cat out/experts.md
} > docs/adapters.md
echo "wrote docs/adapters.md and adapters/manifest.json"
