#!/usr/bin/env python3
"""Compare `pare prune` with onnxsim's magnitude pruning on the ONNX fixtures.

What it compares. For every model x sparsity (0.5, 0.75, 0.9) it runs
  * onnxsim 0.8.1: `onnxsim.apply_magnitude_pruning(path, sparsity=S)` with its
    defaults (n=None, m=None, global_sparsity=False), i.e. per-layer unstructured
    magnitude pruning (onnxsim applies the fraction per output row / Conv filter),
    then `onnx.save` of the result. It runs in a child process so a crash in its
    C++ extension cannot end the run; its time is load + prune + save inside that
    process (interpreter start and `import onnxsim` excluded);
  * `pare prune MODEL -o OUT --sparsity S --json --no-verify --force` (default
    layer scope); its time is the whole process's wall time;
and measures each output itself:
  * coverage: the weight tensors whose zero fraction rose. Tensors are matched by
    the node input that consumes them (node found by its output names), not by
    tensor name, because onnxsim writes pruned copies under new names. Every graph
    is walked, including If/Loop/Scan bodies, and Constant nodes count as tensors.
    A tensor read through DequantizeLinear (or the weight of QLinearConv,
    QLinearMatMul, ConvInteger, MatMulInteger) counts as zero where it equals its
    zero point, since that is what dequantizes to 0;
  * the parameters in those tensors and their sparsity after pruning;
  * whether the output loads and runs in onnxruntime (CPUExecutionProvider), and
    top-1 accuracy on fixtures/data (argmax of output 0 vs test_y.npy) for the
    classifiers. cond.onnx is no classifier: it is only run, with wide=True and
    wide=False.
A tool that fails or crashes gets "error: ..." in its row; the run goes on.

Run it (creates target/onnxsim-venv with the pinned packages on first use):

    bash scripts/compare-onnxsim.sh

It prints a markdown table and writes it, with per-case details, to
target/onnxsim-compare.md; pruned models go to target/onnxsim-compare/.
Not run by CI.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
DATA = FIXTURES / "data"
OUT_DIR = ROOT / "target" / "onnxsim-compare"
REPORT = ROOT / "target" / "onnxsim-compare.md"
PARE = Path(os.environ.get("PARE", ROOT / "target" / "debug" / "pare"))
SPARSITIES = (0.5, 0.75, 0.9)
TIMEOUT = 600  # seconds, per tool call and per onnxruntime check

# name, path, kind of input feeds, is a classifier
MODELS = [
    ("mlp", FIXTURES / "mlp.onnx", "flat", True),
    ("cnn", FIXTURES / "cnn.onnx", "nchw", True),
    ("mobilenet", FIXTURES / "mobilenet.onnx", "nchw", True),
    ("cnn_qdq", FIXTURES / "ops" / "cnn_qdq.onnx", "nchw", True),
    ("cond", FIXTURES / "ops" / "cond.onnx", "cond", False),
]

# (op_type, weight input index) -> (zero-point input index, default quantization axis)
QUANT_SLOTS = {
    ("DequantizeLinear", 0): (2, 1),
    ("QLinearConv", 3): (5, 0),
    ("QLinearMatMul", 3): (5, -1),
    ("ConvInteger", 1): (3, 0),
    ("MatMulInteger", 1): (3, -1),
}


# ---------------------------------------------------------------- measurement


def constant_value(node):
    """The array a Constant node produces (None for a sparse or string value)."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(attr.floats, dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(attr.ints, dtype=np.int64)
    return None


def zero_point(node, slot, consts, weight):
    """The value that dequantizes to 0 for `weight` read by `node` at input `slot`,
    shaped to broadcast against it (0 for an ordinary float weight)."""
    rule = QUANT_SLOTS.get((node.op_type, slot))
    if rule is None:
        return 0
    zp_slot, axis = rule
    if len(node.input) <= zp_slot or node.input[zp_slot] not in consts:
        return 0
    zp = consts[node.input[zp_slot]][1]
    if zp.size == 1:
        return zp.reshape(())
    for attr in node.attribute:
        if attr.name == "axis":
            axis = attr.i
    axis %= max(weight.ndim, 1)
    if weight.ndim == 0 or weight.shape[axis] != zp.size:
        return 0  # blocked quantization or an odd layout: fall back to literal zero
    shape = [1] * weight.ndim
    shape[axis] = zp.size
    return zp.reshape(shape)


