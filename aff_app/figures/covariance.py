"""Force covariance heatmaps, the paper's Fig. 1 (pure plotly builders, no Streamlit).

Matrices are ordered (frame, atom, component), as ``aff_app.gp.covariance``
returns them. Every heatmap uses a diverging colour scale (``RdBu_r``: blue
negative, white zero, red positive) symmetric about zero (``zmin = −zmax``,
``zmid = 0``), so white always means "no covariance". Tick labels name the
element, the 0-based atom index and the component (``C0 x``); when there are
too many components to label, each atom is labelled once, at its x component.
Blocks belonging to different configurations are separated by lines and named
above the plot. With ``set_sizes`` (atoms listed set by set), the blocks AFF
keeps, one PE set against itself in any pair of frames, are outlined: every
entry outside an outline is coupling the AFF decomposition leaves out.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from aff_app.errors import AFFError
from aff_app.figures.symmetry import atom_label

__all__ = [
    "COLORSCALE",
    "CovarianceFigureError",
    "MAX_COMPONENT_TICKS",
    "component_labels",
    "covariance_heatmap",
]

#: Diverging, red = positive, blue = negative.
COLORSCALE = "RdBu_r"
#: Up to this many rows, every component gets a tick label (``C0 x``); above, one per atom.
MAX_COMPONENT_TICKS = 24
#: Most atom tick labels on one axis; above, every second (third...) atom is labelled.
MAX_ATOM_TICKS = 72


class CovarianceFigureError(AFFError, ValueError):
    """A matrix whose shape does not match the atoms and frames it is said to cover."""


def component_labels(z, atoms: Sequence[int] | None = None, frames: Sequence[int] | None = None) -> list[str]:
    """Unique label of each row of a (frame, atom, component)-ordered matrix.

    Parameters
    ----------
    z : array_like of int, shape (N,)
    atoms : sequence of int, optional
        Atoms covered (default all N).
    frames : sequence of int, optional
        Frame numbers of the blocks; None for a matrix with no frame blocks
        (e.g. an empirical correlation over the whole trajectory).

    Returns
    -------
    list of str
        ``'C0 x'`` without frames, ``'frame 12 · C0 x'`` with them.
    """
    z = np.asarray(z)
    atoms = range(z.size) if atoms is None else [int(a) for a in atoms]
    base = [f"{atom_label(z[a], a)} {c}" for a in atoms for c in "xyz"]
    if frames is None:
        return base
    frames = [int(f) for f in frames]
    if len(set(frames)) != len(frames):
        raise CovarianceFigureError(f"frames must be distinct, got {frames}")
    return [f"frame {f} · {b}" for f in frames for b in base]


def covariance_heatmap(
    C,
    z,
    *,
    atoms: Sequence[int] | None = None,
    frames: Sequence[int] | None = None,
    title: str,
    colorbar_title: str,
    zmax: float | None = None,
    axis_title: str | None = None,
    height: int = 620,
    set_sizes: Sequence[int] | None = None,
) -> go.Figure:
    """Heatmap of a force covariance or correlation matrix.

    Parameters
    ----------
    C : array_like, shape (3·l·k, 3·l·k)
        Matrix ordered (frame, atom, component).
    z : array_like of int, shape (N,)
        Atomic numbers (for labels).
    atoms : sequence of int, optional
        The l atoms covered (default all N).
    frames : sequence of int, optional
        The k frames of the blocks (None: no frame blocks, k = 1).
    title : str
        Figure title; a second line after ``"\n"`` becomes the subtitle.
    colorbar_title : str
        Quantity and unit of the colour (e.g. ``'correlation (unitless)'``).
    zmax : float, optional
        Colour range ±zmax; default max |C| (1 for an all-zero matrix).
    axis_title : str, optional
        Both axis titles (default: says how the ticks are placed) (rows and columns are ordered alike; frame blocks are named above the plot).
    height : int
        Pixels.
    set_sizes : sequence of int, optional
        Sizes of the PE sets in the order of ``atoms`` (which must list them set
        by set, as :func:`aff_app.gp.covariance.set_order` does): the kept blocks
        are outlined.

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Heatmap`` trace with ``zmin = −zmax``, ``zmid = 0``, colour bar titled.
    """
    C = np.asarray(C, dtype=np.float64)
    labels = component_labels(z, atoms, frames)
    n = len(labels)
    if C.shape != (n, n):
        n_atoms = np.asarray(z).size if atoms is None else len(list(atoms))
        k = 1 if frames is None else len(list(frames))
        raise CovarianceFigureError(f"C has shape {C.shape}; {n_atoms} atoms × 3 × {k} frames needs ({n}, {n})")
    if zmax is None:
        zmax = float(np.max(np.abs(C))) if C.size else 1.0
    if not (np.isfinite(zmax) and zmax > 0):
        zmax = 1.0
    per_block = n if frames is None else n // len(list(frames))
    short = [lab.split(" · ", 1)[-1] for lab in labels]  # 'C0 x'
    if n <= MAX_COMPONENT_TICKS:
        tick_idx = list(range(n))
        ticktext = short
    else:  # one tick per atom, at its x component
        atom_rows = list(range(0, n, 3))
        step = int(np.ceil(len(atom_rows) / MAX_ATOM_TICKS))
        tick_idx = atom_rows[::step]
        ticktext = [short[i].rsplit(" ", 1)[0] for i in tick_idx]
    tickvals = [labels[i] for i in tick_idx]

    fig = go.Figure(
        go.Heatmap(
            z=C,
            x=labels,
            y=labels,
            colorscale=COLORSCALE,
            zmin=-zmax,
            zmax=zmax,
            zmid=0.0,
            colorbar={"title": {"text": colorbar_title, "side": "right"}, "thickness": 14},
            hovertemplate="row: %{y}<br>column: %{x}<br>value: %{z:.3g}<extra></extra>",
        )
    )
    if axis_title is None:
        axis_title = (
            "force component (atom, direction)" if n <= MAX_COMPONENT_TICKS
            else "force components (atom · x, y, z)"
        )
    tick_font = {"size": 10 if len(tick_idx) <= 24 else 9}
    if frames is not None and len(list(frames)) > 1:
        frames = [int(f) for f in frames]
        for b in range(1, len(frames)):
            pos = b * per_block - 0.5
            line = {"color": "#222", "width": 1.5}
            fig.add_shape(type="line", x0=pos, x1=pos, y0=-0.5, y1=n - 0.5, xref="x", yref="y", line=line)
            fig.add_shape(type="line", y0=pos, y1=pos, x0=-0.5, x1=n - 0.5, xref="x", yref="y", line=line)
        for b, f in enumerate(frames):
            fig.add_annotation(
                x=b * per_block + (per_block - 1) / 2, y=-0.5, xref="x", yref="y", yanchor="bottom",
                text=f"<b>frame {f}</b>", showarrow=False, font={"size": 11},
            )
    if set_sizes is not None:
        sizes = [int(v) for v in set_sizes]
        if 3 * sum(sizes) != per_block:
            raise CovarianceFigureError(f"set sizes {sizes} cover {sum(sizes)} atoms; the matrix has {per_block // 3} per frame")
        starts = 3 * np.concatenate([[0], np.cumsum(sizes)[:-1]])
        n_blocks = n // per_block
        outline = {"color": "rgba(20, 20, 20, 0.85)", "width": 1.2}
        for fa in range(n_blocks):
            for fb in range(n_blocks):
                for s0, size in zip(starts, sizes):
                    x0, y0 = fa * per_block + s0 - 0.5, fb * per_block + s0 - 0.5
                    fig.add_shape(type="rect", x0=x0, x1=x0 + 3 * size, y0=y0, y1=y0 + 3 * size, xref="x", yref="y",
                                  line=outline, fillcolor="rgba(0,0,0,0)")
    main, _, sub = title.partition("\n")
    title_spec = {"text": main, "x": 0.0, "xanchor": "left", "y": 0.985, "yanchor": "top", "font": {"size": 15}}
    if sub:
        title_spec["subtitle"] = {"text": sub, "font": {"size": 12, "color": "#555"}}
    fig.update_layout(
        title=title_spec,
        height=height,
        margin={"l": 70, "r": 10, "t": 95 if sub else 70, "b": 60},
    )
    fig.update_xaxes(title_text=axis_title, tickmode="array", tickvals=tickvals, ticktext=ticktext, tickfont=tick_font,
                     tickangle=-90, constrain="domain", showgrid=False, automargin=True, title_standoff=6)
    fig.update_yaxes(title_text=axis_title, tickmode="array", tickvals=tickvals, ticktext=ticktext, tickfont=tick_font,
                     autorange="reversed", scaleanchor="x", constrain="domain", showgrid=False, automargin=True,
                     title_standoff=6)
    return fig
