"""Settings of the reproduction, the paper's Table I values, and the names of its methods."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


from aff_app.errors import AFFError
from aff_app.reproduce.md17 import LABEL_SETS, MOLECULES
from aff_app.workflows.metrics import ENERGY_UNIT, FORCE_UNIT


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


class ReproduceError(AFFError, ValueError):
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


