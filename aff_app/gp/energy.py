"""The energy GP of method.md "Energy prediction", and the prediction type both energy models share.

:class:`EnergyModel` — method.md "Energy prediction". Energy GP with constant
mean m and covariance σ² k, k the Matérn 5/2 kernel PS-averaged over the force
model's permutation group. For a configuration x* it conditions on the M
training energies E and on the forces at x* itself, replaced by the force
model's prediction F̂(x*)::

    Σ_sub = [[A,    C_Xᵀ          ],      A = K_XX + λ I_M
             [C_X,  R_** + λ I_3N ]]      C_X = cov(F(x*), E_X) / σ²   (3N × M)
    k_*   = [K_{x*,X},  cov(E(x*), F(x*)) / σ²]
    Ê(x*) = m̂ + k_* Σ_sub⁻¹ [E − m̂1 ; F̂(x*)]
    var   = σ̂² (k(x*,x*) − k_* Σ_sub⁻¹ k_*ᵀ)
    m̂ = (1ᵀA⁻¹1)⁻¹ 1ᵀA⁻¹E,   σ̂² = (E − m̂1)ᵀ A⁻¹ (E − m̂1) / M

Signs: F = −∇E, so cov(E(x_a), F(x_b)) = σ² (−∇_b k(x_a, x_b)), which is
``kernels.energy_force_covariance(x_a, x_b)`` times σ². The prior mean of F is
−∇m = 0, so F̂ enters the conditioning vector as it is (not −F̂): the joint
Gaussian of (E_X, F(x*), E(x*)) has exactly the blocks above. The tests check
this on exact draws from the joint prior, where the wrong sign is far worse
than ignoring the forces.

Block inversion (method.md): A is factored once at fit time (Cholesky L). With
Ã = L⁻¹ K_{X,x*}, C̃ = L⁻¹ C_Xᵀ and the Schur complement S = D − C̃ᵀC̃
(D = R_** + λI)::

    g     = cov(E*, F*) − C̃ᵀ Ã                 (3N)
    Ê(x*) = m̂ + K_{x*,X} A⁻¹(E − m̂1) + gᵀ S⁻¹ (F̂ − C_X A⁻¹(E − m̂1))
    var   = σ̂² (k(x*,x*) − |Ã|² − gᵀ S⁻¹ g)

By default the variance also carries the error of m̂ (universal kriging):
+ σ̂² (1 − k_*Σ_sub⁻¹u)² / (1ᵀA⁻¹1), u = [1_M; 0_3N]; method.md's formula is the
known-mean case (``mean_variance=False``). On draws from the joint prior both
are checked against the dense formulas and for calibration.

How much data: the energy GP learns the energy surface from the M energies
alone (the forces enter only at x*), so it needs a few hundred energies for a
molecule like uracil (66 descriptor dimensions): with 100 the likelihood picks
a tiny range and predicts little more than the mean; with 400–500 the
held-out MAE is below 0.1 of the energy spread. Energies are cheap (an M × M
kernel), so train it on every frame with an energy, not only the force model's.

Batches: each x* is conditioned on its OWN predicted forces only (method.md's
per-x* formula; the cross-frame force blocks of a batch are dropped). A batch
of b frames therefore solves b independent 3N × 3N Schur systems, stacked —
the block-diagonal choice — so a prediction does not depend on which other
frames share its batch (tested: batched equals one-at-a-time).

:class:`~aff_app.gp.integrated.IntegratedEnergyModel` (``aff_app.gp.integrated``) is the other
energy model: the GDML/sGDML recipe, the energy a single-set force GP implies.

Units: energies kcal/mol, forces kcal/mol/Å, positions Å; σ̂² in (kcal/mol)².
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from aff_app import __version__
from aff_app.gp.hyper import golden_section_max
from aff_app.gp.kernels import (
    Geometry,
    energy_covariance,
    energy_force_covariance,
    force_covariance_self,
    force_covariance_sets,
    single_threaded_blas,
)
from aff_app.gp.kernels import _coefficients  # noqa: PLC2701 - the kernel's own coefficient helper
from aff_app.gp.force import (FactorizationError, ForceModel, ForcePrediction, ModelError, Progress, _json_default, _noop,
                              check_positions)

#: λ grid for the energy likelihood (the energy kernel has variance 1 at ρ = 0).
ENERGY_LAMBDA_GRID = np.logspace(-13, -1, 49)
#: Training frames whose reference forces each prediction also conditions on (see EnergyModel.predict).
DEFAULT_NEIGHBOURS = 3
#: Relative jitter steps tried when a factorisation fails.
MAX_JITTER_STEPS = 4

ENERGY_FORMAT = "aff_app.EnergyModel/1"
INTEGRATED_FORMAT = "aff_app.IntegratedEnergyModel/1"
_FORCE_PREFIX = "force__"


# --------------------------------------------------------------------------- prediction
@dataclass
class EnergyPrediction:
    """Predicted energies with their uncertainty, in kcal/mol.

    Attributes
    ----------
    mean : ndarray, shape (B,)
        Posterior mean energy.
    std : ndarray, shape (B,)
        Posterior standard deviation of the (noise-free) energy.
    forces : ndarray, shape (B, N, 3) or None
        The forces the energy model conditioned on (kcal/mol/Å): the force
        model's prediction unless given by the caller; None for the
        integrated model.
    """

    mean: np.ndarray
    std: np.ndarray
    forces: np.ndarray | None = None

    def interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Central interval at ``level`` (0.95 → mean ± 1.96 sd), each shape (B,)."""
        from scipy.special import ndtri  # Φ⁻¹; scipy.stats costs ~0.45 s to import

        if not 0.0 < level < 1.0:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        h = ndtri(0.5 + level / 2.0) * self.std
        return self.mean - h, self.mean + h


