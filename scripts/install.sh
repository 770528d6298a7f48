#!/usr/bin/env bash
# Set up mldebug_ray in ./.venv (or the active virtualenv) in one go.
#
# torch: an existing torch is kept (a GPU box's CUDA build stays). Where none is
# importable, the CPU build torch==2.13.0 is installed first, so that the package's
# plain `torch>=2.1` requirement is already met and pip never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  PY="$VIRTUAL_ENV/bin/python"
else
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  PY=.venv/bin/python
fi

EXTRAS="${1:-}"   # "test" adds the test tools
quiet=(-q --disable-pip-version-check)

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[install] torch not found: installing the CPU build torch==2.13.0" >&2
  "$PY" -m pip install "${quiet[@]}" "torch==2.13.0"
fi

target="."
[[ -n "$EXTRAS" ]] && target=".[${EXTRAS}]"
"$PY" -m pip install "${quiet[@]}" -e "$target"
echo "[install] ready: $PY" >&2
