"""The MD page's sections: each function draws one part of the page (pages/md.py).

The run goes through ``aff_app.workflows.md`` (ASE's velocity Verlet or Langevin over an
``AFFCalculator``; GFN2-xTB through tblite for the reference). A finished (or stopped) run is stored
at once under ``state.MD_RESULT`` with the fingerprint of the data it started from, and as
``state.MD_RUN`` (the Sequential design page's pool); nothing here changes the data or the models.

The run is a job of the server's queue (``aff_app.ui.background``): it goes on when the user switches
page or reloads. Live plots: the workflow hands over the frames so far (``run_md(on_frame=...)``), the
job keeps them (``job.keep``), and the page waiting for the job redraws the traces once a second; a
cancelled or failed run keeps the frames it recorded (:func:`collect_md`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
import streamlit as st

from aff_app.figures import md as figmd
from aff_app.io.trajectory import Trajectory
from aff_app.ui import background as bg
from aff_app.ui import data_widgets as dw
from aff_app.ui import model_widgets as mw
from aff_app.ui import state
from aff_app.units import ENERGY_UNIT, FORCE_UNIT, LENGTH_UNIT
from aff_app.workflows import md
from aff_app.workflows.kinds import has_interval
from aff_app.workflows.registry import TrainedModel

ENSEMBLE_LABELS = {"nve": "NVE (velocity Verlet)", "nvt": "NVT (Langevin thermostat)"}
START_LABELS = {"data": "a frame of the loaded data", "model": "the model's first training frame"}
#: Seconds between two redraws of the live traces (the browser is not flooded).
LIVE_EVERY_S = 1.0
#: GFN2-xTB's cost per MD step for uracil (12 atoms) on one core (measured: 4–6 ms); it grows ~N².
XTB_MS_PER_STEP_12 = 5.0


@dataclass(frozen=True)
class MDForm:
    """What the form asks for: the model, the start geometry and how it was chosen, the settings."""

    entry: TrainedModel
    R0: np.ndarray
    start: str
    settings: md.MDSettings | None
    with_reference: bool

    @property
    def label(self) -> str:
        return self.entry.name + (" −∇Ê" if self.settings is not None and self.settings.conservative else "")


def choose_model(traj: Trajectory) -> TrainedModel:
    """The model to run (models of this molecule in the session), or a pointer to the Train page and stop."""
    entries = mw.compatible_models(traj)
    if not entries:
        others = len(mw.get_registry())
        st.info(f"No trained model for {traj.formula} yet — train one on the Train page (or upload a saved model "
                "there), then come back to run MD with it." + (f" The session has {others} model(s), but of another "
                                                                "molecule." if others else ""))
        st.page_link(state.TRAIN_PAGE, label="Go to the Train page", icon="🏋️")
        st.stop()
    names = [e.name for e in entries]
    if st.session_state.get(state.MD_MODEL) not in names:
        st.session_state[state.MD_MODEL] = names[-1]
    by_name = {e.name: e for e in entries}
    name = st.selectbox("Model", names, key=state.MD_MODEL, format_func=lambda n: mw.model_label(by_name[n]),
                        help="A model of the session for this molecule: its forces drive the dynamics, its "
                             "calibrated force sd is recorded along the run.")
    return by_name[name]


def _default_frame(entry: TrainedModel, traj: Trajectory) -> int:
    from aff_app.ui.compare_sections import _start_frame

    return _start_frame({entry.name: entry}, [entry.name], traj)


def _start_sd(entry: TrainedModel, R0: np.ndarray) -> float | None:
    """The model's largest force sd at the start geometry (kcal/mol/Å), memoised; None without an interval."""
    if not has_interval(entry.mode):
        return None
    memo = st.session_state.setdefault(state.MD_START_SD, {})
    key = (entry.uid, hash(np.asarray(R0, dtype=np.float64).tobytes()))
    if key not in memo:
        try:
            memo[key] = float(np.max(entry.force.predict(np.asarray(R0)[None]).std))
        except mw.EXPECTED_ERRORS:
            memo[key] = None
        while len(memo) > 16:
            memo.pop(next(iter(memo)))
    return memo[key]


