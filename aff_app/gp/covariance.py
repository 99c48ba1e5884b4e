"""Force covariance views (the paper's Fig. 1) and the cost of the PE-set decomposition.

No Streamlit here. What the Covariance and Symmetry pages show:

* :func:`kernel_force_covariance` — the 3N·k × 3N·k force covariance that the
  (PS) Matérn 5/2 kernel implies between k chosen configurations
  (``aff_app.gp.kernels.force_covariance``), ordered (frame, atom, component).
  Unscaled it is in kernel units, 1/Å² (the variance σ² = 1); multiplied by a
  fitted σ² it would be in (kcal/mol/Å)².
* :func:`set_force_covariance` — the same for the atoms of one PE set only
  (3·k·l × 3·k·l): the matrix R_i one AFF GP works with.
* :func:`to_correlation` — covariance → correlation (unitless, unit diagonal).
* :func:`empirical_force_correlation` — the correlation of the 3N force
  components over the frames of a trajectory (``np.corrcoef``), the data's
  own answer to the same question.
* :func:`default_gamma` — a sensible range γ: the median descriptor distance
  between frames (the middle of the hyperparameter search's grid).
* :func:`compare_cost` — Cholesky flops and kernel memory of AFF (one kernel per
  PE set) against GDML/sGDML (one kernel over all atoms), via
  ``aff_app.gp.budget.estimate_cost``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from aff_app.errors import AFFError
from aff_app.gp.budget import estimate_cost
from aff_app.gp.descriptors import inverse_distances
from aff_app.gp.kernels import force_covariance

__all__ = [
    "COMPONENTS",
    "BlockShare",
    "CostComparison",
    "block_share",
    "set_order",
    "CovarianceError",
    "compare_cost",
    "component_index",
    "default_gamma",
    "empirical_force_correlation",
    "even_frames",
    "format_bytes",
    "format_flops",
    "kernel_force_covariance",
    "median_descriptor_distance",
    "parse_frame_list",
    "set_force_covariance",
    "to_correlation",
]

#: Names of the Cartesian force components, in the order of every matrix here.
COMPONENTS = ("x", "y", "z")


class CovarianceError(AFFError, ValueError):
    """Inputs a covariance view cannot be computed from (message carries the numbers)."""


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------
def _check_R(R: Any) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 3 or R.shape[-1] != 3 or R.shape[0] == 0 or R.shape[1] < 2:
        raise CovarianceError(f"R must have shape (M, N, 3) with M >= 1 and N >= 2 atoms, got {R.shape}")
    if not np.all(np.isfinite(R)):
        raise CovarianceError("R holds non-finite positions")
    return R


def _check_gamma(gamma: float) -> float:
    g = float(gamma)
    if not (np.isfinite(g) and g > 0):
        raise CovarianceError(f"γ must be a positive number (1/Å), got {gamma!r}")
    return g


def _check_frames(frames: Sequence[int], n_frames: int) -> np.ndarray:
    idx = np.asarray(list(frames))
    if idx.size == 0:
        raise CovarianceError("choose at least one configuration (frame number)")
    if not np.issubdtype(idx.dtype, np.integer):
        raise CovarianceError(f"frame numbers must be integers, got {idx.tolist()}")
    bad = idx[(idx < 0) | (idx >= n_frames)]
    if bad.size:
        raise CovarianceError(f"frame numbers {bad.tolist()} are outside 0..{n_frames - 1}")
    return idx.astype(np.int64)


def parse_frame_list(text: str, n_frames: int, *, max_count: int = 3) -> list[int]:
    """Read frame numbers such as ``"0, 1500 2999"`` (0-based; commas or spaces).

    Parameters
    ----------
    text : str
    n_frames : int
        M; valid frames are 0..M-1.
    max_count : int
        Most frames accepted.

    Returns
    -------
    list of int
        In the order given, each frame once.

    Raises
    ------
    CovarianceError
        No frame, a token that is not a whole number, a frame out of range, or
        more than ``max_count`` frames.
    """
    tokens = [t for t in re.split(r"[,;\s]+", (text or "").strip()) if t]
    if not tokens:
        raise CovarianceError(f"enter 1 to {max_count} frame numbers (0..{n_frames - 1}), e.g. '0, {n_frames // 2}'")
    bad = [t for t in tokens if not re.fullmatch(r"\d+", t)]
    if bad:
        raise CovarianceError(f"cannot read {bad[0]!r} as a frame number: use whole numbers 0..{n_frames - 1}")
    frames = [int(t) for t in tokens]
    if len(frames) > max_count:
        raise CovarianceError(f"{len(frames)} frames given; choose at most {max_count}")
    out = [f for f in frames if f >= n_frames]
    if out:
        raise CovarianceError(f"frame numbers {out} are outside 0..{n_frames - 1}")
    twice = sorted({f for f in frames if frames.count(f) > 1})
    if twice:
        raise CovarianceError(f"frame {twice[0]} is given twice: choose different configurations")
    return frames


def even_frames(n_frames: int, count: int) -> list[int]:
    """``count`` frame numbers spread evenly over 0..M-1 (first and last included), without repeats."""
    count = max(1, min(int(count), int(n_frames)))
    return sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, count)})


# ---------------------------------------------------------------------------
# kernel covariance
# ---------------------------------------------------------------------------
def median_descriptor_distance(R: Any, *, n_samples: int = 200, seed: int | None = 0) -> float:
    """Median of ||D(x_a) − D(x_b)|| over pairs of (up to ``n_samples``) random frames.

    Parameters
    ----------
    R : array_like, shape (M, N, 3)
        Positions in Å.
    n_samples : int
        Frames drawn (all when M is smaller).
    seed : int or None
        For ``numpy.random.default_rng``.

    Returns
    -------
    float
        In descriptor units, 1/Å. For one frame (no pair) the descriptor's own
        norm divided by 10 is returned, so γ stays positive and of a sensible size.
    """
    R = _check_R(R)
    m = R.shape[0]
    if m > n_samples:
        idx = np.sort(np.random.default_rng(seed).choice(m, size=int(n_samples), replace=False))
        R = R[idx]
    D = inverse_distances(R)
    if D.shape[0] < 2:
        return float(np.linalg.norm(D[0]) / 10.0)
    sq = np.sum(D * D, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * D @ D.T, 0.0)
    iu = np.triu_indices(D.shape[0], 1)
    med = float(np.median(np.sqrt(d2[iu])))
    if not med > 0:  # identical frames: fall back to the descriptor's scale
        med = float(np.linalg.norm(D[0]) / 10.0)
    return med


def default_gamma(R: Any, *, n_samples: int = 200, seed: int | None = 0) -> float:
    """A sensible range γ for covariance views: the median descriptor distance, to 3 significant digits.

    With γ equal to the typical distance between two frames, s = √5 ρ/γ is
    about 2 for a typical pair, so configurations are neither all alike nor all
    independent. The hyperparameter search of ``aff_app.gp.hyper`` scans 0.1×…30×
    this value.

    Returns
    -------
    float
        γ in 1/Å.
    """
    med = median_descriptor_distance(R, n_samples=n_samples, seed=seed)
    return float(f"{med:.3g}")


def kernel_force_covariance(R: Any, frames: Sequence[int], gamma: float, *, perms: Any = None) -> np.ndarray:
    """Prior force covariance between the chosen configurations, all atoms.

    Parameters
    ----------
    R : array_like, shape (M, N, 3)
        Positions in Å.
    frames : sequence of int, length k
        Configurations (0-based frame numbers).
    gamma : float
        Range γ in 1/Å.
    perms : array_like of int, shape (S, N), optional
        Permutation group for the PS kernel; None gives the plain kernel.

    Returns
    -------
    ndarray of float, shape (3·N·k, 3·N·k)
        Rows and columns ordered (frame, atom, component); kernel units, 1/Å²
        (variance σ² = 1). Symmetric.
    """
    R = _check_R(R)
    idx = _check_frames(frames, R.shape[0])
    g = _check_gamma(gamma)
    X = R[idx]
    C = force_covariance(X, X, g, perms=perms)
    return 0.5 * (C + C.T)  # exact symmetry (summation order differs slightly between blocks)


def set_force_covariance(
    R: Any, frames: Sequence[int], gamma: float, atoms: Sequence[int], *, perms: Any = None
) -> np.ndarray:
    """Prior force covariance of the atoms of one PE set across the chosen configurations.

    Parameters
    ----------
    R : array_like, shape (M, N, 3)
        Positions in Å.
    frames : sequence of int, length k
    gamma : float
        Range γ in 1/Å.
    atoms : sequence of int, length l
        The set's atoms (0-based).
    perms : array_like of int, shape (S, N), optional
        PS kernel group (each permutation should map the set onto itself).

    Returns
    -------
    ndarray of float, shape (3·k·l, 3·k·l)
        Ordered (frame, atom of the set, component); kernel units, 1/Å². This is
        the R_i of method.md for these k frames.
    """
    R = _check_R(R)
    idx = _check_frames(frames, R.shape[0])
    g = _check_gamma(gamma)
    a = np.asarray(list(atoms))
    if a.size == 0 or not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() >= R.shape[1]:
        raise CovarianceError(f"atoms must be 1 or more indices in 0..{R.shape[1] - 1}, got {a.tolist()}")
    X = R[idx]
    C = force_covariance(X, X, g, atoms_a=a.astype(np.int64), atoms_b=a.astype(np.int64), perms=perms)
    return 0.5 * (C + C.T)


def component_index(n_atoms: int, n_frames: int, atoms: Sequence[int] | None = None) -> np.ndarray:
    """Rows of a (frame, atom, component)-ordered matrix that belong to ``atoms`` in every frame.

    ``C[np.ix_(ix, ix)]`` with ``ix = component_index(N, k, S)`` is the block of
    PE set S inside a full 3N·k matrix (the same as :func:`set_force_covariance`).
    """
    atoms = np.arange(n_atoms) if atoms is None else np.asarray(list(atoms), dtype=np.int64)
    f = np.arange(n_frames)[:, None, None]
    a = atoms[None, :, None]
    c = np.arange(3)[None, None, :]
    return (f * 3 * n_atoms + a * 3 + c).reshape(-1)


def to_correlation(C: Any, *, rtol: float = 1e-12) -> np.ndarray:
    """Correlation matrix C_ij / √(C_ii C_jj) of a covariance matrix.

    Parameters
    ----------
    C : array_like, shape (n, n)
        Symmetric covariance.
    rtol : float
        Variances at most ``rtol · max(diag C)`` count as zero: their rows and
        columns become 0, with 1 on the diagonal.

    Returns
    -------
    ndarray, shape (n, n)
        Symmetric, unit diagonal, entries in [−1, 1]; unitless.
    """
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] == 0:
        raise CovarianceError(f"C must be a square matrix, got shape {C.shape}")
    d = np.diag(C).copy()
    if np.any(d < -rtol * max(np.max(np.abs(d)), 1e-300)):
        raise CovarianceError(f"C has negative variances on its diagonal (smallest {d.min():.3g}): not a covariance")
    ok = d > rtol * max(d.max(), 1e-300)
    s = np.where(ok, np.sqrt(np.where(ok, d, 1.0)), np.inf)
    out = C / s[:, None] / s[None, :]
    out = 0.5 * (out + out.T)
    np.clip(out, -1.0, 1.0, out=out)
    np.fill_diagonal(out, 1.0)
    return out


def empirical_force_correlation(F: Any) -> np.ndarray:
    """Correlation of the 3N force components over the frames: ``np.corrcoef`` of F reshaped (M, 3N).

    Parameters
    ----------
    F : array_like, shape (M, N, 3)
        Forces (any unit: correlation is unitless), M >= 2.

    Returns
    -------
    ndarray, shape (3N, 3N)
        Ordered (atom, component). A component that never changes has no
        correlation: its row and column are 0 (1 on the diagonal).
    """
    F = np.asarray(F, dtype=np.float64)
    if F.ndim != 3 or F.shape[-1] != 3 or F.shape[0] < 2:
        raise CovarianceError(f"F must have shape (M, N, 3) with M >= 2 frames, got {F.shape}")
    X = F.reshape(F.shape[0], -1)
    Xc = X - X.mean(axis=0)
    cov = Xc.T @ Xc / (X.shape[0] - 1)
    return to_correlation(cov)


# ---------------------------------------------------------------------------
# what AFF keeps (method.md "AFF force model": blocks of one PE set, every frame)
# ---------------------------------------------------------------------------
#: Dropped share of the off-diagonal correlation above which the decoupling is called weak.
WEAK_DECOUPLING = 0.30
#: ... and below which it is called strong.
STRONG_DECOUPLING = 0.10


def set_order(pe_sets: Sequence[Sequence[int]]) -> list[int]:
    """Atoms listed set by set (each set sorted): the order in which AFF's blocks are contiguous."""
    return [int(a) for s in pe_sets for a in sorted(int(i) for i in s)]


