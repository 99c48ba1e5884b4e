"""The Sequential design page's sections: each function draws one part of the page (pages/design.py).

The run goes through ``aff_app.workflows.design.run_design``; after every finished round its result so
far is written to ``state.DESIGN_RESULT``, so Cancel (or any click that stops the script) keeps the
rounds that finished.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import streamlit as st

from aff_app.errors import AFFError
from aff_app.figures import design as figd
from aff_app.io.trajectory import Trajectory
from aff_app.symmetry import SymmetryInfo
from aff_app.ui import background as bg
from aff_app.ui import model_widgets as mw
from aff_app.ui import state
from aff_app.ui import symmetry_widgets as sw
from aff_app.units import ENERGY_UNIT, FORCE_UNIT
from aff_app.workflows import design
from aff_app.workflows.kinds import GP_MODES, MODE_LABELS, uses_symmetry

POOL_LABELS = {"data": "the loaded trajectory", "md": "the last MD run of the emulator"}
HYPER_LABELS = {"doubling": "search γ, λ when M has doubled, fixed between", "every": "search γ, λ at every refit"}
SCORE_LABELS = {"sum": "sum of the force variances", "max": "largest atomic variance",
                "normalised": "sum of variances / σ̂² of each PE set",
                "alc": "variance removed from the pool (ALC)"}


@dataclass(frozen=True, eq=False)
class DesignPool:
    """The frames to choose from, where their labels come from, and the energy trace to show.

    ``energies`` (T,) kcal/mol and ``times_ps`` (T,) may be None; ``key`` tells pools apart in the session.
    """

    key: str
    kind: str
    traj: Trajectory
    labels: design.LabelSource
    energies: np.ndarray | None
    times_ps: np.ndarray | None
    energy_label: str
    symmetry: SymmetryInfo | None

    @property
    def xtb(self) -> bool:
        return self.labels.name != "file"


@dataclass(frozen=True)
class DesignForm:
    """The settings read from the widgets (None when they are not valid; the error was shown)."""

    settings: design.DesignSettings | None


def _labeller(key: str, z, R) -> design.XTBLabels:
    """The session's GFN2-xTB labeller of a pool (labels computed once are reused by later runs)."""
    store = st.session_state.setdefault(state.DESIGN_LABELLERS, {})
    if key not in store:
        store.clear()  # one pool's labels at a time
        store[key] = design.XTBLabels(z, R)
    return store[key]


def _md_run():
    run = st.session_state.get(state.MD_RUN)
    ok = run is not None and all(hasattr(run, a) for a in ("z", "positions", "times_ps", "potential_energy", "label"))
    return run if ok else None


def pool_choice(traj: Trajectory) -> DesignPool:
    """The pool: the loaded trajectory (its labels, else GFN2-xTB) or the session's last MD run (GFN2-xTB)."""
    run = _md_run()
    kinds = ["data"] + (["md"] if run is not None else [])
    if st.session_state.get(state.DESIGN_POOL) not in kinds:
        st.session_state[state.DESIGN_POOL] = "data"
    kind = st.radio("Pool of frames", kinds, format_func=POOL_LABELS.get, key=state.DESIGN_POOL, horizontal=True,
                    help="The frames the design chooses from. An MD run of the emulator has no reference labels: "
                         "its chosen frames (and test frames) are labelled with GFN2-xTB.")
    if kind == "md":
        R = np.asarray(run.positions, dtype=np.float64)
        key = "md:" + hashlib.sha1(R.tobytes()).hexdigest()[:16]
        try:
            pool = Trajectory(z=np.asarray(run.z), R=R, name=str(run.label))
        except AFFError as exc:
            st.error(f"The MD run cannot be a pool: {mw.error_text(exc)}")
            st.stop()
        energies = np.asarray(run.potential_energy, dtype=np.float64).reshape(-1)
        if energies.shape != (pool.n_frames,) or not np.all(np.isfinite(energies)):
            energies = None  # a model without an energy: the chosen frames are drawn at their GFN2-xTB energies
        st.caption(f"MD run **{run.label}**: {pool.n_frames} frames of {pool.formula}; chosen and test frames are "
                   "labelled with GFN2-xTB (about 0.1 s per frame for a small molecule). "
                   + ("The trace shows the emulator's potential energy." if energies is not None else
                      "The run has no energies (a model without an energy model): the chosen frames are drawn at "
                      "their GFN2-xTB energies."))
        return DesignPool(key=key, kind="md", traj=pool, labels=_labeller(key, pool.z, pool.R), energies=energies,
                          times_ps=np.asarray(run.times_ps, dtype=np.float64),
                          energy_label="potential energy (emulator)" if energies is not None else "GFN2-xTB energy",
                          symmetry=None)
    symmetry = sw.ensure_symmetry(traj)
    if traj.F is not None:
        labels: design.LabelSource = design.FileLabels(traj)
        st.caption(f"{traj.name or traj.formula}: {traj.n_frames} frames; chosen frames are labelled with the file's "
                   "own forces" + (" and energies." if traj.E is not None else "."))
    else:
        labels = _labeller(traj.fingerprint, traj.z, traj.R)
        st.caption(f"{traj.name or traj.formula}: {traj.n_frames} frames without labels; chosen and test frames are "
                   "labelled with GFN2-xTB on the fly.")
    return DesignPool(key=traj.fingerprint, kind="data", traj=traj, labels=labels, energies=traj.E, times_ps=None,
                      energy_label="energy (file)", symmetry=symmetry)


