"""The offline 3D view: 3Dmol.js inlined, no external URL outside it, one arrow per atom."""

from __future__ import annotations

import re

import numpy as np
import pytest

from aff_app.figures import viewer

# water, Å
Z = np.array([8, 1, 1])
R = np.array([[0.0, 0.0, 0.119], [0.0, 0.763, -0.477], [0.0, -0.763, -0.477]])


def _outside_library(html: str) -> str:
    """The document with the inlined 3Dmol.js removed (what aff_app itself wrote)."""
    lib = viewer.threedmol_js()
    assert html.count(lib) == 1
    return html.replace(lib, "")


def test_vendored_3dmol_matches_py3dmol_version():
    """setup.sh fetched exactly the 3Dmol.js version py3Dmol would load from its CDN."""
    import inspect

    import py3Dmol

    url = inspect.signature(py3Dmol.view.__init__).parameters["js"].default
    wanted = re.search(r"3dmol@([^/]+)/", url).group(1)
    assert (viewer.VENDOR_DIR / "VERSION").read_text().strip() == wanted
    assert len(viewer.threedmol_js()) > 100_000  # the real minified library, not a stub


def test_html_inlines_3dmol_and_never_references_a_cdn():
    html = viewer.molecule_view_html(Z, R, forces=np.ones((3, 3)), labels=True, caption="frame 0")
    assert html.startswith("<!DOCTYPE html>")
    assert viewer.threedmol_js() in html
    ours = _outside_library(html)
    assert "<script src" not in html.lower()
    assert not re.search(r"https?://", ours), "aff_app's own HTML/JS must not name any URL"
    for cdn in ("cdn.jsdelivr", "unpkg.com", "3dmol.org/build", "3Dmol.csb.pitt.edu", "cdnjs"):
        assert cdn not in html
    # the readiness flag browser tests wait for
    assert "document.body.dataset['3dmolReady'] = '1'" in ours


def test_one_arrow_per_atom_from_position_along_scaled_force():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(3, 3)) * 20.0
    js = viewer.molecule_view_script(Z, R, forces=F, force_scale=0.05)
    arrows = re.findall(r"viewer\.addArrow\((\{.*?\})\);", js)
    assert len(arrows) == len(Z)
    import json

    for spec, r, f in zip(map(json.loads, arrows), R, F):
        start = np.array([spec["start"][k] for k in "xyz"])
        end = np.array([spec["end"][k] for k in "xyz"])
        np.testing.assert_allclose(start, r, atol=1e-5)
        np.testing.assert_allclose(end - start, 0.05 * f, atol=2e-5)
    html = viewer.molecule_view_html(Z, R, forces=F, force_scale=0.05)
    assert _outside_library(html).count("viewer.addArrow(") == len(Z)
    # legend states the scale with the force unit: 1 Å of arrow = 1/0.05 = 20 kcal/mol/Å
    assert "1 Å of arrow = 20 kcal/mol/Å" in html


def test_no_arrows_without_forces_or_with_zero_scale():
    assert "addArrow" not in viewer.molecule_view_script(Z, R)
    assert "addArrow" not in viewer.molecule_view_script(Z, R, forces=np.ones((3, 3)), force_scale=0.0)


def test_colors_and_labels_per_atom():
    js = viewer.molecule_view_script(Z, R, colors=["#ff0000", "#00ff00", "#00ff00"], labels=True)
    assert js.count("viewer.setStyle({index:") == 3
    assert '"#00ff00"' in js
    assert js.count("viewer.addLabel(") == 3
    assert '"O0"' in js and '"H2"' in js


def test_user_text_is_escaped():
    html = viewer.molecule_view_html(Z, R, caption="<script>alert(1)</script>")
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(z=Z, R=R[:2]), r"R must have shape \(3, 3\)"),
        (dict(z=Z, R=R, forces=np.ones((2, 3))), r"forces must have shape \(3, 3\)"),
        (dict(z=Z, R=R, colors=["#ff0000"]), "one colour per atom"),
        (dict(z=Z, R=R, colors=["red", "red", "red"]), "#rrggbb"),
        (dict(z=Z, R=R, forces=np.ones((3, 3)), force_scale=-1.0), "force_scale"),
        (dict(z=Z.astype(float), R=R), "integer"),
    ],
)
def test_bad_input_raises_viewer_error(kwargs, match):
    with pytest.raises(viewer.ViewerError, match=match):
        viewer.molecule_view_html(**kwargs)


def test_missing_library_says_run_setup(monkeypatch, tmp_path):
    monkeypatch.setattr(viewer, "THREEDMOL_JS", tmp_path / "missing" / "3Dmol-min.js")
    viewer.threedmol_js.cache_clear()
    try:
        with pytest.raises(viewer.ViewerAssetError, match="scripts/setup.sh"):
            viewer.molecule_view_html(Z, R)
    finally:
        monkeypatch.undo()
        viewer.threedmol_js.cache_clear()


def test_view_fits_arrows_and_keeps_the_legend_off_the_atoms():
    """Issue 20 item 8: the arrow tips are part of what zoomTo fits (an invisible second model), no extra zoom
    crops a large molecule, and the legend is a band under the canvas, not an overlay."""
    from aff_app.figures import viewer

    z = np.array([6, 1])
    R = np.array([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0]])
    F = np.array([[0.0, 50.0, 0.0], [0.0, 0.0, 0.0]])
    js = viewer.molecule_view_script(z, R, forces=F, force_scale=0.05)
    assert js.count("viewer.addModel(") == 2 and "viewer.setStyle({model: 1}, {});" in js
    assert "viewer.zoom(" not in js and js.index("addModel") < js.index("zoomTo")
    # the tip of atom 0's arrow, 50 × 0.05 = 2.5 Å along y, is an atom of the hidden model
    assert "0.000000 2.500000 0.000000" in js.split("viewer.addModel(")[2]
    assert viewer.molecule_view_script(z, R).count("viewer.addModel(") == 1  # no arrows, no second model
    try:
        html = viewer.molecule_view_html(z, R, forces=F, force_scale=0.05, caption="frame 0")
    except viewer.ViewerAssetError:
        pytest.fail("3Dmol.js missing: run scripts/setup.sh")
    canvas = html.index('<div id="aff-viewer"')
    assert html.index('<div id="aff-legend"') > html.index("</div>", canvas)  # after the canvas div closes
    assert "position:absolute" not in html.split('<div id="aff-legend"')[1].split(">")[0]
