"""CLI commands symmetry / train / evaluate / predict: two real subprocesses, the rest through main(argv)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import ase.io
from ase import Atoms
import numpy as np
import pytest

from aff_app import cli
from aff_app.io.files import load_trajectory
from aff_app.gp import ForceModel

# uracil hyperparameters near the profile-likelihood optimum at M ≈ 50 (fixed: the search is not the point here)
FIXED = ["--gamma", "4.5", "--lam", "1e-8"]


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _main(capsys, *args) -> tuple[int, dict, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, _last_json(captured.out), captured.err


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", "aff_app", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def uracil_path(shared_data):
    return shared_data / "uracil.npz"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, uracil_path):
    """An AFF uracil model trained in-process on 40 of the first 1000 frames."""
    out = tmp_path_factory.mktemp("model") / "uracil_aff.npz"
    code = cli.main(["train", str(uracil_path), "--frames", ":1000", "--model", "aff", "--n-train", "40",
                     "--seed", "3", "--out", str(out), "--json", *FIXED])
    assert code == 0
    return out


# -- subprocesses: the real entry point ---------------------------------------------------------
def test_train_then_evaluate_round_trip_through_files(repo_root, tmp_path, uracil_path):
    model_path = tmp_path / "u.npz"
    proc = _run(["train", uracil_path, "--model", "aff", "--n-train", "50", "--seed", "1", "--out", model_path,
                 "--json", *FIXED], repo_root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --json: no progress output
    out = _last_json(proc.stdout)
    assert out["ok"] is True and out["command"] == "train"
    assert {"path", "model", "n_train", "gamma", "lam", "pe_sets", "training_time_s", "timings"} <= set(out)
    assert out["path"] == str(model_path) and model_path.is_file()
    assert out["n_train"] == 50 and out["gamma"] == 4.5 and out["lam"] == 1e-8 and out["model"] == "aff"
    assert len(out["pe_sets"]) == 12 and out["pe_sets"][0] == {"atoms": [0], "element": "C", "size": 1}
    assert {"search_s", "build_s", "cholesky_s"} <= set(out["timings"]) and out["training_time_s"] > 0

    proc = _run(["evaluate", model_path, uracil_path, "--n-test", "100", "--seed", "2", "--json"], repo_root)
    assert proc.returncode == 0, proc.stderr
    ev = _last_json(proc.stdout)
    assert ev["ok"] is True and ev["command"] == "evaluate"
    assert {"force_mae", "force_rmse", "pci", "lci", "n_test", "interval", "level", "units"} <= set(ev)
    assert ev["n_test"] == 100 and ev["interval"] == "latent" and ev["units"]["force"] == "kcal/mol/Å"
    assert ev["same_data_as_training"] is True and ev["n_training_frames_excluded"] == 50
    # held-out force MAE far below the spread of uracil's forces (~30 kcal/mol/Å)
    assert ev["force_mae"] < 0.15 * ev["reference_force_std"]
    assert 0 < ev["pci"] <= 1 and ev["lci"] > 0


def test_over_budget_gdml_exits_2_without_traceback(repo_root, tmp_path, uracil_path):
    proc = _run(["train", uracil_path, "--model", "gdml", "--n-train", "200", "--out", tmp_path / "g.npz",
                 "--memory-budget-gb", "0.001", "--json"], repo_root)
    assert proc.returncode == 2
    out = _last_json(proc.stdout)
    assert out["ok"] is False and out["error_type"] == "TrainingBudgetError"
    assert "memory budget is 0.001 GB" in out["error"] and "7200×7200" in out["error"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "g.npz").exists()


# -- in-process ----------------------------------------------------------------------------------
def test_symmetry_of_benzene(shared_data, capsys):
    code, out, _ = _main(capsys, "symmetry", shared_data / "benzene.npz", "--frames-used", "100", "--json")
    assert code == 0 and out["command"] == "symmetry"
    # method.md table: benzene has 12 permutations and 2 PE sets (6 C, 6 H)
    assert out["n_perms"] == 12 and out["n_sets"] == 2 and out["set_sizes"] == [6, 6]
    assert out["pe_sets"] == [{"atoms": [0, 1, 2, 3, 4, 5], "element": "C", "size": 6},
                              {"atoms": [6, 7, 8, 9, 10, 11], "element": "H", "size": 6}]
    assert len(out["permutations"]) == 12 and out["permutations"][0] == "()"
    assert "(0 1 2 3 4 5)(6 7 8 9 10 11)" in out["permutations"]
    assert out["frames_used"] == 100 and out["method"] == "data"
    # human output names the sets
    assert cli.main(["symmetry", str(shared_data / "benzene.npz"), "--method", "graph"]) == 0
    text = capsys.readouterr().out
    assert "permutations: 12" in text and "6 C: 0 1 2 3 4 5" in text


def test_model_file_records_disjoint_training_frames(trained, uracil_path, capsys):
    model = ForceModel.load(trained)
    traj = load_trajectory(uracil_path, frames=":1000")
    assert model.n_train == 40 and model.record.data.fingerprint == traj.fingerprint
    assert list(model.record.split.train) == model.train_idx.tolist() and model.record.split.seed == 3
    np.testing.assert_array_equal(model.R_train, traj.R[model.train_idx])
    code, ev, _ = _main(capsys, "evaluate", trained, uracil_path, "--frames", ":1000", "--n-test", "50",
                        "--interval", "observation", "--level", "0.9", "--json")
    assert code == 0 and ev["interval"] == "observation" and ev["level"] == 0.9 and ev["n_test"] == 50
    assert ev["n_training_frames_excluded"] == 40
    # asking for more test frames than are held out is refused with the numbers
    code, err, _ = _main(capsys, "evaluate", trained, uracil_path, "--frames", ":1000", "--n-test", "980", "--json")
    assert code == 2 and "leaves 960" in err["error"]


def test_train_human_output_with_user_pe_sets(tmp_path, uracil_path, capsys):
    out = tmp_path / "human"  # no extension: .npz is added, and the path reported says so
    assert cli.main(["train", str(uracil_path), "--frames", ":300", "--n-train", "20", "--out", str(out),
                     "--pe-sets", "8,9; 10 11", *FIXED]) == 0
    captured = capsys.readouterr()
    assert "100.0% done" in captured.err  # progress goes to stderr, never stdout
    text = captured.out
    assert f"written to {out}.npz" in text and "trained on 20 of 300 frames" in text
    assert "2 H [8 9]; 2 H [10 11]" in text and "training time" in text and "Cholesky" in text
    model = ForceModel.load(f"{out}.npz")
    assert [s.tolist() for s in model.pe_sets if s.size > 1] == [[8, 9], [10, 11]]
    assert model.record.symmetry["method"] == "user"
    # a set mixing elements is refused (atoms 0 and 6 are C and O)
    code = cli.main(["train", str(uracil_path), "--frames", ":300", "--n-train", "20", "--out", str(out),
                     "--pe-sets", "0,6", "--json", *FIXED])
    err = _last_json(capsys.readouterr().out)
    assert code == 2 and "mixes elements" in err["error"]


def test_evaluate_refuses_a_model_of_another_molecule(trained, shared_data, capsys):
    code, out, err = _main(capsys, "evaluate", trained, shared_data / "benzene.npz", "--n-test", "5", "--json")
    assert code == 2 and out["error_type"] == "AtomsMismatchError"
    assert "C4H4N2O2" in out["error"] and "C6H6" in out["error"]
    assert err.startswith("error: ")


def test_train_errors(tmp_path, uracil_path, capsys):
    code, out, _ = _main(capsys, "train", uracil_path, "--frames", ":100", "--n-train", "500",
                         "--out", tmp_path / "m.npz", "--json")
    assert code == 2 and out["error_type"] == "SplitError"
    assert "500 training frames from a trajectory of 100 frames" in out["error"]
    # a plain XYZ file has positions only: view-only, cannot train
    traj = load_trajectory(uracil_path, frames=":30")
    xyz = tmp_path / "positions.xyz"
    ase.io.write(xyz, [Atoms(numbers=traj.z, positions=r) for r in traj.R], format="xyz")
    code, out, _ = _main(capsys, "train", xyz, "--n-train", "10", "--out", tmp_path / "m.npz", "--json")
    assert code == 2 and out["error_type"] == "UnlabelledDataError" and "view-only" in out["error"]
    code, out, _ = _main(capsys, "train", uracil_path, "--n-train", "10", "--model", "gdml", "--pe-sets", "0,1",
                         "--out", tmp_path / "m.npz", "--json")
    assert code == 2 and "--pe-sets applies to --model aff and sgdml" in out["error"]
    code, out, _ = _main(capsys, "evaluate", tmp_path / "missing.npz", uracil_path, "--n-test", "5", "--json")
    assert code == 2 and "no such model file" in out["error"]
    assert not (tmp_path / "m.npz").exists()


def test_predict_writes_extxyz_and_csv(trained, uracil_path, tmp_path, capsys):
    model = ForceModel.load(trained)
    pred = model.predict(load_trajectory(uracil_path, frames="0:4").R)
    ev_per_kcal = 0.0433641043  # 1 kcal/mol in eV (ase.units)

    code, out, _ = _main(capsys, "predict", trained, uracil_path, "--frames", "0:4", "--out", tmp_path / "p.extxyz",
                         "--json")
    assert code == 0 and out["format"] == "extxyz" and out["force_unit"] == "eV/Å" and out["n_frames"] == 4
    images = ase.io.read(tmp_path / "p.extxyz", index=":")
    assert len(images) == 4
    for i, at in enumerate(images):
        np.testing.assert_allclose(at.arrays["forces_pred"], pred.mean[i] * ev_per_kcal, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(at.arrays["forces_std"], pred.std[i] * ev_per_kcal, rtol=1e-6, atol=1e-7)
    # the reference labels come along as calculator results, and the data loader reads the file back
    back = load_trajectory(tmp_path / "p.extxyz")
    ref = load_trajectory(uracil_path, frames="0:4")
    np.testing.assert_allclose(back.F, ref.F, atol=1e-5)

    code, out, _ = _main(capsys, "predict", trained, uracil_path, "--frames", "0:4", "--out", tmp_path / "p.csv",
                         "--json")
    assert code == 0 and out["format"] == "csv" and out["force_unit"] == "kcal/mol/Å"
    with open(tmp_path / "p.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 * 12
    assert "fx_pred [kcal/mol/Å]" in rows[0] and "fz_std [kcal/mol/Å]" in rows[0] and "x [Å]" in rows[0]
    got = np.array([[float(r[f"f{c}_pred [kcal/mol/Å]"]) for c in "xyz"] for r in rows]).reshape(4, 12, 3)
    np.testing.assert_allclose(got, pred.mean, rtol=1e-12)
    assert rows[13]["frame"] == "1" and rows[13]["atom"] == "1" and rows[13]["element"] == "C"

    code, out, _ = _main(capsys, "predict", trained, uracil_path, "--out", tmp_path / "p.json", "--json")
    assert code == 2 and ".extxyz, .xyz or .csv" in out["error"]


def test_gdml_reports_one_set_of_all_atoms(tmp_path, shared_data, capsys):
    code, out, _ = _main(capsys, "train", shared_data / "benzene.npz", "--frames", ":200", "--model", "gdml",
                         "--n-train", "5", "--gamma", "2.5", "--lam", "1e-8", "--out", tmp_path / "g.npz", "--json")
    assert code == 0 and out["model"] == "gdml" and out["n_perms"] == 1
    assert out["pe_sets"] == [{"atoms": list(range(12)), "element": "C6H6", "size": 12}]
    assert out["timings"]["symmetry_s"] == 0  # GDML needs no permutation search
