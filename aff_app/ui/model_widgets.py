"""Streamlit helpers of the Train, Predictions and Compare pages: the session's models and their predictions.

* :func:`get_registry` — the session's :class:`aff_app.workflows.registry.ModelRegistry`.
* :func:`require_models` — like ``state.require_trajectory``: the models that
  fit the loaded molecule, or a pointer to the Train page and ``st.stop()``.
* :func:`held_out` — the held-out predictions of a model, memoised in the
  session by (model uid, data fingerprint, test frames, seed): computed once,
  never mutated (the arrays are read-only).
* :func:`fmt` — numbers for display; None/NaN/inf become "—".

Fits run in the server's job queue (``aff_app.ui.background``); work a page does while the
user waits reports through :func:`progress_adapter` (``aff_app.ui.jobs``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import streamlit as st

from aff_app.errors import AFFError
from aff_app.workflows import metrics
from aff_app.cancel import CancelToken
from aff_app.workflows.metrics import MetricError
from aff_app.workflows import pipeline
from aff_app.workflows.predictions import HeldOut
from aff_app.workflows.kinds import GP_MODES
from aff_app.workflows.registry import ModelRegistry, TrainedModel
from aff_app.io.trajectory import Trajectory

from aff_app.ui import jobs, state

#: Failures of a training or evaluation request that the pages turn into ``st.error``: the user's
#: (a budget refusal, a failed factorisation, a bad model file...). Anything else is a bug, and
#: Streamlit shows it as one, with its traceback.
EXPECTED_ERRORS = (AFFError,)
#: How many held-out prediction sets a session keeps.
MAX_HELD_OUT = 8
#: Placeholder for a value that is unknown or not a finite number.
DASH = "—"

Progress = Callable[[float, str], None]


# -- display ------------------------------------------------------------------------------------------


def is_number(x: Any) -> bool:
    """True for a finite int/float (numpy included)."""
    try:
        return x is not None and not isinstance(x, bool) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt(x: Any, spec: str = ".3g", *, unit: str = "", percent: bool = False) -> str:
    """``x`` formatted with ``spec`` (and `` unit``), or "—" when it is None, NaN or infinite."""
    if not is_number(x):
        return DASH
    v = float(x)
    if percent:
        s = f"{100 * v:.1f}%"
    elif spec.endswith("d"):
        s = format(int(round(v)), spec)
    else:
        s = format(v, spec)
    return f"{s} {unit}".rstrip() if unit else s


def error_text(exc: BaseException) -> str:
    """The library's message (its exceptions carry numbers and advice), or the type for a foreign one."""
    msg = str(exc).strip()
    return msg if msg else type(exc).__name__


# -- the registry ----------------------------------------------------------------------------------------


def get_registry() -> ModelRegistry:
    """The session's model registry (created empty on first use)."""
    from aff_app.ui import session_store  # (imports this module)

    reg = st.session_state.get(state.MODELS)
    if not isinstance(reg, ModelRegistry):
        reg = ModelRegistry()
        st.session_state[state.MODELS] = reg
    return session_store.attach_registry(reg)


def compatible_models(traj: Trajectory) -> list[TrainedModel]:
    """Models of the session whose atoms are those of ``traj``, in the same order (newest last)."""
    z = np.asarray(traj.z)
    return [e for e in get_registry() if e.force.z.shape == z.shape and np.array_equal(e.force.z, z)]


def require_models(traj: Trajectory) -> list[TrainedModel]:
    """Models that fit the loaded molecule, or say what to do and stop the page."""
    models = compatible_models(traj)
    if not models:
        others = len(get_registry())
        tail = (f" The session has {others} model(s), but of another molecule." if others else "")
        st.info(f"No trained model for {traj.formula} yet — train one on the Train page "
                f"(or upload a saved model there).{tail}")
        st.page_link(state.TRAIN_PAGE, label="Go to the Train page", icon="🏋️")
        st.stop()
    return models


def model_label(entry: TrainedModel) -> str:
    """Selectbox text of a model: its name, type and size."""
    return f"{entry.name}  ·  {entry.mode_label}, M = {entry.n_train}"


# -- training --------------------------------------------------------------------------------------------


def last_searched(traj: Trajectory) -> TrainedModel | None:
    """The newest model of the session trained on ``traj`` (same fingerprint) whose γ and λ came from a search."""
    for entry in reversed(get_registry().for_data(traj.fingerprint)):
        if entry.mode in GP_MODES and not entry.force.record.search.fixed:  # the peers have no γ, λ
            return entry
    return None


