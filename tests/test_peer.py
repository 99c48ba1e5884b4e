"""The peer helpers (aff_app.peers.sgdml): sGDML datasets, memory/time pre-checks, log parsing, a missing package.

The package itself (sgdml 1.0.3, requirements-peer.txt) is optional: the tests
that need it skip when it is not installed; the others run everywhere.
"""

from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aff_app.peers import sgdml as peer
from aff_app.peers.sgdml import (
    PeerError,
    PeerRun,
    PeerUnavailableError,
    check_sgdml_fits,
    load_sgdml_model,
    sgdml_memory_bytes,
    sgdml_time_seconds,
    write_sgdml_dataset,
)


@pytest.fixture(scope="module")
def uracil(shared_data):
    with np.load(shared_data / "uracil.npz") as d:
        return {k: d[k] for k in ("R", "z", "E_md17", "F_md17")}


def _write(tmp_path, uracil, n=12, name="u"):
    R, z, E, F = uracil["R"][:n], uracil["z"], uracil["E_md17"][:n], uracil["F_md17"][:n]
    return write_sgdml_dataset(tmp_path / f"{name}.npz", name, R, z, E, F, theory="MD17 test"), (R, z, E, F)


def _recipe_md5(d) -> str:
    """sgdml.utils.io.dataset_md5's recipe: md5 over the md5 digests of z, R, E, F raveled."""
    h = hashlib.md5()
    for k in ("z", "R", "E", "F"):
        h.update(hashlib.md5(np.asarray(d[k]).ravel()).digest())
    return h.hexdigest()


# -- datasets -------------------------------------------------------------------------------------
def test_dataset_is_plain_arrays_in_sgdml_layout(tmp_path, uracil):
    path, (R, z, E, F) = _write(tmp_path, uracil)
    with np.load(path, allow_pickle=False) as d:  # every entry loads without pickle
        data = {k: d[k] for k in d.files}
    assert str(data["type"]) == "d" and str(data["r_unit"]) == "Ang" and str(data["e_unit"]) == "kcal/mol"
    assert data["R"].shape == (12, 12, 3) and data["F"].shape == (12, 12, 3) and data["E"].shape == (12, 1)
    np.testing.assert_array_equal(data["R"], R)
    np.testing.assert_array_equal(data["E"][:, 0], E)
    np.testing.assert_array_equal(data["z"], z)
    assert data["md5"].item().decode() == _recipe_md5(data)


def test_dataset_md5_matches_the_sgdml_package(tmp_path, uracil):
    sio = _need("sgdml.utils.io")
    path, _ = _write(tmp_path, uracil)
    with np.load(path, allow_pickle=False) as d:
        data = {k: d[k] for k in d.files}
    assert sio.dataset_md5(data) == data["md5"].item()


def test_dataset_refuses_mismatched_shapes(tmp_path, uracil):
    with pytest.raises(PeerError, match=r"R and F of shape \(M, 12, 3\)"):
        write_sgdml_dataset(tmp_path / "x.npz", "x", uracil["R"][:5], uracil["z"], uracil["E_md17"][:4],
                            uracil["F_md17"][:5])


# -- will it fit? ---------------------------------------------------------------------------------
def test_memory_precheck_refuses_naphthalene_at_the_papers_m_on_24_gb():
    # method.md / docs/peer_sgdml.md: one 54000² kernel is 23 GB; sgdml holds several copies
    budget = int(0.85 * 24 * 2**30)
    ok, why = check_sgdml_fits(1000, 18, memory_bytes=budget)
    assert not ok and "54000×54000" in why and "GB" in why and "M = 1000" in why
    assert sgdml_memory_bytes(1000, 18, copies=1) == 8 * 54000**2
    ok, why = check_sgdml_fits(200, 12, memory_bytes=budget)  # uracil at 200 ran in 1.4 GB
    assert ok and why == ""


def test_time_limit_refusal_and_pilot_calibration():
    ok, why = check_sgdml_fits(100, 12, memory_bytes=2**40, time_limit_s=600, time_estimate_s=3600)
    assert not ok and "60 min" in why and "10 min" in why
    pilot = PeerRun(n_train=200, ok=True, wall_s=120.0, sigma_trials=4)
    rate = 2e10
    # at the pilot's own size the calibrated estimate is the pilot's time
    assert sgdml_time_seconds(200, 12, pilot=pilot, cholesky_rate=rate) == pytest.approx(120.0)
    est = [sgdml_time_seconds(m, 12, pilot=pilot, cholesky_rate=rate) for m in (200, 400, 800)]
    assert est[0] < est[1] < est[2]
    # the factorisations grow like M³: at 4x the pilot's size they alone are 64x the pilot's
    p_chol = 4 * (3 * 200 * 12) ** 3 / 3 / rate
    assert est[2] >= 64 * p_chol