# --------------------------------------------------------------------------- helpers
_positions = check_positions  # the one check of positions (aff_app.gp.force)


def _energies(E, n_frames: int) -> np.ndarray:
    E = np.asarray(E, dtype=np.float64)
    if E.ndim == 2 and E.shape[1] == 1:  # sGDML files store (M, 1)
        E = E[:, 0]
    if E.shape != (n_frames,):
        raise ModelError(f"energies must have shape ({n_frames},) to match the positions, got {E.shape}")
    if not np.all(np.isfinite(E)):
        raise ModelError("training energies contain NaN or infinite values")
    return E


def self_covariances(R, gamma: float, *, perms=None) -> tuple[np.ndarray, np.ndarray]:
    """k_s(x, x) and cov(E(x), F(x)) of each frame with itself (kernel variance 1).

    Both are trivial for the plain kernel (1 and 0) but not for the PS kernel,
    whose permuted copies of x differ from x (method.md "Energy prediction").

    Returns
    -------
    kss : ndarray, shape (B,), dimensionless
    ce : ndarray, shape (B, N, 3), 1/Å — equals the diagonal of
        ``energy_force_covariance(R, R)``.
    """
    G = R if isinstance(R, Geometry) else Geometry.from_positions(R)
    n = G.n_atoms
    plist = [np.arange(n)] if perms is None else list(np.asarray(perms, dtype=np.int64))
    kss = np.zeros(G.n_frames)
    ce = np.zeros((G.n_frames, n, 3))
    for p in plist:
        pinv = np.argsort(p)
        Gq = G.permuted(p)
        u = G.D - Gq.D
        k, c1, _ = _coefficients(np.sqrt(np.einsum("mp,mp->m", u, u)), gamma)
        kss += k
        # −∇_b k(x_a, P x_b) at x_b = x_a: −c1 (J_bᵀ u) at the positions pinv[i] (kernels._jtu)
        w = np.einsum("mik,mikc->mic", Gq.Dmat[:, pinv] - G.Dmat[:, pinv], Gq.V[:, pinv])
        ce -= c1[:, None, None] * w
    return kss / len(plist), ce / len(plist)


def _cholesky(K: np.ndarray, lam: float, what: str) -> tuple[np.ndarray, float]:
    """Factor K + λI, escalating a bounded jitter on failure."""
    base = float(np.mean(np.diag(K)))
    diag = np.diag_indices_from(K)
    jitter = 0.0
    for step in range(MAX_JITTER_STEPS + 1):
        A = K.copy()
        A[diag] += lam + jitter
        try:
            return scipy.linalg.cholesky(A, lower=True, overwrite_a=True, check_finite=False), jitter
        except np.linalg.LinAlgError:
            jitter = base * 10.0 ** (-10 + 2 * step)
    raise FactorizationError(
        f"Cholesky of the {what} (size {K.shape[0]}) failed with λ = {lam:.3g} even after adding jitter "
        f"up to {jitter:.3g}: raise λ, or drop duplicate frames."
    )


def energy_profile_loglik(ev: np.ndarray, Q: np.ndarray, E: np.ndarray, lams: np.ndarray):
    """Profile log-likelihood of energies under N(m1, σ²(K + λI)), m and σ² maximised out.

    From the eigendecomposition K = Q diag(ev) Qᵀ every λ costs O(M)::

        ℓ(λ) = −½ [ Σ log(ev + λ) + M log σ̂² ]   (constants dropped)

    Returns
    -------
    ll, m_hat, sigma2_hat : ndarrays, shape (L,)
    """
    q1 = Q.T @ np.ones(E.size)
    qe = Q.T @ E
    d = ev[None, :] + lams[:, None]
    s11 = np.sum(q1**2 / d, axis=1)
    s1e = np.sum(q1 * qe / d, axis=1)
    see = np.sum(qe**2 / d, axis=1)
    m_hat = s1e / s11
    quad = np.maximum(see - s1e**2 / s11, 1e-300)
    sigma2 = quad / E.size
    ll = -0.5 * (np.sum(np.log(d), axis=1) + E.size * np.log(sigma2))
    return ll, m_hat, sigma2