def prefill_hyperparameters(traj: Trajectory, gamma_key: str, lam_key: str, marker_key: str, *,
                            default_gamma: float, default_lam: float = 1e-8) -> str:
    """Put the hand-set γ and λ inputs at the current data's last search, and say where they come from.

    The inputs are (re)set only when the data or the newest searched model
    changed since they were last filled (``marker_key`` remembers which), so
    values the user typed survive reruns and page switches; a new data set
    never inherits the old one's values. Call before the inputs are drawn.

    Returns
    -------
    str
        A caption: which model's search the values are from, or that they are
        rough defaults because nothing was searched on this data yet.
    """
    source = last_searched(traj)
    marker = (traj.fingerprint, None if source is None else source.uid)
    if st.session_state.get(marker_key) != marker:
        if source is None:
            st.session_state[gamma_key], st.session_state[lam_key] = float(default_gamma), float(default_lam)
        else:
            st.session_state[gamma_key], st.session_state[lam_key] = float(source.gamma), float(source.lam)
        st.session_state[marker_key] = marker
    if source is None:
        return ("No search has run on this data yet: γ is the median descriptor distance and λ = 1e-8, rough "
                "starting values (a search is often an order of magnitude more accurate). Train once with an "
                "estimate and its γ and λ are filled in here.")
    found = f"γ = {fmt(source.gamma, '.4g')} 1/Å, λ = {fmt(source.lam, '.2e')}"
    same = (np.isclose(st.session_state.get(gamma_key, np.nan), source.gamma, rtol=1e-3)
            and np.isclose(st.session_state.get(lam_key, np.nan), source.lam, rtol=1e-2))
    if same:
        return f"Filled in from the search of **{source.name}** on this data ({found})."
    return f"Your own values; the last search on this data (**{source.name}**) found {found}."


def package_status() -> str | None:
    """None when the optional sgdml package imports; else why not, with the install command."""
    from aff_app.peers.sgdml import peer_status

    with st.spinner("Looking for the sgdml package…"):
        return peer_status()


# -- held-out predictions ------------------------------------------------------------------------------

#: Keys of ``HeldOut.report`` that are numbers (None when they cannot be computed).
REPORT_NUMBERS = ("force_mae", "force_rmse", "pci", "lci", "delta_p", "l_norm", "energy_mae", "energy_rmse",
                  "energy_pci", "energy_lci")


def held_report(held: HeldOut, level: float = 0.95, kind: str = "latent") -> dict:
    """``held.report(level, kind)``, or with None for every metric that NaN/inf predictions make undefined.

    The library's metrics refuse non-finite input (``MetricError``); the app
    must still show the page, with "—" where a number cannot be given. The
    force metrics and the energy metrics are judged separately.
    """
    try:
        return held.report(level, kind)
    except MetricError:
        pass
    out = {"n_test": held.n_frames, "level": float(level), "kind": kind, **{k: None for k in REPORT_NUMBERS}}
    f_ok = bool(np.all(np.isfinite(held.F_mean))
                and (not held.has_force_interval or np.all(np.isfinite(held.force_std(kind)))))
    e_ok = held.has_energy and bool(np.all(np.isfinite(held.E_mean)))
    stripped = dataclasses.replace(held, E_mean=None, E_std=None) if not e_ok else held
    if f_ok:
        try:
            out.update(stripped.report(level, kind))
        except MetricError:
            pass
    elif e_ok:
        try:
            out["energy_mae"] = metrics.mae(held.E_ref, held.E_mean)
            out["energy_rmse"] = metrics.rmse(held.E_ref, held.E_mean)
        except MetricError:
            pass
    return out


def band_chart(x, ref, mean, lo, hi, *, key: str, **kwargs) -> None:
    """``figures_predictions.band_figure`` of the frames whose prediction and interval are finite.

    Frames with a NaN/inf prediction are left out (the figure refuses them) and
    a caption says how many; with none left, an info box instead of the chart.
    """
    from aff_app.figures import predictions as figp

    arrays = [np.asarray(a, dtype=float) for a in (ref, mean, lo, hi)]
    ok = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    if not ok.any():
        st.info("— No finite predictions to plot here (every one is NaN or infinite).")
        return
    fig = figp.band_figure(np.asarray(x)[ok], *(a[ok] for a in arrays), **kwargs)
    st.plotly_chart(fig, width="stretch", key=key)
    if not ok.all():
        st.caption(f"{int((~ok).sum())} frame(s) with a NaN or infinite prediction are left out of this plot.")


