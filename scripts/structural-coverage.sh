#!/usr/bin/env bash
# Structural (channel) pruning coverage of `pare prune --channels` and onnxsim's
# apply_structured_pruning on torchvision network families (see
# scripts/structural_coverage.py for exactly what is measured).
# Creates (once) the virtual environment target/coverage-venv with the pinned packages
# below (Python 3.11; torch from PyPI, which brings its CUDA wheels too: about 6 GB,
# a few minutes), then runs the script with it, passing the arguments through.
# Needs a pare binary: $PARE, else target/release/pare, else target/debug/pare.
# Writes target/structural-coverage.md. Not run by CI.
#
#   bash scripts/structural-coverage.sh [--models resnet18,vgg11] [--ratio 0.3] [--pare PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$PWD/target/coverage-venv
packages=(torch==2.15.0 torchvision==0.29.2 onnx==1.23.2 onnxruntime==1.32.0 onnxsim==0.8.1
  numpy==2.4.6)
stamp="$venv/.installed-$(printf '%s\n' "${packages[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python=${PYTHON:-}
  if [ -z "$python" ]; then
    for candidate in python3.11 python3; do
      if command -v "$candidate" >/dev/null &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        python=$candidate
        break
      fi
    done
  fi
  if [ -z "$python" ]; then
    echo "structural-coverage: needs Python 3.11 (python3.11 on PATH, or PYTHON=/path)" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9
  if [ ! -f "$stamp" ]; then
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}" >&2
    touch "$stamp"
  fi
  exec 9>&-
fi
exec "$venv/bin/python" scripts/structural_coverage.py "$@"
