"""Colours, legend and table rows of permutationally equivalent (PE) sets (pure builders, no Streamlit).

One colour per PE set with more than one atom, from colour-blind-safe
palettes: Okabe & Ito's (without its black), then Paul Tol's "muted". Atoms
that are their own PE set (singletons) share one neutral grey, and the legend
says so. The colours go to ``aff_app.figures.viewer.molecule_view_html(colors=...)``;
:func:`legend_html` is the key shown beside the 3D view.
"""

from __future__ import annotations

import html as _html
from typing import Sequence

import numpy as np

__all__ = [
    "OKABE_ITO",
    "PALETTE",
    "SINGLETON_COLOR",
    "TOL_MUTED",
    "atom_label",
    "legend_html",
    "set_colors",
    "set_rows",
]

#: Okabe & Ito (2008) colour-blind-safe palette, black left out (it reads as "no colour" on atoms).
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
#: Paul Tol's "muted" qualitative palette (its pale grey for missing data left out).
TOL_MUTED = ("#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499")
#: Multi-atom PE sets take these in order (cycling after 16 sets).
PALETTE = OKABE_ITO + TOL_MUTED
#: Shared by every single-atom PE set.
SINGLETON_COLOR = "#B0B0B0"


def atom_label(z: int, index: int) -> str:
    """``'C0'``, ``'H11'``: element symbol and 0-based atom index."""
    from ase.data import chemical_symbols

    return f"{chemical_symbols[int(z)]}{int(index)}"


def set_colors(pe_sets: Sequence[Sequence[int]], n_atoms: int) -> tuple[list[str], list[str]]:
    """Colour of each atom and of each set.

    Parameters
    ----------
    pe_sets : sequence of sequences of int
        A partition of 0..N-1.
    n_atoms : int
        N.

    Returns
    -------
    atom_colors : list of str, length N
        ``'#rrggbb'`` per atom (for the 3D view).
    colors : list of str, one per set
        Multi-atom sets: ``PALETTE`` in order; singletons: ``SINGLETON_COLOR``.
    """
    atom_colors = [SINGLETON_COLOR] * int(n_atoms)
    colors = []
    k = 0
    for s in pe_sets:
        s = [int(i) for i in s]
        if len(s) > 1:
            c = PALETTE[k % len(PALETTE)]
            k += 1
        else:
            c = SINGLETON_COLOR
        colors.append(c)
        for i in s:
            atom_colors[i] = c
    return atom_colors, colors


def _elements(z, s) -> str:
    from ase.data import chemical_symbols

    syms = sorted({chemical_symbols[int(z[i])] for i in s})
    return ", ".join(syms)


def set_rows(pe_sets: Sequence[Sequence[int]], z) -> list[dict]:
    """One row per PE set for a table: set (1-based), element(s), atoms (0-based), size l_i, colour."""
    z = np.asarray(z)
    _, colors = set_colors(pe_sets, z.size)
    rows = []
    for k, (s, c) in enumerate(zip(pe_sets, colors)):
        s = [int(i) for i in s]
        rows.append(
            {
                "set": k + 1,
                "element(s)": _elements(z, s),
                "atoms": ", ".join(atom_label(z[i], i) for i in s),
                "size l_i": len(s),
                "colour": c,
            }
        )
    return rows


def legend_html(pe_sets: Sequence[Sequence[int]], z, *, max_rows: int = 24) -> str:
    """HTML key for the 3D view: colour swatch → set number, element(s), atoms.

    Multi-atom sets get one line each; single-atom sets are gathered on one
    grey line ("each its own PE set"). At most ``max_rows`` multi-atom lines
    are listed (the table lists all).
    """
    z = np.asarray(z)
    _, colors = set_colors(pe_sets, z.size)
    swatch = (
        '<span style="display:inline-block;width:0.95em;height:0.95em;border-radius:50%;'
        'background:{c};border:1px solid #555;vertical-align:-0.12em;margin-right:0.4em"></span>'
    )
    lines = []
    singles = []
    multi = [(k, s, c) for k, (s, c) in enumerate(zip(pe_sets, colors)) if len(s) > 1]
    for k, s, c in multi[:max_rows]:
        atoms = " ".join(atom_label(z[i], i) for i in s)
        lines.append(
            f'<div style="margin:0.15em 0">{swatch.format(c=c)}<b>set {k + 1}</b> · '
            f"{len(s)} {_html.escape(_elements(z, s))} · {_html.escape(atoms)}</div>"
        )
    if len(multi) > max_rows:
        lines.append(f"<div>… and {len(multi) - max_rows} more multi-atom sets (see the table)</div>")
    for k, s in enumerate(pe_sets):
        if len(s) == 1:
            singles.append(f"{k + 1}:{atom_label(z[s[0]], s[0])}")
    if singles:
        lines.append(
            f'<div style="margin:0.15em 0">{swatch.format(c=SINGLETON_COLOR)}<b>single-atom sets</b> '
            f"({len(singles)}, each atom its own PE set, all drawn grey) · {_html.escape(' '.join(singles))}</div>"
        )
    return (
        '<div class="aff-pe-legend" style="font-size:0.9rem;line-height:1.35">'
        '<div style="font-weight:600;margin-bottom:0.2em">PE sets (colour = set; atom indices 0-based)</div>'
        + "".join(lines)
        + "</div>"
    )

