"""Figures of held-out predictions (Predictions page; the paper's Fig. 4): pure builders, no Streamlit.

* :func:`band_figure` — a predicted quantity along the held-out frames with its
  interval band (lower bound trace first, then the upper one with
  ``fill='tonexty'``) and the reference; or the same as errors around zero.
* :func:`parity_figure` — predicted against reference with the y = x line and
  MAE/RMSE in the title.
* :func:`calibration_figure` — empirical coverage against nominal level, with
  the diagonal of perfect calibration.
* :func:`force_comparison_html` — one frame in 3D with reference and predicted
  force arrows in two colours and a per-atom value (error or uncertainty) as
  atom colour, with a legend giving the colour range and units (offline
  3Dmol.js, see ``aff_app.figures.viewer``).

Units: forces kcal/mol/Å and energies kcal/mol unless a ``unit`` says otherwise.
"""

from __future__ import annotations

import html as _html
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from aff_app.errors import AFFError
from aff_app.figures import viewer
from aff_app.units import ENERGY_UNIT, FORCE_UNIT

__all__ = [
    "FigureError",
    "REFERENCE_COLOR",
    "PREDICTED_COLOR",
    "BAND_COLOR",
    "ATOM_COLORSCALE",
    "band_figure",
    "parity_figure",
    "calibration_figure",
    "atom_colors",
    "force_comparison_html",
]

#: Reference (ab initio) data: black, predictions: blue (distinguishable without colour vision).
REFERENCE_COLOR = "#222222"
PREDICTED_COLOR = "#0072B2"
BAND_COLOR = "rgba(0, 114, 178, 0.22)"
#: Sequential scale of the per-atom value on the 3D view (light = small, dark red = large).
ATOM_COLORSCALE = "YlOrRd"


class FigureError(AFFError, ValueError):
    """Arrays with shapes or values a figure cannot show."""


def _vec(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float).reshape(-1)
    if a.size == 0:
        raise FigureError(f"{name} is empty: nothing to plot")
    return a


def _layout(fig: go.Figure, *, title: str, xtitle: str, ytitle: str, height: int, legend: bool = True) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"},
        height=height,
        margin={"l": 75, "r": 15, "t": 50, "b": 45},
        showlegend=legend,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
        hovermode="closest",
    )
    fig.update_xaxes(title_text=xtitle)
    fig.update_yaxes(title_text=ytitle)
    return fig


def band_figure(
    frames,
    reference,
    mean,
    lower,
    upper,
    *,
    title: str,
    quantity: str,
    unit: str,
    band_label: str = "95% interval",
    residual: bool = False,
    offset: float = 0.0,
    height: int = 330,
) -> go.Figure:
    """A quantity along held-out frames: interval band, prediction and reference.

    Parameters
    ----------
    frames : array of int, shape (B,)
        Frame indices (x axis); the points are drawn sorted by frame.
    reference, mean, lower, upper : arrays of float, shape (B,)
        Reference values, predicted mean and interval ends, in ``unit``.
    title : str
    quantity : str
        What is plotted, for the axis title (e.g. ``'F_x of C0'``, ``'energy'``).
    unit : str
    band_label : str
        Legend text of the band, e.g. ``'95% interval (latent)'``.
    residual : bool
        Plot errors instead: prediction − reference, with the band shifted
        the same way, around a zero line (makes narrow bands visible).
    offset : float
        Subtracted from every value (e.g. the mean reference energy); the axis
        title says so when non-zero.

    Returns
    -------
    go.Figure
        Traces in order: lower bound (no legend), upper bound with
        ``fill='tonexty'`` (the band), prediction, reference (or zero line).
    """
    x = _vec(frames, "frames")
    ref, mu, lo, hi = (_vec(a, n) for a, n in ((reference, "reference"), (mean, "mean"), (lower, "lower"), (upper, "upper")))
    if not (x.size == ref.size == mu.size == lo.size == hi.size):
        raise FigureError(
            f"frames, reference, mean, lower, upper must have one value per frame; got sizes "
            f"{x.size}, {ref.size}, {mu.size}, {lo.size}, {hi.size}"
        )
    if not np.all(np.isfinite(np.concatenate([ref, mu, lo, hi]))):
        raise FigureError("non-finite values cannot be plotted")
    order = np.argsort(x, kind="stable")
    x, ref, mu, lo, hi = x[order], ref[order], mu[order], lo[order], hi[order]
    if residual:
        mu, lo, hi, ref = mu - ref, lo - ref, hi - ref, np.zeros_like(ref)
        ytitle = f"{quantity}: predicted − reference ({unit})"
    else:
        mu, lo, hi, ref = mu - offset, lo - offset, hi - offset, ref - offset
        ytitle = f"{quantity}{_shift(offset)} ({unit})"
    # plain lists: the figure's JSON stays readable (plotly would otherwise base64-encode numpy arrays)
    xi = x.astype(int).tolist()
    lo, hi, mu, ref = lo.tolist(), hi.tolist(), mu.tolist(), ref.tolist()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xi, y=lo, mode="lines", line={"width": 0, "color": BAND_COLOR},
                             name=f"{band_label} lower", showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=xi, y=hi, mode="lines", line={"width": 0, "color": BAND_COLOR},
                             fill="tonexty", fillcolor=BAND_COLOR, name=band_label, hoverinfo="skip"))
    # markers, not lines: held-out frames are scattered over the trajectory, a line would invent values between them
    fig.add_trace(go.Scatter(
        x=xi, y=mu, mode="markers", name="predicted",
        marker={"color": PREDICTED_COLOR, "size": 6, "symbol": "x-thin", "line": {"width": 1.5, "color": PREDICTED_COLOR}},
        hovertemplate="frame %{x}<br>predicted %{y:.4g} " + unit + "<extra></extra>",
    ))
    if residual:
        fig.add_trace(go.Scatter(x=[xi[0], xi[-1]], y=[0.0, 0.0], mode="lines", name="reference (zero error)",
                                 line={"color": REFERENCE_COLOR, "width": 1, "dash": "dash"}, hoverinfo="skip"))
    else:
        fig.add_trace(go.Scatter(
            x=xi, y=ref, mode="markers", name="reference",
            marker={"color": REFERENCE_COLOR, "size": 7, "symbol": "circle-open"},
            hovertemplate="frame %{x}<br>reference %{y:.4g} " + unit + "<extra></extra>",
        ))
    _layout(fig, title=title, xtitle="held-out frame index", ytitle=ytitle, height=height)
    fig.update_yaxes(tickformat=",.4~g")
    return fig


