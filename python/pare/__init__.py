"""pare: prune ONNX and TFLite models after export, verified in tract.

The functions mirror the ``pare`` command line (same options, same reports as ``--json``, same
files written byte for byte) and take what Python users have: paths or model bytes, numpy
arrays, dicts of arrays and iterables of batches as data. Errors raise :class:`Error`
subclasses with the CLI's messages; Ctrl-C stops the work and leaves no file behind.

>>> import pare
>>> report = pare.prune("model.onnx", "model.pruned.onnx", sparsity=0.5, calib=x)  # doctest: +SKIP
>>> report.write.verification.verified  # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Type, Union

from . import _data
from ._pare import __version__
from ._report import (
    InspectReport,
    PruneReport,
    Report,
    SensitivityReport,
    ValidateReport,
    WriteReport,
)

__all__ = [
    "inspect",
    "convert",
    "prune",
    "validate",
    "sensitivity",
    "Report",
    "InspectReport",
    "WriteReport",
    "PruneReport",
    "ValidateReport",
    "SensitivityReport",
    "Error",
    "UsageError",
    "ModelError",
    "VerificationError",
    "DivergedError",
    "GateError",
    "__version__",
]

#: A model: a path, or the file's bytes (``onnx.ModelProto.SerializeToString()``).
ModelLike = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]
#: Data: a path (``.npy``, ``.npz``, ONNX test data folder) or ``"random"``, a numpy array
#: (samples on axis 0), a dict of arrays by input name, ``(inputs, labels)``, or an iterable
#: (generator, DataLoader-like) of any of these, concatenated along axis 0.
DataLike = Any


class Error(Exception):
    """A pare error; ``code`` is the CLI's exit code, ``report`` the report when one exists."""

    code = 1

    def __init__(self, message: str, report: Optional[Report] = None) -> None:
        super().__init__(message)
        self.report = report


class UsageError(Error, ValueError):
    """A bad argument or combination, bad data, or a refused output path (exit code 2)."""

    code = 2


class ModelError(Error):
    """The input cannot be read or is not a valid model, an I/O error, or a request the model
    cannot meet (exit code 1)."""

    code = 1


class VerificationError(Error):
    """``require_verified=True`` and tract could not check the written model, or a conversion
    changed the outputs (exit code 3). Nothing was written."""

    code = 3


class DivergedError(VerificationError):
    """``require_verified=True`` and the written model's outputs diverge (exit code 5)."""

    code = 5


class GateError(Error):
    """A validation gate failed, or ``search`` found nothing within the gates (exit code 4).
    ``report`` holds the measurements; nothing was written unless ``keep_failed``."""

    code = 4


_ERRORS: Dict[int, Type[Error]] = {
    1: ModelError,
    2: UsageError,
    3: VerificationError,
    4: GateError,
    5: DivergedError,
}


def _call(
    args: Sequence[str], quiet: bool, kind: Type[Report], work: Optional["_Work"] = None
) -> Any:
    from . import _pare

    code, text, message = _pare.call([str(a) for a in args], quiet)
    if work is not None:
        text, message = work.unalias(text), work.unalias(message)
    report = kind(json.loads(text)) if text is not None else None
    if code == 0:
        return report
    raise _ERRORS.get(code, Error)(message or f"pare exited with {code}", report)


def _flags(**options: Any) -> list:
    """``--flag value`` pairs for the options that are set (True flags alone, lists repeated)."""
    out: list = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            for v in value:
                out += [flag, str(v)]
        else:
            out += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return out


def _pattern(pattern: Any, block_size: Optional[Tuple[int, int]]) -> Optional[str]:
    if block_size is not None:
        if pattern is not None:
            raise UsageError("give pattern or block_size, not both")
        rows, cols = block_size
        return f"block:{int(rows)}x{int(cols)}"
    if isinstance(pattern, (tuple, list)):
        if len(pattern) != 2:
            raise UsageError(f"pattern {pattern!r}: an N:M pattern is a pair (n, m)")
        return f"{int(pattern[0])}:{int(pattern[1])}"
    return pattern


_OP_LIKE = re.compile(r"^[A-Z][A-Za-z0-9_]*$")


