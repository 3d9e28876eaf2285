#!/usr/bin/env bash
# Builds (once) the Keras TFLite corpus into OUT (default target/tflite-corpus) with TensorFlow's
# converter, in its own virtual environment (the exact package set that made fixtures/, pinned in
# fixtures/requirements.txt). Idempotent, safe to call concurrently. Prints OUT.
#
# PARE_CORPUS_FAMILIES (space-separated Keras application names) picks the families. The default
# leaves out NASNetMobile: its three conversions take about 6.5 of the corpus's 17 minutes on 2
# cores, and every lowering it needs (omitted biases, int8 emulation) is also exercised by the
# other five. PARE_CORPUS_FAMILIES="MobileNetV2 MobileNetV3Small EfficientNetB0 DenseNet121
# NASNetMobile ResNet50V2" builds all six (into a separate OUT, or OUT is rebuilt).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$PWD/target/tflite-corpus}
venv=${PARE_TFENV:-$PWD/target/tfenv}
mkdir -p "$(dirname "$out")" "$(dirname "$venv")"
exec 9>"$out.lock"
flock 9
families=${PARE_CORPUS_FAMILIES:-MobileNetV2 MobileNetV3Small EfficientNetB0 DenseNet121 ResNet50V2}
stamp="$out/.built-$( (cat scripts/keras_corpus.py fixtures/requirements.txt; echo "$families") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import tensorflow" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check -r fixtures/requirements.txt >&2
  fi
  rm -rf "$out"
  # shellcheck disable=SC2086 # one argument per family
  "$venv/bin/python" scripts/keras_corpus.py "$out" $families >&2
  touch "$stamp"
fi
echo "$out"
