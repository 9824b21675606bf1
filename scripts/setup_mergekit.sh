#!/usr/bin/env bash
# mergekit (peer for `lorafuse-bench vectors`) in its own venv: its dependency pins differ from
# the /root/peers venv used for PEFT fixtures. Only benchmarks need it.
set -euo pipefail
VENV="${MERGEKIT_VENV:-/root/peers-mk}"
if [ ! -x "$VENV/bin/mergekit-yaml" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install mergekit
fi
"$VENV/bin/python" -c "import mergekit, importlib.metadata as m; print('mergekit', m.version('mergekit'))"
