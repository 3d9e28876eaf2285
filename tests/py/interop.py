"""Runs models in onnxruntime and LiteRT for pare's interoperability tests.

Each sub-command prints one JSON document on stdout. The Rust tests decide what passes; this
script only measures.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

SEED = 0x70617265


def _np_equal(a, b):
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def _max_abs(a, b):
    """Largest absolute difference over the elements where it is finite (NaN == NaN here)."""
    if a.shape != b.shape or a.size == 0 or a.dtype.kind not in "fiub":
        return 0.0
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    d = d[np.isfinite(d)]
    return float(d.max()) if d.size else 0.0


# ---------------------------------------------------------------- ONNX
def _onnx_check(path):
    import onnx

    try:
        # onnx's shape inference types a sparse initializer as sparse_tensor and then refuses
        # it as the input of a dense op (MatMul, Conv): models with sparse initializers get the
        # structural check only (onnxruntime densifies them when it loads the model).
        full = not onnx.load(path, load_external_data=False).graph.sparse_initializer
        onnx.checker.check_model(path, full_check=full)
        return None
    except Exception as e:  # noqa: BLE001 - any failure is a finding
        return str(e).splitlines()[0][:300]


def _ort_session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
    "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}


def _random_feeds(sess, rng):
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        dt = _ORT_TYPES.get(i.type)
        if dt is None:
            raise RuntimeError(f"input {i.name}: unsupported type {i.type}")
        if np.issubdtype(dt, np.floating):
            feeds[i.name] = rng.uniform(-1, 1, shape).astype(dt)
        elif dt == np.bool_:
            feeds[i.name] = rng.integers(0, 2, shape).astype(dt)
        else:
            feeds[i.name] = rng.integers(0, 4, shape).astype(dt)
    return feeds


def _pb_feeds(sess, data_dir):
    import onnx
    from onnx import numpy_helper

    files = sorted(glob.glob(os.path.join(data_dir, "input_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1][:-3]))
    names = [i.name for i in sess.get_inputs()]
    feeds = {}
    for idx, f in enumerate(files):
        t = onnx.TensorProto()
        with open(f, "rb") as fh:
            t.ParseFromString(fh.read())
        name = t.name if t.name in names else names[idx]
        feeds[name] = numpy_helper.to_array(t)
    return feeds


def onnx_pair(orig, out, data_dir=None):
    """Checker on both, onnxruntime on both with the same inputs, exact comparison."""
    res = {"model": orig, "output": out}
    res["checker_input"] = _onnx_check(orig)
    res["checker_output"] = _onnx_check(out)
    try:
        s1 = _ort_session(orig)
    except Exception as e:  # noqa: BLE001
        res["ort_input_error"] = str(e).splitlines()[0][:300]
        return res
    try:
        s2 = _ort_session(out)
    except Exception as e:  # noqa: BLE001
        res["ort_output_error"] = str(e).splitlines()[0][:300]
        return res
    try:
        feeds = _pb_feeds(s1, data_dir) if data_dir else _random_feeds(s1, np.random.default_rng(SEED))
        o1 = s1.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        res["ort_input_error"] = "run: " + str(e).splitlines()[0][:300]
        return res
    try:
        o2 = s2.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        res["ort_output_error"] = "run: " + str(e).splitlines()[0][:300]
        return res
    o1 = [np.asarray(x) for x in o1]
    o2 = [np.asarray(x) for x in o2]
    res["outputs"] = len(o1)
    res["identical"] = len(o1) == len(o2) and all(_np_equal(a, b) for a, b in zip(o1, o2))
    res["max_abs_diff"] = max([_max_abs(a, b) for a, b in zip(o1, o2)] or [0.0])
    return res


# ---------------------------------------------------------------- TFLite
def _litert(path, builtin=False):
    """LiteRT's interpreter; `builtin` leaves out the default XNNPACK delegate."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES} if builtin else {}
    it = Interpreter(model_path=path, num_threads=1, **kw)
    it.allocate_tensors()
    return it


