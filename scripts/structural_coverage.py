#!/usr/bin/env python3
"""Structural (channel) pruning coverage: `pare prune --channels` and onnxsim on real network families.

What it measures. Each model below is built by torchvision with random weights
(`weights=None`, `torch.manual_seed(0)` before construction), put in eval mode and
exported with the TorchScript exporter (`torch.onnx.export(..., dynamo=False)` where
that argument exists; constant folding on, so BatchNorm is folded into Conv), opset 17,
one input "input" of shape 1x3x224x224. Exports are cached in
target/structural-coverage/models/ (delete a file to export it again). For each model,
with R = --ratio (default 0.3):
  * pare: `pare prune MODEL -o OUT --channels R --json --force`. Success is exit code
    0 and an output file; otherwise the row shows the exit code and the last line of
    stderr. Its stdout (the JSON report) is kept in
    target/structural-coverage/<model>.pare.json, and the report field
    `channels.channels.prunable_fraction` (the fraction of channels pare found
    prunable) is shown when present, "?" when not (the schema is read defensively);
  * onnxsim 0.8.1: `onnxsim.apply_structured_pruning(MODEL, sparsity=R)` with its other
    arguments at their defaults (importance_norm="l2", global_sparsity=False), then
    `onnx.save`. Its docstring defines `sparsity` as the "target fraction of each
    matched producer's output channels to remove" (at least one channel is kept);
    chains whose topology it cannot prove safe are left untouched.
Both tools run in child processes with a timeout, so a crash or hang in either ends
only its own case. Nothing the tools say about their results is trusted; for the
original model and each output the script measures itself:
  * parameters: the sum of the element counts of every initializer, Constant node
    value (tensor, sparse tensor, or list attribute) and sparse initializer, in the
    main graph and in If/Loop/Scan bodies. A sparse tensor counts with its dense
    shape, so re-encoding a tensor as sparse does not count as removing parameters;
    an initializer that no node reads still counts (it is still in the file).
    "params removed" = 1 - after / before;
  * whether the output loads in onnxruntime (CPUExecutionProvider, all graph
    optimizations) and runs on one random input (standard normal, numpy seed 0, the
    same for every model and tool); whether it has as many outputs as the original
    and each has the same shape as the original model's output on that input ("runs
    in ORT with expected shapes"), and whether the outputs are finite;
  * the max absolute difference of output 0 from the original's (details only:
    pruning without retraining is expected to change the outputs).

Run it (creates target/coverage-venv with the pinned packages on first use):

    bash scripts/structural-coverage.sh [--models resnet18,vgg11] [--ratio 0.3]
                                        [--pare PATH] [--timeout SECONDS]

pare defaults to $PARE, else target/release/pare, else target/debug/pare. It prints a
markdown table and writes it, with per-case details and errors, to
target/structural-coverage.md (and the raw results to
target/structural-coverage/results.json); pruned models go to
target/structural-coverage/. Not run by CI.
"""

import argparse
import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "target" / "structural-coverage"
MODEL_DIR = OUT_DIR / "models"
REPORT = ROOT / "target" / "structural-coverage.md"
RESULTS = OUT_DIR / "results.json"
OPSET = 17
INPUT_SHAPE = (1, 3, 224, 224)
SEED = 0

# torchvision builder name, family, extra builder arguments
MODELS = [
    ("resnet18", "ResNet basic block", {}),
    ("resnet50", "ResNet bottleneck", {}),
    ("mobilenet_v2", "inverted residual, depthwise", {}),
    ("mobilenet_v3_small", "SE, hard-swish", {}),
    ("efficientnet_b0", "SE, swish", {}),
    ("densenet121", "dense concat", {}),
    ("squeezenet1_1", "fire module (concat)", {}),
    ("vgg11", "plain conv + FC", {}),
    ("googlenet", "inception concat", {"aux_logits": False, "init_weights": True}),
    ("regnet_x_400mf", "grouped conv", {}),
    ("shufflenet_v2_x0_5", "channel shuffle", {}),
    ("convnext_tiny", "LayerNorm, 7x7 depthwise, MatMul", {}),
]


# ---------------------------------------------------------------- measurement (parent)


def tensor_elements(dims):
    return math.prod(int(d) for d in dims)


def constant_elements(node):
    """Elements a Constant node produces (its one value attribute)."""
    for attr in node.attribute:
        if attr.name == "value":
            return tensor_elements(attr.t.dims)
        if attr.name == "sparse_value":
            return tensor_elements(attr.sparse_tensor.dims)
        if attr.name in ("value_float", "value_int", "value_string"):
            return 1
        if attr.name == "value_floats":
            return len(attr.floats)
        if attr.name == "value_ints":
            return len(attr.ints)
        if attr.name == "value_strings":
            return len(attr.strings)
    return 0


