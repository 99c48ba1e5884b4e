"""Fitted models: force GPs (AFF, GDML, sGDML) and the energy GP."""

from .force import (
    MODES,
    FactorizationError,
    ForceModel,
    ForcePrediction,
    ModelError,
    fit_force_model,
    select_training_frames,
)

__all__ = [
    "MODES",
    "FactorizationError",
    "ForceModel",
    "ForcePrediction",
    "ModelError",
    "fit_force_model",
    "select_training_frames",
]
