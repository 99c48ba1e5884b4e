"""Matérn 5/2 kernel on inverse distances, with its energy/force derivative blocks.

Implements method.md "Kernel (Matérn 5/2 on descriptors)" and the PS kernel of
"Permutation symmetry". With u = D(x_a) − D(x_b), ρ = |u|, s = √5 ρ / γ::

    k          = (1 + s + s²/3) e^{−s}
    cov(E_a, F_b) = −J_bᵀ ∂k/∂D_b = −c1 · (J_bᵀ u)
    cov(F_a, F_b) = J_aᵀ H J_b,   block (i, j) = c1 (J_aᵀ J_b)_{ij} − c2 (J_aᵀ u)_i (J_bᵀ u)_jᵀ
    c1 = 5/(3γ²) (1 + s) e^{−s},  c2 = 25/(3γ⁴) e^{−s}

J and H are never formed. With V[i, k] = (r_i − r_k)/|r_i − r_k|³ (see
``aff_app.gp.descriptors``):

* (J_aᵀ J_b)_{ij} = −V_a[i, j] V_b[i, j]ᵀ for i ≠ j (one pair), and
  Σ_k V_a[i, k] V_b[i, k]ᵀ for i = j (the N−1 pairs of atom i);
* (J_aᵀ u)_i = −Σ_k U[i, k] V_a[i, k] where U is u as a symmetric N×N matrix.
  Splitting U = D_a − D_b gives (J_aᵀ u)_i = X[a, b, i] − β[a, i] with
  β[a, i] = Σ_k D_a[i, k] V_a[i, k] and X[a, b, i] = Σ_k D_b[i, k] V_a[i, k]:
  one small matrix product per atom instead of a P-long loop.

The PS kernel averages over a permutation group {P_q}, q = 1..S
(method.md: k_s(x_a, x_b) = (1/S) Σ_q k(x_a, P_q x_b)); a permutation ``p``
acts on positions as ``R[p]``, so atom j of x_b sits at position p⁻¹(j) of
P x_b. Every function takes ``perms=None`` (S = 1, the plain kernel).

Work is vectorised over configuration pairs, chunked over rows of the output
so temporaries stay within ``chunk_bytes``, and the chunks run on a thread
pool (numpy releases the GIL inside its kernels).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from aff_app.gp.descriptors import geometry_terms, pair_indices

#: Default bound on the temporaries of one chunk of kernel rows (bytes).
CHUNK_BYTES = 192 * 2**20


def n_threads() -> int:
    """Threads used for kernel assembly (``AFF_THREADS`` overrides; default: cores)."""
    env = os.environ.get("AFF_THREADS")
    if env:
        return max(1, int(env))
    return max(1, os.cpu_count() or 1)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()
_IN_POOL = threading.local()


def _mark_worker() -> None:
    _IN_POOL.active = True


_BLAS = {"controller": None, "limiter": None, "depth": 0}
_BLAS_LOCK = threading.Lock()


@contextmanager
def single_threaded_blas():
    """BLAS at one thread per call while work is split over our own threads.

    Each of two pool threads calling a two-thread OpenBLAS oversubscribes the
    cores, and the idle BLAS workers spin-wait: the assembly of one uracil
    kernel at M = 1000 (2 threads) took 60-90 ms per PE set with threaded BLAS
    and 12 ms with one BLAS thread per pool thread. Re-entrant and safe across
    threads (one limit, released by the last user); ~10 µs per entry.
    """
    with _BLAS_LOCK:
        if _BLAS["depth"] == 0:
            if _BLAS["controller"] is None:
                from threadpoolctl import ThreadpoolController

                _BLAS["controller"] = ThreadpoolController()
            _BLAS["limiter"] = _BLAS["controller"].limit(limits=1, user_api="blas")
        _BLAS["depth"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS["depth"] -= 1
            if _BLAS["depth"] == 0:
                _BLAS["limiter"].restore_original_limits()
                _BLAS["limiter"] = None


def parallel_map(fn, items, threads: int | None = None) -> list:
    """``[fn(x) for x in items]`` on a persistent thread pool (order kept).

    The pool lives for the process: starting threads cost ~3 ms each here, and
    the hyperparameter search maps over PE sets a dozen times per fit. Calls from
    inside a pool worker run serially (a nested map on the same pool could
    otherwise wait on itself). BLAS runs at one thread per call meanwhile
    (:func:`single_threaded_blas`): the items are the parallelism.
    """
    items = list(items)
    threads = n_threads() if threads is None else threads
    if threads <= 1 or len(items) <= 1 or getattr(_IN_POOL, "active", False):
        return [fn(x) for x in items]
    with _POOL_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, initializer=_mark_worker,
                                                        thread_name_prefix="aff")
    with single_threaded_blas():
        return list(pool.map(fn, items))


@dataclass(frozen=True)
class Geometry:
    """Per-frame terms the kernel needs, computed once per set of frames.

    Attributes
    ----------
    D : (M, P) inverse distances in THE pair order, 1/Å
    Dmat : (M, N, N) the same as symmetric matrices (zero diagonal)
    V : (M, N, N, 3) compact Jacobian, 1/Å² (see ``aff_app.gp.descriptors``)
    """

    D: np.ndarray
    Dmat: np.ndarray
    V: np.ndarray

    @classmethod
    def from_positions(cls, R: np.ndarray) -> "Geometry":
        Dmat, V = geometry_terms(R)
        i, j = pair_indices(Dmat.shape[1])
        return cls(D=Dmat[:, i, j], Dmat=Dmat, V=V)

    @property
    def n_frames(self) -> int:
        return int(self.D.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.Dmat.shape[1])

    def permuted(self, p: np.ndarray) -> "Geometry":
        """Terms of the permuted frames R[:, p] (no recomputation of distances)."""
        p = np.asarray(p)
        Dmat = self.Dmat[:, p][:, :, p]
        V = self.V[:, p][:, :, p]
        i, j = pair_indices(Dmat.shape[1])
        return Geometry(D=Dmat[:, i, j], Dmat=Dmat, V=V)

    def take(self, frames) -> "Geometry":
        return Geometry(D=self.D[frames], Dmat=self.Dmat[frames], V=self.V[frames])


def _coerce(x) -> Geometry:
    return x if isinstance(x, Geometry) else Geometry.from_positions(x)


def _perm_list(perms, n_atoms: int) -> list[np.ndarray]:
    if perms is None:
        return [np.arange(n_atoms)]
    perms = np.asarray(perms, dtype=np.int64)
    if perms.ndim != 2 or perms.shape[1] != n_atoms:
        raise ValueError(f"perms must have shape (S, {n_atoms}), got {perms.shape}")
    return list(perms)


def matern52(rho: np.ndarray, gamma: float) -> np.ndarray:
    """k(ρ) = (1 + s + s²/3) e^{−s}, s = √5 ρ/γ (method.md, dimensionless)."""
    s = np.sqrt(5.0) * np.asarray(rho) / gamma
    return (1.0 + s + s * s / 3.0) * np.exp(-s)


def _coefficients(rho: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k, c1, c2 of method.md for distances ρ in descriptor space."""
    s = np.sqrt(5.0) * rho / gamma
    e = np.exp(-s)
    k = (1.0 + s + s * s / 3.0) * e
    c1 = (5.0 / (3.0 * gamma**2)) * (1.0 + s) * e
    c2 = (25.0 / (3.0 * gamma**4)) * e
    return k, c1, c2


