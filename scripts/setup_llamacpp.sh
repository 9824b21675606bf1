#!/usr/bin/env bash
# llama.cpp as a peer (issue 13): llama-cpp-python 0.3.36 built FROM SOURCE with native kernels,
# plus numpy and gguf, in a venv outside the repo. Only the llama.cpp fixture script
# (scripts/make_llamacpp_fixtures.py, scripts/llamacpp_spread.py) and the benchmark peer (scripts/bench_llamacpp.py) use it;
# lorafuse and its tests never do.
#
#   scripts/setup_llamacpp.sh            venv + build (~25 min on 2 cores; seconds when
#                                        scripts/setup_llama_server.sh has built llama.cpp), then the model files
#   scripts/setup_llamacpp.sh --no-models  venv + build only
#
# Idempotent: a venv whose llama_cpp already reports 0.3.36 is left alone, and model files that
# exist are not remade. The venv is at $LORAFUSE_CACHE/venvs/llamacpp (LORAFUSE_CACHE defaults to
# $LORAFUSE_HOME, then ~/.cache/lorafuse, the cache scripts/setup.sh uses).
#
# The build is niced and runs at most 2 compile jobs: the machine has 2 cores and others build
# Swift beside it. The sdist is kept in $LORAFUSE_CACHE/sdists: it vendors the whole llama.cpp tree
# (vendor/llama.cpp), from which llama-server or llama-quantize can be built offline later.
set -euo pipefail

VERSION="0.3.36"
CACHE="${LORAFUSE_CACHE:-${LORAFUSE_HOME:-$HOME/.cache/lorafuse}}"
VENV="$CACHE/venvs/llamacpp"
SDISTS="$CACHE/sdists"
LOG="$CACHE/venvs/llamacpp-build.log"
HERE="$(cd "$(dirname "$0")" && pwd)"

log() { printf '[setup_llamacpp] %s\n' "$*" >&2; }
start=$(date +%s)

installed_version() {
  [ -x "$VENV/bin/python" ] || return 1
  "$VENV/bin/python" -c 'import llama_cpp, numpy, gguf; print(llama_cpp.__version__)' 2>/dev/null
}

# llama.cpp libraries that scripts/setup_llama_server.sh built from the same sdist (same vendored
# llama.cpp, Release, GGML_NATIVE=ON, CURL/OpenSSL off): the Python package can load them instead
# of compiling llama.cpp a second time (llama-cpp-python reads LLAMA_CPP_LIB_PATH).
SERVER_SRC="$CACHE/build/llama_cpp_python-$VERSION"
SERVER_LIBS="$SERVER_SRC/vendor/llama.cpp/build/bin"

if [ "$(installed_version || true)" = "$VERSION" ]; then
  log "llama-cpp-python $VERSION already installed in $VENV; skipping the build"
elif [ -f "$SERVER_LIBS/libllama.so" ] && [ -f "$SERVER_SRC/llama_cpp/__init__.py" ]; then
  log "reusing llama.cpp $VERSION as built by setup_llama_server.sh: $SERVER_LIBS"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # llama-cpp-python's own runtime dependencies (its pyproject), then its Python sources by path.
  "$VENV/bin/pip" install --quiet --disable-pip-version-check numpy gguf typing_extensions diskcache jinja2
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  printf '%s\n' "$SERVER_SRC" >"$site/llama_cpp_sources.pth"
  printf "import os; os.environ.setdefault('LLAMA_CPP_LIB_PATH', '%s')\n" "$SERVER_LIBS" >"$site/llama_cpp_libs.pth"
  got="$(installed_version || true)"
  [ "$got" = "$VERSION" ] || { log "linked, but llama_cpp reports '$got', not $VERSION"; exit 1; }
else
  # A venv that loaded a server build which is gone: its path files would point the package
  # built below at missing libraries.
  if [ -x "$VENV/bin/python" ]; then
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    rm -f "$site/llama_cpp_sources.pth" "$site/llama_cpp_libs.pth"
  fi
  mkdir -p "$CACHE/venvs" "$SDISTS"
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV"
    python3 -m venv "$VENV"
  fi
  log "installing numpy and gguf"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check numpy gguf
  sdist="$(ls "$SDISTS"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null | head -n 1 || true)"
  if [ -z "$sdist" ]; then
    log "downloading the llama-cpp-python $VERSION sdist from PyPI"
    "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps \
      --no-binary llama-cpp-python -d "$SDISTS" "llama-cpp-python==$VERSION"
    sdist="$(ls "$SDISTS"/llama_cpp_python-"$VERSION".tar.gz | head -n 1)"
  fi
  # GGML_NATIVE=ON: compile for this CPU (-march=native), as llama.cpp's own builds do; a prebuilt
  # wheel would be generic x86-64 and not a fair peer. CURL/OpenSSL are off: libcurl headers are
  # not installed here and llama.cpp only needs them to download models, which we never do.
  log "building llama-cpp-python $VERSION from source (nice 10, 2 jobs, ~25 min); log: $LOG"
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=2 \
    nice -n 10 "$VENV/bin/pip" install -v --disable-pip-version-check --no-cache-dir \
      --no-binary llama-cpp-python "$sdist" >"$LOG" 2>&1 \
    || { log "build failed; last lines of $LOG:"; tail -n 40 "$LOG" >&2; exit 1; }
  got="$(installed_version || true)"
  [ "$got" = "$VERSION" ] || { log "installed, but llama_cpp reports '$got', not $VERSION"; exit 1; }
  log "built in $(( $(date +%s) - start )) s"
fi

"$VENV/bin/python" - <<'PY'
import importlib.metadata as m, llama_cpp
print("llama-cpp-python", llama_cpp.__version__, "| numpy", m.version("numpy"), "| gguf", m.version("gguf"))
print("system info:", llama_cpp.llama_print_system_info().decode().strip())
PY

if [ "${1:-}" != "--no-models" ]; then
  "$HERE/setup_llamacpp_models.sh"
fi
log "done in $(( $(date +%s) - start )) s"