def _names(names: Union[str, Iterable[str], None], what: str, model: str) -> list:
    """Weights to keep or leave, as the CLI's regular expressions: an op type of the model's
    prunable layers (``"Conv"``, ``"DEPTHWISE_CONV_2D"``: those layers' weights), an exact
    tensor or node name, or a regular expression after ``re:`` (llm-compressor's convention)."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    out = []
    layers = None
    for n in names:
        if not isinstance(n, str):
            raise UsageError(f"{what}: {n!r} is not a string")
        if n.startswith("re:"):
            out.append(n[3:])
            continue
        if _OP_LIKE.match(n):
            if layers is None:
                layers = _call(["inspect", model], True, InspectReport).layers
            weights = [layer.weight for layer in layers if layer.op == n]
            if weights:
                out += ["^" + re.escape(w) + "$" for w in weights]
                continue
        out.append("^" + re.escape(n) + "$")
    return out


def _shapes(input_shape: Optional[Dict[str, Sequence[int]]]) -> list:
    if not input_shape:
        return []
    return [f"{k}={','.join(str(int(d)) for d in v)}" for k, v in input_shape.items()]


def _is_tflite(data: bytes) -> bool:
    return len(data) >= 8 and data[4:8] == b"TFL3"


class _Work:
    """A temporary directory for model bytes, data arrays and in-memory outputs."""

    def __enter__(self) -> "_Work":
        self._dir = tempfile.TemporaryDirectory(prefix="pare-")
        self.path = Path(self._dir.name)
        # Files made here, and what reports and messages call them instead.
        self._aliases: Dict[str, str] = {}
        return self

    def unalias(self, text: Optional[str]) -> Optional[str]:
        """``text`` with the temporary files named for what they hold (``<calib array>``)."""
        if text is None:
            return None
        for path, alias in self._aliases.items():
            text = text.replace(json.dumps(path)[1:-1], alias).replace(path, alias)
        return text

    def __exit__(self, *exc: Any) -> None:
        self._dir.cleanup()

    def model(self, model: ModelLike, stem: str) -> Tuple[str, Optional[str]]:
        """The path of ``model`` (written here from bytes) and its extension."""
        if isinstance(model, (bytes, bytearray, memoryview)):
            data = bytes(model)
            ext = ".tflite" if _is_tflite(data) else ".onnx"
            p = self.path / f"{stem}{ext}"
            p.write_bytes(data)
            self._aliases[os.fspath(p)] = f"<{stem} bytes>"
            return os.fspath(p), ext
        if not isinstance(model, (str, os.PathLike)):
            raise UsageError(
                f"a model is a path or bytes, not {type(model).__name__} "
                "(for an onnx.ModelProto pass model.SerializeToString())"
            )
        return os.fspath(model), None

    def output(self, src: str, ext: Optional[str], dst: Any) -> Tuple[str, bool]:
        """Where to write: ``dst``, or a file here whose bytes are returned."""
        if dst is not None:
            return os.fspath(dst), False
        if ext is None:
            with open(src, "rb") as f:
                ext = ".tflite" if _is_tflite(f.read(8)) else ".onnx"
        out = os.fspath(self.path / f"output{ext}")
        self._aliases[out] = "<output bytes>"
        return out, True

    def data(self, value: DataLike, stem: str, what: str) -> Tuple[Optional[str], Optional[str]]:
        if value is None:
            return None, None
        path, labels = _data.write(value, self.path, stem, what)
        if not _data.is_path(value):
            self._aliases[path] = f"<{what} array>"
            if labels is not None:
                self._aliases[labels] = f"<{what} labels>"
        return path, labels

    def labels(self, value: Any) -> Optional[str]:
        if value is None:
            return None
        path = _data.write_labels(value, self.path, "labels")
        if not _data.is_path(value):
            self._aliases[path] = "<labels array>"
        return path


def _keep_bytes(report: Report, write: Any, out: str) -> Any:
    """Puts the model written to ``out`` (``write``: the write report) into ``report.model``."""
    files = write.get("files") or []
    if len(files) > 1:
        raise UsageError(
            f"the written model has {len(files)} files ({', '.join(files)}): give a destination"
        )
    report.__dict__["model"] = Path(out).read_bytes()
    return report


def inspect(model: ModelLike) -> InspectReport:
    """A model's format, inputs and outputs, ops, per-layer weights, params, sparsity, MACs and
    sizes (``pare inspect --json``)."""
    with _Work() as w:
        src, _ = w.model(model, "model")
        return _call(["inspect", src], True, InspectReport, w)


def convert(
    model: ModelLike,
    output: Union[str, "os.PathLike[str]", None] = None,
    *,
    storage: Optional[str] = None,
    input_shape: Optional[Dict[str, Sequence[int]]] = None,
    external_data: Union[bool, str, None] = None,
    inline_data: bool = False,
    force: bool = False,
    verify: bool = True,
    require_verified: bool = False,
    compressed_sizes: bool = False,
    quiet: bool = False,
) -> WriteReport:
    """Re-serializes a model without changing its meaning (``pare convert``). Without
    ``output`` the written bytes are in the report's ``model``."""
    with _Work() as w:
        src, ext = w.model(model, "model")
        out, keep = w.output(src, ext, output)
        args = ["convert", src, "-o", out]
        args += _external(external_data)
        args += _flags(
            storage=storage,
            input_shape=_shapes(input_shape),
            inline_data=inline_data,
            force=force or keep,
            no_verify=not verify,
            require_verified=require_verified,
            compressed_sizes=compressed_sizes,
        )
        r = _call(args, quiet, WriteReport, w)
        return _keep_bytes(r, r, out) if keep else r


