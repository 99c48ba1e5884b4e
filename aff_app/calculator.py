"""An ASE calculator backed by a trained force model (and optionally an energy model).

ASE works in eV and Å; the models work in kcal/mol and Å (``aff_app.units``).
The calculator converts at this edge and nowhere else::

    from aff_app.calculator import AFFCalculator
    from aff_app.gp.persistence import load_model

    atoms.calc = AFFCalculator(*load_model("uracil_aff.npz"))   # force model, energy model (or None)
    atoms.get_forces()                                  # eV/Å, posterior mean
    atoms.calc.get_property("forces_std", atoms)        # eV/Å, latent posterior sd

Results: ``forces`` (N, 3) eV/Å; ``forces_std`` (N, 3) eV/Å; with an energy
model also ``energy`` (eV) and, when the energy model reports one,
``energy_std`` (eV). Each is computed when asked for (an MD step asks for forces
only, so it pays for no sd). ``conservative=True`` takes the forces as −∇ of the
energy model (method.md "AFF's energy", eq. 22): one energy, so NVE conserves it;
their sd stays the force model's. The models know isolated molecules only: periodic
``Atoms`` are refused, and so are atoms other than the model's, in its order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from aff_app.errors import AFFError
from aff_app import units
from aff_app.workflows.training import AtomsMismatchError, check_atoms_match

__all__ = ["AFFCalculator", "AtomsMismatchError", "CalculatorSetupError", "PeriodicSystemError"]

#: kcal/mol/Å → eV/Å and kcal/mol → eV.
_FORCE_TO_ASE = units.force_factor(units.ENERGY_UNIT, units.LENGTH_UNIT, "eV", "Å")
_ENERGY_TO_ASE = units.energy_factor(units.ENERGY_UNIT, "eV")


class PeriodicSystemError(AFFError, ValueError):
    """Periodic ``Atoms`` given to a model of an isolated molecule."""


class CalculatorSetupError(AFFError, ValueError):
    """A calculator asked for what its models cannot give (conservative forces without an energy model)."""


class AFFCalculator(Calculator):
    """ASE calculator predicting forces (and energies) with aff_app models.

    Parameters
    ----------
    force_model : aff_app.gp.force.ForceModel
        Any object with ``z`` (N,) and ``predict(R) -> ForcePrediction`` whose
        ``mean``/``std`` are (B, N, 3) arrays in kcal/mol/Å.
    energy_model : object, optional
        Any object with ``predict(R, forces=F)`` returning an object with
        ``mean`` (B,) in kcal/mol (and optionally ``std``); ``R`` (B, N, 3) Å,
        ``F`` the force model's predicted mean (B, N, 3) kcal/mol/Å, as
        method.md "Energy prediction" conditions on F̂(x*).
    conservative : bool
        Forces from ``energy_model.forces(R)`` (−∇Ê, kcal/mol/Å) instead of the
        force model's mean (needs an energy model with ``forces``, e.g.
        :class:`aff_app.gp.aff_energy.SubsetEnergyModel`).
    **kwargs
        Passed to :class:`ase.calculators.calculator.Calculator`.

    Attributes
    ----------
    implemented_properties : list of str
        ``['forces', 'forces_std']`` plus ``'energy'`` (and ``'energy_std'``)
        with an energy model.
    """

    implemented_properties = ["forces", "forces_std"]

    def __init__(self, force_model: Any, energy_model: Any = None, *, conservative: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not hasattr(force_model, "predict") or not hasattr(force_model, "z"):
            raise TypeError(f"force_model must have z and predict(R); got {type(force_model).__name__}")
        if energy_model is not None and not hasattr(energy_model, "predict"):
            raise TypeError(f"energy_model must have predict(R, forces=...); got {type(energy_model).__name__}")
        if conservative and not hasattr(energy_model, "forces"):
            raise CalculatorSetupError(
                "conservative forces need an energy model with forces(R) (AFF's integrated energy); "
                f"got {'no energy model' if energy_model is None else type(energy_model).__name__}"
            )
        self.force_model = force_model
        self.energy_model = energy_model
        self.conservative = bool(conservative)
        # per instance: which properties exist depends on the models given
        self.implemented_properties = list(AFFCalculator.implemented_properties)
        if not getattr(force_model, "has_interval", True):  # the peers predict means only
            self.implemented_properties.remove("forces_std")
        if energy_model is not None:
            self.implemented_properties += ["energy"]
            if getattr(energy_model, "has_interval", True):  # the package's energy has none
                self.implemented_properties += ["energy_std"]

    def check_atoms(self, atoms) -> None:
        """Raise unless ``atoms`` is the model's molecule (same elements, same order) and not periodic."""
        check_atoms_match(self.force_model.z, atoms.get_atomic_numbers(), what="the Atoms object")
        if np.any(atoms.pbc):
            raise PeriodicSystemError(
                f"the model describes an isolated molecule but the Atoms object is periodic (pbc={atoms.pbc.tolist()}): "
                "set atoms.pbc = False"
            )

    def check_state(self, atoms, tol: float = 1e-15) -> list:
        """What changed since the last calculation: ASE's check with exact comparisons.

        ASE's ``compare_atoms`` runs ``np.allclose`` (tolerance 1e-15) on every array, several
        times per MD step: ~0.3 ms of a benzene step whose forces take 0.4 ms. Exact equality
        differs only for moves below 1e-15 Å, which then recompute.
        """
        old = self.atoms
        if old is None:
            return list(all_changes)
        changes = [p for p in ("cell", "pbc") if not np.array_equal(getattr(old, p), getattr(atoms, p))]
        watched = set(all_changes)
        a1, a2 = old.arrays, atoms.arrays
        changes += sorted(watched & (set(a1) ^ set(a2)))
        changes += [p for p in sorted(watched & set(a1) & set(a2)) if not np.array_equal(a1[p], a2[p])]
        return changes

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self.check_atoms(self.atoms)
        R = self.atoms.get_positions()[None]  # (1, N, 3); ASE lengths are Å, as the models'
        wanted = set(properties)
        # ASE keeps results until the atoms move, and calls again for a property it lacks: compute what is asked
        if self.conservative and "forces" in wanted:
            self.results["forces"] = np.asarray(self.energy_model.forces(R)[0]) * _FORCE_TO_ASE
        energy_wanted = self.energy_model is not None and bool({"energy", "energy_std"} & wanted)
        # the energy GP (kind 'gp', and any model without a kind) conditions on the predicted forces at x*;
        # the integrated energies depend on the positions alone
        energy_needs_forces = energy_wanted and getattr(self.energy_model, "kind", "gp") == "gp"
        need_force_pred = ("forces_std" in wanted or (not self.conservative and "forces" in wanted)
                           or energy_needs_forces)
        mean = None
        if need_force_pred:
            if "forces_std" in wanted:
                pred = self.force_model.predict(R, return_std=True)
                mean = pred.mean
                self.results["forces_std"] = np.asarray(pred.std[0]) * _FORCE_TO_ASE
            elif hasattr(self.force_model, "predict_mean"):  # the GPs' fast mean (eq. 26): an MD step's forces
                mean = self.force_model.predict_mean(R)
            else:
                mean = self.force_model.predict(R, return_std=False).mean
            if not self.conservative:
                self.results["forces"] = np.asarray(mean[0]) * _FORCE_TO_ASE
        if energy_wanted:
            # the integrated energies skip their sd (a triangular solve) unless it is asked for
            extra = {} if getattr(self.energy_model, "kind", "gp") == "gp" else {"return_std": "energy_std" in wanted}
            epred = self.energy_model.predict(R, forces=mean, **extra)
            self.results["energy"] = float(np.reshape(epred.mean, -1)[0]) * _ENERGY_TO_ASE
            std = getattr(epred, "std", None)
            if std is not None and np.all(np.isfinite(std)):
                self.results["energy_std"] = float(np.reshape(std, -1)[0]) * _ENERGY_TO_ASE

    def get_forces_std(self, atoms=None) -> np.ndarray:
        """Posterior standard deviation of the forces, (N, 3) eV/Å."""
        return self.get_property("forces_std", atoms)