def _rho(Da: np.ndarray, Db: np.ndarray) -> np.ndarray:
    """|D_a − D_b| for all pairs, shape (Ma, Mb).

    One GEMM (|a|² + |b|² − 2a·b), then entries close to zero are recomputed
    from direct differences: the GEMM form loses ~1e-8 relative accuracy near
    ρ = 0, enough to break positive definiteness at λ ≈ 1e-10.
    """
    na = np.einsum("ap,ap->a", Da, Da)
    nb = np.einsum("bp,bp->b", Db, Db)
    r2 = na[:, None] + nb[None, :] - 2.0 * (Da @ Db.T)
    close = r2 < 1e-6 * (na[:, None] + nb[None, :])
    if np.any(close):
        ia, ib = np.nonzero(close)
        u = Da[ia] - Db[ib]
        r2[ia, ib] = np.einsum("kp,kp->k", u, u)
    return np.sqrt(np.maximum(r2, 0.0))


def _jtu(G_self: Geometry, G_other: Geometry, atoms: np.ndarray, self_is_a: bool) -> np.ndarray:
    """(J_selfᵀ u)_i for atoms i, all pairs: shape (M_a, M_b, l, 3), u = D_a − D_b."""
    Vs = G_self.V[:, atoms]  # (Ms, l, N, 3)
    beta = np.einsum("mik,mikc->mic", G_self.Dmat[:, atoms], Vs)  # (Ms, l, 3)
    # X[s, o, i, c] = Σ_k D_other[o, i, k] V_self[s, i, k, c]: one GEMM per atom
    Do = G_other.Dmat[:, atoms]  # (Mo, l, N)
    X = np.matmul(Vs.transpose(1, 0, 3, 2), Do.transpose(1, 2, 0)[:, None])  # (l, Ms, 3, Mo)
    X = X.transpose(1, 3, 0, 2)  # (Ms, Mo, l, 3)
    if self_is_a:  # (J_aᵀ u)_i = X − β_a
        return X - beta[:, None]
    # self is b: (J_bᵀ u)_j = −Σ_k (D_a − D_b)[j,k] V_b[j,k] = β_b − X; transpose to (Ma, Mb, ...)
    return (beta[:, None] - X).transpose(1, 0, 2, 3)