def _tflite_random_inputs(it, rng):
    feeds = []
    for d in it.get_input_details():
        shape = [int(x) for x in d["shape"]]
        dt = d["dtype"]
        if np.issubdtype(dt, np.floating):
            feeds.append(rng.uniform(-1, 1, shape).astype(dt))
        elif dt in (np.int8, np.uint8):
            info = np.iinfo(dt)
            feeds.append(rng.integers(info.min, info.max + 1, shape).astype(dt))
        else:
            feeds.append(rng.integers(0, 4, shape).astype(dt))
    return feeds


def _tflite_run(it, feeds):
    for d, x in zip(it.get_input_details(), feeds):
        it.set_tensor(d["index"], x)
    it.invoke()
    return [np.array(it.get_tensor(d["index"])) for d in it.get_output_details()]


def tflite_pair(orig, out):
    """Both models on the same random inputs, in LiteRT's default interpreter (XNNPACK
    delegate) and with its builtin kernels only; a failure is recorded, not raised."""
    res = {"model": orig, "output": out}
    try:
        i1 = _litert(orig)
        feeds = _tflite_random_inputs(i1, np.random.default_rng(SEED))
    except Exception as e:  # noqa: BLE001
        res["litert_input_error"] = str(e)[:300]
        return res
    for suffix, builtin in (("", False), ("_builtin", True)):
        try:
            o1 = _tflite_run(_litert(orig, builtin), feeds)
        except Exception as e:  # noqa: BLE001
            res["litert_input_error" + suffix] = str(e)[:300]
            continue
        try:
            i2 = _litert(out, builtin)
            o2 = _tflite_run(i2, feeds)
        except Exception as e:  # noqa: BLE001
            res["litert_output_error" + suffix] = str(e)[:300]
            continue
        res["outputs"] = len(o1)
        res["identical" + suffix] = len(o1) == len(o2) and all(_np_equal(a, b) for a, b in zip(o1, o2))
        res["max_abs_diff" + suffix] = max([_max_abs(a, b) for a, b in zip(o1, o2)] or [0.0])
        # Signatures and metadata survive (LiteRT exposes both).
        res["signatures_equal"] = i1.get_signature_list() == i2.get_signature_list()
    return res


def tflite_run(model, raw, dtype, shape, steps=1):
    """Runs LiteRT on one input given as raw little-endian bytes; returns outputs as float lists.
    With `steps` > 1, `raw` holds that many inputs, run in order on one interpreter (a stream:
    a stateful model carries its variables from one to the next), one result per step."""
    it = _litert(model)
    dims = [int(d) for d in shape.split(",")]
    xs = np.fromfile(raw, dtype=np.dtype(dtype)).reshape([steps] + dims)
    runs = []
    for x in xs:
        outs = _tflite_run(it, [x])
        runs.append({"outputs": [o.astype(np.float64).ravel().tolist() for o in outs], "shapes": [list(o.shape) for o in outs]})
    return runs[0] if steps == 1 else runs


# ---------------------------------------------------------------- accuracy
def _quantize_for(detail, x):
    scale, zp = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zp), info.min, info.max).astype(detail["dtype"])
    return x.astype(detail["dtype"])


def _litert_logits(it, x):
    det = it.get_input_details()[0]
    out = it.get_output_details()[0]
    logits = []
    for i in range(len(x)):
        it.set_tensor(det["index"], _quantize_for(det, x[i : i + 1]))
        it.invoke()
        logits.append(np.array(it.get_tensor(out["index"]))[0])
    return np.stack(logits)


