#!/usr/bin/env bash
# The README's main job ends here: `lorafuse report` on the shipped task suite with one trained
# adapter per task. A rerun reuses $OUT/cache and only computes what changed; the page lists each
# row's fusion and evaluation seconds.
#
# Time, from parts measured on the shared 2-core machine at load average ~8.5 (2026-11-29):
# static fusion of 14 rank-8 adapters ~570 s (DELLA 213, Breadcrumbs 114, TIES/magnitude prune
# ~80 each), evaluation ~0.3 s per example with accuracy (21 rows × 8 examples × 14 tasks ~730 s),
# aTLAS / cat-learned ~15 s per step plus two passes over all shots per fit (~600 s each method for
# the three fits), LoraHub ~0.4 s per shot per evaluation (8 evaluations × 294 shots over the three
# fits ~960 s): about 58 minutes loaded, an estimated 15–20 minutes on two idle cores.
#
#   ADAPTERS  directory of per-task adapters (default: adapters/, one sub-directory per task)
#   OUT       output directory (default: out/report)
#   Extra arguments go to `lorafuse report` (e.g. --force, --tasks a,b, --expert-matrix).
set -euo pipefail
cd "$(dirname "$0")/.."
LF=.build/release/lorafuse
ADAPTERS=${ADAPTERS:-adapters}
OUT=${OUT:-out/report}

if [ ! -d "$ADAPTERS" ]; then
  echo "report: no adapters in $ADAPTERS (train them with lorafuse train, one per task; see README)" >&2
  exit 2
fi

# 8 held-out examples per task (112 in all) per row; learned rows fit on 16 shots per task
# (first lines of NAME.train.jsonl, never the test files) for 8 steps (LoraHub: 8 loss
# evaluations), plus the shots curve's refits at 1 and 4.
$LF report --adapters "$ADAPTERS" --test tasks --shots tasks \
  --test-per-task 8 --shots-per-task 16 --shots-curve 1,4,16 --steps 8 --evaluations 40 \
  -o "$OUT" "$@"

# A screenshot of the page for docs/, when a headless Chromium is installed
# (Debian: apt-get install -y chromium).
if command -v chromium >/dev/null 2>&1; then
  mkdir -p docs
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,2400 \
    --screenshot=docs/report-screenshot.png "file://$(pwd)/$OUT/index.html" >/dev/null 2>&1 || true
  echo "screenshot: docs/report-screenshot.png"
fi
echo "report: $OUT/index.html ($OUT/report.md, $OUT/results.json)"
