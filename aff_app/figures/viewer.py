"""Self-contained, offline 3D molecule views (HTML documents built around 3Dmol.js).

The app embeds these documents in an iframe; they must work with no network:
3Dmol.js is *inlined* from the copy that ``scripts/setup.sh`` fetches into
``vendor/3dmol/`` (the npm package ``3dmol`` at exactly the version py3Dmol
loads from its CDN). The view script itself is written here as plain 3Dmol.js
calls — the same calls py3Dmol would emit (``createViewer``, ``addModel``,
``setStyle``, ``addArrow``, ``addLabel``, ``zoomTo``, ``render``) — so that
no ``<script src=...>`` pointing to a CDN ever appears in the page.

After drawing, the page sets ``data-3dmol-ready="1"`` on ``<body>`` (browser
tests wait for it); if drawing fails it sets ``data-3dmol-error`` and shows
the message.

Units: positions in Å, forces in the unit named by ``force_unit`` (internal
kcal/mol/Å by default); an arrow is ``force_scale * F`` long, in Å.

No Streamlit here (see ``aff_app.ui``).
"""

from __future__ import annotations

import html as _html
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from aff_app.errors import AFFError
from aff_app.units import FORCE_UNIT

#: Where ``scripts/setup.sh`` unpacks the npm package ``3dmol``.
VENDOR_DIR = Path(__file__).resolve().parents[2] / "vendor" / "3dmol"
#: The minified 3Dmol.js inside it.
THREEDMOL_JS = VENDOR_DIR / "package" / "build" / "3Dmol-min.js"

#: Arrows shorter than this (Å) are not drawn: 3Dmol cannot orient a zero-length arrow.
MIN_ARROW_LENGTH = 1e-4
_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


class ViewerError(AFFError, ValueError):
    """Arrays or options that cannot be drawn (message carries the shapes)."""


class ViewerAssetError(AFFError, RuntimeError):
    """The offline copy of 3Dmol.js is missing (run ``scripts/setup.sh``)."""


@lru_cache(maxsize=1)
def threedmol_js() -> str:
    """Return the text of the vendored ``3Dmol-min.js``.

    Raises
    ------
    ViewerAssetError
        If ``vendor/3dmol/package/build/3Dmol-min.js`` does not exist.
    """
    if not THREEDMOL_JS.is_file():
        raise ViewerAssetError(
            f"3Dmol.js not found at {THREEDMOL_JS}: run `bash scripts/setup.sh` once "
            "(it fetches the npm package 3dmol for offline use)."
        )
    text = THREEDMOL_JS.read_text(encoding="utf-8")
    if "</script" in text.lower():  # would end the inline <script> early
        raise ViewerAssetError(f"{THREEDMOL_JS} contains '</script>' and cannot be inlined")
    return text


def _css_size(value: int | str, name: str) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value <= 0:
            raise ViewerError(f"{name} must be positive, got {value}")
        return f"{int(value)}px"
    if isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?(px|%|vh|vw|em|rem)", value.strip()):
        return value.strip()
    raise ViewerError(f"{name} must be a number of pixels or a CSS length like '100%', got {value!r}")


def _xyz_block(z: np.ndarray, R: np.ndarray) -> str:
    from ase.data import chemical_symbols

    lines = [str(len(z)), "aff_app frame"]
    lines += [f"{chemical_symbols[int(a)]} {x:.6f} {y:.6f} {w:.6f}" for a, (x, y, w) in zip(z, R)]
    return "\n".join(lines) + "\n"


def _vec(p) -> dict[str, float]:
    return {"x": round(float(p[0]), 5), "y": round(float(p[1]), 5), "z": round(float(p[2]), 5)}


