"""The method (method.md): descriptors, kernels, hyperparameter search, the force and energy GPs, model files.

One folder, as scikit-learn's ``gaussian_process``: ``descriptors`` (inverse
distances), ``kernels`` (Matérn 5/2 value and derivative blocks), ``hyper``
(profile likelihood / cross-validation search), ``force`` (AFF, GDML, sGDML),
``energy`` (the energy GP), ``integrated`` (the GDML recipe's energy), ``aff_energy`` (AFF's energy),
``record`` (the typed fit record), ``persistence`` (the one model file),
``budget`` (memory and time before a fit), ``covariance`` (the Fig. 1 views).
"""

from aff_app.gp.force import (
    MODES,
    FactorizationError,
    ForceModel,
    ForcePrediction,
    ModelError,
    fit_force_model,
    select_training_frames,
)
from aff_app.gp.energy import EnergyModel, EnergyPrediction, fit_energy_model
from aff_app.gp.integrated import IntegratedEnergyModel, fit_integrated_energy, set_energies
from aff_app.gp.aff_energy import SubsetEnergyModel, fit_subset_energy, spread_frames

__all__ = [
    "MODES",
    "FactorizationError",
    "ForceModel",
    "ForcePrediction",
    "ModelError",
    "fit_force_model",
    "select_training_frames",
    "EnergyModel",
    "EnergyPrediction",
    "IntegratedEnergyModel",
    "fit_energy_model",
    "fit_integrated_energy",
    "set_energies",
    "SubsetEnergyModel",
    "fit_subset_energy",
    "spread_frames",
]
