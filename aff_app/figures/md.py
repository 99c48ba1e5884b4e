"""Figures of the MD page: pure builders (runs in, plotly figures or HTML out; no Streamlit).

Input: :class:`aff_app.workflows.md.MDRun` objects (a model run and, optionally, a reference run
from the same start) and their :class:`aff_app.workflows.md.MDComparison`.

* :func:`md_traces` — against time (ps): energies E − E_total(0) (kcal/mol; potential solid, total
  dashed), temperature (K), and the largest force sd (kcal/mol/Å) with the stop threshold dashed.
  A panel only exists when some run has its quantity; a run that lacks it is named in the subtitle.
* :func:`bond_length_distributions` — bond lengths per kind of bond (C–H, C–C, …), model against
  reference, Å.
* :func:`energy_distributions` — potential-energy fluctuations E − ⟨E⟩ of each run, kcal/mol.
* :func:`trajectory_view_html` — an offline 3Dmol.js playback of the frames (play/pause and a
  frame slider; 3Dmol.js inlined from :func:`aff_app.figures.viewer.threedmol_js`, never a CDN).
"""

from __future__ import annotations

import html as _html
import json
import math
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from aff_app.figures.viewer import ViewerError, _css_size, _xyz_block, threedmol_js
from aff_app.units import ENERGY_UNIT, FORCE_UNIT, LENGTH_UNIT

__all__ = ["md_traces", "bond_length_distributions", "energy_distributions", "trajectory_view_html",
           "RUN_COLORS", "MAX_POINTS_PER_LINE", "MAX_PLAYBACK_FRAMES"]

#: Okabe–Ito colours (colour-blind safe): the model run first, the reference second.
RUN_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
#: Points drawn per line (every k-th frame beyond it; the first and last are kept).
MAX_POINTS_PER_LINE = 4000
#: Frames the 3D playback holds (evenly thinned beyond it: the page stays light).
MAX_PLAYBACK_FRAMES = 400


def _thin(n: int, most: int = MAX_POINTS_PER_LINE) -> np.ndarray:
    if n <= most:
        return np.arange(n)
    idx = np.arange(0, n, int(math.ceil(n / most)))
    return idx if idx[-1] == n - 1 else np.append(idx, n - 1)


def _has_energy(run) -> bool:
    e = np.asarray(run.potential_energy, dtype=float)
    return e.size > 0 and bool(np.all(np.isfinite(e)))


def _has_sd(run) -> bool:
    return run.force_sd is not None and run.n_frames > 0


def _threshold(runs) -> float | None:
    for run in runs:
        thr = getattr(run.settings, "sd_threshold", None)
        if thr is not None and _has_sd(run):
            return float(thr)
    return None


