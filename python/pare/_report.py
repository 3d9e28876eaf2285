"""Reports: the JSON the CLI prints with ``--json``, as dictionaries with attribute access."""

from __future__ import annotations

import copy
from typing import Any, Optional


def _wrap(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value, Report):
        return Report(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class Report(dict):
    """A report with the fields of the CLI's ``--json`` output (``pare.prune/1``, …).

    Fields read as attributes or keys (``r.write.verification.verdict`` or
    ``r["write"]["verification"]["verdict"]``); ``to_dict()`` gives plain JSON data.
    """

    def __init__(self, data: Any = (), model: Optional[bytes] = None) -> None:
        super().__init__(data)
        for k, v in list(self.items()):
            dict.__setitem__(self, k, _wrap(v))
        self.__dict__["model"] = model

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__} has no field {name!r} (fields: {', '.join(self)})"
            ) from None

    def to_dict(self) -> dict:
        """The report as plain dicts and lists, as ``json.loads`` of the CLI's output gives."""
        return copy.deepcopy(_plain(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict.__repr__(self)})"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class InspectReport(Report):
    """``pare.inspect/1``: format, inputs/outputs, ops, layers, totals and sizes."""


class WriteReport(Report):
    """What ``convert`` wrote: files, sizes, storage and the verification.

    ``model`` holds the written model's bytes when no destination was given.
    """

    @property
    def verified(self) -> bool:
        """The written model's outputs agree with the original's in tract."""
        v = self.get("verification") or {}
        return bool(v.get("verified"))


class PruneReport(Report):
    """``pare.prune/1``: layers, channels, calibration, validation, search and the write.

    ``model`` holds the pruned model's bytes when no destination was given.
    """

    @property
    def verified(self) -> bool:
        """The written model's outputs agree with the original's in tract."""
        w = self.get("write") or {}
        v = w.get("verification") or {}
        return bool(v.get("verified"))


class ValidateReport(Report):
    """``pare.validate/1``: agreement, accuracy, latency and sizes; ``passed`` for the gates."""


class SensitivityReport(Report):
    """``pare.sensitivity/1``: per-layer loss at each tried sparsity."""
