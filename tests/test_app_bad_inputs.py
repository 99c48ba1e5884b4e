"""Issue 6 in the app (AppTest, no browser): bad uploads, the validation report, '—' for NaN, budget refusals,
cancellation, and shared caches that hold only immutable, content-keyed objects.

Every failing case starts from a session holding the benzene sample and one trained model (M = 20, fixed γ
and λ) and checks that both are still there afterwards. Expected messages are the library's own: each test
asks ``aff_app.io.files.load_trajectory`` for the error of the same bytes and looks for that text in the page.
"""

from __future__ import annotations

import io
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from aff_app.io import files as data_lib
from aff_app.io import formats
from aff_app.workflows import learning
from aff_app.workflows import pipeline
from aff_app.gp.budget import estimate_cost
from aff_app.cancel import Cancelled, CancelToken, cancellable
from aff_app.gp.energy import fit_energy_model
from aff_app.workflows.registry import ModelRegistry
from aff_app.ui import state

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
DATA, TRAIN, PREDICTIONS, COMPARE = "pages/data.py", "pages/train.py", "pages/predictions.py", "pages/compare.py"
GAMMA, LAM = 4.0, 1e-8
#: How Python/NumPy print a non-finite number ('nan', 'inf', '-inf'); the app's words say "NaN", "infinite".
NUMBER_NAN = r"\bnan\b|\binf\b"


pytestmark = pytest.mark.usefixtures("fresh_streamlit_cache")


@lru_cache(maxsize=None)
def _traj(name: str = "benzene"):
    return data_lib.load_trajectory(REPO / "sample_data" / f"{name}.npz")


@lru_cache(maxsize=None)
def _fitted():
    traj = _traj()
    m = pipeline.train_model(traj, model="aff", n_train=20, n_test=30, gamma=GAMMA, lam=LAM)
    em = fit_energy_model(m, traj.R[m.train_idx], traj.E[m.train_idx], gamma=GAMMA, lam=LAM)
    return m, em


def _registry(metrics: dict | None = None) -> ModelRegistry:
    reg = ModelRegistry()
    m, em = _fitted()
    reg.add(m, energy=em, name="kept model", data_fingerprint=_traj().fingerprint, metrics=metrics)
    return reg


def _open(page: str = DATA, *, registry: ModelRegistry | None = None, traj=None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[state.TRAJECTORY] = traj if traj is not None else _traj()
    at.session_state[state.DEFAULT_SAMPLE_TRIED] = True
    at.session_state[state.MODELS] = registry if registry is not None else _registry()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _texts(at, kind: str) -> str:
    return " ".join(str(e.value) for e in getattr(at, kind))


def _all_text(at) -> str:
    """Every piece of text the page shows: messages, markdown, captions, metrics and table cells."""
    parts = [_texts(at, k) for k in ("error", "warning", "info", "success", "markdown", "caption", "title",
                                     "subheader")]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    for df in at.dataframe:
        parts.append(df.value.to_string())
    return " ".join(parts)


def _survived(at, models=("kept model",), traj=None) -> None:
    """The data set and the models the session had are still there."""
    kept = traj if traj is not None else _traj()
    assert at.session_state[state.TRAJECTORY].fingerprint == kept.fingerprint
    assert at.session_state[state.MODELS].names() == list(models)


def _library_error(raw: bytes, name: str, **kw) -> str:
    with pytest.raises(data_lib.DataError) as info:
        data_lib.load_trajectory(raw, filename=name, **kw)
    return str(info.value)


def _upload(at: AppTest, name: str, raw: bytes, *, click: bool = True) -> AppTest:
    at.file_uploader(key=state.UPLOAD_FILE).set_value((name, raw, "application/octet-stream")).run()
    assert not at.exception, at.exception
    if click:
        at.button(key=state.UPLOAD_LOAD).click().run()
        assert not at.exception, at.exception
    return at


# -- bad files: each one a specific message, nothing lost ----------------------------------------------------------


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _uracil_arrays(n: int = 12) -> dict:
    t = _traj("uracil")
    return {"R": t.R[:n], "z": t.z, "E": t.E[:n], "F": t.F[:n]}


def _good_npz() -> bytes:
    return _npz_bytes(**_uracil_arrays())


def _nan_npz() -> bytes:
    a = _uracil_arrays()
    F = a["F"].copy()
    F[4, 7, 1] = np.nan
    return _npz_bytes(**{**a, "F": F})


def _pickled_npz() -> bytes:
    a = _uracil_arrays()
    return _npz_bytes(**{**a, "F": np.array([object()] * 3, dtype=object)})


def _mixed_sizes_extxyz() -> bytes:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for sym, pos in [("OH2", [[0, 0, 0.12], [0, 0.76, -0.48], [0, -0.76, -0.48]])] * 2 + [
            ("NH3", [[0, 0, 0.1], [0.94, 0, -0.27], [-0.47, 0.81, -0.27], [-0.47, -0.81, -0.27]])]:
        atoms = Atoms(sym, positions=pos)
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((len(atoms), 3)))
        frames.append(atoms)
    buf = io.StringIO()
    write(buf, frames, format="extxyz")
    return buf.getvalue().encode()