def _shift(offset: float) -> str:
    """Axis-title suffix for values shown relative to ``offset`` ('' when 0)."""
    if offset == 0:
        return ""
    return f" − {offset:,.2f}" if offset > 0 else f" + {-offset:,.2f}"


def parity_figure(
    reference,
    predicted,
    *,
    quantity: str,
    unit: str,
    mae: float | None = None,
    rmse: float | None = None,
    offset: float = 0.0,
    max_points: int = 20_000,
    height: int = 380,
) -> go.Figure:
    """Predicted against reference values with the y = x line; MAE and RMSE in the title.

    Parameters
    ----------
    reference, predicted : arrays of float, same size
        In ``unit`` (flattened: e.g. every held-out force component).
    quantity : str
        E.g. ``'force components'`` or ``'energy'``.
    unit : str
    mae, rmse : float, optional
        Shown in the title with the unit (computed from the arrays when None).
    offset : float
        Subtracted from both axes (e.g. the mean reference energy).
    max_points : int
        At most this many points are drawn (an even subsample); the metrics use all.
    """
    ref = _vec(reference, "reference")
    pred = _vec(predicted, "predicted")
    if ref.size != pred.size:
        raise FigureError(f"reference ({ref.size}) and predicted ({pred.size}) differ in size")
    if not np.all(np.isfinite(ref)) or not np.all(np.isfinite(pred)):
        raise FigureError("non-finite values cannot be plotted")
    mae = float(np.mean(np.abs(pred - ref))) if mae is None else float(mae)
    rmse = float(np.sqrt(np.mean((pred - ref) ** 2))) if rmse is None else float(rmse)
    n = ref.size
    keep = np.linspace(0, n - 1, min(n, int(max_points))).astype(int) if n > max_points else np.arange(n)
    r, p = ref[keep] - offset, pred[keep] - offset
    lo, hi = float(min(r.min(), p.min())), float(max(r.max(), p.max()))
    pad = 0.03 * (hi - lo or 1.0)
    fig = go.Figure()
    fig.add_trace(go.Scattergl(
        x=r.tolist(), y=p.tolist(), mode="markers", name=f"held-out {quantity}",
        marker={"color": PREDICTED_COLOR, "size": 4, "opacity": 0.5},
        hovertemplate="reference %{x:.4g}<br>predicted %{y:.4g} " + unit + "<extra></extra>",
    ))
    fig.add_trace(go.Scatter(x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines", name="y = x (perfect)",
                             line={"color": REFERENCE_COLOR, "width": 1, "dash": "dash"}, hoverinfo="skip"))
    sub = f" (shown: {keep.size:,} of {n:,})" if keep.size < n else ""
    title = f"Parity, {quantity}<br>MAE {mae:.3g} {unit}, RMSE {rmse:.3g} {unit}{sub}"
    shift = _shift(offset)
    _layout(fig, title=title, xtitle=f"reference {quantity}{shift} ({unit})",
            ytitle=f"predicted {quantity}{shift} ({unit})", height=height)
    # the points hug the diagonal: the top-left corner is free for the legend
    fig.update_layout(margin={"t": 70}, legend={"orientation": "v", "x": 0.02, "xanchor": "left", "y": 0.98,
                                                "yanchor": "top", "bgcolor": "rgba(255,255,255,0.7)"})
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return fig