def _external(external_data: Union[bool, str, None]) -> list:
    if external_data is None or external_data is False:
        return []
    if external_data is True:
        return ["--external-data"]
    return [f"--external-data={os.fspath(external_data)}"]


def prune(
    model: ModelLike,
    output: Union[str, "os.PathLike[str]", None] = None,
    *,
    sparsity: Optional[float] = None,
    scope: Optional[str] = None,
    pattern: Union[str, Tuple[int, int], None] = None,
    block_size: Optional[Tuple[int, int]] = None,
    min_params: Optional[int] = None,
    max_layer_sparsity: Optional[float] = None,
    targets: Union[str, Iterable[str], None] = None,
    ignore: Union[str, Iterable[str], None] = None,
    config: Optional[str] = None,
    sensitivity: Optional[str] = None,
    channels: Optional[float] = None,
    target_macs: Optional[float] = None,
    target_params: Optional[float] = None,
    importance: Optional[str] = None,
    channel_scope: Optional[str] = None,
    round_to: Optional[int] = None,
    max_layer_ratio: Optional[float] = None,
    fold: bool = True,
    calib: DataLike = None,
    criterion: Optional[str] = None,
    calib_samples: Optional[int] = None,
    calib_batch_size: Optional[int] = None,
    dampening: Optional[float] = None,
    refit: bool = True,
    one_pass: bool = False,
    correct: bool = True,
    validate: DataLike = None,
    labels: Any = None,
    samples: Optional[int] = None,
    batch_size: Optional[int] = None,
    input_shape: Optional[Dict[str, Sequence[int]]] = None,
    seed: Optional[int] = None,
    max_accuracy_drop: Optional[float] = None,
    min_cosine: Optional[float] = None,
    min_top1_agreement: Optional[float] = None,
    latency_runs: Optional[int] = None,
    warmup: Optional[int] = None,
    keep_failed: bool = False,
    search: bool = False,
    search_step: Optional[float] = None,
    report: Optional[str] = None,
    storage: Optional[str] = None,
    external_data: Union[bool, str, None] = None,
    inline_data: bool = False,
    force: bool = False,
    verify: bool = True,
    require_verified: bool = False,
    compressed_sizes: bool = False,
    quiet: bool = False,
) -> PruneReport:
    """Prunes a model (``pare prune``; ``pare prune --help`` documents every option).

    - ``pattern``: ``"unstructured"``, ``"2:4"`` or ``(2, 4)``, ``"block:4x1"``; or
      ``block_size=(4, 1)``.
    - ``targets`` / ``ignore``: only / never these weights: by op type (``"Conv"``), exact
      tensor or node name, or regular expression after ``re:`` (``ignore=["re:^classifier"]``).
    - ``calib`` and ``validate``: see :data:`DataLike`; ``(inputs, labels)`` items carry
      labels for ``validate``. int8 models quantize float data with their own parameters.
    - ``output=None``: the pruned model's bytes are in the report's ``model``.

    Raises :class:`GateError` when a gate fails (``report`` attached), :class:`UsageError`,
    :class:`ModelError`, :class:`VerificationError` / :class:`DivergedError` with
    ``require_verified``.
    """
    with _Work() as w:
        src, ext = w.model(model, "model")
        out, keep = w.output(src, ext, output)
        calib_path, _ = w.data(calib, "calib", "calib")
        validate_path, carried = w.data(validate, "validate", "validate")
        labels_path = w.labels(labels) if labels is not None else carried
        args = ["prune", src, "-o", out]
        args += _flags(
            sparsity=sparsity,
            scope=scope,
            pattern=_pattern(pattern, block_size),
            min_params=min_params,
            max_layer_sparsity=max_layer_sparsity,
            include=_names(targets, "targets", src),
            exclude=_names(ignore, "ignore", src),
            config=config,
            sensitivity=sensitivity,
            channels=channels,
            target_macs=target_macs,
            target_params=target_params,
            importance=importance,
            channel_scope=channel_scope,
            round_to=round_to,
            max_layer_ratio=max_layer_ratio,
            no_fold=not fold,
            calib=calib_path,
            criterion=criterion,
            calib_samples=calib_samples,
            calib_batch_size=calib_batch_size,
            dampening=dampening,
            no_refit=not refit,
            one_pass=one_pass,
            no_correct=not correct,
            validate=validate_path,
            labels=labels_path,
            samples=samples,
            batch_size=batch_size,
            input_shape=_shapes(input_shape),
            seed=seed,
            max_accuracy_drop=max_accuracy_drop,
            min_cosine=min_cosine,
            min_top1_agreement=min_top1_agreement,
            latency_runs=latency_runs,
            warmup=warmup,
            keep_failed=keep_failed,
            search=search,
            search_step=search_step,
            report=report,
            storage=storage,
            inline_data=inline_data,
            force=force or keep,
            no_verify=not verify,
            require_verified=require_verified,
            compressed_sizes=compressed_sizes,
        )
        args += _external(external_data)
        r = _call(args, quiet, PruneReport, w)
        return _keep_bytes(r, r["write"], out) if keep and r.get("write") else r


