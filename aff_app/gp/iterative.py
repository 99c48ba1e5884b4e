"""Iterative solver for PE sets whose kernels do not fit in memory (method.md "Iterative path").

The dense fit (``aff_app.gp.force``) builds and factors each PE set's kernel R_i, 3·M·l_i rows
square: benzene's 6-atom sets are 18,000-sided at M = 1000 (2.6 GB) and would be 90,000-sided at
M = 5000 (65 GB). This module solves (R_i + λI) α_i = F_i by preconditioned conjugate gradients
without forming R_i:

* **Matrix-free product** (method.md (27)). Block (a, b) of R_i is (1/S) Σ_q J_aᵀ H(u_abq) J_bq with
  H(u) = c1 I − c2 u uᵀ (eqs. 5–7), so

      (R_i x)_a = (1/S) J_{a,i}ᵀ g_a,   g_a = Σ_{b,q} c1_abq w_bq − c2_abq (u_abq · w_bq) u_abq,
      w_bq = J_{bq,i} x_b,   u_abq = D_a − D(P_q x_b)

  the same sums as the fast mean (eq. 26), with the training frames on both sides: three GEMMs of
  (M × S·M) by (S·M × P_i) per product, P_i the pairs touching the set, and the pair coefficients
  c1, c2 (M × S·M, shared by every set) kept between products when the budget allows.
* **Preconditioner** (method.md (28)): the Nyström approximation of R_i on a subset I of r frames
  (farthest-point sampling), with the block diagonal of what it misses:

      P_i = D_λ + B Bᵀ,   B = R_{:,I} L_I⁻ᵀ,   L_I L_Iᵀ = R_II + λI,
      D_λ = blockdiag_m(R_mm − B_m B_mᵀ) + λI   (3l_i × 3l_i per frame)

  applied by Woodbury through Ĉ = L_D⁻¹ B (L_D L_Dᵀ = D_λ): P⁻¹ = L_D⁻ᵀ [I − Ĉ (I + ĈᵀĈ)⁻¹ Ĉᵀ] L_D⁻¹.
  The inner matrix has eigenvalues ≥ 1, so no 1/λ cancellation. r follows the memory budget.
* **Variance** (method.md (29)): the predictive variance given the subset frames only,
  R(x*, x*) − R_{*,I} (R_II + λI)⁻¹ R_{I,*}, an upper bound of (11) (conditioning on fewer frames
  never lowers a Gaussian variance), exact when I holds every frame. Its scale is calibrated
  against the full model's own errors: q held-out training frames (drawn at random) are left out of
  one extra solve, their forces predicted by the other M − q frames, and σ̂² multiplied by s² so
  that 95% of these residuals lie within ±1.96 sd (split-conformal, method.md (30)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.special
from scipy.linalg.blas import dsyrk, dtrsm

from aff_app.errors import AFFError
from aff_app.gp.descriptors import farthest_point_order, pair_indices
from aff_app.gp.kernels import Geometry, _coefficients, _rho, force_covariance_self, force_covariance_sets

__all__ = [
    "ITERATIVE_LAM_FLOOR",
    "CG_TOL",
    "CG_MAX_ITER",
    "NYSTROM_MAX_SIDE",
    "IterativeError",
    "SetsOperator",
    "NystromPreconditioner",
    "pcg",
    "farthest_point_frames",
    "iterative_memory",
    "choose_subset_frames",
    "fit_iterative",
    "subset_variance",
]

#: Smallest nugget of the iterative path, in units of the kernel variance 5/(3γ²) (method.md
#: "Iterative path"). The dense search goes down to 1e-13, where rMD17's nearly noise-free labels
#: often put λ, and there CG does not converge: on benzene (rMD17, M = 1000, γ = 154 from the
#: unconstrained search, 333 Nyström frames) 17 iterations at 1e-11 (held-out force MAE 0.044
#: kcal/mol/Å), a relative residual still 3.6e-2 after 400 at 1e-13 (the dense fit at 6e-15: 0.026).
#: The cost of the floor is mostly γ's: the search, restricted to λ ≥ the floor, picks a shorter
#: range that suits it (γ = 85 at 1e-12): 42 iterations and MAE 0.0285 (0.0299 at 1e-11, γ = 45).
ITERATIVE_LAM_FLOOR = 1e-12
#: Relative residual ‖F − (R + λI)α‖ / ‖F‖ at which CG stops.
CG_TOL = 1e-8
#: Most CG iterations per set and solve (fewer when the rate so far predicts twice as many, see
#: ``_stalled``) before the nugget is raised LAM_RAISE_FACTOR× (at most LAM_RAISES times), the
#: preconditioner rebuilt and the solve restarted. Tenfold steps: γ was searched for the floor, and a
#: nugget far above it costs accuracy (benzene, M = 500, dense
#: fits at γ = 100: held-out MAE 0.035 at 1e-12, 0.043 at 1e-11, 0.067 at 1e-10).
CG_MAX_ITER = 500
LAM_RAISE_FACTOR = 10.0
LAM_RAISES = 3
#: A solve counts as converged at CONVERGED_FACTOR·tol (the last iterations' rounding).
CONVERGED_FACTOR = 10.0
#: Largest Nyström side 3·r·l_i of one set (its build costs 2·3Ml·side² flops; 6000 at benzene
#: M = 5000: ~6.5e12 flops per set).
NYSTROM_MAX_SIDE = 6000
#: Bound on the temporaries of one block of rows of the matrix-free product (bytes).
BLOCK_BYTES = 64 * 2**20
#: Pair coefficients are kept between products while they take at most this share of the budget.
COEF_BUDGET_SHARE = 0.4
#: Held-out training frames of the calibration (method.md (30)): max(this, M/20), at most M/4.
CALIBRATION_FRAMES = 40


class IterativeError(AFFError, ArithmeticError):
    """The conjugate-gradient solve did not reach its tolerance (message: set, iterations, residual)."""


# -- matrix-free product -----------------------------------------------------------------------------
class SetsOperator:
    """Matrix-free products with the PE sets' kernels R_i (method.md (27)), all sets in one pass.

    Parameters
    ----------
    G : Geometry of the M training frames
    sets : list of int arrays (PE sets)
    perms : (S, N) permutation group of the PS kernel (eq. 7)
    gamma : float, 1/Å
    cache_coefficients : bool
        Keep c1, c2 for all M × S·M frame pairs (16·S·M² bytes) between products; otherwise
        they are recomputed block by block in every product (a square root and an exponential
        per pair).

    Notes
    -----
    The product of set i with a vector costs 6·M·S·M·P_i flops (three GEMMs); the dense kernel's
    2·(3Ml_i)² is fewer flops but needs the kernel in memory.
    """

    def __init__(self, G: Geometry, sets, perms, gamma: float, *, cache_coefficients: bool = True,
                 block_bytes: int = BLOCK_BYTES) -> None:
        self.G = G
        M, N = G.n_frames, G.n_atoms
        perms = np.asarray(perms, dtype=np.int64).reshape(-1, N)
        self.M, self.N, self.S = M, N, perms.shape[0]
        self.gamma = float(gamma)
        self.sets = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sets]
        pi, pj = pair_indices(N)
        identity = np.arange(N)
        copies = [G if np.array_equal(p, identity) else G.permuted(p) for p in perms]
        # descriptors of every permuted training frame, rows (q, m): (S·M, P)
        self.Dall = np.ascontiguousarray(np.concatenate([c.D for c in copies], axis=0))
        self._touch, self._Dt, self._DallT, self._Vsub, self._pos = [], [], [], [], []
        self._pair_a, self._pair_b, self._Vend, self._onehot = [], [], [], []
        for s in self.sets:
            member = np.zeros(N, dtype=bool)
            member[s] = True
            touch = np.flatnonzero(member[pi] | member[pj])  # pairs with an atom of the set (eq. 2)
            self._touch.append(touch)
            self._Dt.append(np.ascontiguousarray(G.D[:, touch]))
            self._DallT.append(np.ascontiguousarray(self.Dall[:, touch]))
            self._pair_a.append(pi[touch])
            self._pair_b.append(pj[touch])
            # atom s[t] of x_b sits at position p⁻¹(s[t]) of the copy P_q x_b (kernels.py docstring)
            pos = [np.argsort(p)[s] for p in perms]
            self._pos.append(pos)
            self._Vsub.append([np.ascontiguousarray(c.V[:, ps]) for c, ps in zip(copies, pos)])  # (M, l, N, 3)
            # J_aᵀ g: column c (pair (a, b)) adds −V[a, b] g_c to atom a when a is in the set, −V[b, a] g_c to b
            local = {int(a): t for t, a in enumerate(s)}
            ends = []
            for c, pr in enumerate(touch):
                a, b = int(pi[pr]), int(pj[pr])
                if a in local:
                    ends.append((c, local[a], a, b))
                if b in local:
                    ends.append((c, local[b], b, a))
            e = np.asarray(ends, dtype=np.int64).reshape(-1, 4)
            self._Vend.append((e[:, 0], np.ascontiguousarray(-G.V[:, e[:, 2], e[:, 3]])))  # (M, E, 3)
            oh = np.zeros((e.shape[0], s.size))
            oh[np.arange(e.shape[0]), e[:, 1]] = 1.0
            self._onehot.append(oh)
        self._widths = [t.size for t in self._touch]
        self._offsets = np.concatenate([[0], np.cumsum(self._widths)])
        sm = self.S * M
        rows = max(1, int(block_bytes // max(1, 8 * sm * 3)))
        self.blocks = [slice(a, min(a + rows, M)) for a in range(0, M, rows)]
        self._coef = [self._coefficients(b) for b in self.blocks] if cache_coefficients else None
        self.n_products = 0

    @property
    def coef_bytes(self) -> int:
        return 0 if self._coef is None else int(sum(c1.nbytes + c2.nbytes for c1, c2 in self._coef))

    def _coefficients(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """c1, c2 (eq. 6) of training frames ``rows`` against every permuted training frame: (rows, S·M)."""
        _, c1, c2 = _coefficients(_rho(self.G.D[rows], self.Dall), self.gamma)
        return c1, c2

    def _w(self, k: int, x: np.ndarray) -> np.ndarray:
        """w_bq = J_{bq,i} x_b on the set's touched pairs, rows (q, b): (S·M, P_i)."""
        M, N = self.M, self.N
        x = x.reshape(M, -1, 3)
        a, b = self._pair_a[k], self._pair_b[k]
        W = np.empty((self.S * M, a.size))
        Y = np.zeros((M, N, N))
        for q, (Vs, pos) in enumerate(zip(self._Vsub[k], self._pos[k])):
            Y[:, pos] = np.einsum("mlnc,mlc->mln", Vs, x)  # V[a, n]·x_a, zero unless atom a is in the set
            # J[p = (a, b), a] = −V[a, b], J[p, b] = −V[b, a] (eq. 2): w_p = −(Y[a, b] + Y[b, a])
            np.add(Y[:, a, b], Y[:, b, a], out=W[q * M:(q + 1) * M])
            Y[:, pos] = 0.0
        W *= -1.0
        return W

    def matvec(self, xs: dict) -> dict:
        """R_i x_i for the sets given: ``{set index: (3·M·l_i,) vector}`` → the same keys, kernel units."""
        keys = sorted(xs)
        if not keys:
            return {}
        self.n_products += 1
        Ws = {k: self._w(k, np.asarray(xs[k], dtype=np.float64)) for k in keys}
        dw = {k: np.einsum("kp,kp->k", self._DallT[k], Ws[k]) for k in keys}  # D_bq · w_bq
        Wcat = np.ascontiguousarray(np.concatenate([Ws[k] for k in keys], axis=1))
        offs = np.concatenate([[0], np.cumsum([Ws[k].shape[1] for k in keys])])
        g = {k: np.empty((self.M, Ws[k].shape[1])) for k in keys}
        for bi, rows in enumerate(self.blocks):
            c1, c2 = self._coef[bi] if self._coef is not None else self._coefficients(rows)
            G1 = c1 @ Wcat  # Σ c1 w, every set's columns at once
            for t, k in enumerate(keys):
                Dt = self._Dt[k][rows]
                T = Dt @ Ws[k].T  # D_a · w_bq
                T -= dw[k][None]  # u · w
                T *= c2
                # g = Σ c1 w − Σ c2 (u·w) D_a + Σ c2 (u·w) D_bq
                g[k][rows] = G1[:, offs[t]:offs[t + 1]] - T.sum(axis=1)[:, None] * Dt + T @ self._DallT[k]
        out = {}
        for k in keys:
            cols, Vend = self._Vend[k]
            contrib = Vend * g[k][:, cols, None]  # (M, E, 3)
            y = np.einsum("mec,el->mlc", contrib, self._onehot[k]) / self.S
            out[k] = y.reshape(-1)
        return out


