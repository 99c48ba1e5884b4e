"""Figure and table of the conservation check: pure builders (reports in, figure/rows out; no Streamlit).

Input: :class:`aff_app.workflows.conservation.ConservationReport` objects, one per model.

* :func:`conservation_figure` — E_total(t) − E_total(0) (kcal/mol) against time (ps) of each
  model's NVE run, one line per model (a conservative field stays on a flat band of Verlet
  wobble, a non-conservative one climbs or sinks).
* :func:`conservation_table` — one row per model: drift, largest deviation, mean temperature,
  loop work, its ratio to the gross work, Jacobian asymmetry, with units in the column names.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from aff_app.units import ENERGY_UNIT
from aff_app.workflows.conservation import ConservationReport
from aff_app.workflows.metrics import finite_or_none as _num

__all__ = ["conservation_figure", "conservation_table", "MAX_POINTS_PER_LINE"]

#: Points drawn per line: a 10 ps run at 0.5 fs has 20,001; every k-th keeps the browser quick
#: (the first and last points are always kept).
MAX_POINTS_PER_LINE = 5000
#: Okabe–Ito colours (colour-blind safe), cycled over the models.
_COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def _thin(n: int) -> np.ndarray:
    if n <= MAX_POINTS_PER_LINE:
        return np.arange(n)
    idx = np.arange(0, n, int(math.ceil(n / MAX_POINTS_PER_LINE)))
    return idx if idx[-1] == n - 1 else np.append(idx, n - 1)


def conservation_figure(reports: Sequence[ConservationReport], *, title: str | None = None,
                        height: int = 420) -> go.Figure:
    """Total-energy deviation E_total(t) − E_total(0) against time, one line per model.

    Parameters
    ----------
    reports : sequence of ConservationReport
        Models without an NVE run (``nve`` None) or with fewer than one recorded step are left out.
    title : str, optional
    height : int
        Pixels.

    Returns
    -------
    plotly.graph_objects.Figure
        x: time (ps); y: E_total − E_total(0) (kcal/mol). The legend names the model, where its
        potential came from, and whether the run stopped early.
    """
    fig = go.Figure()
    drawn = 0
    # a run that fell apart climbs by orders of magnitude (a DCF-style net: 10^213 kcal/mol) and would flatten every
    # other line to zero: the axis spans the runs that held together, and a fallen run is drawn up to where it
    # leaves that span, with a cross where it did
    held = [np.abs(r.nve.e_total - r.nve.e_total[0]).max() for r in reports
            if r.nve is not None and r.nve.t.size and not r.nve.stopped_early]
    span = 3.0 * max(max(held), 1e-3) if held else None
    for k, rep in enumerate(reports):
        nve = rep.nve
        if nve is None or nve.t.size == 0:
            continue
        dev = nve.e_total - nve.e_total[0]
        t = nve.t
        label = f"{rep.name} ({nve.energy_source})"
        if nve.stopped_early:
            label += f" — fell apart at {t[-1]:.3g} ps" if np.isnan(nve.drift) else " — stopped early"
            if span is not None:
                inside = np.abs(dev) <= span
                last = int(np.argmin(inside)) if not inside.all() else dev.size
                t, dev = t[:max(last, 1)], dev[:max(last, 1)]
        idx = _thin(t.size)
        color = _COLORS[k % len(_COLORS)]
        fig.add_trace(go.Scatter(
            x=t[idx], y=dev[idx], mode="lines", name=label,
            line={"color": color, "width": 1.5},
            hovertemplate=(f"{rep.name}<br>t = %{{x:.4g}} ps<br>ΔE_total = %{{y:.4g}} {ENERGY_UNIT}"
                           "<extra></extra>"),
        ))
        if nve.stopped_early:
            fig.add_trace(go.Scatter(x=[t[-1]], y=[dev[-1]], mode="markers", showlegend=False,
                                     marker={"symbol": "x", "size": 11, "color": color},
                                     hovertemplate=f"{rep.name}: {nve.stopped_early}<extra></extra>"))
        drawn += 1
    if drawn == 0:
        fig.add_annotation(text="no NVE run to show", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_xaxes(title_text="time (ps)")
    fig.update_yaxes(title_text=f"E_total − E_total(0) ({ENERGY_UNIT})", zeroline=True,
                     range=None if span is None else [-1.05 * span, 1.05 * span])
    fig.update_layout(
        title={"text": title or "NVE total-energy deviation (velocity Verlet): flat for a conservative force field",
               "x": 0.0},
        height=height,
        legend={"title": {"text": "model (potential)"}},
        margin={"t": 60},
    )
    return fig


def conservation_table(reports: Sequence[ConservationReport]) -> list[dict]:
    """One row per model with plainly named columns (units in the names); None where a check was skipped.

    Columns: model; potential (the model's energy or the work integral); NVE drift (kcal/mol/ps);
    max |E_total − E_total(0)| (kcal/mol); mean temperature (K); MD steps run; stopped early (why,
    or empty); loop work |W| (kcal/mol); loop work sd (kcal/mol); loop work / gross work; Jacobian
    asymmetry; Jacobian asymmetry (max).
    """
    rows = []
    for rep in reports:
        nve = rep.nve
        rows.append({
            "model": rep.name,
            "potential": rep.energy_source,
            "NVE drift (kcal/mol/ps)": None if nve is None else _num(nve.drift),
            "max |E_total − E_total(0)| (kcal/mol)": None if nve is None else _num(nve.max_deviation),
            "mean temperature (K)": None if nve is None else _num(nve.mean_temperature),
            "MD steps run": None if nve is None else f"{nve.steps_done} / {nve.n_steps}",
            "stopped early": "" if nve is None or not nve.stopped_early else nve.stopped_early,
            "loop work |W| (kcal/mol)": _num(rep.loop_work),
            "loop work sd (kcal/mol)": _num(rep.loop_work_sd),
            "loop work / gross work": _num(rep.loop_ratio),
            "Jacobian asymmetry": _num(rep.jacobian_asymmetry),
            "Jacobian asymmetry (max)": _num(rep.jacobian_asymmetry_max),
        })
    return rows
