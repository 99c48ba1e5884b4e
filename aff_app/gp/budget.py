"""Memory and time estimates for a fit, checked before any kernel is built.

Sizes follow method.md: PE set i has a 3·M·l_i square kernel; AFF factors
each one (Σ (3 M l_i)³/3 flops), GDML/sGDML one of side 3·M·N ((3MN)³/3).
When the dense kernels exceed the budget an AFF fit can take the iterative
path instead (method.md "Iterative path", ``aff_app.gp.iterative``): its
memory is the preconditioner's, chosen to fit the budget.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from aff_app.errors import AFFError

#: Fraction of physical memory a fit may use by default.
DEFAULT_MEMORY_FRACTION = 0.6
#: Dense Cholesky rate assumed for time estimates (flop/s); measured on a
#: 2-core machine, see benchmarks/bench_forces.py.
ASSUMED_FLOPS = 3.0e10
#: Solvers a fit can take: 'dense' (Cholesky), 'iterative' (preconditioned CG), 'auto' (dense
#: when its kernels fit the budget, else iterative).
SOLVERS = ("auto", "dense", "iterative")
#: CG iterations per solve that the iterative path's time estimate assumes, per training frame
#: per Nyström frame (M/r): the preconditioner captures less of the kernel as M outgrows r.
#: Measured on benzene (λ at the floor, γ searched for it): M/r = 3 (M = 1000): 33–54 iterations
#: per solve; M/r = 16 (M = 4500): 189–365. docs/benchmarks.md "Iterative path".
CG_ITERATIONS_PER_RATIO = 20.0


def expected_cg_iterations(n_train: int, nystrom_frames: int) -> int:
    """CG iterations of one solve of the iterative path, for the time estimate (two solves per fit)."""
    from aff_app.gp.iterative import CG_MAX_ITER

    ratio = n_train / max(int(nystrom_frames), 1)
    return int(min(max(CG_ITERATIONS_PER_RATIO * ratio, 20), CG_MAX_ITER))
#: Rate of the matrix-free product's GEMMs (inner dimension ~50: below the Cholesky's rate).
ASSUMED_MATVEC_FLOPS = 1.5e10


class ComputeBudgetError(AFFError, MemoryError):
    """A fit that would exceed the memory budget (message carries the numbers)."""


def physical_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 2**30


def default_budget_bytes() -> int:
    """``AFF_MEMORY_BUDGET_GB`` if set, else a safe share of this machine's RAM."""
    env = os.environ.get("AFF_MEMORY_BUDGET_GB")
    if env:
        return int(float(env) * 2**30)
    return int(DEFAULT_MEMORY_FRACTION * physical_memory_bytes())