def md_traces(runs: Sequence, *, sd_threshold: float | None = None, title: str | None = None,
              row_height: int = 210) -> go.Figure:
    """Energies, temperature and the largest force sd of each run against time, one colour per run.

    Parameters
    ----------
    runs : sequence of MDRun
        The model run first, then (optionally) the reference run; runs may be partial (still running).
    sd_threshold : float, optional
        The stop threshold (kcal/mol/Å), drawn dashed on the sd panel; default: the threshold in the
        settings of the first run that has an sd.
    title : str, optional
    row_height : int
        Pixels per panel.

    Returns
    -------
    go.Figure
        x: time (ps), shared. Panels (each only when some run has it): E − E_total(0) (kcal/mol; each
        run relative to its own start so a model and a reference of different absolute energies
        share the axis; potential solid, total dashed), temperature (K), largest force-component
        sd (kcal/mol/Å). Runs lacking energy or sd are named in the subtitle with the reason.
    """
    runs = [r for r in runs if r is not None]
    with_energy = [r for r in runs if _has_energy(r)]
    with_sd = [r for r in runs if _has_sd(r)]
    panels = (["energy"] if with_energy else []) + ["temperature"] + (["sd"] if with_sd else [])
    names = {"energy": "Energy (relative to each run's start total)", "temperature": "Temperature",
             "sd": "Largest force sd (the model's calibrated latent sd)"}
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.22 / len(panels),
                        subplot_titles=[names[p] for p in panels])
    row = {p: k + 1 for k, p in enumerate(panels)}
    notes = []
    for k, run in enumerate(runs):
        color = RUN_COLORS[k % len(RUN_COLORS)]
        idx = _thin(run.n_frames)
        t = np.asarray(run.times_ps)[idx]
        label = str(run.label)
        group = f"run{k}"
        hover_t = "t = %{x:.4g} ps<br>"
        legend_done = False
        if "energy" in row and _has_energy(run):
            e0 = float(run.total_energy[0])
            fig.add_trace(go.Scatter(x=t, y=np.asarray(run.potential_energy)[idx] - e0, mode="lines",
                                     name=f"{label}: E_pot", legendgroup=group, line={"color": color, "width": 1.4},
                                     hovertemplate=f"{label}<br>{hover_t}E_pot − E_total(0) = %{{y:.4g}} "
                                                   f"{ENERGY_UNIT}<extra></extra>"), row=row["energy"], col=1)
            fig.add_trace(go.Scatter(x=t, y=np.asarray(run.total_energy)[idx] - e0, mode="lines",
                                     name=f"{label}: E_total", legendgroup=group,
                                     line={"color": color, "width": 2.0, "dash": "dash"},
                                     hovertemplate=f"{label}<br>{hover_t}E_total − E_total(0) = %{{y:.4g}} "
                                                   f"{ENERGY_UNIT}<extra></extra>"), row=row["energy"], col=1)
            legend_done = True
        elif run.n_frames:
            notes.append(f"{label}: no energy model, so no energy traces")
        fig.add_trace(go.Scatter(x=t, y=np.asarray(run.temperature_K)[idx], mode="lines", name=label,
                                 legendgroup=group, showlegend=not legend_done, line={"color": color, "width": 1.4},
                                 hovertemplate=f"{label}<br>{hover_t}T = %{{y:.4g}} K<extra></extra>"),
                      row=row["temperature"], col=1)
        if "sd" in row and _has_sd(run):
            fig.add_trace(go.Scatter(x=t, y=np.asarray(run.max_sd)[idx], mode="lines", name=f"{label}: max sd",
                                     legendgroup=group, showlegend=False, line={"color": color, "width": 1.4},
                                     hovertemplate=f"{label}<br>{hover_t}max sd = %{{y:.4g}} {FORCE_UNIT}"
                                                   "<extra></extra>"), row=row["sd"], col=1)
        elif run.n_frames:
            notes.append(f"{label}: no force sd (a reference, or a model without an interval)")
        if run.n_frames and getattr(run, "stop_reason", "completed") not in ("completed", "running"):
            # where it stopped (threshold, unstable, cancelled): a cross at the last frame of each panel
            for p in panels:
                if p == "energy" and not _has_energy(run):
                    continue
                if p == "sd" and not _has_sd(run):
                    continue
                y = {"energy": lambda: float(run.total_energy[-1] - run.total_energy[0]),
                     "temperature": lambda: float(run.temperature_K[-1]),
                     "sd": lambda: float(run.max_sd[-1])}[p]()
                fig.add_trace(go.Scatter(x=[float(run.times_ps[-1])], y=[y], mode="markers", showlegend=False,
                                         legendgroup=group, marker={"symbol": "x", "size": 10, "color": color},
                                         hovertemplate=f"{label}: stopped ({_html.escape(run.stop_reason)})"
                                                       "<extra></extra>"), row=row[p], col=1)
    thr = sd_threshold if sd_threshold is not None else _threshold(runs)
    if "sd" in row and thr is not None:
        fig.add_hline(y=float(thr), line={"color": "#555555", "dash": "dash", "width": 1.2}, row=row["sd"], col=1,
                      annotation_text=f"stop threshold {thr:g} {FORCE_UNIT}", annotation_position="top left",
                      annotation_font={"size": 11, "color": "#555555"})
    if "energy" in row:
        fig.update_yaxes(title_text=f"E − E_total(0) ({ENERGY_UNIT})", row=row["energy"], col=1)
    fig.update_yaxes(title_text="temperature (K)", row=row["temperature"], col=1)
    if "sd" in row:
        fig.update_yaxes(title_text=f"max sd ({FORCE_UNIT})", rangemode="tozero", row=row["sd"], col=1)
    fig.update_xaxes(title_text="time (ps)", row=len(panels), col=1)
    if not runs or all(r.n_frames == 0 for r in runs):
        fig.add_annotation(text="no frames yet", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    main = title or "MD run: energies, temperature and the model's force uncertainty"
    fig.update_layout(
        title={"text": main, "x": 0.0, "subtitle": {"text": "; ".join(dict.fromkeys(notes))}},
        height=row_height * len(panels) + 150,
        # the legend in the figure's bottom band, under the x-axis title (never over a panel or a title)
        legend={"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.0, "x": 0.0},
        margin={"t": 95 if notes else 75, "b": 110},
    )
    return fig


def _bins(*arrays) -> dict:
    """Shared bins of the arrays: √(size of the smallest) bins (8 to 40) over their joint range."""
    sizes = [int(np.isfinite(np.asarray(a, dtype=float)).sum()) for a in arrays if np.size(a)]
    vals = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays if np.size(a)]) if sizes else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return {}
    n = int(np.clip(np.sqrt(min(s for s in sizes if s > 0)), 8, 40))
    lo, hi = float(vals.min()), float(vals.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.01, hi + 0.01
    return {"start": lo, "end": hi, "size": (hi - lo) / n}


def bond_length_distributions(comparison, *, model_label: str = "model", reference_label: str = "reference",
                              height_per_row: int = 260) -> go.Figure:
    """Histograms (probability density) of the bond lengths of each kind of bond, model against reference.

    Parameters
    ----------
    comparison : MDComparison
        Bonds of the model run's start; lengths of every bond of a kind in every frame are pooled.
    model_label, reference_label : str
        Legend names of the two runs.

    Returns
    -------
    go.Figure
        One panel per kind (``C–H``, …; three per row); x: bond length (Å), y: density (1/Å).
    """
    kinds = sorted(set(comparison.kinds))
    ncols = min(3, max(len(kinds), 1))
    nrows = max(1, math.ceil(len(kinds) / ncols))
    titles = [f"{kind} ({sum(1 for x in comparison.kinds if x == kind)} bonds)" for kind in kinds]
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=titles or ["no bonds"],
                        horizontal_spacing=0.08, vertical_spacing=0.42 / nrows if nrows > 1 else 0.1)
    for k, kind in enumerate(kinds):
        r, c = k // ncols + 1, k % ncols + 1
        cols = [j for j, x in enumerate(comparison.kinds) if x == kind]
        a = np.asarray(comparison.model_lengths)[:, cols].ravel()
        b = np.asarray(comparison.reference_lengths)[:, cols].ravel()
        xbins = _bins(a, b)
        for vals, name, color in ((a, model_label, RUN_COLORS[0]), (b, reference_label, RUN_COLORS[1])):
            fig.add_trace(go.Histogram(x=vals, name=name, legendgroup=name, showlegend=k == 0, xbins=xbins,
                                       histnorm="probability density", opacity=0.55, marker={"color": color},
                                       hovertemplate=f"{name}<br>%{{x}} {LENGTH_UNIT}<br>density %{{y:.3g}} 1/Å"
                                                     "<extra></extra>"), row=r, col=c)
        fig.update_xaxes(title_text=f"{kind} length ({LENGTH_UNIT})", row=r, col=c)
        if c == 1:
            fig.update_yaxes(title_text=f"density (1/{LENGTH_UNIT})", row=r, col=c)
    fig.update_layout(barmode="overlay", height=height_per_row * nrows + 80 * nrows + 110,
                      title={"text": "Bond lengths per kind of bond: model run and reference run", "x": 0.0},
                      legend={"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.0, "x": 0.0},
                      margin={"t": 80, "b": 110})
    return fig


def energy_distributions(comparison, *, model_label: str = "model", reference_label: str = "reference",
                         height: int = 420) -> go.Figure:
    """Histograms (probability density) of the potential-energy fluctuations E − ⟨E⟩ of both runs.

    Each run is centred on its own mean: the model's and the reference's absolute energies may differ by a
    constant (rMD17's DFT against GFN2-xTB). A run without energies is named in the subtitle.

    Returns
    -------
    go.Figure
        x: E_pot − ⟨E_pot⟩ (kcal/mol); y: density (1/(kcal/mol)).
    """
    fig = go.Figure()
    notes = []
    arrays = [(np.asarray(comparison.model_energy, dtype=float), model_label, RUN_COLORS[0]),
              (np.asarray(comparison.reference_energy, dtype=float), reference_label, RUN_COLORS[1])]
    finite = [(e[np.isfinite(e)], n, c) for e, n, c in arrays]
    xbins = _bins(*[e for e, _, _ in finite])
    for e, name, color in finite:
        if e.size == 0:
            notes.append(f"{name}: no energies (no energy model)")
            continue
        fig.add_trace(go.Histogram(x=e, name=f"{name} (sd {e.std():.3g} {ENERGY_UNIT})", xbins=xbins,
                                   histnorm="probability density", opacity=0.55, marker={"color": color},
                                   hovertemplate=f"{name}<br>%{{x}} {ENERGY_UNIT}<br>density %{{y:.3g}}<extra></extra>"))
    fig.update_xaxes(title_text=f"E_pot − ⟨E_pot⟩ ({ENERGY_UNIT})")
    fig.update_yaxes(title_text=f"density (1/({ENERGY_UNIT}))")
    fig.update_layout(barmode="overlay", height=height,
                      title={"text": "Potential-energy fluctuations", "x": 0.0, "subtitle": {"text": "; ".join(notes)}},
                      legend={"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.0, "x": 0.0},
                      margin={"t": 90, "b": 110})
    return fig


def trajectory_view_html(z, positions, *, times_ps=None, max_sd=None, interval_ms: int = 80,
                         max_frames: int = MAX_PLAYBACK_FRAMES, width: int | str = "100%",
                         height: int | str = "100vh", background: str = "#ffffff",
                         caption: str | None = None) -> str:
    """An offline HTML document playing the frames in 3D (3Dmol.js ``addModelsAsFrames``), with controls.

    Parameters
    ----------
    z : (N,) int
    positions : (T, N, 3) Å
    times_ps : (T,), optional — shown with the frame number
    max_sd : (T,) kcal/mol/Å, optional — the frame's largest force sd, shown with it
    interval_ms : int
        Milliseconds per frame while playing.
    max_frames : int
        Frames kept (evenly thinned beyond, first and last kept).
    width, height : int or str
        Pixels or a CSS length; the default fills the iframe.
    caption : str, optional
        A line under the controls (HTML-escaped).

    Returns
    -------
    str
        ``<!DOCTYPE html>`` with 3Dmol.js inlined; it plays on load (loop), has a play/pause button and a
        frame slider, and sets ``data-3dmol-ready="1"`` and ``data-frames`` on ``<body>`` once drawn.
    """
    z = np.asarray(z)
    R = np.asarray(positions, dtype=float)
    if z.ndim != 1 or z.size == 0 or not np.issubdtype(z.dtype, np.integer):
        raise ViewerError(f"z must be an integer array of shape (N,), got dtype {z.dtype} shape {z.shape}")
    if R.ndim != 3 or R.shape[1:] != (z.size, 3) or R.shape[0] == 0:
        raise ViewerError(f"positions must have shape (T, {z.size}, 3) with T ≥ 1, got {R.shape}")
    if not np.all(np.isfinite(R)):
        raise ViewerError("positions contain non-finite values")
    if not (isinstance(interval_ms, (int, np.integer)) and interval_ms > 0):
        raise ViewerError(f"interval_ms must be a positive integer, got {interval_ms!r}")
    idx = _thin(R.shape[0], max(int(max_frames), 1))
    info = []
    for i in idx:
        text = f"frame {int(i) + 1}/{R.shape[0]}"
        if times_ps is not None:
            text += f" · t = {float(times_ps[i]):.4g} ps"
        if max_sd is not None:
            text += f" · max sd {float(max_sd[i]):.3g} {FORCE_UNIT}"
        info.append(text)
    xyz = "".join(_xyz_block(z, R[i]) for i in idx)
    w, h = _css_size(width, "width"), _css_size(height, "height")
    script = f"""
(function () {{
  try {{
    var info = {json.dumps(info)};
    var el = document.getElementById('aff-viewer');
    var viewer = $3Dmol.createViewer(el, {{backgroundColor: {json.dumps(background)}}});
    viewer.addModelsAsFrames({json.dumps(xyz)}, 'xyz');
    viewer.setStyle({{}}, {{stick: {{radius: 0.14}}, sphere: {{scale: 0.22}}}});
    viewer.zoomTo();
    viewer.zoom(1.2);
    viewer.render();
    var n = info.length, cur = 0, timer = null;
    var slider = document.getElementById('aff-frame'), label = document.getElementById('aff-info');
    var button = document.getElementById('aff-play');
    slider.max = String(n - 1);
    function show(k) {{
      cur = k; slider.value = String(k); label.textContent = info[k];
      Promise.resolve(viewer.setFrame(k)).then(function () {{ viewer.render(); }});
    }}
    function play() {{
      if (timer || n < 2) return;
      timer = setInterval(function () {{ show((cur + 1) % n); }}, {int(interval_ms)});
      button.textContent = '⏸ pause';
    }}
    function pause() {{ if (timer) {{ clearInterval(timer); timer = null; }} button.textContent = '▶ play'; }}
    button.onclick = function () {{ timer ? pause() : play(); }};
    slider.oninput = function () {{ pause(); show(parseInt(slider.value, 10)); }};
    show(0);
    document.body.dataset['frames'] = String(n);
    document.body.dataset['3dmolReady'] = '1';
    play();
  }} catch (err) {{
    document.body.dataset['3dmolError'] = String(err);
    var msg = document.createElement('p');
    msg.textContent = '3D view failed: ' + err;
    document.body.appendChild(msg);
  }}
}})();
"""
    cap = f'<div style="color:#555">{_html.escape(caption)}</div>' if caption else ""
    controls = (
        '<div id="aff-controls" style="flex:0 0 auto;font:12px sans-serif;color:#333;padding:4px 6px;'
        'border-top:1px solid #eee;display:flex;flex-wrap:wrap;gap:8px;align-items:center">'
        '<button id="aff-play" style="font:12px sans-serif;min-width:70px">▶ play</button>'
        '<input id="aff-frame" type="range" min="0" max="0" value="0" step="1" style="flex:1 1 200px">'
        '<span id="aff-info" style="min-width:260px"></span>' + cap + "</div>"
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>aff_app MD playback</title>\n"
        "<style>html,body{margin:0;padding:0;overflow:hidden;background:" + background + "}</style>\n"
        "<script>\n" + threedmol_js() + "\n</script>\n</head>\n<body>\n"
        f'<div style="display:flex;flex-direction:column;width:{w};height:{h};">\n'
        '<div id="aff-viewer" style="position:relative;flex:1 1 auto;min-height:0;"></div>\n'
        f"{controls}</div>\n<script>\n{script}\n</script>\n</body></html>\n"
    )
