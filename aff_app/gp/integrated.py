"""The integrated force GP: the energy a GDML/sGDML force model implies.

method.md "Modes that fall out of the same code", the GDML recipe: the energy
implied by a force GP with covariance σ² ∇∇ᵀk, plus a constant fitted to the
training energies. With α = (R + λI)⁻¹ F of the single all-atom set::

    Ê_int(x) = Σ_m cov(E(x), F(x_m))/σ² · α_m = Σ_m (−∇_{x_m} k(x, x_m))ᵀ α_m

so that −∇_x Ê_int = Σ_m ∇_x∇_{x_m}ᵀ k α_m = F̂(x), the force model's mean
(checked by finite differences in the tests), and c = mean_m (E_m − Ê_int(x_m)).
Its standard deviation is that of the estimator's error under the GP, the
unknown prior level being eliminated by the fitted constant: with
P(x, x') = k(x, x') − c_xᵀ (R + λI)⁻¹ c_x' the posterior covariance of E given
the forces (c_x = cov(E(x), F_X)/σ²)::

    var = σ̂² [ P(x,x) − 2 mean_m P(x, x_m) + mean_{m,m'} P(x_m, x_m') ]

Units: energies kcal/mol, forces kcal/mol/Å, positions Å; σ̂² in (kcal/mol)².
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from aff_app import __version__
from aff_app.gp.energy import (
    INTEGRATED_FORMAT,
    EnergyPrediction,
    _energies,
    _force_arrays,
    _info,
    _need,
    _positions,
    _read_npz,
    _split_force,
    self_covariances,
)
from aff_app.gp.force import ForceModel, ModelError, Progress, _json_default, _noop
from aff_app.gp.kernels import Geometry, energy_covariance, energy_force_covariance

# --------------------------------------------------------------------------- integrated GP
@dataclass
class IntegratedEnergyModel:
    """Energy of a GDML/sGDML force GP: the integrated posterior mean plus a constant.

    Attributes
    ----------
    force_model : ForceModel
        A force model whose only PE set holds all atoms (GDML or sGDML mode).
    R_energy : (M_E, N, 3) Å;  E_energy : (M_E,) kcal/mol
        The frames whose energies fixed the constant.
    offset : float
        c = mean_m (E_m − Ê_int(x_m)), kcal/mol.
    cbar : (3·M·N,) — mean over the energy frames of cov(E(x_m), F_X)/σ²
    kbar : float — mean of k over pairs of energy frames
    info : dict — provenance
    """

    force_model: ForceModel
    R_energy: np.ndarray
    E_energy: np.ndarray
    offset: float
    cbar: np.ndarray
    kbar: float
    info: dict = field(default_factory=dict)
    _vbar: np.ndarray | None = field(default=None, repr=False)
    _geom_e: Geometry | None = field(default=None, repr=False)

    kind = "integrated"
    label = "integrated force GP"
    description = "the energy the force GP implies (GDML recipe), plus a constant"

    @property
    def n_atoms(self) -> int:
        return self.force_model.n_atoms

    def _chol(self) -> np.ndarray:
        return self.force_model._factors()[0]

    def _v_bar(self) -> np.ndarray:
        if self._vbar is None:
            self._vbar = scipy.linalg.solve_triangular(self._chol(), self.cbar, lower=True, check_finite=False)
        return self._vbar

    def predict(self, R, *, return_std: bool = True, batch_size: int = 64,
                progress: Progress | None = None) -> EnergyPrediction:
        """Predict energies, shape (B,), kcal/mol; std needs one triangular solve per batch."""
        R = _positions(R, self.n_atoms)
        progress = progress or _noop
        fm = self.force_model
        Gt = fm._geometry()
        if self._geom_e is None:
            self._geom_e = Geometry.from_positions(self.R_energy)
        B = R.shape[0]
        mean = np.empty(B)
        std = np.full(B, np.nan)
        if not return_std:  # the mean alone by eq. (26)'s precomputed vectors (an MD step's energy)
            mean[:] = self.offset + fm.mean_predictor().energy(R)
            progress(1.0, f"predicted {B}/{B} energies")
            return EnergyPrediction(mean=mean, std=std, forces=None)
        for start in range(0, B, max(1, int(batch_size))):
            sl = slice(start, min(start + max(1, int(batch_size)), B))
            Gb = Geometry.from_positions(R[sl])
            cx = energy_force_covariance(Gb, Gt, fm.gamma, perms=fm.perms).reshape(sl.stop - sl.start, -1)
            mean[sl] = self.offset + cx @ fm.alpha[0]
            if return_std:
                v = scipy.linalg.solve_triangular(self._chol(), cx.T, lower=True, check_finite=False)
                vbar = self._v_bar()
                kss, _ = self_covariances(Gb, fm.gamma, perms=fm.perms)
                kxe = energy_covariance(Gb, self._geom_e, fm.gamma, perms=fm.perms).mean(axis=1)
                p_xx = kss - np.einsum("nb,nb->b", v, v)
                p_xbar = kxe - v.T @ vbar
                p_bar = self.kbar - vbar @ vbar
                std[sl] = np.sqrt(np.maximum(fm.sigma2[0] * (p_xx - 2 * p_xbar + p_bar), 0.0))
            progress(sl.stop / B, f"predicted {sl.stop}/{B} energies")
        return EnergyPrediction(mean=mean, std=std, forces=None)

    def save(self, path) -> None:
        """Write to ``.npz`` (plain arrays, no pickle), force model included (keys ``force__*``)."""
        np.savez_compressed(
            path,
            format=np.array(INTEGRATED_FORMAT),
            version=np.array(__version__),
            R_energy=self.R_energy,
            E_energy=self.E_energy,
            offset=np.array(self.offset),
            cbar=self.cbar,
            kbar=np.array(self.kbar),
            info=np.array(json.dumps(self.info, default=_json_default)),
            **_force_arrays(self.force_model),
        )

    @classmethod
    def load(cls, path) -> "IntegratedEnergyModel":
        return cls.from_arrays(_read_npz(path), where=str(path))

    @classmethod
    def from_arrays(cls, d: dict, *, where: str = "model") -> "IntegratedEnergyModel":
        _need(d, ["format", "R_energy", "E_energy", "offset", "cbar", "kbar", "info"], INTEGRATED_FORMAT, where)
        fm = _split_force(d, where)
        _check_single_set(fm)
        n, m = fm.n_atoms, fm.n_train
        R = np.asarray(d["R_energy"], float)
        me = R.shape[0] if R.ndim == 3 else -1
        E = np.asarray(d["E_energy"], float)
        cbar = np.asarray(d["cbar"], float)
        if R.shape != (me, n, 3) or E.shape != (me,) or cbar.shape != (3 * m * n,):
            raise ModelError(f"{where}: R_energy {R.shape}, E_energy {E.shape} or cbar {cbar.shape} "
                             f"do not match a force model of {m} frames × {n} atoms")
        offset, kbar = float(d["offset"]), float(d["kbar"])
        if not (np.isfinite(offset) and np.isfinite(kbar) and np.all(np.isfinite(cbar))):
            raise ModelError(f"{where}: non-finite offset/kbar/cbar")
        return cls(force_model=fm, R_energy=R, E_energy=E, offset=offset, cbar=cbar, kbar=kbar,
                   info=_info(d, where))


def _check_single_set(force_model: ForceModel) -> None:
    if len(force_model.pe_sets) != 1 or force_model.pe_sets[0].size != force_model.n_atoms:
        raise ModelError(
            f"the integrated energy needs a force model with one set of all {force_model.n_atoms} atoms "
            f"(GDML/sGDML mode); this one ({force_model.mode}) has {len(force_model.pe_sets)} sets — "
            "use fit_energy_model for AFF"
        )


def fit_integrated_energy(force_model: ForceModel, R, E, *, chunk: int = 64, info: dict | None = None,
                          progress: Progress | None = None) -> IntegratedEnergyModel:
    """The GDML recipe: integrate the force GP and fit the constant to energies.

    Parameters
    ----------
    force_model : ForceModel
        GDML/sGDML mode (one PE set of all atoms); AFF models are refused.
    R : (M_E, N, 3) Å;  E : (M_E,) kcal/mol
        Frames with energies that fix the constant (usually the force model's
        training frames).

    Returns
    -------
    IntegratedEnergyModel
    """
    t0 = time.perf_counter()
    progress = progress or _noop
    if not isinstance(force_model, ForceModel):
        raise ModelError(f"force_model must be a fitted ForceModel, got {type(force_model).__name__}")
    _check_single_set(force_model)
    R = _positions(R, force_model.n_atoms)
    E = _energies(E, R.shape[0])
    fm = force_model
    Gt, Ge = fm._geometry(), Geometry.from_positions(R)
    me = R.shape[0]
    e_int = np.empty(me)
    cbar = np.zeros(3 * fm.n_train * fm.n_atoms)
    for start in range(0, me, chunk):
        sl = slice(start, min(start + chunk, me))
        cx = energy_force_covariance(Ge.take(sl), Gt, fm.gamma, perms=fm.perms).reshape(sl.stop - sl.start, -1)
        e_int[sl] = cx @ fm.alpha[0]
        cbar += cx.sum(axis=0)
        progress(sl.stop / me, f"integrated {sl.stop}/{me} frames")
    cbar /= me
    kbar = float(energy_covariance(Ge, Ge, fm.gamma, perms=fm.perms).mean())
    offset = float(np.mean(E - e_int))
    meta = dict(info or {})
    meta.update({
        "version": __version__,
        "model": "integrated force GP plus a constant (GDML recipe)",
        "force_mode": fm.mode,
        "n_energy_frames": me,
        "offset_kcal_mol": offset,
        "train_energy_mae": float(np.mean(np.abs(E - e_int - offset))),
        "timings": {"total_s": time.perf_counter() - t0},
    })
    return IntegratedEnergyModel(force_model=fm, R_energy=R, E_energy=E, offset=offset, cbar=cbar, kbar=kbar,
                                 info=meta, _geom_e=Ge)


def set_energies(force_model: ForceModel, R, *, batch_size: int = 64) -> np.ndarray:
    """The energy each PE set's force GP implies, Ê_i(x) = Σ_m cov(E(x), F_i(x_m))/σ_i² · α_{i,m}.

    method.md "AFF's energy", eq. (18): set i's GP is that of the forces −∇_{x_i}E of a latent
    energy E ~ GP(0, σ_i² k), so its posterior mean of E is this sum, and −∂Ê_i/∂x_i (the set's
    own atoms) is AFF's force prediction for set i exactly. The gradient on the other atoms is
    what set i's forces say about theirs — an estimate of the same whole energy from one set's
    forces. That is why Σ_i Ê_i is no energy: it counts the whole energy about once per set
    (measured in docs/energies.md); it is kept to show it, not used.

    Parameters
    ----------
    force_model : ForceModel (any mode)
    R : (B, N, 3) Å

    Returns
    -------
    (B, n_sets) kcal/mol, without a constant.
    """
    fm = force_model
    R = _positions(R, fm.n_atoms)
    Gt = fm._geometry()
    out = np.empty((R.shape[0], len(fm.pe_sets)))
    step = max(1, int(batch_size))
    for start in range(0, R.shape[0], step):
        sl = slice(start, min(start + step, R.shape[0]))
        cx = energy_force_covariance(Geometry.from_positions(R[sl]), Gt, fm.gamma, perms=fm.perms)
        for k, (atoms, a) in enumerate(zip(fm.pe_sets, fm.alpha)):
            out[sl, k] = np.einsum("bmac,mac->b", cx[:, :, atoms], a.reshape(fm.n_train, atoms.size, 3))
    return out
