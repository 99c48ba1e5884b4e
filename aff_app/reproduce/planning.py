"""The reproduction's one split per molecule, and the training sizes it can afford (time and memory)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from aff_app.gp.budget import default_budget_bytes, estimate_cost
from aff_app.reproduce.settings import (
    ASSUMED_RATE,
    KERNEL_PAIR_S_PER_N2,
    PAPER_TABLE_I,
    SEARCH_S,
    ReproduceError,
    ReproduceSettings,
)


# ---------------------------------------------------------------------------
# split
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ReproSplit:
    """One molecule's split, shared by every method and both label sets.

    Attributes
    ----------
    test, valid : ndarray of int64, sorted
    pool : ndarray of int64
        Training candidates in their random order; :meth:`train` takes the first M.
    eval : ndarray of int64, sorted
        The test frames evaluated (all of ``test`` unless a subset was asked for).
    seed, n_frames : int
    """

    test: np.ndarray
    valid: np.ndarray
    pool: np.ndarray
    eval: np.ndarray
    seed: int
    n_frames: int

    def train(self, m: int) -> np.ndarray:
        """The M training frames (sorted): the first M of the pool."""
        m = int(m)
        if not 1 <= m <= self.pool.size:
            raise ReproduceError(
                f"cannot train on {m} frames: {self.n_frames} frames minus {self.test.size} test and "
                f"{self.valid.size} validation frames leave {self.pool.size}"
            )
        return np.sort(self.pool[:m])

    def to_dict(self, sizes: Sequence[int] = ()) -> dict:
        return {"seed": self.seed, "n_frames": self.n_frames, "test": self.test.tolist(),
                "valid": self.valid.tolist(), "eval": self.eval.tolist(),
                "train": {str(int(m)): self.train(m).tolist() for m in sorted(set(sizes))},
                "rule": "rng = numpy.random.default_rng(seed).permutation(n_frames): test = first n_test, "
                        "valid = next n_valid, training pool = the rest in that order; M frames = first M of the pool"}


def make_split(n_frames: int, n_test: int, n_valid: int, *, seed: int = 0, eval_frames: int | None = None) -> ReproSplit:
    """Seeded disjoint test / validation / training-pool frames (module docstring)."""
    if n_test + n_valid >= n_frames:
        raise ReproduceError(f"{n_test} test + {n_valid} validation frames leave no training frames "
                             f"in a trajectory of {n_frames}")
    perm = np.random.default_rng(seed).permutation(n_frames).astype(np.int64)
    test_order = perm[:n_test]
    ev = test_order if eval_frames is None else test_order[: int(eval_frames)]
    out = ReproSplit(test=np.sort(test_order), valid=np.sort(perm[n_test:n_test + n_valid]),
                     pool=perm[n_test + n_valid:].copy(), eval=np.sort(ev), seed=int(seed), n_frames=int(n_frames))
    for arr in (out.test, out.valid, out.pool, out.eval):
        arr.setflags(write=False)
    return out


# ---------------------------------------------------------------------------
# sizes: estimates and choices
# ---------------------------------------------------------------------------
def estimate_aff_seconds(m: int, set_sizes: Sequence[int], n_perms: int, n_eval: int, *,
                         rate: float = ASSUMED_RATE, with_std: bool = True) -> float:
    """Rough seconds of one fit (search, kernels, Cholesky) plus its prediction on ``n_eval`` frames.

    Prediction: the kernel between test and training frames (∝ n_eval·M·S·N²)
    and, for the intervals, one triangular solve per set with 3·l_i columns per
    test frame (n_eval · Σ 3 l_i (3 M l_i)² flops).
    """
    n = int(sum(set_sizes))
    est = estimate_cost(m, set_sizes, n_perms=n_perms)
    kernel = n_eval * m * max(int(n_perms), 1) * KERNEL_PAIR_S_PER_N2 * n * n
    trsm = n_eval * sum(3 * l * (3 * m * l) ** 2 for l in set_sizes) / rate if with_std else 0.0
    return float(SEARCH_S + est.seconds + kernel + trsm)


def choose_aff_m(molecule: str, set_sizes: Sequence[int], n_perms: int, n_eval: int, pool_size: int, *,
                 requested: int | None = None, time_limit_s: float = 3600.0,
                 memory_bytes: int | None = None, requested_by: str = "as requested") -> tuple[int, str, dict]:
    """AFF's table size: the requested or paper's M, else the largest that fits.

    Returns
    -------
    m : int
    reason : str
    estimates : dict  {M: {"seconds": ..., "peak_GB": ...}} of the sizes considered
    """
    budget = default_budget_bytes() if memory_bytes is None else int(memory_bytes)
    paper = PAPER_TABLE_I.get(molecule, {}).get("m_aff")
    if requested is not None:
        m = int(requested)
        if m > pool_size:
            raise ReproduceError(f"{molecule}: AFF at M = {m} needs more than the {pool_size} training frames available")
        why = f"{requested_by} (the paper's M = {paper})" if paper else requested_by
        return m, why, {}
    target = min(int(paper or 1000), pool_size)
    candidates = [target] + [c for c in range(target - 200, 99, -200)]
    estimates = {}
    refused = []
    for m in candidates:
        peak = estimate_cost(m, set_sizes, n_perms=n_perms).peak_bytes
        secs = estimate_aff_seconds(m, set_sizes, n_perms, n_eval)
        estimates[m] = {"seconds": secs, "peak_GB": peak / 2**30}
        if peak > budget:
            refused.append(f"M = {m} needs ~{peak / 2**30:.1f} GB > budget {budget / 2**30:.1f} GB")
        elif secs > time_limit_s:
            refused.append(f"M = {m}: ~{secs / 60:.0f} min estimated > {time_limit_s / 60:.0f} min limit")
        else:
            if m == paper:
                return m, f"the paper's M = {paper} (estimated {secs / 60:.1f} min for fit + test prediction)", estimates
            return m, (f"largest M that fits (the paper's M = {paper} does not: " + "; ".join(refused) + ")"), estimates
    raise ReproduceError(f"{molecule}: no AFF size fits: " + "; ".join(refused))


def choose_peer_m(n_atoms: int, n_perms: int, pool_size: int, *, target: int = 1000, timeout_s: float = 1800.0,
                  memory_bytes: int | None = None, pilot=None, cholesky_rate: float | None = None,
                  step: int = 100) -> tuple[int | None, str, dict]:
    """The sgdml package's size: the paper's M = 1000, else the largest M (steps of ``step``) that fits.

    A size fits when its (3MN)² kernel copies fit the memory
    (``aff_app.peers.sgdml.check_sgdml_fits``) and its estimated wall time
    (``aff_app.peers.sgdml.sgdml_time_seconds``, calibrated on ``pilot``, a finished
    smaller run) stays under ``timeout_s``.

    Returns
    -------
    m : int or None (nothing fits)
    reason : str
    estimates : dict {M: {"seconds": ..., "memory_GB": ..., "fits": bool, "why": str}}
    """
    from aff_app.peers.sgdml import DEFAULT_CHOLESKY_RATE, check_sgdml_fits, sgdml_memory_bytes, sgdml_time_seconds

    rate = cholesky_rate or DEFAULT_CHOLESKY_RATE
    target = min(int(target), pool_size)
    candidates = [target] + [c for c in range((target // step) * step, 0, -step) if c < target]
    estimates: dict[int, dict] = {}
    refused = []
    for m in candidates:
        secs = sgdml_time_seconds(m, n_atoms, n_perms=n_perms, pilot=pilot, cholesky_rate=rate)
        ok, why = check_sgdml_fits(m, n_atoms, memory_bytes=memory_bytes, time_limit_s=timeout_s, time_estimate_s=secs)
        estimates[m] = {"seconds": secs, "memory_GB": sgdml_memory_bytes(m, n_atoms) / 2**30, "fits": ok, "why": why}
        if ok:
            basis = f"calibrated on its M = {pilot.n_train} run" if pilot is not None and pilot.ok else "uncalibrated"
            if m == target and not refused:
                return m, f"the paper's M = {target} (estimated {secs / 60:.0f} min, {basis})", estimates
            first = refused[0] if refused else ""
            return m, (f"largest M that fits: {first}; at M = {m} estimated {secs / 60:.0f} min ({basis}) and "
                       f"{estimates[m]['memory_GB']:.1f} GB"), estimates
        refused.append(why)
    return None, "no size fits: " + (refused[-1] if refused else "no candidates"), estimates


def estimate_full_seconds(settings: ReproduceSettings, n_atoms: dict, set_sizes: dict, n_perms: dict) -> float:
    """Rough total seconds of our own fits for ``settings`` (the sgdml runs not included)."""
    n_eval = settings.eval_frames or settings.n_test
    total = 0.0
    for mol in settings.molecules:
        m_table = settings.aff_m or PAPER_TABLE_I.get(mol, {}).get("m_aff", 1000)
        for m in sorted(set(settings.curve_m) | {m_table}):
            total += estimate_aff_seconds(m, set_sizes[mol], n_perms[mol], n_eval)
        for mode in settings.baseline_modes:
            for m in settings.baseline_m:
                total += estimate_aff_seconds(m, [n_atoms[mol]], n_perms[mol] if mode == "sgdml" else 1, n_eval,
                                              with_std=False)
    return total * len(settings.label_sets)


