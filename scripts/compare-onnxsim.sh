#!/usr/bin/env bash
# Compares `pare prune` with onnxsim's magnitude pruning (see scripts/compare_onnxsim.py).
# Creates (once) the virtual environment target/onnxsim-venv with the pinned packages below,
# then runs the comparison with it. Needs target/debug/pare (or PARE=/path/to/pare).
# Writes target/onnxsim-compare.md. Not run by CI.
#
#   bash scripts/compare-onnxsim.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$PWD/target/onnxsim-venv
packages=(onnxsim==0.8.1 onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6)
stamp="$venv/.installed-$(printf '%s\n' "${packages[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}" >&2
  touch "$stamp"
fi
exec "$venv/bin/python" scripts/compare_onnxsim.py "$@"
