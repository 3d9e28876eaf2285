#!/usr/bin/env bash
# The whole test suite (the README's test command; .ci/run calls it): the Rust tests, then the
# Python package's tests against its installed wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test
bash scripts/python-tests.sh
