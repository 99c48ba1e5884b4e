"""Figures of the reproduction: the paper's Fig. 3 (learning curves) and Fig. 5 (uncertainty).

Pure builders: the ``points`` of :func:`aff_app.reproduce.run.run_reproduction`
in, ``plotly.graph_objects.Figure`` out. Each point is a dict with
``molecule``, ``label_set``, ``method``, ``M`` and the metrics
``force_mae`` (kcal/mol/Å), ``energy_mae`` (kcal/mol), ``train_s`` (s) and,
for AFF, ``l_norm`` (LCI / range of the test forces) and ``delta_p``
(level − PCI, fractions).

* Fig. 3: force MAE, energy MAE and training time against the training size
  M, log–log, one trace per model (AFF, our GDML and sGDML modes, the sgdml
  package).
* Fig. 5: AFF's interval length relative to the test-force range (bars) and
  the coverage gap Δp = 0.95 − PCI (line) against M.

:func:`write_png` draws a figure of this module with matplotlib (installed
with ASE), so PNGs need neither kaleido nor a browser.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from aff_app.errors import AFFError
from aff_app.units import ENERGY_UNIT, FORCE_UNIT

__all__ = [
    "FigureDataError",
    "METHOD_COLORS",
    "QUANTITIES",
    "learning_curve_figure",
    "learning_curves_grid",
    "uncertainty_figure",
    "uncertainty_grid",
    "write_png",
]

#: Colour-blind-safe (Okabe–Ito) colour and marker of each model.
METHOD_COLORS = {
    "AFF": "#0072B2",
    "GDML (aff_app)": "#E69F00",
    "sGDML (aff_app)": "#009E73",
    "sGDML (sgdml package)": "#CC79A7",
}
_MARKERS = {"AFF": "circle", "GDML (aff_app)": "square", "sGDML (aff_app)": "diamond",
            "sGDML (sgdml package)": "triangle-up"}
_MPL_MARKERS = {"circle": "o", "square": "s", "diamond": "D", "triangle-up": "^"}

#: quantity -> (axis title with unit, hover unit)
QUANTITIES = {
    "force_mae": (f"force MAE ({FORCE_UNIT})", FORCE_UNIT),
    "energy_mae": (f"energy MAE ({ENERGY_UNIT})", ENERGY_UNIT),
    "train_s": ("training time (s)", "s"),
}
M_TITLE = "training configurations M"


class FigureDataError(AFFError, ValueError):
    """Points a figure cannot show (unknown quantity, nothing to plot)."""


def _methods(points: Sequence[dict]) -> list[str]:
    known = [m for m in METHOD_COLORS if any(p["method"] == m for p in points)]
    return known + sorted({p["method"] for p in points} - set(known))


def _series(points: Sequence[dict], method: str, quantity: str) -> tuple[list, list]:
    pts = sorted((p for p in points if p["method"] == method and p.get(quantity) is not None), key=lambda p: p["M"])
    return [p["M"] for p in pts], [p[quantity] for p in pts]


def _trace(method: str, x, y, quantity: str, *, showlegend: bool = True) -> go.Scatter:
    unit = QUANTITIES[quantity][1]
    return go.Scatter(
        x=x, y=y, mode="lines+markers", name=method, legendgroup=method, showlegend=showlegend,
        line={"color": METHOD_COLORS.get(method, "#555555"), "width": 2},
        marker={"symbol": _MARKERS.get(method, "circle"), "size": 8, "color": METHOD_COLORS.get(method, "#555555")},
        hovertemplate=f"{method}<br>M = %{{x}}<br>%{{y:.4g}} {unit}<extra></extra>",
    )


def learning_curve_figure(points: Sequence[dict], *, quantity: str = "force_mae", title: str | None = None,
                          height: int = 380) -> go.Figure:
    """One panel of Fig. 3: ``quantity`` against M, log–log, one trace per model.

    Parameters
    ----------
    points : sequence of dict
        Points of ONE molecule and label set.
    quantity : {'force_mae', 'energy_mae', 'train_s'}
    """
    if quantity not in QUANTITIES:
        raise FigureDataError(f"quantity must be one of {list(QUANTITIES)}, got {quantity!r}")
    methods = [m for m in _methods(points) if _series(points, m, quantity)[0]]
    if not methods:
        raise FigureDataError(f"no point has a value for {quantity!r}")
    fig = go.Figure()
    for m in methods:
        x, y = _series(points, m, quantity)
        fig.add_trace(_trace(m, x, y, quantity))
    fig.update_xaxes(type="log", title_text=M_TITLE)
    fig.update_yaxes(type="log", title_text=QUANTITIES[quantity][0])
    fig.update_layout(title={"text": title or QUANTITIES[quantity][0], "x": 0.0, "xanchor": "left"},
                      height=height, margin={"l": 70, "r": 15, "t": 45, "b": 45}, hovermode="closest")
    return fig


def _molecules(points: Sequence[dict]) -> list[str]:
    seen: list[str] = []
    for p in points:
        if p["molecule"] not in seen:
            seen.append(p["molecule"])
    return seen


def learning_curves_grid(points: Sequence[dict], *, label_set: str | None = None, height_per_row: int = 260) -> go.Figure:
    """Fig. 3-like grid: rows force MAE, energy MAE, training time; one column per molecule.

    Every model is one legend entry (its three panels share a legend group).
    """
    if label_set is not None:
        points = [p for p in points if p["label_set"] == label_set]
    mols = _molecules(points)
    if not mols:
        raise FigureDataError("no points to plot" + (f" for label set {label_set!r}" if label_set else ""))
    rows = list(QUANTITIES)
    fig = make_subplots(rows=len(rows), cols=len(mols), subplot_titles=[m if r == 0 else "" for r in range(len(rows))
                                                                        for m in mols],
                        horizontal_spacing=0.07, vertical_spacing=0.08)
    shown: set[str] = set()
    for c, mol in enumerate(mols, start=1):
        mp = [p for p in points if p["molecule"] == mol]
        for r, q in enumerate(rows, start=1):
            for m in _methods(mp):
                x, y = _series(mp, m, q)
                if not x:
                    continue
                fig.add_trace(_trace(m, x, y, q, showlegend=m not in shown), row=r, col=c)
                shown.add(m)
            fig.update_xaxes(type="log", row=r, col=c, title_text=M_TITLE if r == len(rows) else None)
            fig.update_yaxes(type="log", row=r, col=c, title_text=QUANTITIES[q][0] if c == 1 else None)
    suffix = f" — {label_set} labels" if label_set else ""
    fig.update_layout(title={"text": "Learning curves (paper Fig. 3)" + suffix, "x": 0.0, "xanchor": "left"},
                      height=height_per_row * len(rows) + 90, width=max(420 * len(mols), 700),
                      margin={"l": 80, "r": 20, "t": 70, "b": 50}, hovermode="closest",
                      legend={"orientation": "h", "y": -0.08, "x": 0.0})
    return fig


def _aff_uncertainty(points: Sequence[dict], molecule: str) -> tuple[list, list, list]:
    pts = sorted((p for p in points if p["molecule"] == molecule and p["method"] == "AFF"
                  and p.get("l_norm") is not None), key=lambda p: p["M"])
    return [str(p["M"]) for p in pts], [p["l_norm"] for p in pts], [p["delta_p"] for p in pts]


def _bar(x, y, *, showlegend: bool) -> go.Bar:
    return go.Bar(x=x, y=y, name="L_norm = LCI / range of test forces", legendgroup="lnorm", showlegend=showlegend,
                  marker={"color": "#E7A0C0"}, hovertemplate="M = %{x}<br>L_norm = %{y:.4f}<extra></extra>")


def _gap(x, y, level: float, *, showlegend: bool) -> go.Scatter:
    return go.Scatter(x=x, y=y, mode="lines+markers", name=f"Δp = {level:g} − PCI", legendgroup="dp",
                      showlegend=showlegend, line={"color": METHOD_COLORS["AFF"], "width": 2},
                      hovertemplate="M = %{x}<br>Δp = %{y:.4f}<extra></extra>")


def uncertainty_figure(points: Sequence[dict], *, molecule: str, level: float = 0.95, height: int = 480) -> go.Figure:
    """Fig. 5-like panel of one molecule: AFF's L_norm (bars, top) and Δp (line, bottom) against M."""
    x, ln, dp = _aff_uncertainty(points, molecule)
    if not x:
        raise FigureDataError(f"no AFF point with intervals for {molecule!r}")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1)
    fig.add_trace(_bar(x, ln, showlegend=True), row=1, col=1)
    fig.add_trace(_gap(x, dp, level, showlegend=True), row=2, col=1)
    fig.update_xaxes(type="category")
    fig.update_xaxes(title_text=M_TITLE, row=2, col=1)
    fig.update_yaxes(title_text="L_norm (fraction of force range)", row=1, col=1)
    fig.update_yaxes(title_text=f"Δp = {level:g} − PCI (fraction)", row=2, col=1, zeroline=True)
    fig.update_layout(title={"text": f"{molecule}: AFF interval length and coverage gap (paper Fig. 5)", "x": 0.0,
                             "xanchor": "left"}, height=height, margin={"l": 80, "r": 20, "t": 50, "b": 50})
    return fig


