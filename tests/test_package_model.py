"""The sgdml package as a model of the session: trained through the pipeline, the CLI and the learning curves.

The package itself runs (``sgdml all`` in a subprocess, ``GDMLPredict``); under CI the dev set-up installs
it, so a missing one fails there rather than skipping. Without it, every entry point says how to install it.
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

from aff_app import cli
from aff_app.gp.force import ModelError
from aff_app.gp.persistence import load_model, model_bytes, read_arrays
from aff_app.io.files import load_trajectory
from aff_app.peers import sgdml as peer
from aff_app.peers.package_model import PackageEnergy, PackageModel
from aff_app.peers.sgdml import PeerUnavailableError
from aff_app.workflows import pipeline
from aff_app.workflows.learning import learning_curve
from aff_app.workflows.pipeline import TrainSettings
from aff_app.workflows.registry import ModelRegistry


def _need(module: str):
    import importlib
    import os

    if os.environ.get("CI") == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason="the optional sgdml package is not installed")


@pytest.fixture(scope="module")
def uracil(shared_data):
    return load_trajectory(shared_data / "uracil.npz", label_set="rmd17", frames=":600")


@pytest.fixture(scope="module")
def trained(uracil):
    _need("sgdml.predict")
    return pipeline.train(uracil, n_train=30, n_test=100, seed=2, settings=TrainSettings(mode="sgdml-package"))


def test_trains_on_exactly_our_frames_and_predicts_forces_and_energies(trained, uracil):
    pm = trained.force
    assert isinstance(pm, PackageModel) and isinstance(trained.energy, PackageEnergy)
    assert pm.mode == "sgdml-package" and not pm.has_interval and pm.n_train == 30
    assert np.array_equal(pm.train_idx, np.asarray(pm.record.split.train))
    # the package's own record of its training frames: exactly ours (its dataset holds only them)
    assert sorted(np.asarray(pm.arrays["idxs_train"]).tolist()) == list(range(30))
    assert pm.record.timings.force_s > 0 and pm.sigma > 0
    # interpolates its training forces (λ tiny), and on held-out frames far better than zero
    F_tr = pm.predict(uracil.R[pm.train_idx]).mean
    assert np.mean(np.abs(F_tr - uracil.F[pm.train_idx])) < 1e-3 * np.mean(np.abs(uracil.F))
    held = pipeline.evaluate(trained, uracil)
    rep = held.report()
    assert held.F_std is None and rep["pci"] is None and rep["lci"] is None
    assert rep["force_mae"] < 0.3 * np.mean(np.abs(held.F_ref))
    assert rep["energy_mae"] is not None and rep["energy_mae"] < np.std(held.E_ref)
    assert held.E_std is None  # no energy interval either


def test_model_file_round_trip_and_registry(trained, uracil):
    data = model_bytes(trained.force, trained.energy)
    force, energy = load_model(data)
    assert isinstance(force, PackageModel) and isinstance(energy, PackageEnergy)
    R = uracil.R[500:505]
    assert np.array_equal(force.predict(R).mean, trained.force.predict(R).mean)
    assert np.array_equal(energy.predict(R).mean, trained.energy.predict(R).mean)
    assert force.record.data_fingerprint == uracil.fingerprint
    reg = ModelRegistry()
    entry = reg.add(force, energy=energy)
    assert entry.name.startswith("sgdml package M=30") and not entry.has_interval
    row = entry.row()
    assert row["gamma (1/Å)"] is None and row["lambda"] is None and row["energy model"] == "sgdml package"
    # damage: the package's coefficients removed → named, never a crash
    arrays = read_arrays(data)
    arrays.pop("package__alphas_F")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with pytest.raises(ModelError, match="alphas_F"):
        load_model(buf.getvalue())


def test_learning_curve_row_for_the_package(uracil):
    _need("sgdml.predict")
    rows = learning_curve(uracil, ["sgdml-package"], [20, 40], n_test=50, seed=0)
    assert [r["status"] for r in rows] == ["ok", "ok"], [r["note"] for r in rows]
    assert rows[1]["force_mae"] < rows[0]["force_mae"]  # more frames, smaller error
    assert all(r["pci"] is None and r["energy_mae"] is not None and r["predict_ms"] > 0 for r in rows)


def _no_package(monkeypatch):
    real = peer.importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "sgdml" or name.startswith("sgdml."):
            raise ModuleNotFoundError("No module named 'sgdml'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(peer.importlib, "import_module", fake)


def test_absent_package_is_a_clear_message_everywhere(monkeypatch, uracil, tmp_path, capsys, shared_data):
    _no_package(monkeypatch)
    with pytest.raises(PeerUnavailableError, match="pip install"):
        pipeline.train(uracil, n_train=20, settings=TrainSettings(mode="sgdml-package"))
    rows = learning_curve(uracil, ["sgdml-package"], [20], n_test=20)
    assert rows[0]["status"] == "failed" and "pip install" in rows[0]["note"]
    code = cli.main(["train", str(shared_data / "uracil.npz"), "--frames", ":300", "--model", "sgdml-package",
                     "--n-train", "20", "--out", str(tmp_path / "p.npz"), "--json"])
    out = capsys.readouterr()
    assert code == 2
    msg = json.loads(out.out.strip().splitlines()[-1])
    assert "pip install" in json.dumps(msg) and "Traceback" not in out.err
    assert "--no-peer" not in json.dumps(msg)  # a flag of `reproduce`, not of `train`
    assert not (tmp_path / "p.npz").exists()


def test_cli_trains_and_evaluates_the_package(tmp_path, capsys, shared_data):
    _need("sgdml.predict")
    out = tmp_path / "pkg.npz"
    code = cli.main(["train", str(shared_data / "uracil.npz"), "--labels", "rmd17", "--frames", ":500",
                     "--model", "sgdml-package", "--n-train", "25", "--out", str(out), "--json"])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and r["model"] == "sgdml-package" and r["has_interval"] is False and r["gamma"] is None
    assert r["energy_model"] == "sgdml package" and r["training_time_s"] > 0
    code = cli.main(["evaluate", str(out), str(shared_data / "uracil.npz"), "--labels", "rmd17", "--frames", ":500",
                     "--json"])
    e = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and e["pci"] is None and e["force_mae"] > 0 and e["energy_mae"] > 0 and e["n_test"] == 475
    # the human-readable form says there is no interval instead of failing on it
    code = cli.main(["evaluate", str(out), str(shared_data / "uracil.npz"), "--labels", "rmd17", "--frames", ":500"])
    text = capsys.readouterr().out
    assert code == 0 and "no predictive interval" in text
    # γ/λ are the GP's: refused for the package with a reason
    code = cli.main(["train", str(shared_data / "uracil.npz"), "--model", "sgdml-package", "--n-train", "25",
                     "--out", str(tmp_path / "x.npz"), "--gamma", "3", "--json"])
    assert code == 2 and "--gamma" in capsys.readouterr().out


def test_forces_and_energies_of_the_same_frames_cost_one_package_prediction(trained, uracil):
    pm = trained.force
    pm._gdml()
    calls = {"n": 0}
    real = pm._predictor.predict

    def counting(R):
        calls["n"] += 1
        return real(R)

    pm._predictor.predict = counting
    pm._last = None
    R = uracil.R[500:520]
    F = pm.predict(R).mean
    E = trained.energy.predict(R).mean
    assert calls["n"] == 1  # one batch of 20 frames: the energy reused the forces' pass
    E2, F2 = pm.predict_both(uracil.R[520:525])
    assert calls["n"] == 2 and F2.shape == (5, 12, 3)
    F[:] = 0  # the kept result is a copy: callers cannot change it
    assert np.any(pm.predict(R).mean != 0) and np.array_equal(trained.energy.predict(R).mean, E)


def test_calculator_with_the_package_offers_no_interval(trained, uracil):
    from ase import Atoms

    from aff_app.calculator import AFFCalculator

    calc = AFFCalculator(trained.force, trained.energy)
    assert "forces_std" not in calc.implemented_properties and "energy_std" not in calc.implemented_properties
    atoms = Atoms(numbers=uracil.z, positions=uracil.R[550])
    atoms.calc = calc
    assert atoms.get_forces().shape == (12, 3) and np.isfinite(atoms.get_potential_energy())


def test_cli_predict_and_conserve_with_a_network_say_what_they_wrote(tmp_path, capsys, shared_data):
    data = shared_data / "uracil.npz"
    model = tmp_path / "dcf.npz"
    assert cli.main(["train", str(data), "--frames", ":400", "--model", "dcf", "--n-train", "40", "--out", str(model),
                     "--json"]) == 0
    capsys.readouterr()
    out = tmp_path / "p.extxyz"
    assert cli.main(["predict", str(model), str(data), "--frames", "400:410", "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["arrays"] == ["forces_pred"] and r["std_kind"] is None
    from ase.io import read

    frames = read(out, index=":")
    assert len(frames) == 10 and "forces_pred" in frames[0].arrays and "forces_std" not in frames[0].arrays
    assert "interval_kind" not in frames[0].info
    code = cli.main(["conserve", str(data), str(model), "--frames", ":400", "--steps", "100", "--json"])
    c = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and [row["model"] for row in c["table"]] == ["dcf"]
    assert c["table"][0]["potential"] == "work integral" and c["table"][0]["Jacobian asymmetry"] > 1e-3
