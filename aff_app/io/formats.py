"""The file formats: names, extensions, label-set layouts and the upload limit (no readers here)."""

from __future__ import annotations





#: File extensions (without the dot) the loaders accept; for the upload widget.
SUPPORTED_EXTENSIONS: tuple[str, ...] = ("npz", "extxyz", "xyz", "traj", "db")
#: Largest upload accepted, in megabytes (raw-bytes sources only).
MAX_UPLOAD_MB = 200
#: Format names accepted by ``fmt=`` (``xyz`` = ASE's plain XYZ reader, view-only).
FORMATS: tuple[str, ...] = ("npz", "extxyz", "xyz", "traj", "db")

_EXTENSION_FORMAT = {
    ".npz": "npz",
    ".extxyz": "extxyz",
    # A ``.xyz`` file is often extended XYZ; ASE's extxyz reader also reads plain
    # XYZ (then there are no labels and the trajectory is view-only).
    ".xyz": "extxyz",
    ".traj": "traj",
    ".db": "db",
}

# Label sets of the npz layouts: name -> (energy key, force key).
_SGDML_SHARED_SETS = {"rmd17": ("E", "F"), "md17": ("E_md17", "F_md17")}
_RMD17_SETS = {"rmd17": ("energies", "forces"), "md17": ("old_energies", "old_forces")}
#: Label-set name for ASE files whose labels are calculator results.
CALCULATOR_LABELS = "calculator"