@dataclass(frozen=True)
class CostEstimate:
    """What one fit needs.

    Attributes
    ----------
    n_train : int
        M, training configurations.
    set_sizes : tuple of int
        l_i of each set (one set of N atoms for GDML/sGDML).
    n_perms : int
        S, permutations averaged in the kernel (build cost scales with S).
    matrix_sides : tuple of int
        3·M·l_i, side of each kernel matrix.
    peak_bytes : int
        Kernel matrices held at once (all sets, float64, factored in place) plus
        the assembly's chunk temporaries.
    cholesky_flops : float
        Σ (3 M l_i)³ / 3.
    seconds : float
        Rough wall time of one fit at ``ASSUMED_FLOPS``.
    solver : {'dense', 'iterative'}
        The path the fit takes: ``peak_bytes``, ``seconds`` are that path's. 'iterative' when
        asked for, or with ``solver='auto'`` when the dense peak exceeds the budget.
    dense_peak_bytes : int or None
        The dense path's peak (equal to ``peak_bytes`` when it is taken).
    iterative_peak_bytes : int or None
        The iterative path's peak with ``nystrom_frames`` preconditioner frames (None when not estimated).
    nystrom_frames : int or None
        r, the iterative path's subset of frames (preconditioner and predictive variance).
    iterative_seconds : float or None
        Rough wall time of the iterative fit (:func:`expected_cg_iterations` per solve).
    """

    n_train: int
    set_sizes: tuple[int, ...]
    n_perms: int
    matrix_sides: tuple[int, ...]
    peak_bytes: int
    cholesky_flops: float
    seconds: float
    solver: str = "dense"
    dense_peak_bytes: int | None = None
    iterative_peak_bytes: int | None = None
    nystrom_frames: int | None = None
    iterative_seconds: float | None = None

    @property
    def summary(self) -> str:
        """One line for the CLI and the Train page: the path, its memory and time."""
        if self.solver == "iterative":
            dense = "" if self.dense_peak_bytes is None else f"; dense would need {_gb(self.dense_peak_bytes)}"
            return (f"iterative solver (conjugate gradients, {self.nystrom_frames} preconditioner frames): "
                    f"about {_gb(self.peak_bytes)}, ~{self.seconds:.3g} s{dense}")
        return f"dense solver (Cholesky): about {_gb(self.peak_bytes)}, ~{self.seconds:.3g} s"

    def to_dict(self) -> dict:
        return {
            "n_train": self.n_train,
            "set_sizes": list(self.set_sizes),
            "n_perms": self.n_perms,
            "matrix_sides": list(self.matrix_sides),
            "peak_GB": self.peak_bytes / 2**30,
            "cholesky_GFLOP": self.cholesky_flops / 1e9,
            "seconds_estimate": self.seconds,
            "solver": self.solver,
            "dense_peak_GB": None if self.dense_peak_bytes is None else self.dense_peak_bytes / 2**30,
            "iterative_peak_GB": None if self.iterative_peak_bytes is None else self.iterative_peak_bytes / 2**30,
            "nystrom_frames": self.nystrom_frames,
            "summary": self.summary,
        }


