#!/usr/bin/env bash
# The README's main job ends here: `lorafuse report` on the shipped task suite with one trained
# adapter per task. A rerun reuses $OUT/cache and only computes what changed; the page lists each
# row's fusion and evaluation seconds.
#
# Time, measured on the project's 2-core machine with nothing else running (2026-11-29): about 53
# minutes from an empty cache — 31 for the eight ICM-Fusion rows (five generators of ~3 min, each
# fusion 1–6 min; OPENBLAS_CORETYPE unset), and 22 for the rest: static fusion of the 14 rank-8 adapters ~3.5 min (DELLA 90 s,
# Breadcrumbs 42 s, TIES 29 s), evaluation ~7 s per row over 8 examples × 14 tasks, aTLAS and
# cat-learned ~33 s per fit, LoraHub ~520 s for its main fit (40 evaluations over 224 shots) and
# less for the shots curve's 1- and 4-shot fits.
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
# (first lines of NAME.train.jsonl, never the test files) for 8 steps (LoraHub: 40 loss
# evaluations, a few CMA-ES generations), plus the shots curve's refits at 1 and 4.
# ICM-Fusion's VAE also learns from the converged tail of each adapter's training (20
# checkpoints per task, scripts/train_tails.sh, part of `make adapters`; too big to commit:
# 4.9 MB each). Made here when missing for the suite's adapters (about 5 minutes).
TRAJ=()
if [ ! -d out/trajectories ] && [ "$ADAPTERS" = adapters ]; then
  LORAFUSE="$LF" bash scripts/train_tails.sh
fi
if [ -d out/trajectories ]; then
  TRAJ=(--trajectories out/trajectories)
else
  echo "report: no out/trajectories (make adapters writes them): ICM-Fusion's VAE sees the final adapters only" >&2
fi

$LF report --adapters "$ADAPTERS" --test tasks --shots tasks \
  --test-per-task 8 --shots-per-task 16 --shots-curve 1,4,16 --steps 8 --evaluations 40 \
  "${TRAJ[@]}" -o "$OUT" "$@"

# A screenshot of the page for docs/, when a headless Chromium is installed
# (Debian: apt-get install -y chromium).
if command -v chromium >/dev/null 2>&1; then
  mkdir -p docs
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,2400 \
    --screenshot=docs/report-screenshot.png "file://$(pwd)/$OUT/index.html" >/dev/null 2>&1 || true
  echo "screenshot: docs/report-screenshot.png"
fi
echo "report: $OUT/index.html ($OUT/report.md, $OUT/results.json)"
