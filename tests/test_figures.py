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


def test_accuracy_time_figure_front_and_summary():
    """Issue 20 item 6: the session's models on one accuracy-against-time plot; the trade-off front joins the
    models nothing beats on both axes; the summary says who is more accurate at what time."""
    from aff_app.figures.compare import ModelPoint, accuracy_time_figure, accuracy_time_summary, pareto_front

    pts = [
        ModelPoint("aff", "AFF", 200, 3.0, 0.0412, 0.05),
        ModelPoint("sgdml", "sGDML", 200, 6.9, 0.0327, 0.04),
        ModelPoint("gdml", "GDML", 200, 9.0, 0.09, 0.2),  # slower and worse than both: off the front
        ModelPoint("uploaded", "AFF", 200, None, 0.05),  # no time: not plotted
    ]
    assert [p.name for p in pareto_front(pts)] == ["aff", "sgdml"]
    fig = accuracy_time_figure(pts)
    markers = [t for t in fig.data if t.mode == "markers+text"]
    assert sorted(t.name for t in markers if t.xaxis == "x") == ["AFF", "GDML", "sGDML"]
    assert sum(len(t.x) for t in markers if t.xaxis == "x") == 3
    front = [t for t in fig.data if t.name == "best trade-off"]
    assert len(front) == 2 and list(front[0].x) == [3.0, 6.9]  # force and energy panels
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.title.text == "force MAE (kcal/mol/Å)"
    assert fig.layout.xaxis.title.text == "training time (s)"
    text = accuracy_time_summary(pts)
    assert text.startswith("sgdml (sGDML) is the most accurate, force MAE 0.0327 against 0.0412")
    assert "1.3× smaller error at 2.3× the training time" in text
    assert accuracy_time_summary(pts[:1]) is None
