"""The typed record of a fit: where a model came from, how it was fitted, how long each part took.

One :class:`FitRecord` travels with every :class:`~aff_app.gp.force.ForceModel`
(``model.record``) and is written into its model file as JSON. The force fit
fills the method's part (hyperparameter search, λ check, interval calibration,
the fit's own timings); the workflow that called it
(:mod:`aff_app.workflows.pipeline`) adds the data, the split, the symmetry and
the wall time of the whole action. Nothing reads it by string key: every field
is an attribute with a type, and :meth:`FitRecord.from_dict` reads both this
layout and the untyped ``info`` dictionaries of model files written before it.

Units: times in s, γ in 1/Å (descriptor units), λ dimensionless.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DataRecord",
    "SplitRecord",
    "SearchRecord",
    "LamCheck",
    "Calibration",
    "Timings",
    "SolverRecord",
    "FitRecord",
]


def _pick(cls, d: dict | None, **renames) -> dict:
    """The keys of ``d`` that are fields of ``cls`` (``renames``: field -> older key)."""
    d = dict(d or {})
    for new, old in renames.items():
        if new not in d and old in d:
            d[new] = d[old]
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(frozen=True)
class DataRecord:
    """The trajectory a model was trained on (``Trajectory`` fields and its provenance)."""

    fingerprint: str | None = None
    name: str | None = None
    formula: str | None = None
    n_frames: int | None = None
    n_atoms: int | None = None
    source: str | None = None
    content_hash: str | None = None
    label_set: str | None = None
    frames: str | None = None
    energy_unit: str | None = None
    length_unit: str | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "DataRecord":
        d = dict(d or {})
        units = d.pop("file_units", None) or {}
        d.setdefault("energy_unit", units.get("energy"))
        d.setdefault("length_unit", units.get("length"))
        return cls(**_pick(cls, d))


@dataclass(frozen=True)
class SplitRecord:
    """Training (and, when drawn at training, test) frame indices into that trajectory."""

    seed: int | None = None
    n_frames: int | None = None
    train: tuple[int, ...] = ()
    test: tuple[int, ...] | None = None
    test_rule: str = "all frames outside train"

    @classmethod
    def from_dict(cls, d: dict | None) -> "SplitRecord":
        d = _pick(cls, d)
        d["train"] = tuple(int(i) for i in d.get("train") or ())
        if d.get("test") is not None:
            d["test"] = tuple(int(i) for i in d["test"])
        return cls(**d)


@dataclass(frozen=True)
class SearchRecord:
    """The hyperparameter search (method.md "AFF force model"); ``fixed`` when γ and λ were given."""

    fixed: bool = False
    gamma: float | None = None
    lam: float | None = None
    criterion: str | None = None
    score: float | None = None
    converged: bool | None = None
    n_frames: int = 0
    history: tuple[tuple[float, float, float], ...] = ()
    lam_min_rel: float = 0.0  # λ searched from this many kernel variances up (the iterative path's floor)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SearchRecord":
        d = _pick(cls, d)
        d["history"] = tuple(tuple(float(x) for x in h) for h in d.get("history") or ())
        return cls(**d)

    @property
    def lam_at_floor(self) -> bool:
        """True when the search put λ at the bottom of its grid (method.md "AFF force model": the precision floor)."""
        from aff_app.gp.hyper import LAMBDA_GRID_REL

        if self.fixed or self.gamma is None or self.lam is None:
            return False
        relative = self.lam * 3.0 * self.gamma**2 / 5.0  # in units of the kernel variance 5/(3γ²)
        return bool(relative <= LAMBDA_GRID_REL[0] * (1 + 1e-6))

    def edge_warning(self, gamma: float, lam: float) -> str | None:
        """A warning when the search stopped on the edge of its range, saying which; None otherwise."""
        if self.converged is not False:
            return None
        hist = [h for h in self.history if len(h) == 3]
        where = []
        if hist:
            gs = [h[0] for h in hist]
            if gamma <= min(gs) * (1 + 1e-12):
                where.append(f"γ at the low end of the searched range ({min(gs):.4g}..{max(gs):.4g} 1/Å)")
            elif gamma >= max(gs) * (1 - 1e-12):
                where.append(f"γ at the high end of the searched range ({min(gs):.4g}..{max(gs):.4g} 1/Å)")
        if not where:
            where.append("λ at the top of its grid: the labels look noisier than the kernel allows" if hist
                         else "the optimum on the edge of the searched range")
        return (f"the hyperparameter search did not converge ({'; '.join(where)}); the model was fitted with the "
                f"last values γ = {gamma:.6g} 1/Å, λ = {lam:.3g}")


@dataclass(frozen=True)
class LamCheck:
    """The λ check on all M frames (``fit_force_model(refine_lam=True)``); ``method`` None when not run."""

    method: str | None = None
    probe_sets: tuple[int, ...] = ()
    candidates: tuple[float, ...] = ()
    loo_mae: tuple[float, ...] = ()
    frames: int | None = None
    chosen: float | None = None
    seconds: float | None = None
    skipped: str | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "LamCheck":
        d = _pick(cls, d)
        for k in ("probe_sets", "candidates", "loo_mae"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    @property
    def lowered(self) -> bool:
        """True when the check replaced the search's λ by the smaller candidate."""
        return self.method == "loo" and len(self.candidates) == 2 and self.chosen != self.candidates[0]

    @property
    def factor(self) -> float | None:
        """How many times smaller the chosen λ is than the search's (None unless lowered)."""
        return self.candidates[0] / self.candidates[1] if self.lowered else None

    @property
    def gain(self) -> float | None:
        """Relative drop of the leave-one-frame-out force MAE with the chosen λ (None unless lowered)."""
        return 1.0 - self.loo_mae[1] / self.loo_mae[0] if self.lowered else None