class _Side:
    """Terms of one side of a block (frames × atoms) reused across row chunks.

    VT : (l, M·3, N) compact Jacobian rows of the atoms, laid out for GEMMs
    beta : (M, l, 3) Σ_k D[i,k] V[i,k]
    DT : (l', N, M) inverse distances of the *other* side's atoms l', for the
         GEMM that forms Σ_k D_this[i,k] V_other[i,k] with the other side's V
    DR : (l', M, N) the same distances, rows laid out for the GEMM of the other
         side's Σ_k D_this[j,k] V_other[j,k] in (l', M_this, M_other·3) order
    VN : (l, N, M, 3) compact Jacobian rows of the atoms, for that second GEMM
    """

    __slots__ = ("VT", "beta", "DT", "DR", "VN", "m")

    def __init__(self, G: Geometry, atoms: np.ndarray, other_atoms: np.ndarray):
        V = G.V[:, atoms]  # (M, l, N, 3)
        self.m = G.n_frames
        self.VT = np.ascontiguousarray(V.transpose(1, 0, 3, 2)).reshape(atoms.size, -1, G.n_atoms)
        self.beta = np.ascontiguousarray(np.einsum("mik,mikc->mic", G.Dmat[:, atoms], V))
        Do = G.Dmat[:, other_atoms]  # (M, l', N)
        self.DT = np.ascontiguousarray(Do.transpose(1, 2, 0))
        self.DR = np.ascontiguousarray(Do.transpose(1, 0, 2))
        self.VN = np.ascontiguousarray(V.transpose(1, 2, 0, 3))

    def head(self, m: int) -> "_Side":
        """The same terms for the first ``m`` frames only (views, no copies)."""
        if m == self.m:
            return self
        out = object.__new__(_Side)
        l = self.VT.shape[0]
        out.VT = self.VT.reshape(l, self.m, 3, -1)[:, :m].reshape(l, m * 3, -1)
        out.beta = self.beta[:m]
        out.DT = self.DT[:, :, :m]
        out.DR = self.DR[:, :m]
        out.VN = self.VN[:, :, :m]
        out.m = m
        return out


