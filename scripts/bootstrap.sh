#!/usr/bin/env bash
# Create (or refresh) the toolkit environment in .venv: modelrig itself, its libraries and the test tools.
# Idempotent: a second run with nothing changed installs nothing.
# Knobs: PYTHON (interpreter, default python3), MODELRIG_TORCH (torch requirement for the toolkit env,
# default torch==2.13.0, a CPU build is enough for conversions), MODELRIG_VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${MODELRIG_VENV:-.venv}
TORCH=${MODELRIG_TORCH:-torch==2.13.0}
stamp="$VENV/.modelrig-bootstrap"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16) $TORCH"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "toolkit env $VENV: unchanged"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip uv
# torch goes through pip so that pip's own configuration (find-links, mirrors) applies to it.
"$VENV/bin/python" -m pip install -q "$TORCH"
VIRTUAL_ENV="$VENV" "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" -e ".[test]"
echo "$want" > "$stamp"
echo "toolkit env $VENV: ready ($("$VENV/bin/modelrig" --version))"
