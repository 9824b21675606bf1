#!/usr/bin/env bash
# The README's main job ends here: `lorafuse report` on the shipped task suite with one trained
# adapter per task. The settings aim at about 20 minutes on 2 otherwise idle cores (estimate from
# timings on a shared machine: ~6 min of evaluation for 21 rows × 140 held-out examples, ~3 min of
# static fusion, ~4 min of aTLAS/cat-learned fits, ~6 min of LoraHub, whose every evaluation scores
# all shots: 224 sequences at 16 shots per task). A rerun reuses $OUT/cache and only computes what
# changed; the page lists each row's fusion and evaluation seconds.
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

# 10 held-out examples per task (140 in all) per row; learned rows fit on 16 shots per task
# (first lines of NAME.train.jsonl, never the test files) for 10 steps (LoraHub: 10 loss
# evaluations), plus the shots curve's refits at 1 and 4.
$LF report --adapters "$ADAPTERS" --test tasks --shots tasks \
  --test-per-task 10 --shots-per-task 16 --shots-curve 1,4,16 --steps 10 \
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