def molecule_view_script(
    z,
    R,
    *,
    forces=None,
    force_scale: float = 0.02,
    colors=None,
    labels: bool = False,
    arrow_color: str = "#d62728",
    background: str = "#ffffff",
    element_id: str = "aff-viewer",
) -> str:
    """JavaScript (no ``<script>`` tags, no 3Dmol.js) that draws one frame.

    Parameters
    ----------
    z : array of int, shape (N,)
        Atomic numbers.
    R : array of float, shape (N, 3)
        Positions in Å.
    forces : array of float, shape (N, 3), optional
        Forces; one arrow per atom from ``R[i]`` to ``R[i] + force_scale * forces[i]``
        (atoms whose arrow would be shorter than ``MIN_ARROW_LENGTH`` Å get none).
    force_scale : float
        Arrow length in Å per unit of force (>= 0).
    colors : sequence of str, length N, optional
        Per-atom ``'#rrggbb'`` colours (e.g. one colour per permutation-equivalent
        set); default: element colours.
    labels : bool
        Label each atom with its element and 0-based index (``C0``, ``H6``...).
    arrow_color, background : str
        ``'#rrggbb'`` colours.
    element_id : str
        Id of the ``<div>`` the viewer draws into.

    Returns
    -------
    str
        The script; it sets ``document.body.dataset['3dmolReady'] = '1'`` when drawn.
    """
    z = np.asarray(z)
    if z.ndim != 1 or z.size == 0 or not np.issubdtype(z.dtype, np.integer):
        raise ViewerError(f"z must be an integer array of shape (N,), got dtype {z.dtype} shape {z.shape}")
    n = z.size
    R = np.asarray(R, dtype=float)
    if R.shape != (n, 3):
        raise ViewerError(f"R must have shape ({n}, 3) (one frame), got {R.shape}")
    if not np.all(np.isfinite(R)):
        raise ViewerError("R contains non-finite positions")
    F = None
    if forces is not None:
        F = np.asarray(forces, dtype=float)
        if F.shape != (n, 3):
            raise ViewerError(f"forces must have shape ({n}, 3), got {F.shape}")
        if not np.all(np.isfinite(F)):
            raise ViewerError("forces contain non-finite values")
    if not (np.isfinite(force_scale) and force_scale >= 0):
        raise ViewerError(f"force_scale must be a finite number >= 0 (Å per force unit), got {force_scale}")
    if colors is not None:
        colors = list(colors)
        if len(colors) != n:
            raise ViewerError(f"colors must give one colour per atom ({n}), got {len(colors)}")
        bad = [c for c in colors if not (isinstance(c, str) and _HEX_COLOR.match(c))]
        if bad:
            raise ViewerError(f"colors must be '#rrggbb' strings, got {bad[:3]}")
    for name, c in (("arrow_color", arrow_color), ("background", background)):
        if not _HEX_COLOR.match(str(c)):
            raise ViewerError(f"{name} must be a '#rrggbb' string, got {c!r}")

    stick, sphere = {"radius": 0.14}, {"scale": 0.22}
    js = [
        "(function () {",
        "  try {",
        f"    var el = document.getElementById({json.dumps(element_id)});",
        f"    var viewer = $3Dmol.createViewer(el, {{backgroundColor: {json.dumps(background)}}});",
        f"    viewer.addModel({json.dumps(_xyz_block(z, R))}, 'xyz');",
        f"    viewer.setStyle({{}}, {json.dumps({'stick': stick, 'sphere': sphere})});",
    ]
    if colors is not None:
        for i, c in enumerate(colors):
            style = {"stick": {**stick, "color": c}, "sphere": {**sphere, "color": c}}
            js.append(f"    viewer.setStyle({{index: {i}}}, {json.dumps(style)});")
    if labels:
        from ase.data import chemical_symbols

        for i, (a, p) in enumerate(zip(z, R)):
            opts = {
                "position": _vec(p),
                "fontSize": 11,
                "fontColor": "black",
                "backgroundColor": "white",
                "backgroundOpacity": 0.6,
                "inFront": True,
            }
            js.append(f"    viewer.addLabel({json.dumps(chemical_symbols[int(a)] + str(i))}, {json.dumps(opts)});")
    if F is not None and force_scale > 0:
        for p, f in zip(R, F):
            if force_scale * np.linalg.norm(f) < MIN_ARROW_LENGTH:
                continue
            spec = {
                "start": _vec(p),
                "end": _vec(p + force_scale * f),
                "radius": 0.07,
                "radiusRatio": 2.2,
                "mid": 0.75,
                "color": arrow_color,
            }
            js.append(f"    viewer.addArrow({json.dumps(spec)});")
    # fit the view to everything drawn: arrow tips join the atoms as an invisible second model, so zoomTo's
    # bounding box holds them too (an arrow that leaves the molecule is not cropped)
    tips = [p + force_scale * f for p, f in zip(R, F)] if F is not None and force_scale > 0 else []
    if tips:
        js.append(f"    viewer.addModel({json.dumps(_xyz_block(np.ones(len(tips), dtype=int), np.array(tips)))}, 'xyz');")
        js.append("    viewer.setStyle({model: 1}, {});")
    js += [
        "    viewer.zoomTo();",
        "    viewer.render();",
        "    document.body.dataset['3dmolReady'] = '1';",
        "  } catch (err) {",
        "    document.body.dataset['3dmolError'] = String(err);",
        "    var msg = document.createElement('p');",
        "    msg.textContent = '3D view failed: ' + err;",
        "    document.body.appendChild(msg);",
        "  }",
        "})();",
    ]
    return "\n".join(js)


