#!/usr/bin/env bash
# llama.cpp's own server (llama-server) as the serving peer (issue 15, `lorafuse-bench serve`),
# built offline from the llama.cpp tree that the llama-cpp-python 0.3.36 sdist vendors under
# vendor/llama.cpp: the same llama.cpp as the engine peer of scripts/setup_llamacpp.sh. The
# sdist comes from PyPI through pip (the one download), cmake and ninja from PyPI into a small
# build venv; nothing is installed system-wide and nothing goes into the repository.
#
#   scripts/setup_llama_server.sh      -> $LORAFUSE_CACHE/bin/llama-server (~15-25 min on 2 cores)
#
# Idempotent: an existing $LORAFUSE_CACHE/bin/llama-server that runs is left alone. The build is
# niced and runs 2 compile jobs. GGML_NATIVE=ON: compiled for this CPU, as llama.cpp's own builds
# are; CURL/OpenSSL off (only needed to download models); no web UI.
set -euo pipefail

VERSION="0.3.36"
CACHE="${LORAFUSE_CACHE:-${LORAFUSE_HOME:-$HOME/.cache/lorafuse}}"
SDISTS="$CACHE/sdists"
TOOLS="$CACHE/venvs/buildtools"
SRC="$CACHE/build/llama_cpp_python-$VERSION"
BIN="$CACHE/bin/llama-server"
LOG="$CACHE/build/llama-server-build.log"

log() { printf '[setup_llama_server] %s\n' "$*" >&2; }
start=$(date +%s)

if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
  log "$BIN exists; skipping the build"
  "$BIN" --version 2>&1 | head -n 2 >&2
  exit 0
fi

mkdir -p "$SDISTS" "$CACHE/build" "$CACHE/bin" "$CACHE/venvs"
if [ ! -x "$TOOLS/bin/cmake" ] || [ ! -x "$TOOLS/bin/ninja" ]; then
  log "creating $TOOLS with cmake and ninja from PyPI"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install --quiet --disable-pip-version-check cmake ninja
fi
sdist="$SDISTS/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
  log "downloading the llama-cpp-python $VERSION sdist from PyPI"
  "$TOOLS/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --no-binary llama-cpp-python -d "$SDISTS" "llama-cpp-python==$VERSION"
fi
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
  log "unpacking $sdist"
  tar xzf "$sdist" -C "$CACHE/build"
fi

export PATH="$TOOLS/bin:$PATH"
cd "$SRC/vendor/llama.cpp"
log "configuring and building llama-server (nice 10, 2 jobs); log: $LOG"
{
  nice -n 10 cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF &&
  nice -n 10 cmake --build build --target llama-server -j 2
} >"$LOG" 2>&1 || { log "build failed; last lines of $LOG:"; tail -n 40 "$LOG" >&2; exit 1; }

# The binary links llama.cpp's shared libraries by rpath inside the build tree: link, not copy.
ln -sf "$SRC/vendor/llama.cpp/build/bin/llama-server" "$BIN"
"$BIN" --version 2>&1 | head -n 2 >&2
log "built in $(( $(date +%s) - start )) s: $BIN"