def design_form(pool: DesignPool) -> DesignForm:
    """Model, M0, batch, budget, test frames, seed, strategies (and, folded, the policy and the score)."""
    T = pool.traj.n_frames
    default_test = min(200 if pool.xtb else 1000, max(T // 3, 1))
    c1, c2, c3, c4, c5, c6 = st.columns([1.2, 1, 1, 1, 1, 0.8])
    mode = c1.radio("Model", list(GP_MODES), format_func=MODE_LABELS.get, key=state.DESIGN_MODEL, horizontal=True,
                    help="A GP: the frames are chosen by its predicted force variance.")
    n0 = int(c2.number_input("Initial frames M0", min_value=2, max_value=max(T, 2), value=min(20, T), step=5,
                             key=state.DESIGN_INITIAL, help="Random frames both strategies start from."))
    batch = int(c3.number_input("Frames per round", min_value=1, max_value=max(T, 1), value=min(20, T), step=5,
                                key=state.DESIGN_BATCH))
    budget = int(c4.number_input("Budget M_max", min_value=2, max_value=max(T, 2),
                                 value=max(min(400, T - default_test), 2), step=20, key=state.DESIGN_BUDGET))
    n_test = int(c5.number_input("Test frames", min_value=1, max_value=max(T - 2, 1), value=default_test, step=50,
                                 key=state.DESIGN_N_TEST, help="Held out from the pool, the same for every strategy"
                                 + (" (each labelled with GFN2-xTB)." if pool.xtb else ".")))
    seed = int(c6.number_input("Seed", min_value=0, value=0, step=1, key=state.DESIGN_SEED))
    st.session_state.setdefault(state.DESIGN_STRATEGIES, list(design.STRATEGIES))
    strategies = st.multiselect("Strategies", list(design.STRATEGIES), key=state.DESIGN_STRATEGIES,
                                format_func=figd.STRATEGY_LABELS.get,
                                help="Largest predicted force variance, and random frames from the same pool with the "
                                     "same start and batches (the baseline).")
    with st.expander("Hyperparameters and score"):
        h1, h2, h3 = st.columns([1.4, 1.4, 1])
        hyper = h1.radio("γ and λ", list(design.HYPER_POLICIES), format_func=HYPER_LABELS.get, key=state.DESIGN_HYPER,
                         help="The same rule for every strategy, each searching on its own frames.")
        score = h2.radio("Variance score", list(design.SCORES), format_func=SCORE_LABELS.get, key=state.DESIGN_SCORE)
        k = int(h3.number_input("Candidates per round (0: all)", min_value=0, value=0, step=500,
                                key=state.DESIGN_CANDIDATES,
                                help="Score a random subsample of the pool each round (faster for large pools)."))
    try:
        settings = design.DesignSettings(mode=mode, n_initial=n0, batch=batch, budget=budget, strategies=tuple(strategies),
                                         seed=seed, n_test=n_test, hyper=hyper, score=score, n_candidates=k or None)
        design.design_split(T, settings)
    except design.DesignError as exc:
        st.error(f"Cannot run: {mw.error_text(exc)}")
        return DesignForm(settings=None)
    rounds = len(settings.sizes)
    st.caption(f"{rounds} rounds per strategy (M = {settings.sizes[0]} … {settings.sizes[-1]}), {len(strategies)} "
               f"strateg{'y' if len(strategies) == 1 else 'ies'}. A default run on the bundled uracil sample (3000 "
               "frames, 1000 held out, budget 400, both strategies) takes about 1 minute on a 2-core machine, 2–4 "
               "minutes with a search of γ and λ at every refit."
               + (f" GFN2-xTB labels {n_test + budget} frames at most (test and chosen frames)." if pool.xtb else ""))
    return DesignForm(settings=settings)


@dataclass(frozen=True)
class DesignOutcome:
    """What a design job holds: the pool it ran on and the result (all rounds, or those finished so far)."""

    pool_key: str
    result: design.DesignResult

    def describe(self) -> str:
        return f"{len(self.result.rows)} finished rounds"


def _store(pool_key: str, run_id: str, result: design.DesignResult) -> None:
    st.session_state[state.DESIGN_RESULT] = {"pool": pool_key, "run": run_id, "result": result}


def notices() -> None:
    """What finished design jobs left to say (shown once)."""
    bg.show_notices(state.DESIGN_NOTICE)


def collect_design(job) -> None:
    """Store a finished design job's result in the session: every round, or the rounds finished before it stopped."""
    notices = st.session_state.setdefault(state.DESIGN_NOTICE, [])
    outcome = job.result if job.state == "done" else job.partial
    if job.state == "failed":
        notices.append(("error", f"Sequential design failed ({job.label}): {job.error}"))
    if not isinstance(outcome, DesignOutcome):
        if job.state == "cancelled":
            notices.append(("warning", f"Sequential design cancelled ({job.label}) before its first round finished: "
                                       "nothing to keep; the data and the session's models are unchanged."))
        return
    _store(outcome.pool_key, job.id, outcome.result)
    if job.state == "cancelled":
        notices.append(("warning", f"Sequential design cancelled ({job.label}): the {len(outcome.result.rows)} rounds "
                                   "that finished are kept and shown below."))
    elif outcome.result.stopped_early:
        notices.append(("warning", f"Sequential design stopped early: {outcome.result.stopped_early}."))


def _design_task(pool: DesignPool, settings: design.DesignSettings):
    """The job: the design run (no Streamlit in here); every finished round is kept by the job."""
    symmetry = pool.symmetry if uses_symmetry(settings.mode) else None

    def task(job):
        result = design.run_design(pool.traj, pool.labels, settings, symmetry=symmetry, progress=job.report,
                                   on_round=lambda partial: job.keep(DesignOutcome(pool.key, partial)))
        outcome = DesignOutcome(pool.key, result)
        job.keep(outcome)  # a cancel returns the finished rounds: the queue then records the job as cancelled
        return outcome

    return task


def run_button(pool: DesignPool, form: DesignForm) -> None:
    """The button, then the run as a job of the server: progress with elapsed/remaining time, Cancel, the last
    round while the user stays; the run goes on when the user leaves (the sidebar shows it)."""
    settings = form.settings
    run = st.button("Run sequential design", key=state.DESIGN_RUN, type="primary", disabled=settings is None)
    job = bg.active_job("design")
    if run and settings is not None and job is None:
        label = (f"Design: {MODE_LABELS[settings.mode]}, M0 = {settings.n_initial}, batch {settings.batch}, "
                 f"budget {settings.budget}")
        try:
            job = bg.submit_task("design", label, _design_task(pool, settings))
        except mw.EXPECTED_ERRORS as exc:
            st.error(f"Sequential design refused: {mw.error_text(exc)}")
            return
    elif run and job is not None:
        st.info(f"A sequential design of this session is still going ({job.label}): cancel it first to start "
                "another.")
    if job is None:
        return

    def last_round(j, where) -> None:
        if isinstance(j.partial, DesignOutcome) and j.partial.result.rows:
            r = j.partial.result.rows[-1]
            where.caption(f"Last round: {r.strategy}, M = {r.M}, force MAE {r.force_mae:.3g} {FORCE_UNIT}.")

    bg.run_here(job, cancel_key=state.DESIGN_CANCEL, cancel_label="Cancel (keeps the finished rounds)",
                on_tick=last_round, caption="The run goes on on the server: you may switch pages — the sidebar shows "
                                            "its progress, and the finished rounds are kept if you cancel.")
    bg.show_notices(state.DESIGN_NOTICE)


def results(pool: DesignPool) -> None:
    """The last run on this pool: the answer, the learning curves, the energy trace, the table and the download."""
    stored = st.session_state.get(state.DESIGN_RESULT)
    if not stored or stored.get("pool") != pool.key:
        if stored:
            st.info("The last sequential design belongs to another pool: run it again for this one.")
        else:
            st.caption("No run yet: choose the settings and press the button.")
        return
    result: design.DesignResult = stored["result"]
    if result.stopped_early:
        st.caption(f"Shown: a run that stopped early ({result.stopped_early}).")
    reached = design.frames_to_reach(result) if {"variance", "random"} <= set(result.settings.strategies) else None
    if reached is not None:
        (st.success if reached.M is not None and reached.ratio <= 0.6 else st.info)(reached.sentence())
    st.plotly_chart(figd.design_curve_figure(result), width="stretch", key=state.DESIGN_CURVE_CHART)
    strategies = [s for s in result.settings.strategies if any(c.strategy == s for c in result.chosen)]
    if strategies:
        if st.session_state.get(state.DESIGN_TRACE_STRATEGY) not in strategies:
            st.session_state[state.DESIGN_TRACE_STRATEGY] = strategies[0]
        which = st.radio("Frames shown on the energy trace", strategies, format_func=figd.STRATEGY_LABELS.get,
                         key=state.DESIGN_TRACE_STRATEGY, horizontal=True)
        energies = pool.energies if pool.energies is not None and len(pool.energies) == result.n_frames else None
        times = pool.times_ps if pool.times_ps is not None and len(pool.times_ps) == result.n_frames else None
        st.plotly_chart(figd.energy_trace_figure(result, energies, times_ps=times, strategy=which,
                                                 energy_label=pool.energy_label),
                        width="stretch", key=state.DESIGN_TRACE_CHART)
        if energies is None:
            st.caption("The pool has no energy per frame: the chosen frames are drawn at their labels' energies.")
    st.dataframe(
        [{"strategy": r.strategy, "round": r.round, "M": r.M, f"force MAE ({FORCE_UNIT})": mw.fmt(r.force_mae, ".4g"),
          "PCI(95%)": mw.fmt(r.pci, percent=True), f"energy MAE ({ENERGY_UNIT})": mw.fmt(r.energy_mae, ".3g"),
          "γ (1/Å)": mw.fmt(r.gamma, ".4g"), "λ": mw.fmt(r.lam, ".2e"), "searched": "yes" if r.searched else "no",
          "fit (s)": mw.fmt(r.fit_s, ".2g"), "selection (s)": mw.fmt(r.select_s, ".2g"),
          "labels (s)": mw.fmt(r.label_s, ".2g")} for r in result.rows],
        hide_index=True, width="stretch")
    st.caption(f"Held-out: the same {result.test_idx.size} frames for every strategy and round; {result.n_labelled} "
               f"frames labelled ({result.label_source}, {result.label_s:.0f} s); the run took {result.elapsed_s:.0f} s. "
               "PCI: share of held-out force components inside the latent 95% interval.")
    st.download_button("Download the chosen frames (CSV)", data=design.chosen_csv(result).encode(),
                       file_name=f"design_chosen_{(pool.traj.name or 'pool').replace(' ', '_')}.csv", mime="text/csv",
                       key=state.DESIGN_DOWNLOAD, on_click="ignore")
