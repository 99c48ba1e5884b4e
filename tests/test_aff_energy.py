"""AFF's energy (method.md "AFF's energy") as physics: the per-set integrated energies and why
their sum is no energy, the spread subset, −∇Ê against finite differences, invariance to rigid
motion and to the permutation group, calibrated intervals on held-out real frames, the model
file, and the pipeline's choice."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from aff_app.gp import (
    ModelError,
    SubsetEnergyModel,
    fit_force_model,
    fit_subset_energy,
    set_energies,
    spread_frames,
)
from aff_app.gp.kernels import Geometry
from aff_app.gp.persistence import load_model, model_bytes
from aff_app.symmetry import detect_symmetry


@pytest.fixture(scope="module")
def uracil(shared_data):
    d = np.load(shared_data / "uracil.npz")
    idx = np.random.default_rng(1).permutation(d["R"].shape[0])
    R, F, E, z = d["R"], d["F"], d["E"], d["z"]
    train, test = idx[:400], idx[-1000:]
    fm = fit_force_model(R[train], F[train], z, mode="aff", seed=0)
    em = fit_subset_energy(fm, R[train], E[train], F[train], train_idx=train)
    return R, F, E, z, train, test, fm, em


@pytest.fixture(scope="module")
def benzene(shared_data):
    d = np.load(shared_data / "benzene.npz")
    R, F, E, z = d["R"][::40], d["F"][::40], d["E"][::40], d["z"]
    sym = detect_symmetry(d["R"], z, n_samples=200, seed=0)
    fm = fit_force_model(R[:70], F[:70], z, mode="aff", pe_sets=list(sym.pe_sets), perms=sym.perms, seed=0)
    em = fit_subset_energy(fm, R[:70], E[:70], F[:70], max_side=720)
    return R, F, E, z, sym, fm, em


def _fd_gradient(fun, x, h=1e-5):
    g = np.zeros_like(x)
    for i in range(x.shape[0]):
        for c in range(3):
            e = np.zeros_like(x)
            e[i, c] = h
            g[i, c] = (fun(x + e) - fun(x - e)) / (2 * h)
    return g


def test_each_set_energy_gives_that_sets_forces(uracil):
    R, F, E, z, train, test, fm, _ = uracil
    x = R[test[0]]
    for k in (0, 5):
        g = _fd_gradient(lambda y: set_energies(fm, y[None])[0, k], x)
        atoms = fm.pe_sets[k]
        f = fm.predict(x[None], return_std=False).mean[0][atoms]
        np.testing.assert_allclose(-g[atoms], f, rtol=1e-5, atol=1e-5 * np.abs(f).max())
        # the other atoms get set k's estimate of their forces: not zero (this is the double count)
        assert np.abs(np.delete(g, atoms, axis=0)).max() > 0.1 * np.abs(f).max()


def test_sum_of_set_energies_is_no_energy(uracil):
    """The issue's formula Ê = c + Σ_i Ê_i, measured: it misses the held-out energies by far more
    than their spread (each set's Ê_i estimates the whole energy, so the sum counts it ~once per set)."""
    R, F, E, z, train, test, fm, em = uracil
    s_tr, s_te = set_energies(fm, R[train]).sum(1), set_energies(fm, R[test]).sum(1)
    c = np.mean(E[train] - s_tr)
    naive = np.mean(np.abs(s_te + c - E[test]))
    assert naive > np.std(E[test])
    assert np.mean(np.abs(em.predict(R[test]).mean - E[test])) < 0.1 * naive


def test_spread_frames_cover_the_data():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 3)) * 1.5
    R = base + rng.normal(scale=0.05, size=(120, 6, 3))
    R[7] += rng.normal(scale=0.4, size=(6, 3))  # one outlying frame: a spread subset must take it
    idx = spread_frames(R, 10)
    assert len(set(idx.tolist())) == 10 and 7 in idx.tolist()
    np.testing.assert_array_equal(idx, spread_frames(R, 10))
    assert sorted(spread_frames(R, 120).tolist()) == list(range(120))
    D = Geometry.from_positions(R).D

    def cover(sel):  # largest distance of any frame to its nearest chosen frame
        return np.sqrt(((D[:, None] - D[sel][None]) ** 2).sum(-1).min(1).max())
    random_cover = [cover(rng.choice(120, 10, replace=False)) for _ in range(20)]
    assert cover(idx) < min(random_cover)
    with pytest.raises(ModelError):
        spread_frames(R, 0)


def test_conservative_forces_are_minus_the_energy_gradient(benzene):
    R, F, E, z, sym, fm, em = benzene
    x = R[100]
    # h = 1e-4 Å: benzene's long range (γ ≈ 128 1/Å) leaves the subset's weights near 1e14, so an
    # energy carries ~1e-9 kcal/mol of rounding and h = 1e-5 read 0.3% off; 1e-4 reads 2e-5 off
    g = _fd_gradient(lambda y: em.predict(y[None], return_std=False).mean[0], x, h=1e-4)
    f = em.forces(x[None])[0]
    np.testing.assert_allclose(-g, f, rtol=1e-3, atol=1e-3 * np.abs(f).max())


