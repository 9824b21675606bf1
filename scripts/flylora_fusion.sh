#!/usr/bin/env bash
# FlyLoRA's merging claim on the suite: per-task FlyLoRA adapters (scripts/train_variant_experts.sh
# flylora, one seed so every task shares A) averaged by `merge --method linear` with weights 1/N,
# against the suite's plain LoRA experts averaged the same way (the report's `linear` row), both
# scored on every task's test split in the same run (`eval --compute f32`: answer loss, greedy
# exact-match accuracy). The table of docs/variants.md's FlyLoRA section comes from this script.
#   scripts/flylora_fusion.sh FLY_DIR [TASK...]   (default tasks: every folder in FLY_DIR)
# Environment: LORAFUSE (binary, default .build/release/lorafuse), THREADS (2), OUT (out/flylora-fusion).
set -euo pipefail
cd "$(dirname "$0")/.."
LF="${LORAFUSE:-.build/release/lorafuse}"
THREADS="${THREADS:-2}"
FLY="${1:?usage: scripts/flylora_fusion.sh FLY_DIR [TASK...]}"; shift
if [ $# -gt 0 ]; then TASKS=("$@"); else
  TASKS=(); for d in "$FLY"/*/; do TASKS+=("$(basename "$d")"); done
fi
OUT="${OUT:-out/flylora-fusion}"
mkdir -p "$OUT"
N=${#TASKS[@]}
W=$(python3 -c "print(1/$N)")
plain=(); fly=(); data=()
for t in "${TASKS[@]}"; do plain+=("adapters/$t:$W"); fly+=("$FLY/$t:$W"); data+=("tasks/$t.test.jsonl"); done
"$LF" merge "${plain[@]}" --method linear -o "$OUT/lora-linear" --force --quiet >/dev/null
"$LF" merge "${fly[@]}" --method linear -o "$OUT/flylora-linear" --force --quiet >/dev/null
for which in lora-linear flylora-linear; do
  "$LF" eval --adapter "$OUT/$which" --data "${data[@]}" --json --quiet --compute f32 --threads "$THREADS" > "$OUT/$which.json"
done
python3 - "$OUT" "${TASKS[@]}" <<'PY' | tee "$OUT/fusion.md"
import json, sys
out, tasks = sys.argv[1], sys.argv[2:]
runs = {w: json.load(open(f"{out}/{w}.json")) for w in ["lora-linear", "flylora-linear"]}
def per_task(j):
    return j["tasks"]
p, f = per_task(runs["lora-linear"]), per_task(runs["flylora-linear"])
print(f"{len(tasks)} tasks, each adapter weight 1/{len(tasks)} (`merge --method linear`)\n")
print("| task | LoRA fused loss | FlyLoRA fused loss | LoRA fused acc. | FlyLoRA fused acc. |")
print("|---|---:|---:|---:|---:|")
for t in tasks:
    print(f"| {t} | {p[t]['loss']:.3f} | {f[t]['loss']:.3f} | {p[t]['accuracy']:.2f} | {f[t]['accuracy']:.2f} |")
pl, fl = runs["lora-linear"]["mean_loss"], runs["flylora-linear"]["mean_loss"]
print(f"| **mean** | **{pl:.3f}** | **{fl:.3f}** | **{runs['lora-linear']['mean_accuracy']:.3f}** | **{runs['flylora-linear']['mean_accuracy']:.3f}** |")
PY
echo "wrote $OUT/fusion.md"
