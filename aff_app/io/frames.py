"""ASE-style frame selection (``':'``, ``'::10'``, ``'-500:'``, ``'5'``), the same for every format."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from aff_app.io.errors import FrameSelectionError


# -- frame selection ---------------------------------------------------------------
_INT_RE = re.compile(r"^[+-]?\d+$")


def parse_frames(text: str | int | slice | None) -> slice | int:
    """Parse an ASE-style frame selection.

    Parameters
    ----------
    text : str, int, slice or None
        ``':'`` (all), ``'::10'`` (every 10th), ``'-500:'`` (last 500),
        ``'5'`` (frame 5 only), ``'10:20:2'``; None or ``''`` mean all frames.

    Returns
    -------
    slice or int

    Raises
    ------
    FrameSelectionError
        Text that is not ``int`` or ``start:stop:step`` with integer parts, or a
        zero step.
    """
    if text is None:
        return slice(None)
    if isinstance(text, slice):
        if text.step == 0:
            raise FrameSelectionError("frame selection step must not be zero")
        return text
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        return int(text)
    s = str(text).strip()
    if s == "":
        return slice(None)
    if _INT_RE.match(s):
        return int(s)
    parts = s.split(":")
    if len(parts) > 3:
        raise FrameSelectionError(
            f"cannot parse frame selection {text!r}: use start:stop:step (e.g. ':', '::10', '-500:', '10:20:2') or one index"
        )
    values: list[int | None] = []
    for p in parts:
        p = p.strip()
        if p == "":
            values.append(None)
        elif _INT_RE.match(p):
            values.append(int(p))
        else:
            raise FrameSelectionError(
                f"cannot parse frame selection {text!r}: {p!r} is not an integer "
                "(use start:stop:step, e.g. ':', '::10', '-500:', '10:20:2')"
            )
    while len(values) < 3:
        values.append(None)
    if values[2] == 0:
        raise FrameSelectionError(f"frame selection {text!r}: step must not be zero")
    return slice(values[0], values[1], values[2])


def _frames_text(frames: Any) -> str:
    """Canonical text of a frame selection for provenance."""
    sel = parse_frames(frames)
    if isinstance(sel, int):
        return str(sel)
    parts = ["" if v is None else str(v) for v in (sel.start, sel.stop, sel.step)]
    text = ":".join(parts).rstrip(":") if sel.step is None else ":".join(parts)
    return text if ":" in text else text + ":"


def _select_indices(n_total: int, sel: slice | int, frames: Any, name: str) -> np.ndarray:
    """Indices into ``n_total`` frames chosen by ``sel`` (errors name the file)."""
    if isinstance(sel, int):
        if not -n_total <= sel < n_total:
            raise FrameSelectionError(
                f"frame {sel} is out of range: {name!r} has {n_total} frames (valid: {-n_total}..{n_total - 1})"
            )
        return np.array([sel % n_total])
    idx = np.arange(n_total)[sel]
    if idx.size == 0:
        raise FrameSelectionError(f"frame selection {str(frames)!r} selects no frames from the {n_total} of {name!r}")
    return idx


