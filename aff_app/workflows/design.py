"""Uncertainty-driven sequential design (active learning) against random selection (issue 17, item 3).

From a pool of unlabelled frames (a trajectory file, or an MD run of the emulator) the design
repeatedly adds the frames whose forces the current model is least sure of, labels them (from
the file, or with GFN2-xTB on the fly), refits, and scores every model on the same held-out
frames; random selection from the same pool, with the same start and the same batches, is the
baseline. Method and measured numbers: ``docs/design.md``.

* the frames: one seeded permutation of the pool gives the held-out test frames (its first
  ``n_test`` entries, never candidates) and the initial frames (the next ``n_initial``), the
  same for every strategy;
* a round: fit (:func:`aff_app.workflows.pipeline.fit`), score the held-out frames
  (force MAE, PCI of the latent 95% intervals, :meth:`~aff_app.workflows.predictions.HeldOut.report`),
  then choose the next batch: by :func:`variance_scores` and :func:`select_batch`, or uniformly
  at random;
* the labels come from a :class:`LabelSource`: :class:`FileLabels` (the file's own) or
  :class:`XTBLabels` (GFN2-xTB through ``tblite``, only for the frames that are chosen and the
  test frames);
* :func:`frames_to_reach` answers "how many frames did variance selection need to reach random
  selection's force MAE at the budget".

Stopping: ``should_stop()`` (checked between rounds and inside every fit, scoring and labelling)
or a :class:`aff_app.cancel.Cancelled` raised by ``progress`` ends the run after the last
finished round; unlike the other long runs of the library the finished rounds are *returned*
(``DesignResult.stopped_early`` says why): they are labelled frames and fitted models the user
paid for. ``on_round`` hands the partial result to the caller after every round (the app keeps
it in the session, so a rerun that stops the script keeps it too).

Units: Å, kcal/mol, kcal/mol/Å, s; variance scores in (kcal/mol/Å)².
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from aff_app import units
from aff_app.cancel import Cancelled
from aff_app.errors import AFFError
from aff_app.gp.descriptors import inverse_distances
from aff_app.gp.force import FactorizationError, ForceModel, ModelError
from aff_app.gp.kernels import matern52
from aff_app.io.trajectory import Trajectory
from aff_app.symmetry import SymmetryInfo
from aff_app.workflows import pipeline
from aff_app.workflows.kinds import GP_MODES, MODE_LABELS, has_interval, uses_symmetry
from aff_app.workflows.metrics import finite_or_none
from aff_app.workflows.training import DEFAULT_SYMMETRY_FRAMES, resolve_symmetry

__all__ = [
    "DesignError", "LabelError", "STRATEGIES", "HYPER_POLICIES", "SCORES", "VARIANCE_SCORES",
    "variance_reduction_scores", "DesignSettings", "LabelSource",
    "FileLabels", "XTBLabels", "DesignRow", "ChosenFrame", "DesignResult", "Reached", "variance_scores",
    "select_batch", "design_split", "run_design", "frames_to_reach", "chosen_csv",
]

Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]

#: How frames are chosen: the model's force variance, or uniformly at random (the baseline).
STRATEGIES = ("variance", "random")
#: When γ and λ are searched: when M has doubled since the last search (fixed between), or at every refit.
HYPER_POLICIES = ("doubling", "every")
#: The variance score of a frame (see :func:`variance_scores`).
#: Scores computed from one frame's own predicted variances (:func:`variance_scores`) ...
VARIANCE_SCORES = ("sum", "max", "normalised")
#: ... and the one that also weighs what labelling a frame teaches about the rest of the pool
#: (:func:`variance_reduction_scores`, Cohn's ALC).
SCORES = VARIANCE_SCORES + ("alc",)
#: Interval level of the PCI reported per round (the paper's PCI(95%)).
LEVEL = 0.95
#: Frames labelled per call of the label source (progress and cancel are checked between chunks).
LABEL_CHUNK = 10


class DesignError(AFFError, ValueError):
    """A sequential-design request that cannot run (bad settings, a pool too small, no labels)."""


class LabelError(DesignError, RuntimeError):
    """The label source failed on a frame (the GFN2-xTB calculation, or a file without forces)."""


def _noop(fraction: float, message: str) -> None:
    return None


def _int(name: str, value, lo: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DesignError(f"{name} must be an integer, got {value!r}")
    if int(value) < lo:
        raise DesignError(f"{name} must be at least {lo}, got {int(value)}{hint}")
    return int(value)


@dataclass(frozen=True)
class DesignSettings:
    """What a sequential-design run does.

    Attributes
    ----------
    mode : {'aff', 'gdml', 'sgdml'}
        The force GP (a mode with an interval: the scores are its variances).
    n_initial : int
        M0, the random frames every strategy starts from (≥ 2; the same frames for all).
    batch : int
        Frames added per round (the last round adds fewer when ``budget − n_initial`` is not a multiple).
    budget : int
        M_max, the training frames of the last round (≥ ``n_initial``).
    strategies : tuple of {'variance', 'random'}
        Strategies run side by side, round by round.
    seed : int
        Seed of the test/initial frames, the random additions, candidate subsamples and fits.
    n_test : int
        Held-out frames, never candidates, the same for every strategy and round.
    hyper : {'doubling', 'every'}
        γ and λ searched by the likelihood (method.md (12)) at M0 and whenever M has doubled since the
        last search, fixed in between ('doubling', default), or at every refit ('every'). The same
        rule for every strategy (each searches on its own frames): the comparison is of frames, not of
        tuning. Measured on the uracil sample (docs/design.md): the same held-out MAE at M = 400
        within 0.003 kcal/mol/Å, fits 16 s against 135 s.
    n_candidates : int or None
        Score a fresh random subsample of this many pool frames per round (None: the whole pool).
    score : {'sum', 'max', 'normalised'}
        The variance score (:func:`variance_scores`).
    energy : bool
        Fit the energy model at every round too (energy MAE per row; needs labels with energies).
        Off by default: the selection and the force curve do not use it, and AFF's integrated energy
        costs an sGDML fit of a subset per round.
    """

    mode: str = "aff"
    n_initial: int = 20
    batch: int = 20
    budget: int = 400
    strategies: tuple[str, ...] = STRATEGIES
    seed: int = 0
    n_test: int = 1000
    hyper: str = "doubling"
    n_candidates: int | None = None
    score: str = "sum"
    energy: bool = False

    def __post_init__(self) -> None:
        if self.mode not in GP_MODES:
            known = ", ".join(GP_MODES)
            why = " (it predicts no variance to select by)" if not has_interval(self.mode) and self.mode in MODE_LABELS else ""
            raise DesignError(f"model must be one of {known}{why}, got {self.mode!r}")
        n0 = _int("the number of initial frames M0", self.n_initial, 2, " (a fit needs 2 frames)")
        _int("the batch size", self.batch, 1)
        m_max = _int("the budget M_max", self.budget, 2)
        if m_max < n0:
            raise DesignError(f"the budget M_max = {m_max} is smaller than the {n0} initial frames: raise the budget "
                              "or start from fewer frames")
        _int("the seed", self.seed, 0)
        _int("the number of test frames", self.n_test, 1)
        strategies = tuple(self.strategies) if not isinstance(self.strategies, str) else (self.strategies,)
        if not strategies:
            raise DesignError(f"choose at least one strategy of {', '.join(STRATEGIES)}")
        bad = [s for s in strategies if s not in STRATEGIES]
        if bad:
            raise DesignError(f"unknown strategy {bad[0]!r}: choose from {', '.join(STRATEGIES)}")
        if len(set(strategies)) != len(strategies):
            raise DesignError(f"each strategy may be named once, got {', '.join(strategies)}")
        object.__setattr__(self, "strategies", strategies)
        if self.hyper not in HYPER_POLICIES:
            raise DesignError(f"the hyperparameter policy must be one of {', '.join(HYPER_POLICIES)}, got {self.hyper!r}")
        if self.n_candidates is not None:
            k = _int("the candidates per round", self.n_candidates, 1)
            if k < self.batch:
                raise DesignError(f"the candidates per round ({k}) must be at least the batch size ({self.batch})")
        if self.score not in SCORES:
            raise DesignError(f"the score must be one of {', '.join(SCORES)}, got {self.score!r}")

    @property
    def sizes(self) -> list[int]:
        """M of every round: M0, M0 + batch, …, M_max."""
        out = [self.n_initial]
        while out[-1] < self.budget:
            out.append(min(out[-1] + self.batch, self.budget))
        return out

    def to_dict(self) -> dict:
        return {"mode": self.mode, "n_initial": self.n_initial, "batch": self.batch, "budget": self.budget,
                "strategies": list(self.strategies), "seed": self.seed, "n_test": self.n_test, "hyper": self.hyper,
                "n_candidates": self.n_candidates, "score": self.score, "energy": self.energy}


# -- label sources ------------------------------------------------------------------------------------
class LabelSource(Protocol):
    """Labels of pool frames: ``labels(idx)`` → (F (k, N, 3) kcal/mol/Å, E (k,) kcal/mol or None)."""

    name: str
    has_energy: bool

    def labels(self, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]: ...


class FileLabels:
    """The pool file's own labels (forces, and energies when it has them).

    Raises
    ------
    LabelError
        The trajectory has no forces (use :class:`XTBLabels`).
    """

    name = "file"

    def __init__(self, traj: Trajectory) -> None:
        if traj.F is None:
            raise LabelError(f"{traj.name or 'the data'!r} has no forces to label frames with: label them with "
                             "GFN2-xTB instead (XTBLabels; --label-source xtb)")
        self._traj = traj
        self.has_energy = traj.E is not None

    def labels(self, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        i = np.asarray(idx, dtype=np.int64)
        return np.array(self._traj.F[i]), (None if self._traj.E is None else np.array(self._traj.E[i]))


class XTBLabels:
    """GFN2-xTB labels computed on demand (``tblite.ase.TBLite``, the calculator of ``aff_app.io.simulate``).

    Only the frames asked for are computed, each once (kept for a second request).

    Parameters
    ----------
    z : (N,) atomic numbers
    R : (T, N, 3) positions of the pool, Å
    charge, unpaired : int
        Total charge and unpaired electrons (neutral singlet by default).
    """

    name = "GFN2-xTB"
    has_energy = True

    def __init__(self, z, R, *, charge: int = 0, unpaired: int = 0) -> None:
        self.z = np.asarray(z, dtype=np.int64).reshape(-1)
        self.R = np.asarray(R, dtype=np.float64)
        if self.R.ndim != 3 or self.R.shape[1:] != (self.z.size, 3):
            raise DesignError(f"positions must have shape (T, {self.z.size}, 3) to match z, got {self.R.shape}")
        self.charge, self.unpaired = int(charge), int(unpaired)
        self._cache: dict[int, tuple[np.ndarray, float]] = {}
        self.seconds = 0.0

    @property
    def n_computed(self) -> int:
        """Frames labelled by GFN2-xTB so far."""
        return len(self._cache)

    def _calculator(self):
        # a fresh calculator per frame: a reused one starts its SCF from the previous frame's charges, and the
        # labels then depend (by ~1e-3 kcal/mol/Å, the SCF tolerance) on the order frames were labelled in
        try:
            from aff_app.io.simulate import _make_calculator

            return _make_calculator(self.charge, self.unpaired)
        except ImportError as exc:
            raise LabelError(f"GFN2-xTB labels need the tblite package ({exc}); install it or use a file with "
                             "forces") from None

    def labels(self, idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        from ase import Atoms

        from aff_app.io.simulate import _calculator_exceptions

        ef = units.energy_factor("eV")  # ASE's eV → kcal/mol
        ff = units.force_factor("eV", "Å")  # eV/Å → kcal/mol/Å
        i = np.asarray(idx, dtype=np.int64).reshape(-1)
        F = np.empty((i.size, self.z.size, 3))
        E = np.empty(i.size)
        for k, frame in enumerate(i.tolist()):
            if frame not in self._cache:
                t0 = time.perf_counter()
                atoms = Atoms(numbers=self.z, positions=self.R[frame])
                atoms.calc = self._calculator()
                try:
                    e, f = atoms.get_potential_energy(), atoms.get_forces()
                except _calculator_exceptions() as exc:
                    raise LabelError(f"GFN2-xTB failed on frame {frame}: {exc}") from None
                self._cache[frame] = (np.asarray(f, dtype=np.float64) * ff, float(e) * ef)
                self.seconds += time.perf_counter() - t0
            F[k], E[k] = self._cache[frame]
        return F, E


# -- the records --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DesignRow:
    """One round of one strategy: the model on M frames, scored on the held-out frames.

    Attributes
    ----------
    strategy : str
    round : int
        0 for the initial frames.
    M : int
        Training frames of this round's model.
    force_mae, force_rmse : float
        Held-out force errors, kcal/mol/Å.
    force_max_error : float
        The largest absolute error of a held-out force component, kcal/mol/Å (the tail that a
        variance-driven design is meant to shrink).
    energy_mae : float or None
        Held-out energy MAE, kcal/mol (None unless energies are fitted).
    pci : float or None
        Share of held-out force components inside their latent 95% interval.
    gamma, lam : float
        The model's range (1/Å) and nugget.
    searched : bool
        γ and λ were searched at this refit (else kept from the last search).
    fit_s, eval_s, select_s, label_s : float
        Seconds of the fit, of the held-out predictions, of choosing the frames this round added
        (0 for round 0), and of labelling them.
    """

    strategy: str
    round: int
    M: int
    force_mae: float
    force_rmse: float
    force_max_error: float
    energy_mae: float | None
    pci: float | None
    gamma: float
    lam: float
    searched: bool
    fit_s: float
    eval_s: float
    select_s: float
    label_s: float

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class ChosenFrame:
    """A frame a strategy added to its training set.

    ``round`` 0 are the initial frames (shared); ``score`` the variance score when it was chosen
    ((kcal/mol/Å)², None for random picks and initial frames); ``energy`` its label, kcal/mol (None
    when the labels have no energies).
    """

    strategy: str
    order: int
    round: int
    frame: int
    score: float | None
    energy: float | None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Reached:
    """Where ``strategy``'s curve reaches ``reference``'s force MAE at its largest M.

    Attributes
    ----------
    strategy, reference : str
    target_M : int
        The reference's largest M (M_max when it finished).
    target_mae : float
        The reference's force MAE there, kcal/mol/Å.
    M : float or None
        Frames the strategy needed (log–log interpolation between its rounds); None if never.
    ratio : float or None
        M / target_M.
    best_mae : float
        The strategy's smallest force MAE, kcal/mol/Å; best_M its M.
    last_M : int
        The strategy's largest M.
    """

    strategy: str
    reference: str
    target_M: int
    target_mae: float
    M: float | None
    ratio: float | None
    best_mae: float
    best_M: int
    last_M: int

    def sentence(self) -> str:
        f = f"{self.reference} selection's M = {self.target_M} force MAE {self.target_mae:.3g} {units.FORCE_UNIT}"
        if self.M is None:
            return (f"{self.strategy.capitalize()} selection did not reach {f} within M = {self.last_M}; its best was "
                    f"{self.best_mae:.3g} {units.FORCE_UNIT} at M = {self.best_M}.")
        return (f"{self.strategy.capitalize()} selection reached {f} with {self.M:.0f} frames "
                f"({100 * self.ratio:.0f}% of {self.target_M}).")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"sentence": self.sentence()}


@dataclass(frozen=True, eq=False)
class DesignResult:
    """Rows and chosen frames of a sequential-design run (possibly stopped early).

    Attributes
    ----------
    settings : DesignSettings
    n_frames : int
        Frames in the pool file/run (T).
    test_idx : (n_test,) int, sorted
        The held-out frames, shared by every strategy.
    initial_idx : (M0,) int
        The initial frames, shared by every strategy.
    rows : tuple of DesignRow
        Round by round, strategies interleaved.
    chosen : tuple of ChosenFrame
        Every strategy's training frames in the order they joined (initial frames first), up to its
        last finished round (frames of a round stopped before its fit are labelled but not listed).
    label_source : str
        'file' or 'GFN2-xTB'.
    n_labelled : int
        Distinct frames labelled (test frames and every strategy's training frames).
    label_s, elapsed_s : float
        Seconds spent labelling, and in the whole run.
    stopped_early : str or None
        Why the run ended before the budget (None: finished).
    pe_sets : tuple of tuple of int
        The PE sets of the fits.
    """

    settings: DesignSettings
    n_frames: int
    test_idx: np.ndarray
    initial_idx: np.ndarray
    rows: tuple
    chosen: tuple
    label_source: str
    n_labelled: int
    label_s: float
    elapsed_s: float
    stopped_early: str | None = None
    pe_sets: tuple = ()

    @property
    def finished(self) -> bool:
        return self.stopped_early is None

    def strategy_rows(self, strategy: str) -> list[DesignRow]:
        """The rows of ``strategy``, M ascending."""
        return sorted((r for r in self.rows if r.strategy == strategy), key=lambda r: r.M)

    def curve(self, strategy: str) -> tuple[np.ndarray, np.ndarray]:
        """(M, force MAE kcal/mol/Å) of ``strategy``, M ascending."""
        rows = self.strategy_rows(strategy)
        return np.array([r.M for r in rows], dtype=np.int64), np.array([r.force_mae for r in rows])

    def frames(self, strategy: str) -> np.ndarray:
        """``strategy``'s training frames in the order they joined."""
        return np.array([c.frame for c in self.chosen if c.strategy == strategy], dtype=np.int64)

    def to_dict(self) -> dict:
        return {"settings": self.settings.to_dict(), "n_frames": self.n_frames, "test_idx": self.test_idx.tolist(),
                "initial_idx": self.initial_idx.tolist(), "rows": [r.to_dict() for r in self.rows],
                "chosen": [c.to_dict() for c in self.chosen], "label_source": self.label_source,
                "n_labelled": self.n_labelled, "label_s": self.label_s, "elapsed_s": self.elapsed_s,
                "stopped_early": self.stopped_early, "pe_sets": [list(s) for s in self.pe_sets],
                "units": {"force_mae": units.FORCE_UNIT, "energy_mae": units.ENERGY_UNIT,
                          "score": f"({units.FORCE_UNIT})²", "time": "s"}}


# -- selection ------------------------------------------------------------------------------------------
def variance_scores(model: ForceModel, R, *, score: str = "sum", progress: Progress | None = None) -> np.ndarray:
    """Each frame's predicted force variance under ``model``, shape (B,).

    The latent variances are the diagonal of method.md (11) (``model.predict(R, return_std=True)``).

    score : 'sum'
        Σ over atoms and components of sd², (kcal/mol/Å)²: the expected squared error of the
        frame's force prediction, the quantity a force MAE averages.
    score : 'max'
        The largest atomic variance (sd² summed over x, y, z), (kcal/mol/Å)²: the frame whose worst
        atom is least known.
    score : 'normalised'
        Σ sd²/σ̂_i² over atoms (i each atom's PE set, (9)), dimensionless: the kernel's own posterior
        variance, so that a set with large forces (σ̂_i² large) does not decide alone.
    """
    if score not in VARIANCE_SCORES:
        raise DesignError(f"the variance score must be one of {', '.join(VARIANCE_SCORES)}, got {score!r}")
    pred = model.predict(R, return_std=True, progress=progress)
    var = pred.std ** 2  # (B, N, 3)
    if score == "sum":
        return var.sum(axis=(1, 2))
    if score == "max":
        return var.sum(axis=2).max(axis=1)
    sigma2 = np.asarray(model.sigma2, dtype=np.float64)[np.asarray(model.atom_to_set)]
    return (var.sum(axis=2) / sigma2[None, :]).sum(axis=1)


def variance_reduction_scores(variances, R, *, gamma: float, perms=None, n_reference: int = 1000,
                              rng: np.random.Generator | None = None) -> np.ndarray:
    """How much labelling each frame would lower the pool's summed variance (Cohn's ALC), shape (B,).

    The variance score picks the frames the model knows least, and on an MD pool those are its rare
    high-energy excursions (docs/design.md: 58% of uracil's picks above the pool's 90th energy
    percentile), while the error that matters is averaged over typical frames. ALC scores a frame c by
    the variance its label removes over the pool instead: with the two-point approximation of
    :func:`select_batch` (posterior correlation ≈ the kernel's ρ(c, j), eq. 3 maximised over the
    group, eq. 7), labelling c lowers frame j's variance by ρ(c, j)² var_j, so

        score_c = Σ_j ρ(c, j)² var_j

    over a random reference sample of ``n_reference`` pool frames (scaled to the pool): a frame in a
    dense, uncertain region beats a lone outlier.

    Parameters
    ----------
    variances : (B,) each frame's summed force variance ('sum' of :func:`variance_scores`), (kcal/mol/Å)²
    R : (B, N, 3) positions, Å
    gamma : float — the model's range, 1/Å
    perms : (S, N) int, optional — permutation group
    n_reference : int — pool frames the sum runs over
    rng : numpy Generator — draws the reference sample
    """
    var = np.asarray(variances, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    B = var.size
    rng = np.random.default_rng(0) if rng is None else rng
    ref = np.sort(rng.choice(B, size=min(int(n_reference), B), replace=False))
    perms = np.arange(R.shape[1])[None] if perms is None else np.asarray(perms, dtype=np.int64)
    D = inverse_distances(R)
    d2 = np.einsum("bp,bp->b", D, D)
    corr = np.zeros((B, ref.size))
    for p in perms:
        Dq = inverse_distances(R[ref][:, p])
        r2 = d2[:, None] + np.einsum("rp,rp->r", Dq, Dq)[None] - 2.0 * (D @ Dq.T)
        np.maximum(corr, matern52(np.sqrt(np.maximum(r2, 0.0)), gamma), out=corr)
    return (corr ** 2 @ var[ref]) * (B / ref.size)


def _perm_descriptors(R: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """D(P_q x) of one frame under every permutation, shape (S, P) (method.md (1), (7))."""
    return inverse_distances(np.stack([R[p] for p in perms]))


def select_batch(scores, R, n: int, *, gamma: float, perms=None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy batch: the highest score, each pick discounting the scores of frames like it.

    After a frame a is picked, every remaining candidate c has its score multiplied by 1 − ρ(c, a)²,
    ρ the Matérn 5/2 correlation (3) of their descriptors (1) at the model's γ, maximised over the
    permutation group (7). Why this rule: a GP's posterior variance does not depend on the labels,
    so the effect of labelling a is known before labelling it, and for two points with correlation ρ
    conditioning on a noise-free value at a multiplies c's variance by exactly 1 − ρ² (with the
    training frames present it is an approximation). Without it the top of one batch is a run of
    near-identical frames (neighbours in the MD), whose second copy adds almost nothing once the
    first is labelled; an exact duplicate (ρ = 1) drops to 0 and is never picked beside its twin.

    Parameters
    ----------
    scores : (B,) variance scores of the candidates (any positive units)
    R : (B, N, 3) their positions, Å
    n : int
        Frames to pick (≤ B).
    gamma : float
        Kernel range, 1/Å (the model's γ).
    perms : (S, N) int, optional
        Permutation group (identity only when None).

    Returns
    -------
    picked : (n,) int
        Positions in the candidate list, in the order picked.
    picked_scores : (n,) float
        Their (undiscounted) scores.
    """
    s = np.asarray(scores, dtype=np.float64).copy()
    R = np.asarray(R, dtype=np.float64)
    if s.ndim != 1 or R.shape[0] != s.size:
        raise DesignError(f"scores {s.shape} and positions {R.shape} must describe the same candidates")
    n = int(n)
    if not 1 <= n <= s.size:
        raise DesignError(f"cannot pick {n} frames from {s.size} candidates")
    perms = np.arange(R.shape[1])[None] if perms is None else np.asarray(perms, dtype=np.int64)
    D = inverse_distances(R)
    work = s.copy()
    picked: list[int] = []
    for _ in range(n):
        work[picked] = -np.inf
        a = int(np.argmax(work))
        picked.append(a)
        Da = _perm_descriptors(R[a], perms)  # (S, P)
        rho = np.sqrt(np.maximum(((D[:, None, :] - Da[None]) ** 2).sum(-1), 0.0))  # (B, S)
        corr = matern52(rho, gamma).max(axis=1)
        work = work * (1.0 - np.clip(corr, 0.0, 1.0) ** 2)
    p = np.array(picked, dtype=np.int64)
    return p, s[p]


def design_split(n_frames: int, settings: DesignSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out, initial and candidate frames from one seeded permutation.

    ``numpy.random.default_rng(seed).permutation(n_frames)``: its first ``n_test`` entries are the test
    frames, the next ``n_initial`` the initial frames, the rest the candidates.

    Returns
    -------
    test : (n_test,) int, sorted;  initial : (M0,) int;  candidates : (T − n_test − M0,) int, sorted

    Raises
    ------
    DesignError
        The test frames and the budget do not fit in the pool.
    """
    s = settings
    if s.n_test + s.budget > n_frames:
        raise DesignError(
            f"{s.n_test} test frames plus a budget of M_max = {s.budget} exceed the {n_frames} frames of the pool: "
            f"use at most {max(n_frames - s.budget, 0)} test frames or a budget of at most {max(n_frames - s.n_test, 0)}")
    perm = np.random.default_rng(s.seed).permutation(n_frames).astype(np.int64)
    test = np.sort(perm[: s.n_test])
    initial = perm[s.n_test: s.n_test + s.n_initial]
    return test, initial, np.sort(perm[s.n_test + s.n_initial:])


# -- the run --------------------------------------------------------------------------------------------
@dataclass
class _Lane:
    """One strategy's state during the run."""

    strategy: str
    train: list = field(default_factory=list)
    rounds: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    rng: np.random.Generator | None = None
    hyper: tuple | None = None  # (γ, λ) of the last search
    searched_at: int = 0
    model: ForceModel | None = None
    done_round: int = -1  # the last round with a row
    pending_select_s: float = 0.0
    pending_label_s: float = 0.0


class _Labels:
    """The labels gathered so far (pool frame → F, E) and a compact labelled trajectory for a fit."""

    def __init__(self, pool: Trajectory, source: LabelSource) -> None:
        self.pool, self.source = pool, source
        self.F: dict[int, np.ndarray] = {}
        self.E: dict[int, float | None] = {}
        self.seconds = 0.0

    def ensure(self, idx, report: Callable[[int, int], None]) -> float:
        """Label the frames of ``idx`` not labelled yet, in chunks; returns the seconds it took."""
        todo = [int(i) for i in idx if int(i) not in self.F]
        t0 = time.perf_counter()
        for start in range(0, len(todo), LABEL_CHUNK):
            report(start, len(todo))
            chunk = todo[start: start + LABEL_CHUNK]
            F, E = self.source.labels(chunk)
            F = np.asarray(F, dtype=np.float64)
            if F.shape != (len(chunk), self.pool.n_atoms, 3) or not np.all(np.isfinite(F)):
                raise LabelError(f"the {self.source.name} labels of frames {chunk[:3]}… are not finite forces of shape "
                                 f"({len(chunk)}, {self.pool.n_atoms}, 3)")
            for k, i in enumerate(chunk):
                self.F[i] = F[k]
                self.E[i] = None if E is None else float(E[k])
        dt = time.perf_counter() - t0
        self.seconds += dt
        return dt

    def trajectory(self, frames: np.ndarray) -> Trajectory:
        """The labelled frames ``frames`` (in that order) as a trajectory for a fit or an evaluation."""
        E = [self.E[int(i)] for i in frames]
        return Trajectory(z=self.pool.z, R=self.pool.R[frames], F=np.stack([self.F[int(i)] for i in frames]),
                          E=None if any(e is None for e in E) else np.array(E),
                          name=self.pool.name, provenance=self.pool.provenance)


def run_design(
    pool: Trajectory,
    labels: LabelSource | None = None,
    settings: DesignSettings = DesignSettings(),
    *,
    symmetry: SymmetryInfo | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    on_round: Callable[[DesignResult], None] | None = None,
) -> DesignResult:
    """Run sequential design for every strategy of ``settings`` on the frames of ``pool``.

    Parameters
    ----------
    pool : Trajectory
        The candidate frames (positions Å; labels are not needed when ``labels`` gives them).
    labels : LabelSource, optional
        Where labels come from; default :class:`FileLabels` of ``pool`` (it must have forces).
    settings : DesignSettings
    symmetry : SymmetryInfo, optional
        PE sets and group (AFF, sGDML); default detected on up to 200 pool frames.
    progress : callable(fraction, message), optional
        May raise :class:`aff_app.cancel.Cancelled`: the run ends after the last finished round.
    should_stop : callable() → bool, optional
        Checked between rounds and inside fits, scoring and labelling; True ends the run the same way.
    on_round : callable(DesignResult), optional
        Called with the result so far after every round (``stopped_early`` set to "not finished").

    Returns
    -------
    DesignResult
        ``stopped_early`` None when every strategy reached the budget.

    Raises
    ------
    DesignError
        The pool is too small for the test frames and the budget, or has no labels and none were given;
        a label source that fails raises :class:`LabelError`.
    TrainingError, aff_app.symmetry.SymmetryError
        A fit that cannot run at all (memory budget; the message says which).
    """
    t_start = time.perf_counter()
    progress = progress or _noop
    s = settings
    if not isinstance(pool, Trajectory):
        raise DesignError(f"the pool must be a Trajectory, got {type(pool).__name__}")
    if labels is None:
        labels = FileLabels(pool)
    if s.energy and not labels.has_energy:
        raise DesignError("energies were asked for, but the labels have none: run without the energy model")
    if symmetry is not None and symmetry.n_atoms != pool.n_atoms:
        raise DesignError(f"the symmetry is for {symmetry.n_atoms} atoms but the pool has {pool.n_atoms}")
    test, initial, candidates = design_split(pool.n_frames, s)
    store = _Labels(pool, labels)
    sizes = s.sizes
    n_steps = len(sizes) * len(s.strategies)
    state = {"done": 0, "message": ""}

    def check() -> None:
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped at the caller's request ({state['message'] or 'starting'})")

    def report(f: float, message: str) -> None:
        # one bar over every step: labelling the test and initial frames (5%), then the rounds
        state["message"] = message
        check()
        progress(min(0.05 + 0.95 * (state["done"] + float(f)) / n_steps, 1.0), message)

    lanes = [_Lane(strategy=st_, train=[int(i) for i in initial], rounds=[0] * initial.size,
                   scores=[None] * initial.size, rng=np.random.default_rng([s.seed, k + 1]))
             for k, st_ in enumerate(s.strategies)]
    rows: list[DesignRow] = []
    pe_sets: tuple = ()

    def result(why: str | None) -> DesignResult:
        chosen = tuple(ChosenFrame(strategy=ln.strategy, order=k, round=int(ln.rounds[k]), frame=int(f),
                                   score=finite_or_none(ln.scores[k]), energy=store.E.get(int(f)))
                       for ln in lanes for k, f in enumerate(ln.train) if ln.rounds[k] <= ln.done_round)
        return DesignResult(settings=s, n_frames=pool.n_frames, test_idx=test, initial_idx=initial, rows=tuple(rows),
                            chosen=chosen, label_source=labels.name, n_labelled=len(store.F), label_s=store.seconds,
                            elapsed_s=time.perf_counter() - t_start, stopped_early=why, pe_sets=pe_sets)

    try:
        def label_report(start: int, total: int) -> None:
            check()
            progress(0.05 * start / max(total, 1), f"labelling {total} test and initial frames ({labels.name})")

        store.ensure(np.concatenate([test, initial]), label_report)
        if uses_symmetry(s.mode) and symmetry is None:
            progress(0.05, "finding the permutation symmetry")
            symmetry = resolve_symmetry(Trajectory(z=pool.z, R=pool.R), n_samples=DEFAULT_SYMMETRY_FRAMES,
                                        seed=s.seed)
        if s.mode == "aff":
            pe_sets = tuple(tuple(int(a) for a in st_) for st_ in symmetry.pe_sets)
        perms = symmetry.perms if (symmetry is not None and s.mode != "gdml") else None
        test_traj = store.trajectory(test)
        for r, m in enumerate(sizes):
            for ln in lanes:
                if r > 0:
                    _extend(ln, r, m, pool, candidates, s, store, perms, report)
                rows.append(_fit_and_score(ln, r, pool, store, test_traj, s, symmetry, report))
                ln.done_round = r
                state["done"] += 1
                if on_round is not None:
                    on_round(result(f"not finished: {len(rows)} of {n_steps} rounds done"))
            check()
    except Cancelled as exc:
        # no more progress reports after a cancel: the callback that raised would raise again
        return result(f"{exc} — kept the {len(rows)} finished rounds")
    progress(1.0, "done")
    return result(None)


def _fit_and_score(ln: _Lane, r: int, pool: Trajectory, store: _Labels, test_traj: Trajectory, s: DesignSettings,
                   symmetry: SymmetryInfo | None, report: Progress) -> DesignRow:
    """Refit ``ln``'s model on its frames and score it on the held-out frames: one row."""
    m = len(ln.train)
    tag = f"{ln.strategy} M = {m}"
    # the hyperparameter policy (the same for every strategy): search now, or keep the last search's γ, λ
    search = ln.hyper is None or s.hyper == "every" or m >= 2 * ln.searched_at
    gamma, lam = (None, None) if search else ln.hyper
    # a seeded shuffle of the training frames: the fit's LOO calibration uses its *last* frames, which must be
    # a random sample of the training set, not the batch chosen last (aff_app.gp.force.fit_force_model, calibrate)
    order = np.random.default_rng([s.seed, r, m]).permutation(m)
    frames = np.asarray(ln.train, dtype=np.int64)[order]
    traj = store.trajectory(frames)
    settings = pipeline.TrainSettings(mode=s.mode, gamma=gamma, lam=lam, energy=s.energy, keep_factors=True)
    t0 = time.perf_counter()
    try:
        trained = pipeline.fit(traj, np.arange(m), settings, symmetry=symmetry if uses_symmetry(s.mode) else None,
                               seed=s.seed, progress=lambda f, msg: report(0.45 + 0.3 * f, f"{tag}: fit: {msg}"))
    except (FactorizationError, ModelError, np.linalg.LinAlgError) as exc:
        raise DesignError(f"the fit of {tag} failed: {exc}") from None
    fit_s = time.perf_counter() - t0
    if search:
        ln.hyper, ln.searched_at = (trained.force.gamma, trained.force.lam), m
    t0 = time.perf_counter()
    held = pipeline.evaluate(trained, test_traj, test_idx=np.arange(test_traj.n_frames), with_std=True,
                             progress=lambda f, msg: report(0.75 + 0.25 * f, f"{tag}: held-out frames: {msg}"))
    eval_s = time.perf_counter() - t0
    rep = held.report(LEVEL, "latent")
    ln.model = trained.force
    row = DesignRow(strategy=ln.strategy, round=r, M=m, force_mae=rep["force_mae"], force_rmse=rep["force_rmse"],
                    force_max_error=float(np.max(np.abs(held.F_mean - held.F_ref))),
                    energy_mae=finite_or_none(rep["energy_mae"]), pci=finite_or_none(rep["pci"]),
                    gamma=float(trained.force.gamma), lam=float(trained.force.lam), searched=bool(search),
                    fit_s=fit_s, eval_s=eval_s, select_s=ln.pending_select_s, label_s=ln.pending_label_s)
    ln.pending_select_s = ln.pending_label_s = 0.0
    return row


def _extend(ln: _Lane, r: int, m: int, pool: Trajectory, candidates: np.ndarray, s: DesignSettings, store: _Labels,
            perms, report: Progress) -> None:
    """Choose ``m − len(ln.train)`` new frames for ``ln`` (by its strategy) and label them."""
    n = m - len(ln.train)
    tag = f"{ln.strategy} round {r}"
    t0 = time.perf_counter()
    free = np.setdiff1d(candidates, np.asarray(ln.train, dtype=np.int64), assume_unique=True)
    if ln.strategy == "random":
        new = ln.rng.choice(free, size=n, replace=False)
        new_scores = [None] * n
    else:
        cand = free
        if s.n_candidates is not None and s.n_candidates < free.size:
            cand = np.sort(ln.rng.choice(free, size=s.n_candidates, replace=False))
        report(0.0, f"{tag}: scoring {cand.size} candidates")
        sc = variance_scores(ln.model, pool.R[cand], score="sum" if s.score == "alc" else s.score,
                             progress=lambda f, msg: report(0.4 * f, f"{tag}: scoring candidates: {msg}"))
        if s.score == "alc":
            sc = variance_reduction_scores(sc, pool.R[cand], gamma=ln.model.gamma, perms=perms, rng=ln.rng)
        pick, picked_scores = select_batch(sc, pool.R[cand], n, gamma=ln.model.gamma, perms=perms)
        new = cand[pick]
        new_scores = picked_scores.tolist()
    ln.pending_select_s = time.perf_counter() - t0
    ln.pending_label_s = store.ensure(new, lambda a, b: report(0.4 + 0.05 * a / max(b, 1), f"{tag}: labelling {b} frames ({store.source.name})"))
    ln.train.extend(int(i) for i in new)
    ln.rounds.extend([r] * n)
    ln.scores.extend(new_scores)


# -- the answer ----------------------------------------------------------------------------------------------
def frames_to_reach(result: DesignResult, strategy: str = "variance", reference: str = "random") -> Reached | None:
    """How many frames ``strategy`` needed to reach ``reference``'s force MAE at its largest M.

    The first round whose MAE is at or below the target decides; M is interpolated linearly in
    log M against log MAE (learning curves are close to power laws) between it and the round before.
    None when either strategy has no row.
    """
    ms, mae = result.curve(strategy)
    rm, rmae = result.curve(reference)
    if ms.size == 0 or rm.size == 0:
        return None
    target_M, target = int(rm[-1]), float(rmae[-1])
    best = int(np.argmin(mae))
    hit = np.flatnonzero(mae <= target)
    M = ratio = None
    if hit.size:
        k = int(hit[0])
        if k == 0 or mae[k] == mae[k - 1]:
            M = float(ms[k])
        else:
            t = (math.log(target) - math.log(mae[k - 1])) / (math.log(mae[k]) - math.log(mae[k - 1]))
            M = float(math.exp(math.log(ms[k - 1]) + min(max(t, 0.0), 1.0) * (math.log(ms[k]) - math.log(ms[k - 1]))))
        ratio = M / target_M
    return Reached(strategy=strategy, reference=reference, target_M=target_M, target_mae=target, M=M, ratio=ratio,
                   best_mae=float(mae[best]), best_M=int(ms[best]), last_M=int(ms[-1]))


def chosen_csv(result: DesignResult) -> str:
    """The chosen frames as CSV: strategy, order, round, frame, score ((kcal/mol/Å)²), label energy (kcal/mol)."""
    out = io.StringIO()
    out.write(f"strategy,order,round,frame,score [({units.FORCE_UNIT})^2],E_label [{units.ENERGY_UNIT}]\n")
    for c in result.chosen:
        sc = "" if c.score is None else f"{c.score:.6g}"
        e = "" if c.energy is None else f"{c.energy:.10g}"
        out.write(f"{c.strategy},{c.order},{c.round},{c.frame},{sc},{e}\n")
    return out.getvalue()
