"""GFN2-xTB sample trajectories (aff_app.io.simulate) and the committed sample_data/ files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from aff_app.io import simulate
from aff_app.io.simulate import (
    CalculatorError,
    SimulationError,
    list_molecules,
    simulate_trajectory,
    write_sample,
)
from aff_app.io.trajectory import Trajectory
from aff_app.units import energy_factor

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"
# Atom counts of the molecules (C6H6, C4H4N2O2, C2H5OH, C9H8O4).
SAMPLE_ATOMS = {"benzene": 12, "uracil": 12, "ethanol": 9, "aspirin": 21}


@pytest.fixture(scope="module")
def benzene_short() -> Trajectory:
    return simulate_trajectory("benzene", steps=5, equilibration_steps=5, sample_every=2, seed=3)


def test_short_run_shapes_units_provenance(benzene_short):
    t = benzene_short
    assert isinstance(t, Trajectory)
    assert t.R.shape == (5, 12, 3) and t.E.shape == (5,) and t.F.shape == (5, 12, 3)
    assert sorted(t.z.tolist()) == [1] * 6 + [6] * 6
    assert t.name == "benzene"
    p = t.provenance
    assert p.source == "simulated:benzene"
    assert (p.energy_unit, p.length_unit, p.label_set) == ("eV", "Å", "GFN2-xTB")
    s = p.settings
    assert s["calculator"].startswith("GFN2-xTB (tblite ")
    assert (s["temperature_K"], s["timestep_fs"], s["steps"], s["sample_every"], s["equilibration_steps"], s["seed"]) == (
        300.0, 0.5, 5, 2, 5, 3,
    )
    assert s["start"] == "ase.build.molecule:C6H6"
    assert s["friction_per_fs"] > 0
    # Internal units: GFN2-xTB's benzene total energy is about -15.9 Hartree = -9.96e3 kcal/mol
    # (it would be -432 in eV); C-C bonds stay near 1.4 Å.
    assert np.all((t.E > -1.1e4) & (t.E < -0.9e4))
    d = np.linalg.norm(t.R[:, :, None] - t.R[:, None], axis=-1)
    cc = d[:, t.z == 6][:, :, t.z == 6]
    assert 1.3 < np.sort(cc, axis=-1)[:, :, 1].mean() < 1.5
    # Frames are consecutive MD states: they differ, but only slightly (1 fs apart).
    step = np.abs(np.diff(t.R, axis=0)).max()
    assert 0 < step < 0.1


def test_same_seed_repeats_other_seed_differs(benzene_short):
    again = simulate_trajectory("benzene", steps=5, equilibration_steps=5, sample_every=2, seed=3)
    np.testing.assert_allclose(again.R, benzene_short.R, rtol=0, atol=1e-9)
    np.testing.assert_allclose(again.F, benzene_short.F, rtol=0, atol=1e-7)
    other = simulate_trajectory("benzene", steps=5, equilibration_steps=5, sample_every=2, seed=4)
    assert np.abs(other.R - benzene_short.R).max() > 1e-4


def test_forces_are_minus_energy_gradient(benzene_short):
    """F (kcal/mol/Å) = -dE/dR by central differences of the tblite energy (eV → kcal/mol)."""
    t = benzene_short
    R0 = t.R[-1]
    atoms = Atoms(numbers=t.z, positions=R0)
    atoms.calc = simulate._make_calculator(0, 0)
    # h = 1e-3 Å: measured max error 1e-3 kcal/mol/Å (1e-2 Å: 0.08, O(h^2) truncation;
    # 1e-4 Å: 0.009, SCF noise), so 0.01 leaves a tenfold margin against |F| up to ~50.
    h = 1e-3
    grad = np.empty_like(R0)
    for a in range(len(atoms)):
        for k in range(3):
            e = []
            for sign in (1.0, -1.0):
                p = R0.copy()
                p[a, k] += sign * h
                atoms.positions = p
                e.append(atoms.get_potential_energy() * energy_factor("eV"))
            grad[a, k] = (e[0] - e[1]) / (2 * h)
    scale = np.abs(t.F[-1]).max()
    assert scale > 1.0  # thermal forces of several kcal/mol/Å: the check is not trivial
    np.testing.assert_allclose(t.F[-1], -grad, rtol=0, atol=0.01)


def test_smiles_start_and_progress():
    calls = []
    t = simulate_trajectory(smiles="O", steps=3, equilibration_steps=2, progress=lambda f, m: calls.append((f, m)))
    assert t.n_atoms == 3 and sorted(t.z.tolist()) == [1, 1, 8]
    assert t.name == "O" and t.provenance.source == "simulated:O"
    assert t.provenance.settings["start"] == "smiles:O"
    fr = [f for f, _ in calls]
    assert fr[0] == 0.0 and fr[-1] == 1.0 and fr == sorted(fr)
    assert all(isinstance(m, str) and m for _, m in calls)
    # O-H bonds of the relaxed, thermalised water stay near 0.96 Å
    oh = np.linalg.norm(t.R[:, t.z == 1] - t.R[:, t.z == 8], axis=-1)
    assert np.all((oh > 0.85) & (oh < 1.1))


def test_named_smiles_molecule_uses_table():
    t = simulate_trajectory("Uracil", steps=1, equilibration_steps=0)
    assert t.name == "uracil" and t.n_atoms == 12
    assert t.provenance.settings["start"] == "smiles:" + simulate.SMILES["uracil"]


def test_list_molecules():
    names = list_molecules()
    assert names == sorted(names)
    for n in ("benzene", "ethanol", "uracil", "aspirin", "naphthalene", "toluene", "malonaldehyde", "salicylic acid"):
        assert n in names


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(molecule="unobtainium", steps=5), "known names: "),
        (dict(smiles="C1CC(", steps=5), "invalid SMILES"),
        (dict(molecule="benzene", steps=20001), "20001"),
        (dict(molecule="benzene", steps=11, max_steps=10), "at most 10"),
        (dict(molecule="benzene", steps=0), "steps = 0"),
        (dict(molecule="benzene", steps=5, timestep_fs=10.0), "timestep_fs = 10.0"),
        (dict(molecule="benzene", steps=5, temperature_K=-1.0), "temperature_K = -1.0"),
        (dict(molecule="benzene", steps=5, sample_every=0), "sample_every = 0"),
        (dict(steps=5), "molecule name or a SMILES"),
    ],
)
def test_bad_inputs_raise_with_numbers(kwargs, fragment):
    with pytest.raises(SimulationError, match=None) as info:
        simulate_trajectory(**kwargs)
    assert fragment in str(info.value)
    if "known names" in fragment:
        assert "benzene" in str(info.value) and "aspirin" in str(info.value)


def test_calculator_failure_becomes_calculator_error(monkeypatch):
    from ase.calculators.calculator import CalculationFailed, Calculator

    class Broken(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=None, system_changes=None):
            raise CalculationFailed("SCF not converged in 250 cycles")

    monkeypatch.setattr(simulate, "_make_calculator", lambda charge, unpaired: Broken())
    with pytest.raises(CalculatorError, match="SCF not converged") as info:
        simulate_trajectory("water", steps=2, equilibration_steps=0)
    assert isinstance(info.value, SimulationError)


def test_write_sample_roundtrip(tmp_path, benzene_short):
    path = write_sample(benzene_short, tmp_path / "b")
    assert path.name == "b.npz"
    with np.load(path, allow_pickle=False) as d:
        assert str(d["type"]) == "d" and str(d["r_unit"]) == "Ang" and str(d["e_unit"]) == "kcal/mol"
        assert str(d["name"]) == "benzene" and "GFN2-xTB" in str(d["theory"]) and str(d["label_set"]) == "GFN2-xTB"
        np.testing.assert_array_equal(d["R"], benzene_short.R)
        np.testing.assert_array_equal(d["F"], benzene_short.F)
        np.testing.assert_array_equal(d["E"], benzene_short.E[:, None])
        np.testing.assert_array_equal(d["z"], benzene_short.z)
        s = json.loads(str(d["settings"]))
    assert s["temperature_K"] == 300.0 and s["seed"] == 3 and s["source"] == "simulated:benzene"
    assert s["original_units"] == {"energy": "eV", "length": "Å"}


@pytest.mark.parametrize("stem", sorted(SAMPLE_ATOMS))
def test_committed_samples(stem):
    path = SAMPLE_DIR / f"{stem}.npz"
    assert path.is_file(), f"{path} missing: run `OMP_NUM_THREADS=1 python scripts/make_samples.py --only {stem}`"
    with np.load(path, allow_pickle=False) as d:
        z, R, E, F = d["z"], d["R"], d["E"], d["F"]
        s = json.loads(str(d["settings"]))
        assert str(d["r_unit"]) == "Ang" and str(d["e_unit"]) == "kcal/mol"
        md5 = hashlib.md5()
        for arr in (z, R, E, F):
            md5.update(hashlib.md5(arr.ravel()).digest())
        assert md5.hexdigest() == str(d["md5"])
    n = SAMPLE_ATOMS[stem]
    m = R.shape[0]
    assert z.shape == (n,) and R.shape == (m, n, 3) and F.shape == (m, n, 3) and E.shape == (m, 1)
    assert m >= 1000 and m == s["steps"]
    assert s["temperature_K"] == 300.0 and s["timestep_fs"] == 0.5 and s["label_set"] == "GFN2-xTB"
    assert s["source"] == f"simulated:{stem}"
    assert np.all(np.isfinite(R)) and np.all(np.isfinite(E)) and np.all(np.isfinite(F))
    # Thermostatted: mean kinetic temperature within 10% of 300 K over the recorded frames.
    # (~60 independent 100-fs windows in 6 ps: the mean's spread is ~3% for 3N >= 27 momenta.)
    assert abs(s["diagnostics"]["mean_kinetic_temperature_K"] - 300.0) < 30.0
    # ... and the light atoms are not overheated (ase's fixcm=True put benzene's H at ~400 K).
    assert abs(s["diagnostics"]["mean_kinetic_temperature_by_element_K"]["H"] - 300.0) < 45.0
    # Nothing flew off: every atom keeps a neighbour within 1.6 Å (bonds to H ~1.1 Å, C-C ~1.5 Å)
    # and the molecule stays small (aspirin spans < 9 Å).
    d = np.linalg.norm(R[:, :, None] - R[:, None], axis=-1)
    d[:, np.arange(n), np.arange(n)] = np.inf
    assert d.min(axis=-1).max() < 1.6
    assert d[np.isfinite(d)].max() < 10.0
    # Forces are thermal: mean |F| of tens of kcal/mol/Å at most; energies fluctuate by O(N k T).
    assert 1.0 < np.linalg.norm(F, axis=-1).mean() < 60.0
    assert 0.5 * n * 0.596 < np.ptp(E) < 40 * n * 0.596  # kT = 0.596 kcal/mol at 300 K
