"""Figures of the MD page, built from a small real run of AFF on uracil and a GFN2-xTB run from the same start:
axes named with units, traces present only where a run has the quantity, the threshold dashed, an offline playback."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from aff_app.figures import md as figmd
from aff_app.figures.viewer import ViewerError
from aff_app.io.files import load_trajectory
from aff_app.workflows import pipeline
from aff_app.workflows.md import MDSettings, compare_runs, reference_settings, run_md, run_model_md, xtb_calculator


@pytest.fixture(scope="module")
def runs(repo_root):
    traj = load_trajectory(repo_root / "sample_data" / "uracil.npz", frames=":600")
    trained = pipeline.fit(traj, np.arange(0, 600, 8), pipeline.TrainSettings(gamma=4.5, lam=1e-8))
    s = MDSettings(n_steps=60, record_every=5, sd_threshold=50.0)
    model = run_model_md(trained.force, trained.energy, traj.R[599], s, label="AFF")
    ref = run_md(xtb_calculator(), traj.z, traj.R[599], reference_settings(s), label="GFN2-xTB", threads=1)
    return model, ref


def _titles(fig) -> list[str]:
    lay = fig.to_plotly_json()["layout"]
    return [v["title"]["text"] for k, v in lay.items() if re.match(r"[xy]axis\d*$", k) and "title" in v]


def test_traces_have_every_panel_with_units_and_one_colour_per_run(runs):
    model, ref = runs
    fig = figmd.md_traces([model, ref])
    titles = _titles(fig)
    assert titles.count("time (ps)") == 1  # shared x, named once at the bottom
    assert {"E − E_total(0) (kcal/mol)", "temperature (K)", "max sd (kcal/mol/Å)"} <= set(titles)
    names = [t.name for t in fig.data if t.name]
    assert {"AFF: E_pot", "AFF: E_total", "GFN2-xTB: E_pot", "GFN2-xTB: E_total", "AFF: max sd"} <= set(names)
    assert not any(n.startswith("GFN2-xTB: max sd") for n in names)  # the reference has no sd …
    assert "GFN2-xTB: no force sd" in fig.layout.title.subtitle.text  # … and the figure says so
    colors = {t.name.split(":")[0]: t.line.color for t in fig.data if t.name and ":" in t.name}
    assert colors["AFF"] != colors["GFN2-xTB"]
    # each run relative to its own start: both total energies start at 0
    for t in fig.data:
        if t.name and t.name.endswith("E_total"):
            assert t.y[0] == pytest.approx(0.0, abs=1e-9)
    # the threshold of the model's settings, dashed
    lines = [s for s in fig.layout.shapes if s.line.dash == "dash"]
    assert len(lines) == 1 and lines[0].y0 == 50.0


def test_traces_without_energy_or_sd_drop_those_panels_and_say_why(runs):
    model, _ = runs
    bare = dataclasses.replace(model, force_sd=None, potential_energy=np.full(model.n_frames, np.nan))
    fig = figmd.md_traces([bare])
    assert _titles(fig) == ["time (ps)", "temperature (K)"]
    assert "no energy model, so no energy traces" in fig.layout.title.subtitle.text
    assert "no force sd" in fig.layout.title.subtitle.text
    assert [t.name for t in fig.data] == ["AFF"] and not fig.layout.shapes


def test_a_stopped_run_is_marked_where_it_stopped(runs):
    model, _ = runs
    stopped = dataclasses.replace(model, stop_reason="sd_threshold")
    crosses = [t for t in figmd.md_traces([stopped]).data if t.mode == "markers"]
    assert len(crosses) == 3 and all(t.x[0] == model.times_ps[-1] for t in crosses)


def test_distributions_per_bond_kind_and_of_energy_fluctuations(runs):
    model, ref = runs
    cmp = compare_runs(model, ref)
    bonds = figmd.bond_length_distributions(cmp, model_label="AFF", reference_label="GFN2-xTB")
    titles = _titles(bonds)
    assert {f"{k} length (Å)" for k in ("C–C", "C–H", "C–N", "C–O", "H–N")} <= set(titles)
    assert "density (1/Å)" in titles
    assert len(bonds.data) == 2 * 5 and {t.name for t in bonds.data} == {"AFF", "GFN2-xTB"}
    energy = figmd.energy_distributions(cmp, model_label="AFF", reference_label="GFN2-xTB")
    assert _titles(energy) == ["E_pot − ⟨E_pot⟩ (kcal/mol)", "density (1/(kcal/mol))"]
    assert len(energy.data) == 2 and all(abs(np.mean(t.x)) < 1e-9 for t in energy.data)  # centred on its mean
    no_e = dataclasses.replace(cmp, model_energy=np.full_like(cmp.model_energy, np.nan))
    fig = figmd.energy_distributions(no_e, model_label="AFF", reference_label="GFN2-xTB")
    assert len(fig.data) == 1 and "AFF: no energies" in fig.layout.title.subtitle.text


def test_playback_is_offline_and_thinned(runs):
    model, _ = runs
    html = figmd.trajectory_view_html(model.z, model.positions, times_ps=model.times_ps, max_sd=model.max_sd)
    assert "addModelsAsFrames" in html and "$3Dmol" in html
    assert not re.search(r"<script[^>]+src=", html)  # 3Dmol.js inlined, never a CDN
    assert html.count("aff_app frame") == model.n_frames and "t = 0.03 ps" in html
    thin = figmd.trajectory_view_html(model.z, np.repeat(model.positions, 100, axis=0), max_frames=50)
    assert thin.count("aff_app frame") <= 51
    with pytest.raises(ViewerError, match=r"shape \(T, 12, 3\)"):
        figmd.trajectory_view_html(model.z, model.positions[0])
