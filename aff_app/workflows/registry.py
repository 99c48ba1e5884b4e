"""A registry of named trained models: what the Train, Predictions and Compare pages share.

Pure library (no Streamlit): the app keeps one :class:`ModelRegistry` in its
session state, but nothing here knows about that. An entry
(:class:`TrainedModel`) holds a force model, its optional energy model, the
fingerprint of the data it belongs to, and — once evaluated — its held-out
metrics (the paper's Table I columns).

Models travel as the one model file of :mod:`aff_app.gp.persistence`
(``model_bytes(entry.force, entry.energy)`` / ``load_model(data)``).

Units: γ in 1/Å (descriptor units), λ dimensionless, times in s, force
metrics in kcal/mol/Å, energy metrics in kcal/mol.
"""

from __future__ import annotations

import itertools
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from aff_app.errors import AFFError
from aff_app.gp.energy import EnergyModel
from aff_app.gp.persistence import ENERGY_MODEL_CLASSES, FORCE_MODEL_CLASSES, EnergyModelType, ForceModelType
from aff_app.workflows.kinds import MODE_LABELS
from aff_app.workflows.metrics import finite_or_none as _finite_or_none

__all__ = [
    "RegistryError",
    "TrainedModel",
    "ModelRegistry",
    "MODE_LABELS",
    "default_name",
    "ROW_COLUMNS",
]

#: Longest accepted model name.
MAX_NAME_LENGTH = 80
#: Columns of :meth:`ModelRegistry.rows`, with their units.
ROW_COLUMNS = (
    "name", "model", "M", "seed", "gamma (1/Å)", "lambda", "train time (s)",
    "force MAE (kcal/mol/Å)", "energy model", "energy MAE (kcal/mol)", "PCI(95%)", "LCI(95%) (kcal/mol/Å)", "source",
)


class RegistryError(AFFError, ValueError):
    """An invalid registry operation (unknown name, duplicate or empty name)."""


def clean_model_name(name: Any, error: type[Exception] | None = None) -> str:
    """A model name with its white space collapsed; ``error`` (default :class:`RegistryError`) when it is not text,
    empty, or longer than :data:`MAX_NAME_LENGTH` — one rule for the session's registry and the workspace."""
    error = RegistryError if error is None else error
    if not isinstance(name, str):
        raise error(f"a model name must be text, got {type(name).__name__}")
    clean = re.sub(r"\s+", " ", name).strip()
    if not clean:
        raise error("a model name cannot be empty")
    if len(clean) > MAX_NAME_LENGTH:
        raise error(f"a model name may have at most {MAX_NAME_LENGTH} characters, got {len(clean)}")
    return clean


def default_name(mode: str, n_train: int, seed: int | None) -> str:
    """The name a freshly trained model gets, e.g. ``'AFF M=200 seed 0'``."""
    label = MODE_LABELS.get(mode, str(mode).upper())
    return f"{label} M={int(n_train)}" + ("" if seed is None else f" seed {int(seed)}")