def calibration_figure(
    levels: Sequence[float],
    force_coverage: Sequence[float],
    energy_coverage: Sequence[float] | None = None,
    *,
    kind: str = "latent",
    height: int = 380,
) -> go.Figure:
    """Empirical coverage of the central intervals against their nominal level.

    A calibrated model lies on the diagonal; above it the intervals are too
    wide (conservative), below it too narrow.

    Parameters
    ----------
    levels : nominal levels in (0, 1)
    force_coverage : share of held-out force components inside their interval, per level
    energy_coverage : same for energies, optional
    kind : 'latent' or 'observation' (named in the title)
    """
    lv = _vec(levels, "levels")
    fc = _vec(force_coverage, "force_coverage")
    if fc.size != lv.size:
        raise FigureError(f"force_coverage has {fc.size} values for {lv.size} levels")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="ideal (coverage = level)",
                             line={"color": REFERENCE_COLOR, "width": 1, "dash": "dash"}, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=lv.tolist(), y=fc.tolist(), mode="lines+markers", name="forces",
                             line={"color": PREDICTED_COLOR}, marker={"size": 4},
                             hovertemplate="nominal %{x:.0%}<br>empirical %{y:.1%}<extra>forces</extra>"))
    if energy_coverage is not None:
        ec = _vec(energy_coverage, "energy_coverage")
        if ec.size != lv.size:
            raise FigureError(f"energy_coverage has {ec.size} values for {lv.size} levels")
        fig.add_trace(go.Scatter(x=lv.tolist(), y=ec.tolist(), mode="lines+markers", name="energies",
                                 line={"color": "#D55E00"}, marker={"size": 4, "symbol": "square"},
                                 hovertemplate="nominal %{x:.0%}<br>empirical %{y:.1%}<extra>energies</extra>"))
    _layout(fig, title=f"Calibration of the {kind} intervals", xtitle="nominal level (fraction of intervals)",
            ytitle="empirical coverage (fraction of held-out values)", height=height)
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", scaleanchor="x", scaleratio=1)
    return fig


# -- 3D view ---------------------------------------------------------------------------------------


def _hex(color: str) -> str:
    """'rgb(r, g, b)' or '#rrggbb' -> '#rrggbb'."""
    if color.startswith("#"):
        return color.lower()
    nums = [int(round(float(v))) for v in color[color.index("(") + 1 : color.index(")")].split(",")[:3]]
    return "#" + "".join(f"{max(0, min(255, v)):02x}" for v in nums)


def atom_colors(values, *, vmin: float | None = None, vmax: float | None = None,
                colorscale: str = ATOM_COLORSCALE) -> tuple[list[str], float, float]:
    """Map per-atom values to ``'#rrggbb'`` colours on a sequential scale.

    Returns
    -------
    colors : list of str, one per value
    vmin, vmax : the range mapped to the ends of the scale (equal values map to its middle)
    """
    v = _vec(values, "values")
    if not np.all(np.isfinite(v)):
        raise FigureError("per-atom values must be finite")
    lo = float(v.min()) if vmin is None else float(vmin)
    hi = float(v.max()) if vmax is None else float(vmax)
    t = np.full(v.size, 0.5) if hi <= lo else np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    return [_hex(c) for c in sample_colorscale(colorscale, t.tolist())], lo, hi


