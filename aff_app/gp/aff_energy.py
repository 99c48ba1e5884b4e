"""AFF's energy: integrated forces on a spread subset, and a GP on what they leave.

method.md "AFF's energy". AFF's per-set force weights do not integrate to a usable energy
(the sum Σ_i Ê_i of :func:`aff_app.gp.integrated.set_energies` counts each set's estimate of
the whole energy once per set: uracil rMD17, M = 200, held-out MAE 43 kcal/mol). What does
work is the GDML recipe with the full force covariance, on a subset small enough to factor:

1. ``spread_frames`` picks M_E of the M training frames by farthest-point sampling in
   descriptor space (a random subset left aspirin test frames with 30 kcal/mol errors: regions
   the subset did not reach have an undetermined energy offset);
2. an sGDML-mode force GP on those frames (the AFF model's γ and permutation group, λ
   searched) integrates to Ê_int (eq. 13), its constant fitted to their energies;
3. the other M − M_E training energies, which step 2 never saw, give residuals
   r = E − Ê_int; a GP on them (Matérn on descriptors, constant mean, γ and λ by likelihood)
   corrects the mean everywhere (eq. 19);
4. their exact leave-one-out residuals calibrate the interval: one factor s so that 95% of
   |r_loo| / sd_loo fall within 1.96 (eq. 20), as the force intervals are calibrated.

The energy is a smooth function of the positions, so −∇Ê (:meth:`SubsetEnergyModel.forces`)
is a conservative force field: the sGDML subset's forces plus the residual GP's gradient.

Units: positions Å, energies kcal/mol, forces kcal/mol/Å.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from aff_app import __version__
from aff_app.gp.energy import (
    EnergyPrediction,
    _cholesky,
    _energies,
    _force_arrays,
    _info,
    _need,
    _positions,
    _prefixed_arrays,
    _read_npz,
    _search_energy,
    _split_force,
    self_covariances,
)
from aff_app.gp.descriptors import farthest_point_order
from aff_app.gp.force import ForceModel, ModelError, Progress, _json_default, _noop, fit_force_model
from aff_app.gp.integrated import IntegratedEnergyModel, fit_integrated_energy
from aff_app.gp.kernels import Geometry, energy_covariance, energy_force_covariance

SUBSET_FORMAT = "aff_app.SubsetEnergyModel/1"
#: The subset's side 3·M_E·N follows the AFF fit's largest set kernel 3·M·max(l_i) (the energy then costs
#: no more memory than the forces, and about as much time), between these bounds: 9,000 (648 MB, a few
#: seconds here; uracil keeps 250 frames at any M) and 15,000 (1.8 GB; benzene M = 1200 keeps 416,
#: naphthalene M = 1600 277). On rMD17 benzene and naphthalene, whose clean labels reward every
#: integrated frame, 9,000 left the energy 2x and 1.5x the sgdml package's at M = 200-300.
MIN_SUBSET_SIDE, MAX_SUBSET_SIDE = 9000, 15000
DEFAULT_SUBSET_SIDE = MIN_SUBSET_SIDE
#: Fewest training frames drawn at random for the calibration (M/5 when more): with 40 the held-out
#: coverage of uracil M = 200 ranged 84-98% over three draws, the binomial spread of 40 frames.
MIN_HELD_FRAMES = 50
#: Share of the training frames drawn for the calibration when that is more than MIN_HELD_FRAMES.
CALIBRATION_SHARE = 0.2
#: Fewest frames the subset may have.
MIN_SUBSET_FRAMES = 10
#: Smallest nugget of the subset's force GP, relative to the kernel variance (see fit_subset_energy).
SUBSET_MIN_LAM = 1e-10
_INTEGRATED_PREFIX = "integrated__"


def spread_frames(R, k: int) -> np.ndarray:
    """k frames of R spread over configuration space: farthest-point sampling on descriptors.

    Starts at the frame nearest the mean descriptor and adds, one at a time, the frame farthest
    (Euclidean, inverse-distance descriptors) from those chosen. Deterministic.

    Parameters
    ----------
    R : (M, N, 3) Å or Geometry
    k : int, 1 ≤ k ≤ M

    Returns
    -------
    (k,) int indices into R, in the order chosen.
    """
    D = (R if isinstance(R, Geometry) else Geometry.from_positions(np.asarray(R, float))).D
    m = D.shape[0]
    if not 1 <= k <= m:
        raise ModelError(f"cannot choose {k} frames of {m}")
    return farthest_point_order(D, k, first=int(np.argmin(np.sum((D - D.mean(axis=0)) ** 2, axis=1))))


def calibration_size(n_frames: int) -> int:
    """How many training frames are drawn at random to calibrate the interval (eq. 20)."""
    return max(MIN_HELD_FRAMES, int(CALIBRATION_SHARE * n_frames))


def subset_side(n_train: int, set_sizes) -> int:
    """The subset's kernel side for an AFF fit of ``n_train`` frames with PE sets of ``set_sizes`` atoms."""
    return int(min(MAX_SUBSET_SIDE, max(MIN_SUBSET_SIDE, 3 * int(n_train) * max(int(l) for l in set_sizes))))


