"""Unit conversions against published constants (CODATA), not against ase.units itself.

Reference values: CODATA 2018 (NIST): 1 Hartree = 27.211386245988 eV = 627.5094740631 kcal/mol,
Bohr radius a0 = 0.529177210903 Å, 1 eV = 23.060547830619 kcal/mol (exact thermochemical
calorie, 4.184 J). ASE 3.26 uses CODATA 2014 by default, which agrees to < 1e-7 relative.
"""

from __future__ import annotations

import pytest

from aff_app import units

REL = 1e-6  # CODATA 2014 vs 2018 differ far below this


def test_hartree_to_kcal_per_mol():
    assert units.energy_factor("Hartree", "kcal/mol") == pytest.approx(627.5094740631, rel=REL)


def test_ev_to_kcal_per_mol_and_back():
    f = units.energy_factor("eV", "kcal/mol")
    assert f == pytest.approx(23.060547830619, rel=REL)
    assert units.energy_factor("kcal/mol", "eV") * f == pytest.approx(1.0, rel=1e-15)


def test_kj_per_mol_is_kcal_over_4184():
    # thermochemical calorie: 1 kcal = 4.184 kJ exactly
    assert units.energy_factor("kcal/mol", "kJ/mol") == pytest.approx(4.184, rel=1e-12)


def test_bohr_to_angstrom():
    assert units.length_factor("bohr", "Å") == pytest.approx(0.529177210903, rel=REL)
    assert units.length_factor("Å", "bohr") == pytest.approx(1 / 0.529177210903, rel=REL)


def test_force_factor_hartree_per_bohr():
    # 1 Ha/a0 = 627.509 kcal/mol / 0.529177 Å = 1185.82 kcal/mol/Å
    expected = 627.5094740631 / 0.529177210903
    assert units.force_factor("Hartree", "bohr") == pytest.approx(expected, rel=REL)
    assert units.force_factor("eV", "Å", "kcal/mol", "Å") == pytest.approx(23.060547830619, rel=REL)


def test_identity_factors_are_exactly_one():
    assert units.energy_factor("kcal/mol") == 1.0
    assert units.length_factor("Å") == 1.0
    assert units.force_factor("kcal/mol", "Å") == 1.0


@pytest.mark.parametrize(
    "alias, canonical",
    [("ev", "eV"), ("EV", "eV"), ("kcal mol-1", "kcal/mol"), ("Ha", "Hartree"), ("hartree", "Hartree"), ("kj/mol", "kJ/mol")],
)
def test_energy_aliases(alias, canonical):
    assert units.canonical_energy_unit(alias) == canonical


@pytest.mark.parametrize("alias, canonical", [("Ang", "Å"), ("angstrom", "Å"), ("A", "Å"), ("Bohr", "bohr"), ("a0", "bohr")])
def test_length_aliases(alias, canonical):
    assert units.canonical_length_unit(alias) == canonical


def test_unknown_units_raise_with_the_supported_list():
    with pytest.raises(units.UnitError, match="supported: eV, kcal/mol"):
        units.energy_factor("furlong")
    with pytest.raises(units.UnitError, match="unknown length unit 'nm'"):
        units.length_factor("nm")
    assert issubclass(units.UnitError, ValueError)


def test_force_unit_label():
    assert units.force_unit_label() == "kcal/mol/Å"
    assert units.force_unit_label("ev", "ang") == "eV/Å"