def molecule_view_html(
    z,
    R,
    *,
    forces=None,
    force_scale: float = 0.02,
    force_unit: str = FORCE_UNIT,
    colors=None,
    labels: bool = False,
    width: int | str = "100%",
    height: int | str = "100vh",
    arrow_color: str = "#d62728",
    background: str = "#ffffff",
    caption: str | None = None,
) -> str:
    """A complete offline HTML document showing one frame in 3D.

    Parameters
    ----------
    z : array of int, shape (N,)
        Atomic numbers.
    R : array of float, shape (N, 3)
        Positions in Å.
    forces : array of float, shape (N, 3), optional
        Forces in ``force_unit``, drawn as arrows ``force_scale * F`` Å long.
    force_scale : float
        Å of arrow per ``force_unit`` (>= 0; 0 hides the arrows).
    force_unit : str
        Unit of ``forces``, quoted in the legend.
    colors : sequence of str, length N, optional
        Per-atom ``'#rrggbb'`` colours; default element colours.
    labels : bool
        Show element + index labels.
    width, height : int or str
        Size of the viewer (pixels, or a CSS length). The default fills the
        iframe the page is shown in.
    arrow_color, background : str
        ``'#rrggbb'`` colours.
    caption : str, optional
        A line of text under the legend (HTML-escaped).

    Returns
    -------
    str
        ``<!DOCTYPE html>`` document with 3Dmol.js inlined; it makes no network request.

    Raises
    ------
    ViewerError
        Bad shapes or options.
    ViewerAssetError
        3Dmol.js has not been fetched (run ``scripts/setup.sh``).
    """
    script = molecule_view_script(
        z, R, forces=forces, force_scale=force_scale, colors=colors, labels=labels,
        arrow_color=arrow_color, background=background,
    )
    w, h = _css_size(width, "width"), _css_size(height, "height")
    legend = []
    if forces is not None and force_scale > 0:
        legend.append(
            f'<span style="color:{arrow_color}">&#x2192;</span> force arrows: 1 Å of arrow = '
            f"{_html.escape(f'{1.0 / force_scale:.3g}')} {_html.escape(force_unit)}"
        )
    if caption:
        legend.append(_html.escape(caption))
    # the legend is a band under the canvas, never over the atoms
    legend_html = (
        '<div id="aff-legend" style="flex:0 0 auto;font:12px sans-serif;color:#333;padding:2px 6px;'
        'border-top:1px solid #eee">'
        + "<br>".join(legend)
        + "</div>"
        if legend
        else ""
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>aff_app 3D view</title>\n"
        "<style>html,body{margin:0;padding:0;overflow:hidden;background:" + background + "}</style>\n"
        "<script>\n" + threedmol_js() + "\n</script>\n</head>\n<body>\n"
        f'<div style="display:flex;flex-direction:column;width:{w};height:{h};">\n'
        '<div id="aff-viewer" style="position:relative;flex:1 1 auto;min-height:0;"></div>\n'
        f"{legend_html}</div>\n"
        "<script>\n" + script + "\n</script>\n</body></html>\n"
    )
