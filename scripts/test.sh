#!/usr/bin/env bash
# Install (scripts/install.sh test) and run the whole test suite. The README's second command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
PY=.venv/bin/python
[[ -n "${VIRTUAL_ENV:-}" ]] && PY="$VIRTUAL_ENV/bin/python"
# Ray must never attach to a cluster it happens to find on the machine.
unset RAY_ADDRESS
exec "$PY" -m pytest -q -p no:cacheprovider --timeout=900 "$@"