def frame_diagonal(G: Geometry, sets, perms, gamma: float) -> list[np.ndarray]:
    """Diagonal frame blocks of each R_i: (M, 3l_i, 3l_i) per set (eq. 5/7 of a frame with itself)."""
    blocks = force_covariance_self(G, gamma, sets, perms=perms)
    return [b.reshape(b.shape[0], 3 * b.shape[1], 3 * b.shape[1]) for b in blocks]


# -- preconditioner ----------------------------------------------------------------------------------
def farthest_point_frames(D: np.ndarray, r: int, *, exclude=None, seed: int = 0) -> np.ndarray:
    """``r`` frames spread over descriptor space (farthest-point sampling), sorted; never ``exclude``."""
    m = D.shape[0]
    allowed = np.ones(m, dtype=bool)
    if exclude is not None:
        allowed[np.asarray(exclude, dtype=np.int64)] = False
    cand = np.flatnonzero(allowed)
    r = int(min(r, cand.size))
    if r <= 0:
        return np.zeros(0, dtype=np.int64)
    first = int(np.random.default_rng(seed).integers(cand.size))
    return np.sort(cand[farthest_point_order(D[cand], r, first)])


def _chol_jitter(A: np.ndarray, what: str) -> tuple[np.ndarray, float]:
    """Lower Cholesky factor (Fortran order) of A, with a bounded escalating jitter; (L, jitter)."""
    base = float(np.mean(np.diag(A))) if A.size else 1.0
    jitter = 0.0
    for step in range(5):
        try:
            B = A if jitter == 0.0 else A + jitter * np.eye(A.shape[0])
            return np.asfortranarray(scipy.linalg.cholesky(B, lower=True, check_finite=False)), jitter
        except np.linalg.LinAlgError:
            jitter = base * 10.0 ** (-12 + 2 * step)
    raise IterativeError(f"Cholesky of {what} (size {A.shape[0]}) failed even with jitter {jitter:.3g}")