@dataclass(eq=False)
class TrainedModel:
    """One named model of the session.

    Attributes
    ----------
    name : str
        Unique within its registry.
    force : ForceModel, PackageModel or DCFModel
        A force GP of ours, or a peer (``aff_app.workflows.kinds``).
    energy : EnergyModel, IntegratedEnergyModel, SubsetEnergyModel, PackageEnergy or None
        Fitted when the training data had energies.
    data_fingerprint : str or None
        ``Trajectory.fingerprint`` of the data it was trained on (from the
        model's provenance for an uploaded model; None when unknown).
    source : {'trained', 'uploaded'}
    uid : str
        Random identity that survives renaming (memo keys use it; unique across sessions).
    metrics : dict or None
        Held-out metrics once evaluated: ``force_mae``, ``force_rmse``, ``pci``,
        ``lci``, ``l_norm``, ``delta_p`` (forces, kcal/mol/Å and fractions),
        ``energy_mae`` (kcal/mol, or None), ``n_test``, ``kind``, ``level``.
    """

    name: str
    force: ForceModelType
    energy: EnergyModelType | None = None
    data_fingerprint: str | None = None
    source: str = "trained"
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    metrics: dict | None = None

    # -- the numbers users know ---------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.force.mode

    @property
    def mode_label(self) -> str:
        return MODE_LABELS.get(self.force.mode, self.force.mode)

    @property
    def has_interval(self) -> bool:
        """False for the peers (means only): pages say so where they show intervals."""
        return bool(self.force.has_interval)

    @property
    def n_train(self) -> int:
        return self.force.n_train

    @property
    def seed(self) -> int | None:
        seed = self.force.record.seed
        return None if seed is None else int(seed)

    @property
    def gamma(self) -> float:
        return float(self.force.gamma)

    @property
    def lam(self) -> float:
        return float(self.force.lam)

    @property
    def train_time_s(self) -> float | None:
        """Training time, s: symmetry search, force fit (hyperparameter search included) and energy fit."""
        return _finite_or_none(self.force.record.timings.train_s)

    @property
    def test_idx(self) -> list[int] | None:
        """Test frames recorded at training (None when none were)."""
        test = self.force.record.test_idx
        return None if test is None else [int(i) for i in test]

    def row(self) -> dict[str, Any]:
        """One table row (keys :data:`ROW_COLUMNS`); unknown or non-finite values are None."""
        m = self.metrics or {}
        pci = _finite_or_none(m.get("pci"))
        return {
            "name": self.name,
            "model": self.mode_label,
            "M": self.n_train,
            "seed": self.seed,
            "gamma (1/Å)": _finite_or_none(self.gamma),
            "lambda": _finite_or_none(self.lam),
            "train time (s)": self.train_time_s,
            "force MAE (kcal/mol/Å)": _finite_or_none(m.get("force_mae")),
            "energy model": None if self.energy is None else self.energy.label,
            "energy MAE (kcal/mol)": _finite_or_none(m.get("energy_mae")),
            "PCI(95%)": pci,
            "LCI(95%) (kcal/mol/Å)": _finite_or_none(m.get("lci")),
            "source": self.source,
        }


