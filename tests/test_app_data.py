"""The Data page through Streamlit's AppTest (no browser): sources, errors, summary, explorer."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from aff_app.ui import state
from aff_app.units import energy_factor, force_factor

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")


# st.cache_data survives across AppTest instances: start every test cold
pytestmark = pytest.mark.usefixtures("fresh_streamlit_cache")


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    return at


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _plotly_specs(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def _water_extxyz(n_frames: int = 4) -> tuple[bytes, np.ndarray, np.ndarray]:
    """An extended XYZ written by ASE (energies in eV, forces in eV/Å); returns bytes, E, F."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    rng = np.random.default_rng(1)
    base = np.array([[0.0, 0.0, 0.119], [0.0, 0.763, -0.477], [0.0, -0.763, -0.477]])
    frames, E, F = [], [], []
    for i in range(n_frames):
        atoms = Atoms("OH2", positions=base + 0.02 * rng.normal(size=base.shape))
        e, f = -14.2 + 0.05 * i, rng.normal(size=(3, 3))
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        frames.append(atoms)
        E.append(e)
        F.append(f)
    buf = io.StringIO()
    write(buf, frames, format="extxyz")
    return buf.getvalue().encode(), np.array(E), np.array(F)


def test_fresh_session_opens_on_benzene_sample():
    at = _app()
    m = _metrics(at)
    assert m["Formula"] == "C6H6"
    assert m["Atoms"] == "12"
    traj = at.session_state[state.TRAJECTORY]
    assert m["Frames"] == f"{traj.n_frames:,}"
    assert traj.provenance.source.endswith("benzene.npz")
    # summary states units and the energy range in kcal/mol
    summary = " ".join(md.value for md in at.markdown)
    assert "Energy range:" in summary and "kcal/mol" in summary
    assert f"{traj.E.min():,.2f}" in summary and f"{traj.E.max():,.2f}" in summary
    assert any(label.startswith("Largest |F| (kcal/mol/Å)") for label in m)
    # both per-frame plots, with unit-bearing axis titles, and the 3D view
    titles = [s["layout"]["yaxis"]["title"]["text"] for s in _plotly_specs(at)]
    assert titles == ["energy (kcal/mol)", "max |F| (kcal/mol/Å)"]
    html = at.get("iframe")[0].proto.srcdoc
    assert "3dmolReady" in html and "cdn.jsdelivr" not in html
    assert html.count("viewer.addArrow(") == 12  # forces shown by default, one arrow per atom
    assert not at.error


def test_pick_another_sample():
    at = _app()
    names = at.selectbox(key=state.SAMPLE_CHOICE).options
    other = "uracil" if "uracil" in names else next(n for n in names if n != "benzene")
    at.selectbox(key=state.SAMPLE_CHOICE).set_value(other)
    at.button(key=state.SAMPLE_LOAD).click().run()
    assert not at.exception, at.exception
    assert not at.error
    traj = at.session_state[state.TRAJECTORY]
    assert traj.provenance.source.endswith(f"{other}.npz")
    assert _metrics(at)["Formula"] == traj.formula != "C6H6"
    assert any(traj.formula in s.value for s in at.success)


def test_upload_extxyz_converts_ev_to_kcal_per_mol():
    raw, E_ev, F_ev = _water_extxyz(4)
    at = _app()
    at.file_uploader(key=state.UPLOAD_FILE).set_value(("water.extxyz", raw, "text/plain")).run()
    assert not at.exception, at.exception
    # keys are auto-suggested from the file
    assert "energy" in at.selectbox(key=state.UPLOAD_ENERGY_KEY).options
    assert "forces" in at.selectbox(key=state.UPLOAD_FORCES_KEY).options
    at.button(key=state.UPLOAD_LOAD).click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    m = _metrics(at)
    assert (m["Formula"], m["Frames"], m["Atoms"]) == ("H2O", "4", "3")
    traj = at.session_state[state.TRAJECTORY]
    np.testing.assert_allclose(traj.E, E_ev * energy_factor("eV"), rtol=1e-10)
    # ASE's extxyz writer keeps 8 decimals of eV/Å
    np.testing.assert_allclose(traj.F, F_ev * force_factor("eV", "Å"), rtol=0, atol=1e-8 * force_factor("eV", "Å"))
    assert traj.provenance.energy_unit == "eV"
    # the plot shows kcal/mol values of the uploaded frames
    energy_spec = _plotly_specs(at)[0]
    assert energy_spec["layout"]["yaxis"]["title"]["text"] == "energy (kcal/mol)"


def test_upload_with_frame_slice_and_unit_override():
    raw, E_ev, _ = _water_extxyz(6)
    at = _app()
    at.file_uploader(key=state.UPLOAD_FILE).set_value(("water.extxyz", raw, "text/plain")).run()
    at.text_input(key=state.UPLOAD_FRAMES).set_value("::2")
    at.selectbox(key=state.UPLOAD_ENERGY_UNIT).set_value("Hartree")  # pretend the file were in Hartree
    at.button(key=state.UPLOAD_LOAD).click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    traj = at.session_state[state.TRAJECTORY]
    assert traj.n_frames == 3
    np.testing.assert_allclose(traj.E, E_ev[::2] * energy_factor("Hartree"), rtol=1e-10)


