"""The one model file: a force model, with or without its energy model, as ``.npz`` of plain arrays.

Written by the Train page's download, ``python -m aff_app train`` and
:func:`aff_app.workflows.pipeline.save`; read back by the page's upload, every
CLI command that takes a MODEL, and :func:`aff_app.workflows.pipeline.load`.
All of them go through :func:`save_model` and :func:`load_model`, so a file
written by one is read by every other.

Layout (the ``format`` array tells which):

* ``aff_app.ForceModel/1`` — the force model alone (``ForceModel.save``);
* ``aff_app.EnergyModel/1`` — the energy GP, with its force model's arrays
  under keys ``force__*``;
* ``aff_app.IntegratedEnergyModel/1`` — the integrated force GP (GDML/sGDML),
  with its force model likewise;
* ``aff_app.SubsetEnergyModel/1`` — AFF's integrated energy (``aff_app.gp.aff_energy``): the AFF
  force model under ``force__*``, the subset's integrated model under ``integrated__*``;
* ``aff_app.SGDMLPackageModel/1`` — a model trained by the sgdml package (``aff_app.peers.package_model``):
  its forces and energies, the package's own arrays under ``package__*``;
* ``aff_app.DCFModel/1`` — the DCF-style direct-force network (``aff_app.dcf``): forces only.

Pickled (object) arrays are refused, never executed. Every damaged or foreign
file raises :class:`~aff_app.gp.force.ModelError` with the reason.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

from aff_app.gp.energy import ENERGY_FORMAT, INTEGRATED_FORMAT, EnergyModel
from aff_app.gp.integrated import IntegratedEnergyModel
from aff_app.gp.aff_energy import SUBSET_FORMAT, SubsetEnergyModel
from aff_app.gp.force import FORCE_FORMAT, ForceModel, ModelError, read_model_npz
from aff_app.dcf import DCF_FORMAT, DCFModel
from aff_app.peers.package_model import PACKAGE_FORMAT, PackageEnergy, PackageModel

__all__ = ["save_model", "model_bytes", "load_model", "read_arrays", "FORMATS", "EnergyModelType", "ENERGY_MODEL_CLASSES",
           "ForceModelType", "FORCE_MODEL_CLASSES"]

#: Every format tag a model file may carry.
FORMATS = (FORCE_FORMAT, ENERGY_FORMAT, INTEGRATED_FORMAT, SUBSET_FORMAT, PACKAGE_FORMAT, DCF_FORMAT)

#: Every energy model class; each has ``kind``, ``label``, ``force_model``, ``n_atoms`` and ``predict(R, forces=...)``.
ENERGY_MODEL_CLASSES = (EnergyModel, IntegratedEnergyModel, SubsetEnergyModel, PackageEnergy)
EnergyModelType = EnergyModel | IntegratedEnergyModel | SubsetEnergyModel | PackageEnergy
#: Every force model class; each has ``mode``, ``z``, ``n_train``, ``record``, ``has_interval`` and
#: ``predict(R, return_std=...)`` returning a ``ForcePrediction`` (``std`` None without an interval).
FORCE_MODEL_CLASSES = (ForceModel, PackageModel, DCFModel)
ForceModelType = ForceModel | PackageModel | DCFModel


def save_model(target: str | os.PathLike | BinaryIO, force: ForceModelType,
               energy: EnergyModelType | None = None) -> None:
    """Write ``force`` (and ``energy``, which embeds it) to a path or a binary file object."""
    if energy is not None and energy.force_model is not force:
        raise ModelError("the energy model was fitted on another force model: save them separately")
    (energy if energy is not None else force).save(target)


def model_bytes(force: ForceModelType, energy: EnergyModelType | None = None) -> bytes:
    """:func:`save_model` into memory (the app's download)."""
    buf = io.BytesIO()
    save_model(buf, force, energy)
    return buf.getvalue()


def read_arrays(source: str | os.PathLike | bytes | bytearray, *, where: str | None = None) -> dict:
    """The arrays of a model file (a path or its bytes); damage and pickles raise :class:`ModelError`.

    A path that does not exist raises ``FileNotFoundError``.
    """
    if isinstance(source, (bytes, bytearray)):
        where = where or "uploaded file"
        if len(source) == 0:
            raise ModelError(f"{where}: the file is empty")
        try:
            return read_model_npz(io.BytesIO(bytes(source)))
        except ModelError as exc:  # name the upload, not the in-memory buffer
            raise ModelError(f"{where}: not an .npz archive of plain arrays, or a damaged one "
                             f"({str(exc).split(': ', 1)[-1][:300]})") from None
    path = Path(source).expanduser()
    where = where or str(path)
    if path.is_dir():
        raise ModelError(f"{where!r} is a directory, not a model file")
    if not path.exists():
        raise FileNotFoundError(f"no such model file: {where!r}")
    return read_model_npz(path)


def load_model(source: str | os.PathLike | bytes | bytearray, *,
               where: str | None = None) -> tuple[ForceModelType, EnergyModelType | None]:
    """Read any model file: ``(force model, energy model or None)``.

    Parameters
    ----------
    source : path or bytes
        A file written by :func:`save_model` (the app's download, ``aff_app train``).
    where : str, optional
        How messages name the file (default: its path, or "uploaded file").

    Raises
    ------
    ModelError
        Not an ``.npz`` of plain arrays, not an aff_app model, or invalid arrays.
    FileNotFoundError
        ``source`` names no file.
    """
    arrays = read_arrays(source, where=where)
    where = where or ("uploaded file" if isinstance(source, (bytes, bytearray)) else str(source))
    fmt = str(arrays.get("format", ""))
    if fmt == FORCE_FORMAT or "format" not in arrays:  # untagged: the force model's reader names what is missing
        return ForceModel.from_arrays(arrays, where=where), None
    if fmt == ENERGY_FORMAT:
        em = EnergyModel.from_arrays(arrays, where=where)
        return em.force_model, em
    if fmt == SUBSET_FORMAT:
        sm = SubsetEnergyModel.from_arrays(arrays, where=where)
        return sm.force_model, sm
    if fmt == INTEGRATED_FORMAT:
        im = IntegratedEnergyModel.from_arrays(arrays, where=where)
        return im.force_model, im
    if fmt == PACKAGE_FORMAT:
        pm = PackageModel.from_arrays(arrays, where=where)
        return pm, pm.energy_model
    if fmt == DCF_FORMAT:
        return DCFModel.from_arrays(arrays, where=where), None
    if "format" in arrays:
        # a newer version of one of ours says so (check_model_format), anything else is foreign
        kind = fmt.rpartition("/")[0]
        for known in FORMATS:
            if known.rpartition("/")[0] == kind:
                from aff_app.gp.force import check_model_format

                check_model_format(arrays, known, where)
    raise ModelError(
        f"{where}: expected model format {FORCE_FORMAT!r}, found {fmt!r} (nor is it an energy model's format): "
        "not an aff_app model; expected a file downloaded from the Train page or written by `python -m aff_app train`"
    )