# -- its log --------------------------------------------------------------------------------------
def test_log_parsing_handles_carriage_returns_and_colours():
    raw = ("\x1b[1m STEP 1 \x1b[0m\r[ 10%] Bi-partite matching\r[100%] Bi-partite matching\n"
           "[DONE] Permutation group completion      found 12 symmetries\n"
           "[INFO] Using analytic solver (expected memory use: ~27 MB)\n"
           "[DONE] Validation errors (MAE/RMSE): energy 0.36/0.51, forces 2.76/3.89\r\n"
           "[DONE] Validation errors (MAE/RMSE): energy 0.41/0.55, forces 2.77/3.91\n"
           "[WARN] The optimal sigma (length scale) lies on the boundary of the search grid.\n")
    lines = peer._clean_log(raw)
    assert not any("%]" in ln or "\x1b" in ln for ln in lines)
    parsed = peer._parse_log(lines)
    assert parsed == {"sigma_trials": 2, "sigma_on_edge": True, "n_perms": 12, "solver": "analytic"}


def test_a_failed_run_is_summarised_by_the_exception_it_ended_with():
    # the tail of `sgdml all` at uracil M = 700 on the MD17 labels (this machine, 2026-11-22)
    tail = ['  File "/x/scipy/linalg/_basic.py", line 43, in _solve_check',
            "    raise LinAlgError('Matrix is singular.')", "numpy.linalg.LinAlgError: Matrix is singular.",
            "[INFO] cleaning up"]
    assert peer._failure_text(tail) == "numpy.linalg.LinAlgError: Matrix is singular."
    assert peer._failure_text(["a", "b", "c", "d"]) == "b | c | d"


def test_model_loader_skips_pickled_entries(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, alphas_F=np.ones(3), R_desc=np.zeros((2, 3)), f_err=np.array({"mae": 1.0}, dtype=object))
    model = load_sgdml_model(path)
    assert set(model) == {"alphas_F", "R_desc"}
    np.savez(tmp_path / "bad.npz", z=np.arange(3))
    with pytest.raises(PeerError, match="not an sgdml model"):
        load_sgdml_model(tmp_path / "bad.npz")


# -- the package missing --------------------------------------------------------------------------
@pytest.fixture
def no_sgdml(monkeypatch):
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "sgdml" or name.startswith("sgdml."):
            raise NameError("name 'torch' is not defined")  # what sgdml 1.0.3 raises without torch
        return real(name, *args, **kwargs)

    monkeypatch.setattr(peer.importlib, "import_module", fake)


def test_missing_package_says_how_to_install(no_sgdml, tmp_path, uracil):
    with pytest.raises(PeerUnavailableError, match="requirements-peer.txt") as exc:
        peer.require_sgdml("sgdml.cli")
    # the reproduction's flag is named by the reproduction only (test_reproduce), not by every entry point
    assert "--no-peer" not in str(exc.value) and isinstance(exc.value, RuntimeError)
    assert peer.peer_available() is False
    path, _ = _write(tmp_path, uracil)  # writing a dataset needs no package
    with pytest.raises(PeerUnavailableError):
        peer.run_sgdml(tmp_path, path, path, 12, 12, timeout_s=5)
    with pytest.raises(PeerUnavailableError):
        peer.sgdml_predict(path, uracil["R"][:2])
    assert not list(tmp_path.glob("sgdml_model*"))  # nothing ran


# -- the real package -----------------------------------------------------------------------------
def test_real_run_trains_on_exactly_our_frames_and_predicts(tmp_path, uracil):
    _need("sgdml.predict")
    train, (R, z, E, F) = _write(tmp_path, uracil, n=12, name="train")
    Rv, Ev, Fv = uracil["R"][100:110], uracil["E_md17"][100:110], uracil["F_md17"][100:110]
    valid = write_sgdml_dataset(tmp_path / "valid.npz", "valid", Rv, z, Ev, Fv)
    run = peer.run_sgdml(tmp_path, train, valid, 12, 10, timeout_s=240, n_atoms=12, sigmas="10 20")
    assert run.ok, run.reason
    assert run.model_path.is_file() and run.wall_s > 0 and run.sigma in (10.0, 20.0)
    assert run.sigma_trials >= 1 and run.n_perms == 1 and run.solver == "analytic"
    model = load_sgdml_model(run.model_path)
    assert sorted(model["idxs_train"].tolist()) == list(range(12))  # all of our frames, no others
    E_tr, F_tr = peer.sgdml_predict(run.model_path, R)
    assert E_tr.shape == (12,) and F_tr.shape == (12, 12, 3)
    # a GP with λ = 1e-10 interpolates its training forces
    assert np.mean(np.abs(F_tr - F)) < 1e-3 * np.mean(np.abs(F))
    E_v, F_v = peer.sgdml_predict(run.model_path, Rv)
    assert np.mean(np.abs(F_v - Fv)) < np.mean(np.abs(Fv))  # better than predicting zero


def _need(module: str):
    """Import the optional peer; under CI (scripts/setup.sh --dev installs it) a missing one fails."""
    import importlib
    import os

    if os.environ.get("CI") == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason="the optional sgdml package is not installed")


def test_importing_the_package_leaves_no_torch_chatter_on_stderr():
    # sgdml's logging set-up made torch announce each kernel DSL it registers at INFO
    # ("Successfully registered DSL: triton"): noise at the top of every reproduction log
    _need("sgdml.predict")
    code = "from aff_app.peers.sgdml import require_sgdml; require_sgdml('sgdml.predict')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr[-2000:]
    assert "registered DSL" not in run.stderr + run.stdout
