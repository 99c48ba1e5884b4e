"""Figures comparing models (Compare page; the paper's Fig. 3 and Fig. 5): pure builders, no Streamlit.

Input: the rows of ``aff_app.workflows.learning.learning_curve`` (one dict per model and
training size M). Rows whose status is not 'ok', and values that are None or
not finite, are left out of the plots (the page lists them in a table with a
note instead).

* :func:`learning_curve_figure` — Fig. 3: force MAE and training time against
  M, both log–log, one colour per model; a panel with the energy MAE
  when any row has one, and one with the prediction time per frame when the rows have it
  (four panels on a 2×2 grid).
* :func:`accuracy_time_figure` — the session's models as points, held-out error
  against training time (log–log), the ones no other model beats on both joined.
* :func:`uncertainty_figure` — Fig. 5: L_norm (mean 95% interval length over
  the range of the held-out forces, bars) and Δp = 0.95 − PCI (lines, right
  axis) against M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from aff_app.units import ENERGY_UNIT, FORCE_UNIT

__all__ = ["MODEL_COLORS", "MODEL_SYMBOLS", "ModelPoint", "usable_rows", "learning_curve_figure", "uncertainty_figure",
           "accuracy_time_figure", "pareto_front", "accuracy_time_summary"]

#: Okabe–Ito colours, one per model (colour-blind safe), and marker symbols as a second cue.
MODEL_COLORS = {"AFF": "#0072B2", "GDML": "#E69F00", "sGDML": "#009E73", "sgdml package": "#CC79A7",
                "DCF-style net": "#D55E00"}
MODEL_SYMBOLS = {"AFF": "circle", "GDML": "square", "sGDML": "diamond", "sgdml package": "triangle-up",
                 "DCF-style net": "x"}


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def usable_rows(rows: Sequence[dict], key: str, *, positive: bool = False) -> dict[str, tuple[list, list]]:
    """``{model: (Ms, values)}`` of the 'ok' rows with a finite ``key`` (and > 0 when ``positive``), M ascending."""
    out: dict[str, list] = {}
    for r in rows:
        if r.get("status", "ok") != "ok" or not _finite(r.get(key)):
            continue
        v = float(r[key])
        if positive and v <= 0:
            continue
        out.setdefault(r["model"], []).append((int(r["M"]), v))
    return {m: ([p[0] for p in sorted(pts)], [p[1] for p in sorted(pts)]) for m, pts in out.items()}


def _color(model: str) -> str:
    return MODEL_COLORS.get(model, "#555555")


def learning_curve_figure(rows: Sequence[dict], *, title: str | None = None, height: int = 400) -> go.Figure:
    """Fig. 3: force MAE, training time (and energy MAE) against M, log–log.

    Parameters
    ----------
    rows : sequence of dict
        ``learning_curve`` rows (keys ``model``, ``M``, ``status``,
        ``force_mae``, ``train_s``, ``energy_mae``).

    Returns
    -------
    go.Figure
        One panel per quantity; one trace per model and panel; legend shows
        each model once.
    """
    panels = [("force_mae", f"force MAE ({FORCE_UNIT})", "Force error"),
              ("train_s", "training time (s)", "Training time")]
    if usable_rows(rows, "energy_mae", positive=True):
        panels.insert(1, ("energy_mae", f"energy MAE ({ENERGY_UNIT})", "Energy error"))
    if usable_rows(rows, "predict_ms", positive=True):
        panels.append(("predict_ms", "prediction time per frame (ms)", "Prediction time per frame"))
    n_rows = 2 if len(panels) == 4 else 1
    n_cols = len(panels) // n_rows
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[p[2] for p in panels],
                        horizontal_spacing=0.09, vertical_spacing=0.16)
    height = height if n_rows == 1 else int(1.8 * height)
    seen: set[str] = set()
    for k, (key, ytitle, _) in enumerate(panels):
        row, col = k // n_cols + 1, k % n_cols + 1
        for model, (ms, vals) in usable_rows(rows, key, positive=True).items():
            fig.add_trace(go.Scatter(
                x=ms, y=vals, mode="lines+markers", name=model, legendgroup=model, showlegend=model not in seen,
                line={"color": _color(model)}, marker={"symbol": MODEL_SYMBOLS.get(model, "circle"), "size": 8},
                hovertemplate=f"{model}<br>M = %{{x}}<br>%{{y:.4g}} {ytitle.split('(')[-1].rstrip(')')}<extra></extra>",
            ), row=row, col=col)
            seen.add(model)
        # 1, 2, 5 per decade, each tick with its whole value: plotly's default for these minor ticks is a
        # bare leading digit ("5" for 0.5), which read as 10× off
        fig.update_xaxes(type="log", title_text="training frames M", minorloglabels="complete", row=row, col=col)
        fig.update_yaxes(type="log", title_text=ytitle, dtick="D2", minorloglabels="complete", row=row, col=col)
    fig.update_layout(
        title={"text": title or "Learning curves: held-out error and training time against M (log–log)",
               "x": 0.0, "xanchor": "left"},
        height=height, margin={"l": 70, "r": 15, "t": 80, "b": 50},
        legend={"title": {"text": "model"}, "orientation": "h", "yanchor": "bottom", "y": 1.08,
                "xanchor": "right", "x": 1.0},
    )
    return fig


def uncertainty_figure(rows: Sequence[dict], *, level: float = 0.95, title: str | None = None,
                       height: int = 380) -> go.Figure:
    """Fig. 5: L_norm (bars, left axis) and Δp = level − PCI (lines, right axis) against M.

    M is drawn as categories (bars cannot sit on a log axis); each model has
    its own colour, bars and lines alike.
    """
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    pct = f"{level:.0%}"
    ms_all = sorted({int(r["M"]) for r in rows if r.get("status", "ok") == "ok"})
    cats = [str(m) for m in ms_all]
    for model, (ms, vals) in usable_rows(rows, "l_norm").items():
        fig.add_trace(go.Bar(
            x=[str(m) for m in ms], y=vals, name=f"{model}: L_norm", legendgroup=model,
            marker={"color": _color(model), "opacity": 0.55},
            hovertemplate=f"{model}<br>M = %{{x}}<br>L_norm = %{{y:.3g}}<extra></extra>",
        ), secondary_y=False)
    for model, (ms, vals) in usable_rows(rows, "delta_p").items():
        fig.add_trace(go.Scatter(
            x=[str(m) for m in ms], y=vals, mode="lines+markers", name=f"{model}: Δp", legendgroup=model,
            line={"color": _color(model), "width": 2}, marker={"symbol": MODEL_SYMBOLS.get(model, "circle"), "size": 8},
            hovertemplate=f"{model}<br>M = %{{x}}<br>Δp = %{{y:.3f}}<extra></extra>",
        ), secondary_y=True)
    fig.add_hline(y=0.0, line={"color": "#444444", "width": 1, "dash": "dot"}, secondary_y=True)
    fig.update_xaxes(title_text="training frames M", type="category", categoryorder="array", categoryarray=cats)
    fig.update_yaxes(title_text=f"L_norm = LCI({pct}) / force range (fraction)", secondary_y=False, rangemode="tozero")
    # own ticks (not synced to the bars' grid), zero marked: Δp < 0 means the intervals cover more than nominal
    fig.update_yaxes(title_text=f"Δp = {level:.2f} − PCI({pct}) (fraction)", secondary_y=True, tickmode="auto",
                     showgrid=False, tickformat="+.3f", zeroline=True)
    fig.update_layout(
        title={"text": title or f"Uncertainty: interval length relative to the force range (bars) and coverage gap (lines)",
               "x": 0.0, "xanchor": "left"},
        height=height, barmode="group", margin={"l": 70, "r": 70, "t": 80, "b": 50},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1.0},
    )
    return fig


@dataclass(frozen=True)
class ModelPoint:
    """One trained model on the accuracy-against-time plot (units: s, kcal/mol/Å, kcal/mol)."""

    name: str
    model: str
    n_train: int
    train_s: float | None
    force_mae: float | None
    energy_mae: float | None = None


def _plottable(points: Sequence[ModelPoint], key: str) -> list[ModelPoint]:
    return [p for p in points if _finite(p.train_s) and p.train_s > 0 and _finite(getattr(p, key))
            and getattr(p, key) > 0]


def pareto_front(points: Sequence[ModelPoint], key: str = "force_mae") -> list[ModelPoint]:
    """The models no other beats on both training time and ``key`` (ties kept), fastest first."""
    pts = _plottable(points, key)
    front = [p for p in pts if not any(
        (q.train_s <= p.train_s and getattr(q, key) <= getattr(p, key))
        and (q.train_s < p.train_s or getattr(q, key) < getattr(p, key)) for q in pts)]
    return sorted(front, key=lambda p: (p.train_s, getattr(p, key)))


def accuracy_time_summary(points: Sequence[ModelPoint]) -> str | None:
    """One sentence on the trade-off: the most accurate model against the fastest (None with < 2 models)."""
    pts = _plottable(points, "force_mae")
    if len(pts) < 2:
        return None
    best = min(pts, key=lambda p: (p.force_mae, p.train_s))
    fastest = min(pts, key=lambda p: (p.train_s, p.force_mae))
    if best is fastest:
        return (f"{best.name} is both the most accurate (force MAE {best.force_mae:.3g} {FORCE_UNIT}) and the fastest "
                f"to train ({best.train_s:.3g} s).")
    return (f"{best.name} ({best.model}) is the most accurate, force MAE {best.force_mae:.3g} against "
            f"{fastest.force_mae:.3g} {FORCE_UNIT} for the fastest, {fastest.name} ({fastest.model}): "
            f"{fastest.force_mae / best.force_mae:.2g}× smaller error at {best.train_s / fastest.train_s:.2g}× the "
            "training time.")


def accuracy_time_figure(points: Sequence[ModelPoint], *, height: int = 380) -> go.Figure:
    """Held-out force (and energy) MAE against training time, one marker per model, log–log.

    Models without a finite positive time or error are left out. The models
    no other model beats on both axes are joined by a dashed line (the
    trade-off front): everything above it is slower and less accurate than
    something on it.
    """
    panels = [("force_mae", f"force MAE ({FORCE_UNIT})", "Force error against training time")]
    if _plottable(points, "energy_mae"):
        panels.append(("energy_mae", f"energy MAE ({ENERGY_UNIT})", "Energy error against training time"))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[2] for p in panels], horizontal_spacing=0.1)
    seen: set[str] = set()
    for col, (key, ytitle, _) in enumerate(panels, start=1):
        front = pareto_front(points, key)
        if len(front) > 1:
            fig.add_trace(go.Scatter(
                x=[p.train_s for p in front], y=[getattr(p, key) for p in front], mode="lines",
                line={"color": "#888", "dash": "dash", "width": 1}, name="best trade-off", legendgroup="front",
                showlegend="front" not in seen, hoverinfo="skip",
            ), row=1, col=col)
            seen.add("front")
        for model in sorted({p.model for p in _plottable(points, key)}):
            pts = [p for p in _plottable(points, key) if p.model == model]
            fig.add_trace(go.Scatter(
                x=[p.train_s for p in pts], y=[getattr(p, key) for p in pts], mode="markers+text",
                text=[p.name for p in pts], textposition="top center", textfont={"size": 10},
                name=model, legendgroup=model, showlegend=model not in seen,
                marker={"color": _color(model), "symbol": MODEL_SYMBOLS.get(model, "circle"), "size": 10},
                customdata=[p.n_train for p in pts],
                hovertemplate=f"%{{text}}<br>{model}, M = %{{customdata}}<br>training %{{x:.3g}} s<br>"
                              f"{ytitle.split(' (')[0]} %{{y:.4g}} {ytitle.split('(')[-1].rstrip(')')}<extra></extra>",
            ), row=1, col=col)
            seen.add(model)
        fig.update_xaxes(type="log", title_text="training time (s)", minorloglabels="complete", row=1, col=col)
        fig.update_yaxes(type="log", title_text=ytitle, dtick="D2", minorloglabels="complete", row=1, col=col)
    fig.update_layout(
        title={"text": "Accuracy against training time (held-out MAE, log–log; lower left is better)",
               "x": 0.0, "xanchor": "left"},
        height=height, margin={"l": 70, "r": 15, "t": 80, "b": 50},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.08, "xanchor": "right", "x": 1.0},
    )
    return fig
