"""The fit-cache key: what makes two fit requests the same fit.

A fit is determined by the data (its fingerprint), the settings that change
the fitted numbers, the split (``n_train`` and ``seed``; anything else the
caller varies goes in ``extra``) and the code that fits (``aff_app.__version__``,
so a new version never serves a model the old one fitted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, Mapping

from aff_app.workflows.pipeline import TrainSettings
from aff_app.workspace.records import WorkspaceError

__all__ = ["fit_key", "IGNORED_SETTINGS"]

#: Settings that decide whether or when a fit may run, never what it yields (and ``keep_factors``: the
#: factors are not written to the model file), so they are left out of the key.
IGNORED_SETTINGS = frozenset({"keep_factors", "budget_bytes", "peer_timeout_s"})


def _canonical(value: Any, where: str) -> Any:
    """Plain JSON values; 4 and 4.0 are one γ, so numbers other than bools become floats."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        x = float(value)
        if not math.isfinite(x):
            raise WorkspaceError(f"the fit-cache key needs finite numbers, {where} is {value!r}")
        return x
    if isinstance(value, Mapping):
        return {str(k): _canonical(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _canonical(value.tolist(), where)
    raise WorkspaceError(f"the fit-cache key takes plain values; {where} is a {type(value).__name__}")


def fit_key(data_fingerprint: str, settings: TrainSettings, n_train: int, seed: int,
            extra: Mapping[str, Any] | None = None) -> str:
    """SHA-256 hex key of one fit request (the same request from any session gives the same key).

    Parameters
    ----------
    data_fingerprint : str
        ``Trajectory.fingerprint`` of the training data.
    settings : TrainSettings
        All fields count except :data:`IGNORED_SETTINGS`.
    n_train, seed : int
        The split of :func:`aff_app.workflows.pipeline.train`.
    extra : mapping, optional
        Anything else that changes the fit (``n_test``, a symmetry override, ...), as plain values.

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    if not isinstance(settings, TrainSettings):
        raise WorkspaceError(f"settings must be a TrainSettings, got {type(settings).__name__}")
    if not isinstance(data_fingerprint, str) or not data_fingerprint:
        raise WorkspaceError("the fit-cache key needs the data's fingerprint")
    from aff_app import __version__

    fields = {k: v for k, v in dataclasses.asdict(settings).items() if k not in IGNORED_SETTINGS}
    request = {
        "code_version": __version__,
        "data": data_fingerprint,
        "settings": _canonical(fields, "settings"),
        "n_train": int(n_train),
        "seed": int(seed),
        "extra": _canonical(dict(extra or {}), "extra"),
    }
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()