class ModelRegistry:
    """Named trained models, in the order they were added.

    Names are unique; :meth:`add` makes a clash unique with a ``' (2)'`` suffix
    unless ``unique=False`` asks for an error instead.

    ``on_change`` (optional, settable later): called after every change as
    ``on_change(event, entry, old_name)`` with ``event`` one of :data:`EVENTS`
    (``old_name`` only for 'rename'); the app mirrors the registry into its
    workspace this way. A change made with ``notify=False`` (e.g. a model
    restored from the workspace) does not call it.
    """

    #: What ``on_change`` is told.
    EVENTS = ("add", "rename", "remove", "metrics")

    def __init__(self, on_change: Callable[[str, TrainedModel, str | None], None] | None = None) -> None:
        self._entries: dict[str, TrainedModel] = {}
        self.on_change = on_change

    def _notify(self, event: str, entry: TrainedModel, old_name: str | None = None) -> None:
        if self.on_change is not None:
            self.on_change(event, entry, old_name)

    # -- container protocol --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[TrainedModel]:
        return iter(list(self._entries.values()))

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> TrainedModel:
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(
                f"no model named {name!r}; the session has: {', '.join(self._entries) or 'none'}"
            ) from None

    # -- changes -----------------------------------------------------------------------------
    @staticmethod
    def _clean(name: Any) -> str:
        return clean_model_name(name, RegistryError)

    def unique_name(self, base: str) -> str:
        """``base`` itself when free, else ``'base (2)'``, ``'base (3)'``…"""
        base = self._clean(base)
        if base not in self._entries:
            return base
        for k in itertools.count(2):
            cand = f"{base} ({k})"
            if cand not in self._entries:
                return cand
        raise AssertionError("unreachable")  # pragma: no cover

    def add(
        self,
        force: ForceModelType,
        *,
        name: str | None = None,
        energy: EnergyModelType | None = None,
        data_fingerprint: str | None = None,
        source: str = "trained",
        metrics: dict | None = None,
        unique: bool = True,
        uid: str | None = None,
        notify: bool = True,
    ) -> TrainedModel:
        """Add a model under ``name`` (default :func:`default_name`); return its entry.

        Raises
        ------
        RegistryError
            Not a ForceModel, an energy model of another force model, an
            empty name, or (``unique=False``) a name already taken.
        """
        if not isinstance(force, FORCE_MODEL_CLASSES):
            raise RegistryError(f"expected a force model ({', '.join(c.__name__ for c in FORCE_MODEL_CLASSES)}), "
                                f"got {type(force).__name__}")
        if energy is not None:
            if not isinstance(energy, ENERGY_MODEL_CLASSES):
                raise RegistryError(f"expected an energy model or None, got {type(energy).__name__}")
            if energy.n_atoms != force.n_atoms:
                raise RegistryError(
                    f"the energy model is for {energy.n_atoms} atoms but the force model for {force.n_atoms}"
                )
        if source not in ("trained", "uploaded"):
            raise RegistryError(f"source must be 'trained' or 'uploaded', got {source!r}")
        if name is None:
            name = default_name(force.mode, force.n_train, force.record.seed)
        clean = self._clean(name)
        if clean in self._entries and not unique:
            raise RegistryError(f"a model named {clean!r} exists already: choose another name")
        clean = self.unique_name(clean)
        if uid is not None and any(e.uid == str(uid) for e in self._entries.values()):
            raise RegistryError(f"this model is in the registry already (as {self.uid_names()[str(uid)]!r})")
        if data_fingerprint is None:
            data_fingerprint = force.record.data_fingerprint
        entry = TrainedModel(name=clean, force=force, energy=energy, data_fingerprint=data_fingerprint,
                             source=source, metrics=None if metrics is None else dict(metrics))
        if uid is not None:
            entry.uid = str(uid)
        self._entries[clean] = entry
        if notify:
            self._notify("add", entry)
        return entry

    def uid_names(self) -> dict[str, str]:
        """``{uid: name}`` of the entries."""
        return {e.uid: e.name for e in self._entries.values()}

    def rename(self, old: str, new: str, *, notify: bool = True) -> TrainedModel:
        """Rename ``old`` to ``new`` (kept at its place in the order)."""
        entry = self.get(old)
        clean = self._clean(new)
        if clean == old:
            return entry
        if clean in self._entries:
            raise RegistryError(f"a model named {clean!r} exists already: choose another name")
        self._entries = {(clean if k == old else k): v for k, v in self._entries.items()}
        entry.name = clean
        if notify:
            self._notify("rename", entry, old)
        return entry

    def remove(self, name: str, *, notify: bool = True) -> TrainedModel:
        """Remove and return the entry ``name``."""
        entry = self.get(name)
        del self._entries[name]
        if notify:
            self._notify("remove", entry)
        return entry

    def set_metrics(self, name: str, metrics: dict) -> None:
        """Record the held-out metrics of ``name`` (see :attr:`TrainedModel.metrics`)."""
        entry = self.get(name)
        if entry.metrics == metrics:
            return  # (the Predictions page sets them on every rerun)
        entry.metrics = dict(metrics)
        self._notify("metrics", entry)

    def for_data(self, fingerprint: str | None, n_atoms: int | None = None) -> list[TrainedModel]:
        """Entries trained on data with this fingerprint, or (``n_atoms`` given) of that size when unknown."""
        out = []
        for e in self:
            if e.data_fingerprint == fingerprint:
                out.append(e)
            elif n_atoms is not None and e.data_fingerprint is None and e.force.n_atoms == n_atoms:
                out.append(e)
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One :meth:`TrainedModel.row` per entry, in order."""
        return [e.row() for e in self]