@dataclass(frozen=True)
class BlockShare:
    """How much of a force correlation matrix lies inside AFF's PE-set blocks (:func:`block_share`).

    Attributes
    ----------
    kept : float
        Share of the off-diagonal squared Frobenius norm Σ C_ab² (a ≠ b) whose
        two components belong to atoms of one PE set (any frames): what AFF models.
    entries : float
        Share of the off-diagonal entries inside those blocks: ``kept`` would
        equal it if the correlation were spread evenly.
    mean_within, mean_between : float
        Mean |C_ab| (a ≠ b) inside the blocks and between different sets.
    """

    kept: float
    entries: float
    mean_within: float
    mean_between: float

    @property
    def dropped(self) -> float:
        """1 − ``kept``: the share of the coupling the AFF decomposition leaves out."""
        return 1.0 - self.kept

    @property
    def verdict(self) -> str:
        """``'strong'``, ``'partial'`` or ``'weak'`` decoupling (thresholds :data:`STRONG_DECOUPLING`, :data:`WEAK_DECOUPLING`)."""
        if self.dropped < STRONG_DECOUPLING:
            return "strong"
        return "weak" if self.dropped > WEAK_DECOUPLING else "partial"


def block_share(C: Any, pe_sets: Sequence[Sequence[int]], n_atoms: int, n_frames: int = 1) -> BlockShare:
    """Share of a force correlation matrix inside the AFF blocks.

    Parameters
    ----------
    C : array_like, shape (3·N·k, 3·N·k)
        Correlation (unitless; :func:`to_correlation` of a covariance), ordered
        (frame, atom, component) as every matrix here.
    pe_sets : sequence of sequences of int
        The PE sets, a partition of the N atoms.
    n_atoms, n_frames : int
        N and k.

    Returns
    -------
    BlockShare
        The diagonal (each component with itself, 1 by definition) is left out of
        every number, so a matrix with no coupling at all reads ``kept = 0/0 → 1``.
    """
    C = np.asarray(C, dtype=np.float64)
    n = 3 * int(n_atoms) * int(n_frames)
    if C.shape != (n, n):
        raise CovarianceError(f"C has shape {C.shape}; {n_atoms} atoms × 3 × {n_frames} frames needs ({n}, {n})")
    label = np.full(int(n_atoms), -1)
    for k, s in enumerate(pe_sets):
        label[np.asarray(list(s), dtype=np.int64)] = k
    if np.any(label < 0):
        raise CovarianceError(f"the PE sets do not cover atoms {np.flatnonzero(label < 0).tolist()}")
    row_set = np.tile(np.repeat(label, 3), int(n_frames))
    same = row_set[:, None] == row_set[None, :]
    off = ~np.eye(n, dtype=bool)
    inside, outside = same & off, ~same
    sq = C * C
    total = float(sq[off].sum())
    kept = float(sq[inside].sum()) / total if total > 0 else 1.0
    entries = float(inside.sum()) / max(float(off.sum()), 1.0)
    absC = np.abs(C)
    within = float(absC[inside].mean()) if inside.any() else float("nan")
    between = float(absC[outside].mean()) if outside.any() else float("nan")
    return BlockShare(kept=kept, entries=entries, mean_within=within, mean_between=between)