def _force_block(Ga: Geometry, Gb: Geometry, atoms_a, atoms_b, gamma: float, coef=None, out=None,
                 side_a: _Side | None = None, side_b: _Side | None = None, *, row0: int = 0,
                 assign: bool = False) -> np.ndarray:
    """Plain-kernel force covariance, shape (Ma, la, 3, Mb, lb, 3).

    ``coef`` = (c1, c2) for these frame pairs when already computed (they
    depend on the frames only, not on the atoms: shared by all PE sets).
    ``out``: a C-ordered array (M ≥ row0 + Ma, la, 3, M' ≥ Mb, lb, 3); the block
    goes to rows row0:row0+Ma and columns :Mb, ADDED to what is there, or
    written over it with ``assign`` (no zeroing pass needed).
    ``side_a``/``side_b``: precomputed :class:`_Side` terms.
    """
    if coef is None:
        _, c1, c2 = _coefficients(_rho(Ga.D, Gb.D), gamma)
    else:
        c1, c2 = coef
    ma, mb, la, lb = Ga.n_frames, Gb.n_frames, atoms_a.size, atoms_b.size
    if out is None:
        out = np.zeros((ma, la, 3, mb, lb, 3))
    sa = _Side(Ga, atoms_a, atoms_b) if side_a is None else side_a
    sb = _Side(Gb, atoms_b, atoms_a) if side_b is None else side_b
    # XA[i, a, c, b] = Σ_k D_b[i,k] V_a[i,k];  (J_aᵀu)_i = XA − β_a[a, i]      (one GEMM per atom)
    xa = np.matmul(sa.VT, sb.DT).reshape(la, ma, 3, mb)
    # XB[j, a, b, d] = Σ_k D_a[j,k] V_b[j,k];  (J_bᵀu)_j = β_b[b, j] − XB      (one GEMM per atom)
    xb = np.matmul(sa.DR, sb.VN.reshape(lb, sb.VN.shape[1], mb * 3)).reshape(lb, ma, mb, 3)
    offdiag = not (la == 1 and lb == 1 and atoms_a[0] == atoms_b[0])  # V[i, i] = 0: lone atoms skip it
    Va = np.ascontiguousarray(Ga.V[:, atoms_a][:, :, atoms_b])  # (Ma, la, lb, 3)
    Vb = np.ascontiguousarray(Gb.V[:, atoms_a][:, :, atoms_b])  # (Mb, la, lb, 3)
    common, ia, ib = np.intersect1d(atoms_a, atoms_b, return_indices=True)
    # i = j: Σ_k V_a[i,k] V_b[i,k]ᵀ (one GEMM over k per atom)
    Sd = np.empty((ia.size, ma, 3, mb, 3))
    for k, (x, y) in enumerate(zip(ia, ib)):
        np.matmul(sa.VT[x], sb.VT[y].T, out=Sd[k].reshape(ma * 3, mb * 3))
    if _assemble is not None and not _FORCE_NUMPY:
        # every array C-ordered: one compiled specialisation (numba loads each from its cache once per process)
        _assemble(out, row0, np.ascontiguousarray(c1), np.ascontiguousarray(c2), xa, sa.beta,
                  xb, np.ascontiguousarray(sb.beta), Va, Vb, Sd, ia.astype(np.int64), ib.astype(np.int64),
                  offdiag, assign)
        return out
    # numpy reference path (same arithmetic, several passes over the block)
    view = out[row0 : row0 + ma, :, :, :mb]
    if assign:
        view[...] = 0.0
    wa = (xa - sa.beta.transpose(1, 0, 2)[:, :, :, None]).transpose(1, 0, 2, 3)  # (Ma, la, 3, Mb)
    wb = sb.beta[None] - xb.transpose(1, 2, 0, 3)  # (Ma, Mb, lb, 3)
    wa = wa * (-c2)[:, None, None, :]
    view += wa[:, :, :, :, None, None] * wb[:, None, None]
    if offdiag:
        view -= np.einsum("ab,aijc,bijd->aicbjd", c1, Va, Vb, optimize=True)
    c1_4 = c1[:, None, :, None]
    for k, (x, y) in enumerate(zip(ia, ib)):
        view[:, x, :, :, y, :] += Sd[k] * c1_4
    return out


def _assemble_py(out, row0, c1, c2, xa, ba, xb, bb, Va, Vb, Sd, xs, ys, offdiag, assign):  # pragma: no cover - compiled
    """One pass over the block (a, i, c, b, j, d), rows row0 + a of ``out``:

        out += −c2 (J_aᵀu)_i (J_bᵀu)_jᵀ − c1 V_a[i,j] V_b[i,j]ᵀ  (+ c1 Σ_k V_a[i,k]V_b[i,k]ᵀ if i = j)

    with (J_aᵀu)_i = xa[i, a, c, b] − ba[a, i, c] and (J_bᵀu)_j = bb[b, j, d] −
    xb[j, a, b, d]; ``assign`` writes instead of adding. Fused so every output
    element is written once: the numpy path makes ~5 passes with inner loops
    of only 3·l elements, and was memory-bound.
    """
    ma, mb = c1.shape
    la = xa.shape[0]
    lb = xb.shape[0]
    wb = np.empty((mb, lb, 3))
    for a in range(ma):
        r = row0 + a
        for b in range(mb):  # (J_bᵀu)_j of this row, gathered once
            for j in range(lb):
                for d in range(3):
                    wb[b, j, d] = bb[b, j, d] - xb[j, a, b, d]
        for i in range(la):
            for c in range(3):
                bac = ba[a, i, c]
                for b in range(mb):
                    w = -c2[a, b] * (xa[i, a, c, b] - bac)
                    c1ab = c1[a, b]
                    for j in range(lb):
                        v = c1ab * Va[a, i, j, c] if offdiag else 0.0
                        if assign:
                            for d in range(3):
                                out[r, i, c, b, j, d] = w * wb[b, j, d] - v * Vb[b, i, j, d]
                        else:
                            for d in range(3):
                                out[r, i, c, b, j, d] += w * wb[b, j, d] - v * Vb[b, i, j, d]
        for k in range(xs.shape[0]):
            x = xs[k]
            y = ys[k]
            for c in range(3):
                for b in range(mb):
                    c1ab = c1[a, b]
                    for d in range(3):
                        out[r, x, c, b, y, d] += c1ab * Sd[k, a, c, b, d]


