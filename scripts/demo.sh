#!/usr/bin/env bash
# The README's main job after set-up and the release build, in a few minutes: inspect three of the
# task suite's own adapters (adapters/, trained by lorafuse: `make adapters`), fuse them with
# static methods and one learned method (aTLAS on 16 shots per task), route between them (a
# per-request classifier and Arrow's training-free token gates), score every fusion and router on
# the tasks' held-out examples with the embedded SmolLM2-135M-Instruct, export one to llama.cpp and
# mlx-lm, generate with it, and end with a small report page on those three tasks. The full suite
# report (every method on 14 tasks, about an hour) is `make report` (scripts/report.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
LF=.build/release/lorafuse
OUT=out/demo
rm -rf "$OUT"; mkdir -p "$OUT/eval"
TASKS=(add_2digit date_eu uppercase)
for t in "${TASKS[@]}"; do head -n 10 "tasks/$t.test.jsonl" > "$OUT/eval/$t.test.jsonl"; done
DATA=(); ADS=(); for t in "${TASKS[@]}"; do DATA+=("$OUT/eval/$t.test.jsonl"); ADS+=("adapters/$t"); done

echo "== lorafuse inspect: three suite adapters (rank 8, all seven projections, bf16)"
$LF inspect "${ADS[@]}"

echo; echo "== the base model on 10 held-out examples of each task"
$LF eval --data "${DATA[@]}"

for m in linear cat svd ties knots; do
  echo; echo "== lorafuse merge --method $m, then eval"
  args=()
  case $m in
    svd|knots) args=(--rank 16) ;;
    ties) args=(--rank 16 --density 0.5) ;;
  esac
  $LF merge "${ADS[@]}" --method "$m" "${args[@]}" --seed 0 -o "$OUT/$m" --quiet
  $LF eval --adapter "$OUT/$m" --data "${DATA[@]}" --quiet
done

echo; echo "== lorafuse fuse --method atlas: coefficients learned from 16 shots per task (training split), then eval"
SHOTS=(); for t in "${TASKS[@]}"; do SHOTS+=("tasks/$t.train.jsonl"); done
$LF fuse --method atlas "${ADS[@]}" --shots "${SHOTS[@]}" --shots-per-task 16 --steps 8 --seed 0 -o "$OUT/atlas" --quiet
$LF eval --adapter "$OUT/atlas" --data "${DATA[@]}" --quiet

echo; echo "== lorafuse route: keep the three adapters and route between them instead of fusing"
echo "   sequence: one adapter per prompt, chosen by a classifier fitted on the 16 shots per task"
$LF route --method sequence "${ADS[@]}" --shots "${SHOTS[@]}" --shots-per-task 16 -o "$OUT/routed-sequence" --quiet
$LF eval --adapter "$OUT/routed-sequence" --data "${DATA[@]}" --quiet
echo "   arrow: per-token top-2 gates from each adapter's top singular vector (training-free)"
$LF route --method arrow "${ADS[@]}" -o "$OUT/routed-arrow" --quiet
$LF eval --adapter "$OUT/routed-arrow" --data "${DATA[@]}" --quiet

echo; echo "== lorafuse convert: the svd fusion to llama.cpp's GGUF LoRA and to mlx-lm"
M="${LORAFUSE_HOME:-$HOME/.cache/lorafuse}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
$LF convert "$OUT/svd" --format gguf --base "$M" -o "$OUT/svd.gguf"
$LF convert "$OUT/svd.gguf" --format mlx --base "$M" -o "$OUT/svd-mlx"

echo; echo "== lorafuse generate with the svd fusion"
$LF generate --adapter "$OUT/svd" --prompt "Convert the date 2021-03-07 to the format DD/MM/YYYY. Reply with the date only." --max-tokens 16

echo; echo "== lorafuse report: the three tasks, base, experts, static and one learned fusion (make report: the whole suite)"
$LF report --adapters adapters --test tasks --shots tasks --tasks "$(IFS=,; echo "${TASKS[*]}")" \
  --methods base,experts,linear,ties,knots,atlas --test-per-task 5 --shots-per-task 16 --steps 8 \
  --no-shots-curve --no-icm -o "$OUT/report" --quiet
echo "report: $OUT/report/index.html"