class NystromPreconditioner:
    """P = D_λ + B Bᵀ of one PE set (method.md (28)), applied by Woodbury.

    Parameters
    ----------
    G : Geometry of the M training frames
    atoms : the set's atoms;  perms : (S, N);  gamma : 1/Å;  lam : the nugget λ (kernel units)
    subset : int array of r frame indices (may be empty: block-Jacobi D_λ only)
    diag : (M, 3l, 3l) diagonal frame blocks of R_i (:func:`frame_diagonal`)

    Attributes
    ----------
    L_I : (3rl, 3rl) lower factor of R_II + λI (Fortran order), or None when r = 0: the subset
        GP's factor, reused by the predictive variance (eq. 29)
    post : (M, 3l, 3l) R_mm − B_m B_mᵀ, the posterior covariance of each training frame's
        forces given the subset frames (kernel units)
    nbytes : memory held
    """

    def __init__(self, G: Geometry, atoms, perms, gamma: float, lam: float, subset, diag: np.ndarray) -> None:
        M = G.n_frames
        atoms = np.asarray(atoms, dtype=np.int64)
        w = 3 * atoms.size
        self.M, self.w, self.lam = M, w, float(lam)
        self.subset = np.asarray(subset, dtype=np.int64)
        r = self.subset.size
        self.jitter = 0.0
        if r:
            nI = w * r
            C = force_covariance_sets(G, G.take(self.subset), gamma, [atoms], perms=perms)[0]  # (n, nI)
            KII = np.array(C.reshape(M, w, nI)[self.subset].reshape(nI, nI))
            KII[np.diag_indices(nI)] += lam
            self.L_I, self.jitter = _chol_jitter(KII, "the Nyström subset kernel R_II + λI")
            del KII
            # B = C L_I⁻ᵀ in place: C's memory read as Fortran is Cᵀ, and L_I X = Cᵀ gives X = Bᵀ
            Bt = dtrsm(1.0, self.L_I, C.T, side=0, lower=1, trans_a=0, diag=0, overwrite_b=1)
            if not np.shares_memory(Bt, C):  # pragma: no cover - dtrsm copied
                C = np.ascontiguousarray(Bt.T)
            Bm = C.reshape(M, w, nI)
            post = diag - np.einsum("mik,mjk->mij", Bm, Bm)
        else:
            C = np.zeros((M * w, 0))
            self.L_I = None
            post = np.array(diag)
        self.post = 0.5 * (post + post.transpose(0, 2, 1))
        # D_λ = post + λI per frame; its factor L_D and the inverse factor, batched
        Dl = self.post + lam * np.eye(w)[None]
        try:
            LD = np.linalg.cholesky(Dl)
        except np.linalg.LinAlgError:
            scale = float(np.mean(np.trace(diag, axis1=1, axis2=2))) / w
            ev, Q = np.linalg.eigh(Dl)
            Dl = np.einsum("mij,mj,mkj->mik", Q, np.maximum(ev, lam + 1e-12 * scale), Q)
            LD = np.linalg.cholesky(Dl)
        self.LDinv = np.linalg.inv(LD)  # (M, w, w), lower triangular
        # Ĉ = L_D⁻¹ B, frame block by frame block (in place, chunks of frames)
        Cm = C.reshape(M, w, -1)
        step = max(1, int(2**26 // max(1, 8 * w * max(1, C.shape[1]))))
        for a in range(0, M, step):
            Cm[a:a + step] = np.matmul(self.LDinv[a:a + step], Cm[a:a + step])
        self.Chat = C
        if C.shape[1]:
            gram = dsyrk(1.0, C.T, trans=0, lower=1)  # ĈᵀĈ (lower triangle)
            gram = np.tril(gram) + np.tril(gram, -1).T
            self.gram = gram
            inner = gram + np.eye(gram.shape[0])
            self._inner = scipy.linalg.cho_factor(inner, lower=True, check_finite=False)
        else:
            self.gram = np.zeros((0, 0))
            self._inner = None
        self._inner_masked = None

    @property
    def nbytes(self) -> int:
        n = self.Chat.nbytes + self.LDinv.nbytes + self.post.nbytes + self.gram.nbytes
        if self.L_I is not None:
            n += self.L_I.nbytes
        if self._inner is not None:
            n += self._inner[0].nbytes
        return int(n)

    def mask_frames(self, frames) -> None:
        """Restrict to the system without ``frames`` (held out): the inner matrix loses their rows of Ĉ."""
        frames = np.asarray(frames, dtype=np.int64)
        if self._inner is None or frames.size == 0:
            self._inner_masked = None
            return
        Ch = self.Chat.reshape(self.M, self.w, -1)[frames].reshape(-1, self.Chat.shape[1])
        inner = self.gram - Ch.T @ Ch + np.eye(self.gram.shape[0])
        self._inner_masked = scipy.linalg.cho_factor(inner, lower=True, check_finite=False)

    def unmask(self) -> None:
        self._inner_masked = None

    def apply(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """P⁻¹ x = L_D⁻ᵀ [I − Ĉ (I + ĈᵀĈ)⁻¹ Ĉᵀ] L_D⁻¹ x; ``mask`` (M,) bool: frames kept (others zero)."""
        M, w = self.M, self.w
        v = np.einsum("mij,mj->mi", self.LDinv, x.reshape(M, w))
        if mask is not None:
            v[~mask] = 0.0
        inner = self._inner_masked if mask is not None and self._inner_masked is not None else self._inner
        if inner is not None:
            t = self.Chat.T @ v.reshape(-1)
            t = scipy.linalg.cho_solve(inner, t, check_finite=False)
            v -= (self.Chat @ t).reshape(M, w)
            if mask is not None:
                v[~mask] = 0.0
        return np.einsum("mji,mj->mi", self.LDinv, v).reshape(-1)


# -- conjugate gradients -----------------------------------------------------------------------------
@dataclass
class CGResult:
    """Per-set outcome of :func:`pcg`: solutions, iterations and final relative residuals."""

    x: dict
    iterations: dict
    residual: dict
    seconds: float = 0.0
    history: dict = field(default_factory=dict)


def pcg(op: SetsOperator, precs: dict, bs: dict, lam: float, *, tol: float = CG_TOL, maxiter: int = CG_MAX_ITER,
        mask: np.ndarray | None = None, x0: dict | None = None, progress=None) -> CGResult:
    """Preconditioned CG on (R_i + λI) x_i = b_i for every set in ``bs``, the sets advanced in lockstep.

    One product per iteration serves every set still running (the pair coefficients are read
    once). ``precs[k]`` has ``apply(x, mask)``; ``mask`` (M,) bool restricts every system to the
    frames it keeps (the held-out frames of the calibration). Stops each set at
    ‖b − A x‖ ≤ tol ‖b‖ or after ``maxiter`` iterations (no error: the caller checks ``residual``).
    """
    t0 = time.perf_counter()
    w = {k: bs[k].size // op.M for k in bs}

    def masked(k, v):
        if mask is None:
            return v
        v = v.reshape(op.M, w[k])
        v[~mask] = 0.0
        return v.reshape(-1)

    def A(vs: dict) -> dict:
        out = op.matvec(vs)
        return {k: masked(k, out[k] + lam * vs[k]) for k in vs}

    b = {k: masked(k, np.array(bs[k], dtype=np.float64)) for k in bs}
    bn = {k: float(np.linalg.norm(b[k])) or 1.0 for k in b}
    x = {k: (np.zeros_like(b[k]) if x0 is None or k not in x0 else masked(k, np.array(x0[k]))) for k in b}
    if x0 is not None and any(np.any(x[k]) for k in x):
        Ax = A(x)
        r = {k: b[k] - Ax[k] for k in b}
    else:
        r = {k: b[k].copy() for k in b}
    z = {k: masked(k, precs[k].apply(r[k], mask)) for k in b}
    p = {k: z[k].copy() for k in b}
    rz = {k: float(r[k] @ z[k]) for k in b}
    res = {k: float(np.linalg.norm(r[k])) / bn[k] for k in b}
    its = {k: 0 for k in b}
    hist = {k: [res[k]] for k in b}
    active = [k for k in b if res[k] > tol]
    while active:
        Ap = A({k: p[k] for k in active})
        for k in list(active):
            pAp = float(p[k] @ Ap[k])
            if not pAp > 0:  # breakdown (only at rounding level): stop this set here
                active.remove(k)
                continue
            a = rz[k] / pAp
            x[k] += a * p[k]
            r[k] -= a * Ap[k]
            its[k] += 1
            res[k] = float(np.linalg.norm(r[k])) / bn[k]
            hist[k].append(res[k])
            if res[k] <= tol or its[k] >= maxiter or _stalled(hist[k], tol, maxiter):
                active.remove(k)
                continue
            zk = masked(k, precs[k].apply(r[k], mask))
            rz_new = float(r[k] @ zk)
            p[k] = zk + (rz_new / rz[k]) * p[k]
            rz[k] = rz_new
        if progress is not None and active:
            worst = max(res[k] for k in active)
            progress(min(1.0, np.log(max(worst, tol)) / np.log(tol)) if tol < 1 else 1.0,
                     f"CG iteration {max(its.values())}, residual {worst:.1e}")
    return CGResult(x=x, iterations=its, residual=res, seconds=time.perf_counter() - t0, history=hist)


def _stalled(hist: list, tol: float, maxiter: int) -> bool:
    """True when, at every 50th iteration, the mean rate so far predicts more than 2·maxiter iterations.

    CG's residual falls at a rate set by the preconditioned condition number; a set that has
    reduced its residual only from ``hist[0]`` to ``hist[-1]`` in k iterations needs about
    k·log(tol/hist[0])/log(hist[-1]/hist[0]) in all. Stopping it early saves most of a hopeless
    solve before the nugget is raised (the rate usually improves later: hence the factor 2).
    """
    k = len(hist) - 1
    if k < 50 or k % 50:
        return False
    drop = np.log(max(hist[-1], 1e-300) / hist[0])
    if drop >= 0:
        return True
    return k * np.log(tol / hist[0]) / drop > 2 * maxiter


# -- memory and subset size --------------------------------------------------------------------------
def iterative_memory(n_train: int, set_sizes, n_perms: int, n_atoms: int, r: int, *, cache_coefficients: bool) -> int:
    """Bytes the iterative fit holds at once with r Nyström frames (method.md "Iterative path").

    Every set's preconditioner (Ĉ: 3Ml × 3rl; three 3rl-sided matrices: L_I, ĈᵀĈ, its factor;
    per-frame 3l × 3l blocks), the pair coefficients when kept (16·S·M² bytes), the permuted
    training geometry (S·M·N²·3 doubles, twice), the row-block temporaries, ten vectors per set
    and, while a set's preconditioner is built, one copy of R_II and the assembly's chunks.
    """
    m, s, n = int(n_train), int(n_perms), int(n_atoms)
    sizes = [int(l) for l in set_sizes]
    pre = sum(8 * (3 * m * l) * (3 * r * l) + 3 * 8 * (3 * r * l) ** 2 + 3 * 8 * m * (3 * l) ** 2 for l in sizes)
    coef = 16 * s * m * m if cache_coefficients else 0
    geom = 2 * 8 * s * m * n * n * 3 + 8 * s * m * n * (n - 1) // 2
    vectors = 10 * 8 * 3 * m * sum(sizes) + 8 * s * m * 2 * n * (n - 1) // 2
    lmax = max(sizes)
    chunk = min(192 * 2**20, 4 * 8 * (3 * m * lmax) * (3 * r * lmax))  # the assembly's temporaries
    build = 8 * (3 * r * lmax) ** 2 + chunk if r else 0
    blocks = min(3 * BLOCK_BYTES, 3 * 8 * m * s * m)  # one row block of T and of c1, c2
    return int(pre + coef + geom + vectors + blocks + build)


def choose_subset_frames(n_train: int, set_sizes, n_perms: int, n_atoms: int, budget: int, *,
                         held_out: int = 0, max_side: int = NYSTROM_MAX_SIDE) -> tuple[int, bool]:
    """(r, cache_coefficients): the most Nyström frames within ``budget`` and ``max_side``.

    The coefficients are kept when they take at most COEF_BUDGET_SHARE of the budget; r is the
    largest number of frames (at most M − ``held_out``) whose :func:`iterative_memory` fits.
    r = 0 (block-Jacobi only) when not even one frame fits.
    """
    m = int(n_train)
    cache = 16 * int(n_perms) * m * m <= COEF_BUDGET_SHARE * budget
    hi = max(0, min(m - int(held_out), int(max_side) // (3 * max(int(l) for l in set_sizes))))
    lo = 0
    if iterative_memory(m, set_sizes, n_perms, n_atoms, hi, cache_coefficients=cache) <= budget:
        return hi, cache
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if iterative_memory(m, set_sizes, n_perms, n_atoms, mid, cache_coefficients=cache) <= budget:
            lo = mid
        else:
            hi = mid
    return lo, cache


# -- the fit -----------------------------------------------------------------------------------------
@dataclass
class IterativeFit:
    """What :func:`fit_iterative` yields for :class:`~aff_app.gp.force.ForceModel`.

    alpha : list of (3Ml_i,) (R_i + λI)⁻¹ F_i;  sigma2 : list of σ̂_i² (eq. 9, before calibration);
    lam : the nugget used (≥ the floor);  subset : (r,) Nyström frames;  factors : list of L_I;
    info : the record's ``solver`` entry (iterations, residuals, floor, calibration, seconds)
    """

    alpha: list
    sigma2: list
    lam: float
    subset: np.ndarray
    factors: list
    jitter: list
    calibration: dict
    info: dict


def fit_iterative(G: Geometry, F: np.ndarray, sets, perms, gamma: float, lam: float, *, budget: int,
                  tol: float = CG_TOL, maxiter: int = CG_MAX_ITER, calibrate: bool = True,
                  n_subset: int | None = None, lam_floor: float = ITERATIVE_LAM_FLOOR, seed: int = 0,
                  progress=None) -> IterativeFit:
    """Solve every PE set's system by preconditioned CG (method.md "Iterative path").

    Parameters
    ----------
    G : Geometry of the M training frames;  F : (M, N, 3) forces, kcal/mol/Å
    sets, perms, gamma : as the dense fit;  lam : the search's nugget, raised to
        ``lam_floor``·5/(3γ²) when below it
    budget : bytes the fit may hold
    tol, maxiter : CG stopping rule (relative residual)
    calibrate : scale σ̂² on held-out training frames (eq. 30); False: σ̂² of eq. (9)
    n_subset : Nyström frames r (default: the most the budget and NYSTROM_MAX_SIDE allow)

    Raises
    ------
    IterativeError
        A set's CG stopped above 1000·tol after ``maxiter`` iterations.
    """
    t0 = time.perf_counter()
    progress = progress or (lambda f, m: None)
    M, N = G.n_frames, G.n_atoms
    perms = np.asarray(perms, dtype=np.int64).reshape(-1, N)
    sizes = [s.size for s in sets]
    floor = lam_floor * 5.0 / (3.0 * gamma**2)
    lam_used = max(float(lam), floor)
    q = min(max(CALIBRATION_FRAMES, M // 20), M // 4) if calibrate and M >= 8 else 0
    rng = np.random.default_rng(seed + 7919)
    held = np.sort(rng.choice(M, size=q, replace=False)) if q else np.zeros(0, dtype=np.int64)
    r_budget, cache = choose_subset_frames(M, sizes, len(perms), N, budget, held_out=q)
    r = r_budget if n_subset is None else int(min(n_subset, M - q))
    subset = farthest_point_frames(G.D, r, exclude=held, seed=seed)
    progress(0.0, f"matrix-free kernels of {len(sets)} PE sets, {subset.size} Nyström frames")
    tb = time.perf_counter()
    op = SetsOperator(G, sets, perms, gamma, cache_coefficients=cache)
    diag = frame_diagonal(G, sets, perms, gamma)
    t_build = time.perf_counter() - tb
    ys = {k: F[:, s, :].reshape(-1).copy() for k, s in enumerate(sets)}
    calibration = {"method": None, "scale": 1.0}
    raised = []  # (λ, iterations, residual) of every attempt that did not converge
    x0 = None
    cg = None
    for attempt in range(LAM_RAISES + 1):
        tb = time.perf_counter()
        precs = {}
        for k, s in enumerate(sets):
            precs[k] = NystromPreconditioner(G, s, perms, gamma, lam_used, subset, diag[k])
            progress(0.3 * (k + 1) / len(sets), f"preconditioner of PE set {k + 1}/{len(sets)} (λ = {lam_used:.3g})")
        t_build += time.perf_counter() - tb
        held_cg = None
        if q:
            mask = np.ones(M, dtype=bool)
            mask[held] = False
            for k in precs:
                precs[k].mask_frames(held)
            held_cg = pcg(op, precs, ys, lam_used, tol=tol, maxiter=maxiter, mask=mask, x0=x0,
                          progress=lambda f, m: progress(0.3 + 0.3 * f, "held-out solve: " + m))
            for k in precs:
                precs[k].unmask()
            x0 = held_cg.x
            if max(held_cg.residual.values()) > CONVERGED_FACTOR * tol and attempt < LAM_RAISES:
                raised.append((lam_used, max(held_cg.iterations.values()), max(held_cg.residual.values())))
                lam_used *= LAM_RAISE_FACTOR
                x0 = None  # a solution at a 10× smaller λ is a poor start (α grows as λ shrinks)
                continue
        cg = pcg(op, precs, ys, lam_used, tol=tol, maxiter=maxiter, x0=x0,
                 progress=lambda f, m: progress(0.6 + 0.35 * f, m))
        x0 = cg.x
        if max(cg.residual.values()) <= CONVERGED_FACTOR * tol:
            break
        raised.append((lam_used, max(cg.iterations.values()), max(cg.residual.values())))
        if attempt < LAM_RAISES:
            lam_used *= LAM_RAISE_FACTOR
            x0 = None
    else:
        k = int(max(cg.residual, key=cg.residual.get))
        raise IterativeError(
            f"conjugate gradients on PE set {k} (side {ys[k].size}) stopped at relative residual "
            f"{cg.residual[k]:.2e} after {cg.iterations[k]} iterations even with λ raised to {lam_used:.3g}: "
            "raise λ or the iteration limit, or give the fit more memory for a larger preconditioner")
    pred = op.matvec(held_cg.x) if held_cg is not None else None  # held frames' rows: R_{C,−C} α_{−C}
    alpha = [cg.x[k] for k in range(len(sets))]
    sigma2 = [float(ys[k] @ alpha[k]) / ys[k].size for k in range(len(sets))]  # eq. (9)
    if q:
        z = []
        for k in range(len(sets)):
            w = 3 * sets[k].size
            resid = (ys[k].reshape(M, w) - pred[k].reshape(M, w))[held].reshape(-1)
            var = np.einsum("mii->mi", precs[k].post[held]).reshape(-1) * sigma2[k]
            z.append(np.abs(resid) / np.sqrt(np.maximum(var, 1e-300)))
        zz = np.concatenate(z)
        zz = zz[np.isfinite(zz)]
        z95 = float(scipy.special.ndtri(0.975))
        scale = float(np.quantile(zz, 0.95) / z95) if zz.size else 1.0
        if np.isfinite(scale) and scale > 0:
            calibration = {"method": "held_out", "scale": scale, "frames": int(q),
                           "loo_coverage_before": float(np.mean(zz <= z95))}
    info = {
        "method": "iterative",
        "lam_search": float(lam),
        "lam_floor": float(floor),
        "lam_floor_rel": float(lam_floor),
        "lam": lam_used,
        "tol": float(tol),
        "iterations": [int(cg.iterations[k]) for k in range(len(sets))],
        "residuals": [float(cg.residual[k]) for k in range(len(sets))],
        "held_out_iterations": None if held_cg is None else [int(held_cg.iterations[k]) for k in range(len(sets))],
        "raised": [[float(a), int(b), float(c)] for a, b, c in raised],
        "nystrom_frames": int(subset.size),
        "nystrom_sides": [3 * int(subset.size) * int(l) for l in sizes],
        "coefficients_cached": bool(cache),
        "held_out_frames": int(q),
        "memory_bytes": int(op.coef_bytes + sum(p.nbytes for p in precs.values())),
        "products": int(op.n_products),
        "precondition_s": t_build,
        "cg_s": cg.seconds + (0.0 if held_cg is None else held_cg.seconds),
        "seconds": time.perf_counter() - t0,
    }
    progress(1.0, f"CG converged in {max(info['iterations'])} iterations")
    return IterativeFit(alpha=alpha, sigma2=sigma2, lam=lam_used, subset=subset,
                        factors=[p.L_I for p in precs.values()], jitter=[p.jitter for p in precs.values()],
                        calibration=calibration, info=info)


def subset_factors(G: Geometry, sets, perms, gamma: float, lam: float, subset) -> tuple[list, list]:
    """L_I of every set (the subset GP's factor of R_II + λI) and its jitter, rebuilt after a load."""
    GI = G.take(np.asarray(subset, dtype=np.int64))
    Ks = force_covariance_sets(GI, GI, gamma, sets, perms=perms)
    out, jit = [], []
    for K in Ks:
        K[np.diag_indices_from(K)] += lam
        L, j = _chol_jitter(K, "the Nyström subset kernel R_II + λI")
        out.append(L)
        jit.append(j)
    return out, jit


def subset_variance(L_I: np.ndarray, Kstar: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Posterior covariance given the subset frames (eq. 29), per atom: (b, l, 3, 3) kernel units.

    L_I : (3rl, 3rl) lower factor of R_II + λI, or None (no subset: the prior);
    Kstar : (3bl, 3rl) rows R_{*,I};  prior : (b, l, 3, l, 3) R(x*, x*).
    """
    b, l = prior.shape[0], prior.shape[1]
    idx = np.arange(l)
    prior_blocks = prior[:, idx, :, idx, :].transpose(1, 0, 2, 3)
    if L_I is None:
        return np.array(prior_blocks)
    v = scipy.linalg.solve_triangular(L_I, Kstar.T, lower=True, check_finite=False).reshape(-1, b, l, 3)
    return prior_blocks - np.einsum("nfic,nfid->ficd", v, v)