def estimate_cost(n_train: int, set_sizes, *, n_perms: int = 1, keep_factors: bool = True,
                  solver: str = "dense", budget_bytes: int | None = None, n_atoms: int | None = None) -> CostEstimate:
    """Estimate memory and time of a fit of M = ``n_train`` frames.

    ``keep_factors=False``: a fit that keeps no Cholesky factors reuses one
    kernel buffer for every PE set, so its peak holds the largest kernel only.

    ``solver``: 'dense' (default, the Cholesky path), 'iterative' (method.md "Iterative path":
    the preconditioner sized to ``budget_bytes``) or 'auto' (dense when its peak fits
    ``budget_bytes``, else iterative), as :func:`aff_app.gp.force.fit_force_model` decides.
    ``budget_bytes`` defaults to :func:`default_budget_bytes`; ``n_atoms`` to Σ l_i.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    dense = _dense_cost(n_train, set_sizes, n_perms=n_perms, keep_factors=keep_factors)
    if solver == "dense":
        return dense
    budget = default_budget_bytes() if budget_bytes is None else int(budget_bytes)
    if solver == "auto" and dense.peak_bytes <= budget:
        return dense
    return iterative_cost(dense, budget, n_atoms=n_atoms)


def iterative_cost(dense: CostEstimate, budget: int, *, n_atoms: int | None = None) -> CostEstimate:
    """The iterative path's :class:`CostEstimate` for the fit whose dense estimate is ``dense``."""
    from aff_app.gp.iterative import CALIBRATION_FRAMES, choose_subset_frames, iterative_memory

    m, sizes, s = dense.n_train, dense.set_sizes, dense.n_perms
    n = int(n_atoms) if n_atoms is not None else int(sum(sizes))
    q = min(max(CALIBRATION_FRAMES, m // 20), m // 4) if m >= 8 else 0
    r, cache = choose_subset_frames(m, sizes, s, n, budget, held_out=q)
    peak = iterative_memory(m, sizes, s, n, r, cache_coefficients=cache)
    touched = sum(l * (n - 1) - l * (l - 1) // 2 for l in sizes)  # pairs with an atom of each set
    matvec = 6.0 * m * s * m * touched  # three GEMMs per product (method.md (27))
    pre = sum(2.0 * (3 * m * l) * (3 * r * l) ** 2 for l in sizes)  # trsm + syrk per set
    build = sum(8 * (3 * m * l) * (3 * r * l) for l in sizes) * s / 2e9
    iters = expected_cg_iterations(m, r)
    coef = (0.0 if cache else 1.0) * 2 * iters * s * m * m * 2e-8
    secs = 2 * iters * matvec / ASSUMED_MATVEC_FLOPS + pre / ASSUMED_FLOPS + build + coef
    return CostEstimate(
        n_train=m, set_sizes=sizes, n_perms=s, matrix_sides=dense.matrix_sides, peak_bytes=int(peak),
        cholesky_flops=dense.cholesky_flops, seconds=float(secs), solver="iterative",
        dense_peak_bytes=dense.peak_bytes, iterative_peak_bytes=int(peak), nystrom_frames=int(r),
        iterative_seconds=float(secs),
    )


def _dense_cost(n_train: int, set_sizes, *, n_perms: int = 1, keep_factors: bool = True) -> CostEstimate:
    sides = tuple(3 * int(n_train) * int(l) for l in set_sizes)
    mats = sum(8 * n * n for n in sides) if keep_factors else 8 * max(sides) ** 2
    # factored in place; plus the assembly's chunk temporaries (at most CHUNK_BYTES) and,
    # with several sets, the pair coefficients they share (16 bytes per frame pair and permutation)
    shared = 16 * int(n_train) ** 2 * int(n_perms) // 2 if len(sides) > 1 else 0
    peak = mats + min(192 * 2**20, 4 * mats) + shared
    flops = sum(n**3 / 3.0 for n in sides)
    build = sum(8 * n * n for n in sides) * n_perms / 2e9  # memory-bound assembly, ~2 GB/s
    return CostEstimate(
        n_train=int(n_train),
        set_sizes=tuple(int(l) for l in set_sizes),
        n_perms=int(n_perms),
        matrix_sides=sides,
        peak_bytes=int(peak),
        cholesky_flops=flops,
        seconds=flops / ASSUMED_FLOPS + build,
        solver="dense",
        dense_peak_bytes=int(peak),
    )


def check_budget(estimate: CostEstimate, budget_bytes: int | None = None, *, what: str = "fit") -> None:
    """Raise :class:`ComputeBudgetError` when the estimate exceeds the budget."""
    budget = default_budget_bytes() if budget_bytes is None else int(budget_bytes)
    if estimate.peak_bytes > budget and estimate.solver == "iterative":
        raise ComputeBudgetError(
            f"this {what} needs about {_gb(estimate.peak_bytes)} even with the iterative solver and no "
            f"preconditioner frames (M = {estimate.n_train} frames, {estimate.n_perms} permutations) but the "
            f"memory budget is {_gb(budget)}: use fewer training frames or raise the budget (AFF_MEMORY_BUDGET_GB)."
        )
    if estimate.peak_bytes > budget:
        largest = max(estimate.matrix_sides)
        raise ComputeBudgetError(
            f"this {what} needs about {_gb(estimate.peak_bytes)} "
            f"(M = {estimate.n_train} frames, set sizes {list(estimate.set_sizes)}, largest kernel "
            f"{largest}×{largest}) but the memory budget is {_gb(budget)}: use fewer training "
            "frames, use AFF (smaller per-set kernels) instead of GDML/sGDML, or raise the budget "
            "(AFF_MEMORY_BUDGET_GB)."
        )


def _gb(n_bytes: float) -> str:
    """'1.5 GB', '0.0012 GB': three significant digits, never a misleading '0.0 GB'."""
    return f"{n_bytes / 2**30:.3g} GB"


@dataclass(frozen=True)
class TimeEstimate:
    """Seconds one "train and test" action is expected to take, part by part (:func:`estimate_time`).

    Attributes
    ----------
    search_s, fit_s, energy_s, held_out_s : float
        The hyperparameter search (0 with γ, λ fixed), the force fit (kernel
        assembly, factorisation, λ check, calibration), the energy model, and
        the held-out predictions (forces with their sd, and energies).
    """

    search_s: float
    fit_s: float
    energy_s: float
    held_out_s: float

    @property
    def total_s(self) -> float:
        return self.search_s + self.fit_s + self.energy_s + self.held_out_s

    @property
    def training_share(self) -> float:
        """Share of the total spent before the held-out predictions (for a time-linear progress bar)."""
        return (self.search_s + self.fit_s + self.energy_s) / max(self.total_s, 1e-9)


#: Constants of :func:`estimate_time`, fitted to fits of the bundled samples (benzene, uracil, aspirin; M = 100,
#: 300, 800; 200 test frames) on the 2-core reference machine: every part within a factor of 2 of the measured
#: one (docs/benchmarks.md, "What a fit costs, part by part").
_FIT_FACTOR, _FIT_OVERHEAD_S = 0.6, 0.3
_SEARCH_OVERHEAD_S, _SEARCH_PER_FRAME_ATOM_S = 0.6, 0.002 / 12
_ENERGY_OVERHEAD_S, _ENERGY_PER_FRAME_S = 0.05, 0.0014
_HELD_OUT_PER_FRAME_S, _HELD_OUT_PER_PAIR_S, _HELD_OUT_SOLVE_FLOPS = 1.3e-3, 1.4e-7, 6.0e10
#: AFF's integrated energy (method.md "AFF's energy"): the subset's λ search, its residual GP's γ search
#: (about 15 eigendecompositions of the held frames' kernel, ~10 M_C³ flops each) and each held-out frame's
#: energy (kernel rows over M_E frames and S permutations).
_SUBSET_SEARCH_S, _RESIDUAL_EIGH_FLOPS, _SUBSET_PREDICT_PER_ENTRY_S = 1.0, 10.0 * 15, 4.0e-8


def estimate_time(cost: CostEstimate, n_atoms: int, *, search: bool, energy: bool, n_test: int,
                  energy_subset: CostEstimate | None = None) -> TimeEstimate:
    """Seconds of each part of training and testing one model, from its :class:`CostEstimate`.

    The force fit scales with the factorisation estimate; the search with M·N
    (it works on a subset, capped in size); the held-out predictions per test
    frame with the N²·M kernel entries of its rows plus the triangular solves
    of the sd, Σ_i 3l_i (3Ml_i)² flops. ``energy_subset``: the cost of the integrated energy's
    subset fit (M_E frames, one set of all atoms), when the energy model is AFF's integrated one.
    """
    m, n = cost.n_train, int(n_atoms)
    fit = _FIT_FACTOR * cost.seconds + _FIT_OVERHEAD_S
    srch = (_SEARCH_OVERHEAD_S + _SEARCH_PER_FRAME_ATOM_S * m * n) if search else 0.0
    en = (_ENERGY_OVERHEAD_S + _ENERGY_PER_FRAME_S * m) if energy else 0.0
    solve = sum(3 * l * (3 * m * l) ** 2 for l in cost.set_sizes) / _HELD_OUT_SOLVE_FLOPS
    held = int(n_test) * (_HELD_OUT_PER_FRAME_S + _HELD_OUT_PER_PAIR_S * n * n * m + solve)
    if energy and energy_subset is not None:
        m_e, m_c = energy_subset.n_train, max(m - energy_subset.n_train, 0)
        en = (_FIT_FACTOR * energy_subset.seconds + _SUBSET_SEARCH_S
              + _RESIDUAL_EIGH_FLOPS * m_c**3 / ASSUMED_FLOPS)
        held += int(n_test) * _SUBSET_PREDICT_PER_ENTRY_S * m_e * energy_subset.n_perms * n * n
    return TimeEstimate(search_s=srch, fit_s=fit, energy_s=en, held_out_s=held)