def test_junk_upload_shows_error_and_keeps_previous_data():
    at = _app()
    before = at.session_state[state.TRAJECTORY]
    at.file_uploader(key=state.UPLOAD_FILE).set_value(("junk.npz", b"this is not a trajectory\x00\xff", "application/octet-stream")).run()
    assert not at.exception, at.exception
    at.button(key=state.UPLOAD_LOAD).click().run()
    assert not at.exception, at.exception
    assert at.error, "a junk file must produce an st.error"
    assert "Loading failed" in at.error[0].value and "still loaded" in at.error[0].value
    assert at.session_state[state.TRAJECTORY].fingerprint == before.fingerprint
    assert _metrics(at)["Formula"] == "C6H6"


def test_frame_slider_moves_marker_and_view():
    at = _app()
    at.slider(key=state.FRAME).set_value(3).run()
    assert not at.exception, at.exception
    for spec in _plotly_specs(at):
        marker = spec["data"][1]
        assert marker["name"] == "selected frame" and list(marker["x"]) == [3]
    traj = at.session_state[state.TRAJECTORY]
    html = at.get("iframe")[0].proto.srcdoc
    assert "frame 3" in html
    # the view holds frame 3's first atom position
    assert f"{traj.R[3, 0, 0]:.6f}" in html
    # hiding forces removes the arrows
    at.toggle(key=state.SHOW_FORCES).set_value(False).run()
    assert "viewer.addArrow(" not in at.get("iframe")[0].proto.srcdoc


def _probe_app(data_page: str):
    import streamlit as st

    from aff_app.ui import state as st_state

    def needs_data():
        traj = st_state.require_trajectory()
        st.write(f"have {traj.formula}")

    st.navigation([st.Page(needs_data, title="Needs data", default=True), st.Page(data_page, title="Data")]).run()


def test_require_trajectory_points_to_data_page_and_stops():
    at = AppTest.from_function(_probe_app, args=(state.DATA_PAGE,), default_timeout=60).run()
    assert not at.exception, at.exception
    assert "No trajectory loaded" in at.info[0].value
    assert not [md for md in at.markdown if md.value.startswith("have ")], "the page must stop"


def test_simulate_water_replaces_the_data_set():
    at = _app()
    at.selectbox(key=state.SIM_MOLECULE).set_value("water")
    at.number_input(key=state.SIM_STEPS).set_value(4)
    at.number_input(key=state.SIM_EQUILIBRATION).set_value(0)
    at.number_input(key=state.SIM_SAMPLE_EVERY).set_value(1)
    at.button(key=state.SIM_RUN).click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    traj = at.session_state[state.TRAJECTORY]
    assert (traj.formula, traj.n_frames) == ("H2O", 4)
    assert traj.provenance.source == "simulated:water"
    assert _metrics(at)["Formula"] == "H2O"
    assert traj.has_labels and np.all(np.isfinite(traj.F))


def test_upload_over_the_size_limit_is_refused_with_the_numbers(monkeypatch):
    import aff_app.io.files

    at = _app()  # opens the default sample before the limit shrinks
    monkeypatch.setattr(aff_app.io.formats, "MAX_UPLOAD_MB", 1)
    at.run()  # the uploader is rebuilt with the new limit (a new max_upload_size resets it)
    raw, _, _ = _water_extxyz(2)
    big = raw + b" " * (1024 * 1024)  # 1.x MB of otherwise valid extxyz
    at.file_uploader(key=state.UPLOAD_FILE).set_value(("big.extxyz", big, "text/plain")).run()
    assert not at.exception, at.exception
    assert any("above the 1 MB limit" in e.value and "still loaded" in e.value for e in at.error)  # the library's message
    assert not [b for b in at.button if b.key == state.UPLOAD_LOAD], "no Load button for a refused file"
    assert _metrics(at)["Formula"] == "C6H6"


@pytest.mark.parametrize("fmt", ["extxyz", "npz"])
def test_downloads_round_trip_through_the_loader(fmt):
    from aff_app.io.files import load_trajectory
    from aff_app.ui import data_widgets

    at = _app()
    traj = at.session_state[state.TRAJECTORY].subset(slice(0, 5))
    raw = data_widgets.export_bytes(traj, fmt)
    back = load_trajectory(raw, filename=f"x.{fmt}")
    np.testing.assert_array_equal(back.z, traj.z)
    np.testing.assert_allclose(back.R, traj.R, rtol=1e-12)
    np.testing.assert_allclose(back.E, traj.E, rtol=1e-12)
    np.testing.assert_allclose(back.F, traj.F, rtol=1e-12, atol=1e-12)
    labels = [el.proto.label for el in at.get("download_button")]
    assert any("extended XYZ" in x for x in labels) and any("sGDML" in x for x in labels)


def test_without_bundled_samples_the_page_still_offers_upload_and_simulation(monkeypatch, tmp_path):
    from aff_app.ui import data_widgets

    monkeypatch.setattr(data_widgets, "SAMPLE_DIR", tmp_path)  # an empty folder
    at = _app()
    assert any("no bundled sample 'benzene'" in e.value for e in at.error)
    assert not any("still loaded" in e.value for e in at.error)
    assert any("Nothing loaded yet" in i.value for i in at.info)
    assert state.TRAJECTORY not in at.session_state
    assert at.file_uploader(key=state.UPLOAD_FILE) is not None
    assert at.button(key=state.SIM_RUN) is not None