def md_form(entry: TrainedModel, traj: Trajectory) -> MDForm:
    """Start frame, ensemble, temperature, time step, steps, recording, sd threshold, forces, reference."""
    marker = (entry.uid, traj.fingerprint)
    fresh = st.session_state.get(state.MD_FORM_FOR) != marker
    R_train = getattr(entry.force, "R_train", None)
    starts = ["data"] + (["model"] if R_train is not None and len(R_train) else [])
    if fresh or st.session_state.get(state.MD_START) not in starts:
        st.session_state[state.MD_START] = "data"
    if fresh:
        st.session_state[state.MD_FRAME] = _default_frame(entry, traj)
    c1, c2 = st.columns([1.3, 1])
    kind = c1.radio("Start from", starts, format_func=START_LABELS.get, key=state.MD_START, horizontal=True)
    if kind == "data":
        frame = int(c2.number_input("Start frame", min_value=0, max_value=traj.n_frames - 1, step=1,
                                    key=state.MD_FRAME, help="Default: a frame the model did not train on (its first "
                                                             "recorded test frame when there is one)."))
        from aff_app.workflows.training import training_positions_mask

        trained_on = bool(training_positions_mask(entry.force, traj)[frame])
        R0 = np.asarray(traj.R[frame], dtype=np.float64)
        start = f"frame {frame} of {traj.name or traj.formula}" + (" (a training frame of the model)" if trained_on
                                                                   else " (a frame the model did not train on)")
    else:
        R0 = np.asarray(R_train[0], dtype=np.float64)
        start = "the model's first training frame"
        c2.caption("The first geometry the model was trained on: it predicts its smallest sd there.")

    e1, e2, e3, e4, e5 = st.columns(5)
    st.session_state.setdefault(state.MD_ENSEMBLE, "nve")
    ensemble = e1.radio("Ensemble", list(ENSEMBLE_LABELS), format_func=ENSEMBLE_LABELS.get, key=state.MD_ENSEMBLE,
                        help="ASE's integrators: VelocityVerlet (constant energy) or Langevin (constant temperature).")
    temperature = float(e2.number_input("Temperature (K)", min_value=0.0, max_value=3000.0, value=300.0, step=50.0,
                                        key=state.MD_TEMPERATURE,
                                        help="Maxwell–Boltzmann start velocities rescaled to exactly this "
                                             "temperature (no drift, no spin); NVT's target."))
    dt = float(e3.number_input("Time step (fs)", min_value=0.05, max_value=md.MAX_TIMESTEP_FS, value=0.5, step=0.1,
                               key=state.MD_TIMESTEP, format="%.2f",
                               help="0.5 fs resolves the hydrogen vibrations (~11 fs period); above ~1 fs NVE no "
                                    "longer conserves energy and a molecule may fly apart."))
    steps = int(e4.number_input("Steps", min_value=10, max_value=200_000, value=2000, step=500, key=state.MD_STEPS))
    every = int(e5.number_input("Record every (steps)", min_value=1, max_value=10_000, value=10, step=5,
                                key=state.MD_RECORD_EVERY,
                                help="A frame (positions, forces, the force sd, energies) is kept every this many "
                                     "steps; the sd (a triangular solve per PE set) is computed only there."))
    friction = 0.01
    if ensemble == "nvt":
        friction = float(st.number_input("Langevin friction (1/fs)", min_value=1e-4, max_value=1.0, value=0.01,
                                         step=0.005, format="%.4f", key=state.MD_FRICTION))

    t1, t2, t3 = st.columns([1.1, 1, 1.6])
    interval = has_interval(entry.mode)
    start_sd = _start_sd(entry, R0)
    if fresh or state.MD_SD_THRESHOLD not in st.session_state:
        st.session_state[state.MD_SD_THRESHOLD] = float(f"{3 * start_sd:.2g}") if start_sd else 5.0
    use_thr = t1.checkbox("Stop on a large force sd", key=state.MD_USE_THRESHOLD,
                          disabled=not interval,
                          help="The run stops (keeping its frames) when the largest force-component sd of a "
                               "recorded frame exceeds the threshold: the model is extrapolating there.")
    thr = float(t2.number_input(f"sd threshold ({FORCE_UNIT})", min_value=0.001, max_value=1e4, step=0.5,
                                format="%.3g", key=state.MD_SD_THRESHOLD, disabled=not (interval and use_thr)))
    if not interval:
        t3.caption(f"{entry.mode_label} predicts no interval (means only): no force sd is recorded and the run "
                   "cannot stop on it.")
    else:
        t3.caption(f"The model's calibrated latent sd (method.md eq. 11). At the start its largest component is "
                   f"{mw.fmt(start_sd, '.3g')} {FORCE_UNIT}; the threshold's default is 3× that.")
    conservative = False
    if entry.energy is not None and hasattr(entry.energy, "forces"):
        conservative = st.checkbox("Conservative forces (−∇Ê)", key=state.MD_CONSERVATIVE,
                                   help="The forces of AFF's integrated energy instead of the force GP's mean: one "
                                        "energy, so NVE conserves the model's energy. The sd shown is still the "
                                        "force GP's.")
    n_atoms = traj.n_atoms
    xtb_s = steps * XTB_MS_PER_STEP_12 * (n_atoms / 12) ** 2 / 1000
    with_ref = st.checkbox(f"Also run the GFN2-xTB reference from the same start (≈ {xtb_s:,.0f} s)",
                           key=state.MD_WITH_REFERENCE,
                           help=f"The same start geometry, velocities and settings with GFN2-xTB forces (tblite, one "
                                f"core): about {XTB_MS_PER_STEP_12:g} ms per step for 12 atoms, growing with the "
                                "square of the size. Then the bond-length and energy distributions of both runs are "
                                "compared. The bundled samples are labelled with GFN2-xTB, so there it is the "
                                "model's own reference.")
    try:
        settings = md.MDSettings(ensemble=ensemble, temperature_K=temperature, timestep_fs=dt, n_steps=steps,
                                 record_every=min(every, steps), sd_threshold=thr if (interval and use_thr) else None,
                                 friction_per_fs=friction, conservative=bool(conservative))
    except md.MDError as exc:
        st.error(f"Cannot run: {mw.error_text(exc)}")
        settings = None
    st.session_state[state.MD_FORM_FOR] = marker
    st.caption(f"Start: {start}. {steps:,} steps of {dt:g} fs = {steps * dt * 1e-3:.3g} ps; a frame every "
               f"{min(every, steps)} steps ({steps // max(min(every, steps), 1) + 1:,} frames).")
    return MDForm(entry=entry, R0=R0, start=start, settings=settings, with_reference=bool(with_ref))


