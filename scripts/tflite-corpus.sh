#!/usr/bin/env bash
# Builds (once) the Keras TFLite corpus into OUT (default target/tflite-corpus) with TensorFlow's
# converter, in its own virtual environment (the exact package set that made fixtures/, pinned in
# fixtures/requirements.txt). Idempotent, safe to call concurrently. Prints OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$PWD/target/tflite-corpus}
venv=${PARE_TFENV:-$PWD/target/tfenv}
mkdir -p "$(dirname "$out")" "$(dirname "$venv")"
exec 9>"$out.lock"
flock 9
stamp="$out/.built-$(cat scripts/keras_corpus.py fixtures/requirements.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import tensorflow" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r fixtures/requirements.txt >&2
  fi
  rm -rf "$out"
  "$venv/bin/python" scripts/keras_corpus.py "$out" >&2
  touch "$stamp"
fi
echo "$out"