def count_params(graph):
    """Parameters in `graph` and its subgraphs (see the module docstring)."""
    import onnx

    total = sum(tensor_elements(t.dims) for t in graph.initializer)
    total += sum(tensor_elements(s.dims) for s in graph.sparse_initializer)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            total += constant_elements(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                total += count_params(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                total += sum(count_params(g) for g in attr.graphs)
    return total


def tied_initializers(path):
    """How many nodes of the main graph are an Identity of an initializer: the
    TorchScript exporter deduplicates equal initializers (random-init models have many
    equal zero biases) and re-creates the other names this way, so one tensor feeds
    several layers."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    names = {t.name for t in graph.initializer}
    return sum(n.op_type == "Identity" and n.input and n.input[0] in names for n in graph.node)


def model_params(path):
    import onnx

    # external data is not needed: the element counts come from the dims
    return count_params(onnx.load(str(path), load_external_data=False).graph)


# ---------------------------------------------------------------- workers (child processes)


def worker_export(name, dst):
    import torch
    import torchvision

    extra = dict(next(kw for n, _, kw in MODELS if n == name))
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    model = getattr(torchvision.models, name)(weights=None, **extra).eval()
    dummy = torch.randn(*INPUT_SHAPE)
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    tmp = f"{dst}.tmp"
    start = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(model, (dummy,), tmp, opset_version=OPSET, input_names=["input"],
                          output_names=["output"], do_constant_folding=True, **kwargs)
    os.replace(tmp, dst)
    return {"seconds": time.perf_counter() - start, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "export_args": sorted(kwargs)}


def worker_onnxsim(src, dst, ratio):
    import onnx
    import onnxsim

    start = time.perf_counter()
    model = onnxsim.apply_structured_pruning(src, sparsity=float(ratio))
    onnx.save(model, dst)
    return {"seconds": time.perf_counter() - start}


def feeds_for(session):
    """One random input per graph input (symbolic dimensions set to 1), seeded."""
    import numpy as np

    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(double)": np.float64}
    rng = np.random.default_rng(SEED)
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        feeds[inp.name] = rng.standard_normal(shape).astype(types.get(inp.type, np.float32))
    return feeds


def worker_ort(path, npz):
    """Load and run `path` in onnxruntime; save its outputs to `npz`."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, feeds_for(session))
    np.savez(npz, *outputs)
    return {"shapes": [list(o.shape) for o in outputs],
            "finite": bool(all(np.isfinite(o).all() for o in outputs)),
            "absmax0": float(np.max(np.abs(outputs[0]))) if outputs[0].size else None}


# ---------------------------------------------------------------- child process plumbing


TIMEOUT = 900  # seconds; set by --timeout


def failure(proc):
    """A one-line reason for a failed child process: its exit code (or the signal that
    killed it) and the last line of its stderr -- or, when a later line is only a hint
    (clap ends its errors with "For more information, try '--help'."), the last line
    that starts with "error"."""
    if proc.returncode < 0:
        return f"crashed ({signal.Signals(-proc.returncode).name})"
    lines = [l.strip() for l in proc.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.lower().startswith("error")]
    last = errors[-1] if errors else lines[-1] if lines else None
    return f"exit code {proc.returncode}" + (f": {last}" if last else "")


def run_worker(*args):
    """Run a worker of this script in a child process; its JSON result, or raise."""
    cmd = [sys.executable, __file__, "--worker", *map(str, args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {TIMEOUT} s") from None
    if proc.returncode != 0:
        raise RuntimeError(failure(proc))
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the cases


def export(name):
    """The cached ONNX file for `name` (exported now if missing); raises on failure."""
    path = MODEL_DIR / f"{name}.onnx"
    if path.exists():
        return path, None
    result = run_worker("export", name, path)
    return path, result


def check_ort(path, reference=None):
    """Run `path` in onnxruntime; compare with the reference run if given."""
    import numpy as np

    npz = Path(f"{path}.outputs.npz")
    npz.unlink(missing_ok=True)
    result = run_worker("ort", path, npz)
    if reference is not None:
        want = reference["shapes"]
        result["shapes_match"] = result["shapes"] == want
        with np.load(npz) as got, np.load(reference["npz"]) as ref:
            a, b = got["arr_0"], ref["arr_0"]
            if a.shape == b.shape:
                result["max_abs_diff"] = float(np.max(np.abs(a.astype(np.float64) - b)))
    result["npz"] = str(npz)
    return result


def pare_report_field(report, *keys):
    value = report
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def run_pare(pare, src, dst, ratio, name):
    """Returns (report dict or None); raises with exit code and stderr's last line."""
    if not Path(pare).is_file():
        raise RuntimeError(f"pare not found at {pare} (build it, or pass --pare / set PARE)")
    cmd = [str(pare), "prune", str(src), "-o", str(dst), "--channels", str(ratio), "--json",
           "--force"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {TIMEOUT} s") from None
    seconds = time.perf_counter() - start
    report_path = OUT_DIR / f"{name}.pare.json"
    stderr_path = OUT_DIR / f"{name}.pare.stderr"
    for path in (report_path, stderr_path):
        path.unlink(missing_ok=True)
    if proc.stdout.strip():
        report_path.write_text(proc.stdout)
    if proc.stderr.strip():
        stderr_path.write_text(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(failure(proc))
    if not dst.exists():
        raise RuntimeError("exit code 0 but no output file")
    try:
        report = json.loads(proc.stdout)
    except ValueError as e:
        report = {"unparsable": f"stdout is not JSON ({e})"}
    return seconds, report


def one_tool(tool, name, src, params_before, reference, ratio, pare):
    dst = OUT_DIR / f"{name}.{tool}.onnx"
    dst.unlink(missing_ok=True)
    case = {"tool": tool}
    try:
        if tool == "pare":
            case["seconds"], report = run_pare(pare, src, dst, ratio, name)
            fraction = pare_report_field(report, "channels", "channels", "prunable_fraction")
            case["prunable_fraction"] = fraction if isinstance(fraction, (int, float)) else None
            if "unparsable" in report:
                case["report_note"] = report["unparsable"]
        else:
            case["seconds"] = run_worker("onnxsim", src, dst, ratio)["seconds"]
    except Exception as e:  # noqa: BLE001 - any failure is a result here
        case["error"] = str(e)
        return case
    try:
        case["params"] = model_params(dst)
        case["removed"] = 1 - case["params"] / params_before if params_before else None
    except Exception as e:  # noqa: BLE001
        case["error"] = f"cannot read output: {e}"
        return case
    case["bytes"] = dst.stat().st_size
    if reference is None:
        case["ort_error"] = "original model does not run in ORT, nothing to compare with"
        return case
    try:
        case["ort"] = check_ort(dst, reference)
    except Exception as e:  # noqa: BLE001
        case["ort_error"] = str(e)
    return case


def one_model(name, family, ratio, pare):
    row = {"model": name, "family": family}
    start = time.perf_counter()
    try:
        src, exported = export(name)
        row["export"] = exported or "cached"
    except Exception as e:  # noqa: BLE001
        row["error"] = f"export failed: {e}"
        row["export_seconds"] = time.perf_counter() - start
        return row
    try:
        row["params"] = model_params(src)
        row["tied"] = tied_initializers(src)
    except Exception as e:  # noqa: BLE001
        row["error"] = f"cannot read exported model: {e}"
        return row
    try:
        row["ort"] = check_ort(src)
        reference = row["ort"]
    except Exception as e:  # noqa: BLE001
        row["ort_error"] = str(e)
        reference = None
    row["pare"] = one_tool("pare", name, src, row["params"], reference, ratio, pare)
    row["onnxsim"] = one_tool("onnxsim", name, src, row["params"], reference, ratio, pare)
    return row


# ---------------------------------------------------------------- report


def cell(text):
    # onnxruntime prefixes every error with its exception class and status code
    text = re.sub(r"\S*onnxruntime\S*: \[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(text))
    return text.replace("|", "\\|").replace("\n", " ")[:200]


def percent(value):
    return f"{value:.1%}" if isinstance(value, (int, float)) else "?"


def runs_cell(case):
    if "ort_error" in case:
        return f"no: {case['ort_error']}"
    ort = case.get("ort")
    if ort is None:
        return "—"
    if not ort.get("shapes_match"):
        return f"runs, wrong shapes: {ort['shapes']}"
    return "yes" if ort.get("finite") else "yes (non-finite output)"


def tool_cells(case, with_fraction):
    if "error" in case:
        cells = [f"error: {case['error']}", "—"]
        return (["?"] if with_fraction else []) + cells
    cells = [percent(case.get("removed")), runs_cell(case)]
    return ([percent(case.get("prunable_fraction"))] if with_fraction else []) + cells


def table(rows):
    lines = [
        "| model | family | pare: prunable channels | pare: params removed "
        "| pare: runs in ORT with expected shapes | onnxsim: params removed | onnxsim: runs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            cells = [f"error: {r['error']}"] + ["—"] * 4
        else:
            cells = tool_cells(r["pare"], True) + tool_cells(r["onnxsim"], False)
        lines.append("| " + " | ".join(cell(c) for c in [r["model"], r["family"], *cells]) + " |")
    return "\n".join(lines)


def details(rows):
    out = []
    for r in rows:
        out.append(f"### {r['model']} ({r['family']})")
        if "error" in r:
            out.append(f"- {r['error']}")
            out.append("")
            continue
        export_note = r["export"] if r["export"] == "cached" else f"exported in {r['export']['seconds']:.1f} s"
        out.append(f"- original: {r['params']:,} parameters ({export_note}); "
                   f"{r['tied']} Identity nodes alias a shared initializer")
        if "ort_error" in r:
            out.append(f"- original does not run in onnxruntime: {r['ort_error']}")
        else:
            scale = r["ort"].get("absmax0")
            out.append(f"- original in onnxruntime: output shapes {r['ort']['shapes']}, "
                       f"max |output 0| {'n/a' if scale is None else format(scale, '.4g')} "
                       "(the scale for the differences below)")
        for tool in ("pare", "onnxsim"):
            case = r[tool]
            if "error" in case:
                out.append(f"- {tool}: error: {case['error']}")
                continue
            line = (f"- {tool}: {case['seconds']:.1f} s, {case['params']:,} parameters "
                    f"({percent(case['removed'])} removed), {case['bytes']:,} bytes")
            if tool == "pare":
                line += f", reported prunable channels {percent(case.get('prunable_fraction'))}"
            out.append(line)
            if case.get("report_note"):
                out.append(f"  - pare's report: {case['report_note']}")
            if "ort_error" in case:
                out.append(f"  - onnxruntime: {case['ort_error']}")
            elif "ort" in case:
                ort = case["ort"]
                diff = ort.get("max_abs_diff")
                out.append(f"  - onnxruntime: output shapes {ort['shapes']}"
                           f"{'' if ort['shapes_match'] else ' (original: ' + str(r['ort']['shapes']) + ')'}"
                           f", finite: {ort['finite']}, max |output 0 - original| "
                           f"{'n/a' if diff is None else format(diff, '.4g')}")
        out.append("")
    return "\n".join(out)


def default_pare():
    if os.environ.get("PARE"):
        return Path(os.environ["PARE"])
    release = ROOT / "target" / "release" / "pare"
    return release if release.exists() else ROOT / "target" / "debug" / "pare"


def main():
    global TIMEOUT
    names = [n for n, _, _ in MODELS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", help=f"comma-separated subset of: {','.join(names)}")
    parser.add_argument("--ratio", type=float, default=0.3,
                        help="fraction of channels to remove (default 0.3)")
    parser.add_argument("--pare", type=Path, default=None,
                        help="pare binary (default: $PARE, target/release/pare, target/debug/pare)")
    parser.add_argument("--timeout", type=int, default=TIMEOUT,
                        help=f"seconds per child process (default {TIMEOUT})")
    args = parser.parse_args()
    TIMEOUT = args.timeout
    pare = (args.pare or default_pare()).resolve()
    selected = names
    if args.models:
        selected = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in selected if m not in names]
        if unknown:
            parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(names)}")
    if not 0 < args.ratio < 1:
        parser.error("--ratio must be between 0 and 1")

    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    print(f"pare: {pare}; ratio {args.ratio}", file=sys.stderr, flush=True)
    rows = []
    for name, family, _ in MODELS:
        if name not in selected:
            continue
        row = one_model(name, family, args.ratio, pare)
        rows.append(row)
        summary = row.get("error") or "; ".join(
            f"{t}: {row[t].get('error') or percent(row[t].get('removed')) + ' removed'}"
            for t in ("pare", "onnxsim"))
        print(f"{name}: {summary}", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    header = (
        "# Structural (channel) pruning coverage: pare vs onnxsim\n\n"
        f"Made by `bash scripts/structural-coverage.sh --ratio {args.ratio}` (see "
        "scripts/structural_coverage.py for how each column is measured): torchvision "
        f"models with random weights, opset {OPSET}, input 1x3x224x224, "
        f"{args.ratio:.0%} of channels requested removed.\n\n"
    )
    REPORT.write_text(header + text + "\n\n## Details\n\n" + details(rows))
    RESULTS.write_text(json.dumps({"ratio": args.ratio, "pare": str(pare), "rows": rows},
                                  indent=1, default=str))
    print(f"\nwrote {REPORT}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        job, job_args = sys.argv[2], sys.argv[3:]
        workers = {"export": worker_export, "onnxsim": worker_onnxsim, "ort": worker_ort}
        print(json.dumps(workers[job](*job_args)), flush=True)
    else:
        main()
