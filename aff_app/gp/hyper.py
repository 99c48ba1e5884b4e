"""Hyperparameter search for the per-set force GPs (shared γ and λ).

method.md "AFF force model": with F_i ~ N(0, σ_i² (R_i + λI)) the profile
log-likelihood, σ_i² maximised out, is

    ℓ(γ, λ) = Σ_i −½ [ log|R_i + λI| + n_i log σ̂_i² ],  σ̂_i² = F_iᵀ (R_i + λI)⁻¹ F_i / n_i

(constants dropped), n_i = 3 M l_i. For a fixed γ one eigendecomposition
R_i = Q Λ Qᵀ makes every λ cost O(n_i): log|R_i + λI| = Σ log(Λ + λ) and
F_iᵀ(R_i + λI)⁻¹F_i = Σ (QᵀF_i)² / (Λ + λ). The alternative criterion is
leave-one-frame-out cross-validation, exact for a GP: the residual of frame f
is B_f⁻¹ (K⁻¹ y)_f with B_f the f-th 3l×3l diagonal block of K⁻¹, both read
off the same eigendecomposition.

γ is searched on a log grid around the median descriptor distance, then
refined by successive parabolic interpolation in log γ; λ on a log grid over many decades
(the labels are nearly noise-free: method.md warns the nugget matters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from aff_app.gp._lapack_nogil import eig_projected

if TYPE_CHECKING:  # kernels (numba) is imported where the kernels are built
    from aff_app.gp.kernels import Geometry

#: λ grid in units of the kernel scale 5/(3γ²) (the force variance at ρ = 0).
LAMBDA_GRID_REL = np.logspace(-13, -1, 49)
#: Grid points added beyond either end of the γ grid when the optimum sits there.
MAX_GRID_EXTENSIONS = 4


@dataclass
class SearchResult:
    """Outcome of a hyperparameter search.

    Attributes
    ----------
    gamma, lam : float
        Selected range (1/Å, descriptor units) and nugget (same units as R_i).
    criterion : str
        'likelihood' (profile log-likelihood, larger is better) or 'cv'
        (leave-one-frame-out mean squared force error, smaller is better).
    score : float
        The criterion at (gamma, lam).
    converged : bool
        False when the optimum sits on the edge of the searched γ or λ range.
    history : list of (gamma, lam, score)
        Every γ evaluated, with its best λ.
    n_frames : int
        Frames the search used.
    lam_min_rel : float
        Smallest λ searched, in units of the kernel variance 5/(3γ²): 0 for the whole grid,
        the iterative solver's floor when the fit takes that path (method.md "Iterative path").
    """

    gamma: float
    lam: float
    criterion: str
    score: float
    converged: bool
    history: list = field(default_factory=list)
    n_frames: int = 0
    lam_min_rel: float = 0.0

    def to_dict(self) -> dict:
        return {
            "gamma": self.gamma,
            "lam": self.lam,
            "criterion": self.criterion,
            "score": self.score,
            "converged": self.converged,
            "n_frames": self.n_frames,
            "lam_min_rel": self.lam_min_rel,
            "history": [list(map(float, h)) for h in self.history],
        }


def _spectrum(K, y):
    lam, Q = np.linalg.eigh(K)
    return np.maximum(lam, 0.0), Q, Q.T @ y


def _spectrum_no_vectors(K, y):
    # the likelihood needs Λ and QᵀF only: tridiagonalise and skip forming Q (≈ 2× faster)
    lam, qy = eig_projected(K, y, overwrite=True)
    return np.maximum(lam, 0.0), None, qy


def _spectra(Ks, ys, *, vectors: bool = True):
    """Eigendecompose every set's kernel: sets in parallel, one BLAS thread each.

    The search matrices are small (side ≤ a few thousand); OpenBLAS threads on
    them were 4× slower than one thread on the 2-core reference machine, so we
    parallelise across PE sets instead (:func:`search` limits BLAS to one
    thread for its whole run, :func:`aff_app.gp.kernels.single_threaded_blas`). ``vectors=False`` returns Q = None
    (enough for the likelihood; LOO-CV needs Q) and overwrites ``Ks``.
    """
    from aff_app.gp.kernels import parallel_map

    fn = _spectrum if vectors else _spectrum_no_vectors
    if len(Ks) == 1:
        return [fn(Ks[0], ys[0])]
    return parallel_map(lambda k: fn(Ks[k], ys[k]), range(len(Ks)))


def profile_loglik(spectra, lams: np.ndarray) -> np.ndarray:
    """ℓ(λ) for each λ in ``lams`` (shape (L,)), from per-set eigen-decompositions."""
    total = np.zeros(lams.size)
    for ev, _, qy in spectra:
        d = ev[None, :] + lams[:, None]  # (L, n)
        n = ev.size
        quad = np.sum(qy[None, :] ** 2 / d, axis=1)
        total += -0.5 * (np.sum(np.log(d), axis=1) + n * np.log(quad / n))
    return total


def loo_cv_error(spectra, lams: np.ndarray, block: list[int]) -> np.ndarray:
    """Leave-one-frame-out mean squared force-component error for each λ.

    ``block[i]`` is 3·l_i, the size of one frame's block in set i.
    """
    sse = np.zeros(lams.size)
    count = 0
    for (ev, Q, qy), b in zip(spectra, block):
        n = ev.size
        Qb = Q.reshape(n // b, b, n)  # rows grouped by frame
        for k, lam in enumerate(lams):
            w = 1.0 / (ev + lam)
            alpha = Q @ (w * qy)  # K⁻¹ y
            Binv = np.einsum("fan,n,fbn->fab", Qb, w, Qb)  # diagonal blocks of K⁻¹
            r = np.linalg.solve(Binv, alpha.reshape(-1, b, 1))[..., 0]
            sse[k] += np.sum(r * r)
        count += n
    return sse / count


def golden_section_max(f, a: float, b: float, n_evals: int) -> None:
    """Golden-section search for a maximum of ``f`` on [a, b] with ``n_evals`` evaluations.

    Returns nothing: callers memoise ``f`` and read the best point from their cache
    (it may lie outside [a, b] if an earlier grid evaluation was better).
    """
    phi = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - phi * (b - a), a + phi * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(max(0, n_evals - 2)):
        if fc > fd:
            b, d, fd = d, c, fc
            c = b - phi * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + phi * (b - a)
            fd = f(d)


def parabolic_refine_max(f, cache_points: dict, n_evals: int, *, tol: float = 0.05) -> None:
    """Successive parabolic interpolation for a maximum of a smooth ``f`` (log γ here).

    ``cache_points`` maps x -> f(x) for the points already evaluated (the grid);
    each step fits a parabola through the best point and its two neighbours,
    evaluates ``f`` at the vertex (kept inside the neighbours' bracket) and adds
    it. Stops after ``n_evals`` evaluations, when the best point is at an end of
    the evaluated range, or when the vertex moves less than ``tol``. On the
    profile likelihood, which is smooth in log γ, 3 steps reach the precision of
    5 golden-section steps (the search costs one eigendecomposition per step).
    """
    for _ in range(n_evals):
        xs = sorted(cache_points)
        k = max(range(len(xs)), key=lambda i: cache_points[xs[i]])
        if k == 0 or k == len(xs) - 1:
            return
        x0, x1, x2 = xs[k - 1], xs[k], xs[k + 1]
        f0, f1, f2 = cache_points[x0], cache_points[x1], cache_points[x2]
        den = (x1 - x0) * (f1 - f2) - (x1 - x2) * (f1 - f0)
        if not np.isfinite(den) or den == 0.0:
            x = 0.5 * (x0 + x1) if (x1 - x0) > (x2 - x1) else 0.5 * (x1 + x2)
        else:
            x = x1 - 0.5 * ((x1 - x0) ** 2 * (f1 - f2) - (x1 - x2) ** 2 * (f1 - f0)) / den
        # keep the new point strictly inside the bracket and away from evaluated points
        margin = 0.1 * min(x1 - x0, x2 - x1)
        x = float(np.clip(x, x0 + margin, x2 - margin))
        if abs(x - x1) < max(tol, margin) * 0.5:
            # vertex on the best point: probe the larger side instead (or stop if converged)
            if max(x1 - x0, x2 - x1) < 2 * tol:
                return
            x = 0.5 * (x1 + (x0 if x1 - x0 > x2 - x1 else x2))
        cache_points[x] = f(x)


@dataclass(frozen=True)
class SearchKernels:
    """The search frames' per-set kernels R_i(γ): ``build`` of :func:`search`, picklable (a task's input).

    A closure over the frames would do for the serial search; a γ candidate that runs on
    another process (:func:`score_gamma` as a :class:`~aff_app.parallel.Task`) needs its
    inputs as plain data: the frames' kernel terms, the sets and the permutations.

    Attributes
    ----------
    geometry : aff_app.gp.kernels.Geometry
        The search frames (m of them).
    sets : tuple of int arrays
        The PE sets' atoms, in the order of the labels ``ys``.
    perms : (S, N) int array
        Permutations averaged in the kernel (method.md (7)).
    """

    geometry: "Geometry"
    sets: tuple
    perms: np.ndarray

    def __call__(self, gamma: float) -> list:
        """R_i at range ``gamma`` (1/Å), shapes (3·m·l_i, 3·m·l_i), in the order of ``sets``."""
        from aff_app.gp.kernels import force_covariance_sets

        return force_covariance_sets(self.geometry, self.geometry, gamma, list(self.sets), perms=self.perms)


@dataclass(frozen=True)
class _Candidates:
    """What every γ candidate of one search shares: sent to a cluster once (:meth:`Executor.scatter`)."""

    build: object
    ys: tuple
    criterion: str
    block: tuple | None
    lam_min_rel: float = 0.0


def lambda_grid(lam_min_rel: float = 0.0) -> tuple[np.ndarray, int]:
    """The searched part of ``LAMBDA_GRID_REL``: the points ≥ ``lam_min_rel``, and the index of the first.

    The iterative solver cannot reach the grid's lower end (method.md "Iterative path"), and a γ
    chosen for a nugget it will not get over-fits: its search scores γ at the nuggets it can use.
    """
    first = int(np.searchsorted(LAMBDA_GRID_REL, float(lam_min_rel) * (1 - 1e-9)))
    return LAMBDA_GRID_REL[min(first, LAMBDA_GRID_REL.size - 1):], min(first, LAMBDA_GRID_REL.size - 1)


def score_gamma(build, ys, gamma: float, criterion: str, block=None,
                lam_min_rel: float = 0.0) -> tuple[float, float, int]:
    """One γ candidate of the search: its best λ on the grid and the criterion there.

    Module-level and a function of plain inputs, so a candidate can run as a
    :class:`~aff_app.parallel.Task` on another process with the numbers of this one: BLAS at one
    thread whenever there are several sets (as :func:`search` runs), the sets' spectra in parallel.

    Parameters
    ----------
    build : callable γ -> list of ndarray
        The search frames' kernels R_i (picklable, e.g. :class:`SearchKernels`, to run elsewhere).
    ys : sequence of ndarray
        F_i of each set, shapes (3·m·l_i,), kcal/mol/Å.
    gamma : float
        The candidate range, 1/Å.
    criterion : {'likelihood', 'cv'}
    block : sequence of int, optional
        3·l_i per set ('cv' only).
    lam_min_rel : float
        Score λ ≥ this many kernel variances only (:func:`lambda_grid`).

    Returns
    -------
    score, lam, index : float, float, int
        The criterion at the best λ (larger is better: ℓ, or −LOO-CV error), that λ (kernel
        units) and its index on ``LAMBDA_GRID_REL``.
    """
    from contextlib import nullcontext

    from aff_app.gp.kernels import single_threaded_blas

    g = float(gamma)
    grid, first = lambda_grid(lam_min_rel)
    lams = grid * 5.0 / (3.0 * g * g)
    with single_threaded_blas() if len(ys) > 1 else nullcontext():
        spectra = _spectra(build(g), list(ys), vectors=criterion == "cv")
        if criterion == "likelihood":
            vals = profile_loglik(spectra, lams)
            vals = np.where(np.isfinite(vals), vals, -np.inf)
            k = int(np.argmax(vals))
            score = float(vals[k])
        else:
            vals = loo_cv_error(spectra, lams, list(block))
            vals = np.where(np.isfinite(vals), vals, np.inf)
            k = int(np.argmin(vals))
            score = -float(vals[k])
    return score, float(lams[k]), first + k


def _score_candidate(shared: _Candidates, gamma: float) -> tuple[float, float, int]:
    """:func:`score_gamma` of one candidate with the search's shared inputs (a task's function)."""
    from aff_app.parallel import aligned

    shared = aligned(shared)  # Dask may deliver unaligned arrays, which numpy's matmul sums without BLAS
    return score_gamma(shared.build, shared.ys, gamma, shared.criterion, shared.block, shared.lam_min_rel)


def _gamma_of(log_g: float) -> float:
    # one expression for the cache key, wherever a candidate is evaluated (grid tasks or here)
    return float(np.exp(log_g))


def search(
    build,
    ys,
    *,
    rho_scale: float,
    criterion: str = "likelihood",
    gamma: float | None = None,
    block=None,
    n_grid: int = 5,
    n_refine: int = 3,
    progress=None,
    n_frames: int = 0,
    executor=None,
    lam_min_rel: float = 0.0,
) -> SearchResult:
    """Maximise the profile likelihood (or minimise LOO-CV error) over γ and λ.

    Parameters
    ----------
    build : callable γ -> list of ndarray
        Kernel matrices R_i of the search frames for range γ (picklable, e.g.
        :class:`SearchKernels`, when ``executor`` runs on other processes).
    ys : list of ndarray
        Stacked forces F_i of each set (same order).
    rho_scale : float
        Typical descriptor distance between search frames (median), 1/Å.
    gamma : float, optional
        Fix γ and search λ only.
    executor : aff_app.parallel.Executor, optional
        A remote one (Dask; a serial executor changes nothing) runs the ``n_grid``
        candidates of the initial γ grid as independent tasks (:func:`score_gamma`;
        ``build`` and ``ys`` are scattered once). The grid's
        extensions past an edge and the parabolic refinement depend on the scores before
        them and run here, one after another. The result is the serial search's: each
        candidate is the same computation with the same BLAS threads (one, for several
        sets; a single set's eigendecomposition may round differently on a one-thread
        worker than on this process's threads).
    lam_min_rel : float
        Search λ ≥ this many kernel variances 5/(3γ²) only (:func:`lambda_grid`; the iterative
        solver's floor, method.md "Iterative path"): γ is then chosen for the nuggets the fit
        can use.
    """
    if criterion not in ("likelihood", "cv"):
        raise ValueError(f"criterion must be 'likelihood' or 'cv', got {criterion!r}")
    cache: dict[float, tuple[float, float, int]] = {}
    n_sets = len(ys)
    calls = [0]
    total_calls = 1 if gamma is not None else n_grid + n_refine

    def evaluate(log_g: float) -> float:
        g = _gamma_of(log_g)
        if g in cache:
            return cache[g][0]
        cache[g] = score_gamma(build, ys, g, criterion, block, lam_min_rel)
        calls[0] += 1
        if progress is not None:
            progress(min(1.0, calls[0] / total_calls), f"γ = {g:.3g}: best λ = {cache[g][1]:.2e}")
        return cache[g][0]

    def prefetch(log_gs) -> None:
        """The grid's candidates at once, as tasks on ``executor`` (nothing to do without one)."""
        from aff_app.parallel import Task

        todo = [g for g in dict.fromkeys(_gamma_of(x) for x in log_gs) if g not in cache]
        if executor is None or not executor.remote or len(todo) < 2:
            return  # here, one after another: the same numbers, with progress after each
        shared = executor.scatter(_Candidates(build, tuple(ys), criterion, None if block is None else tuple(block),
                                              float(lam_min_rel)))
        tasks = [Task(name=f"γ candidate {g:.4g} ({n_frames} search frames, {n_sets} sets)", fn=_score_candidate,
                      args=(shared, g)) for g in todo]
        sub = None if progress is None else (
            lambda f, msg: progress(min(1.0, f * len(todo) / total_calls), f"γ grid: {msg}"))
        for g, res in zip(todo, executor.run(tasks, progress=sub)):
            cache[g] = (float(res[0]), float(res[1]), int(res[2]))
        calls[0] += len(todo)

    from contextlib import nullcontext

    from aff_app.gp.kernels import single_threaded_blas

    with single_threaded_blas() if n_sets > 1 else nullcontext():
        result = _search(evaluate, prefetch, cache, criterion, gamma, rho_scale, n_grid, n_refine, n_frames)
    result.lam_min_rel = float(lam_min_rel)
    return result


def _search(evaluate, prefetch, cache, criterion, gamma, rho_scale, n_grid, n_refine, n_frames) -> SearchResult:
    if gamma is not None:
        evaluate(np.log(gamma))
        # the cache is keyed by exp(log γ), which need not be γ to the last bit (exp(log 3) = 3.0000000000000004)
        cache = {float(gamma): next(iter(cache.values()))}
        best_g = float(gamma)
        lo_edge = hi_edge = False
    else:
        grid = list(np.log(rho_scale) + np.linspace(np.log(0.1), np.log(30.0), n_grid))
        step = grid[1] - grid[0]
        prefetch(grid)  # independent candidates: tasks on an executor when there is one
        scores = [evaluate(x) for x in grid]
        # an optimum on the edge of the grid: walk outwards (bounded) until it is inside
        for _ in range(MAX_GRID_EXTENSIONS):
            k = int(np.argmax(scores))
            if k == len(grid) - 1:
                grid.append(grid[-1] + step)
                scores.append(evaluate(grid[-1]))
            elif k == 0:
                grid.insert(0, grid[0] - step)
                scores.insert(0, evaluate(grid[0]))
            else:
                break
        n_grid = len(grid)
        grid = np.array(grid)
        k = int(np.argmax(scores))
        lo_edge, hi_edge = k == 0, k == n_grid - 1
        # refinement in log γ around the best grid point (parabolic steps)
        points = {float(x): float(v) for x, v in zip(grid, scores)}
        parabolic_refine_max(evaluate, points, n_refine)
        best_g = max(cache, key=lambda g: cache[g][0])
    score, lam, k = cache[best_g]
    # λ at the bottom of its grid is not a failed search: 1e-13 of the kernel variance is the floor that
    # double precision allows (a Cholesky factor of a 10⁴-sided kernel loses ~1e-12 relative), and ab initio
    # labels are nearly noise-free, so the nugget goes there whenever the kernel fits them. Only the top edge
    # (labels noisier than any λ on the grid) leaves the optimum outside the search.
    lam_edge = k == LAMBDA_GRID_REL.size - 1
    history = sorted((g, v[1], v[0] if criterion == "likelihood" else -v[0]) for g, v in cache.items())
    return SearchResult(
        gamma=float(best_g),
        lam=lam,
        criterion=criterion,
        score=score if criterion == "likelihood" else -score,
        converged=not (lo_edge or hi_edge or lam_edge),
        history=history,
        n_frames=n_frames,
    )
