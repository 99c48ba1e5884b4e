"""The internal unit system and conversions to and from it.

Inside aff_app every energy is in kcal/mol, every length in Å and every force
in kcal/mol/Å (the units of MD17/sGDML files, in which the paper's Table I is
reported). Loaders convert *into* these units and writers convert *out of*
them; nothing else in the library converts. Factors come from ``ase.units``.
"""

from __future__ import annotations

from ase import units as _u

from aff_app.errors import AFFError

#: Internal energy unit (label shown next to every energy).
ENERGY_UNIT = "kcal/mol"
#: Internal length unit.
LENGTH_UNIT = "Å"
#: Internal force unit.
FORCE_UNIT = "kcal/mol/Å"

# Size of one unit in eV (ase.units expresses everything in eV and Å).
_ENERGY_IN_EV = {
    "eV": 1.0,
    "kcal/mol": _u.kcal / _u.mol,
    "kJ/mol": _u.kJ / _u.mol,
    "Hartree": _u.Hartree,
}
_LENGTH_IN_ANGSTROM = {
    "Å": 1.0,
    "bohr": _u.Bohr,
}
_ALIASES = {
    # energy
    "ev": "eV", "kcal/mol": "kcal/mol", "kcal mol-1": "kcal/mol", "kcal": "kcal/mol",
    "kj/mol": "kJ/mol", "kj mol-1": "kJ/mol", "hartree": "Hartree", "ha": "Hartree", "eh": "Hartree",
    "au": "Hartree",
    # length
    "å": "Å", "a": "Å", "ang": "Å", "angstrom": "Å", "ångström": "Å", "bohr": "bohr", "a0": "bohr",
}

ENERGY_UNITS = tuple(_ENERGY_IN_EV)
#: Boltzmann's constant in kcal/mol/K.
BOLTZMANN = _u.kB / _ENERGY_IN_EV["kcal/mol"]
LENGTH_UNITS = tuple(_LENGTH_IN_ANGSTROM)


class UnitError(AFFError, ValueError):
    """An unknown or unsupported unit name."""


def canonical_energy_unit(name: str) -> str:
    """Return the canonical spelling of an energy unit (e.g. ``'ev'`` → ``'eV'``)."""
    key = _ALIASES.get(str(name).strip().lower(), str(name).strip())
    if key not in _ENERGY_IN_EV:
        raise UnitError(f"unknown energy unit {name!r}; supported: {', '.join(ENERGY_UNITS)}")
    return key


def canonical_length_unit(name: str) -> str:
    """Return the canonical spelling of a length unit (e.g. ``'Ang'`` → ``'Å'``)."""
    key = _ALIASES.get(str(name).strip().lower(), str(name).strip())
    if key not in _LENGTH_IN_ANGSTROM:
        raise UnitError(f"unknown length unit {name!r}; supported: {', '.join(LENGTH_UNITS)}")
    return key


def energy_factor(from_unit: str, to_unit: str = ENERGY_UNIT) -> float:
    """Multiply an energy in ``from_unit`` by this to get it in ``to_unit``."""
    return _ENERGY_IN_EV[canonical_energy_unit(from_unit)] / _ENERGY_IN_EV[canonical_energy_unit(to_unit)]


def length_factor(from_unit: str, to_unit: str = LENGTH_UNIT) -> float:
    """Multiply a length in ``from_unit`` by this to get it in ``to_unit``."""
    return _LENGTH_IN_ANGSTROM[canonical_length_unit(from_unit)] / _LENGTH_IN_ANGSTROM[canonical_length_unit(to_unit)]


def force_factor(energy_from: str, length_from: str, energy_to: str = ENERGY_UNIT, length_to: str = LENGTH_UNIT) -> float:
    """Multiply a force in ``energy_from/length_from`` by this to get ``energy_to/length_to``."""
    return energy_factor(energy_from, energy_to) / length_factor(length_from, length_to)


def force_unit_label(energy_unit: str = ENERGY_UNIT, length_unit: str = LENGTH_UNIT) -> str:
    """Label such as ``'kcal/mol/Å'`` for a force unit."""
    return f"{canonical_energy_unit(energy_unit)}/{canonical_length_unit(length_unit)}"
