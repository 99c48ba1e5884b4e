"""Fast posterior mean of a force GP, for MD: one geometry at a time, no per-call kernel blocks.

method.md "Fast prediction" (eq. 26). The mean of PE set s at x* is (eqs. 5, 7, 10)

    F̂_s(x*) = (1/S) Σ_{m,q} J*_sᵀ H(u_mq) J_mq,s α_m,     H(u) = c1 I − c2 u uᵀ,  u_mq = D* − D(P_q x_m)

where J_mq,s are the Jacobian columns of the set's atoms in the permuted copy P_q x_m and α_m the
frame-m slice of (R_s + λI)⁻¹ F_s. The right-hand vectors w_mq = J_mq,s α_m (one per training frame
and permutation, in descriptor space) do not depend on x*, so they are formed once:

    F̂_s(x*) = (1/S) J*_sᵀ g_s,   g_s = Σ_{m,q} c1_mq w_mq − c2_mq (u_mq · w_mq) u_mq          (26)

A prediction is then a few passes over the (M·S × P_s) matrix of the w_mq — P_s, the pairs that
touch the set (w is zero on the others because J has two non-zero rows per pair; the sets are
unions of orbits of the group, so the same pairs for every permutation) — instead of building the
(3 l × 3 M l) kernel rows of every set and permutation. Uracil, M = 1000: 12 sets × 1000 × 11
numbers per pass; aspirin, M = 1000, S = 6: Σ_s P_s ≤ 2P = 420 columns of 6000 rows.

The same vectors give the energy of an integrated model (eq. 4: cov(E*, F_m) α = −c1 u·w, all atoms
one set): :meth:`MeanPredictor.energy_terms`.
"""

from __future__ import annotations

import numpy as np

from aff_app.gp.descriptors import pair_indices
from aff_app.gp.kernels import Geometry, _coefficients

__all__ = ["MeanPredictor"]


