#!/usr/bin/env bash
# Behaviour matrix: every fixture × {magnitude, LAMP, 2:4, channels, calibrated, sparse storage}
# plus ONNX external data, a sensitivity profile and every command's --help, written by one pare binary; prints one
# "sha256  case" line per written file (sorted), so two binaries can be compared byte for byte:
#
#   scripts/behaviour-matrix.sh OLD_PARE > before.txt
#   scripts/behaviour-matrix.sh NEW_PARE > after.txt
#   diff before.txt after.txt && echo identical
#
# A refactoring that claims "behaviour unchanged" must leave this output unchanged: written model
# bytes and the JSON reports (stdout of --json, sensitivity profiles) are compared.
set -euo pipefail
pare=$(realpath "${1:?usage: behaviour-matrix.sh PARE_BINARY}")
root=$(cd "$(dirname "$0")/.." && pwd)
fx="$root/fixtures"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

calib_of() { # the fixture's calibration data, from the manifest
    python3 -c "import json,sys; m=json.load(open('$fx/manifest.json'));
print([x['calib_data'] for x in m['models'] if x['file']==sys.argv[1]][0])" "$1"
}

run() { # run CASE ARGS...: pare quietly, fail loudly
    local case=$1
    shift
    if ! "$pare" "$@" --json --quiet >"$out/$case.stdout" 2>"$out/$case.stderr"; then
        echo "FAILED: $case: pare $*" >&2
        cat "$out/$case.stderr" >&2
        exit 1
    fi
}

for f in mlp.onnx cnn.onnx mobilenet.onnx mlp.tflite cnn.tflite mobilenet.tflite \
    mlp_int8.tflite cnn_int8.tflite mobilenet_int8.tflite; do
    m="$fx/$f"
    ext=${f##*.}
    base=${f%.*}
    calib="$fx/$(calib_of "$f")"
    run "$base.magnitude.$ext" prune "$m" -o "$out/$base.magnitude.$ext" --sparsity 0.5
    run "$base.lamp.$ext" prune "$m" -o "$out/$base.lamp.$ext" --sparsity 0.75 --scope lamp
    run "$base.global.$ext" prune "$m" -o "$out/$base.global.$ext" --sparsity 0.75 --scope global
    run "$base.2of4.$ext" prune "$m" -o "$out/$base.2of4.$ext" --pattern 2:4
    run "$base.block.$ext" prune "$m" -o "$out/$base.block.$ext" --sparsity 0.5 --pattern block:4x1
    run "$base.channels.$ext" prune "$m" -o "$out/$base.channels.$ext" --channels 0.3
    run "$base.sparsegpt.$ext" prune "$m" -o "$out/$base.sparsegpt.$ext" --sparsity 0.5 \
        --criterion sparsegpt --calib "$calib"
    run "$base.wanda.$ext" prune "$m" -o "$out/$base.wanda.$ext" --sparsity 0.5 \
        --criterion wanda --calib "$calib" --one-pass
    run "$base.refit.$ext" prune "$m" -o "$out/$base.refit.$ext" --channels 0.3 --calib "$calib"
    run "$base.sparse.$ext" prune "$m" -o "$out/$base.sparse.$ext" --sparsity 0.8 --storage sparse
    run "$base.dense.$ext" convert "$out/$base.sparse.$ext" -o "$out/$base.dense.$ext" --storage dense
    run "$base.sens" sensitivity "$m" --ratios 0.5,0.9 --report "$out/$base.sens.json"
    run "$base.inspect" inspect "$m"
done
for cmd in "" inspect convert prune validate sensitivity; do
    "$pare" $cmd --help >"$out/help.${cmd:-pare}.txt"
done
for base in mlp cnn mobilenet; do
    run "$base.external.onnx" convert "$fx/$base.onnx" -o "$out/$base.external.onnx" \
        --external-data "$base.external.onnx.data"
done

# Reports: the temporary directory's path is the one thing that differs between two runs of the
# same binary (reports carry no timings without --latency); it is replaced by "OUT".
python3 - "$out" <<'EOF'
import pathlib, sys
out = pathlib.Path(sys.argv[1])
for p in out.iterdir():
    if p.suffix in (".stdout", ".json") and p.stat().st_size:
        text = p.read_text().replace(str(out), "OUT")
        p.with_suffix(p.suffix + ".scrubbed").write_text(text)
EOF
cd "$out"
find . -type f ! -name '*.stderr' ! -name '*.stdout' ! -name '*.sens.json' -printf '%P\n' |
    sort | xargs sha256sum
