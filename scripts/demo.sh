#!/usr/bin/env bash
# The README's main job after set-up and the release build: inspect the bundled test adapters
# and fuse them with every static method. Later issues grow this into the full suite and report.
set -euo pipefail
cd "$(dirname "$0")/.."
LF=.build/release/lorafuse
IN=Tests/LoRAFuseTests/Fixtures/peft_fusion/inputs
OUT=out/demo
rm -rf "$OUT"; mkdir -p "$OUT"

echo "== lorafuse inspect: three PEFT adapters (r=4 α=8, r=4 α=16, r=2 α=4 rsLoRA)"
$LF inspect "$IN/a" "$IN/b" "$IN/c"

for m in linear cat svd ties dare_ties magnitude_prune breadcrumbs della knots lego; do
  echo; echo "== lorafuse merge --method $m"
  args=()
  case $m in
    svd|knots|lego) args=(--rank 4) ;;
    ties|dare_ties|magnitude_prune|della) args=(--rank 4 --density 0.5) ;;
    breadcrumbs) args=(--rank 4 --density 0.4 --gamma 0.05) ;;
  esac
  $LF merge "$IN/a:1" "$IN/b:-0.5" "$IN/c:0.7" --method "$m" "${args[@]}" --seed 0 -o "$OUT/$m"
done

echo; echo "== lorafuse merge --config examples/demo-ties.yaml"
$LF merge --config examples/demo-ties.yaml --json > "$OUT/ties-from-yaml.json"
echo "summary in $OUT/ties-from-yaml.json; fused adapters in $OUT/"

echo; echo "== lorafuse convert: the svd fusion to llama.cpp's GGUF LoRA and to mlx-lm (tiny model: 4 heads, 2 kv heads)"
$LF convert "$OUT/svd" --format gguf --heads 4 --kv-heads 2 -o "$OUT/svd.gguf"
$LF convert "$OUT/svd.gguf" --format mlx --heads 4 --kv-heads 2 -o "$OUT/svd-mlx"

echo; echo "== lorafuse generate with the embedded SmolLM2-135M-Instruct"
$LF generate --prompt "Convert the date 2021-03-07 to the format DD/MM/YYYY. Reply with the date only." --max-tokens 24

echo; echo "== lorafuse eval: the base model on the first 10 test examples of two suite tasks"
mkdir -p "$OUT/eval"
for t in date_eu add_2digit; do head -n 10 "tasks/$t.test.jsonl" > "$OUT/eval/$t.test.jsonl"; done
$LF eval --data "$OUT/eval/date_eu.test.jsonl" "$OUT/eval/add_2digit.test.jsonl"

echo; echo "== lorafuse report: every method on the task suite's held-out tests (needs adapters/, one per task)"
if [ -d adapters ]; then
  bash scripts/report.sh
else
  echo "skipped: no adapters/ directory (train one adapter per task with lorafuse train; see README)"
fi
