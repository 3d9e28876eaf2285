#!/usr/bin/env bash
# The Python package's tests: builds the wheel with maturin (PARE_WHEEL_PROFILE, default dev,
# which reuses the dependency tree `cargo test` compiled), installs it into the test
# environment of scripts/pyenv.sh as a user would (pip install of the wheel), and runs pytest
# on python/tests against it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bash scripts/pyenv.sh)
bin=$(dirname "$python")
profile=${PARE_WHEEL_PROFILE:-dev}
rm -rf target/wheels
"$bin/maturin" build --profile "$profile" --interpreter "$python" -o target/wheels >&2
"$bin/pip" install --quiet --force-reinstall --no-deps --disable-pip-version-check target/wheels/pare-*.whl
# From the tests' folder, so `import pare` is the installed wheel, not python/pare.
cd python/tests
exec "$python" -m pytest -q "$@"
