"""The ASE calculator: units at the edge, equivariance, atom checks, and a short MD run."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms, units as ase_units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from scipy.spatial.transform import Rotation

from aff_app.calculator import AFFCalculator, AtomsMismatchError, PeriodicSystemError
from aff_app.io.files import load_trajectory
from aff_app.workflows.pipeline import train_model

KCAL_MOL_IN_EV = ase_units.kcal / ase_units.mol  # 1 kcal/mol in eV (≈ 0.04336)


@pytest.fixture(scope="module")
def uracil(shared_data):
    return load_trajectory(shared_data / "uracil.npz", frames=":600")


@pytest.fixture(scope="module")
def model(uracil):
    return train_model(uracil, model="aff", n_train=30, seed=0, gamma=4.5, lam=1e-8)


def _atoms(traj, i):
    return Atoms(numbers=traj.z, positions=traj.R[i])


class _LinearEnergyModel:
    """A stand-in energy model with the interface the calculator expects: predict(R, forces=F).mean.

    Its 'energy' (kcal/mol) is a fixed linear function of the positions and of the forces it is given,
    so the test can check that the calculator passes the force model's kcal/mol/Å prediction through.
    """

    def __init__(self, n_atoms):
        rng = np.random.default_rng(0)
        self.a = rng.normal(size=(n_atoms, 3))
        self.b = rng.normal(size=(n_atoms, 3))
        self.calls = []

    def predict(self, R, *, forces):
        self.calls.append((np.array(R), np.array(forces)))
        mean = np.einsum("bnc,nc->b", R, self.a) + np.einsum("bnc,nc->b", forces, self.b)
        return SimpleNamespace(mean=mean, std=np.full(mean.shape, 0.5))


def test_forces_are_the_model_prediction_in_ev_per_angstrom(uracil, model):
    atoms = _atoms(uracil, 500)
    atoms.calc = AFFCalculator(model)
    pred = model.predict(uracil.R[500])
    forces = atoms.get_forces()
    # an MD step's forces come from the fast mean (eq. 26): the same sum in another order
    scale = np.abs(pred.mean).max() * KCAL_MOL_IN_EV
    np.testing.assert_allclose(forces, pred.mean[0] * KCAL_MOL_IN_EV, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(atoms.calc.get_forces_std(atoms), pred.std[0] * KCAL_MOL_IN_EV, rtol=1e-12)
    # and they are good forces: compare with the (rMD17) reference converted to eV/Å
    ref = uracil.F[500] * KCAL_MOL_IN_EV
    assert np.mean(np.abs(forces - ref)) < 0.2 * np.std(ref)
    assert "energy" not in atoms.calc.implemented_properties
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_potential_energy()


def test_forces_rotate_with_the_molecule(uracil, model):
    atoms = _atoms(uracil, 450)
    atoms.calc = AFFCalculator(model)
    f0 = atoms.get_forces()
    rot = Rotation.from_euler("zyx", [40, -25, 70], degrees=True).as_matrix()
    center = atoms.get_center_of_mass()
    turned = atoms.copy()
    turned.positions = (atoms.positions - center) @ rot.T + center + np.array([1.0, -2.0, 0.5])
    turned.calc = AFFCalculator(model)
    np.testing.assert_allclose(turned.get_forces(), f0 @ rot.T, atol=1e-9)
    # per atom, the summed variance (trace of its 3x3 posterior covariance) does not depend on the orientation
    var0 = np.sum(atoms.calc.get_forces_std(atoms) ** 2, axis=1)
    var1 = np.sum(turned.calc.get_forces_std(turned) ** 2, axis=1)
    assert np.all(var0 > 0)
    np.testing.assert_allclose(var1, var0, rtol=1e-6)


def test_mismatched_or_periodic_atoms_are_refused(uracil, model, shared_data):
    benzene = load_trajectory(shared_data / "benzene.npz", frames=":1")
    calc = AFFCalculator(model)
    wrong = Atoms(numbers=benzene.z, positions=benzene.R[0], calculator=calc)
    with pytest.raises(AtomsMismatchError, match=r"C4H4N2O2 \(12 atoms\).*C6H6"):
        wrong.get_forces()
    fewer = Atoms(numbers=uracil.z[:-1], positions=uracil.R[0, :-1], calculator=AFFCalculator(model))
    with pytest.raises(AtomsMismatchError, match="11 atoms"):
        fewer.get_forces()
    boxed = _atoms(uracil, 0)
    boxed.cell = [20, 20, 20]
    boxed.pbc = True
    boxed.calc = AFFCalculator(model)
    with pytest.raises(PeriodicSystemError, match="isolated molecule"):
        boxed.get_forces()


def test_energy_model_is_called_with_the_predicted_forces_and_converted(uracil, model):
    emodel = _LinearEnergyModel(uracil.n_atoms)
    atoms = _atoms(uracil, 300)
    atoms.calc = AFFCalculator(model, energy_model=emodel)
    assert {"energy", "forces", "forces_std"} <= set(atoms.calc.implemented_properties)
    energy = atoms.get_potential_energy()
    R, F = emodel.calls[-1]
    np.testing.assert_allclose(R[0], uracil.R[300])
    np.testing.assert_allclose(F, model.predict(uracil.R[300]).mean)  # kcal/mol/Å, as the models use
    expected_kcal = float(np.sum(uracil.R[300] * emodel.a) + np.sum(F[0] * emodel.b))
    assert energy == pytest.approx(expected_kcal * KCAL_MOL_IN_EV, rel=1e-12)
    assert atoms.calc.get_property("energy_std", atoms) == pytest.approx(0.5 * KCAL_MOL_IN_EV)
    n_calls = len(emodel.calls)
    atoms.get_forces()  # cached: same positions, no new prediction
    assert len(emodel.calls) == n_calls


def test_short_velocity_verlet_run(uracil, model):
    atoms = _atoms(uracil, 100)
    atoms.calc = AFFCalculator(model)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    start = atoms.get_positions()
    dyn = VelocityVerlet(atoms, timestep=0.5 * ase_units.fs)
    dyn.run(5)
    assert dyn.nsteps == 5
    moved = np.linalg.norm(atoms.get_positions() - start, axis=1)
    assert np.all(np.isfinite(atoms.get_positions())) and 0 < moved.max() < 0.2
    # the molecule stays intact: bonded distances change by far less than a bond length
    d0 = np.linalg.norm(start[:, None] - start[None], axis=-1)
    d1 = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    assert np.max(np.abs(d1 - d0)) < 0.2


def test_an_md_step_asks_for_forces_only(uracil, model):
    """ASE asks for one property at a time: forces alone must not pay for their sd (a triangular solve per set)."""
    calls = []

    class Counting:
        z = model.z

        def predict(self, R, *, return_std=True):
            calls.append(return_std)
            return model.predict(R, return_std=return_std)

    atoms = _atoms(uracil, 200)
    atoms.calc = AFFCalculator(Counting())
    forces = atoms.get_forces()
    assert calls == [False]
    np.testing.assert_allclose(forces, model.predict(uracil.R[200]).mean[0] * KCAL_MOL_IN_EV, rtol=1e-12)
    std = atoms.calc.get_forces_std(atoms)  # asked for: computed now, forces unchanged
    assert calls == [False, True] and std.shape == (uracil.n_atoms, 3)
    np.testing.assert_allclose(atoms.get_forces(), forces, rtol=0, atol=0)
    atoms.positions[0, 0] += 0.01  # moved: the results are stale and recomputed, forces only
    atoms.get_forces()
    assert calls == [False, True, False]
