"""A trained model as the force field(s) it defines: what the conservation check and MD call.

:func:`force_fields` turns a force model and its energy model into one or two
:class:`ForceField` records, each a pair of plain callables (forces, and the energy
when the forces are its negative gradient):

* AFF — its force GP's mean, which is *not* the gradient of any energy (one GP per PE
  set, method.md "AFF force model"): forces only; and, when it has AFF's integrated
  energy, the **conservative AFF** field F = −∇Ê of that energy (method.md "AFF's energy");
* GDML/sGDML — the force GP's mean with the energy it integrates to (method.md "Modes
  that fall out of the same code"): the mean is exactly −∇ of that energy;
* the sgdml package — its forces and energies (its forces are −∇E by construction);
* the DCF-style network — forces only (no energy derivative).

Units: Å in, kcal/mol/Å and kcal/mol out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from aff_app.gp.integrated import IntegratedEnergyModel
from aff_app.gp.aff_energy import SubsetEnergyModel
from aff_app.peers.package_model import PackageModel
from aff_app.workflows.kinds import MODE_LABELS

__all__ = ["ForceField", "force_fields", "label_of"]

ForceFn = Callable[[np.ndarray], np.ndarray]
EnergyFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ForceField:
    """One force field of a model.

    Attributes
    ----------
    name : str
        How tables and legends name it ("AFF M=200", "AFF M=200 (conservative)").
    forces : callable, (B, N, 3) Å → (B, N, 3) kcal/mol/Å
    energy : callable, (B, N, 3) Å → (B,) kcal/mol, or None
        Given only when ``forces`` is its negative gradient.
    z : ndarray, shape (N,)
    """

    name: str
    forces: ForceFn
    energy: EnergyFn | None
    z: np.ndarray

    @property
    def conservative_by_construction(self) -> bool:
        return self.energy is not None


def _means(model) -> ForceFn:
    return lambda R: model.predict(np.asarray(R, dtype=np.float64), return_std=False).mean


def force_fields(name: str, force, energy=None, *, conservative: bool = True) -> list[ForceField]:
    """The force field(s) of a model (see the module docstring); ``conservative=False`` leaves out AFF's −∇Ê."""
    z = np.asarray(force.z)
    if isinstance(force, PackageModel):
        return [ForceField(name, lambda R: force.predict_both(R)[1], lambda R: force.predict_both(R)[0], z)]
    if force.mode == "dcf":
        return [ForceField(name, _means(force), None, z)]
    if force.mode in ("gdml", "sgdml"):
        e = energy.predict if isinstance(energy, IntegratedEnergyModel) else None
        return [ForceField(name, _means(force), None if e is None else (lambda R: e(R, return_std=False).mean), z)]
    out = [ForceField(name, _means(force), None, z)]
    if conservative and isinstance(energy, SubsetEnergyModel):
        out.append(ForceField(f"{name} (conservative)", lambda R: energy.forces(np.asarray(R, dtype=np.float64)),
                              lambda R: energy.predict(np.asarray(R, dtype=np.float64), return_std=False).mean, z))
    return out


def label_of(force) -> str:
    return MODE_LABELS.get(force.mode, force.mode)