def _search_energy(G: Geometry, E: np.ndarray, perms, *, gamma=None, n_grid=7, n_refine=8, progress=_noop):
    """Maximise the energy profile likelihood over λ (grid) and γ (grid + golden section in log γ)."""
    cache: dict[float, tuple[float, float, int]] = {}
    total = 1 if gamma is not None else n_grid + n_refine

    def evaluate(log_g: float) -> float:
        g = float(np.exp(log_g))
        if g not in cache:
            K = energy_covariance(G, G, g, perms=perms)
            # one BLAS thread: on small matrices threaded eigh was several times slower (see hyper.py)
            with single_threaded_blas():
                ev, Q = np.linalg.eigh(K)
            # eigenvalues below ~eps·λ_max are rounding noise: λ must stay above them
            floor = 50 * np.finfo(float).eps * max(float(ev[-1]), 1.0)
            ev = np.maximum(ev, 0.0)
            lams = ENERGY_LAMBDA_GRID[ENERGY_LAMBDA_GRID > floor]
            ll, _, _ = energy_profile_loglik(ev, Q, E, lams)
            ll = np.where(np.isfinite(ll), ll, -np.inf)
            k = int(np.argmax(ll))
            edge = k == 0 or k == lams.size - 1
            cache[g] = (float(ll[k]), float(lams[k]), edge)
            progress(min(1.0, len(cache) / total), f"energy γ = {g:.3g}: best λ = {lams[k]:.2e}")
        return cache[g][0]

    lo_edge = hi_edge = False
    if gamma is not None:
        evaluate(np.log(gamma))
        best = next(iter(cache))
    else:
        d = G.D
        n2 = np.sum(d * d, axis=1)
        rho = np.sqrt(np.maximum(n2[:, None] + n2[None] - 2 * d @ d.T, 0.0))
        scale = float(np.median(rho[np.triu_indices(d.shape[0], 1)]))
        grid = np.log(max(scale, 1e-6)) + np.linspace(np.log(0.1), np.log(30.0), n_grid)
        scores = [evaluate(x) for x in grid]
        k = int(np.argmax(scores))
        lo_edge, hi_edge = k == 0, k == n_grid - 1
        a, b = grid[max(k - 1, 0)], grid[min(k + 1, n_grid - 1)]
        golden_section_max(evaluate, a, b, n_refine)
        best = max(cache, key=lambda g: cache[g][0])
    score, lam, lam_edge = cache[best]
    return {
        "gamma": float(best),
        "lam": lam,
        "criterion": "likelihood",
        "score": score,
        "converged": not (lo_edge or hi_edge or lam_edge),
        "n_frames": int(G.n_frames),
        "history": [[g, v[1], v[0]] for g, v in sorted(cache.items())],
    }


def _prefixed_arrays(model, prefix: str) -> dict:
    """A model's own .npz arrays (written by its ``save``), each key prefixed (a model inside another's file)."""
    buf = io.BytesIO()
    model.save(buf)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as d:
        return {prefix + k: d[k] for k in d.files}


def _force_arrays(force_model: ForceModel) -> dict:
    """The force model's own .npz arrays (written by ForceModel.save), prefixed."""
    return _prefixed_arrays(force_model, _FORCE_PREFIX)


def _read_npz(path) -> dict:
    from aff_app.gp.force import read_model_npz

    return read_model_npz(path)


def _split_force(d: dict, where: str) -> ForceModel:
    sub = {k[len(_FORCE_PREFIX):]: v for k, v in d.items() if k.startswith(_FORCE_PREFIX)}
    if not sub:
        raise ModelError(f"{where}: the file holds no force model (keys '{_FORCE_PREFIX}*')")
    return ForceModel.from_arrays(sub, where=f"{where} (force model)")