def test_energy_is_invariant_to_rigid_motion_and_the_group(benzene):
    R, F, E, z, sym, fm, em = benzene
    x = R[90:94]
    rot = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    moved = x @ rot.T + np.array([1.0, -2.0, 0.5])
    p0, p1 = em.predict(x), em.predict(moved)
    np.testing.assert_allclose(p1.mean, p0.mean, atol=1e-8)
    np.testing.assert_allclose(p1.std, p0.std, rtol=1e-8)
    np.testing.assert_allclose(em.forces(moved), em.forces(x) @ rot.T, atol=1e-4)  # rounding of 1e14 weights
    perm = sym.perms[3]
    np.testing.assert_allclose(em.predict(x[:, perm]).mean, p0.mean, atol=1e-8)
    np.testing.assert_allclose(em.forces(x[:, perm]), em.forces(x)[:, perm], atol=1e-4)


def test_real_uracil_energies_accurate_and_calibrated(uracil, binomial_band):
    R, F, E, z, train, test, fm, em = uracil
    p = em.predict(R[test])
    err = np.abs(p.mean - E[test])
    # M = 400 (250 in the subset, 80 random frames calibrate): measured MAE 0.08 kcal/mol, spread 4.2
    assert np.mean(err) < 0.06 * np.std(E[test]), np.mean(err)
    lo, hi = binomial_band(0.95, len(test))
    assert lo <= np.mean(err <= 1.96 * p.std) <= hi, np.mean(err <= 1.96 * p.std)
    # uncalibrated (s = 1) the same intervals read differently: the calibration did something
    assert em.scale != pytest.approx(1.0, abs=0.05)
    assert em.info["n_subset"] + em.info["n_held"] == len(train)
    assert set(em.info["subset_frames"]) <= set(train.tolist())


def test_model_file_round_trips_and_damage_is_reported(tmp_path, benzene):
    R, F, E, z, sym, fm, em = benzene
    data = model_bytes(fm, em)
    f2, e2 = load_model(data)
    assert isinstance(e2, SubsetEnergyModel) and e2.force_model.n_train == fm.n_train
    p0, p1 = em.predict(R[100:103]), e2.predict(R[100:103])
    np.testing.assert_allclose(p1.mean, p0.mean, rtol=1e-12)
    np.testing.assert_allclose(p1.std, p0.std, rtol=1e-9)
    path = tmp_path / "m.npz"
    em.save(path)
    with np.load(path) as d:
        arrays = {k: d[k] for k in d.files}
    arrays["params"] = np.array([-1.0, 1e-6, 0.0, 1.0, 1.0])
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ModelError, match="must be positive"):
        load_model(tmp_path / "bad.npz")
    del arrays["weights"]
    np.savez(tmp_path / "bad2.npz", **arrays)
    with pytest.raises(ModelError, match="missing keys"):
        load_model(tmp_path / "bad2.npz")


def test_too_few_frames_is_a_clear_error(benzene):
    R, F, E, z, sym, fm, em = benzene
    with pytest.raises(ModelError, match="at least 60 training frames"):
        fit_subset_energy(fm, R[:45], E[:45], F[:45])


def test_conservative_calculator_conserves_its_energy_in_nve(benzene):
    from ase import Atoms, units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from aff_app.calculator import AFFCalculator, CalculatorSetupError

    R, F, E, z, sym, fm, em = benzene
    atoms = Atoms(numbers=z, positions=R[100])
    atoms.calc = AFFCalculator(fm, em, conservative=True)
    kcal = units.kcal / units.mol  # eV per kcal/mol
    np.testing.assert_allclose(atoms.get_forces(), em.forces(R[100][None])[0] * kcal, rtol=1e-12)
    assert atoms.get_potential_energy() == pytest.approx(em.predict(R[100][None]).mean[0] * kcal, rel=1e-12)
    assert atoms.calc.get_forces_std(atoms).shape == (12, 3)  # the force model's sd, asked for
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    total = []
    dyn.attach(lambda: total.append(atoms.get_total_energy()), interval=10)
    dyn.run(200)
    drift = (np.max(total) - np.min(total)) / kcal
    kinetic = atoms.get_kinetic_energy() / kcal
    print(f"conservative NVE, 100 fs: total energy range {drift:.2e} kcal/mol, kinetic {kinetic:.2f}")
    # velocity Verlet at 0.5 fs keeps a conservative system's total energy to ~1e-3 of its kinetic energy
    assert drift < 1e-2 * kinetic
    with pytest.raises(CalculatorSetupError, match="conservative forces need an energy model"):
        AFFCalculator(fm, None, conservative=True)
