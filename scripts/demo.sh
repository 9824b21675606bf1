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
