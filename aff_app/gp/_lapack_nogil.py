"""Eigenvalues and the projected labels of a symmetric matrix without its eigenvectors.

The profile likelihood of the γ/λ search (method.md "AFF force model") needs,
per PE set, the eigenvalues Λ of R_i and the labels in its eigenbasis, QᵀF_i
— never Q itself. Householder tridiagonalisation R = Q_h T Q_hᵀ (LAPACK dsytrd,
≈ 4/3 n³ flops), the reflectors applied to F_i (O(n²)) and the eigenvectors V of
the tridiagonal T (dstedc) give both: Λ = eig(T), QᵀF_i = Vᵀ Q_hᵀ F_i. A full
eigendecomposition also forms Q (another ≈ 2–4 n³): this is about twice as fast
at the search's sizes (300×300 for uracil: 4 ms against 8 ms, one core).

LAPACK is called through ctypes on scipy's cython_lapack function pointers:
ctypes releases the GIL during the call (scipy's Python wrapper of dsytrd does
not), so the PE sets' spectra run on all cores. The reflector loop is numba
(nogil, cached).
"""

from __future__ import annotations

import ctypes

import numpy as np

try:
    import numba
    from numba.extending import get_cython_function_address

    _P = ctypes.c_void_p
    _dsytrd = ctypes.CFUNCTYPE(None, *[_P] * 10)(get_cython_function_address("scipy.linalg.cython_lapack", "dsytrd"))
    _dstedc = ctypes.CFUNCTYPE(None, *[_P] * 11)(get_cython_function_address("scipy.linalg.cython_lapack", "dstedc"))
    AVAILABLE = True
except Exception:  # pragma: no cover - numba missing: callers fall back to numpy.linalg.eigh
    AVAILABLE = False


def _apply_reflectors_py(A, tau, y):  # pragma: no cover - compiled
    """Q_hᵀ y = H(n−1)…H(1) y, H(i) = I − τ_i v vᵀ, v = (0…0, 1, A[i, i+2:]).

    dsytrd('L') on the column-major view stores v below the diagonal of column
    i, which is row i of the C-ordered array.
    """
    n = y.size
    z = y.copy()
    for i in range(n - 1):
        s = z[i + 1]
        for k in range(i + 2, n):
            s += A[i, k] * z[k]
        s *= tau[i]
        z[i + 1] -= s
        for k in range(i + 2, n):
            z[k] -= s * A[i, k]
    return z


if AVAILABLE:
    _apply_reflectors = numba.njit(cache=True, nogil=True)(_apply_reflectors_py)


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def _int(v: int) -> np.ndarray:
    return np.array([v], dtype=np.int32)


def eig_projected(K: np.ndarray, y: np.ndarray, *, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) of symmetric ``K`` (n, n) and ``Qᵀ y`` in its eigenbasis.

    The sign of each component of ``Qᵀ y`` is that of LAPACK's eigenvector, as
    with :func:`numpy.linalg.eigh`; the likelihood uses only squares.

    Raises
    ------
    numpy.linalg.LinAlgError
        When LAPACK reports failure (its info code is in the message).
    """
    n = K.shape[0]
    if not AVAILABLE or n < 2:
        w, Q = np.linalg.eigh(K)
        return w, Q.T @ y
    A = K if (overwrite and K.flags.c_contiguous and K.dtype == np.float64) else np.array(K, dtype=np.float64, order="C")
    y = np.ascontiguousarray(y, dtype=np.float64)
    nn, info, lwork, liwork = _int(n), _int(0), _int(-1), _int(-1)
    d, e, tau = np.empty(n), np.empty(n - 1), np.empty(n - 1)
    query, iquery = np.empty(1), _int(0)
    lower, comp_i = ctypes.c_char_p(b"L"), ctypes.c_char_p(b"I")
    args = (lower, _ptr(nn), _ptr(A), _ptr(nn), _ptr(d), _ptr(e), _ptr(tau))
    _dsytrd(*args, _ptr(query), _ptr(lwork), _ptr(info))
    lwork[0] = max(1, int(query[0]))
    work = np.empty(lwork[0])
    _dsytrd(*args, _ptr(work), _ptr(lwork), _ptr(info))
    if info[0] != 0:
        raise np.linalg.LinAlgError(f"dsytrd failed on a {n}×{n} matrix (LAPACK info {info[0]})")
    z = _apply_reflectors(A, tau, y)
    V = np.empty((n, n))  # column-major eigenvectors of T: row k of V is eigenvector k
    lwork[0] = liwork[0] = -1
    args = (comp_i, _ptr(nn), _ptr(d), _ptr(e), _ptr(V), _ptr(nn))
    _dstedc(*args, _ptr(query), _ptr(lwork), _ptr(iquery), _ptr(liwork), _ptr(info))
    lwork[0], liwork[0] = max(1, int(query[0])), max(1, int(iquery[0]))
    work, iwork = np.empty(lwork[0]), np.empty(liwork[0], dtype=np.int32)
    _dstedc(*args, _ptr(work), _ptr(lwork), _ptr(iwork), _ptr(liwork), _ptr(info))
    if info[0] != 0:
        raise np.linalg.LinAlgError(f"dstedc failed on a {n}×{n} tridiagonal matrix (LAPACK info {info[0]})")
    return d, V @ z