@dataclass(frozen=True)
class Calibration:
    """The leave-one-frame-out interval calibration (``calibrate='loo'``); ``method`` None when not run."""

    method: str | None = None
    scale: float = 1.0
    frames: int | None = None
    loo_coverage_before: float | None = None
    seconds: float | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "Calibration":
        return cls(**_pick(cls, d))


@dataclass(frozen=True)
class SolverRecord:
    """How the PE sets' systems were solved (method.md "Iterative path"); ``method`` 'dense' by default.

    'dense': each kernel built and Cholesky-factored. 'iterative': preconditioned conjugate
    gradients on the matrix-free kernel (``aff_app.gp.iterative``), with the nugget raised to
    ``lam_floor`` when the search's ``lam_search`` was below it; ``iterations`` and ``residuals``
    per set, ``nystrom_frames`` the preconditioner's (and the variance's) subset of frames,
    ``reason`` why this path was taken, ``raised`` (λ, iterations, residual) of each attempt
    that did not converge before λ was raised. ``scheduler``: the executor the fit was given
    (``fit_force_model(executor=)``, its description; None: this process only), ``task_sets``
    the PE sets factored as its tasks and ``tasks_s`` the wait for them (part of
    ``Timings.cholesky_s``); files written before these fields read as None and ().
    """

    method: str = "dense"
    reason: str | None = None
    lam_search: float | None = None
    lam_floor: float | None = None
    lam_floor_rel: float | None = None
    lam: float | None = None
    tol: float | None = None
    iterations: tuple[int, ...] = ()
    residuals: tuple[float, ...] = ()
    held_out_iterations: tuple[int, ...] | None = None
    raised: tuple[tuple[float, int, float], ...] = ()
    nystrom_frames: int | None = None
    nystrom_sides: tuple[int, ...] = ()
    coefficients_cached: bool | None = None
    held_out_frames: int | None = None
    memory_bytes: int | None = None
    products: int | None = None
    precondition_s: float | None = None
    cg_s: float | None = None
    seconds: float | None = None
    scheduler: str | None = None
    task_sets: tuple[int, ...] = ()
    tasks_s: float | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "SolverRecord":
        d = _pick(cls, d)
        for k in ("iterations", "residuals", "nystrom_sides", "held_out_iterations", "task_sets"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        d["raised"] = tuple(tuple(x) for x in d.get("raised") or ())
        return cls(**d)

    @property
    def lam_raised(self) -> bool:
        """True when the iterative path raised the search's λ to its floor."""
        return (self.method == "iterative" and self.lam_search is not None and self.lam is not None
                and self.lam > self.lam_search)


@dataclass
class Timings:
    """Wall times of a training action, s; None for a part that did not run.

    ``search_s``, ``build_s``, ``cholesky_s`` are parts of ``force_s`` (the
    force fit); ``total_s`` is the whole action as the user waited for it:
    symmetry + force fit + energy fit + held-out prediction.
    """

    symmetry_s: float | None = None
    search_s: float | None = None
    build_s: float | None = None
    cholesky_s: float | None = None
    force_s: float | None = None
    energy_s: float | None = None
    evaluation_s: float | None = None
    total_s: float | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "Timings":
        d = dict(d or {})
        if "force_s" not in d:  # files written before the record: total_s was the force fit's
            d["force_s"] = d.get("fit_s", d.get("total_s"))
        return cls(**_pick(cls, d))

    @property
    def train_s(self) -> float | None:
        """Training time as the paper counts it: symmetry + force fit + energy fit (None if no force fit)."""
        if self.force_s is None:
            return None
        return self.force_s + (self.symmetry_s or 0.0) + (self.energy_s or 0.0)


@dataclass
class FitRecord:
    """Provenance and timings of one fitted model (see the module docstring).

    Attributes
    ----------
    version : str
        aff_app version that fitted it.
    mode : {'aff', 'gdml', 'sgdml'}
    n_train : int
    criterion : str
        'likelihood', 'cv' or 'fixed'.
    search, lam_check, calibration : the method's choices, typed.
    solver : SolverRecord
        Dense factorisation or conjugate gradients (method.md "Iterative path").
    timings : Timings
    cholesky_flops : float
    data : DataRecord or None
    split : SplitRecord or None
    symmetry : dict or None
        ``SymmetryInfo.to_dict()`` (read back with ``SymmetryInfo.from_dict``).
    """

    version: str = ""
    mode: str = ""
    n_train: int = 0
    criterion: str = "fixed"
    search: SearchRecord = field(default_factory=SearchRecord)
    lam_check: LamCheck = field(default_factory=LamCheck)
    calibration: Calibration = field(default_factory=Calibration)
    solver: SolverRecord = field(default_factory=SolverRecord)
    timings: Timings = field(default_factory=Timings)
    cholesky_flops: float | None = None
    data: DataRecord | None = None
    split: SplitRecord | None = None
    symmetry: dict | None = None

    @property
    def data_fingerprint(self) -> str | None:
        return None if self.data is None else self.data.fingerprint

    @property
    def seed(self) -> int | None:
        return None if self.split is None else self.split.seed

    @property
    def test_idx(self) -> tuple[int, ...] | None:
        """Test frames drawn at training (None when every other frame is a test frame)."""
        return None if self.split is None else self.split.test

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "FitRecord":
        """Read :meth:`to_dict`'s layout, or the ``info`` dictionary of an older model file."""
        d = dict(d or {})
        return cls(
            version=str(d.get("version", "")),
            mode=str(d.get("mode", "")),
            n_train=int(d.get("n_train", 0) or 0),
            criterion=str(d.get("criterion", "fixed")),
            search=SearchRecord.from_dict(d.get("search", d.get("hyper"))),
            lam_check=LamCheck.from_dict(d.get("lam_check", d.get("lam_refine"))),
            calibration=Calibration.from_dict(d.get("calibration")),
            solver=SolverRecord.from_dict(d.get("solver")),
            timings=Timings.from_dict(d.get("timings")),
            cholesky_flops=d.get("cholesky_flops"),
            data=None if d.get("data") is None else DataRecord.from_dict(d["data"]),
            split=None if d.get("split") is None else SplitRecord.from_dict(d["split"]),
            symmetry=d.get("symmetry"),
        )
