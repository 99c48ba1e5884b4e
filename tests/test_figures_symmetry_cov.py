"""Pure builders of the Symmetry and Covariance pages: PE-set colours/legend, covariance heatmaps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aff_app.figures import covariance as fc
from aff_app.figures import symmetry as fs

BENZENE_Z = np.array([6] * 6 + [1] * 6)


def _spec(fig) -> dict:
    return json.loads(fig.to_json())


# -- PE-set colours and legend ------------------------------------------------------------------


def test_multi_atom_sets_get_distinct_palette_colours_and_singletons_share_grey():
    sets = [[0, 1], [2], [3, 4, 5], [6], [7, 8]]
    atom_colors, colors = fs.set_colors(sets, 9)
    multi = [colors[0], colors[2], colors[4]]
    assert len(set(multi)) == 3 and all(c in fs.PALETTE for c in multi)
    assert colors[1] == colors[3] == fs.SINGLETON_COLOR not in multi
    assert atom_colors == [colors[0]] * 2 + [colors[1]] + [colors[2]] * 3 + [colors[3]] + [colors[4]] * 2
    assert len(set(fs.PALETTE)) == len(fs.PALETTE) == 16
    assert fs.SINGLETON_COLOR not in fs.PALETTE
    assert all(len(c) == 7 and c.startswith("#") for c in fs.PALETTE)


def test_legend_names_sets_elements_and_atoms_and_explains_grey():
    sets = [list(range(6)), list(range(6, 12))]
    html = fs.legend_html(sets, BENZENE_Z)
    _, colors = fs.set_colors(sets, 12)
    for c in colors:
        assert f"background:{c}" in html
    assert "set 1" in html and "set 2" in html
    assert "6 C" in html and "6 H" in html and "C0 C1 C2 C3 C4 C5" in html and "H11" in html
    assert "single-atom" not in html
    uracil_like = fs.legend_html([[i] for i in range(4)], np.array([6, 7, 8, 1]))
    assert "single-atom sets" in uracil_like and "grey" in uracil_like and "4:H3" in uracil_like


def test_set_rows_table():
    rows = fs.set_rows([[0, 2], [1]], np.array([1, 8, 1]))
    assert rows[0] == {"set": 1, "element(s)": "H", "atoms": "H0, H2", "size l_i": 2, "colour": fs.PALETTE[0]}
    assert rows[1]["atoms"] == "O1" and rows[1]["colour"] == fs.SINGLETON_COLOR


# -- covariance heatmaps --------------------------------------------------------------------------


def _random_cov(n: int, seed: int = 0) -> np.ndarray:
    A = np.random.default_rng(seed).normal(size=(n, n))
    return A @ A.T - 3.0 * np.eye(n)  # some negative entries, not a real covariance: only drawn


def test_heatmap_is_diverging_and_symmetric_about_zero():
    C = _random_cov(36)
    fig = fc.covariance_heatmap(C, BENZENE_Z, title="Kernel\nsub", colorbar_title="covariance (kernel units, 1/Å²)")
    spec = _spec(fig)
    (trace,) = spec["data"]
    assert trace["type"] == "heatmap"
    assert trace["zmin"] == -trace["zmax"] == -np.abs(C).max()
    assert trace["zmid"] == 0
    scale = trace["colorscale"]  # RdBu_r: blue at the bottom, red on top, near-white in the middle
    assert scale[0][1].lower() in ("rgb(5,48,97)", "#053061") and scale[-1][1].lower() in ("rgb(103,0,31)", "#67001f")
    assert trace["colorbar"]["title"]["text"] == "covariance (kernel units, 1/Å²)"
    assert spec["layout"]["title"]["text"] == "Kernel" and spec["layout"]["title"]["subtitle"]["text"] == "sub"
    assert spec["layout"]["xaxis"]["title"]["text"] and spec["layout"]["yaxis"]["title"]["text"]
    assert spec["layout"]["yaxis"]["autorange"] == "reversed"


def test_correlation_heatmap_uses_fixed_unit_range_and_labels_components():
    C = np.eye(6)
    fig = fc.covariance_heatmap(C, np.array([8, 1]), title="t", colorbar_title="correlation (unitless)", zmax=1.0)
    spec = _spec(fig)
    trace = spec["data"][0]
    assert (trace["zmin"], trace["zmax"]) == (-1.0, 1.0)
    assert spec["layout"]["xaxis"]["ticktext"] == ["O0 x", "O0 y", "O0 z", "H1 x", "H1 y", "H1 z"]
    assert trace["x"] == trace["y"] == ["O0 x", "O0 y", "O0 z", "H1 x", "H1 y", "H1 z"]
    assert spec["layout"]["xaxis"]["title"]["text"] == "force component (atom, direction)"


def test_block_heatmap_labels_each_atom_once_per_frame_and_marks_blocks():
    frames = [0, 1500, 2999]
    C = _random_cov(36 * 3)
    fig = fc.covariance_heatmap(C, BENZENE_Z, frames=frames, title="t", colorbar_title="c")
    spec = _spec(fig)
    trace = spec["data"][0]
    assert len(trace["x"]) == 108 and len(set(trace["x"])) == 108  # unique, for hover
    assert trace["x"][0] == "frame 0 · C0 x" and trace["x"][-1] == "frame 2999 · H11 z"
    ticks = spec["layout"]["xaxis"]["ticktext"]
    assert ticks == [f"{'C' if i < 6 else 'H'}{i}" for i in range(12)] * 3
    assert spec["layout"]["xaxis"]["tickvals"][1] == "frame 0 · C1 x"  # at the atom's x component
    assert "x, y, z" in spec["layout"]["xaxis"]["title"]["text"]
    names = [a["text"] for a in spec["layout"]["annotations"]]
    assert names == ["<b>frame 0</b>", "<b>frame 1500</b>", "<b>frame 2999</b>"]
    assert len(spec["layout"]["shapes"]) == 4  # two separators on each axis
    assert trace["zmin"] == -trace["zmax"]


def test_set_heatmap_labels_only_the_set_atoms():
    atoms = [6, 7, 8, 9, 10, 11]
    C = _random_cov(18 * 2)
    spec = _spec(fc.covariance_heatmap(C, BENZENE_Z, atoms=atoms, frames=[3, 9], title="t", colorbar_title="c"))
    assert set(spec["layout"]["xaxis"]["ticktext"]) == {f"H{i}" for i in atoms}
    assert spec["data"][0]["y"][0] == "frame 3 · H6 x"


def test_heatmap_rejects_shape_mismatch_and_repeated_frames():
    with pytest.raises(fc.CovarianceFigureError, match=r"\(36, 36\)"):
        fc.covariance_heatmap(np.eye(30), BENZENE_Z, title="t", colorbar_title="c")
    with pytest.raises(fc.CovarianceFigureError, match="distinct"):
        fc.component_labels(BENZENE_Z, frames=[1, 1])


def test_all_zero_matrix_still_has_a_valid_symmetric_range():
    spec = _spec(fc.covariance_heatmap(np.zeros((6, 6)), np.array([1, 1]), title="t", colorbar_title="c"))
    assert (spec["data"][0]["zmin"], spec["data"][0]["zmax"]) == (-1.0, 1.0)
