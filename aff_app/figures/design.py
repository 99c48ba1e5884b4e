"""Figures of a sequential-design run (the Sequential design page): pure plotly builders, no Streamlit.

Input: a :class:`aff_app.workflows.design.DesignResult` (possibly stopped early).

* :func:`design_curve_figure` — force MAE against M for every strategy, log–log like the Compare
  page's learning curves, with a dashed line at random selection's MAE at its largest M and a star
  where variance selection reaches it (:func:`aff_app.workflows.design.frames_to_reach`); a second
  panel with the PCI(95%) of the held-out forces.
* :func:`energy_trace_figure` — the pool's energy against frame index (or time), the frames a
  strategy chose marked and coloured by the round that chose them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from aff_app.units import ENERGY_UNIT, FORCE_UNIT
from aff_app.workflows.design import DesignResult, frames_to_reach

__all__ = ["STRATEGY_COLORS", "STRATEGY_SYMBOLS", "design_curve_figure", "energy_trace_figure"]

#: Okabe–Ito colours (colour-blind safe) and marker symbols, one per strategy.
STRATEGY_COLORS = {"variance": "#0072B2", "random": "#E69F00"}
STRATEGY_SYMBOLS = {"variance": "circle", "random": "square"}
STRATEGY_LABELS = {"variance": "largest force variance", "random": "random"}


def design_curve_figure(result: DesignResult, *, height: int = 420, title: str | None = None) -> go.Figure:
    """Held-out force MAE (log–log) and PCI(95%) against the training frames M, one trace per strategy.

    Parameters
    ----------
    result : DesignResult

    Returns
    -------
    go.Figure
        Left: force MAE (kcal/mol/Å) against M, with random's MAE at its largest M dashed and a star
        where the variance curve reaches it (when it does). Right: PCI of the latent 95% intervals.
    """
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.1,
                        subplot_titles=["Held-out force error", "Interval coverage (latent 95%)"])
    for s in result.settings.strategies:
        rows = result.strategy_rows(s)
        if not rows:
            continue
        ms = [r.M for r in rows]
        style = dict(line={"color": STRATEGY_COLORS.get(s, "#555555")},
                     marker={"symbol": STRATEGY_SYMBOLS.get(s, "circle"), "size": 7}, legendgroup=s)
        fig.add_trace(go.Scatter(x=ms, y=[r.force_mae for r in rows], mode="lines+markers",
                                 name=STRATEGY_LABELS.get(s, s), **style,
                                 hovertemplate=f"{s}<br>M = %{{x}}<br>%{{y:.4g}} {FORCE_UNIT}<extra></extra>"),
                      row=1, col=1)
        pci = [(r.M, r.pci) for r in rows if r.pci is not None]
        if pci:
            fig.add_trace(go.Scatter(x=[p[0] for p in pci], y=[p[1] for p in pci], mode="lines+markers",
                                     name=STRATEGY_LABELS.get(s, s), showlegend=False, **style,
                                     hovertemplate=f"{s}<br>M = %{{x}}<br>PCI %{{y:.1%}}<extra></extra>"),
                          row=1, col=2)
    if {"variance", "random"} <= set(result.settings.strategies):
        reached = frames_to_reach(result)
        if reached is not None:
            fig.add_hline(y=reached.target_mae, line={"color": STRATEGY_COLORS["random"], "dash": "dash", "width": 1.5},
                          row=1, col=1)
            fig.add_annotation(x=1.0, xref="x domain", y=np.log10(reached.target_mae), yref="y", yanchor="bottom",
                               xanchor="right", showarrow=False, font={"size": 11},
                               text=f"random at M = {reached.target_M}: {reached.target_mae:.3g} {FORCE_UNIT}")
            if reached.M is not None:
                fig.add_trace(go.Scatter(
                    x=[reached.M], y=[reached.target_mae], mode="markers", name=f"variance reaches it: M ≈ {reached.M:.0f}",
                    marker={"symbol": "star", "size": 16, "color": STRATEGY_COLORS["variance"],
                            "line": {"color": "#000000", "width": 1}},
                    hovertemplate=f"variance reaches random's M = {reached.target_M} MAE<br>at M ≈ %{{x:.0f}} "
                                  f"({100 * reached.ratio:.0f}%)<extra></extra>"), row=1, col=1)
    fig.add_hline(y=0.95, line={"color": "#444444", "dash": "dot", "width": 1}, row=1, col=2)
    fig.update_xaxes(type="log", title_text="training frames M", minorloglabels="complete", row=1, col=1)
    fig.update_yaxes(type="log", title_text=f"force MAE ({FORCE_UNIT})", dtick="D2", minorloglabels="complete",
                     row=1, col=1)
    fig.update_xaxes(type="log", title_text="training frames M", minorloglabels="complete", row=1, col=2)
    fig.update_yaxes(title_text="PCI(95%) (fraction of held-out force components)", tickformat=".0%", row=1, col=2)
    fig.update_layout(
        title={"text": title or "Sequential design: held-out force error against training frames (log–log)",
               "x": 0.0, "xanchor": "left"},
        height=height, margin={"l": 70, "r": 15, "t": 90, "b": 50},
        legend={"title": {"text": "frames chosen by"}, "orientation": "h", "yanchor": "bottom", "y": 1.1,
                "xanchor": "right", "x": 1.0},
    )
    return fig


def energy_trace_figure(result: DesignResult, energies: Sequence[float] | None = None, *,
                        times_ps: Sequence[float] | None = None, strategy: str = "variance",
                        energy_label: str = "energy", height: int = 360, title: str | None = None) -> go.Figure:
    """The pool's energy trace with the frames ``strategy`` chose, coloured by round.

    Parameters
    ----------
    result : DesignResult
    energies : (T,) kcal/mol, optional
        The pool's energy per frame (the file's labels, or an MD run's potential energy). None: only the
        chosen frames are drawn, at their labels' energies (when the labels have energies).
    times_ps : (T,) ps, optional
        Time of each frame (x axis); default the frame index.
    strategy : str
        Whose frames to mark (the initial frames, round 0, are grey).
    energy_label : str
        What the energies are (axis title), e.g. 'energy (file)' or 'potential energy (emulator)'.

    Returns
    -------
    go.Figure
    """
    T = result.n_frames
    x_all = np.arange(T) if times_ps is None else np.asarray(times_ps, dtype=np.float64)
    if x_all.shape != (T,):
        raise ValueError(f"times_ps must have shape ({T},), got {x_all.shape}")
    E = None if energies is None else np.asarray(energies, dtype=np.float64).reshape(-1)
    if E is not None and E.shape != (T,):
        raise ValueError(f"energies must have shape ({T},), got {E.shape}")
    xtitle = "frame index" if times_ps is None else "time (ps)"
    fig = go.Figure()
    if E is not None:
        fig.add_trace(go.Scattergl(x=x_all, y=E, mode="lines", name="pool", line={"color": "#9a9a9a", "width": 1},
                                   hovertemplate=f"%{{x}}<br>%{{y:.4g}} {ENERGY_UNIT}<extra></extra>"))
    picks = [c for c in result.chosen if c.strategy == strategy]
    frames = np.array([c.frame for c in picks], dtype=np.int64)
    rounds = np.array([c.round for c in picks], dtype=np.int64)
    y = (E[frames] if E is not None else np.array([np.nan if c.energy is None else c.energy for c in picks]))
    first = rounds == 0
    if first.any():
        fig.add_trace(go.Scatter(x=x_all[frames[first]], y=y[first], mode="markers", name="initial frames (round 0)",
                                 marker={"color": "#555555", "size": 6, "symbol": "circle-open"},
                                 customdata=frames[first],
                                 hovertemplate="frame %{customdata}<br>initial<extra></extra>"))
    later = ~first
    if later.any():
        fig.add_trace(go.Scatter(
            x=x_all[frames[later]], y=y[later], mode="markers", name=f"chosen by {strategy}",
            customdata=np.stack([frames[later], rounds[later]], axis=1),
            marker={"color": rounds[later], "colorscale": "Viridis", "size": 9, "line": {"color": "#000000", "width": 0.5},
                    "cmin": 1, "cmax": max(int(rounds.max()), 1), "colorbar": {"title": {"text": "round"}}},
            hovertemplate="frame %{customdata[0]}<br>round %{customdata[1]}<br>%{y:.4g} " + ENERGY_UNIT + "<extra></extra>"))
    fig.update_xaxes(title_text=xtitle)
    # plain numbers: plotly's SI suffix wrote −9955 kcal/mol as "−9.955k"
    fig.update_yaxes(title_text=f"{energy_label} ({ENERGY_UNIT})", tickformat=",.0f")
    fig.update_layout(
        title={"text": title or f"Where the {strategy} strategy's frames lie on the pool's energy trace",
               "x": 0.0, "xanchor": "left"},
        height=height, margin={"l": 70, "r": 15, "t": 60, "b": 50},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 0.9},
    )
    return fig
