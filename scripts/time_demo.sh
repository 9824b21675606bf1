#!/usr/bin/env bash
# Times `make demo` as a new user meets it: a fresh clone of this repository (no .build, no out/)
# and an empty lorafuse cache (LORAFUSE_HOME in a new temp folder, so setup downloads the model
# from PyPI again). apt packages are what the machine has. Writes a results file with the date,
# machine, load, commit, OpenBLAS kernel setting and the wall time.
#   scripts/time_demo.sh [RESULTS]   (default Benchmarks/results/demo-time.md)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
out="${1:-$repo/Benchmarks/results/demo-time.md}"
work="$(mktemp -d /tmp/lorafuse-demo-time.XXXXXX)"
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
commit="$(git -C "$work/clone" rev-parse --short HEAD)"
export LORAFUSE_HOME="$work/home"
export PATH="/opt/swift/usr/bin:$PATH"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s)
( cd "$work/clone" && make demo ) > "$work/demo.log" 2>&1 || { tail -40 "$work/demo.log"; echo "time_demo: make demo failed" >&2; exit 1; }
end=$(date +%s)
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
secs=$((end - start))
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
{
  echo "# make demo, fresh clone, empty cache"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- commit: $commit"
  echo "- machine: $cpu, $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "- load average (1/5/15 min) before: $load_before, after: $load_after"
  echo "- OPENBLAS_CORETYPE: ${OPENBLAS_CORETYPE:-unset}"
  echo "- LORAFUSE_HOME: an empty temp folder (the model downloaded from PyPI during the run)"
  echo "- not cleared: pip's own download cache and SwiftPM's package cache (the build itself starts from no .build)"
  echo "- wall time: **${secs} s** ($((secs / 60)) min $((secs % 60)) s), target ≤ 600 s"
  echo
  echo "Last lines of the demo's output:"
  echo
  echo '```'
  tail -15 "$work/demo.log"
  echo '```'
} > "$out"
echo "time_demo: ${secs} s; wrote $out"
