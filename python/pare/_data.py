"""Data as users have it (numpy arrays, dicts of arrays, iterables of batches, paths) turned
into the ``.npy``/``.npz`` files the library streams, in a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

#: What ``calib=``/``data=``/``validate=`` accept (see ``pare.prune``).
DataLike = Any


def is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _to_numpy(x: Any, what: str) -> Any:
    import numpy as np

    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch.Tensor
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except Exception as e:  # noqa: BLE001 - reported as a usage error with the reason
        raise TypeError(f"{what}: not an array ({type(x).__name__}: {e})") from None
    if a.dtype == object:
        raise TypeError(f"{what}: not a numeric array ({type(x).__name__})")
    return np.ascontiguousarray(a)


def _is_array(x: Any) -> bool:
    return hasattr(x, "__array__") or hasattr(x, "__array_interface__")


def _split(item: Any, what: str) -> Tuple[Any, Optional[Any]]:
    """An item of data: inputs (array or dict) and optional labels, from ``(x, y)``."""
    if isinstance(item, tuple):
        if len(item) != 2:
            raise TypeError(
                f"{what}: a tuple must be (inputs, labels), got {len(item)} elements"
            )
        return item[0], item[1]
    return item, None


def _inputs(x: Any, what: str) -> Dict[Optional[str], Any]:
    if isinstance(x, dict):
        if not x:
            raise ValueError(f"{what}: an empty dict")
        return {str(k): _to_numpy(v, f"{what}[{k!r}]") for k, v in x.items()}
    return {None: _to_numpy(x, what)}


def gather(value: DataLike, what: str) -> Tuple[Dict[Optional[str], Any], Optional[Any]]:
    """Arrays by input name (``None`` for a single unnamed input) and labels, with the samples
    on axis 0; an iterable's batches are concatenated along it."""
    import numpy as np

    if isinstance(value, dict) or _is_array(value) or isinstance(value, tuple):
        x, y = _split(value, what)
        return _inputs(x, what), None if y is None else _to_numpy(y, f"{what} labels")
    try:
        items = iter(value)
    except TypeError:
        raise TypeError(
            f"{what}: expected a numpy array, a dict of arrays, an iterable of batches or a "
            f"path, got {type(value).__name__}"
        ) from None
    parts: Dict[Optional[str], List[Any]] = {}
    labels: List[Any] = []
    n = 0
    for i, item in enumerate(items):
        x, y = _split(item, f"{what} batch {i}")
        arrays = _inputs(x, f"{what} batch {i}")
        if parts and set(arrays) != set(parts):
            raise ValueError(
                f"{what} batch {i}: inputs {sorted(map(str, arrays))} differ from the first "
                f"batch's {sorted(map(str, parts))}"
            )
        for k, a in arrays.items():
            parts.setdefault(k, []).append(a)
        if i > 0 and (y is not None) != bool(labels):
            raise ValueError(f"{what} batch {i}: labels in some batches but not in others")
        if y is not None:
            labels.append(_to_numpy(y, f"{what} batch {i} labels"))
        n = i + 1
    if n == 0:
        raise ValueError(f"{what}: the iterable yielded no batch")
    out = {}
    for k, arrays in parts.items():
        try:
            out[k] = np.concatenate(arrays, axis=0)
        except ValueError as e:
            raise ValueError(f"{what}: batches of input {k or 'x'} do not stack: {e}") from None
    return out, np.concatenate(labels, axis=0) if labels else None


def write(value: DataLike, tmp: Path, stem: str, what: str) -> Tuple[str, Optional[str]]:
    """The path the CLI reads for ``value`` (written into ``tmp`` unless it is already a path
    or ``"random"``), and the path of labels it carried (``(x, y)`` items)."""
    import numpy as np

    if is_path(value):
        return os.fspath(value), None
    arrays, labels = gather(value, what)
    labels_path = None
    if list(arrays) == [None]:
        path = tmp / f"{stem}.npy"
        np.save(path, arrays[None])
        if labels is not None:
            labels_path = tmp / f"{stem}.labels.npy"
            np.save(labels_path, labels)
    else:
        if None in arrays:
            raise ValueError(f"{what}: mixes named and unnamed inputs")
        if labels is not None:
            if "labels" in arrays:
                raise ValueError(f"{what}: labels given twice (as a key and in (x, y))")
            arrays = {**arrays, "labels": labels}
        path = tmp / f"{stem}.npz"
        np.savez(path, **arrays)
    return os.fspath(path), None if labels_path is None else os.fspath(labels_path)


def write_labels(value: Any, tmp: Path, stem: str) -> str:
    import numpy as np

    if is_path(value):
        return os.fspath(value)
    path = tmp / f"{stem}.npy"
    np.save(path, _to_numpy(value, "labels"))
    return os.fspath(path)