def uncertainty_grid(points: Sequence[dict], *, label_set: str | None = None, level: float = 0.95,
                     height: int = 520) -> go.Figure:
    """Fig. 5-like grid: one column per molecule; L_norm bars on top, Δp line below, against M (AFF)."""
    if label_set is not None:
        points = [p for p in points if p["label_set"] == label_set]
    mols = [m for m in _molecules(points) if _aff_uncertainty(points, m)[0]]
    if not mols:
        raise FigureDataError("no AFF points with intervals" + (f" for label set {label_set!r}" if label_set else ""))
    fig = make_subplots(rows=2, cols=len(mols), subplot_titles=[*mols, *[""] * len(mols)],
                        horizontal_spacing=0.07, vertical_spacing=0.12)
    for c, mol in enumerate(mols, start=1):
        x, ln, dp = _aff_uncertainty(points, mol)
        fig.add_trace(_bar(x, ln, showlegend=c == 1), row=1, col=c)
        fig.add_trace(_gap(x, dp, level, showlegend=c == 1), row=2, col=c)
        fig.update_xaxes(type="category", row=1, col=c)
        fig.update_xaxes(type="category", title_text=M_TITLE, row=2, col=c)
        fig.update_yaxes(title_text="L_norm (fraction of force range)" if c == 1 else None, row=1, col=c)
        fig.update_yaxes(title_text=f"Δp = {level:g} − PCI (fraction)" if c == 1 else None, row=2, col=c,
                         zeroline=True, zerolinecolor="#888888")
    suffix = f" — {label_set} labels" if label_set else ""
    fig.update_layout(title={"text": "AFF uncertainty (paper Fig. 5)" + suffix, "x": 0.0, "xanchor": "left"},
                      height=height, width=max(380 * len(mols), 600), margin={"l": 80, "r": 20, "t": 70, "b": 50},
                      legend={"orientation": "h", "y": -0.15, "x": 0.0}, bargap=0.3)
    return fig