# -- the run ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MDPartial:
    """What a running (or stopped) MD job has so far: the run it is in and a snapshot of its frames.

    ``snapshot()`` builds an :class:`aff_app.workflows.md.MDRun` of the frames recorded so far (the workflow's
    ``on_frame`` hook); ``done`` holds the finished model run while the reference runs.
    """

    base: dict
    which: str  # 'model' or 'reference'
    snapshot: object  # callable() -> MDRun
    done: object = None  # the finished model run (while the reference runs)

    def describe(self) -> str:
        run = self.snapshot()
        return f"{run.n_frames} frames of the {self.which} run" if run is not None else "no frame yet"


def _md_task(form: MDForm, base: dict):
    """The job: the model run, then the GFN2-xTB reference from the same start (no Streamlit in here)."""
    s, entry = form.settings, form.entry
    split = 0.5 if form.with_reference else 1.0

    def task(job):
        def scaled(lo, hi):
            return lambda f, m: job.report(lo + (hi - lo) * float(f), m)

        def keep(which, done=None):
            return lambda snapshot: job.keep(MDPartial(base, which, snapshot, done))

        run = md.run_model_md(entry.force, entry.energy, form.R0, s, label=form.label, progress=scaled(0.0, split),
                              should_stop=lambda: job.token.cancelled, on_frame=keep("model"))
        result = {**base, "run": run, "reference": None, "reference_note": None}
        job.keep(MDPartial(base, "model", lambda: run))
        if not form.with_reference:
            return result
        if run.stop_reason == "cancelled":
            result["reference_note"] = "The model run was cancelled, so the GFN2-xTB reference did not run."
            return result
        try:
            result["reference"] = md.run_md(md.xtb_calculator(), entry.force.z, form.R0, md.reference_settings(s),
                                            label="GFN2-xTB", threads=1, progress=scaled(split, 1.0),
                                            should_stop=lambda: job.token.cancelled,
                                            on_frame=keep("reference", done=run))
        except ImportError as exc:
            result["reference_note"] = (f"The GFN2-xTB reference needs tblite, which is not installed ({exc}); "
                                        "`pip install tblite` and restart the app.")
        except mw.EXPECTED_ERRORS as exc:  # a start xTB cannot take (a failure mid-run ends the run instead)
            result["reference_note"] = f"The GFN2-xTB reference failed: {mw.error_text(exc)}"
        return result

    return task


