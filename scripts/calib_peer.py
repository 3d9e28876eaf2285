#!/usr/bin/env python3
"""Peer comparison: calibration-based pruning with the PyPI package onnxsim 0.8.1.

What it measures
----------------
For each fixture model (fixtures/mlp.onnx, cnn.onnx, mobilenet.onnx) and each
requested sparsity (0.5, 0.75, 0.875) this runs every pruning method onnxsim
0.8.1 offers that applies to plain MatMul/Gemm/Conv weights, all fed the SAME
calibration data (fixtures/data/calib_x_flat.npy for mlp, calib_x_nchw.npy for
cnn/mobilenet; 128 training samples, passed as ONE batch {input_name: array}):

  magnitude            onnxsim.apply_magnitude_pruning(m, sparsity=s)              (data-free baseline, per row/filter)
  magnitude-global     onnxsim.apply_magnitude_pruning(m, sparsity=s, global_sparsity=True)
  wanda                onnxsim.apply_wanda_pruning(m, calibration_data=cal, sparsity=s)
  wanda-global         onnxsim.apply_wanda_pruning(m, calibration_data=cal, sparsity=s, global_sparsity=True)
  sparsegpt            onnxsim.apply_sparsegpt_pruning(m, calibration_data=cal, sparsity=s)
  <X>+finetune         onnxsim.apply_pruning_finetune(orig, pruned_X, calibration_data=cal)
                       (onnxsim's least-squares / ridge refit of MatMul/Gemm weights,
                       applied after magnitude, wanda and sparsegpt)
  struct-magnitude     onnxsim.apply_structured_pruning(m, sparsity=s)             (channel removal, data-free)
  struct-wanda         onnxsim.apply_structured_wanda_pruning(m, calibration_data=cal, sparsity=s)
  struct-wanda+finetune  the above followed by apply_pruning_finetune (its documented use case)

Each result is evaluated with onnxruntime (CPUExecutionProvider) on the 360
held-out samples in fixtures/data/test_<model>_onnx.npz: accuracy = argmax of
the single model output vs `labels`.

Columns of the Markdown table:
  * sparsity reached: over the Conv/Gemm/MatMul weight initializers (input 1)
    whose contents changed vs the original model:
    1 - nonzeros_after / elements_before.  For the unstructured methods the
    shape is unchanged, so this is simply the fraction of zeros.  For the
    structured (struct-*) methods the shapes shrink, so this is the fraction
    of those weights' parameters removed (plus any zeros) -- marked with "(s)".
  * layers: changed weights / all Conv+Gemm+MatMul weights in the model.
  * drop: original accuracy minus pruned accuracy, in percentage points.
  * seconds: wall time of the onnxsim call(s) only (not evaluation).
  * note: for "+finetune" rows, how many weights the refit changed relative
    to the pruned model it was given; "no-op" when a pass changed nothing.
If a method raises, the row holds the one-line error text instead.

Run (from the repository root):

    target/onnxsim-venv/bin/python scripts/calib_peer.py [--out FILE]

--out FILE also writes the Markdown table to FILE.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings

import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnxruntime as ort

warnings.filterwarnings("ignore")
ort.set_default_logger_severity(3)  # onnxsim leaves the old, now-unused weights behind; silence ORT about it

import onnxsim  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "fixtures")
DATA = os.path.join(FIX, "data")

MODELS = [
    ("mlp", "calib_x_flat.npy"),
    ("cnn", "calib_x_nchw.npy"),
    ("mobilenet", "calib_x_nchw.npy"),
]
SPARSITIES = [0.5, 0.75, 0.875]
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


# ---------------------------------------------------------------- helpers
def weight_inputs(model: onnx.ModelProto) -> dict[str, str]:
    """{node output[0]: weight initializer name} for every Conv/Gemm/MatMul
    node whose input 1 is an initializer.  Keyed by node output because
    onnxsim's magnitude pass writes pruned weights under NEW initializer
    names (e.g. `_v_18`) and leaves the old ones dangling."""
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in inits:
            out[n.output[0]] = n.input[1]
    return out


def weight_names(model: onnx.ModelProto) -> list[str]:
    return list(dict.fromkeys(weight_inputs(model).values()))


def init_map(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: nh.to_array(i) for i in model.graph.initializer}


def changed_weights(a: onnx.ModelProto, b: onnx.ModelProto) -> int:
    """Number of Conv/Gemm/MatMul weights whose values differ between a and b."""
    ia, ib = init_map(a), init_map(b)
    wa, wb = weight_inputs(a), weight_inputs(b)
    n = 0
    for out, name in wa.items():
        if out not in wb:
            n += 1
            continue
        x, y = ia[name], ib[wb[out]]
        if x.shape != y.shape or not np.array_equal(x, y):
            n += 1
    return n


def sparsity_reached(orig: onnx.ModelProto, pruned: onnx.ModelProto):
    """Returns (sparsity over changed weights, n_changed, n_total, structured?)."""
    o = init_map(orig)
    p = init_map(pruned)
    wo_map, wp_map = weight_inputs(orig), weight_inputs(pruned)
    changed, before, nnz, structured = 0, 0, 0, False
    for out, name in wo_map.items():
        wo = o[name]
        if out not in wp_map:
            continue  # node removed/renamed; not counted
        wp = p[wp_map[out]]
        if wp.shape == wo.shape and np.array_equal(wp, wo):
            continue
        if wp.shape != wo.shape:
            structured = True
        changed += 1
        before += wo.size
        nnz += int(np.count_nonzero(wp))
    if changed == 0:
        return 0.0, 0, len(wo_map), structured
    return 1.0 - nnz / before, changed, len(wo_map), structured


def accuracy(model: onnx.ModelProto, x: np.ndarray, labels: np.ndarray) -> float:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    inp = sess.get_inputs()[0].name
    outs = sess.run(None, {inp: x})
    assert len(outs) == 1, f"expected a single output, got {len(outs)}"
    pred = np.argmax(outs[0].reshape(len(x), -1), axis=1)
    return float(np.mean(pred == labels)) * 100.0


def one_line(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".replace("\n", " ").replace("|", "/")
    return msg[:200]


def methods(orig: onnx.ModelProto, cal, s: float):
    """(name, callable returning the pruned ModelProto) in table order.

    Every call gets a fresh copy of the original so no in-place effect leaks."""

    def cp():
        m = onnx.ModelProto()
        m.CopyFrom(orig)
        return m

    def ft(pruned):
        out = onnxsim.apply_pruning_finetune(cp(), pruned, calibration_data=cal)
        k = changed_weights(pruned, out)
        return out, f"refit changed {k} weight(s) vs its input" + (
            " (no-op)" if k == 0 else "")

    mag = lambda: onnxsim.apply_magnitude_pruning(cp(), sparsity=s)  # noqa: E731
    wan = lambda: onnxsim.apply_wanda_pruning(  # noqa: E731
        cp(), calibration_data=cal, sparsity=s
    )
    sgpt = lambda: onnxsim.apply_sparsegpt_pruning(  # noqa: E731
        cp(), calibration_data=cal, sparsity=s
    )
    swan = lambda: onnxsim.apply_structured_wanda_pruning(  # noqa: E731
        cp(), calibration_data=cal, sparsity=s
    )
    return [
        ("magnitude", mag),
        (
            "magnitude-global",
            lambda: onnxsim.apply_magnitude_pruning(
                cp(), sparsity=s, global_sparsity=True
            ),
        ),
        ("wanda", wan),
        (
            "wanda-global",
            lambda: onnxsim.apply_wanda_pruning(
                cp(), calibration_data=cal, sparsity=s, global_sparsity=True
            ),
        ),
        ("sparsegpt", sgpt),
        ("magnitude+finetune", lambda: ft(mag())),
        ("wanda+finetune", lambda: ft(wan())),
        ("sparsegpt+finetune", lambda: ft(sgpt())),
        ("struct-magnitude", lambda: onnxsim.apply_structured_pruning(cp(), sparsity=s)),
        ("struct-wanda", swan),
        ("struct-wanda+finetune", lambda: ft(swan())),
    ]


# ---------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="also write the Markdown table to this file")
    args = ap.parse_args()

    header = (
        "| model | method | sparsity requested | sparsity reached | layers changed "
        "| accuracy % | drop (pts) | seconds | note |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---|"
    )
    rows = []
    originals = []
    t_all = time.perf_counter()
    for model_name, calib_file in MODELS:
        orig = onnx.load(os.path.join(FIX, f"{model_name}.onnx"))
        in_name = orig.graph.input[0].name
        calib = np.load(os.path.join(DATA, calib_file)).astype(np.float32)
        cal = [{in_name: calib}]  # one batch of 128 calibration samples
        test = np.load(os.path.join(DATA, f"test_{model_name}_onnx.npz"))
        x_test, y_test = test[in_name].astype(np.float32), test["labels"]
        base = accuracy(orig, x_test, y_test)
        originals.append((model_name, in_name, base, len(weight_names(orig))))
        rows.append(
            f"| {model_name} | original | 0 | 0.0% | 0/{len(weight_names(orig))} "
            f"| {base:.2f} | 0.00 | - | |"
        )
        print(f"[{model_name}] input={in_name!r} original accuracy {base:.2f}%",
              file=sys.stderr)
        for s in SPARSITIES:
            for meth, fn in methods(orig, cal, s):
                t0 = time.perf_counter()
                try:
                    pruned = fn()
                    dt = time.perf_counter() - t0
                    note = ""
                    if isinstance(pruned, tuple):
                        pruned, note = pruned
                except Exception as e:  # record, don't crash
                    dt = time.perf_counter() - t0
                    rows.append(
                        f"| {model_name} | {meth} | {s} | ERROR | | | | {dt:.2f} "
                        f"| {one_line(e)} |"
                    )
                    print(f"  {meth} s={s}: ERROR {one_line(e)}", file=sys.stderr)
                    if os.environ.get("CALIB_PEER_DEBUG"):
                        traceback.print_exc()
                    continue
                try:
                    sp, nch, ntot, structured = sparsity_reached(orig, pruned)
                    acc = accuracy(pruned, x_test, y_test)
                except Exception as e:
                    rows.append(
                        f"| {model_name} | {meth} | {s} | EVAL ERROR | | | | {dt:.2f} "
                        f"| {one_line(e)} |"
                    )
                    continue
                tag = " (s)" if structured else ""
                if nch == 0:
                    note = "; ".join(x for x in ("pass declined every layer (no-op)", note) if x)
                rows.append(
                    f"| {model_name} | {meth} | {s} | {sp * 100:.1f}%{tag} "
                    f"| {nch}/{ntot} | {acc:.2f} | {base - acc:.2f} | {dt:.2f} | {note} |"
                )
                print(f"  {meth} s={s}: sparsity {sp*100:.1f}%{tag} "
                      f"acc {acc:.2f} ({dt:.2f}s)", file=sys.stderr)
    total = time.perf_counter() - t_all

    lines = [
        f"onnxsim {onnxsim.__version__ if hasattr(onnxsim, '__version__') else '?'}, "
        f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}",
        "",
        "Original accuracy (360 test samples):",
        "",
    ]
    for model_name, in_name, base, nw in originals:
        lines.append(f"- {model_name} (input `{in_name}`, {nw} Conv/Gemm/MatMul weights): {base:.2f}%")
    lines += ["", header, *rows, "",
              "(s) = structured: weight shapes shrank; sparsity = share of the "
              "original parameters of the changed weights that are gone or zero.",
              f"Total wall time: {total:.1f} s"]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