def subset_size(n_frames: int, n_atoms: int, max_side: int = DEFAULT_SUBSET_SIDE) -> int:
    """M_E: as many frames as ``max_side`` allows, leaving the calibration frames out."""
    held = calibration_size(n_frames)
    return int(min(max_side // (3 * n_atoms), n_frames - held))


@dataclass
class SubsetEnergyModel:
    """AFF's energy model (method.md "AFF's energy").

    Attributes
    ----------
    force_model : ForceModel
        The AFF force model this energy belongs to (its forces are what the app shows).
    integrated : IntegratedEnergyModel
        The sGDML-mode force GP on the spread subset and its integrated energy.
    R_held : (M_C, N, 3) Å;  weights : (M_C,)
        The held-out training frames and A⁻¹(r − m̂1) of the residual GP, A = K + λI.
    gamma, lam : float
        Range (1/Å) and nugget of the residual GP.
    mean_residual : float
        m̂, kcal/mol.  sigma2 : float — σ̂², (kcal/mol)².
    scale : float
        s, the interval calibration factor (eq. 20).
    info : dict — provenance and timings.
    """

    force_model: ForceModel
    integrated: IntegratedEnergyModel
    R_held: np.ndarray
    weights: np.ndarray
    gamma: float
    lam: float
    mean_residual: float
    sigma2: float
    scale: float
    info: dict = field(default_factory=dict)
    _chol: np.ndarray | None = field(default=None, repr=False)
    _geom: Geometry | None = field(default=None, repr=False)

    kind = "integrated"
    label = "integrated energy"
    description = ("integrated forces of an sGDML fit on a spread subset of the training frames, "
                   "corrected by a GP on the other training energies")

    @property
    def n_atoms(self) -> int:
        return self.force_model.n_atoms

    @property
    def perms(self) -> np.ndarray:
        return self.integrated.force_model.perms

    def _held(self) -> Geometry:
        if self._geom is None:
            self._geom = Geometry.from_positions(self.R_held)
        return self._geom

    def _factor(self) -> np.ndarray:
        if self._chol is None:
            K = energy_covariance(self._held(), self._held(), self.gamma, perms=self.perms)
            self._chol, _ = _cholesky(K, self.lam, "residual GP kernel")
        return self._chol

    def predict(self, R, *, forces=None, return_std: bool = True, batch_size: int = 64,
                progress: Progress | None = None) -> EnergyPrediction:
        """Energies at R, shape (B,), kcal/mol, and the calibrated sd of a held-out label (eq. 21).

        ``forces`` is accepted for the interface of the energy GP and ignored: this energy
        depends on the positions only.
        """
        R = _positions(R, self.n_atoms)
        progress = progress or _noop
        B = R.shape[0]
        base = self.integrated.predict(R, return_std=False, batch_size=batch_size)
        mean = np.empty(B)
        std = np.full(B, np.nan)
        step = max(1, int(batch_size))
        for start in range(0, B, step):
            sl = slice(start, min(start + step, B))
            Gb = Geometry.from_positions(R[sl])
            ks = energy_covariance(Gb, self._held(), self.gamma, perms=self.perms)
            mean[sl] = base.mean[sl] + self.mean_residual + ks @ self.weights  # eq. (19)
            if return_std:
                v = scipy.linalg.solve_triangular(self._factor(), ks.T, lower=True, check_finite=False)
                kss, _ = self_covariances(Gb, self.gamma, perms=self.perms)
                var_res = self.sigma2 * np.maximum(kss - np.einsum("mb,mb->b", v, v) + self.lam, 0.0)
                std[sl] = self.scale * np.sqrt(var_res)  # eq. (21)
            progress(sl.stop / B, f"predicted {sl.stop}/{B} energies")
        return EnergyPrediction(mean=mean, std=std, forces=None)

    def forces(self, R, *, batch_size: int = 64) -> np.ndarray:
        """The conservative forces −∇Ê, shape (B, N, 3), kcal/mol/Å (eq. 22).

        The subset's sGDML mean force (−∇Ê_int) plus −∇ of the residual GP's mean,
        Σ_m w_m cov(E(x_m), F(x)) (the kernel is symmetric).
        """
        R = _positions(R, self.n_atoms)
        out = self.integrated.force_model.predict_mean(R)
        for start in range(0, R.shape[0], max(1, int(batch_size))):
            sl = slice(start, min(start + max(1, int(batch_size)), R.shape[0]))
            c = energy_force_covariance(self._held(), Geometry.from_positions(R[sl]), self.gamma, perms=self.perms)
            out[sl] += np.einsum("m,mbnc->bnc", self.weights, c)
        return out

    # -- file -------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write to ``.npz`` (plain arrays, no pickle): both force models, the residual GP."""
        np.savez_compressed(
            path,
            format=np.array(SUBSET_FORMAT),
            version=np.array(__version__),
            R_held=self.R_held,
            weights=self.weights,
            params=np.array([self.gamma, self.lam, self.mean_residual, self.sigma2, self.scale]),
            info=np.array(json.dumps(self.info, default=_json_default)),
            **_prefixed_arrays(self.integrated, _INTEGRATED_PREFIX),
            **_force_arrays(self.force_model),
        )

    @classmethod
    def load(cls, path) -> "SubsetEnergyModel":
        return cls.from_arrays(_read_npz(path), where=str(path))

    @classmethod
    def from_arrays(cls, d: dict, *, where: str = "model") -> "SubsetEnergyModel":
        _need(d, ["format", "R_held", "weights", "params", "info"], SUBSET_FORMAT, where)
        fm = _split_force(d, where)
        inner = {k[len(_INTEGRATED_PREFIX):]: v for k, v in d.items() if k.startswith(_INTEGRATED_PREFIX)}
        if not inner:
            raise ModelError(f"{where}: the file holds no integrated subset model (keys '{_INTEGRATED_PREFIX}*')")
        integ = IntegratedEnergyModel.from_arrays(inner, where=f"{where} (energy subset)")
        if integ.n_atoms != fm.n_atoms:
            raise ModelError(f"{where}: the energy subset has {integ.n_atoms} atoms, the force model {fm.n_atoms}")
        R = np.asarray(d["R_held"], float)
        w = np.asarray(d["weights"], float)
        p = np.asarray(d["params"], float)
        if R.ndim != 3 or R.shape[1:] != (fm.n_atoms, 3) or w.shape != (R.shape[0],) or p.shape != (5,):
            raise ModelError(f"{where}: R_held {R.shape}, weights {w.shape} or params {p.shape} do not fit "
                             f"a model of {fm.n_atoms} atoms")
        if not (np.all(np.isfinite(R)) and np.all(np.isfinite(w)) and np.all(np.isfinite(p))):
            raise ModelError(f"{where}: non-finite residual GP arrays")
        gamma, lam, m, s2, scale = (float(x) for x in p)
        if gamma <= 0 or lam <= 0 or s2 <= 0 or scale <= 0:
            raise ModelError(f"{where}: residual GP parameters must be positive, got γ {gamma}, λ {lam}, "
                             f"σ² {s2}, scale {scale}")
        return cls(force_model=fm, integrated=integ, R_held=R, weights=w, gamma=gamma, lam=lam, mean_residual=m,
                   sigma2=s2, scale=scale, info=_info(d, where))


def fit_subset_energy(force_model: ForceModel, R, E, F, *, max_side: int | None = None,
                      train_idx=None, info: dict | None = None, progress: Progress | None = None,
                      seed: int = 0) -> SubsetEnergyModel:
    """Fit AFF's energy model on the training frames (method.md "AFF's energy").

    Parameters
    ----------
    force_model : ForceModel
        The fitted AFF (or any) force model: its γ and permutation group are reused.
    R : (M, N, 3) Å;  E : (M,) kcal/mol;  F : (M, N, 3) kcal/mol/Å
        Training frames with energies and forces (usually the force model's).
    max_side : int, optional
        Largest 3·M_E·N of the subset's force covariance (memory 8·side² bytes); default
        :func:`subset_side` of the force model.
    train_idx : (M,) int, optional
        Frame indices of R in the source data (recorded).

    Returns
    -------
    SubsetEnergyModel
    """
    t0 = time.perf_counter()
    progress = progress or _noop
    if not isinstance(force_model, ForceModel):
        raise ModelError(f"force_model must be a fitted ForceModel, got {type(force_model).__name__}")
    R = _positions(R, force_model.n_atoms)
    m, n = R.shape[0], force_model.n_atoms
    E = _energies(E, m)
    F = np.asarray(F, dtype=np.float64)
    if F.shape != R.shape or not np.all(np.isfinite(F)):
        raise ModelError(f"F must be finite with the shape of the positions {R.shape}, got {F.shape}")
    if max_side is None:
        max_side = subset_side(force_model.n_train, [s.size for s in force_model.pe_sets])
    me = subset_size(m, n, max_side)
    if me < MIN_SUBSET_FRAMES:
        raise ModelError(
            f"the integrated energy needs at least {MIN_SUBSET_FRAMES + MIN_HELD_FRAMES} training frames with "
            f"energies ({MIN_SUBSET_FRAMES} for the subset, {MIN_HELD_FRAMES} held out), and a subset side "
            f"3·M_E·N ≤ {max_side} allows {max_side // (3 * n)} frames of {n} atoms; got M = {m}"
        )
    # the calibration frames are drawn at random before the subset is spread over the rest: frames
    # left over by farthest-point sampling are the crowded, easy ones (their leave-one-out errors
    # were 20-40% smaller than held-out test errors, and the intervals under-covered, 73-91%)
    rng = np.random.default_rng(seed)
    calib = np.sort(rng.choice(m, calibration_size(m), replace=False))
    pool = np.setdiff1d(np.arange(m), calib)
    sub = pool[spread_frames(Geometry.from_positions(R[pool]), me)]
    held = np.setdiff1d(np.arange(m), sub)
    in_calib = np.isin(held, calib)
    progress(0.02, f"sGDML force GP on {me} spread frames")
    ts = time.perf_counter()
    # γ and λ of the AFF fit, λ kept above SUBSET_MIN_LAM of the kernel variance 5/(3γ²): at the
    # λ floor of the force search (1e-13) the full covariance of a subset is so near singular that
    # the mean force K_*α and the finite-difference gradient of Σ c α, equal in exact arithmetic,
    # differed by 7% on benzene; at 1e-10 by 2e-5 (h = 1e-4 Å).
    lam = max(force_model.lam, SUBSET_MIN_LAM * 5.0 / (3.0 * force_model.gamma**2))
    sub_model = fit_force_model(
        R[sub], F[sub], force_model.z, mode="sgdml", perms=force_model.perms, gamma=force_model.gamma, lam=lam,
        calibrate=None, refine_lam=False, keep_factors=False, seed=seed,
        train_idx=(np.asarray(train_idx)[sub] if train_idx is not None else sub),
        progress=lambda f, msg: progress(0.02 + 0.7 * f, "subset: " + msg),
    )
    integ = fit_integrated_energy(sub_model, R[sub], E[sub])
    t_subset = time.perf_counter() - ts
    progress(0.75, f"residual GP on {held.size} held-out training energies")
    tr = time.perf_counter()
    base = integ.predict(R[held], return_std=False)
    resid = E[held] - base.mean
    Gh = Geometry.from_positions(R[held])
    search = _search_energy(Gh, resid, force_model.perms)
    gamma, lam = search["gamma"], search["lam"]
    K = energy_covariance(Gh, Gh, gamma, perms=force_model.perms)
    L, jitter = _cholesky(K, lam, "residual GP kernel")
    lam += jitter
    ones = np.ones(held.size)
    a1 = scipy.linalg.cho_solve((L, True), ones, check_finite=False)
    ar = scipy.linalg.cho_solve((L, True), resid, check_finite=False)
    m_hat = float(ones @ ar / (ones @ a1))
    weights = ar - m_hat * a1  # A⁻¹(r − m̂1)
    sigma2 = float((resid - m_hat) @ weights / held.size)
    # eq. (20): exact leave-one-out of the residual GP, r_loo = w_j / [A⁻¹]_jj, var = σ̂² / [A⁻¹]_jj
    Linv = scipy.linalg.solve_triangular(L, np.eye(held.size), lower=True, check_finite=False)
    ainv_diag = np.einsum("ij,ij->j", Linv, Linv)
    loo_r = weights / ainv_diag
    loo_sd = np.sqrt(sigma2 / ainv_diag)
    # split-conformal: the ⌈0.95 (n + 1)⌉-th smallest |r|/sd of the n random calibration frames
    ratios = np.sort(np.abs(loo_r[in_calib]) / loo_sd[in_calib])
    rank = min(ratios.size, int(np.ceil(0.95 * (ratios.size + 1))))
    scale = max(float(ratios[rank - 1] / 1.959964), 1e-3)
    meta = dict(info or {})
    meta.update({
        "version": __version__,
        "model": SubsetEnergyModel.description,
        "n_subset": int(me),
        "n_held": int(held.size),
        "n_calibration": int(in_calib.sum()),
        "subset_side": int(3 * me * n),
        "subset_gamma": float(sub_model.gamma),
        "subset_lam": float(sub_model.lam),
        "subset_frames": (np.asarray(train_idx)[sub] if train_idx is not None else sub).tolist(),
        "residual_search": {k: search[k] for k in ("gamma", "lam", "converged", "n_frames")},
        "held_integrated_mae": float(np.mean(np.abs(resid - np.mean(resid)))),
        "held_loo_mae": float(np.mean(np.abs(loo_r))),
        "calibration_scale": scale,
        "timings": {"subset_s": t_subset, "residual_s": time.perf_counter() - tr, "total_s": time.perf_counter() - t0},
    })
    progress(1.0, "energy model fitted")
    return SubsetEnergyModel(force_model=force_model, integrated=integ, R_held=R[held].copy(), weights=weights,
                             gamma=float(gamma), lam=float(lam), mean_residual=m_hat, sigma2=sigma2, scale=scale,
                             info=meta, _chol=L, _geom=Gh)
