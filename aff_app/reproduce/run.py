"""Reproduce the paper's Table I, Fig. 3 and Fig. 5 on the MD17 data beside the project.

For each molecule (naphthalene, benzene, uracil, aspirin in
``../shared/data/md17``) and each label set (``md17``: the original MD17
labels ``E_md17``/``F_md17`` the paper used; ``rmd17``: the recomputed ones)
it trains and tests, on ONE seeded split per molecule shared by every method
and both label sets:

* AFF (``aff_app.gp.force``, one GP per PE set, γ and λ by profile
  likelihood) at the paper's training size (naphthalene 1600, benzene 1200,
  uracil 1600, aspirin 1200) or the largest that fits the memory budget and
  the time limit (the output says which and why), and at the learning-curve
  sizes; energies by the energy GP conditioned on the predicted forces
  (``fit_energy_model``, trained on the same frames);
* our own full-covariance modes GDML and sGDML (one set of all atoms) at the
  sizes within budget, energies by integrating the force GP
  (``fit_integrated_energy``, the GDML recipe);
* the reference package ``sgdml`` (``aff_app.peers.sgdml``) at the paper's M = 1000
  where its kernel fits this machine's memory and its estimated time fits the
  per-run limit, else at the largest M that does (decided from a memory
  pre-check and a time estimate calibrated on a pilot run at a small M).

Metrics on the held-out test frames (method.md "What the paper reports"):
energy MAE (kcal/mol), force MAE (kcal/mol/Å), training time (s; AFF: the
symmetry search + force fit with its hyperparameter search + energy fit;
sgdml: the wall time of ``sgdml all``, which includes its own permutation
search and σ selection), PCI(95%) and LCI(95%) of the latent-force intervals,
L_norm = LCI / range of the test forces, Δp = 0.95 − PCI.

The split: ``rng = numpy.random.default_rng(seed)`` permutes the frames; the
first ``n_test`` are the test frames, the next ``n_valid`` the validation
frames (sgdml's σ selection), the rest, in that random order, the training
pool: a model with M frames trains on the first M of the pool (nested
learning-curve sets). The same rule as ``benchmarks/bench_forces.py``.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from aff_app import __version__
from aff_app.gp.budget import ComputeBudgetError, check_budget, default_budget_bytes, estimate_cost
from aff_app.reproduce.md17 import LABEL_DESCRIPTIONS, LABEL_SETS, MOLECULES  # re-exported: the CLI parser imports .md17 alone
from aff_app.workflows.metrics import ENERGY_UNIT, FORCE_UNIT, mae
from aff_app.workflows import pipeline
from aff_app.symmetry import SymmetryInfo, detect_symmetry

__all__ = [
    "ReproduceError",
    "ReproduceSettings",
    "ReproSplit",
    "MOLECULES",
    "LABEL_SETS",
    "PAPER_TABLE_I",
    "DEFAULT_DATA_DIR",
    "quick_settings",
    "make_split",
    "choose_aff_m",
    "choose_peer_m",
    "estimate_aff_seconds",
    "estimate_full_seconds",
    "run_reproduction",
    "write_outputs",
    "format_table",
]

Progress = Callable[[float, str], None]

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "md17"

#: method.md "What the paper reports", Table I: AFF, with sGDML in parentheses (same held-out sets).
PAPER_TABLE_I: dict[str, dict[str, Any]] = {
    "naphthalene": {"m_aff": 1600, "m_sgdml": 1000, "energy_mae": (0.07, 0.12), "force_mae": (0.11, 0.11),
                    "train_s": (68, 345), "pci": 0.985, "lci": 1.36},
    "benzene": {"m_aff": 1200, "m_sgdml": 1000, "energy_mae": (0.04, 0.07), "force_mae": (0.173, 0.176),
                "train_s": (23, 45), "pci": 0.85, "lci": 0.7},
    "uracil": {"m_aff": 1600, "m_sgdml": 1000, "energy_mae": (0.10, 0.10), "force_mae": (0.239, 0.249),
               "train_s": (16, 43), "pci": 0.978, "lci": 2.37},
    "aspirin": {"m_aff": 1200, "m_sgdml": 1000, "energy_mae": (0.06, 0.09), "force_mae": (0.0028, 0.009),
                "train_s": (32, 629), "pci": 0.998, "lci": 0.08},
}
#: The aspirin row of the paper comes from its own simulation, not MD17 (method.md, paper Fig. 3 caption).
PAPER_NOTES = {"aspirin": "the paper's aspirin row is from its own simulated trajectory, not MD17"}

ROW_UNITS = {"energy_mae": ENERGY_UNIT, "force_mae": FORCE_UNIT, "train_s": "s", "pci": "fraction", "lci": FORCE_UNIT,
             "l_norm": "fraction of the test-force range", "delta_p": "fraction (0.95 − PCI)"}

#: Seconds per (test frame × training frame × permutation × N²) of kernel evaluation, for estimates
#: (measured ~60 µs per frame pair and permutation for aspirin, N = 21, on the 2-core machine).
KERNEL_PAIR_S_PER_N2 = 1.5e-7
#: Dense triangular-solve / Cholesky rate assumed by estimates (flop/s, 2-core machine).
ASSUMED_RATE = 2.0e10
#: Fixed overhead of one AFF fit's hyperparameter search (s; ~100 search frames, 2-core machine).
SEARCH_S = 60.0

METHOD_AFF = "AFF"
METHOD_GDML = "GDML (aff_app)"
METHOD_SGDML = "sGDML (aff_app)"
METHOD_PEER = "sGDML (sgdml package)"
METHODS = (METHOD_AFF, METHOD_GDML, METHOD_SGDML, METHOD_PEER)


class ReproduceError(ValueError):
    """A reproduction request that cannot run (missing data, sizes that do not fit the frames, ...)."""


def _noop(fraction: float, message: str) -> None:
    return None


# ---------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ReproduceSettings:
    """What to run.

    Attributes
    ----------
    molecules : tuple of str
        Files ``<data_dir>/<molecule>.npz``.
    label_sets : tuple of str
        'md17' (the paper's labels) and/or 'rmd17'.
    data_dir : str
    n_test, n_valid : int
        Held-out test frames and sgdml's validation frames of the split.
    eval_frames : int or None
        Evaluate on this many of the test frames (a seeded subset; None: all).
    seed : int
        Seed of the split (and of the symmetry search's frames).
    aff_m : int or None
        AFF training size of the table; None: the paper's per molecule, or the
        largest that fits ``aff_time_limit_s`` and the memory budget.
    aff_time_limit_s : float
        Limit on the estimated time of one AFF fit plus its test prediction.
    curve_m : tuple of int
        Further AFF sizes for the learning curves (Fig. 3, Fig. 5).
    baseline_modes : tuple of str
        Our full-covariance modes, 'gdml' and/or 'sgdml'.
    baseline_m : tuple of int
        Their sizes (those over the memory budget or ``baseline_time_limit_s`` are skipped, with the reason).
    baseline_time_limit_s : float
    peer : bool
        Run the ``sgdml`` package.
    peer_m : int or None
        Its table size; None: the paper's 1000, or the largest that fits memory and ``peer_timeout_s``.
    peer_target_m : int
        The paper's sgdml size (1000).
    peer_curve_m : tuple of int
        Smaller sgdml sizes run first (the smallest is the pilot of the time estimate).
    peer_label_sets : tuple of str or None
        Label sets the package runs on (None: all of ``label_sets``).
    peer_timeout_s : float
        Wall-clock limit of one ``sgdml all`` run (s).
    peer_sigmas : str or None
        sgdml's σ grid (``-s``); None: its default 10:10:100.
    gamma, lam : float or None
        Fix the force hyperparameters (AFF and our GDML/sGDML; for tests); None: profile likelihood.
    energy_gamma, energy_lam : float or None
        Fix the energy GP's hyperparameters; None: profile likelihood.
    search_frames : int
        Fewest frames of AFF's force hyperparameter search (it uses
        max(search_frames, M/4), see :func:`aff_app.gp.fit_force_model`).
    baseline_search_frames : int or None
        Frames of our GDML/sGDML searches (their kernels are 3·M·N wide, so
        the search costs far more per frame); None: ``search_frames``.
    level : float
        Interval level (0.95 → PCI(95%), LCI(95%)).
    memory_bytes : int or None
        Memory budget of our fits (default ``aff_app.gp.budget.default_budget_bytes()``).
    quick : bool
        Recorded in the output.
    """

    molecules: tuple = MOLECULES
    label_sets: tuple = LABEL_SETS
    data_dir: str = str(DEFAULT_DATA_DIR)
    n_test: int = 2000
    n_valid: int = 200
    eval_frames: int | None = None
    seed: int = 0
    aff_m: int | None = None
    aff_time_limit_s: float = 3600.0
    curve_m: tuple = (200, 400, 800)
    baseline_modes: tuple = ("gdml", "sgdml")
    baseline_m: tuple = (100, 200, 400)
    baseline_time_limit_s: float = 900.0
    peer: bool = True
    peer_m: int | None = None
    peer_target_m: int = 1000
    peer_curve_m: tuple = (200,)
    peer_label_sets: tuple | None = None
    peer_timeout_s: float = 1800.0
    peer_sigmas: str | None = None
    gamma: float | None = None
    lam: float | None = None
    energy_gamma: float | None = None
    energy_lam: float | None = None
    search_frames: int = 100
    baseline_search_frames: int | None = None
    level: float = 0.95
    memory_bytes: int | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        for name in ("molecules", "label_sets", "curve_m", "baseline_modes", "baseline_m", "peer_curve_m"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.peer_label_sets is not None:
            object.__setattr__(self, "peer_label_sets", tuple(self.peer_label_sets))
        if not self.molecules:
            raise ReproduceError("give at least one molecule")
        bad = [s for s in self.label_sets if s not in LABEL_SETS]
        if bad or not self.label_sets:
            raise ReproduceError(f"label sets must be among {LABEL_SETS}, got {list(self.label_sets)}")
        bad = [m for m in self.baseline_modes if m not in ("gdml", "sgdml")]
        if bad:
            raise ReproduceError(f"baseline modes must be 'gdml' and/or 'sgdml', got {bad}")
        sizes = [*self.curve_m, *self.baseline_m, *self.peer_curve_m]
        sizes += [v for v in (self.aff_m, self.peer_m) if v is not None]
        if any(int(v) < 3 for v in sizes):
            raise ReproduceError(f"training sizes must be >= 3 frames (the energy GP needs 3), got {sorted(sizes)}")
        if self.n_test < 1 or self.n_valid < 1:
            raise ReproduceError(f"n_test and n_valid must be >= 1, got {self.n_test} and {self.n_valid}")
        if self.eval_frames is not None and not 1 <= self.eval_frames <= self.n_test:
            raise ReproduceError(f"eval_frames must lie in 1..n_test = {self.n_test}, got {self.eval_frames}")
        if not 0 < self.level < 1:
            raise ReproduceError(f"level must lie in (0, 1), got {self.level}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def quick_settings(**overrides) -> ReproduceSettings:
    """Settings of ``reproduce --quick``: every molecule and label set, small M, fewer points.

    AFF at M = 100 (learning curve 50, 100), our sGDML mode at M = 50 (GDML
    where the group is trivial), the sgdml package at M = 50 on the paper's
    labels only, the same split as the
    full run (2000 test frames) evaluated on 500 of them, a 50-frame AFF
    hyperparameter search and a 20-frame one for GDML/sGDML. Meant to finish
    in under 10 minutes on 2 cores.
    """
    base = dict(aff_m=100, curve_m=(50,), baseline_modes=("sgdml",), baseline_m=(50,), peer_m=50, peer_curve_m=(), peer_label_sets=("md17",),
                peer_timeout_s=300.0, eval_frames=500, search_frames=50, baseline_search_frames=20, quick=True)
    base.update(overrides)
    return ReproduceSettings(**base)


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


# ---------------------------------------------------------------------------
# one model
# ---------------------------------------------------------------------------
def _point(molecule, label_set, method, m, *, force_mae, energy_mae, train_s, extra=None) -> dict:
    out = {"molecule": molecule, "label_set": label_set, "method": method, "M": int(m),
           "force_mae": force_mae, "energy_mae": energy_mae, "train_s": train_s,
           "pci": None, "lci": None, "l_norm": None, "delta_p": None}
    out.update(extra or {})
    return out


def _timings(t, t_sym: float, t_pred: float) -> dict:
    return {"symmetry_s": t_sym, "force_fit_s": t.force_s, "energy_fit_s": t.energy_s, "test_prediction_s": t_pred,
            "force_search_s": t.search_s, "force_build_s": t.build_s, "force_cholesky_s": t.cholesky_s}


def _aff_point(traj, split: ReproSplit, sym: SymmetryInfo, t_sym: float, m: int, s: ReproduceSettings,
               molecule: str, progress: Progress) -> dict:
    settings = pipeline.TrainSettings(mode="aff", gamma=s.gamma, lam=s.lam, search_frames=s.search_frames,
                                      energy_gamma=s.energy_gamma, energy_lam=s.energy_lam, budget_bytes=s.memory_bytes)
    trained = pipeline.fit(traj, split.train(m), settings, symmetry=sym, seed=s.seed,
                           progress=lambda f, msg: progress(0.6 * f, msg))
    fm, em, t = trained.force, trained.energy, trained.timings
    progress(0.65, f"predicting {split.eval.size} test frames")
    held = pipeline.evaluate(trained, traj, test_idx=split.eval, progress=lambda f, msg: progress(0.65 + 0.3 * f, msg))
    rep = held.report(s.level)
    progress(1.0, "done")
    return _point(molecule, traj.provenance.label_set, METHOD_AFF, m, force_mae=rep["force_mae"],
                  energy_mae=rep["energy_mae"], train_s=t_sym + t.force_s + (t.energy_s or 0.0), extra={
                      "pci": rep["pci"], "lci": rep["lci"], "l_norm": rep["l_norm"], "delta_p": rep["delta_p"],
                      "force_rmse": rep["force_rmse"], "energy_rmse": rep["energy_rmse"],
                      "energy_pci": rep["energy_pci"], "energy_lci": rep["energy_lci"],
                      "gamma": fm.gamma, "lam": fm.lam,
                      "energy_gamma": None if em is None else em.gamma, "energy_lam": None if em is None else em.lam,
                      "hyper_converged": fm.record.search.converged,
                      "lam_refine": dataclasses.asdict(fm.record.lam_check),
                      "calibration": dataclasses.asdict(fm.record.calibration),
                      "n_sets": len(fm.pe_sets), "n_perms": int(len(fm.perms)),
                      "timings": _timings(t, t_sym, held.predict_s),
                      "energy_method": "energy GP conditioned on predicted forces (fit_energy_model)",
                      "interval": "latent force, mean ± 1.96 sd",
                      "warnings": trained.warnings,
                  })


def _baseline_point(traj, split, sym, t_sym, mode, m, s, molecule, progress) -> dict:
    settings = pipeline.TrainSettings(mode=mode, gamma=s.gamma, lam=s.lam,
                                      search_frames=s.baseline_search_frames or s.search_frames, search_fraction=0.0,
                                      budget_bytes=s.memory_bytes)
    trained = pipeline.fit(traj, split.train(m), settings, symmetry=sym if mode == "sgdml" else None, seed=s.seed,
                           progress=lambda f, msg: progress(0.7 * f, msg))
    fm, t = trained.force, trained.timings
    t_sym = t_sym if mode == "sgdml" else 0.0
    progress(0.75, f"predicting {split.eval.size} test frames")
    # means only: one all-atom kernel makes every sd a solve with 3N right-hand sides
    held = pipeline.evaluate(trained, traj, test_idx=split.eval, with_std=False)
    rep = held.report(s.level)
    progress(1.0, "done")
    return _point(molecule, traj.provenance.label_set, METHOD_GDML if mode == "gdml" else METHOD_SGDML, m,
                  force_mae=rep["force_mae"], energy_mae=rep["energy_mae"],
                  train_s=t_sym + t.force_s + (t.energy_s or 0.0),
                  extra={"gamma": fm.gamma, "lam": fm.lam, "n_perms": int(len(fm.perms)),
                         "hyper_converged": fm.record.search.converged,
                         "timings": _timings(t, t_sym, held.predict_s),
                         "energy_method": "integrated force GP plus a constant (fit_integrated_energy)",
                         "warnings": trained.warnings})


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
def _load(settings: ReproduceSettings, molecule: str, label_set: str):
    from aff_app.io.files import load_trajectory

    path = Path(settings.data_dir) / f"{molecule}.npz"
    if not path.is_file():
        raise ReproduceError(f"no data for {molecule!r}: {path} does not exist (see ../shared/data/README.md)")
    return load_trajectory(path, label_set=label_set)


def _paper(molecule: str) -> dict | None:
    p = PAPER_TABLE_I.get(molecule)
    if p is None:
        return None
    out = {"m_aff": p["m_aff"], "m_sgdml": p["m_sgdml"], "energy_mae_aff": p["energy_mae"][0],
           "energy_mae_sgdml": p["energy_mae"][1], "force_mae_aff": p["force_mae"][0],
           "force_mae_sgdml": p["force_mae"][1], "train_s_aff": p["train_s"][0], "train_s_sgdml": p["train_s"][1],
           "pci_aff": p["pci"], "lci_aff": p["lci"]}
    if molecule in PAPER_NOTES:
        out["note"] = PAPER_NOTES[molecule]
    return out


def run_reproduction(settings: ReproduceSettings | None = None, *, progress: Progress | None = None,
                     workdir=None) -> dict:
    """Run the reproduction and return its table rows and figure data.

    Parameters
    ----------
    settings : ReproduceSettings, optional
        Default: the full reproduction.
    progress : callable(fraction, message), optional
    workdir : path-like, optional
        Where the sgdml datasets and models go (default: a temporary folder).

    Returns
    -------
    dict (JSON-ready)
        ``rows``: one Table-I row per molecule and label set (see
        :data:`ROW_UNITS`); ``points``: every trained model (method, M, force
        and energy MAE, training time, and for AFF PCI, LCI, L_norm, Δp) —
        the data of Fig. 3 and Fig. 5; ``choices``: the M used per molecule
        and why; ``splits``: the split of each molecule (indices);
        ``skipped``: what was not run and why; ``settings``; ``units``;
        ``timings``.

    Raises
    ------
    ReproduceError, aff_app.peers.sgdml.PeerUnavailableError (peer asked for but not installed)
    """
    s = settings or ReproduceSettings()
    progress = progress or _noop
    t_start = time.perf_counter()
    if s.peer:
        from aff_app.peers.sgdml import require_sgdml

        require_sgdml("sgdml.predict")  # fail now, not after an hour of AFF fits
    peer_sets = tuple(ls for ls in (s.peer_label_sets or s.label_sets) if ls in s.label_sets) if s.peer else ()
    work = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="aff_reproduce_"))
    work.mkdir(parents=True, exist_ok=True)

    rows, points, skipped = [], [], []
    choices: dict[str, dict] = {}
    splits: dict[str, dict] = {}
    peer_runs: list[dict] = []
    n_units = len(s.molecules) * len(s.label_sets)
    unit = [0]
    # each unit (molecule × label set) is shared equally by its planned models
    n_tasks = max(1, len(set(s.curve_m)) + 1 + len(s.baseline_modes) * len(s.baseline_m)
                  + ((len(s.peer_curve_m) + 1) if s.peer else 0))
    task = [0]

    def sub(msg_prefix: str) -> Progress:
        base, k = unit[0], min(task[0], n_tasks - 1)
        task[0] += 1
        return lambda f, msg: progress(min((base + (k + f) / n_tasks) / n_units, 1.0), f"{msg_prefix}: {msg}")

    rate_holder: list = [None]  # dense Cholesky rate, measured once for the sgdml time estimates
    for mol in s.molecules:
        trajs = {ls: _load(s, mol, ls) for ls in s.label_sets}
        first = trajs[s.label_sets[0]]
        for ls, tj in trajs.items():
            if tj.n_frames != first.n_frames or not np.array_equal(tj.R, first.R):
                raise ReproduceError(f"{mol}: the {ls} labels do not come with the same frames as {s.label_sets[0]}")
        split = make_split(first.n_frames, s.n_test, s.n_valid, seed=s.seed, eval_frames=s.eval_frames)
        progress(unit[0] / n_units, f"{mol}: symmetry search")
        t = time.perf_counter()
        sym = detect_symmetry(first.R, first.z, n_samples=200, seed=s.seed)
        t_sym = time.perf_counter() - t
        sizes = [int(v) for v in sym.set_sizes]
        aff_m, aff_why, aff_est = choose_aff_m(mol, sizes, sym.n_perms, split.eval.size, split.pool.size,
                                               requested=s.aff_m, time_limit_s=s.aff_time_limit_s,
                                               memory_bytes=s.memory_bytes,
                                               requested_by="quick run" if s.quick else "as requested")
        curve = sorted({int(m) for m in s.curve_m if m < aff_m} | {aff_m})
        choice = {"m_aff": aff_m, "m_aff_reason": aff_why, "aff_estimates": aff_est, "aff_curve_m": curve,
                  "n_atoms": first.n_atoms, "n_perms": sym.n_perms, "pe_set_sizes": sizes,
                  "symmetry_s": t_sym, "m_sgdml": None, "m_sgdml_reason": "not run (no peer)" if not s.peer else ""}
        choices[mol] = choice
        used_sizes = set(curve)

        peer_m: int | None = None
        for ls in s.label_sets:
            traj = trajs[ls]
            pre = f"{mol}/{ls}"
            mol_points = []
            task[0] = 0
            for m in curve:
                p = sub(f"{pre} AFF M={m}")
                mol_points.append(_aff_point(traj, split, sym, t_sym, m, s, mol, p))
            modes = list(s.baseline_modes)
            if sym.n_perms == 1 and "sgdml" in modes:
                # a trivial group makes sGDML the very same model as GDML (paper Fig. 3 caption): fit it once
                modes = [m for m in modes if m != "sgdml"] + ([] if "gdml" in modes else ["gdml"])
                skipped.append({"molecule": mol, "label_set": ls, "method": METHOD_SGDML,
                                "reason": "the permutation group is trivial: sGDML equals GDML (paper Fig. 3); "
                                          "shown as GDML"})
            for mode in modes:
                for m in s.baseline_m:
                    est = estimate_aff_seconds(m, [first.n_atoms], sym.n_perms if mode == "sgdml" else 1,
                                               split.eval.size, with_std=False)
                    name = METHOD_GDML if mode == "gdml" else METHOD_SGDML
                    try:
                        check_budget(estimate_cost(m, [first.n_atoms]), s.memory_bytes, what=f"{mode} fit")
                    except ComputeBudgetError as exc:
                        skipped.append({"molecule": mol, "label_set": ls, "method": name, "M": m, "reason": str(exc)})
                        continue
                    if est > s.baseline_time_limit_s:
                        skipped.append({"molecule": mol, "label_set": ls, "method": name, "M": m,
                                        "reason": f"estimated {est / 60:.0f} min > {s.baseline_time_limit_s / 60:.0f} min limit"})
                        continue
                    mol_points.append(_baseline_point(traj, split, sym, t_sym, mode, m, s, mol,
                                                      sub(f"{pre} {mode} M={m}")))
                    used_sizes.add(m)
            peer_point = None
            if ls in peer_sets:
                peer_point, peer_m = _run_peer(traj, split, s, mol, ls, work, peer_m, choice, peer_runs, skipped,
                                               mol_points, used_sizes, sub(f"{pre} sgdml"), rate_holder=rate_holder)
            elif s.peer:
                skipped.append({"molecule": mol, "label_set": ls, "method": METHOD_PEER,
                                "reason": f"the package runs on the label sets {list(peer_sets)} only"})
            points.extend(mol_points)
            aff_row = next(p for p in mol_points if p["method"] == METHOD_AFF and p["M"] == aff_m)
            row = _row(mol, ls, aff_row, peer_point, choice, split)
            if peer_point is not None and "note" in peer_point:
                row["sgdml_note"] = peer_point["note"]
            if s.peer and ls not in peer_sets:
                row["m_sgdml_reason"] = f"not run on the {ls} labels (the package runs on {', '.join(peer_sets)})"
            if ls in peer_sets and peer_point is None:
                row["m_sgdml"] = peer_m
                row["sgdml_note"] = _peer_failure(skipped, mol, ls, peer_m) or choice.get("m_sgdml_reason", "")
            rows.append(row)
            unit[0] += 1
            progress(unit[0] / n_units, f"{pre} done")
        splits[mol] = split.to_dict(sorted(used_sizes))

    return {
        "version": __version__,
        "rows": rows,
        "points": points,
        "choices": choices,
        "skipped": skipped,
        "peer_runs": peer_runs,
        "splits": splits,
        "settings": s.to_dict(),
        "units": dict(ROW_UNITS),
        "labels": {k: LABEL_DESCRIPTIONS[k] for k in s.label_sets},
        "timings": {"total_s": time.perf_counter() - t_start},
        "notes": [
            "train_s: AFF = symmetry search + force fit (with its γ/λ search) + energy fit; our GDML/sGDML = force fit "
            "+ integrated energy; sgdml package = wall time of `sgdml all` (its permutation search, σ trials with "
            "validation, selection)",
            "PCI/LCI: latent-force intervals, mean ± 1.96 sd, over all force components of the test frames",
            "paper values: method.md Table I (AFF, with sGDML in parentheses); " + PAPER_NOTES["aspirin"],
        ],
    }


def _run_peer(traj, split, s, mol, ls, work, peer_m, choice, peer_runs, skipped, mol_points, used_sizes, progress,
              rate_holder) -> tuple[dict | None, int | None]:
    """The sgdml package on this label set: pilot sizes, then the table size (chosen on the first label set)."""
    from aff_app.peers.sgdml import measure_cholesky_rate, run_sgdml, sgdml_predict, write_sgdml_dataset

    z = traj.z
    ldir = work / mol / ls
    ldir.mkdir(parents=True, exist_ok=True)
    ev = split.eval
    valid_path = write_sgdml_dataset(ldir / "valid.npz", f"{mol}_{ls}_valid", traj.R[split.valid], z,
                                     traj.E[split.valid], traj.F[split.valid], theory=LABEL_DESCRIPTIONS[ls])
    results: dict[int, Any] = {}
    table_point = None

    def run(m: int):
        tr = split.train(m)
        path = write_sgdml_dataset(ldir / f"train_{m}.npz", f"{mol}_{ls}_train_{m}", traj.R[tr], z, traj.E[tr],
                                   traj.F[tr], theory=LABEL_DESCRIPTIONS[ls])
        progress(0.1, f"sgdml all at M={m} (limit {s.peer_timeout_s / 60:.0f} min)")
        r = run_sgdml(ldir, path, valid_path, m, split.valid.size, timeout_s=s.peer_timeout_s, n_atoms=traj.n_atoms,
                      sigmas=s.peer_sigmas, model_name=f"model_{m}.npz")
        rec = {"molecule": mol, "label_set": ls, **r.to_dict()}
        peer_runs.append(rec)
        results[m] = r
        if r.ok:  # one prediction pass (one model load) for the validation and the test frames
            nv = split.valid.size
            E_all, F_all = sgdml_predict(r.model_path, traj.R[np.concatenate([split.valid, ev])])
            E, F = E_all[nv:], F_all[nv:]
            # a model that predicts its own validation forces worse than zero forces would is broken
            # (seen: naphthalene, MD17 labels, M = 400, σ = 10 on its grid edge: test MAE 2·10⁴ kcal/mol/Å)
            val_mae, val_scale = mae(traj.F[split.valid], F_all[:nv]), float(np.mean(np.abs(traj.F[split.valid])))
            rec["valid_force_mae"] = val_mae
            if not np.isfinite(val_mae) or val_mae > val_scale:
                r = dataclasses.replace(r, ok=False, reason=(
                    f"its model (σ = {r.sigma}) predicts the validation forces with MAE {val_mae:.4g}, worse than "
                    f"zero forces ({val_scale:.4g} kcal/mol/Å): a broken solve"))
                rec.update(ok=False, reason=r.reason)
                results[m] = r
        if not r.ok:
            skipped.append({"molecule": mol, "label_set": ls, "method": METHOD_PEER, "M": m, "reason": r.reason})
            return None
        pt = _point(mol, ls, METHOD_PEER, m, force_mae=mae(traj.F[ev], F), energy_mae=mae(traj.E[ev], E),
                    train_s=r.wall_s, extra={"sigma": r.sigma, "sigma_trials": r.sigma_trials,
                                             "sigma_on_edge": r.sigma_on_edge, "n_perms": r.n_perms,
                                             "solver": r.solver,
                                             "energy_method": "sgdml's integrated energy (GDMLPredict)"})
        mol_points.append(pt)
        used_sizes.add(m)
        return pt

    for m in sorted(set(int(v) for v in s.peer_curve_m)):
        if s.peer_m is not None and m >= s.peer_m:
            continue
        run(m)
    if peer_m is None:
        if s.peer_m is not None:
            peer_m = int(s.peer_m)
            why = f"{'quick run' if s.quick else 'as requested'} (the paper's M = {s.peer_target_m})"
            from aff_app.peers.sgdml import check_sgdml_fits

            ok, reason = check_sgdml_fits(peer_m, traj.n_atoms)
            if not ok:
                why += f"; {reason}"
        else:
            pilots = [r for r in results.values() if r.ok]
            pilot = max(pilots, key=lambda r: r.n_train) if pilots else None
            if rate_holder[0] is None:
                rate_holder[0] = measure_cholesky_rate()
            peer_m, why, est = choose_peer_m(traj.n_atoms, choice["n_perms"], split.pool.size,
                                             target=s.peer_target_m, timeout_s=s.peer_timeout_s, pilot=pilot,
                                             cholesky_rate=rate_holder[0])
            choice["sgdml_estimates"] = est
            choice["cholesky_rate_gflops"] = rate_holder[0] / 1e9
        choice["m_sgdml"], choice["m_sgdml_reason"] = peer_m, why
    if peer_m is None:
        return None, None
    if peer_m in results:
        table_point = next((p for p in mol_points if p["method"] == METHOD_PEER and p["M"] == peer_m), None)
    else:
        table_point = run(peer_m)
        largest_ok = max((p["M"] for p in mol_points if p["method"] == METHOD_PEER), default=0)
        mid = ((peer_m + largest_ok) // 2) // 100 * 100
        if table_point is None and mid > largest_ok and mid not in results:
            # one more try half-way down (sgdml's solver failed or broke at the table size)
            progress(0.6, f"sgdml all at M={peer_m} failed: trying M={mid}")
            table_point = run(mid)
    if table_point is None:
        # the table size failed (time-out, sgdml's own errors): report its largest finished run instead
        table_point = max((p for p in mol_points if p["method"] == METHOD_PEER), key=lambda p: p["M"], default=None)
    if table_point is not None and table_point["M"] != peer_m and peer_m in results:
        failed = _peer_failure(skipped, mol, ls, peer_m) or "it failed"
        table_point = {**table_point, "fallback_from_m": peer_m,
                       "note": f"the M = {peer_m} run failed ({failed}); its M = {table_point['M']} run is shown"}
    return table_point, peer_m


def _peer_failure(skipped: list, mol: str, ls: str, m) -> str | None:
    """Why the package's run at M = ``m`` on this molecule and label set did not count (None: no record)."""
    return next((k["reason"] for k in reversed(skipped) if k["molecule"] == mol and k["label_set"] == ls
                 and k["method"] == METHOD_PEER and k.get("M") == m), None)


def _row(mol: str, ls: str, aff: dict, peer: dict | None, choice: dict, split: ReproSplit) -> dict:
    return {
        "molecule": mol,
        "label_set": ls,
        "labels": LABEL_DESCRIPTIONS[ls],
        "m_aff": aff["M"],
        "m_aff_reason": choice["m_aff_reason"],
        "m_sgdml": None if peer is None else peer["M"],
        "m_sgdml_reason": choice.get("m_sgdml_reason", ""),
        "energy_mae_aff": aff["energy_mae"],
        "energy_mae_sgdml": None if peer is None else peer["energy_mae"],
        "force_mae_aff": aff["force_mae"],
        "force_mae_sgdml": None if peer is None else peer["force_mae"],
        "train_s_aff": aff["train_s"],
        "train_s_sgdml": None if peer is None else peer["train_s"],
        "pci_aff": aff["pci"],
        "lci_aff": aff["lci"],
        "l_norm_aff": aff["l_norm"],
        "delta_p_aff": aff["delta_p"],
        "n_test": int(split.eval.size),
        "n_test_pool": int(split.test.size),
        "paper": _paper(mol),
        "units": dict(ROW_UNITS),
    }


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------
def _f(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _pair(a, b, spec: str) -> str:
    return f"{_f(a, spec)} ({_f(b, spec)})"


def _percent(fraction, spec: str) -> str:
    """A fraction shown as a percent ("—" when unknown): PCI is a fraction everywhere else."""
    return "—" if fraction is None else f"{_f(100.0 * fraction, spec)}%"


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table in the paper's layout: AFF, with the sgdml package in parentheses; paper values beside."""
    head = ("| molecule | labels | M AFF (sgdml) | energy MAE | force MAE | train s | PCI(95%) | LCI(95%) "
            "| paper: M | energy MAE | force MAE | train s | PCI | LCI |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        p = r.get("paper") or {}
        lines.append(
            f"| {r['molecule']} | {r['label_set']} | {r['m_aff']} ({_f(r['m_sgdml'], 'd')}) "
            f"| {_pair(r['energy_mae_aff'], r['energy_mae_sgdml'], '.3f')} "
            f"| {_pair(r['force_mae_aff'], r['force_mae_sgdml'], '.3f')} "
            f"| {_pair(r['train_s_aff'], r['train_s_sgdml'], '.1f')} "
            f"| {_percent(r['pci_aff'], '.1f')} | {_f(r['lci_aff'], '.2f')} "
            f"| {p.get('m_aff', '—')} / {p.get('m_sgdml', '—')} "
            f"| {_pair(p.get('energy_mae_aff'), p.get('energy_mae_sgdml'), 'g')} "
            f"| {_pair(p.get('force_mae_aff'), p.get('force_mae_sgdml'), 'g')} "
            f"| {_pair(p.get('train_s_aff'), p.get('train_s_sgdml'), 'g')} "
            f"| {_percent(p.get('pci_aff'), 'g')} | {_f(p.get('lci_aff'), 'g')} |"
        )
    lines.append(f"\nunits: energy MAE {ENERGY_UNIT}, force MAE and LCI {FORCE_UNIT}, train time s; "
                 "values in parentheses: the sgdml package (— where not run)")
    for r in rows:
        if r.get("sgdml_note"):
            lines.append(f"\n{r['molecule']}/{r['label_set']}: sgdml: {r['sgdml_note']}")
    return "\n".join(lines)


def write_outputs(result: dict, out_dir, *, png: bool = True) -> dict:
    """Write the results JSON, the table (Markdown) and the Fig. 3 / Fig. 5 figures (HTML, PNG).

    Returns
    -------
    dict  {"results": path, "table": path, "figures": {name: {"html": path, "png": path or None}}}
    """
    from aff_app.figures import reproduce as fr

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, dict] = {}
    label_sets = result["settings"]["label_sets"]
    for ls in label_sets:
        pts = [p for p in result["points"] if p["label_set"] == ls]
        if not pts:
            continue
        for name, fig in (("fig3_learning_curves", fr.learning_curves_grid(pts, label_set=ls)),
                          ("fig5_uncertainty", fr.uncertainty_grid(pts, label_set=ls, level=result["settings"]["level"]))):
            stem = f"{name}_{ls}"
            html = out / f"{stem}.html"
            # one plotly.min.js beside the pages (offline, and not 4 MB inlined in every page)
            fig.write_html(str(html), include_plotlyjs="directory", full_html=True)
            png_path = None
            if png:
                png_path = out / f"{stem}.png"
                fr.write_png(fig, png_path)
            figures[stem] = {"html": str(html), "png": None if png_path is None else str(png_path)}
    table = out / "table_I.md"
    table.write_text(format_table(result["rows"]) + "\n", encoding="utf-8")
    results = out / "results.json"
    results.write_text(json.dumps({**result, "files": {"table": str(table), "figures": figures}}, indent=1,
                                  default=_json_default), encoding="utf-8")
    return {"results": str(results), "table": str(table), "figures": figures}


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
