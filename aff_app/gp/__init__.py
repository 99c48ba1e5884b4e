"""Fitted models: force GPs (AFF, GDML, sGDML) and the energy GP."""

from aff_app.gp.force import (
    MODES,
    FactorizationError,
    ForceModel,
    ForcePrediction,
    ModelError,
    fit_force_model,
    select_training_frames,
)
from aff_app.gp.energy import (
    EnergyModel,
    EnergyPrediction,
    IntegratedEnergyModel,
    fit_energy_model,
    fit_integrated_energy,
)

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
]