class MeanPredictor:
    """The precomputed right-hand vectors of eq. (26) for a fitted force GP.

    Parameters
    ----------
    R_train : (M, N, 3) Å
    pe_sets : list of int arrays
    perms : (S, N) the permutation group of the PS kernel (eq. 7)
    gamma : float, 1/Å
    alpha : list of (3·M·l_s,) arrays, (R_s + λI)⁻¹ F_s in (frame, atom of the set, component) order

    Notes
    -----
    Memory: 16 bytes per training frame, permutation and touched pair of each set, and 8 per
    training frame, permutation and pair (uracil M = 1000: 2.6 MB; aspirin M = 1200, S = 6: about 80 MB).
    """

    def __init__(self, R_train, pe_sets, perms, gamma: float, alpha) -> None:
        G = Geometry.from_positions(np.asarray(R_train, dtype=np.float64))
        M, N = G.n_frames, G.n_atoms
        perms = np.asarray(perms, dtype=np.int64).reshape(-1, N)
        self.n_atoms = N
        self.gamma = float(gamma)
        self.n_perms = perms.shape[0]
        pi, pj = pair_indices(N)
        self._pi, self._pj = pi, pj
        self.sets = [np.asarray(s, dtype=np.int64).reshape(-1) for s in pe_sets]
        copies = [G if np.array_equal(p, np.arange(N)) else G.permuted(p) for p in perms]
        # descriptors of every permuted training frame, rows (q, m): (S·M, P)
        self.D = np.ascontiguousarray(np.concatenate([c.D for c in copies], axis=0))
        self._D_sq = np.einsum("kp,kp->k", self.D, self.D)
        self._W, self._touch = [], []
        for s, a in zip(self.sets, alpha):
            l = s.size
            alpha_m = np.asarray(a, dtype=np.float64).reshape(M, l, 3)
            member = np.zeros(N, dtype=bool)
            member[s] = True
            touch = np.flatnonzero(member[pi] | member[pj])  # pairs with an atom of the set
            blocks = []
            for p, c in zip(perms, copies):
                # atom s[t] of x_m sits at position p⁻¹(s[t]) of the copy P_q x_m (kernels.py docstring)
                A = np.zeros((M, N, 3))
                A[:, np.argsort(p)[s]] = alpha_m
                Y = np.einsum("mabc,mac->mab", c.V, A)  # V[a,b]·α_a: zero unless atom a is in the set
                # J[p=(a,b), a] = −V[a,b], J[p, b] = −V[b,a] (eq. 2): w_p = −(Y[a,b] + Y[b,a])
                blocks.append(-(Y[:, pi[touch], pj[touch]] + Y[:, pj[touch], pi[touch]]))
            self._W.append(np.concatenate(blocks, axis=0))  # (S·M, P_s)
            self._touch.append(touch)
        # every set's columns side by side, so one prediction is a handful of BLAS calls whatever the
        # number of sets (uracil has 12: a loop over them cost more than the arithmetic)
        self._col_set = np.concatenate([np.full(t.size, k) for k, t in enumerate(self._touch)])
        self._cols = np.arange(self._col_set.size)
        self._touch_cat = np.concatenate(self._touch)
        self._W_cat = np.ascontiguousarray(np.concatenate(self._W, axis=1))  # (S·M, C)
        self._DT_cat = np.ascontiguousarray(self.D[:, self._touch_cat])
        # D_mq · w_mq per set, for u·w = D*·w − D_mq·w: (S·M, n_sets)
        self._Dw = np.stack([np.einsum("kp,kp->k", self.D[:, t], W) for t, W in zip(self._touch, self._W)], axis=1)
        # F*_i = Σ_p J*[p, i] g_p (eq. 2): column c (pair (a, b) of set k) adds −V*[a, b] g_c to atom a when a is
        # in set k, and −V*[b, a] g_c to atom b when b is
        ends = []
        for c, (k, pair) in enumerate(zip(self._col_set, self._touch_cat)):
            a, b = int(pi[pair]), int(pj[pair])
            if a in set(self.sets[k].tolist()):
                ends.append((c, a, b))
            if b in set(self.sets[k].tolist()):
                ends.append((c, b, a))
        e = np.asarray(ends, dtype=np.int64).reshape(-1, 3)
        self._end_col, self._end_atom, self._end_other = e[:, 0], e[:, 1], e[:, 2]
        del self._W  # kept side by side in _W_cat

    @property
    def nbytes(self) -> int:
        return int(self.D.nbytes + self._W_cat.nbytes + self._DT_cat.nbytes)

    def _coefficients(self, Dstar: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """k, c1, c2 (eq. 6) of every (test frame, training frame·permutation) pair: (B, S·M) each."""
        # ρ² = |D*|² + |D_mq|² − 2 D*·D_mq (one product): its rounding near ρ = 0 (1e-8 relative) does
        # not matter, c1 and c2 are flat there (direct differences gave the same forces, at 3× the time)
        r2 = np.einsum("bp,bp->b", Dstar, Dstar)[:, None] + self._D_sq[None] - 2.0 * (Dstar @ self.D.T)
        return _coefficients(np.sqrt(np.maximum(r2, 0.0)), self.gamma)

    def forces(self, R) -> np.ndarray:
        """Posterior mean forces (eq. 26), shape (B, N, 3), kcal/mol/Å, for R (B, N, 3) or (N, 3) Å.

        The products are a few MB and memory-bound: a caller that predicts frame after frame should cap
        BLAS at one thread around its loop (``run_md`` does), since a second thread only spin-waits
        (uracil M = 1000 on a busy two-core machine: 31 ms a frame with two BLAS threads, 0.2 ms with
        one), and capping it here, call by call, cost 0.1 ms of a 0.4 ms frame.
        """
        R = np.asarray(R, dtype=np.float64)
        if R.ndim == 2:
            R = R[None]
        Gs = Geometry.from_positions(R)
        _, c1, c2 = self._coefficients(Gs.D)
        B, N, K = R.shape[0], self.n_atoms, len(self.sets)
        out = np.zeros((B, N, 3))
        cols, col_set = self._cols, self._col_set
        for b in range(B):
            Dc = Gs.D[b, self._touch_cat]  # D* on every set's touched pairs, (C,)
            pick = np.zeros((cols.size, K))
            pick[cols, col_set] = Dc
            cz = c2[b][:, None] * (self._W_cat @ pick - self._Dw)  # c2 (u·w) per row and set, (S·M, K)
            # g = Σ c1 w − Σ c2 (u·w) (D* − D_mq), every set's columns at once
            g = c1[b] @ self._W_cat - cz.sum(axis=0)[col_set] * Dc + (cz.T @ self._DT_cat)[col_set, cols]
            g /= self.n_perms
            contrib = -Gs.V[b, self._end_atom, self._end_other] * g[self._end_col][:, None]  # (E, 3)
            for c in range(3):
                out[b, :, c] = np.bincount(self._end_atom, weights=contrib[:, c], minlength=N)
        return out

    def energy(self, R) -> np.ndarray:
        """The integrated energy Σ_m cov(E*, F_m) α_m of a model with one set of all atoms, (B,) kcal/mol.

        eq. (4): cov(E*, F_mq) = −c1 J_mqᵀ u, so the sum is −(1/S) Σ_{m,q} c1_mq (u_mq · w_mq)
        (without the model's constant offset).
        """
        if len(self.sets) != 1 or self.sets[0].size != self.n_atoms:
            raise ValueError("the integrated energy needs a model whose one set holds every atom (GDML/sGDML)")
        R = np.asarray(R, dtype=np.float64)
        Dstar = Geometry.from_positions(R[None] if R.ndim == 2 else R).D
        _, c1, _ = self._coefficients(Dstar)
        W, Dw, touch = self._W_cat, self._Dw[:, 0], self._touch[0]
        uw = Dstar[:, touch] @ W.T - Dw[None]
        return -np.einsum("bk,bk->b", c1, uw) / self.n_perms