def run_button(traj: Trajectory, form: MDForm) -> None:
    """The Run button, then the run as a job of the server: progress, Cancel, live traces while the user stays.

    The run goes on when the user switches page or reloads (the sidebar shows it); its result, or the frames
    recorded before a cancel, reach the session when it ends (:func:`collect_md`).
    """
    ready = form.settings is not None
    clicked = st.button("Run MD", key=state.MD_RUN_BUTTON, type="primary", disabled=not ready)
    job = bg.active_job("md")
    if clicked and ready and job is None:
        s, entry = form.settings, form.entry
        job_label = (f"MD: {form.label}, {s.ensemble.upper()}, {s.n_steps:,} steps"
                     + (" + GFN2-xTB" if form.with_reference else ""))
        base = {"fingerprint": traj.fingerprint, "model": entry.name, "start": form.start}
        try:
            job = bg.submit_task("md", job_label, _md_task(form, base))
        except mw.EXPECTED_ERRORS as exc:
            st.error(f"The MD run could not start: {mw.error_text(exc)}")
            return
    elif clicked and job is not None:
        st.info(f"An MD run of this session is still going ({job.label}): it is shown below; cancel it first to "
                "start another.")
    if job is None:
        return
    drawn = [0]

    def live(j, where) -> None:
        partial = j.partial
        if not isinstance(partial, MDPartial):
            return
        run = partial.snapshot()
        if run is None or run.n_frames <= drawn[0]:
            return
        drawn[0] = run.n_frames
        runs = [partial.done, run] if partial.done is not None else [run]
        where.plotly_chart(figmd.md_traces(runs, title="Running…"), width="stretch",
                           key=f"{state.MD_TRACES_CHART}_live_{partial.which}_{run.n_frames}")

    bg.run_here(job, cancel_key=state.MD_CANCEL, cancel_label="Cancel the MD run", on_tick=live, tick_s=LIVE_EVERY_S,
                caption="The run goes on on the server: you may switch pages — the sidebar shows its progress, and "
                        "the frames recorded so far are kept if you cancel.")
    bg.show_notices(state.MD_NOTICE)


def _store(result: dict) -> None:
    st.session_state[state.MD_RESULT] = result
    st.session_state[state.MD_RUN] = result["run"]
    st.session_state[state.MD_REFERENCE] = result.get("reference")


def _stopped(run, job) -> object:
    n = int(run.steps[-1]) if run.n_frames else 0
    msg = (f"{job.state} at step {n} of {run.settings.n_steps}; the {run.n_frames} frames recorded up to then are "
           "kept.")
    if job.state == "failed":
        msg += f" ({job.error})"
    return dataclasses.replace(run, stop_reason="cancelled", message=msg)


def collect_md(job) -> None:
    """Store a finished MD job's runs in the session: all of it, or the frames recorded before a cancel/failure."""
    notices = st.session_state.setdefault(state.MD_NOTICE, [])
    if job.state == "done" and isinstance(job.result, dict):
        _store(job.result)
        return
    partial = job.partial
    what = "cancelled" if job.state == "cancelled" else f"failed ({job.error})"
    if not isinstance(partial, MDPartial) or partial.snapshot() is None or partial.snapshot().n_frames == 0:
        notices.append(("warning", f"The MD run was {what} ({job.label}) before it recorded a frame: the last "
                                   "finished run (if any) is shown below."))
        return
    run = _stopped(partial.snapshot(), job)
    base = partial.base
    if partial.which == "reference":  # the model run had finished: keep it whole, beside the partial reference
        _store({**base, "run": partial.done, "reference": run,
                "reference_note": f"The GFN2-xTB reference was {what}: {run.message}"})
    else:
        _store({**base, "run": run, "reference": None, "reference_note": None})
    # (the stored run's own message says where it stopped and what was kept: no second notice)