def force_comparison_html(
    z,
    R,
    F_reference,
    F_predicted,
    atom_values,
    *,
    value_label: str,
    value_unit: str = FORCE_UNIT,
    force_scale: float = 0.02,
    force_unit: str = FORCE_UNIT,
    labels: bool = False,
    caption: str | None = None,
    height: int | str = "100vh",
) -> str:
    """One frame in 3D: reference and predicted force arrows, atoms coloured by a per-atom value.

    Parameters
    ----------
    z : (N,) atomic numbers;  R : (N, 3) positions, Å
    F_reference, F_predicted : (N, 3) forces in ``force_unit``
        Drawn as arrows ``force_scale * F`` Å long from each atom, reference in
        :data:`REFERENCE_COLOR`, prediction in :data:`PREDICTED_COLOR`.
    atom_values : (N,) finite
        E.g. |F̂ − F| or the predicted standard deviation, in ``value_unit``;
        shown as atom colour on :data:`ATOM_COLORSCALE`.
    value_label : str
        What the colour shows (legend text).
    labels : bool
        Element + index labels on the atoms.
    caption : str, optional

    Returns
    -------
    str
        A self-contained offline HTML document (3Dmol.js inlined); it sets
        ``data-3dmol-ready="1"`` on its body once drawn.
    """
    z = np.asarray(z)
    n = z.size
    R = np.asarray(R, dtype=float)
    Fr = np.asarray(F_reference, dtype=float)
    Fp = np.asarray(F_predicted, dtype=float)
    for name, a in (("F_reference", Fr), ("F_predicted", Fp)):
        if a.shape != (n, 3):
            raise FigureError(f"{name} must have shape ({n}, 3), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise FigureError(f"{name} contains non-finite values")
    vals = _vec(atom_values, "atom_values")
    if vals.size != n:
        raise FigureError(f"atom_values must have one value per atom ({n}), got {vals.size}")
    colors, vmin, vmax = atom_colors(vals)
    # the viewer draws atoms (coloured) and labels; the two arrow sets are added here
    script = viewer.molecule_view_script(z, R, forces=None, colors=colors, labels=labels)
    arrows = []
    if force_scale > 0:
        for F, color in ((Fr, REFERENCE_COLOR), (Fp, PREDICTED_COLOR)):
            for p, f in zip(R, F):
                if force_scale * np.linalg.norm(f) < viewer.MIN_ARROW_LENGTH:
                    continue
                spec = {"start": viewer._vec(p), "end": viewer._vec(p + force_scale * f), "radius": 0.06,
                        "radiusRatio": 2.0, "mid": 0.75, "color": color}
                arrows.append("    viewer.addArrow(" + _json(spec) + ");")
    marker = "    viewer.zoomTo();"
    if marker not in script:  # pragma: no cover - guards against a change of the viewer's script
        raise FigureError("unexpected viewer script: cannot add the force arrows")
    script = script.replace(marker, "\n".join(arrows) + "\n" + marker, 1)
    stops = sample_colorscale(ATOM_COLORSCALE, [0.0, 0.25, 0.5, 0.75, 1.0])
    gradient = ",".join(_hex(c) for c in stops)
    fmt = (lambda v: f"{v:.3g}")
    legend = [
        f'<span style="color:{REFERENCE_COLOR};font-weight:bold">&#x2192; reference force</span> &nbsp; '
        f'<span style="color:{PREDICTED_COLOR};font-weight:bold">&#x2192; predicted force</span>'
        + (f" &nbsp; (1 Å of arrow = {_html.escape(f'{1.0 / force_scale:.3g}')} {_html.escape(force_unit)})"
           if force_scale > 0 else ""),
        f"atom colour: {_html.escape(value_label)} ({_html.escape(value_unit)})<br>"
        f'<span id="aff-cmin">{_html.escape(fmt(vmin))}</span> '
        f'<span style="display:inline-block;width:120px;height:10px;vertical-align:middle;'
        f'background:linear-gradient(to right,{gradient});border:1px solid #999"></span> '
        f'<span id="aff-cmax">{_html.escape(fmt(vmax))}</span> {_html.escape(value_unit)}',
    ]
    if caption:
        legend.append(_html.escape(caption))
    h = viewer._css_size(height, "height")
    legend_html = (
        '<div id="aff-legend" style="position:absolute;left:6px;bottom:4px;font:12px sans-serif;color:#333;'
        'background:rgba(255,255,255,0.85);padding:3px 6px;border-radius:3px;pointer-events:none;z-index:10">'
        + "<br>".join(legend) + "</div>"
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>aff_app predicted vs reference forces</title>\n"
        "<style>html,body{margin:0;padding:0;overflow:hidden;background:#ffffff}</style>\n"
        "<script>\n" + viewer.threedmol_js() + "\n</script>\n</head>\n<body>\n"
        f'<div id="aff-viewer" style="position:relative;width:100%;height:{h};">{legend_html}</div>\n'
        "<script>\n" + script + "\n</script>\n</body></html>\n"
    )


def _json(obj) -> str:
    import json

    return json.dumps(obj)
