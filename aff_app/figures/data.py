"""Plotly figure builders (pure: arrays in, ``go.Figure`` out; no Streamlit).

Every axis title carries its unit. Energies and forces are expected in the
internal units (kcal/mol, kcal/mol/Å) unless a unit keyword says otherwise.

Sections (add new builders under the matching heading, or start a new one):

- per-frame data (Data page): energy and largest force per frame
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from aff_app.errors import AFFError
from aff_app.units import ENERGY_UNIT, FORCE_UNIT

#: Colour of the "selected frame" marker shared by all per-frame figures.
SELECTED_COLOR = "#d62728"
#: Colour of data lines.
LINE_COLOR = "#1f77b4"


class FigureError(AFFError, ValueError):
    """Arrays with shapes a figure cannot show."""


# -- shared helpers -------------------------------------------------------------


def _base_layout(fig: go.Figure, *, title: str, xtitle: str, ytitle: str, height: int) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"},
        height=height,
        margin={"l": 70, "r": 15, "t": 40, "b": 45},
        showlegend=False,
        hovermode="closest",
    )
    fig.update_xaxes(title_text=xtitle)
    fig.update_yaxes(title_text=ytitle)
    return fig


def _per_frame_figure(
    y: np.ndarray,
    *,
    selected: int | None,
    title: str,
    ytitle: str,
    hover_unit: str,
    height: int,
    tickformat: str | None = None,
) -> go.Figure:
    """Line of one value per frame, with the selected frame marked (dot + vertical line)."""
    frames = np.arange(y.size)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=frames,
            y=y,
            mode="lines+markers" if y.size <= 200 else "lines",
            line={"color": LINE_COLOR, "width": 1.2},
            marker={"size": 4},
            name=title,
            hovertemplate="frame %{x}<br>%{y:.4g} " + hover_unit + "<extra></extra>",
        )
    )
    if selected is not None:
        if not 0 <= int(selected) < y.size:
            raise FigureError(f"selected frame {selected} outside 0..{y.size - 1}")
        s = int(selected)
        fig.add_vline(x=s, line={"color": SELECTED_COLOR, "width": 1, "dash": "dot"})
        fig.add_trace(
            go.Scatter(
                x=[s],
                y=[y[s]],
                mode="markers",
                marker={"color": SELECTED_COLOR, "size": 10, "line": {"color": "white", "width": 1}},
                name="selected frame",
                hovertemplate="selected frame %{x}<br>%{y:.4g} " + hover_unit + "<extra></extra>",
            )
        )
    _base_layout(fig, title=title, xtitle="frame index", ytitle=ytitle, height=height)
    if tickformat:
        fig.update_yaxes(tickformat=tickformat)
    return fig


# -- per-frame data (Data page) ------------------------------------------------------


def max_force_per_frame(F) -> np.ndarray:
    """Largest atomic force magnitude in each frame.

    Parameters
    ----------
    F : array of float, shape (M, N, 3)
        Forces.

    Returns
    -------
    ndarray of float, shape (M,)
        ``max_i |F[m, i]|``, in the unit of ``F``.
    """
    F = np.asarray(F, dtype=float)
    if F.ndim != 3 or F.shape[-1] != 3 or F.shape[0] == 0:
        raise FigureError(f"F must have shape (M, N, 3) with M >= 1, got {F.shape}")
    return np.linalg.norm(F, axis=-1).max(axis=1)


def energy_per_frame_figure(
    E,
    *,
    selected: int | None = None,
    energy_unit: str = ENERGY_UNIT,
    title: str = "Energy per frame",
    height: int = 280,
) -> go.Figure:
    """Potential energy against frame index.

    Parameters
    ----------
    E : array of float, shape (M,)
        Energies in ``energy_unit``.
    selected : int, optional
        Frame to mark (0-based).
    energy_unit : str
        Unit for the axis title.
    title : str
    height : int
        Pixels.
    """
    E = np.asarray(E, dtype=float).reshape(-1)
    if E.size == 0:
        raise FigureError("E is empty: nothing to plot")
    return _per_frame_figure(
        E,
        selected=selected,
        title=title,
        ytitle=f"energy ({energy_unit})",
        hover_unit=energy_unit,
        height=height,
        # absolute energies are large (~1e5 kcal/mol): full digits, no SI 'k' suffix
        tickformat=",.1f",
    )


def max_force_per_frame_figure(
    F,
    *,
    selected: int | None = None,
    force_unit: str = FORCE_UNIT,
    title: str = "Largest atomic force per frame",
    height: int = 280,
) -> go.Figure:
    """``max_i |F_i|`` against frame index.

    Parameters
    ----------
    F : array of float, shape (M, N, 3)
        Forces in ``force_unit``.
    selected : int, optional
        Frame to mark (0-based).
    force_unit : str
        Unit for the axis title.
    title : str
    height : int
        Pixels.
    """
    return _per_frame_figure(
        max_force_per_frame(F),
        selected=selected,
        title=title,
        ytitle=f"max |F| ({force_unit})",
        hover_unit=force_unit,
        height=height,
    )
