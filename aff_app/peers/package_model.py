"""The sgdml package as a model of the session: trained through ``sgdml all``, kept in our model file.

:func:`fit_package_model` writes the training (and validation) frames as sGDML
datasets, runs the package as it comes (``aff_app.peers.sgdml.run_sgdml``: its
permutation search, σ grid and selection) and reads its model back as plain
arrays. The :class:`PackageModel` then behaves like our force models where the
app and the CLI use them (``predict``, ``record``, ``save``), and
:class:`PackageEnergy` gives its energies as an energy model. Predictions go
through ``sgdml.predict.GDMLPredict``: the package's own code, not ours.

The package gives no predictive interval: ``predict`` returns means only
(``ForcePrediction.std`` is None), and every page says so.

Units: positions Å, forces kcal/mol/Å, energies kcal/mol (the package's own).
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from aff_app import __version__
from aff_app.gp.energy import EnergyPrediction
from aff_app.gp.force import ForcePrediction, ModelError, TrainedForces, _json_default, check_model_format, check_positions
from aff_app.gp.record import FitRecord, Timings
from aff_app.peers.sgdml import PeerError, require_sgdml, run_sgdml, sgdml_time_seconds, write_sgdml_dataset

__all__ = ["PACKAGE_FORMAT", "PackageModel", "PackageEnergy", "fit_package_model", "DEFAULT_TIMEOUT_S"]

PACKAGE_FORMAT = "aff_app.SGDMLPackageModel/1"
#: Wall-clock limit of one ``sgdml all`` run from the app or the CLI, s.
DEFAULT_TIMEOUT_S = 1800.0
#: The package model's arrays that prediction needs (``GDMLPredict``); the rest are kept when plain.
_PACKAGE_KEYS = ("alphas_F", "R_desc", "R_d_desc_alpha", "perms", "sig", "z", "c", "std", "tril_perms_lin")

Progress = Callable[[float, str], None]


def _noop(fraction: float, message: str) -> None:
    return None


@dataclass(eq=False)
class PackageModel(TrainedForces):
    """A model trained by the sgdml package, with our provenance around it.

    Attributes
    ----------
    z : ndarray, shape (N,)
    R_train, F_train : ndarray, shape (M, N, 3), Å and kcal/mol/Å
    train_idx : ndarray, shape (M,)
        Frame indices in the source trajectory.
    arrays : dict of ndarray
        The package's model file (plain arrays only; its pickled error summaries dropped).
    sigma_trials : int
        σ values the package trained before selecting one.
    record : FitRecord
    """

    z: np.ndarray
    R_train: np.ndarray
    F_train: np.ndarray
    train_idx: np.ndarray
    arrays: dict
    sigma_trials: int = 0
    record: FitRecord = field(default_factory=FitRecord)
    _predictor: Any = field(default=None, repr=False)
    _last: tuple | None = field(default=None, repr=False)

    mode = "sgdml-package"
    has_interval = False
    lam = math.nan

    @property
    def sigma(self) -> float:
        """The package's selected kernel length scale σ (in its descriptor's units)."""
        return float(self.arrays["sig"])

    @property
    def gamma(self) -> float:
        """No γ of ours: the package's own scale is :attr:`sigma`."""
        return math.nan

    @property
    def n_perms(self) -> int:
        return int(np.asarray(self.arrays["perms"]).shape[0])

    @property
    def energy_model(self) -> "PackageEnergy":
        return PackageEnergy(self)

    def _gdml(self):
        if self._predictor is None:
            predict_mod = require_sgdml("sgdml.predict")
            self._predictor = predict_mod.GDMLPredict(dict(self.arrays), max_processes=1)
        return self._predictor

    def predict_both(self, R, *, batch_size: int = 200, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Energies (B,) kcal/mol and forces (B, N, 3) kcal/mol/Å from the package's predictor.

        The package computes both in one pass; the last call's result is kept, so the force and the
        energy model asking for the same frames in turn (held-out evaluation, an MD step) pay once.
        """
        R = check_positions(R, self.n_atoms)
        progress = progress or _noop
        key = (R.shape, hashlib.sha1(np.ascontiguousarray(R).tobytes()).hexdigest())
        if self._last is not None and self._last[0] == key:
            progress(1.0, "sgdml package: the same frames as the last call")
            return self._last[1].copy(), self._last[2].copy()
        gdml = self._gdml()
        B = R.shape[0]
        E, F = np.zeros(B), np.zeros_like(R)
        for s in range(0, B, batch_size):
            e = min(s + batch_size, B)
            eb, fb = gdml.predict(R[s:e].reshape(e - s, -1))
            E[s:e] = np.asarray(eb).reshape(-1)
            F[s:e] = np.asarray(fb).reshape(e - s, self.n_atoms, 3)
            progress(e / B, f"sgdml package predicted {e}/{B} frames")
        self._last = (key, E.copy(), F.copy())
        return E, F

    def predict(self, R, *, return_std: bool = True, batch_size: int = 200,
                progress: Progress | None = None) -> ForcePrediction:
        """Forces at ``R`` (B, N, 3) or (N, 3), Å; means only (the package has no interval)."""
        _, F = self.predict_both(R, batch_size=batch_size, progress=progress)
        return ForcePrediction(mean=F, std=None, noise_var=None)

    # -- persistence ---------------------------------------------------------------
    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        out = {
            "format": np.array(PACKAGE_FORMAT), "version": np.array(__version__), "mode": np.array(self.mode),
            "z": self.z, "R_train": self.R_train, "F_train": self.F_train, "train_idx": self.train_idx,
            "sigma_trials": np.array(int(self.sigma_trials)),
            "info": np.array(json.dumps(self.record.to_dict(), default=_json_default)),
        }
        out.update({f"package__{k}": np.asarray(v) for k, v in self.arrays.items()})
        return {prefix + k: v for k, v in out.items()}

    @classmethod
    def from_arrays(cls, d: dict, *, where: str = "model", prefix: str = "") -> "PackageModel":
        """Validate arrays written by :meth:`to_arrays` (the package's own under ``package__*``)."""
        return cls._read_prefixed(d, where, prefix, "sgdml package model")

    @classmethod
    def _from_arrays(cls, d: dict, where: str) -> "PackageModel":
        need = ["format", "z", "R_train", "F_train", "train_idx", "info"]
        missing = [k for k in need if k not in d]
        if missing:
            raise ModelError(f"{where}: missing keys {missing}: not an sgdml package model")
        check_model_format(d, PACKAGE_FORMAT, where)
        pkg = {k[len("package__"):]: np.asarray(v) for k, v in d.items() if k.startswith("package__")}
        lacking = [k for k in ("alphas_F", "R_desc", "perms", "sig", "z") if k not in pkg]
        if lacking:
            raise ModelError(f"{where}: the package's model arrays {lacking} are missing")
        z = np.asarray(d["z"], dtype=np.int64)
        R, F = np.asarray(d["R_train"], float), np.asarray(d["F_train"], float)
        m = R.shape[0] if R.ndim == 3 else -1
        if R.shape != (m, z.size, 3) or F.shape != R.shape:
            raise ModelError(f"{where}: R_train {R.shape} / F_train {F.shape} do not match {z.size} atoms")
        if not np.array_equal(np.asarray(pkg["z"], dtype=np.int64), z):
            raise ModelError(f"{where}: the package model's atoms differ from the recorded ones")
        if not np.all(np.isfinite(np.asarray(pkg["alphas_F"], float))):
            raise ModelError(f"{where}: the package model's coefficients are not finite")
        try:
            info = json.loads(str(d["info"]))
        except json.JSONDecodeError as exc:
            raise ModelError(f"{where}: provenance is not valid JSON: {exc}") from None
        return cls(z=z, R_train=R, F_train=F, train_idx=np.asarray(d["train_idx"], dtype=np.int64), arrays=pkg,
                   sigma_trials=int(d.get("sigma_trials", 0)), record=FitRecord.from_dict(info))


@dataclass(eq=False)
class PackageEnergy:
    """The package's own energies, as an energy model of the session (no interval)."""

    force_model: PackageModel

    kind = "package"
    has_interval = False
    label = "sgdml package"
    description = "the sgdml package's energy (its integrated force kernel), no interval"

    @property
    def n_atoms(self) -> int:
        return self.force_model.n_atoms

    def predict(self, R, *, return_std: bool = True, forces=None, progress: Progress | None = None) -> EnergyPrediction:
        E, _ = self.force_model.predict_both(R, progress=progress)
        return EnergyPrediction(mean=E, std=np.full(E.shape, np.nan), forces=None)

    def save(self, target) -> None:
        """One file holds both: the package model's."""
        self.force_model.save(target)


def fit_package_model(
    R, F, E, z, *, train_idx: Sequence[int], valid: tuple[np.ndarray, np.ndarray, np.ndarray],
    record: FitRecord | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, name: str = "data",
    progress: Progress | None = None,
) -> PackageModel:
    """Train the sgdml package (``sgdml all``) on exactly the frames given.

    Parameters
    ----------
    R, F : ndarray, shape (M, N, 3)
        Training positions (Å) and forces (kcal/mol/Å).
    E : ndarray, shape (M,)
        Training energies, kcal/mol (the package trains on both).
    z : ndarray, shape (N,)
    train_idx : sequence of int
        Frame indices of the training frames in their trajectory (provenance).
    valid : (R_v, F_v, E_v)
        Validation frames for the package's σ selection (not training frames).
    record : FitRecord, optional
        Provenance the caller knows; the package's wall time becomes ``timings.force_s``.
    timeout_s : float
        The run is stopped past this wall time (a :class:`PeerError` says so).

    Raises
    ------
    PeerUnavailableError
        The package is not installed (the message gives the install command).
    PeerError
        The run failed, was killed or took too long (the message quotes the package).
    """
    progress = progress or _noop
    require_sgdml("sgdml.cli")
    R, F, E = np.asarray(R, float), np.asarray(F, float), np.asarray(E, float).reshape(-1)
    Rv, Fv, Ev = (np.asarray(a, float) for a in valid)
    m = R.shape[0]
    if m < 2 or Rv.shape[0] < 1:
        raise PeerError(f"the sgdml package needs at least 2 training and 1 validation frame, got {m} and {Rv.shape[0]}")
    progress(0.02, f"sgdml all on {m} frames (its σ search; validation on {Rv.shape[0]} frames)")
    with tempfile.TemporaryDirectory(prefix="aff_sgdml_") as work:
        work = Path(work)
        tr = write_sgdml_dataset(work / "train.npz", f"{name}_train", R, z, E, F)
        va = write_sgdml_dataset(work / "valid.npz", f"{name}_valid", Rv, z, Ev, Fv)
        t = time.perf_counter()
        run = run_sgdml(work, tr, va, m, Rv.shape[0], timeout_s=timeout_s, n_atoms=int(np.size(z)),
                        progress=lambda f, msg: progress(0.02 + 0.96 * f, msg),
                        expected_s=sgdml_time_seconds(m, int(np.size(z))))
        wall = time.perf_counter() - t
        if not run.ok:
            raise PeerError(f"the sgdml package did not produce a model: {run.reason}")
        from aff_app.peers.sgdml import load_sgdml_model

        arrays = load_sgdml_model(run.model_path)
    rec = record or FitRecord()
    rec.version, rec.mode, rec.n_train, rec.criterion = __version__, PackageModel.mode, m, "sgdml all"
    timings = rec.timings if rec.timings is not None else Timings()
    timings.force_s = run.wall_s if run.wall_s is not None else wall
    rec.timings = timings
    progress(1.0, f"sgdml package: σ = {run.sigma}, {run.sigma_trials} σ trials, {wall:.0f} s")
    return PackageModel(z=np.asarray(z, dtype=np.int64), R_train=R, F_train=F,
                        train_idx=np.asarray(train_idx, dtype=np.int64), arrays=arrays,
                        sigma_trials=int(run.sigma_trials), record=rec)