BAD_FILES = {
    "empty": ("empty.npz", lambda: b"", "is empty (0 bytes)"),
    "junk": ("junk.xyz", lambda: bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)),
             "binary data"),
    "wrong extension": ("data.xyz", _good_npz, "Rename it to .npz"),
    "pickled": ("pickled.npz", _pickled_npz, "pickled Python objects"),
    "truncated": ("truncated.npz", lambda: _good_npz()[: len(_good_npz()) // 2], "damaged .npz"),
    "nan": ("nan_forces.npz", _nan_npz, "non-finite values"),
    "atom counts": ("mixed_sizes.extxyz", _mixed_sizes_extxyz, "H3N (4 atoms)"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_upload_shows_the_library_message_and_keeps_data_and_models(case):
    name, make, phrase = BAD_FILES[case]
    raw = make()
    expected = _library_error(raw, name)
    assert phrase in expected  # the case is the one it claims to be
    at = _upload(_open(), name, raw)
    errors = _texts(at, "error")
    assert "Loading failed" in errors and expected in errors, errors
    assert "C6H6) is still loaded" in errors or "is still loaded" in errors
    _survived(at)
    assert {m.label: m.value for m in at.metric}["Formula"] == "C6H6"  # the page still shows the kept data


def test_too_large_upload_is_refused_before_reading(monkeypatch):
    at = _open()
    monkeypatch.setattr(formats, "MAX_UPLOAD_MB", 1)
    at.run()  # the uploader is rebuilt with the new limit
    raw = _good_npz() + b"\0" * (1024 * 1024)
    expected = _library_error(raw, "huge.npz")
    assert isinstance(expected, str) and "above the 1 MB limit" in expected
    at = _upload(at, "huge.npz", raw, click=False)
    assert expected in _texts(at, "error") and "still loaded" in _texts(at, "error")
    assert not [b for b in at.button if b.key == state.UPLOAD_LOAD], "no Load button for a refused file"
    _survived(at)


def test_nan_file_loads_with_the_drop_option_and_the_report_says_so():
    at = _upload(_open(), "nan_forces.npz", _nan_npz(), click=False)
    at.checkbox(key=state.UPLOAD_DROP_NONFINITE).check()
    at.button(key=state.UPLOAD_LOAD).click().run()
    assert not at.exception, at.exception
    traj = at.session_state[state.TRAJECTORY]
    assert traj.n_frames == 11 and traj.formula == "C4H4N2O2"
    assert "1 frame(s) were dropped at load time (nonfinite)" in _texts(at, "caption")
    assert at.session_state[state.MODELS].names() == ["kept model"]


# -- files that load: the validation report ------------------------------------------------------------------------


def test_view_only_file_loads_says_so_and_train_refuses():
    a = _uracil_arrays()
    del a["F"]
    at = _upload(_open(), "no_forces.npz", _npz_bytes(**a))
    assert at.session_state[state.TRAJECTORY].F is None
    errors = _texts(at, "error")
    assert "has no forces: it loads for viewing only" in errors and "cannot be used for training" in errors
    at.switch_page(TRAIN).run()
    assert not at.exception
    assert "view-only" in _texts(at, "warning") and not [b for b in at.button if b.key == state.TRAIN_RUN]
    assert at.session_state[state.MODELS].names() == ["kept model"]
    # no dead end: the session's models stay listed, downloadable, and uploads stay possible
    assert [s.value for s in at.selectbox if s.key == state.TRAIN_MANAGE] == ["kept model"]
    assert any("Download kept model" in d.proto.label for d in at.get("download_button"))
    assert at.get("file_uploader")


def test_a_two_frame_file_says_what_it_allows_and_keeps_the_models():
    a = _uracil_arrays(2)
    at = _upload(_open(), "two_frames.npz", _npz_bytes(**a))
    assert at.session_state[state.TRAJECTORY].n_frames == 2
    at.switch_page(TRAIN).run()
    assert not at.exception, at.exception
    errors = _texts(at, "error")
    assert "has 2 frames: a fit needs at least 3 (2 to train on, 1 held out to test on)" in errors
    assert "choose a smaller M" not in errors  # the old dead end: 2 is already the smallest M
    assert not [b for b in at.button if b.key == state.TRAIN_RUN]
    assert [s.value for s in at.selectbox if s.key == state.TRAIN_MANAGE] == ["kept model"]


def test_duplicate_frames_are_reported_and_dropped_by_the_button():
    a = _uracil_arrays(12)
    R, E, F = a["R"].copy(), a["E"].copy(), a["F"].copy()
    for i in (4, 8):
        R[i], E[i], F[i] = R[1], E[1], F[1]
    at = _upload(_open(), "dups.npz", _npz_bytes(R=R, z=a["z"], E=E, F=F))
    warning = _texts(at, "warning")
    assert "2 duplicate frame(s) in 1 group(s)" in warning and "frames 1, 4, 8" in warning
    button = at.button(key=state.DATA_DROP_DUPLICATES)
    assert "Drop duplicate frames (2 in 1 groups)" in button.label
    # the Train page repeats the warning
    at.switch_page(TRAIN).run()
    assert "duplicate frame(s)" in _texts(at, "warning")
    at.switch_page(DATA).run()
    at.button(key=state.DATA_DROP_DUPLICATES).click().run()
    assert not at.exception, at.exception
    traj = at.session_state[state.TRAJECTORY]
    assert traj.n_frames == 10 and traj.provenance.settings["dropped_frames"]["duplicate"] == [4, 8]
    assert "Dropped 2 duplicate frame(s): 10 frames left" in _texts(at, "success")
    assert "duplicate" not in _texts(at, "warning")
    assert not [b for b in at.button if b.key == state.DATA_DROP_DUPLICATES]
    assert at.session_state[state.MODELS].names() == ["kept model"]


def test_unit_mismatch_warns_with_the_likely_unit():
    from aff_app.units import energy_factor

    t = _traj("uracil")
    E_ev = t.E[:400] / energy_factor("eV")  # energies written in eV, forces left in kcal/mol/Å
    at = _upload(_open(), "ev_energies.npz", _npz_bytes(R=t.R[:400], z=t.z, E=E_ev, F=t.F[:400]))
    warning = _texts(at, "warning")
    assert "energies and forces disagree" in warning and "energies in eV, forces in kcal/mol/Å" in warning
    assert at.session_state[state.TRAJECTORY].n_frames == 400  # it loads (a warning, not an error)


def test_kcal_file_read_as_ev_offers_kcal_and_the_button_fixes_it():
    """Issue 20 item 2: an extxyz in kcal/mol without unit metadata loads as eV; the page says the labels are
    implausible, with the numbers, and one click reads them in kcal/mol."""
    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    t = _traj("uracil")
    images = []
    for i in range(100):
        atoms = ase.Atoms(numbers=t.z, positions=t.R[i])
        atoms.calc = SinglePointCalculator(atoms, energy=float(t.E[i]), forces=t.F[i])
        images.append(atoms)
    buf = io.StringIO()
    ase.io.write(buf, images, format="extxyz")
    at = _upload(_open(), "uracil_kcal.extxyz", buf.getvalue().encode())
    warning = _texts(at, "warning")
    assert "labels implausibly large" in warning and "eV was assumed" in warning, warning
    button = at.button(key=state.DATA_READ_UNIT)
    assert button.label == "Read the labels as kcal/mol"
    button.click().run()
    assert not at.exception, at.exception
    traj = at.session_state[state.TRAJECTORY]
    np.testing.assert_allclose(traj.E, t.E[:100], rtol=1e-10)
    np.testing.assert_allclose(traj.F, t.F[:100], rtol=0, atol=1e-8)  # ASE writes 8 decimals
    assert traj.provenance.energy_unit == "kcal/mol"
    assert "Energies and forces now read in kcal/mol (they were read in eV)" in _texts(at, "success")
    assert "implausibly" not in _texts(at, "warning")
    assert not [b for b in at.button if b.key == state.DATA_READ_UNIT]


def test_single_frame_and_too_many_atoms_cannot_be_trained():
    at = _open()
    at.file_uploader(key=state.UPLOAD_FILE).set_value(("uracil.npz", _good_npz(), "application/octet-stream")).run()
    at.text_input(key=state.UPLOAD_FRAMES).set_value("0")
    at.button(key=state.UPLOAD_LOAD).click().run()
    assert not at.exception, at.exception
    assert at.session_state[state.TRAJECTORY].n_frames == 1
    assert "has 1 frame; training needs at least 2" in _texts(at, "error")
    at.switch_page(TRAIN).run()
    assert "Cannot train on the loaded data" in _texts(at, "error") and "has 1 frame" in _texts(at, "error")
    assert not [b for b in at.button if b.key == state.TRAIN_RUN]

    rng = np.random.default_rng(0)
    R = rng.uniform(0, 30, size=(3, 240, 3))
    raw = _npz_bytes(R=R, z=np.full(240, 6), E=rng.normal(size=3), F=rng.normal(size=(3, 240, 3)))
    at.switch_page(DATA).run()
    at = _upload(at, "c240.npz", raw)
    assert "above the 200 a model here handles" in _texts(at, "error")
    for page in (TRAIN, COMPARE):
        at.switch_page(page).run()
        assert not at.exception, at.exception
        assert "above the 200 a model here handles" in _texts(at, "error")
    assert at.session_state[state.MODELS].names() == ["kept model"]


# -- numbers: NaN/inf never shown as numbers -----------------------------------------------------------------------


def test_nan_metrics_show_a_dash_on_train_and_compare():
    bad = {"force_mae": float("nan"), "pci": float("inf"), "lci": float("nan"), "energy_mae": float("nan"),
           "n_test": 30}
    for page in (TRAIN, COMPARE):
        at = _open(page, registry=_registry(metrics=bad))
        table = at.dataframe[0].value
        assert table.filter(like="force MAE").iloc[0, 0] == "—"
        text = _all_text(at)
        assert "—" in text and not re.search(NUMBER_NAN, text), text


def test_nan_predictions_show_a_dash_on_the_predictions_page(monkeypatch):
    import dataclasses

    real = pipeline.evaluate

    def nan_predictions(*args, **kwargs):
        held = real(*args, **kwargs)
        F = held.F_mean.copy()
        F[0, 3, 1] = np.nan
        F[2, 0, 0] = np.inf
        E = held.E_mean.copy()
        E[1] = np.nan
        return dataclasses.replace(held, F_mean=F, E_mean=E)

    monkeypatch.setattr(pipeline, "evaluate", nan_predictions)
    at = _open(PREDICTIONS)
    m = {x.label: x.value for x in at.metric}
    assert m["Force MAE (kcal/mol/Å)"] == "—" and m["Energy MAE (kcal/mol)"] == "—"
    assert "3 predicted value(s) of this model are NaN or infinite" in _texts(at, "warning")
    # frame 0 has the NaN on atom 3: its row in the per-atom table reads '—'
    assert at.dataframe[0].value["|F̂ − F|"].iloc[3] == "—"
    text = _all_text(at)
    assert "some energy predictions are NaN or infinite" in _texts(at, "caption")
    assert not re.search(NUMBER_NAN, text), text


# -- compute limits ------------------------------------------------------------------------------------------------


def test_budget_refusal_names_memory_m_and_budget(monkeypatch):
    monkeypatch.setenv("AFF_MEMORY_BUDGET_GB", "0.5")
    at = _open(TRAIN)
    at.radio(key=state.TRAIN_MODEL).set_value("gdml").run()
    est = estimate_cost(200, [12])
    assert est.peak_bytes > 0.5 * 2**30
    errors = _texts(at, "error")
    assert "Refused before training" in errors
    assert f"needs about {est.peak_bytes / 2**30:.3g} GB" in errors
    assert "M = 200 frames" in errors and "memory budget is 0.5 GB" in errors
    assert at.button(key=state.TRAIN_RUN).disabled
    _survived(at)


# -- cancellation --------------------------------------------------------------------------------------------------


def _fixed_small(at: AppTest) -> AppTest:
    at.radio(key=state.TRAIN_HYPER).set_value("fixed").run()
    at.number_input(key=state.TRAIN_M).set_value(20)
    at.number_input(key=state.TRAIN_N_TEST).set_value(15)
    at.number_input(key=state.TRAIN_GAMMA).set_value(GAMMA)
    at.number_input(key=state.TRAIN_LAM).set_value(LAM)
    return at.run()


def test_cancel_during_training_keeps_the_session(monkeypatch):
    """Cancel stops the fit job at its next progress report: no model, the session as it was."""
    from aff_app.ui import background as bg

    real = pipeline.train
    seen = {}

    def train_then_cancel(*args, **kwargs):
        progress = kwargs["progress"]

        def clicking_progress(f, m):
            running = bg.get_queue().running()  # (none when the test's own fixture model is fitted)
            if f > 0.5 and not seen and running:
                seen["at"] = f
                (job,) = running
                bg.get_queue().cancel(job.id, job.sessions[0])  # what the Cancel button's on_click does
            if progress is not None:
                progress(f, m)

        return real(*args, **{**kwargs, "progress": clicking_progress})

    monkeypatch.setattr(pipeline, "train", train_then_cancel)
    at = _fixed_small(_open(TRAIN))
    at.button(key=state.TRAIN_RUN).click().run()
    assert not at.exception, at.exception
    assert seen, "the fit reported progress"
    warning = _texts(at, "warning")
    assert "Training cancelled (AFF, M = 20): no model was added" in warning
    _survived(at)
    memo = at.session_state[state.HELD_OUT] if state.HELD_OUT in at.session_state else {}
    assert all(k[0] == at.session_state[state.MODELS].get("kept model").uid for k in memo)


def test_a_cancelled_learning_curve_keeps_its_finished_points(monkeypatch):
    """The Cancel button stops the job at the second point; the first point's numbers stay (issue 19)."""
    from aff_app.ui import background as bg

    real = learning.learning_curve

    def cancel_at_the_second_point(*args, **kwargs):
        progress = kwargs["progress"]

        def clicking_progress(f, m):
            running = bg.get_queue().running()
            if "M=50" in m and running:
                (job,) = running
                bg.get_queue().cancel(job.id, job.sessions[0])  # what the Cancel button's on_click does
            progress(f, m)

        return real(*args, **{**kwargs, "progress": clicking_progress})

    monkeypatch.setattr(learning, "learning_curve", cancel_at_the_second_point)
    at = _open(COMPARE)
    at.multiselect(key=state.CMP_MODELS).set_value(["aff"])
    at.multiselect(key=state.CMP_SIZES).set_value([25, 50])
    at.number_input(key=state.CMP_N_TEST).set_value(20)
    at.radio(key=state.CMP_HYPER).set_value("fixed").run()
    at.number_input(key=state.CMP_GAMMA).set_value(GAMMA)
    at.number_input(key=state.CMP_LAM).set_value(LAM)
    at.run()
    at.button(key=state.CMP_RUN).click().run()
    assert not at.exception, at.exception
    assert "Learning curves cancelled (AFF; M = 25, 50): the 1 finished point(s) of 2 are kept" in \
        _texts(at, "warning")
    rows = at.session_state[state.CMP_RESULT]["rows"]
    assert [(r["M"], r["status"]) for r in rows] == [(25, "ok"), (50, "cancelled")]
    assert rows[0]["force_mae"] > 0 and rows[1]["force_mae"] is None
    _survived(at)


def test_the_library_lets_cancelled_through_untouched():
    """Cancelled raised inside progress leaves train_model, learning_curve and fit_force_model as itself."""
    traj = _traj("uracil")
    token = CancelToken("test")
    calls = []

    def progress(f, m):
        calls.append(f)
        if len(calls) == 3:
            token.cancel()

    with pytest.raises(Cancelled, match="test cancelled"):
        pipeline.train_model(traj, model="aff", n_train=20, n_test=10, gamma=GAMMA, lam=LAM,
                             progress=cancellable(progress, token))
    calls.clear()
    token = CancelToken("test")
    with pytest.raises(Cancelled):
        learning.learning_curve(traj, ["aff", "gdml"], [20], n_test=10, gamma=GAMMA, lam=LAM,
                                progress=cancellable(progress, token))
    assert len(calls) == 3  # stopped at the first report after the cancel


# -- shared caches: immutable and content-keyed ----------------------------------------------------------------------


def test_shared_caches_hold_only_immutable_content_keyed_objects():
    from aff_app.ui import data_widgets as dw

    raw = (REPO / "sample_data" / "uracil.npz").read_bytes()
    a = dw.load_cached(dw.digest(raw), "uracil.npz", _data=raw)
    b = dw.load_cached(dw.digest(raw), "uracil.npz", _data=raw)
    assert a is not b and a.fingerprint == b.fingerprint  # each caller gets its own copy
    for arr in (a.z, a.R, a.E, a.F):
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 0
    # no cache of mutable per-session objects: a session's registry and predictions stay in st.session_state.
    # Shared on purpose (issue 19), and only these: the workspace (a connection per call) and the job queue
    # (session_store also shares stored models, which are only read after fitting, in its own LRU)
    shared = {"session_store.py": ["_open_workspace"], "background.py": ["_queue"]}
    for path in [*(REPO / "aff_app" / "ui").glob("*.py"), *(REPO / "pages").glob("*.py"), REPO / "app.py"]:
        src = path.read_text()
        found = re.findall(r"@st\.cache_resource[^\n]*\ndef (\w+)\(", src)
        assert found == shared.get(path.name, []), f"{path.name}: st.cache_resource shares {found} between sessions"
        for fn in re.findall(r"@st\.cache_data[^\n]*\ndef (\w+)\(([^)]*)", src):
            first = fn[1].split(",")[0].strip()
            assert first.startswith(("content_hash", "fingerprint")), f"{path.name}:{fn[0]} is keyed by {first!r}"


def test_cancelled_simulation_keeps_the_loaded_data(monkeypatch):
    from aff_app.io import simulate

    def fake_simulation(*args, progress=None, **kwargs):
        progress(0.1, "relaxing")
        progress.__self__.token.cancel()  # the job's token, as the Cancel button sets it (progress is job.report)
        progress(0.2, "MD step 10")
        raise AssertionError("progress should have raised Cancelled")

    monkeypatch.setattr(simulate, "simulate_trajectory", fake_simulation)
    at = _open()
    at.button(key=state.SIM_RUN).click().run()
    assert not at.exception, at.exception
    assert "Simulation cancelled (ethanol, 200 frames): no trajectory was stored" in _texts(at, "warning")
    assert not at.error
    _survived(at)