def _need(d: dict, keys: list[str], fmt: str, where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ModelError(f"{where}: missing keys {missing}; is this an aff_app energy model?")
    if str(d["format"]) != fmt:
        raise ModelError(f"{where}: expected model format {fmt!r}, found {str(d['format'])!r}")


def _info(d: dict, where: str) -> dict:
    try:
        return json.loads(str(d["info"]))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{where}: provenance is not valid JSON: {exc}") from exc


def _conditioning_forces(force_model: ForceModel, R: np.ndarray, forces, need_cov: bool):
    """Forces (B, N, 3) to condition on and, when asked, their per-atom covariance (B, N, 3, 3)."""
    if forces is None:
        forces = force_model.predict(R, return_std=need_cov)
    if isinstance(forces, ForcePrediction):
        F, cov = forces.mean, forces.cov
        if need_cov and cov is None:
            raise ModelError("force_noise='posterior' needs a ForcePrediction with its covariance "
                             "(predict with return_std=True)")
    else:
        if need_cov:
            raise ModelError("force_noise='posterior' needs forces as a ForcePrediction (with cov), "
                             "not a bare array; or pass forces=None")
        F, cov = forces, None
    F = np.asarray(F, dtype=np.float64)
    if F.ndim == 2:
        F = F[None]
    if F.shape != R.shape:
        raise ModelError(f"forces must have the shape of the positions {R.shape}, got {F.shape}")
    if not np.all(np.isfinite(F)):
        raise ModelError("forces contain NaN or infinite values")
    if need_cov:
        cov = np.asarray(cov, dtype=np.float64)
        if cov.shape != R.shape + (3,):
            raise ModelError(f"force covariance must have shape {R.shape + (3,)}, got {cov.shape}")
        return F, cov
    return F, None


# --------------------------------------------------------------------------- energy GP
@dataclass
class EnergyModel:
    """The energy GP of method.md, conditioned on predicted forces at x*.

    Attributes
    ----------
    force_model : ForceModel
        Supplies F̂(x*) and the permutation group of the kernel.
    R_train : (M, N, 3) Å;  E_train : (M,) kcal/mol
        The frames the energy GP is trained on (any frames with energies:
        usually, not necessarily, the force model's training frames).
    train_idx : (M,) frame indices in the source trajectory
    perms : (S, N) permutation group of the PS kernel (the force model's)
    gamma, lam : float — range (1/Å, descriptor units) and nugget (relative to k)
    mean : float — m̂, kcal/mol
    sigma2 : float — σ̂², (kcal/mol)²
    alpha : (M,) — A⁻¹ (E − m̂1), A = K_XX + (λ + jitter) I
    jitter : float — extra diagonal a failed factorisation needed
    F_train : (M, N, 3) kcal/mol/Å or None — reference forces of the training
        frames (needed for ``neighbours`` > 0)
    neighbours : int — training frames whose reference forces each prediction
        also conditions on (0: method.md's formula exactly; see :meth:`predict`)
    info : dict — provenance (version, hyperparameter source and search, timings,
        the force model's data fingerprint when it had one)
    """

    force_model: ForceModel
    R_train: np.ndarray
    E_train: np.ndarray
    train_idx: np.ndarray
    perms: np.ndarray
    gamma: float
    lam: float
    mean: float
    sigma2: float
    alpha: np.ndarray
    jitter: float = 0.0
    F_train: np.ndarray | None = None
    neighbours: int = 0
    info: dict = field(default_factory=dict)
    _chol: np.ndarray | None = field(default=None, repr=False)
    _geom: Geometry | None = field(default=None, repr=False)

    kind = "gp"
    label = "energy GP"
    description = "the energy GP: training energies, conditioned on the predicted forces at x*"

    @property
    def n_train(self) -> int:
        return int(self.R_train.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.R_train.shape[1])

    def _geometry(self) -> Geometry:
        if self._geom is None:
            self._geom = Geometry.from_positions(self.R_train)
        return self._geom

    def _force_noise(self) -> np.ndarray:
        """Noise variance of each atom's reference force components, (N,), in units of σ̂².

        The force model's nugget of the atom's set: σ_s² (λ_F + jitter_s) (kcal/mol/Å)², divided by
        the energy GP's σ̂² because its force block is R_** = cov(F, F)/σ̂².
        """
        fm = self.force_model
        out = np.zeros(self.n_atoms)
        for s, atoms in enumerate(fm.pe_sets):
            out[np.asarray(atoms)] = fm.sigma2[s] * (fm.lam + fm.jitter[s])
        return out / self.sigma2

    def _factor(self) -> np.ndarray:
        """Cholesky factor of A = K_XX + (λ + jitter) I (recomputed after load)."""
        if self._chol is None:
            K = energy_covariance(self._geometry(), self._geometry(), self.gamma, perms=self.perms)
            K[np.diag_indices_from(K)] += self.lam + self.jitter
            self._chol = scipy.linalg.cholesky(K, lower=True, overwrite_a=True, check_finite=False)
        return self._chol

    def predict(self, R, *, forces=None, force_noise: str = "auto", mean_variance: bool = True,
                neighbours: int | None = None, batch_size: int = 32,
                progress: Progress | None = None) -> EnergyPrediction:
        """Predict energies at new configurations.

        Parameters
        ----------
        R : ndarray, shape (B, N, 3) or (N, 3), Å
        forces : ndarray (B, N, 3) kcal/mol/Å, or ForcePrediction, optional
            Forces at R to condition on; default the force model's prediction
            at R. Pass reference forces to see what exact forces would give.
        force_noise : {'auto', 'nugget', 'posterior'}
            'auto' (default): 'posterior' when the forces come from the force
            model (``forces`` None or a ForcePrediction with ``cov``), else
            'nugget'. On held-out uracil 'nugget' under-covered (95% intervals
            held 67–83% of energies) and 'posterior' gave 86–94%.
            'nugget' (method.md): the forces enter with the nugget λ only, as
            if F̂ were the true forces. 'posterior': F̂ is treated as a noisy
            measurement of F whose error covariance is the force model's
            per-atom 3×3 posterior covariance (cross-atom terms dropped), added
            to R_** as Cov(F̂)/σ̂². This widens the intervals by the force
            model's own uncertainty (better calibrated when F̂ is poor) and
            needs a ForcePrediction with ``cov`` (computed when ``forces`` is
            None).
        mean_variance : bool
            Add the variance that estimating m̂ from the M energies leaves
            (universal kriging), σ̂² (1 − k_*Σ_sub⁻¹u)² / (1ᵀA⁻¹1) with
            u = [1_M; 0]. method.md's formula is the known-mean case
            (False); with few training energies it under-covers.
        neighbours : int, optional
            Also condition on the reference forces of the k training frames
            most correlated with x* (largest k_s(x*, x_m)); default the
            model's ``neighbours``; 0 is method.md's formula. Why: with forces
            at x* alone the GP extrapolates E(x*) from a training energy along
            the gradient at one end, E(x_n) + F*·(x_n − x*), and misses the
            curvature ½ΔᵀHΔ, which is positive around the minimum an MD
            trajectory samples: a positive bias (aspirin, M = 400: +7 kcal/mol
            even with the reference forces at x*). With forces at both ends the
            estimate is trapezoidal, exact for a quadratic surface. It is the
            full energy-and-force GP restricted to a local conditioning set
            (each frame's own k; no cross-frame terms).
        batch_size : int
            Frames per stacked Schur solve (memory ~ 8·M·3N(k+1)·batch_size
            bytes). Each frame conditions on its own forces only, so the result
            does not depend on the batch size.

        Returns
        -------
        EnergyPrediction
        """
        if force_noise == "auto":
            has_cov = forces is None or getattr(forces, "cov", None) is not None
            force_noise = "posterior" if has_cov else "nugget"
        if force_noise not in ("nugget", "posterior"):
            raise ModelError(f"force_noise must be 'auto', 'nugget' or 'posterior', got {force_noise!r}")
        k = self.neighbours if neighbours is None else int(neighbours)
        if k < 0:
            raise ModelError(f"neighbours must be >= 0, got {k}")
        if k > 0 and self.F_train is None:
            raise ModelError(f"neighbours = {k} needs the training frames' reference forces, and this model "
                             "has none (fit it with F=..., or predict with neighbours=0)")
        k = min(k, self.n_train)
        R = _positions(R, self.n_atoms)
        progress = progress or _noop
        F, Fcov = _conditioning_forces(self.force_model, R, forces, force_noise == "posterior")
        B, n = R.shape[0], self.n_atoms
        n3 = 3 * n
        w = (k + 1) * n3  # force observations per frame: x* and its k neighbours
        L = self._factor()
        a1 = scipy.linalg.cho_solve((L, True), np.ones(self.n_train), check_finite=False)  # A⁻¹1
        s11 = float(a1.sum())  # 1ᵀA⁻¹1 = σ̂²/Var(m̂)
        Gt = self._geometry()
        mean = np.empty(B)
        var = np.empty(B)
        eye = np.eye(w)
        lam = self.lam + self.jitter
        nb_diag = np.arange(n3, w)  # diagonal of the neighbours' force block
        nb_noise = np.tile(np.repeat(self._force_noise(), 3), k)
        step = max(1, int(batch_size))
        for start in range(0, B, step):
            sl = slice(start, min(start + step, B))
            b = sl.stop - sl.start
            Gb = Geometry.from_positions(R[sl])
            a = energy_covariance(Gb, Gt, self.gamma, perms=self.perms)  # K_{x*,X}: (b, M)
            kss, ce = self_covariances(Gb, self.gamma, perms=self.perms)
            y = F[sl].reshape(b, n3)
            if k:
                nb = np.argsort(-a, axis=1, kind="stable")[:, :k]  # (b, k): most correlated training frames
                Gn = Gt.take(nb.reshape(-1))  # the neighbours' terms, already computed for the training frames
                # per frame j the points [x*_j, its k neighbours], frame-major (b·(k+1) frames)
                Gp = Geometry(**{f: np.concatenate([getattr(Gb, f)[:, None],
                                                    getattr(Gn, f).reshape((b, k) + getattr(Gn, f).shape[1:])],
                                                   axis=1).reshape((-1,) + getattr(Gn, f).shape[1:])
                                 for f in ("D", "Dmat", "V")})
                y = np.concatenate([y, self.F_train[nb].reshape(b, k * n3)], axis=1)
                # cov(E(x*), F(x_nb)) for each frame's own neighbours
                cen = energy_force_covariance(Gb, Gn, self.gamma, perms=self.perms).reshape(b, b, k * n3)
                ce = np.concatenate([ce.reshape(b, n3), cen[np.arange(b), np.arange(b)]], axis=1)
                D = np.empty((b, w, w))
                for j in range(b):  # one Geometry object for both sides: the symmetric (lower + mirror) build
                    Gj = Gp.take(slice(j * (k + 1), (j + 1) * (k + 1)))
                    D[j] = force_covariance_sets(Gj, Gj, self.gamma, [np.arange(n)], perms=self.perms, threads=1)[0]
            else:
                Gp = Gb
                ce = ce.reshape(b, n3)
                D = force_covariance_self(Gb, self.gamma, [np.arange(n)], perms=self.perms)[0].reshape(b, n3, n3)
            # C_Xᵀ: cov(E(x_m), F(points)) = cov(F(points), E(x_m))ᵀ, (M, b·w)
            Ct = energy_force_covariance(Gt, Gp, self.gamma, perms=self.perms).reshape(self.n_train, b * w)
            D = D + lam * eye
            if k:  # the neighbours' reference forces carry the force model's noise σ_s²λ_F (in σ̂² units)
                D[:, nb_diag, nb_diag] += nb_noise
            if Fcov is not None:  # F̂ = F + δ, δ ~ N(0, Cov(F̂)): add Cov(F̂)/σ̂² to R_** (x* only)
                for i in range(n):
                    D[:, 3 * i:3 * i + 3, 3 * i:3 * i + 3] += Fcov[sl, i] / self.sigma2
            At = scipy.linalg.solve_triangular(L, a.T, lower=True, check_finite=False)  # (M, b)
            Ctt = scipy.linalg.solve_triangular(L, Ct, lower=True, check_finite=False).reshape(-1, b, w)
            CttT = np.ascontiguousarray(Ctt.transpose(1, 2, 0))  # (b, w, M)
            # Schur complement per frame (a stacked GEMM: einsum's loop took 5× longer)
            S = D - CttT @ CttT.transpose(0, 2, 1)
            g = ce - (CttT @ At.T[:, :, None])[..., 0]
            Ct3 = Ct.reshape(-1, b, w)
            r = y - np.einsum("mbi,m->bi", Ct3, self.alpha)
            sol = _solve_spd_stack(S, np.stack([g, r], axis=-1))  # (b, w, 2)
            mean[sl] = self.mean + a @ self.alpha + np.einsum("bi,bi->b", g, sol[..., 1])
            var[sl] = kss - np.einsum("mb,mb->b", At, At) - np.einsum("bi,bi->b", g, sol[..., 0])
            if mean_variance:
                # k_*Σ_sub⁻¹[1; 0] = K_{x*,X}A⁻¹1 − (S⁻¹g)ᵀ C_X A⁻¹1
                ku = a @ a1 - np.einsum("bi,bi->b", sol[..., 0], np.einsum("mbi,m->bi", Ct3, a1))
                var[sl] += (1.0 - ku) ** 2 / s11
            progress(sl.stop / B, f"predicted {sl.stop}/{B} energies")
        std = np.sqrt(np.maximum(self.sigma2 * var, 0.0))
        return EnergyPrediction(mean=mean, std=std, forces=F)

    # -- persistence --------------------------------------------------------------
    def save(self, path) -> None:
        """Write the model to ``.npz`` (plain arrays only, no pickle).

        The file is self-contained: it also holds the force model's arrays
        (keys ``force__*``), so :meth:`load` restores both.
        """
        np.savez_compressed(
            path,
            format=np.array(ENERGY_FORMAT),
            version=np.array(__version__),
            R_train=self.R_train,
            E_train=self.E_train,
            train_idx=self.train_idx,
            perms=self.perms,
            gamma=np.array(self.gamma),
            lam=np.array(self.lam),
            mean=np.array(self.mean),
            sigma2=np.array(self.sigma2),
            alpha=self.alpha,
            jitter=np.array(self.jitter),
            neighbours=np.array(self.neighbours),
            **({} if self.F_train is None else {"F_train": self.F_train}),
            info=np.array(json.dumps(self.info, default=_json_default)),
            **_force_arrays(self.force_model),
        )

    @classmethod
    def load(cls, path) -> "EnergyModel":
        """Read and validate a model written by :meth:`save`."""
        return cls.from_arrays(_read_npz(path), where=str(path))

    @classmethod
    def from_arrays(cls, d: dict, *, where: str = "model") -> "EnergyModel":
        keys = ["format", "R_train", "E_train", "train_idx", "perms", "gamma", "lam", "mean", "sigma2",
                "alpha", "jitter", "info"]
        _need(d, keys, ENERGY_FORMAT, where)
        fm = _split_force(d, where)
        n = fm.n_atoms
        R = np.asarray(d["R_train"], float)
        m = R.shape[0] if R.ndim == 3 else -1
        if R.shape != (m, n, 3):
            raise ModelError(f"{where}: R_train {R.shape} does not match the force model's {n} atoms")
        E = np.asarray(d["E_train"], float)
        alpha = np.asarray(d["alpha"], float)
        if E.shape != (m,) or alpha.shape != (m,):
            raise ModelError(f"{where}: E_train {E.shape} / alpha {alpha.shape} must have {m} values")
        perms = np.asarray(d["perms"], np.int64)
        if perms.ndim != 2 or perms.shape[1] != n or any(sorted(p) != list(range(n)) for p in perms.tolist()):
            raise ModelError(f"{where}: perms must be permutations of {n} atoms, got shape {perms.shape}")
        gamma, lam, sigma2 = float(d["gamma"]), float(d["lam"]), float(d["sigma2"])
        mean, jitter = float(d["mean"]), float(d["jitter"])
        if not (gamma > 0 and lam >= 0 and sigma2 > 0 and jitter >= 0 and np.isfinite(mean)
                and np.all(np.isfinite(alpha))):
            raise ModelError(f"{where}: invalid hyperparameters (γ={gamma}, λ={lam}, σ²={sigma2}, m={mean})")
        # files written before neighbour conditioning have neither key: method.md's formula
        neighbours = int(d["neighbours"]) if "neighbours" in d else 0
        F = np.asarray(d["F_train"], float) if "F_train" in d else None
        if F is not None and F.shape != R.shape:
            raise ModelError(f"{where}: F_train {F.shape} must have the shape of R_train {R.shape}")
        if neighbours < 0 or (neighbours > 0 and F is None):
            raise ModelError(f"{where}: neighbours = {neighbours} needs F_train (the training forces), "
                             "which the file does not have")
        return cls(force_model=fm, R_train=R, E_train=E, train_idx=np.asarray(d["train_idx"], np.int64),
                   perms=perms, gamma=gamma, lam=lam, mean=mean, sigma2=sigma2, alpha=alpha, jitter=jitter,
                   F_train=F, neighbours=neighbours, info=_info(d, where))


def _solve_spd_stack(S: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve S_j x_j = rhs_j for a stack of SPD matrices (b, n, n), with jitter on failure."""
    try:
        L = np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        L = np.empty_like(S)
        for j in range(S.shape[0]):
            L[j], _ = _cholesky(S[j], 0.0, f"force block of test frame {j} (Schur complement)")
    y = np.linalg.solve(L, rhs)
    return np.linalg.solve(np.swapaxes(L, -1, -2), y)


def fit_energy_model(
    force_model: ForceModel,
    R,
    E,
    *,
    F=None,
    neighbours: int = DEFAULT_NEIGHBOURS,
    gamma: float | str | None = None,
    lam: float | None = None,
    search_frames: int = 600,
    train_idx=None,
    info: dict | None = None,
    progress: Progress | None = None,
    seed: int = 0,
) -> EnergyModel:
    """Fit the energy GP of method.md "Energy prediction".

    Parameters
    ----------
    force_model : ForceModel
        Any fitted force model (AFF, GDML, sGDML): it predicts the forces at
        x* that the energy prediction conditions on, and its permutation group
        ``perms`` makes the energy kernel PS.
    R : (M, N, 3) Å;  E : (M,) or (M, 1) kcal/mol
        Frames with reference energies. They may be the force model's training
        frames or any others (the energy GP is trained on these alone).
    F : (M, N, 3) kcal/mol/Å, optional
        Reference forces of the same frames. With them, each prediction also
        conditions on the forces of its ``neighbours`` most correlated
        training frames (see :meth:`EnergyModel.predict`); without them it
        is method.md's formula (forces at x* only).
    neighbours : int
        How many (default 3; ignored, and recorded as 0, when F is None).
        Measured on held-out MD17 frames with the reference forces at x*:
        aspirin M = 400, MAE 7.3 → 3.3 kcal/mol (bias +7.1 → +2.8) with 3;
        uracil M = 1600, 0.103 → 0.078 with 2.
    gamma : float, 'force' or None
        Range of the energy kernel. None: chosen with λ by the profile
        likelihood of the training energies; 'force': reuse the force model's
        γ (then λ alone is searched unless given); a float: fixed.
    lam : float, optional
        Nugget (relative to the kernel variance 1). None: profile likelihood.

    Notes
    -----
    γ and λ maximise the profile log-likelihood of the energies,
    ℓ = −½ [log|K + λI| + M log σ̂²] with m̂ and σ̂² maximised out, from one
    eigendecomposition of K_XX per γ (every λ then costs O(M)): γ on a log grid
    around the median descriptor distance, refined by golden-section search; λ
    on a log grid over 12 decades. Likelihood rather than cross-validation
    because it is exact, smooth and cheap on M energies, and it is the
    criterion whose σ̂² the intervals use. The search runs on at most
    ``search_frames`` frames (eigh is O(M³)).

    Returns
    -------
    EnergyModel
    """
    t0 = time.perf_counter()
    progress = progress or _noop
    if not isinstance(force_model, ForceModel):
        raise ModelError(f"force_model must be a fitted ForceModel, got {type(force_model).__name__}")
    R = _positions(R, force_model.n_atoms)
    m = R.shape[0]
    E = _energies(E, m)
    if m < 3:
        raise ModelError(f"need at least 3 frames with energies to fit the energy GP, got {m}")
    if int(neighbours) < 0:
        raise ModelError(f"neighbours must be >= 0, got {neighbours}")
    if F is not None:
        F = np.asarray(F, dtype=np.float64)
        if F.shape != R.shape:
            raise ModelError(f"F must have the shape of the positions {R.shape}, got {F.shape}")
        if not np.all(np.isfinite(F)):
            raise ModelError("F contains NaN or infinite values")
    neighbours = int(neighbours) if F is not None else 0
    perms = force_model.perms
    G = Geometry.from_positions(R)
    lam_source = "fixed" if lam is not None else "likelihood"
    if isinstance(gamma, str):
        if gamma != "force":
            raise ModelError(f"gamma must be a number, 'force' or None, got {gamma!r}")
        gamma_source = "force model"
        gamma = float(force_model.gamma)
    else:
        gamma_source = "fixed" if gamma is not None else "likelihood"
    search = None
    t_search = 0.0
    if gamma is None or lam is None:
        ts = time.perf_counter()
        ms = max(3, min(m, int(search_frames)))
        sub = np.sort(np.random.default_rng(seed).choice(m, size=ms, replace=False)) if ms < m else np.arange(m)
        search = _search_energy(G.take(sub), E[sub] - np.mean(E[sub]), perms, gamma=gamma,  # centred (see m̂)
                                progress=lambda f, msg: progress(0.8 * f, msg))
        gamma = search["gamma"] if gamma is None else gamma
        lam = search["lam"] if lam is None else lam
        t_search = time.perf_counter() - ts
    gamma, lam = float(gamma), float(lam)
    if not (gamma > 0 and lam >= 0):
        raise ModelError(f"γ must be > 0 and λ >= 0, got γ = {gamma}, λ = {lam}")
    progress(0.85, f"factorising the energy kernel ({m}²)")
    K = energy_covariance(G, G, gamma, perms=perms)
    L, jitter = _cholesky(K, lam, "energy kernel K_XX + λI")
    # m̂ = (1ᵀA⁻¹1)⁻¹ 1ᵀA⁻¹E,  σ̂² = (E − m̂1)ᵀ A⁻¹ (E − m̂1) / M   (method.md)
    ones = np.ones(m)
    a1 = scipy.linalg.cho_solve((L, True), ones, check_finite=False)
    # centred first: absolute energies are ~10⁵ kcal/mol and A⁻¹1 can have large entries of
    # both signs, so 1ᵀA⁻¹E risks cancellation; 1ᵀA⁻¹(E − Ē) does not (same value in exact
    # arithmetic; on the shared MD17 files the two agreed to round-off)
    e0 = float(np.mean(E))
    m_hat = e0 + float(a1 @ (E - e0) / (a1 @ ones))
    alpha = scipy.linalg.cho_solve((L, True), E - m_hat, check_finite=False)
    sigma2 = float((E - m_hat) @ alpha / m)
    if not sigma2 > 0:
        raise ModelError(f"the training energies have no spread (σ̂² = {sigma2:.3g}): cannot fit an energy GP")
    progress(1.0, "done")
    meta = dict(info or {})
    meta.update({
        "version": __version__,
        "model": "energy GP conditioned on predicted forces (method.md 'Energy prediction')",
        "force_mode": force_model.mode,
        "n_train": m,
        "gamma_source": gamma_source,
        "lam_source": lam_source,
        "neighbours": neighbours,
        "hyper": search if search is not None else {"fixed": True},
        "timings": {"search_s": t_search, "total_s": time.perf_counter() - t0},
    })
    return EnergyModel(
        force_model=force_model, R_train=R, E_train=E,
        train_idx=np.arange(m) if train_idx is None else np.asarray(train_idx, np.int64),
        perms=np.asarray(perms, np.int64), gamma=gamma, lam=lam, mean=m_hat, sigma2=sigma2, alpha=alpha,
        jitter=jitter, F_train=F if neighbours else None, neighbours=neighbours, info=meta, _chol=L, _geom=G,
    )