def notices() -> None:
    """What finished MD jobs left to say (shown once)."""
    bg.show_notices(state.MD_NOTICE)


# -- the results -----------------------------------------------------------------------------------------------
def _drift_note(entry: TrainedModel, run) -> str:
    s = run.settings
    if s.ensemble != "nve":
        return ("NVT: the Langevin thermostat exchanges energy with a bath, so the total energy is not expected to "
                "stay constant and no drift is reported.")
    if not np.all(np.isfinite(run.potential_energy)):
        return (f"{entry.mode_label} has no energy model here: there is no total energy, so no drift. The Compare "
                "page's conservation check measures such a force field's drift through its work integral.")
    if s.conservative:
        return ("Conservative forces: −∇Ê of AFF's integrated energy, one energy for the whole molecule, so velocity "
                "Verlet conserves the model's total energy up to the integrator's wobble (which shrinks with the time "
                "step); a drift well above it means a time step too large.")
    if entry.mode == "aff":
        return ("AFF's own forces are one GP per set of permutation-equivalent atoms (method.md eq. 25): they are "
                "not the gradient of any energy, so even a perfect integrator lets the total energy drift — that is "
                "the drift above, not the time step. The Compare page's conservation check measures it (NVE drift, "
                "closed-loop work, Jacobian asymmetry) for every model. Tick *Conservative forces (−∇Ê)* to run "
                "with the gradient of AFF's integrated energy, which NVE conserves.")
    if entry.mode in ("gdml", "sgdml", "sgdml-package"):
        return (f"{entry.mode_label}'s forces are the gradient of its energy (one kernel, integrated), so NVE "
                "conserves it up to the integrator's wobble; a larger drift means a time step too large.")
    return "The drift is the slope of the total energy over the run (kcal/mol/ps)."


def _file_name(name: str, ensemble: str, suffix: str = "") -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
    return f"md_{clean}_{ensemble}{suffix}.extxyz"


def results(traj: Trajectory, entry: TrainedModel) -> None:
    """The last run on this data: its stop message, numbers, traces, 3D playback, download, the reference."""
    result = st.session_state.get(state.MD_RESULT)
    if isinstance(result, dict) and result.get("fingerprint") != traj.fingerprint:
        st.info("The last MD run belongs to another data set: run again for this one.")
        return
    if not isinstance(result, dict) or result.get("run") is None:
        st.caption("No MD run yet on this data: choose the settings and press *Run MD*. A few thousand steps of a "
                   "small molecule take seconds to a minute.")
        return
    run, ref = result["run"], result.get("reference")
    st.subheader(f"Run: {run.label}")
    st.caption(f"From {result['start']}; {run.settings.ensemble.upper()}, {run.settings.temperature_K:g} K, "
               f"{run.settings.timestep_fs:g} fs.")
    (st.success if run.stop_reason == "completed" else st.warning)(f"**{run.label}**: {run.message}")
    summ = run.summary()
    m = st.columns(6)
    m[0].metric("Time per step", mw.fmt(run.ms_per_step, ".3g", unit="ms"))
    m[1].metric("Frames kept", f"{run.n_frames:,}", help=f"{summ['steps_done']:,} of {run.settings.n_steps:,} steps")
    m[2].metric("Simulated time", mw.fmt(summ["time_ps"], ".3g", unit="ps"))
    m[3].metric("Mean temperature", mw.fmt(summ["mean_temperature_K"], ".4g", unit="K"))
    m[4].metric(f"Max sd ({FORCE_UNIT})", mw.fmt(summ["max_force_sd"], ".3g"),
                help="The largest force-component sd over the recorded frames (— : the model gives no interval).")
    m[5].metric(f"Drift ({ENERGY_UNIT}/ps)", mw.fmt(run.drift_per_ps(), "+.3g"),
                help="Slope of the total energy against time (NVE with an energy model; — otherwise).")
    st.caption(_drift_note(result_entry(entry, result), run))
    st.plotly_chart(figmd.md_traces([run, ref] if ref is not None else [run]), width="stretch",
                    key=state.MD_TRACES_CHART)
    view, files = st.columns([1.6, 1])
    if run.n_frames:
        try:
            html = figmd.trajectory_view_html(run.z, run.positions, times_ps=run.times_ps, max_sd=run.max_sd,
                                              height=f"{dw.VIEWER_HEIGHT}px")
        except mw.EXPECTED_ERRORS as exc:
            view.warning(f"3D playback unavailable: {mw.error_text(exc)}")
        else:
            with view:
                dw.embed_html(html, height=dw.VIEWER_HEIGHT + 8)
    files.markdown("**3D playback** of the recorded frames (looping; pause, or drag the slider to a frame: its "
                   "time and largest force sd are shown under the view).")
    files.download_button("Download the trajectory (extxyz)", run.extxyz_text(),
                       file_name=_file_name(result["model"], run.settings.ensemble), mime="chemical/x-extxyz",
                       key=state.MD_DOWNLOAD,
                       help="Positions (Å), forces and their sd per atom (forces_sd), eV/Å, energies in eV — ASE's "
                            "units, so ase.io.read gives a usable trajectory.")
    if ref is not None:
        files.download_button("Download the GFN2-xTB reference (extxyz)", ref.extxyz_text(),
                           file_name=_file_name(result["model"], ref.settings.ensemble, "_gfn2-xtb"),
                           mime="chemical/x-extxyz", key=state.MD_DOWNLOAD_REFERENCE)
    reference_section(run, ref, result.get("reference_note"))