# ---------------------------------------------------------------------------
# PNG without kaleido
# ---------------------------------------------------------------------------
def write_png(fig: go.Figure, path, *, dpi: int = 110):
    """Draw a figure of this module (scatter and bar traces on subplots) with matplotlib.

    Subplot positions, log/category axes, axis and subplot titles, colours,
    markers and the legend are taken from the plotly figure, so the PNG shows
    the same data as the HTML. Returns the matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    lay = fig.layout
    width = (lay.width or 900) / 100.0
    height = (lay.height or 500) / 100.0
    from matplotlib.ticker import FuncFormatter

    mfig = Figure(figsize=(width, height), dpi=dpi)
    # margins in inches (room for tick labels and axis titles), as fractions of the figure
    ml, mr, mt, mb = 0.95 / width, 0.15 / width, 0.75 / height, 1.0 / height
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    # minor ticks of a log axis: label only 2× and 5× a power of ten (all of them crowd the axis)
    sparse = FuncFormatter(lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** np.floor(np.log10(v))) in (2, 5) else "")

    def fx(x):
        return ml + x * (1 - ml - mr)

    def fy(y):
        return mb + y * (1 - mb - mt)

    axes: dict[tuple[str, str], Any] = {}

    def axis_layout(ref: str, kind: str):
        name = kind + "axis" + ("" if ref in ("x", "y") else ref[1:])
        return lay[name]

    def get_ax(xref: str, yref: str):
        key = (xref, yref)
        if key not in axes:
            xa, ya = axis_layout(xref, "x"), axis_layout(yref, "y")
            x0, x1 = xa.domain or (0, 1)
            y0, y1 = ya.domain or (0, 1)
            ax = mfig.add_axes([fx(x0), fy(y0), fx(x1) - fx(x0), fy(y1) - fy(y0)])
            for axis, spec in ((ax.xaxis, xa), (ax.yaxis, ya)):
                if spec.type == "log":
                    (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
                    axis.set_major_formatter(plain)
                    axis.set_minor_formatter(sparse)
            if xa.title and xa.title.text:
                ax.set_xlabel(xa.title.text, fontsize=8)
            if ya.title and ya.title.text:
                ax.set_ylabel(ya.title.text, fontsize=8)
            ax.tick_params(which="both", labelsize=7)
            ax.grid(True, which="major", alpha=0.3)
            axes[key] = ax
        return axes[key]

    handles: dict[str, Any] = {}
    categories: dict[int, list[str]] = {}
    for tr in fig.data:
        ax = get_ax(tr.xaxis or "x", tr.yaxis or "y")
        xa = axis_layout(tr.xaxis or "x", "x")
        x = list(tr.x) if tr.x is not None else []
        y = [np.nan if v is None else v for v in (tr.y if tr.y is not None else [])]
        if xa.type == "category":
            # categories at integer positions with their labels as ticks (matplotlib's own
            # category units log a warning for every list of number-like strings)
            cats = categories.setdefault(id(ax), [])
            for v in map(str, x):
                if v not in cats:
                    cats.append(v)
            x = [cats.index(str(v)) for v in x]
        if tr.type == "bar":
            h = ax.bar(x, y, color=tr.marker.color, width=0.6)
        else:
            color = tr.line.color if tr.line and tr.line.color else None
            h, = ax.plot(x, y, marker=_MPL_MARKERS.get(tr.marker.symbol if tr.marker else None, "o"),
                         color=color, lw=1.6, ms=5)
        if tr.name and tr.name not in handles and tr.showlegend is not False:
            handles[tr.name] = h
    for ax in axes.values():
        if id(ax) in categories:
            ax.set_xticks(range(len(categories[id(ax)])), categories[id(ax)])
    for ax in axes.values():  # a log axis spanning less than ~3x has no 2x/5x ticks: label every minor tick
        for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            if axis.get_scale() == "log" and min(lim) > 0 and max(lim) / min(lim) < 3:
                axis.set_minor_formatter(plain)
    for ann in lay.annotations or ():
        if ann.text and ann.xref == "paper" and ann.yref == "paper":
            mfig.text(fx(ann.x), fy(ann.y) + 0.005, ann.text, ha="center", va="bottom", fontsize=9)
    if lay.title and lay.title.text:
        mfig.text(0.01, 0.985, lay.title.text, ha="left", va="top", fontsize=11)
    if handles:
        mfig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(len(handles), 4),
                    fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    mfig.savefig(str(path), dpi=dpi)
    return mfig