def accuracy(model, x_path, y_path):
    """Top-1 accuracy of a single-input classifier over labeled data, in onnxruntime (.onnx)
    or LiteRT (.tflite, one sample at a time, inputs quantized with the model's parameters)."""
    x = np.load(x_path)
    y = np.load(y_path)
    res = {"model": model, "samples": int(len(y))}
    try:
        if model.endswith(".onnx"):
            res["runtime"] = "onnxruntime"
            check = _onnx_check(model)
            if check:
                res["checker_error"] = check
            sess = _ort_session(model)
            name = sess.get_inputs()[0].name
            logits = sess.run(None, {name: x.astype(np.float32)})[0]
        else:
            res["runtime"] = "litert"
            try:
                logits = _litert_logits(_litert(model), x)
            except RuntimeError as e:
                # LiteRT's XNNPACK delegate refuses some valid models (an int8
                # FULLY_CONNECTED fed by DENSIFY, as TensorFlow's converter writes them).
                res["delegate_error"] = str(e).splitlines()[0][:300]
                res["runtime"] = "litert (builtin kernels)"
                logits = _litert_logits(_litert(model, builtin=True), x)
        res["accuracy"] = float((np.argmax(logits, axis=-1) == y).mean())
    except Exception as e:  # noqa: BLE001 - any failure is a finding
        res["error"] = str(e)[:300]
    return res


def _runtime_outputs(model, x):
    """Output 0 of a single-input model on samples `x`, one row per sample, dequantized."""
    if model.endswith(".onnx"):
        sess = _ort_session(model)
        name = sess.get_inputs()[0].name
        return sess.run(None, {name: x.astype(np.float32)})[0].astype(np.float64)
    it = _litert(model)
    raw = _litert_logits(it, x).astype(np.float64)
    scale, zp = it.get_output_details()[0]["quantization"]
    return (raw - zp) * scale if scale else raw


def _test_sets(data_dir):
    return sorted(glob.glob(os.path.join(data_dir, "test_data_set_*")), key=lambda p: (len(p), p))


def _set_outputs(model, sets):
    """Output 0 of an ONNX model on each ONNX test_data_set folder, one row per set."""
    sess = _ort_session(model)
    return np.stack([np.asarray(sess.run(None, _pb_feeds(sess, d))[0], np.float64).ravel() for d in sets])


def agreement(orig, out, x_path, samples):
    """How `out` agrees with `orig` in onnxruntime / LiteRT on the first `samples` rows of
    `x_path` (a .npy, or a folder of ONNX test_data_set_K folders): per-sample cosine averaged
    (over the samples' values together when there is one value per sample, as pare does), and
    the fraction of unchanged arg-maxes (output 0)."""
    if os.path.isdir(x_path):
        sets = _test_sets(x_path)[:samples]
        a, b, n = _set_outputs(orig, sets), _set_outputs(out, sets), len(sets)
    else:
        x = np.load(x_path)[:samples]
        n = len(x)
        a = _runtime_outputs(orig, x).reshape(n, -1)
        b = _runtime_outputs(out, x).reshape(n, -1)
    pooled = a.shape[1] == 1
    if pooled:
        a, b = a.T, b.T
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.where((na == 0) & (nb == 0), 1.0, (a * b).sum(axis=1) / np.maximum(na * nb, 1e-300))
    return {
        "orig": orig,
        "out": out,
        "samples": int(n),
        "cosine": float(cos.mean()),
        "top1_agreement": None if pooled else float((a.argmax(axis=1) == b.argmax(axis=1)).mean()),
    }


# ---------------------------------------------------------------- shipped models
def shipped_models():
    """The ONNX and TFLite files the wheels of tests/py/models.txt ship, by package (found, not imported:
    the packages' own dependencies are not installed)."""
    import importlib.util

    found = {}
    for pkg in ["silero_vad", "mediapipe", "pymicro_wakeword"]:
        spec = importlib.util.find_spec(pkg)
        root = os.path.dirname(spec.origin) if spec and spec.origin else None
        files = [glob.glob(os.path.join(root, "**", f"*.{ext}"), recursive=True) for ext in ["onnx", "tflite"]] if root else []
        found[pkg] = sorted(f for group in files for f in group)
    return found


