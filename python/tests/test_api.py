"""The Python API as users call it, against the installed wheel: results equal the CLI's,
data in every accepted form, in-memory models, errors and interruption."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pare
from conftest import DATA, FIXTURES

CNN = FIXTURES / "cnn.onnx"
CNN_TFLITE = FIXTURES / "cnn.tflite"
CNN_INT8 = FIXTURES / "cnn_int8.tflite"


def run_cli(cli, *args):
    return subprocess.run([cli, *map(str, args)], capture_output=True, text=True)


def without_paths(report):
    """A report without what differs between two runs writing different files
    (paths, and the time and memory each run measured)."""
    drop = {"files", "path", "output", "input", "on", "kind", "phases", "timing"}
    if isinstance(report, dict):
        return {k: without_paths(v) for k, v in report.items() if k not in drop}
    if isinstance(report, list):
        return [without_paths(v) for v in report]
    return report


def test_inspect_is_the_cli_json(cli):
    r = pare.inspect(CNN)
    assert isinstance(r, dict) and r.schema == "pare.inspect/1"
    assert r.op_histogram["Conv"] == r["op_histogram"]["Conv"] > 0
    o = run_cli(cli, "inspect", "--json", CNN)
    assert o.returncode == 0, o.stderr
    assert r.to_dict() == json.loads(o.stdout)


@pytest.mark.parametrize(
    "model,options,flags",
    [
        (CNN, dict(sparsity=0.5, scope="lamp"), ["--sparsity", "0.5", "--scope", "lamp"]),
        (CNN_TFLITE, dict(pattern=(2, 4)), ["--pattern", "2:4"]),
        (CNN_INT8, dict(block_size=(4, 1), sparsity=0.5), ["--pattern", "block:4x1", "--sparsity", "0.5"]),
        (CNN, dict(channels=0.25, round_to=4), ["--channels", "0.25", "--round-to", "4"]),
    ],
)
def test_prune_writes_the_bytes_the_cli_writes(tmp_path, cli, model, options, flags):
    a, b = tmp_path / f"api{model.suffix}", tmp_path / f"cli{model.suffix}"
    r = pare.prune(model, a, quiet=True, **options)
    o = run_cli(cli, "prune", model, "-o", b, "--json", "--quiet", *flags)
    assert o.returncode == 0, o.stderr
    assert a.read_bytes() == b.read_bytes()
    assert without_paths(r.to_dict()) == without_paths(json.loads(o.stdout))
    assert r.write.verification.checked is True
    assert r.verified == r.write.verification.verified


def test_calibration_data_in_every_form_gives_the_same_model(tmp_path):
    x = np.load(DATA / "calib_x_nchw.npy")
    path = pare.prune(CNN, tmp_path / "path.onnx", sparsity=0.5, criterion="wanda",
                      calib=DATA / "calib_x_nchw.npy", quiet=True)
    array = pare.prune(CNN, None, sparsity=0.5, criterion="wanda", calib=x, quiet=True)
    named = pare.prune(CNN, None, sparsity=0.5, criterion="wanda", calib={"image": x}, quiet=True)
    batches = (x[i:i + 10] for i in range(0, len(x), 10))  # a generator, as a DataLoader yields
    gen = pare.prune(CNN, None, sparsity=0.5, criterion="wanda", calib=batches, quiet=True)
    expected = (tmp_path / "path.onnx").read_bytes()
    for r in (array, named, gen):
        assert r.model == expected
        assert without_paths(r.calibration) == without_paths(path.calibration)
        assert r.calibration[0].capture.data.path == "<calib array>"
    assert path.model is None


def test_int8_models_take_float_data_quantized_with_their_parameters():
    x = np.load(DATA / "calib_x_nhwc.npy")
    r = pare.prune(CNN_INT8, None, sparsity=0.5, criterion="sparsegpt", calib=x, quiet=True)
    assert r.write.verification.checked
    assert r.write.verification.on == "<calib array>"
    assert r.model[4:8] == b"TFL3"


def test_model_bytes_in_and_out(tmp_path):
    onnx_bytes = CNN.read_bytes()
    r = pare.prune(onnx_bytes, sparsity=0.5, quiet=True)
    pare.prune(CNN, tmp_path / "file.onnx", sparsity=0.5, quiet=True)
    assert r.model == (tmp_path / "file.onnx").read_bytes()
    again = pare.inspect(r.model)
    assert again.totals.sparsity > 0.4
    c = pare.convert(CNN_TFLITE.read_bytes(), quiet=True)
    assert c.model == CNN_TFLITE.read_bytes() or c.model[4:8] == b"TFL3"
    assert c.verified


def test_validate_with_labels_in_tuples_and_gates(tmp_path):
    test = np.load(DATA / "test_cnn_onnx.npz")
    x, y = test["image"], test["labels"]
    out = tmp_path / "p.onnx"
    pare.prune(CNN, out, sparsity=0.5, quiet=True)
    r = pare.validate(CNN, out, data=(x, y), latency_runs=0, quiet=True)
    assert r.schema == "pare.validate/1" and r.passed
    with_file = pare.validate(CNN, out, data=DATA / "test_cnn_onnx.npz", latency_runs=0, quiet=True)
    assert r.accuracy == with_file.accuracy
    batches = [(x[i:i + 50], y[i:i + 50]) for i in range(0, len(x), 50)]
    assert pare.validate(CNN, out, data=batches, latency_runs=0, quiet=True).accuracy == r.accuracy
    with pytest.raises(pare.GateError) as e:
        pare.validate(CNN, out, data=(x, y), min_cosine=0.99999, latency_runs=0, quiet=True)
    assert e.value.code == 4 and e.value.report.passed is False
    assert str(e.value) == f"{out} fails a validation gate"


def test_exclusions_by_exact_name_and_regex(tmp_path):
    layers = pare.inspect(CNN).layers
    first = layers[0].weight
    r = pare.prune(CNN, None, sparsity=0.5, ignore=[first], quiet=True)
    pruned = {l.name for l in r.layers}
    assert first not in pruned and pruned
    r = pare.prune(CNN, None, sparsity=0.5, targets=["re:" + first[:3] + ".*"], quiet=True)
    assert r.layers and all(l.name.startswith(first[:3]) for l in r.layers)
    ops = {l.weight: l.op for l in layers}
    r = pare.prune(CNN, None, sparsity=0.5, ignore=["Conv"], quiet=True)
    assert r.layers and all(ops[l.name] != "Conv" for l in r.layers)
    r = pare.prune(CNN, None, sparsity=0.5, targets="MatMul", quiet=True)
    assert r.layers and all(ops[l.name] == "MatMul" for l in r.layers)


def test_gate_failures_raise_with_the_report_and_write_nothing(tmp_path):
    out = tmp_path / "p.onnx"
    with pytest.raises(pare.GateError) as e:
        pare.prune(CNN, out, sparsity=0.9, validate=DATA / "test_cnn_onnx.npz",
                   max_accuracy_drop=0.1, quiet=True)
    assert e.value.report.validation.passed is False
    assert str(e.value) == f"the pruned model fails its validation gate; {out} not written"
    assert not out.exists()


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(pare.ModelError, match="missing.onnx"):
        pare.inspect(tmp_path / "missing.onnx")
    with pytest.raises(pare.UsageError, match="sparsity"):
        pare.prune(CNN, tmp_path / "o.onnx", sparsity=1.5)
    (tmp_path / "exists.onnx").write_bytes(b"x")
    with pytest.raises(pare.UsageError, match="exists"):
        pare.prune(CNN, tmp_path / "exists.onnx", sparsity=0.5)
    assert (tmp_path / "exists.onnx").read_bytes() == b"x"
    with pytest.raises(pare.UsageError):
        pare.prune(CNN, None, sparsity=0.5, calib=np.zeros((4, 3), np.float32))
    with pytest.raises(TypeError, match="calib"):
        pare.prune(CNN, None, sparsity=0.5, calib=12)
    with pytest.raises(pare.UsageError, match="ModelProto"):
        pare.inspect(object())
    with pytest.raises(pare.ModelError):
        pare.inspect(b"not a model at all")
    assert issubclass(pare.DivergedError, pare.VerificationError)
    assert issubclass(pare.UsageError, ValueError)


def test_require_verified_raises_diverged(tmp_path):
    with pytest.raises(pare.DivergedError) as e:
        pare.prune(CNN, tmp_path / "o.onnx", sparsity=0.95, require_verified=True, quiet=True)
    assert e.value.code == 5 and "diverge" in str(e.value)
    assert not (tmp_path / "o.onnx").exists()


INTERRUPTED = """
import sys, pare
print("started", flush=True)
try:
    pare.prune(sys.argv[1], sys.argv[2], sparsity=0.5, validate=sys.argv[3],
               latency_runs=10**9, quiet=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(7)
"""


def test_ctrl_c_stops_the_work_and_leaves_no_file(tmp_path):
    out = tmp_path / "p.onnx"
    p = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, str(CNN), str(out), str(DATA / "test_cnn_onnx.npz")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert p.stdout.readline().strip() == "started"
    time.sleep(3)  # well into the billion timed runs
    assert p.poll() is None, p.stderr.read()
    sent = time.monotonic()
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 7, stderr
    assert "interrupted" in stdout
    assert time.monotonic() - sent < 10
    assert os.listdir(tmp_path) == []


def test_the_command_is_in_the_wheel(cli, tmp_path):
    o = run_cli(cli, "--version")
    assert o.returncode == 0 and o.stdout.startswith("pare ")
    o = run_cli(cli, "inspect", tmp_path / "missing.onnx")
    assert o.returncode == 1 and "missing.onnx" in o.stderr
    o = run_cli(cli, "prune", CNN)
    assert o.returncode == 2


def test_the_package_is_typed_and_abi3():
    root = Path(pare.__file__).parent
    assert (root / "py.typed").exists() and (root / "_pare.pyi").exists()
    assert any(f.name.endswith(".abi3.so") for f in root.iterdir())
    assert pare.__version__


def test_the_readme_quick_start_runs(tmp_path, monkeypatch):
    readme = (FIXTURES.parent / "README.md").read_text()
    section = readme.split("\n## Python\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 10, "the quick start promises fewer than 10 lines"
    monkeypatch.chdir(FIXTURES.parent)
    exec(compile(code.replace("/tmp/", f"{tmp_path}/"), "README.md", "exec"), {})
    assert (tmp_path / "cnn.pruned.onnx").exists()


def test_sensitivity_profiles_what_prune_reads(tmp_path):
    test = np.load(DATA / "test_cnn_onnx.npz")
    profile = tmp_path / "profile.json"
    r = pare.sensitivity(CNN, data=(test["image"][:64], test["labels"][:64]), ratios=[0.5, 0.9],
                         report=profile, quiet=True)
    assert r.schema == "pare.sensitivity/1" and profile.exists()
    p = pare.prune(CNN, None, sparsity=0.5, scope="sensitivity", sensitivity=str(profile), quiet=True)
    assert p.settings.scope == "sensitivity" and p.model


def test_mixed_labels_across_batches_are_refused():
    x = np.load(DATA / "test_x_nchw.npy")
    with pytest.raises(ValueError, match="labels in some batches"):
        pare.validate(CNN, CNN, data=[(x[:10], np.zeros(10, np.int64)), x[10:20]], quiet=True)