def weight_slots(graph, scope=(), outer=None):
    """Every node input in `graph` and its subgraphs that reads a constant.

    Returns {slot key: (tensor id, array, zero count)}; the slot key is (scope,
    node outputs, input index) and the tensor id is (scope that defines it, name).
    """
    consts = dict(outer or {})
    for init in graph.initializer:
        consts[init.name] = (scope, numpy_helper.to_array(init))
    for node in graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            value = constant_value(node)
            if value is not None:
                consts[node.output[0]] = (scope, value)
    slots = {}
    for index, node in enumerate(graph.node):
        node_key = tuple(node.output) or (f"#{index}",)
        for slot, name in enumerate(node.input):
            if name in consts:
                owner, value = consts[name]
                zeros = int(np.count_nonzero(value == zero_point(node, slot, consts, value)))
                slots[(scope, node_key, slot)] = ((owner, name), value, zeros)
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for i, sub in enumerate(subgraphs):
                sub_scope = scope + ((node_key, attr.name, i),)
                slots.update(weight_slots(sub, sub_scope, consts))
    return slots


def tensor_label(tensor_id):
    scope, name = tensor_id
    return f"{'/'.join(a for _, a, _ in scope)}:{name}" if scope else name


def unused_initializers(graph):
    """How many initializers no node reads (in any graph, subgraphs included)."""
    graphs, read, pending = [], set(), [graph]
    while pending:
        g = pending.pop()
        graphs.append(g)
        for node in g.node:
            read.update(node.input)
            for attr in node.attribute:
                pending.extend([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs)
    read.update(o.name for o in graph.output)
    return sum(init.name not in read for g in graphs for init in g.initializer)


def measure(original, pruned):
    """Which weight tensors of `original` became sparser in `pruned`."""
    before = weight_slots(onnx.load(str(original)).graph)
    pruned_graph = onnx.load(str(pruned)).graph
    after = weight_slots(pruned_graph)
    pruned_tensors, modified = {}, set()
    for key, (tensor_id, old, old_zeros) in before.items():
        if key not in after:
            modified.add(tensor_id)  # its consumer is gone or renamed
            continue
        _, new, new_zeros = after[key]
        if new.shape != old.shape:
            modified.add(tensor_id)
        elif new_zeros > old_zeros:
            pruned_tensors[tensor_id] = (old.size, new_zeros)
        elif not np.array_equal(new, old):
            modified.add(tensor_id)
    params = sum(size for size, _ in pruned_tensors.values())
    zeros = sum(z for _, z in pruned_tensors.values())
    return {
        "tensors": len(pruned_tensors),
        "params": params,
        "achieved": zeros / params if params else None,
        "names": sorted(tensor_label(t) for t in pruned_tensors),
        "modified": sorted(tensor_label(t) for t in modified - set(pruned_tensors)),
        "unused": unused_initializers(pruned_graph),
    }


# ---------------------------------------------------------------- workers (child processes)


def feeds_for(kind):
    if kind == "flat":
        return [{"pixels": np.load(DATA / "test_x_flat.npy").astype(np.float32)}]
    if kind == "nchw":
        return [{"image": np.load(DATA / "test_x_nchw.npy").astype(np.float32)}]
    x = np.load(DATA / "test_x_flat.npy").astype(np.float32)
    return [{"pixels": x, "wide": np.array(wide)} for wide in (True, False)]


def worker_onnxsim(src, dst, sparsity):
    import onnxsim

    start = time.perf_counter()
    model = onnxsim.apply_magnitude_pruning(src, sparsity=float(sparsity))
    onnx.save(model, dst)
    return {"seconds": time.perf_counter() - start}


def worker_ort(path, kind, classifier):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outputs = [session.run(None, feeds)[0] for feeds in feeds_for(kind)]
    result = {"finite": bool(all(np.isfinite(o).all() for o in outputs))}
    if classifier == "1":
        labels = np.load(DATA / "test_y.npy")
        result["accuracy"] = float(np.mean(np.argmax(outputs[0], axis=-1) == labels))
    return result


def run_worker(*args):
    """Run a worker of this script in a child process; its JSON result, or raise."""
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", *map(str, args)],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    if proc.returncode != 0:
        raise RuntimeError(failure(proc))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def failure(proc):
    """A one-line reason for a failed child process."""
    if proc.returncode < 0:
        return f"crashed ({signal.Signals(-proc.returncode).name})"
    lines = [l.strip() for l in proc.stderr.splitlines() if l.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"


# ---------------------------------------------------------------- the comparison


def run_onnxsim(src, dst, sparsity):
    result = run_worker("onnxsim", src, dst, sparsity)
    return result["seconds"], None


def run_pare(src, dst, sparsity):
    cmd = [str(PARE), "prune", str(src), "-o", str(dst), "--sparsity", str(sparsity),
           "--json", "--no-verify", "--force"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(failure(proc))
    return seconds, json.loads(proc.stdout)


def check_ort(path, kind, classifier):
    """(runs cell, accuracy or None)."""
    try:
        result = run_worker("ort", path, kind, int(classifier))
    except Exception as e:  # noqa: BLE001 - any failure is a result here
        return f"error: {e}", None
    runs = "yes" if result["finite"] else "yes (non-finite output)"
    return runs, result.get("accuracy")


def one_case(tool, run, name, src, kind, classifier, sparsity):
    dst = OUT_DIR / f"{name}.{tool}.{sparsity}.onnx"
    dst.unlink(missing_ok=True)
    row = {"model": name, "sparsity": sparsity, "tool": tool}
    start = time.perf_counter()
    try:
        row["seconds"], row["report"] = run(src, dst, sparsity)
    except Exception as e:  # noqa: BLE001
        row["seconds"] = time.perf_counter() - start
        row["error"] = str(e)
        return row
    try:
        row.update(measure(src, dst))
    except Exception as e:  # noqa: BLE001
        row["error"] = f"cannot read output: {e}"
        return row
    row["bytes"] = dst.stat().st_size
    row["runs"], row["accuracy"] = check_ort(dst, kind, classifier)
    return row


def cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")[:160]


def table(rows):
    lines = [
        "| model | sparsity | tool | tensors pruned | params in pruned tensors | achieved sparsity "
        "| runs in ORT | accuracy | time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        acc = "n/a" if r.get("classifier") is False else (
            f"{r['accuracy']:.2%}" if r.get("accuracy") is not None else "—")
        time_cell = f"{r['seconds']:.3f} s" if "seconds" in r else "—"
        if "error" in r:
            cells = [f"error: {r['error']}", "—", "—", "—", "—"]
        elif r["tool"] == "original":
            cells = ["—", "—", "—", r["runs"], acc]
        else:
            sp = f"{r['achieved']:.2%}" if r.get("achieved") is not None else "—"
            cells = [r["tensors"], r["params"], sp, r["runs"], acc]
        lines.append("| " + " | ".join(cell(c) for c in [
            r["model"], r["sparsity"], r["tool"], *cells, time_cell]) + " |")
    return "\n".join(lines)


def details(rows):
    """Per-case notes: tensors only one tool pruned, sizes, pare's own report."""
    out = []
    by_case = {}
    for r in rows:
        if r["tool"] != "original":
            by_case.setdefault((r["model"], r["sparsity"]), {})[r["tool"]] = r
    for (model, sparsity), tools in by_case.items():
        out.append(f"### {model} @ {sparsity}")
        names = {t: set(r.get("names", [])) for t, r in tools.items() if "error" not in r}
        if len(names) == 2:
            for tool, other in (("pare", "onnxsim"), ("onnxsim", "pare")):
                only = sorted(names[tool] - names[other])
                out.append(f"- pruned by {tool} only: {', '.join(only) if only else 'none'}")
        for tool, r in tools.items():
            if "error" in r:
                out.append(f"- {tool}: error: {r['error']}")
                continue
            out.append(f"- {tool}: output {r['bytes']} bytes, "
                       f"{r['unused']} initializers that no node reads")
            if r["modified"]:
                out.append(f"  - {tool} changed without adding zeros: {', '.join(r['modified'])}")
            report = r.get("report")
            if report:
                totals = report["totals"]
                out.append(
                    f"  - pare's report: {totals['layers']} layers, eligible sparsity "
                    f"{totals['eligible_sparsity_after']:.2%}, model sparsity "
                    f"{totals['model_sparsity_after']:.2%}")
                for skip in report.get("skipped", []):
                    out.append(f"  - pare skipped {skip.get('name')}: {skip.get('reason')}")
        out.append("")
    return "\n".join(out)


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, src, kind, classifier in MODELS:
        base = {"model": name, "sparsity": "—", "tool": "original", "classifier": classifier}
        base["runs"], base["accuracy"] = check_ort(src, kind, classifier)
        rows.append(base)
        for sparsity in SPARSITIES:
            for tool, run in (("onnxsim", run_onnxsim), ("pare", run_pare)):
                row = one_case(tool, run, name, src, kind, classifier, sparsity)
                row["classifier"] = classifier
                rows.append(row)
                print(f"{name} {sparsity} {tool}: "
                      f"{row.get('error') or row.get('tensors')}", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    header = (
        "# pare vs onnxsim magnitude pruning\n\n"
        "Made by `bash scripts/compare-onnxsim.sh` (see scripts/compare_onnxsim.py for how each "
        "column is measured).\n\n"
    )
    REPORT.write_text(header + text + "\n\n## Details\n\n" + details(rows))
    print(f"\nwrote {REPORT}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        job, args = sys.argv[2], sys.argv[3:]
        result = worker_onnxsim(*args) if job == "onnxsim" else worker_ort(*args)
        print(json.dumps(result))
    else:
        main()