def vad_sets(model, out_dir, samples):
    """`samples` ONNX test_data_set folders for a silero-VAD-style model (audio window, zero
    recurrent state, sample rate 16000): tone bursts in noise, and silence, seeded."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(model, load_external_data=False)
    rng = np.random.default_rng(SEED)
    inputs = [i for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in inputs}
    n = dims.get("input", [1, 0])[-1] or 512
    t = np.arange(n) / 16000.0
    for k in range(samples):
        tone = np.sin(2 * np.pi * rng.uniform(120, 400) * t) * (k % 2) * rng.uniform(0.2, 0.8)
        audio = (tone + rng.normal(0, 0.02, n)).astype(np.float32)[None, :]
        zeros = np.zeros((1, 1, 128), np.float32)
        values = {"input": audio, "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64), "h": zeros, "c": zeros}
        d = os.path.join(out_dir, f"test_data_set_{k}")
        os.makedirs(d, exist_ok=True)
        for j, i in enumerate(inputs):
            with open(os.path.join(d, f"input_{j}.pb"), "wb") as fh:
                fh.write(numpy_helper.from_array(values[i.name], i.name).SerializeToString())
    return {"model": model, "dir": out_dir, "samples": samples, "length": int(n)}


# ---------------------------------------------------------------- corpus
def onnx_corpus_list():
    """Every model of the ONNX backend test corpus shipped in the onnx wheel, with its data dir."""
    import onnx

    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    items = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.onnx"), recursive=True)):
        data = os.path.join(os.path.dirname(path), "test_data_set_0")
        items.append({"model": path, "data": data if os.path.isdir(data) else None})
    return items


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("onnx-pair")
    a.add_argument("orig")
    a.add_argument("out")
    a.add_argument("--data")
    b = sub.add_parser("onnx-pairs", help="JSON list of {model, output, data} on stdin")
    c = sub.add_parser("tflite-pair")
    c.add_argument("orig")
    c.add_argument("out")
    sub.add_parser("onnx-corpus-list")
    sub.add_parser("shipped-models")
    v = sub.add_parser("vad-sets")
    v.add_argument("model")
    v.add_argument("out_dir")
    v.add_argument("samples", type=int)
    sub.add_parser("accuracy", help="JSON list of {model, x, y} on stdin")
    sub.add_parser("agreement", help="JSON list of {orig, out, x, samples} on stdin")
    d = sub.add_parser("tflite-run")
    d.add_argument("model")
    d.add_argument("raw")
    d.add_argument("dtype")
    d.add_argument("--steps", type=int, default=1)
    d.add_argument("shape")
    args = p.parse_args()
    if args.cmd == "onnx-pair":
        r = onnx_pair(args.orig, args.out, args.data)
    elif args.cmd == "onnx-pairs":
        r = [onnx_pair(x["model"], x["output"], x.get("data")) for x in json.load(sys.stdin)]
    elif args.cmd == "tflite-pair":
        r = tflite_pair(args.orig, args.out)
    elif args.cmd == "accuracy":
        r = [accuracy(x["model"], x["x"], x["y"]) for x in json.load(sys.stdin)]
    elif args.cmd == "agreement":
        r = [agreement(x["orig"], x["out"], x["x"], x["samples"]) for x in json.load(sys.stdin)]
    elif args.cmd == "shipped-models":
        r = shipped_models()
    elif args.cmd == "vad-sets":
        r = vad_sets(args.model, args.out_dir, args.samples)
    elif args.cmd == "tflite-run":
        r = tflite_run(args.model, args.raw, args.dtype, args.shape, args.steps)
    else:
        r = onnx_corpus_list()
    json.dump(r, sys.stdout, allow_nan=False)
    print()


if __name__ == "__main__":
    main()
