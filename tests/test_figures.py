"""Plotly builders: axis titles carry units, the selected frame is marked, values are the data's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aff_app.figures import data as figures


def _layout(fig) -> dict:
    return json.loads(fig.to_json())


def test_energy_figure_axes_have_units_and_marks_selected_frame():
    E = np.array([-10.0, -9.5, -9.8, -9.1])
    spec = _layout(figures.energy_per_frame_figure(E, selected=2))
    assert spec["layout"]["xaxis"]["title"]["text"] == "frame index"
    assert spec["layout"]["yaxis"]["title"]["text"] == "energy (kcal/mol)"
    line, marker = spec["data"]
    np.testing.assert_allclose(_decode(line["y"]), E)
    assert _decode(marker["x"]) == [2] and _decode(marker["y"]) == [E[2]]
    assert any(s.get("x0") == 2 for s in spec["layout"].get("shapes", []))


def _decode(v):
    """plotly >= 6 may encode arrays as {'dtype', 'bdata'}; return a plain list."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


def test_energy_unit_keyword_reaches_the_axis():
    spec = _layout(figures.energy_per_frame_figure(np.zeros(3), energy_unit="eV"))
    assert spec["layout"]["yaxis"]["title"]["text"] == "energy (eV)"
    assert len(spec["data"]) == 1  # nothing selected: no marker trace


def test_max_force_figure_is_largest_atomic_norm_with_unit():
    F = np.zeros((3, 2, 3))
    F[0, 1] = [3.0, 4.0, 0.0]  # |F| = 5
    F[1, 0] = [0.0, 0.0, -2.0]  # 2
    F[2, 0] = [1.0, 2.0, 2.0]  # 3
    F[2, 1] = [0.0, 0.0, 1.0]
    np.testing.assert_allclose(figures.max_force_per_frame(F), [5.0, 2.0, 3.0])
    spec = _layout(figures.max_force_per_frame_figure(F, selected=0))
    assert spec["layout"]["yaxis"]["title"]["text"] == "max |F| (kcal/mol/Å)"
    assert spec["layout"]["xaxis"]["title"]["text"] == "frame index"
    np.testing.assert_allclose(_decode(spec["data"][0]["y"]), [5.0, 2.0, 3.0])


def test_bad_shapes_and_selection_raise():
    with pytest.raises(figures.FigureError, match=r"\(M, N, 3\)"):
        figures.max_force_per_frame(np.zeros((3, 2)))
    with pytest.raises(figures.FigureError, match="outside 0..2"):
        figures.energy_per_frame_figure(np.zeros(3), selected=3)
    with pytest.raises(figures.FigureError, match="empty"):
        figures.energy_per_frame_figure(np.zeros(0))