def result_entry(entry: TrainedModel, result: dict) -> TrainedModel:
    """The registry entry of the stored run (it may differ from the one chosen now)."""
    reg = mw.get_registry()
    return reg.get(result["model"]) if result.get("model") in reg else entry


def reference_section(run, ref, note: str | None) -> None:
    """The reference run against the model run: bond-length and energy distributions, and a table."""
    if note:
        st.warning(note)
    if ref is None:
        return
    st.subheader("Against the GFN2-xTB reference from the same start")
    (st.success if ref.stop_reason == "completed" else st.warning)(f"**GFN2-xTB**: {ref.message}")
    speed = ref.ms_per_step / run.ms_per_step if run.ms_per_step > 0 else float("nan")
    than = (f"{mw.fmt(speed, '.3g')}× faster" if speed >= 1 else
            f"{mw.fmt(1 / speed, '.3g')}× slower: the sd at every recorded frame costs most, record less often"
            if speed > 0 else "—")
    st.caption(f"GFN2-xTB: {mw.fmt(ref.ms_per_step, '.3g')} ms per step on one core; the model: "
               f"{mw.fmt(run.ms_per_step, '.3g')} ms ({than}). Same start geometry, velocities "
               "and settings; the model's and the reference's trajectories part after a while (chaos), so compare "
               "distributions, not frames.")
    if run.n_frames < 2 or ref.n_frames < 2:
        st.info("Too few frames to compare distributions (a run stopped right at its start).")
        return
    try:
        cmp = md.compare_runs(run, ref)
    except mw.EXPECTED_ERRORS as exc:
        st.error(f"Cannot compare the runs: {mw.error_text(exc)}")
        return
    st.plotly_chart(figmd.bond_length_distributions(cmp, model_label=run.label, reference_label=ref.label),
                    width="stretch", key=state.MD_BONDS_CHART)
    c1, c2 = st.columns([1, 1])
    c1.plotly_chart(figmd.energy_distributions(cmp, model_label=run.label, reference_label=ref.label),
                    width="stretch", key=state.MD_ENERGY_CHART)
    c2.dataframe([{"bond": b.kind, "bonds": b.n_bonds,
                   f"model: mean ± sd ({LENGTH_UNIT})": f"{mw.fmt(b.model_mean, '.4f')} ± {mw.fmt(b.model_sd, '.4f')}",
                   f"reference: mean ± sd ({LENGTH_UNIT})":
                       f"{mw.fmt(b.reference_mean, '.4f')} ± {mw.fmt(b.reference_sd, '.4f')}"} for b in cmp.by_kind],
                 hide_index=True, width="stretch")
    c2.caption("Bonds of the start geometry, pooled per kind over every frame of each run. Energies: each run's "
               "potential energy minus its own mean (the model and the reference may differ by a constant).")
