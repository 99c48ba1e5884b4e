"""The fast posterior mean (method.md eq. 26) against the kernel-row prediction, and its symmetries."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from aff_app.calculator import AFFCalculator
from aff_app.io.files import load_trajectory
from aff_app.workflows import pipeline
from aff_app.workflows.pipeline import TrainSettings


@pytest.fixture(scope="module")
def uracil(shared_data):
    return load_trajectory(shared_data / "uracil.npz", frames=":400")


@pytest.fixture(scope="module")
def benzene(repo_root):
    return load_trajectory(repo_root / "sample_data" / "benzene.npz", frames=":400")


@pytest.fixture(scope="module")
def uracil_model(uracil):
    # 12 singleton sets, plain kernel; fixed γ/λ near the likelihood optimum (the search is not the point)
    return pipeline.fit(uracil, np.arange(0, 200, 5), TrainSettings(gamma=4.5, lam=1e-8, energy=False)).force


@pytest.fixture(scope="module")
def benzene_trained(benzene):
    # 12 permutations, two 6-atom sets; a nugget well above the floor so both sums agree to rounding
    # (at λ ≈ 1e-17 α cancels by 10¹¹ and any two summation orders differ by ~1e-5)
    return pipeline.train(benzene, n_train=60, seed=0, settings=TrainSettings(lam=1e-7))


def _relative(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_fast_mean_equals_kernel_rows_plain_kernel(uracil, uracil_model):
    R = uracil.R[300:310]
    assert _relative(uracil_model.predict_mean(R), uracil_model.predict(R, return_std=False).mean) < 1e-9


def test_fast_mean_equals_kernel_rows_with_permutations_and_multi_atom_sets(benzene, benzene_trained):
    f = benzene_trained.force
    assert f.perms.shape[0] == 12 and sorted(len(s) for s in f.pe_sets) == [6, 6]
    R = benzene.R[350:356]
    assert _relative(f.predict_mean(R), f.predict(R, return_std=False).mean) < 1e-8
    # one geometry as (N, 3)
    assert _relative(f.predict_mean(R[0])[0], f.predict(R[0], return_std=False).mean[0]) < 1e-8


def test_fast_integrated_energy_and_conservative_forces(benzene, benzene_trained):
    em = benzene_trained.energy
    R = benzene.R[360:364]
    slow = em.integrated.predict(R, return_std=True).mean
    fast = em.integrated.predict(R, return_std=False).mean
    assert np.max(np.abs(fast - slow)) < 1e-6 * np.ptp(benzene.E)
    # the conservative forces are −∇Ê: central differences of the (fast) energy
    x = R[0].copy()
    F = em.forces(x)[0]
    h = 1e-4
    for atom, comp in [(0, 0), (7, 2)]:
        xp, xm = x.copy(), x.copy()
        xp[atom, comp] += h
        xm[atom, comp] -= h
        fd = -(em.predict(xp, return_std=False).mean[0] - em.predict(xm, return_std=False).mean[0]) / (2 * h)
        assert fd == pytest.approx(F[atom, comp], rel=1e-4, abs=1e-4)


def test_fast_mean_rotates_translates_and_permutes_with_the_molecule(benzene, benzene_trained):
    f = benzene_trained.force
    x = benzene.R[370]
    F = f.predict_mean(x)[0]
    rot = Rotation.from_euler("zyx", [35, -60, 110], degrees=True).as_matrix()
    moved = (x - x.mean(0)) @ rot.T + np.array([3.0, -1.0, 7.5])
    np.testing.assert_allclose(f.predict_mean(moved)[0], F @ rot.T, atol=1e-7 * np.abs(F).max())
    # swap atoms by a permutation of the group: the forces swap with them
    p = f.perms[5]
    np.testing.assert_allclose(f.predict_mean(x[p])[0], F[p], atol=1e-7 * np.abs(F).max())


def test_an_md_step_asks_the_fast_mean_only(uracil, uracil_model, monkeypatch):
    from ase import Atoms

    calls = {"predict": 0, "mean": 0}
    orig_predict, orig_mean = type(uracil_model).predict, type(uracil_model).predict_mean

    def predict(self, *a, **k):
        calls["predict"] += 1
        return orig_predict(self, *a, **k)

    def predict_mean(self, *a, **k):
        calls["mean"] += 1
        return orig_mean(self, *a, **k)

    monkeypatch.setattr(type(uracil_model), "predict", predict)
    monkeypatch.setattr(type(uracil_model), "predict_mean", predict_mean)
    atoms = Atoms(numbers=uracil.z, positions=uracil.R[310])
    atoms.calc = AFFCalculator(uracil_model)
    atoms.get_forces()
    assert calls == {"predict": 0, "mean": 1}
    atoms.calc.get_forces_std(atoms)  # the sd on demand: one kernel-row prediction
    assert calls == {"predict": 1, "mean": 1}