def held_calibration(held: HeldOut, kind: str = "latent") -> dict:
    """``held.calibration(kind=kind)``; coverages that NaN/inf predictions make undefined are NaN (drawn as gaps)."""
    try:
        return held.calibration(kind=kind)
    except MetricError:
        from aff_app.workflows.predictions import CALIBRATION_LEVELS

        levels = [float(x) for x in CALIBRATION_LEVELS]
        return {"levels": levels, "force": [float("nan")] * len(levels), "energy": None}


def held_out(entry: TrainedModel, traj: Trajectory, *, n_test: int | None, seed: int = 0,
             progress: Progress | None = None) -> HeldOut:
    """Held-out predictions of ``entry`` on ``traj``, computed once per (uid, data, n_test, seed)."""
    memo = st.session_state.setdefault(state.HELD_OUT, {})
    key = (entry.uid, traj.fingerprint, None if n_test is None else int(n_test), int(seed))
    if key in memo:
        return memo[key]
    # a model shared through the workspace has the same uid in every session: its predictions are made once
    with _SHARED_HELD_OUT.slot(key) as slot:
        if slot.value is None:
            slot.value = pipeline.evaluate(entry.force, traj, energy=entry.energy, n_test=n_test, seed=int(seed),
                                           progress=progress)
        result = slot.value
    _remember_in_session(key, result)  # (the shared memo has it already)
    return result


class _SharedMemo:
    """Held-out predictions shared by the server's sessions, computed once per key (their arrays are read-only).

    ``slot(key)`` holds the key's own lock, so a second session asking for the same predictions waits for the
    first instead of computing them again; other keys are not blocked. Least recently used out first.
    """

    class _Slot:
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.value = None

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self, key):
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = self._Slot()
            self._slots.move_to_end(key)
            while len(self._slots) > self.size:
                self._slots.popitem(last=False)
        with slot.lock:
            yield slot


#: How many held-out prediction sets the server shares between sessions.
SHARED_HELD_OUT = 32
_SHARED_HELD_OUT = _SharedMemo(SHARED_HELD_OUT)


def remember_held_out(key: tuple, held: HeldOut) -> None:
    """Keep ``held`` in the session's memo under ``key`` (model uid, data fingerprint, n_test, seed), bounded,
    and share it with the server's other sessions that have the same model."""
    with _SHARED_HELD_OUT.slot(key) as slot:
        slot.value = held
    _remember_in_session(key, held)


def _remember_in_session(key: tuple, held: HeldOut) -> None:
    memo = st.session_state.setdefault(state.HELD_OUT, {})
    memo[key] = held
    while len(memo) > MAX_HELD_OUT:
        memo.pop(next(iter(memo)))


def progress_adapter(bar, token: CancelToken | None = None, *, estimate_s: float | None = None) -> Progress:
    """A ``progress(fraction, message)`` callback driving an ``st.progress`` element.

    Thread-safe: the library may report from worker threads (the per-set
    factorisations run in a thread pool), where Streamlit has no session
    context. Those reports are kept and shown at the next report from the
    script's own thread. With a ``token`` every report raises
    :class:`aff_app.cancel.Cancelled` once it is cancelled (see ``jobs``).
    """
    return jobs.progress_callback(bar, token, estimate_s=estimate_s)


SCHEDULER_HELP = (
    "serial: here, in this server's job. local or local:N: a Dask LocalCluster of N worker processes on this "
    "machine, started for the job and stopped after it. tcp://host:8786: a running Dask scheduler (its workers "
    "need aff_app installed). The results are the same either way."
)


def scheduler_field(label: str, key: str, what: str, help_text: str = ""):
    """Where a job's independent parts run (``aff_app.parallel.parse_scheduler``); None, with an error, when the
    text is not a scheduler. ``what`` names those parts in the error ("the points", "the fit")."""
    from aff_app.parallel import SchedulerError, parse_scheduler

    text = st.text_input(label, value="serial", key=key, help=(help_text + " " if help_text else "") + SCHEDULER_HELP)
    try:
        return parse_scheduler(text)
    except SchedulerError as exc:
        st.error(f"Cannot run {what} there: {exc}")
        return None