try:  # numba fuses the assembly into one pass (see _assemble_py); numpy is the fallback
    import numba as _numba

    _assemble = _numba.njit(cache=True, nogil=True)(_assemble_py)
except ImportError:  # pragma: no cover
    _assemble = None
#: Set True (tests) to use the numpy reference path.
_FORCE_NUMPY = False


def _row_chunks(n_rows: int, bytes_per_row: int, chunk_bytes: int, threads: int = 1) -> list[slice]:
    step = max(1, min(n_rows, chunk_bytes // max(1, bytes_per_row)))
    if n_rows >= 8 * threads:  # at least one chunk per thread
        step = min(step, -(-n_rows // threads))
    return [slice(s, min(s + step, n_rows)) for s in range(0, n_rows, step)]


def _triangle_chunks(n_rows: int, bytes_per_row: int, chunk_bytes: int, threads: int = 1) -> list[slice]:
    """Row chunks of a lower-triangular build with about equal work each.

    Row r of the triangle has r + 1 frame blocks, so equal row counts give the
    last chunk most of the work (with 2 threads and 3 chunks of 480 rows at
    M = 1000, one thread did 345k of the 500k frame pairs). Boundaries at
    n·sqrt(k/C) give each chunk n²/(2C) pairs; C is at least 4 per thread
    (dynamic balance) and enough for ``chunk_bytes`` (``bytes_per_row`` is
    that of a full row).
    """
    total = n_rows * bytes_per_row / 2
    c = max(1, min(n_rows, max(int(np.ceil(total / max(1, chunk_bytes))), 4 * threads if threads > 1 else 1)))
    edges = np.unique(np.round(n_rows * np.sqrt(np.arange(c + 1) / c)).astype(np.int64))
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def force_covariance(
    Ra,
    Rb,
    gamma: float,
    *,
    atoms_a=None,
    atoms_b=None,
    perms=None,
    chunk_bytes: int = CHUNK_BYTES,
    threads: int | None = None,
) -> np.ndarray:
    """Force–force covariance cov(F(x_a), F(x_b)) of the (PS) Matérn 5/2 kernel.

    Parameters
    ----------
    Ra, Rb : ndarray (M, N, 3) in Å, or :class:`Geometry`
    gamma : float
        Range γ in descriptor units (1/Å).
    atoms_a, atoms_b : int arrays, optional
        Atoms (rows of x_a, columns of x_b); default all. For AFF both are
        one PE set.
    perms : ndarray (S, N), optional
        Permutation group for the PS kernel; None = plain kernel.

    Returns
    -------
    K : ndarray, shape (Ma·la·3, Mb·lb·3)
        Ordered (frame, atom, component); units of 1/Å² (kernel variance 1).
    """
    n = _coerce(Ra).n_atoms if not isinstance(Ra, Geometry) else Ra.n_atoms
    atoms_a = np.arange(n) if atoms_a is None else atoms_a
    atoms_b = atoms_a if atoms_b is None and atoms_a is not None else (np.arange(n) if atoms_b is None else atoms_b)
    return force_covariance_sets(
        Ra, Rb, gamma, [(atoms_a, atoms_b)], perms=perms, chunk_bytes=chunk_bytes, threads=threads
    )[0]


class CoefficientCache:
    """Pair coefficients (c1, c2) of the Matérn kernel per row chunk, shared between builds.

    For a fit that builds (and factors) one PE set at a time: the descriptor
    distances and coefficients depend on the frames and γ only, so the sets
    after the first reuse them. ``lmax``: the largest set of all the builds
    that share the cache (it fixes the row chunks). Memory: 16 bytes per frame
    pair and permutation (M = 1000, plain kernel: 8 MB for the triangle).
    """

    def __init__(self, lmax: int = 1):
        self.lmax = int(lmax)
        self._store: dict = {}

    def get(self, key):
        return self._store.get(key)

    def put(self, key, coef) -> None:
        self._store[key] = coef

    @property
    def nbytes(self) -> int:
        return sum(c1.nbytes + c2.nbytes for c1, c2 in self._store.values())


def force_covariance_sets(
    Ra,
    Rb,
    gamma: float,
    sets,
    *,
    perms=None,
    chunk_bytes: int = CHUNK_BYTES,
    threads: int | None = None,
    mirror: bool = True,
    out: list[np.ndarray] | None = None,
    coef_cache: "CoefficientCache | None" = None,
    columns: "ColumnTerms | None" = None,
) -> list[np.ndarray]:
    """Force covariance blocks of several atom sets in one pass over frame pairs.

    The descriptor distances ρ and the coefficients c1, c2 depend on the frames
    only, so they are computed once per chunk and permutation and shared by all
    sets (for AFF: all PE sets of the molecule).

    Parameters
    ----------
    sets : list of int arrays, or of (atoms_a, atoms_b) pairs
        For a PE set ``S`` pass ``S`` (rows and columns both ``S``).

    mirror : bool
        For a square kernel of one set of frames only the frame blocks on and
        below the diagonal are computed; ``mirror=False`` leaves the blocks
        above it zero instead of copying them over (a Cholesky factorisation
        reads one triangle; the transposed copy cost a quarter of the build at
        M = 1000).
    out : list of ndarray, optional
        Buffers to write the kernels into, one per set, each C-ordered with
        ``Ma·la·3 × Mb·lb·3`` elements (any shape; e.g. the front of one buffer
        reused set after set, so a fit that factors each kernel right after
        building it faults in one kernel's pages, not one per set). Every
        element of the result is written, except — with ``mirror=False`` — the
        frame blocks above the diagonal, which keep what the buffer held.
    coef_cache : CoefficientCache, optional
        Keeps the pair coefficients (c1, c2) of each row chunk and permutation
        between calls on the same frames (keyed by γ and chunk), for builds of one set at a time.
    columns : ColumnTerms, optional
        The column side's permuted copies and terms from :func:`column_terms` for these ``Rb``,
        ``sets`` and ``perms`` (kept by a model that predicts one geometry at a time: building
        them was 70% of a single-frame prediction of benzene).

    Returns
    -------
    list of ndarray, shapes (Ma·la·3, Mb·lb·3), in the order of ``sets``.
    """
    Ga, Gb = _coerce(Ra), _coerce(Rb)
    n = Ga.n_atoms
    pairs = []
    for s in sets:
        if isinstance(s, tuple):
            a, b = s
        else:
            a = b = s
        pairs.append((np.asarray(a, dtype=np.int64).reshape(-1), np.asarray(b, dtype=np.int64).reshape(-1)))
    plist = _perm_list(perms, n)
    ma, mb = Ga.n_frames, Gb.n_frames
    # K(x_a, x_b) = K(x_b, x_a)ᵀ: for a square kernel of one set of frames, build the
    # frame blocks on and below the diagonal only and mirror them (half the work)
    symmetric = Ga is Gb and all(np.array_equal(a, b) for a, b in pairs)
    shapes = [(ma, a.size, 3, mb, b.size, 3) for a, b in pairs]
    if out is None:
        outs = [np.zeros(shape) for shape in shapes]
    else:
        if len(out) != len(pairs):
            raise ValueError(f"out has {len(out)} buffers for {len(pairs)} sets")
        outs = []
        for buf, shape in zip(out, shapes):
            if not (buf.flags.c_contiguous and buf.dtype == np.float64 and buf.size == int(np.prod(shape))):
                raise ValueError(f"each out buffer must be C-ordered float64 with {int(np.prod(shape))} elements, "
                                 f"got {buf.dtype} {buf.shape}")
            outs.append(buf.reshape(shape))
    columns = column_terms(Gb, pairs, plist) if columns is None else columns
    copies, sides_b = columns.copies, columns.sides
    lmax = max(max(a.size, b.size) for a, b in pairs)
    if coef_cache is not None:
        lmax = max(lmax, coef_cache.lmax)  # the same row chunks in every call that shares the cache
    row_bytes = 8 * mb * (4 * 9 * lmax * lmax + 6 * lmax + 8)
    threads = n_threads() if threads is None else threads
    chunks = (_triangle_chunks if symmetric else _row_chunks)(ma, row_bytes, chunk_bytes, threads)

    def work(sl: slice) -> None:
        Gs = Ga.take(sl)
        e = sl.stop if symmetric else mb  # columns needed for this row chunk
        for q, ((Gq, cols), sides) in enumerate(zip(copies, sides_b)):
            Gc = Gq if e == mb else Gq.take(slice(0, e))
            key = (gamma, sl.start, sl.stop, q)
            coef = None if coef_cache is None else coef_cache.get(key)
            if coef is None:
                _, c1, c2 = _coefficients(_rho(Gs.D, Gc.D), gamma)
                coef = (c1, c2)
                if coef_cache is not None:
                    coef_cache.put(key, coef)
            for o, (a, _), c, sb in zip(outs, pairs, cols, sides):
                # the first permutation writes, the others add: no zeroing pass over reused buffers
                _force_block(Gs, Gc, a, c, gamma, coef, out=o, side_a=_Side(Gs, a, c), side_b=sb.head(e),
                             row0=sl.start, assign=q == 0)
        if len(copies) > 1:
            for o in outs:
                o[sl, :, :, :e] /= len(copies)

    _run(work, chunks, threads)
    mats = [o.reshape(ma * a.size * 3, mb * b.size * 3) for o, (a, b) in zip(outs, pairs)]
    if symmetric and mirror:
        for K in mats:
            _mirror_lower(K, a_block=K.shape[0] // ma)
    return mats


@dataclass(frozen=True)
class ColumnTerms:
    """Column-side terms of :func:`force_covariance_sets`: the permuted copies of x_b and their per-set terms."""

    copies: list
    sides: list


def column_terms(Gb, sets, perms) -> ColumnTerms:
    """The column side of :func:`force_covariance_sets` for ``Gb``, ``sets`` (rows = columns) and ``perms``."""
    Gb = _coerce(Gb)
    n = Gb.n_atoms
    pairs = [(np.asarray(s, dtype=np.int64).reshape(-1),) * 2 if not isinstance(s, tuple)
             else tuple(np.asarray(x, dtype=np.int64).reshape(-1) for x in s) for s in sets]
    plist = perms if isinstance(perms, list) else _perm_list(perms, n)
    # permuted copies of x_b; atom j of x_b sits at position p⁻¹(j) of the copy
    copies = []
    for p in plist:
        pinv = np.argsort(p)
        Gq = Gb if np.array_equal(p, np.arange(n)) else Gb.permuted(p)
        copies.append((Gq, [pinv[b] for _, b in pairs]))
    # column-side terms are computed once, not once per row chunk
    sides = [[_Side(Gq, c, a) for (a, _), c in zip(pairs, cols)] for Gq, cols in copies]
    return ColumnTerms(copies=copies, sides=sides)


def _mirror_lower(K: np.ndarray, a_block: int, rows: int = 1024) -> None:
    """Copy the block-lower triangle of K onto its upper triangle, in row strips.

    Frame blocks (size ``a_block``) on the diagonal are complete; blocks above
    them were left zero by the symmetric build.
    """
    n = K.shape[0]
    step = max(a_block, (rows // a_block) * a_block)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        # rows r0:r1, columns right of the strip's diagonal blocks
        K[r0:r1, r1:] = K[r1:, r0:r1].T
        # inside the strip: blocks above the diagonal blocks
        for b0 in range(r0, r1, a_block):
            b1 = b0 + a_block
            K[b0:b1, b1:r1] = K[b1:r1, b0:b1].T


def force_covariance_self(R, gamma: float, sets, *, perms=None) -> list[np.ndarray]:
    """Prior force covariance of each frame with itself, per atom set.

    Only the M diagonal frame pairs (m, m) are computed, vectorised over
    frames (the predictive variance needs these, not the M×M blocks).

    Returns
    -------
    list of ndarray, shapes (M, l, 3, l, 3), in the order of ``sets``.
    """
    G = _coerce(R)
    n = G.n_atoms
    plist = _perm_list(perms, n)
    sets = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sets]
    outs = [np.zeros((G.n_frames, s.size, 3, s.size, 3)) for s in sets]
    for p in plist:
        pinv = np.argsort(p)
        Gq = G.permuted(p)
        u = G.D - Gq.D
        _, c1, c2 = _coefficients(np.sqrt(np.einsum("mp,mp->m", u, u)), gamma)
        for out, a in zip(outs, sets):
            b = pinv[a]
            # (J_aᵀu)_i = Σ_k Dq[i,k] V[i,k] − β[i];  (J_bᵀu)_j = βq[j] − Σ_k D[j,k] Vq[j,k]
            wa = np.einsum("mik,mikc->mic", Gq.Dmat[:, a] - G.Dmat[:, a], G.V[:, a])
            wb = np.einsum("mjk,mjkc->mjc", Gq.Dmat[:, b] - G.Dmat[:, b], Gq.V[:, b])
            out -= c2[:, None, None, None, None] * np.einsum("mic,mjd->micjd", wa, wb)
            Va = G.V[:, a][:, :, b]
            Vb = Gq.V[:, a][:, :, b]
            out -= c1[:, None, None, None, None] * np.einsum("mijc,mijd->micjd", Va, Vb)
            common, ia, ib = np.intersect1d(a, b, return_indices=True)
            for t, x, y in zip(common, ia, ib):
                out[:, x, :, y, :] += c1[:, None, None] * np.einsum("mkc,mkd->mcd", G.V[:, t], Gq.V[:, t])
    if len(plist) > 1:
        for out in outs:
            out /= len(plist)
    return outs


def energy_covariance(Ra, Rb, gamma: float, *, perms=None) -> np.ndarray:
    """Energy–energy covariance k_s(x_a, x_b), shape (Ma, Mb), dimensionless."""
    Ga, Gb = _coerce(Ra), _coerce(Rb)
    plist = _perm_list(perms, Ga.n_atoms)
    K = np.zeros((Ga.n_frames, Gb.n_frames))
    identity = np.arange(Ga.n_atoms)
    for p in plist:
        # |D(x_a) − D(P x_b)| = |D(P⁻¹ x_a) − D(x_b)| (the same pairs, relabelled): permute the smaller side, and
        # neither for the identity — an MD step's energy permuted 750 held-out frames for nothing (2.2 of 2.9 ms)
        if np.array_equal(p, identity):
            K += matern52(_rho(Ga.D, Gb.D), gamma)
        elif Ga.n_frames < Gb.n_frames:
            K += matern52(_rho(Ga.permuted(np.argsort(p)).D, Gb.D), gamma)
        else:
            K += matern52(_rho(Ga.D, Gb.permuted(p).D), gamma)
    return K / len(plist)


def energy_force_covariance(Ra, Rb, gamma: float, *, perms=None) -> np.ndarray:
    """cov(E(x_a), F(x_b)) = −∇_b k_s(x_a, x_b), shape (Ma, Mb, N, 3), 1/Å.

    (method.md: cov(E_a, F_b) = −J_bᵀ ∂k/∂D_b and ∂k/∂D_b = c1 u.)
    """
    Ga, Gb = _coerce(Ra), _coerce(Rb)
    n = Ga.n_atoms
    plist = _perm_list(perms, n)
    atoms = np.arange(n)
    out = np.zeros((Ga.n_frames, Gb.n_frames, n, 3))
    for p in plist:
        pinv = np.argsort(p)
        Gq = Gb.permuted(p)
        _, c1, _ = _coefficients(_rho(Ga.D, Gq.D), gamma)
        wb = _jtu(Gq, Ga, pinv[atoms], False)  # (J_bᵀ u) at the positions of atoms 0..N-1
        out -= c1[:, :, None, None] * wb
    return out / len(plist)


def _run(work, chunks, threads) -> None:
    threads = n_threads() if threads is None else threads
    if threads <= 1 or len(chunks) <= 1:
        for sl in chunks:
            work(sl)
        return
    parallel_map(work, chunks, threads)
