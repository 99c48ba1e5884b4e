"""MD with a model (issue 17): settings, a real run, the sd threshold, a molecule that falls apart, cancel,
extxyz out, the GFN2-xTB reference, and the ``md`` command."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from aff_app import cli
from aff_app.io.files import load_trajectory
from aff_app.workflows import pipeline
from aff_app.workflows.md import (MDError, MDSettings, compare_runs, reference_settings, run_md, run_model_md,
                                  xtb_calculator)
from aff_app.workflows.pipeline import TrainSettings


@pytest.fixture(scope="module")
def uracil(repo_root):
    # GFN2-xTB labels: the model and the reference run describe the same surface
    return load_trajectory(repo_root / "sample_data" / "uracil.npz", frames=":600")


@pytest.fixture(scope="module")
def trained(uracil):
    return pipeline.fit(uracil, np.arange(0, 600, 6), TrainSettings(gamma=4.5, lam=1e-8))


@pytest.mark.parametrize("kwargs, message", [
    ({"timestep_fs": 0.0}, "time step must lie in (0, 5]"),
    ({"timestep_fs": 8.0}, "time step must lie in (0, 5]"),
    ({"n_steps": 0}, "number of steps"),
    ({"n_steps": 10, "record_every": 20}, "record_every must be an integer in 1..n_steps (10)"),
    ({"ensemble": "npt"}, "ensemble must be 'nve' or 'nvt'"),
    ({"sd_threshold": -1.0}, "sd threshold must be a positive number"),
    ({"temperature_K": -5}, "temperature must lie in [0, 5000] K"),
])
def test_bad_settings_say_what_is_wrong(kwargs, message):
    with pytest.raises(MDError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]").replace(".", r"\.")):
        MDSettings(**kwargs)


def test_nve_run_records_frames_sds_and_energies(trained, uracil):
    s = MDSettings(n_steps=200, record_every=20)
    run = run_model_md(trained.force, trained.energy, uracil.R[599], s, label="AFF")
    assert run.stop_reason == "completed"
    assert run.steps.tolist() == list(range(0, 201, 20))
    np.testing.assert_allclose(run.times_ps, run.steps * 0.5e-3)
    assert run.positions.shape == run.forces.shape == run.force_sd.shape == (11, 12, 3)
    assert np.all(run.force_sd > 0) and np.all(np.isfinite(run.potential_energy))
    assert run.temperature_K[0] == pytest.approx(300.0, rel=1e-6)  # the start is rescaled to exactly T
    # the recorded sd is the model's calibrated sd at the recorded geometry
    np.testing.assert_allclose(run.force_sd[-1], trained.force.predict(run.positions[-1]).std[0], rtol=1e-10)
    # and the forces the integrator used are the model's mean there
    np.testing.assert_allclose(run.forces[-1], trained.force.predict(run.positions[-1]).mean[0],
                               atol=1e-8 * np.abs(run.forces).max())


def test_conservative_forces_conserve_the_model_energy_and_own_forces_do_not(trained, uracil):
    s = MDSettings(n_steps=400, record_every=10)
    own = run_model_md(trained.force, trained.energy, uracil.R[599], s)
    cons = run_model_md(trained.force, trained.energy, uracil.R[599],
                        MDSettings(n_steps=400, record_every=10, conservative=True))
    spread_cons = np.ptp(cons.total_energy)
    spread_own = np.ptp(own.total_energy)
    # velocity Verlet at 0.5 fs: the conservative total energy wobbles by ~1e-2 kcal/mol; AFF's own
    # forces (not a gradient, method.md eq. 25) move it by far more
    assert spread_cons < 0.05
    assert spread_own > 3 * spread_cons
    assert np.isfinite(cons.drift_per_ps()) and abs(cons.drift_per_ps()) < abs(own.drift_per_ps())
    # NVT has no drift to report
    nvt = run_model_md(trained.force, trained.energy, uracil.R[599], MDSettings(ensemble="nvt", n_steps=40,
                                                                                record_every=10))
    assert np.isnan(nvt.drift_per_ps())


def test_sd_threshold_stops_the_run_and_keeps_the_frames(trained, uracil):
    # a threshold between the sd at the start (a frame near the data) and where a hot run takes the model
    run = run_model_md(trained.force, trained.energy, uracil.R[599],
                       MDSettings(n_steps=2000, record_every=10, temperature_K=1500, sd_threshold=1.0))
    assert run.stop_reason == "sd_threshold"
    assert "above the threshold 1 " in run.message and "extrapolating" in run.message
    assert 1 <= run.n_frames < 201
    assert run.max_sd[-1] > 1.0 and np.all(run.max_sd[:-1] <= 1.0)


class _PullApart(Calculator):
    """Pulls atom 0 away from the rest with a constant force: the molecule must be seen to break."""

    implemented_properties = ["forces", "energy"]

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        R = self.atoms.get_positions()
        out = R[0] - R[1:].mean(axis=0)
        F = np.zeros((len(self.atoms), 3))
        F[0] = 50.0 * out / np.linalg.norm(out)  # eV/Å, away from the rest
        self.results = {"forces": F, "energy": 0.0}


def test_a_molecule_that_falls_apart_ends_the_run_with_what_ran(uracil):
    run = run_md(_PullApart(), uracil.z, uracil.R[0], MDSettings(n_steps=5000, record_every=5), label="toy")
    assert run.stop_reason == "unstable"
    assert "broke" in run.message and "frames before it are kept" in run.message
    assert run.n_frames >= 2 and run.force_sd is None


def test_bad_start_geometries_are_refused(trained, uracil):
    R = uracil.R[0].copy()
    R[1] = R[0] + [0.1, 0, 0]
    with pytest.raises(MDError, match="collided"):
        run_model_md(trained.force, trained.energy, R)
    with pytest.raises(MDError, match=r"shape \(12, 3\)"):
        run_model_md(trained.force, trained.energy, R[:5])
    with pytest.raises(MDError, match="conservative forces need AFF's integrated energy"):
        run_model_md(trained.force, None, uracil.R[0], MDSettings(conservative=True))


def test_cancel_keeps_the_frames(trained, uracil):
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) >= 3

    run = run_model_md(trained.force, trained.energy, uracil.R[599], MDSettings(n_steps=1000, record_every=10),
                       should_stop=should_stop)
    assert run.stop_reason == "cancelled" and run.n_frames == 3 and "kept" in run.message


def test_extxyz_round_trip(tmp_path, trained, uracil):
    run = run_model_md(trained.force, trained.energy, uracil.R[599], MDSettings(n_steps=30, record_every=10))
    path = tmp_path / "run.extxyz"
    run.write_extxyz(path)
    frames = ase.io.read(path, ":")
    ev = 1 / 23.060547830619026  # kcal/mol in eV
    assert len(frames) == run.n_frames == 4
    np.testing.assert_allclose(frames[2].get_positions(), run.positions[2], atol=1e-7)
    np.testing.assert_allclose(frames[2].get_forces(), run.forces[2] * ev, atol=1e-7)  # extxyz keeps 8 decimals
    np.testing.assert_allclose(frames[2].arrays["forces_sd"], run.force_sd[2] * ev, atol=1e-7)
    assert frames[2].get_potential_energy() == pytest.approx(run.potential_energy[2] * ev, abs=1e-5)
    assert frames[3].info["step"] == 30 and frames[3].info["time_ps"] == pytest.approx(0.015)


def test_xtb_reference_from_the_same_start(trained, uracil):
    from tblite.ase import TBLite

    s = MDSettings(n_steps=40, record_every=10, sd_threshold=0.001)
    ref = run_md(xtb_calculator(), uracil.z, uracil.R[599], reference_settings(s), label="GFN2-xTB",
                 threads=1)
    assert ref.stop_reason == "completed" and ref.force_sd is None and ref.n_frames == 5
    # its forces are GFN2-xTB's (tblite called directly), in kcal/mol/Å; the run's SCC starts from the
    # previous step's density, a fresh one from scratch: they agree to the SCC tolerance (~5e-3 here)
    atoms = Atoms(numbers=uracil.z, positions=ref.positions[2])
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    F = atoms.get_forces() * 23.060547830619026
    np.testing.assert_allclose(ref.forces[2], F, atol=2e-4 * np.abs(F).max())
    model = run_model_md(trained.force, trained.energy, uracil.R[599], MDSettings(n_steps=40, record_every=10))
    cmp = compare_runs(model, ref)
    assert {b.kind for b in cmp.by_kind} == {"C–C", "C–H", "C–N", "C–O", "H–N"}
    assert cmp.model_lengths.shape == (5, len(cmp.bonds)) and cmp.reference_energy.shape == (5,)
    # the same start: the first frame's bonds are identical
    np.testing.assert_allclose(cmp.model_lengths[0], cmp.reference_lengths[0])


def test_md_command(tmp_path, capsys, uracil, repo_root):
    model = tmp_path / "u.npz"
    assert cli.main(["train", str(repo_root / "sample_data" / "uracil.npz"), "--frames", ":300", "--n-train", "40",
                     "--gamma", "4.5", "--lam", "1e-8", "--out", str(model), "--json"]) == 0
    capsys.readouterr()
    out = tmp_path / "run.extxyz"
    code = cli.main(["md", str(model), "--data", str(repo_root / "sample_data" / "uracil.npz"), "--frames", ":300",
                     "--steps", "60", "--record-every", "20", "--out", str(out), "--json"])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and r["ok"] and r["run"]["frames"] == 4 and r["run"]["stop_reason"] == "completed"
    assert len(ase.io.read(out, ":")) == 4
    # without data: the model's first training frame
    assert cli.main(["md", str(model), "--steps", "20", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["start"] == "the model's first training frame"
    # bad settings: exit 2 with the message
    assert cli.main(["md", str(model), "--dt", "9", "--json"]) == 2
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not r["ok"] and "time step must lie in (0, 5] fs" in r["error"]
    assert cli.main(["md", str(model), "--frame", "3", "--json"]) == 2
    assert "--frame needs --data" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]


def test_on_frame_hands_over_the_frames_so_far(trained, uracil):
    seen = []

    def on_frame(snapshot):
        run = snapshot()
        seen.append((run.stop_reason, run.n_frames, run.positions.shape))

    run = run_model_md(trained.force, trained.energy, uracil.R[599], MDSettings(n_steps=40, record_every=10),
                       on_frame=on_frame)
    assert [n for _, n, _ in seen] == [1, 2, 3, 4, 5]
    assert all(r == "running" for r, _, _ in seen) and seen[-1][2] == (5, 12, 3)
    assert run.stop_reason == "completed" and run.n_frames == 5