def validate(
    original: ModelLike,
    candidate: ModelLike,
    *,
    data: DataLike = "random",
    labels: Any = None,
    samples: Optional[int] = None,
    batch_size: Optional[int] = None,
    input_shape: Optional[Dict[str, Sequence[int]]] = None,
    seed: Optional[int] = None,
    max_accuracy_drop: Optional[float] = None,
    min_cosine: Optional[float] = None,
    min_top1_agreement: Optional[float] = None,
    latency_runs: Optional[int] = None,
    warmup: Optional[int] = None,
    report: Optional[str] = None,
    quiet: bool = False,
) -> ValidateReport:
    """Compares a candidate with its original in tract on ``data`` (``pare validate``):
    per-output agreement, accuracy against labels, latency, sizes. Raises :class:`GateError`
    (with the report) when a gate fails."""
    with _Work() as w:
        a, _ = w.model(original, "original")
        b, _ = w.model(candidate, "candidate")
        data_path, carried = w.data(data, "data", "data")
        args = ["validate", a, b]
        args += _flags(
            data=data_path,
            labels=w.labels(labels) if labels is not None else carried,
            samples=samples,
            batch_size=batch_size,
            input_shape=_shapes(input_shape),
            seed=seed,
            max_accuracy_drop=max_accuracy_drop,
            min_cosine=min_cosine,
            min_top1_agreement=min_top1_agreement,
            latency_runs=latency_runs,
            warmup=warmup,
            report=report,
        )
        return _call(args, quiet, ValidateReport, w)


def sensitivity(
    model: ModelLike,
    *,
    data: DataLike = "random",
    labels: Any = None,
    samples: Optional[int] = None,
    batch_size: Optional[int] = None,
    input_shape: Optional[Dict[str, Sequence[int]]] = None,
    seed: Optional[int] = None,
    ratios: Optional[Sequence[float]] = None,
    metric: Optional[str] = None,
    pattern: Optional[str] = None,
    min_params: Optional[int] = None,
    targets: Union[str, Iterable[str], None] = None,
    ignore: Union[str, Iterable[str], None] = None,
    plot: Optional[str] = None,
    report: Optional[str] = None,
    quiet: bool = False,
) -> SensitivityReport:
    """Prunes each layer alone at a ladder of sparsities and measures the loss on ``data``
    (``pare sensitivity``); ``report=`` writes the profile ``prune(scope="sensitivity")``
    reads."""
    with _Work() as w:
        src, _ = w.model(model, "model")
        data_path, carried = w.data(data, "data", "data")
        args = ["sensitivity", src]
        args += _flags(
            data=data_path,
            labels=w.labels(labels) if labels is not None else carried,
            samples=samples,
            batch_size=batch_size,
            input_shape=_shapes(input_shape),
            seed=seed,
            ratios=None if ratios is None else ",".join(str(r) for r in ratios),
            metric=metric,
            pattern=pattern,
            min_params=min_params,
            include=_names(targets, "targets", src),
            exclude=_names(ignore, "ignore", src),
            plot=plot,
            report=report,
        )
        return _call(args, quiet, SensitivityReport, w)
