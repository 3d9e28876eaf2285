#!/usr/bin/env bash
# The performance benchmarks in one command (not run by CI):
#
#   bash scripts/bench.sh
#
# Creates (once) target/bench-venv with onnx, numpy and onnxsim 0.8.1 (the Python baselines),
# then runs, with a release build:
#   cargo bench --bench prune       cp / convert / prune / Python / onnxsim on ResNet-50 (ONNX,
#                                   TFLite) and a 2.7 GB external-data model (PARE_BENCH_LARGE=1)
#   cargo bench --bench structural  structural pruning of ResNet-50, tract latency before/after
# Needs about 12 GB of free disk beside target/ and 16 GB of RAM (the Python script holds
# several copies of the 2.7 GB model). Set PARE_BENCH_LARGE=0 to skip that model.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$PWD/target/bench-venv
packages=(onnxsim==0.8.1 onnx==1.23.2 numpy==2.4.6)
stamp="$venv/.installed-$(printf '%s\n' "${packages[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}" >&2
  touch "$stamp"
fi
export PARE_BENCH_PYTHON="$venv/bin/python"
export PARE_BENCH_LARGE="${PARE_BENCH_LARGE:-1}"
cargo bench --bench prune
cargo bench --bench structural