# ---------------------------------------------------------------------------
# cost of the decomposition
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CostComparison:
    """AFF (one kernel per PE set) against GDML/sGDML (one kernel for all atoms), at M frames.

    Attributes
    ----------
    n_train : int
        M.
    set_sizes : tuple of int
        l_i.
    n_atoms : int
        N = Σ l_i.
    aff_flops, full_flops : float
        Σ_i (3 M l_i)³/3 and (3 M N)³/3, Cholesky flops.
    aff_bytes, full_bytes : int
        Σ_i 8 (3 M l_i)² and 8 (3 M N)², bytes of the float64 kernel matrices.
    """

    n_train: int
    set_sizes: tuple[int, ...]
    n_atoms: int
    aff_flops: float
    full_flops: float
    aff_bytes: int
    full_bytes: int

    @property
    def flops_ratio(self) -> float:
        """How many times fewer flops AFF needs."""
        return self.full_flops / self.aff_flops

    @property
    def bytes_ratio(self) -> float:
        """How many times less kernel memory AFF needs."""
        return self.full_bytes / self.aff_bytes


def compare_cost(n_train: int, set_sizes: Sequence[int]) -> CostComparison:
    """Cholesky flops and kernel memory of AFF and of GDML/sGDML for M = ``n_train`` frames.

    Parameters
    ----------
    n_train : int
        M >= 1.
    set_sizes : sequence of int
        l_i of each PE set (N = their sum).
    """
    if isinstance(n_train, bool) or int(n_train) != n_train or n_train < 1:
        raise CovarianceError(f"M must be a whole number >= 1, got {n_train!r}")
    sizes = tuple(int(l) for l in set_sizes)
    if not sizes or min(sizes) < 1:
        raise CovarianceError(f"set sizes must be >= 1, got {list(sizes)}")
    n = sum(sizes)
    aff = estimate_cost(int(n_train), sizes)
    full = estimate_cost(int(n_train), (n,))
    return CostComparison(
        n_train=int(n_train),
        set_sizes=sizes,
        n_atoms=n,
        aff_flops=aff.cholesky_flops,
        full_flops=full.cholesky_flops,
        aff_bytes=int(sum(8 * s * s for s in aff.matrix_sides)),
        full_bytes=int(sum(8 * s * s for s in full.matrix_sides)),
    )


def _si(value: float, unit: str, prefixes: Sequence[tuple[float, str]]) -> str:
    for scale, prefix in prefixes:
        if abs(value) >= scale:
            return f"{value / scale:,.3g} {prefix}{unit}" if value / scale < 1000 else f"{value / scale:,.0f} {prefix}{unit}"
    return f"{value:,.3g} {unit}"


def format_flops(flops: float) -> str:
    """``3.11e10`` → ``'31.1 GFLOP'`` (decimal prefixes, up to PFLOP)."""
    return _si(float(flops), "FLOP", [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")])


def format_bytes(n: float) -> str:
    """``2.07e8`` → ``'207 MB'`` (decimal: 1 MB = 10⁶ bytes, 1 GB = 10⁹ bytes)."""
    return _si(float(n), "B", [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")])
