"""The one workflow (aff_app.workflows.pipeline) and the one model file, from the library and the CLI."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import ase.io
import numpy as np
import pytest

from aff_app import cli
from aff_app.gp.energy import EnergyModel
from aff_app.gp.integrated import IntegratedEnergyModel
from aff_app.gp.persistence import load_model, model_bytes
from aff_app.gp.record import FitRecord
from aff_app.io.files import load_trajectory, write_trajectory
from aff_app.workflows import pipeline
from aff_app.workflows.predictions import PREDICTION_KEYS

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "uracil.npz"
GAMMA, LAM = 4.5, 1e-8


@lru_cache(maxsize=None)
def _traj():
    return load_trajectory(SAMPLE)


@lru_cache(maxsize=None)
def _trained(mode: str = "aff") -> pipeline.Trained:
    settings = pipeline.TrainSettings(mode=mode, gamma=GAMMA, lam=LAM)
    return pipeline.train(_traj(), n_train=30, n_test=40, seed=2, settings=settings)


def _main(capsys, *args) -> tuple[int, dict]:
    code = cli.main([str(a) for a in args] + ["--json"])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    return code, json.loads(out)


def test_train_fits_forces_and_energies_with_one_typed_record():
    t = _trained()
    assert isinstance(t.energy, EnergyModel) and t.energy.force_model is t.force
    rec = t.record
    assert isinstance(rec, FitRecord) and rec.mode == "aff" and rec.n_train == 30 and rec.criterion == "fixed"
    assert rec.data.fingerprint == _traj().fingerprint and rec.split.seed == 2 and len(rec.split.test) == 40
    assert rec.symmetry is not None and rec.search.fixed
    tm = t.timings
    # every part timed; the whole is at least the sum of its parts
    assert tm.symmetry_s > 0 and tm.force_s > 0 and tm.energy_s > 0
    assert tm.total_s >= tm.symmetry_s + tm.force_s + tm.energy_s - 1e-9
    assert tm.train_s == pytest.approx(tm.symmetry_s + tm.force_s + tm.energy_s)
    gdml = _trained("gdml")
    assert isinstance(gdml.energy, IntegratedEnergyModel) and gdml.record.symmetry is None


def test_evaluate_reports_forces_and_energies_as_fractions():
    t = _trained()
    held = pipeline.evaluate(t, _traj())
    assert held.selection == "recorded at training" and held.n_frames == 40
    rep = held.report()
    assert 0 <= rep["pci"] <= 1 and 0 <= rep["energy_pci"] <= 1
    assert rep["energy_mae"] > 0 and rep["energy_lci"] > 0
    means = pipeline.evaluate(t, _traj(), with_std=False).report()
    assert means["force_mae"] == pytest.approx(rep["force_mae"], rel=1e-12)
    assert means["pci"] is None and means["energy_pci"] is None


def test_model_file_round_trips_with_its_energy_model(tmp_path):
    t = _trained()
    pipeline.save(t, tmp_path / "m.npz")
    back = pipeline.load(tmp_path / "m.npz")
    R = _traj().R[-3:]
    np.testing.assert_allclose(back.force.predict(R).mean, t.force.predict(R).mean, rtol=1e-12)
    a = t.energy.predict(R, forces=t.force.predict(R))
    b = back.energy.predict(R, forces=back.force.predict(R))
    np.testing.assert_allclose(b.mean, a.mean, rtol=1e-10)
    assert back.record.to_dict() == t.record.to_dict()  # the typed record survives the file
    # the same bytes as the app's download, read by the same reader
    force, energy = load_model(model_bytes(t.force, t.energy))
    assert isinstance(energy, EnergyModel) and force.record.split.test == t.record.split.test


def test_cli_train_fits_energies_and_evaluate_reports_them(tmp_path, capsys):
    out = tmp_path / "m.npz"
    code, tr = _main(capsys, "train", SAMPLE, "--n-train", "30", "--gamma", GAMMA, "--lam", LAM, "--out", out)
    assert code == 0 and tr["energy_model"] == "energy GP"
    assert tr["timings"]["energy_s"] > 0 and tr["training_time_s"] <= tr["wall_time_s"]
    # no --n-test: every frame the model did not train on
    code, ev = _main(capsys, "evaluate", out, SAMPLE)
    n = _traj().n_frames
    assert code == 0 and ev["n_test"] == n - 30 and ev["n_training_frames_excluded"] == 30
    assert ev["energy_model"] == "energy GP" and ev["energy_mae"] > 0 and 0 <= ev["energy_pci"] <= 1
    assert ev["energy_rmse"] >= ev["energy_mae"] and ev["units"] == {"force": "kcal/mol/Å", "energy": "kcal/mol"}
    # a file the model never saw: all of its frames (here 10 frames from a fresh file)
    other = tmp_path / "new.extxyz"
    write_trajectory(_traj().subset(slice(n - 10, n)), other)
    code, ev2 = _main(capsys, "evaluate", out, other)
    in_train = int(np.isin(np.arange(n - 10, n), pipeline.load(out).force.train_idx).sum())
    assert code == 0 and ev2["n_test"] == 10 - in_train and not ev2["same_data_as_training"]
    # --no-energy: forces only, and evaluate says so
    code, tr = _main(capsys, "train", SAMPLE, "--n-train", "20", "--gamma", GAMMA, "--lam", LAM, "--no-energy",
                     "--out", tmp_path / "f.npz")
    assert code == 0 and tr["energy_model"] is None and tr["timings"]["energy_s"] is None
    code, ev = _main(capsys, "evaluate", tmp_path / "f.npz", SAMPLE, "--n-test", "10")
    assert code == 0 and ev["energy_model"] is None and ev["energy_mae"] is None and ev["force_mae"] > 0


def test_cli_predict_writes_the_same_file_as_the_page(tmp_path, capsys):
    t = _trained()
    pipeline.save(t, tmp_path / "m.npz")
    code, out = _main(capsys, "predict", tmp_path / "m.npz", SAMPLE, "--frames", "0:3", "--out", tmp_path / "p.extxyz")
    assert code == 0 and out["energy_model"] == "energy GP"
    images = ase.io.read(tmp_path / "p.extxyz", index=":")
    at = images[0]
    assert {PREDICTION_KEYS["forces"], PREDICTION_KEYS["forces_std"]} <= set(at.arrays)
    assert {PREDICTION_KEYS["energy"], PREDICTION_KEYS["energy_std"], "frame", "interval_kind"} <= set(at.info)
    R = _traj().R[:3]
    fp = t.force.predict(R)
    ev = 0.0433641043  # eV per kcal/mol
    assert at.info["energy_pred"] == pytest.approx(float(t.energy.predict(R, forces=fp).mean[0]) * ev, rel=1e-6)


def test_aff_energy_model_is_chosen_and_named(tmp_path, capsys):
    """Issue 15: AFF's default energy is the integrated one; the energy GP on request; too few frames fall back
    to the energy GP with a warning; the CLI and the model file carry the choice."""
    from aff_app.gp.aff_energy import SubsetEnergyModel

    traj = load_trajectory(SAMPLE)
    tr = np.arange(0, 240, 2)
    default = pipeline.fit(traj, tr, pipeline.TrainSettings(gamma=float(GAMMA), lam=float(LAM)))
    assert isinstance(default.energy, SubsetEnergyModel) and default.energy.label == "integrated energy"
    assert default.timings.energy_s > 0
    gp = pipeline.fit(traj, tr, pipeline.TrainSettings(gamma=float(GAMMA), lam=float(LAM), energy_model="gp"))
    assert isinstance(gp.energy, EnergyModel)
    few = pipeline.fit(traj, tr[:40], pipeline.TrainSettings(gamma=float(GAMMA), lam=float(LAM)))
    assert isinstance(few.energy, EnergyModel)
    assert any("too few for the integrated energy" in w for w in few.warnings)
    with pytest.raises(pipeline.TrainingError, match="energy model must be one of integrated, gp"):
        pipeline.TrainSettings(energy_model="neural")
    out = tmp_path / "m.npz"
    code, tr_json = _main(capsys, "train", SAMPLE, "--n-train", "120", "--gamma", GAMMA, "--lam", LAM, "--out", out)
    assert code == 0 and tr_json["energy_model"] == "integrated energy"
    assert isinstance(load_model(out)[1], SubsetEnergyModel)
    code, ev = _main(capsys, "evaluate", out, SAMPLE, "--n-test", "100")
    assert code == 0 and ev["energy_model"] == "integrated energy" and 0 < ev["energy_mae"] < 1.0
    assert 0 <= ev["energy_pci"] <= 1
    code, tr_json = _main(capsys, "train", SAMPLE, "--n-train", "120", "--gamma", GAMMA, "--lam", LAM,
                          "--energy-model", "gp", "--out", out)
    assert code == 0 and tr_json["energy_model"] == "energy GP"
