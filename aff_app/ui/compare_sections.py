"""The Compare page's sections: each function draws one part of the page (pages/compare.py).

Learning curves are computed on demand through ``aff_app.workflows.learning`` (each point one
``pipeline.fit`` + ``pipeline.evaluate``); every point's cost is checked against the memory budget
first, and refused points are listed with a note.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import streamlit as st

from aff_app.figures import compare as figc
from aff_app.io.trajectory import Trajectory
from aff_app.symmetry import SymmetryInfo
from aff_app.ui import data_widgets as dw
from aff_app.ui import background as bg
from aff_app.ui import model_widgets as mw
from aff_app.ui import state
from aff_app.ui import symmetry_widgets as sw
from aff_app.units import ENERGY_UNIT, FORCE_UNIT
from aff_app.workflows import learning
from aff_app.workflows.kinds import PEER_MODES, uses_symmetry
from aff_app.workflows.registry import MODE_LABELS, ModelRegistry

SIZE_CHOICES = (25, 50, 100, 200, 400, 800, 1000, 1200, 1600, 2000)
HYPER_LABELS = {"likelihood": "estimate γ, λ at every point (likelihood)", "fixed": "fix γ and λ"}


@dataclass(frozen=True)
class CurveForm:
    """The learning-curve settings: models, sizes, test frames, seed, hyperparameters, energies."""

    chosen: list
    sizes: list
    n_test: int
    seed: int
    fixed: bool
    gamma: float
    lam: float
    with_energy: bool
    symmetry: SymmetryInfo | None
    ready: bool
    scheduler: object = None  # aff_app.parallel.SchedulerChoice: where the points run (None: here, one by one)

    @property
    def params(self) -> dict:
        """The settings as stored with the computed curves (to tell when they changed)."""
        return {"models": list(self.chosen), "sizes": sorted(int(s) for s in self.sizes), "n_test": self.n_test,
                "seed": self.seed, "gamma": float(self.gamma) if self.fixed else None,
                "lam": float(self.lam) if self.fixed else None, "energy": bool(self.with_energy)}


def models_table(registry: ModelRegistry) -> None:
    """Every model of the session with its held-out metrics."""
    st.subheader("Models in this session")
    if len(registry) == 0:
        st.info("No trained model yet — train one on the Train page; it will be listed here.")
        st.page_link(state.TRAIN_PAGE, label="Go to the Train page", icon="🏋️")
    else:
        rows = []
        for e in registry:
            r = e.row()
            rows.append({
                "name": r["name"], "model": r["model"], "M": r["M"], "seed": mw.fmt(r["seed"], "d"),
                "γ (1/Å)": mw.fmt(r["gamma (1/Å)"], ".4g"), "λ": mw.fmt(r["lambda"], ".2e"),
                "train time (s)": mw.fmt(r["train time (s)"], ".3g"),
                f"force MAE ({FORCE_UNIT})": mw.fmt(r["force MAE (kcal/mol/Å)"], ".3g"),
                "energy model": r["energy model"] or "—",
                f"energy MAE ({ENERGY_UNIT})": mw.fmt(r["energy MAE (kcal/mol)"], ".3g"),
                "PCI(95%)": mw.fmt(r["PCI(95%)"], percent=True),
                f"LCI(95%) ({FORCE_UNIT})": mw.fmt(r["LCI(95%) (kcal/mol/Å)"], ".3g"),
                "test frames": mw.fmt((e.metrics or {}).get("n_test"), "d"),
            })
        st.dataframe(rows, hide_index=True, width="stretch")
        st.caption("Metrics on each model's held-out frames, latent 95% intervals. — : not known yet (an uploaded model "
                   "is evaluated when it is opened on the Predictions page) or not available (no energy model).")
        points = [figc.ModelPoint(name=e.name, model=e.mode_label, n_train=e.n_train, train_s=e.train_time_s,
                                  force_mae=(e.metrics or {}).get("force_mae"),
                                  energy_mae=(e.metrics or {}).get("energy_mae")) for e in registry]
        if len([p for p in points if p.force_mae and p.train_s]) >= 2:  # a single point says nothing
            st.plotly_chart(figc.accuracy_time_figure(points), key=state.CMP_SCATTER_CHART)
            summary = figc.accuracy_time_summary(points)
            if summary:
                st.markdown(summary)


def require_labelled(traj: Trajectory) -> None:
    """Stop the page, with the reason, unless the data can give learning curves."""
    dw.require_trainable(traj, unlabelled="The loaded data has no energies and forces: learning curves need "
                                          "labelled data.",
                         untrainable="Learning curves need trainable data: ")


def curve_form(traj: Trajectory) -> CurveForm:
    """Models, sizes, test frames, seed and hyperparameters; the plan and what the budget refuses."""
    fp = traj.fingerprint
    st.caption(f"Every point is trained on the first M frames of one seeded pool of {traj.formula} frames and tested on "
               "the same held-out frames, so the curves are comparable (nested training sets).")
    st.session_state.setdefault(state.CMP_MODELS, ["aff", "gdml"])
    st.session_state.setdefault(state.CMP_HYPER, "likelihood")
    prefill = mw.prefill_hyperparameters(traj, state.CMP_GAMMA, state.CMP_LAM, state.CMP_HYPER_FROM,
                                         default_gamma=sw.default_gamma_cached(fp, _R=traj.R))
    c1, c2, c3, c4 = st.columns([1.4, 2.2, 1, 1])
    chosen = c1.multiselect("Models", list(MODE_LABELS), format_func=MODE_LABELS.get, key=state.CMP_MODELS,
                            help="Our GPs (AFF, GDML, sGDML) and the peers: the sgdml package (`sgdml all`, optional "
                                 "install) and a DCF-style direct-force network. The peers give no intervals, the "
                                 "network no energies.")
    n_test = int(c3.number_input("Test frames", min_value=1, max_value=max(traj.n_frames - 2, 1),
                                 value=min(200, max(traj.n_frames // 4, 1)), step=50, key=state.CMP_N_TEST))
    seed = int(c4.number_input("Seed", min_value=0, value=0, step=1, key=state.CMP_SEED))
    choices = [m for m in SIZE_CHOICES if m + n_test <= traj.n_frames]
    if not choices:
        st.error(f"With {n_test} test frames no training size from {list(SIZE_CHOICES)} fits in {traj.n_frames} frames: "
                 "use fewer test frames.")
        st.stop()
    if not isinstance(st.session_state.get(state.CMP_SIZES), list) or any(
            s not in choices for s in st.session_state[state.CMP_SIZES]):
        st.session_state[state.CMP_SIZES] = [m for m in (50, 100, 200) if m in choices] or choices[:1]
    sizes = c2.multiselect("Training sizes M", choices, key=state.CMP_SIZES)
    h1, h2, h3, h4 = st.columns([2, 1, 1, 1.3])
    hyper = h1.radio("Hyperparameters", list(HYPER_LABELS), format_func=HYPER_LABELS.get, key=state.CMP_HYPER)
    fixed = hyper == "fixed"
    gamma = h2.number_input("γ (1/Å)", min_value=1e-4, max_value=1e4, format="%.4g", key=state.CMP_GAMMA, disabled=not fixed)
    lam = h3.number_input("λ", min_value=0.0, max_value=1.0, format="%.1e", key=state.CMP_LAM, disabled=not fixed)
    with_energy = h4.checkbox("Energy models too", value=bool(traj.E is not None), key=state.CMP_ENERGY,
                              disabled=traj.E is None,
                              help="AFF: its integrated energy (the energy GP below 60 frames); GDML/sGDML: the "
                                   "integrated force GP; the sgdml package: its own. The DCF-style network has none.")
    if fixed:
        st.caption(prefill)

    scheduler = _scheduler_field()
    symmetry = sw.ensure_symmetry(traj) if any(uses_symmetry(m) for m in chosen) else None
    if "sgdml-package" in chosen and mw.package_status() is not None:
        st.warning(f"The sgdml package's points will fail: {mw.package_status()}")
    ready = bool(chosen) and bool(sizes) and scheduler is not None
    if not (chosen and sizes):
        st.info("Choose at least one model and one training size.")
    elif ready:
        plan = learning.plan_learning_curve(traj.n_atoms, chosen, sizes, symmetry=symmetry)
        refused = [p for p in plan if not p.allowed]
        allowed = [p for p in plan if p.allowed]
        total_s = sum(p.estimate.seconds for p in allowed)
        st.caption(f"{len(allowed)} fits planned; ≈ {total_s:,.1f} s of factorisations"
                   + (" and peer training" if any(m in PEER_MODES for m in chosen) else "")
                   + (" (plus a hyperparameter search at every GP point)" if not fixed else "") + ".")
        if refused:
            st.warning("Skipped, over the memory budget (shown as 'over budget' in the table, no point on the curves): "
                       + "; ".join(f"{p.label} M = {p.n_train} ({p.note})" for p in refused)
                       + ". Raise AFF_MEMORY_BUDGET_GB or choose smaller M.")
    return CurveForm(chosen=list(chosen), sizes=list(sizes), n_test=n_test, seed=seed, fixed=fixed, gamma=gamma,
                     lam=lam, with_energy=bool(with_energy), symmetry=symmetry, ready=ready, scheduler=scheduler)


def _scheduler_field():
    """Where the learning curve's points run: here one by one (default), or on Dask; None when the text is bad."""
    return mw.scheduler_field("Run the points on", state.CMP_SCHEDULER, "the points",
                              "The learning-curve points, one after the other or as tasks (same order).")


def compute_button(traj: Trajectory, form: CurveForm) -> None:
    """The button and the run: progress, cancel; the curves are kept in the session."""
    fp, chosen, sizes, n_test, seed = traj.fingerprint, form.chosen, form.sizes, form.n_test, form.seed
    symmetry, with_energy, ready, params = form.symmetry, form.with_energy, form.ready, form.params
    run = st.button("Compute learning curves", key=state.CMP_RUN, type="primary", disabled=not ready)
    if run and ready:
        job_label = f"{', '.join(MODE_LABELS[m] for m in chosen)}; M = {', '.join(map(str, params['sizes']))}"
        if not form.scheduler.is_serial:
            job_label += f" on {form.scheduler.describe()}"
        plan = learning.plan_learning_curve(traj.n_atoms, chosen, sizes, symmetry=symmetry)
        allowed = [p for p in plan if p.allowed]
        cost = max((p.estimate.peak_bytes for p in allowed), default=0)  # the points run one after another

        def task(job, traj=traj):
            def keep(rows):
                job.keep(CurveResult(fp, params, rows))

            from aff_app.parallel import open_executor

            # a Dask cluster is started (or reached) for this job and closed with it (SchedulerError: the
            # address does not answer — the job fails with that message)
            with open_executor(form.scheduler) as executor:
                rows = learning.learning_curve(
                    traj, chosen, sizes, n_test=n_test, seed=seed, symmetry=symmetry, gamma=params["gamma"],
                    lam=params["lam"], with_energy=bool(with_energy), progress=job.report, on_point=keep,
                    executor=executor)
            return CurveResult(fp, params, rows)

        try:
            job = bg.submit_task("learning_curve", job_label, task, cost_bytes=cost,
                                 estimate_s=sum(p.estimate.seconds for p in allowed))
        except mw.EXPECTED_ERRORS as exc:
            st.error(f"Learning curves refused: {mw.error_text(exc)}")
            return
        bg.run_here(job, cancel_key=state.CMP_CANCEL, cancel_label="Cancel learning curves",
                    caption="The curves are computed on the server: you may switch pages — the progress stays in the "
                            "sidebar, and every finished point is kept even if you cancel.")
        st.rerun()  # the notices and the curves are drawn above and below: show them


@dataclass(frozen=True)
class CurveResult:
    """A learning-curve job's outcome (or what it finished before a cancel): its data, settings and rows."""

    fingerprint: str
    params: dict
    rows: list

    def describe(self) -> str:
        done = sum(r["status"] in ("ok", "failed") for r in self.rows)
        return f"{done} of {len(self.rows)} points"

    def to_json(self) -> str:
        """The job record's partial result: a server restart keeps the finished points (:func:`restore_curves`)."""
        return json.dumps({"fingerprint": self.fingerprint, "params": self.params, "rows": self.rows},
                          default=_json_number)


def _json_number(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def restore_curves(record) -> str | None:
    """The finished points of a learning-curve job that a server restart interrupted, back in the session."""
    saved = json.loads(record.partial)
    rows = [dict(r) for r in saved["rows"]]
    done = sum(r["status"] in ("ok", "failed") for r in rows)
    if not done:
        return None
    for r in rows:
        if r["status"] == "pending":
            r.update(status="interrupted", note="not computed: the server stopped")
    st.session_state[state.CMP_RESULT] = {"fingerprint": saved["fingerprint"], "params": saved["params"],
                                          "rows": rows}
    return f"its {done} finished point(s) of {len(rows)} are kept on the Compare page"


def collect_curves(job) -> None:
    """Store the curves of a finished learning-curve job (all of them, or the points finished before it stopped)."""
    result = job.result if job.state == "done" else job.partial
    notices = st.session_state.setdefault(state.CMP_NOTICE, [])
    if job.state == "failed":
        notices.append(("error", f"Learning curves failed ({job.label}): {job.error}"))
    if not isinstance(result, CurveResult):
        if job.state == "cancelled":
            notices.append(("warning", f"Learning curves cancelled ({job.label}) before the first point finished: "
                                       "nothing to keep; the data and the session's models are unchanged."))
        return
    rows = [dict(r) for r in result.rows]
    if job.state != "done":
        n_done = sum(r["status"] in ("ok", "failed") for r in rows)
        for r in rows:
            if r["status"] == "pending":
                r.update(status=job.state, note=f"not computed: the run was {job.state}")
        if job.state == "cancelled":
            notices.append(("warning", f"Learning curves cancelled ({job.label}): the {n_done} finished point(s) of "
                                       f"{len(rows)} are kept below."))
    st.session_state[state.CMP_RESULT] = {"fingerprint": result.fingerprint, "params": result.params, "rows": rows}


def notices() -> None:
    """What finished learning-curve jobs left to say (shown once)."""
    bg.collect_finished()  # (app.py does it on every run; AppTest reruns only the page)
    for level, text in st.session_state.pop(state.CMP_NOTICE, None) or []:
        getattr(st, level)(text)


def curves(traj: Trajectory, form: CurveForm) -> None:
    """The last computed curves (Fig. 3, Fig. 5) and their table, or what to do to get them."""
    fp, params = traj.fingerprint, form.params
    result = st.session_state.get(state.CMP_RESULT)
    if result and result["fingerprint"] != fp:
        st.info("The last learning curves belong to another data set: compute them again for this one.")
        result = None
    if not result:
        st.caption("No learning curves yet: pick models and sizes, then press the button. Each point is a full fit; with "
                   "estimated hyperparameters each one runs its own search (minutes for M in the hundreds on a small "
                   "machine), with γ and λ fixed it costs about the factorisation estimate.")
    if result:
        rows = result["rows"]
        if result["params"] != params:
            st.caption("Shown: the last computed curves (the settings above have changed since; press the button to "
                       "recompute).")
        st.plotly_chart(figc.learning_curve_figure(rows), width="stretch", key=state.CMP_CURVE_CHART)
        st.plotly_chart(figc.uncertainty_figure(rows), width="stretch", key=state.CMP_UNCERTAINTY_CHART)
        st.dataframe(
            [{"model": r["model"], "M": r["M"], "status": r["status"],
              f"force MAE ({FORCE_UNIT})": mw.fmt(r["force_mae"], ".3g"),
              f"energy MAE ({ENERGY_UNIT})": mw.fmt(r["energy_mae"], ".3g"),
              "train time (s)": mw.fmt(r["train_s"], ".3g"),
              "prediction (ms/frame)": mw.fmt(r.get("predict_ms"), ".3g"), "PCI(95%)": mw.fmt(r["pci"], percent=True),
              f"LCI(95%) ({FORCE_UNIT})": mw.fmt(r["lci"], ".3g"), "L_norm": mw.fmt(r["l_norm"], ".3g"),
              "Δp": mw.fmt(r["delta_p"], "+.3f"), "γ (1/Å)": mw.fmt(r["gamma"], ".4g"), "λ": mw.fmt(r["lam"], ".2e"),
              "note": r["note"] or ""} for r in rows],
            hide_index=True, width="stretch",
        )
        st.caption("L_norm = LCI(95%) / (max − min of the held-out forces); Δp = 0.95 − PCI(95%) (positive: intervals "
                   "cover too little). — : not computed (over budget, failed, or no energies), or not given: the peers "
                   "predict no intervals, the DCF-style network no energies. Prediction time: the held-out predictions "
                   "per frame — forces with their sd and energies for the GPs, means for the peers.")


# -- conservation check (issue 16) ---------------------------------------------------------------------
#: Most models one conservation run takes (each runs its own MD).
MAX_CONSERVATION_MODELS = 6


def conservation_section(registry: ModelRegistry, traj: Trajectory) -> None:
    """NVE drift, closed-loop work and Jacobian asymmetry of the session's models on this data."""
    from aff_app.figures import conservation as figcons
    from aff_app.workflows.conservation import ConservationSettings
    from aff_app.workflows.force_fields import force_fields

    st.subheader("Conservation check")
    st.caption(
        "Is the force field the gradient of an energy? Three measurements, each zero for a conservative field: the drift "
        "of the total energy in a short NVE run (velocity Verlet) from a held-out frame; the work around small closed "
        "loops of geometries, |∮F·dR|; and the asymmetry of the force Jacobian, ‖J − Jᵀ‖/‖J + Jᵀ‖. AFF's force GP "
        "(one GP per PE set), like the DCF-style network, predicts forces directly; AFF's integrated energy gives a "
        "conservative AFF (−∇Ê); GDML/sGDML and the sgdml package integrate one kernel and are conservative by "
        "construction. Without a model energy the potential is minus the work along the straight line from the "
        "start, so the drift shows how far the forces are from any energy.")
    entries = registry.for_data(traj.fingerprint, traj.n_atoms)
    if not entries:
        st.info("No model of this data yet: train one (or several) on the Train page first.")
        return
    names = [e.name for e in entries]
    kept = [n for n in st.session_state.get(state.CMP_CONS_MODELS, []) if n in names]
    st.session_state[state.CMP_CONS_MODELS] = kept or names[-MAX_CONSERVATION_MODELS:]
    c1, c2, c3, c4 = st.columns([2.2, 1, 1, 1])
    chosen = c1.multiselect("Models", names, key=state.CMP_CONS_MODELS, max_selections=MAX_CONSERVATION_MODELS)
    steps = int(c2.number_input("MD steps", min_value=100, max_value=20_000, value=1000, step=100,
                                key=state.CMP_CONS_STEPS, help="Velocity Verlet steps of the NVE run."))
    dt = float(c3.number_input("Time step (fs)", min_value=0.1, max_value=2.0, value=0.5, step=0.1,
                               key=state.CMP_CONS_DT))
    temp = float(c4.number_input("Start temperature (K)", min_value=10.0, max_value=2000.0, value=300.0, step=50.0,
                                 key=state.CMP_CONS_T, help="Maxwell–Boltzmann velocities, seeded."))
    by_name = {e.name: e for e in entries}
    start_frame = _start_frame(by_name, chosen, traj)
    st.caption(f"Start: frame {start_frame} of {traj.name or traj.formula}, a frame none of the chosen models trained "
               "on (a test frame recorded at training when there is one).")
    run = st.button("Run the conservation check", key=state.CMP_CONS_RUN, disabled=not chosen)
    job = bg.active_job("conservation")
    if run and chosen and job is None:
        settings = ConservationSettings(temperature_K=temp, dt_fs=dt, n_steps=steps)
        fields = [f for n in chosen for f in force_fields(n, by_name[n].force, by_name[n].energy)]
        try:
            job = bg.submit_task("conservation", f"Conservation: {len(chosen)} model(s), {steps} steps",
                                 _conservation_task(fields, traj, start_frame, settings))
        except mw.EXPECTED_ERRORS as exc:
            st.error(f"The conservation check was refused: {mw.error_text(exc)}")
    elif run and job is not None:
        st.info(f"A conservation check of this session is still going ({job.label}): cancel it first to start "
                "another.")
    if job is not None:
        bg.run_here(job, cancel_key=state.CMP_CONS_CANCEL, cancel_label="Cancel the conservation check",
                    caption="The check runs on the server: you may switch pages — the sidebar shows its progress, "
                            "and the finished models' reports are kept if you cancel.")
        bg.show_notices(state.CMP_NOTICE)
    result = st.session_state.get(state.CMP_CONS_RESULT)
    if not result or result["fingerprint"] != traj.fingerprint:
        st.caption("No conservation check yet on this data: choose models and press the button (about a minute for "
                   "1,000 steps of a few models on a small machine).")
        return
    reports = result["reports"]
    for name, why in result.get("failed", []):
        st.warning(f"{name}: the conservation check failed — {why}")
    if not reports:
        return
    st.plotly_chart(figcons.conservation_figure(reports), width="stretch", key=state.CMP_CONS_CHART)
    rows = figcons.conservation_table(reports)
    st.dataframe([{k: (mw.fmt(v, ".3g") if v is None or isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                 hide_index=True, width="stretch")
    st.caption(f"From frame {result['frame']}. Drift: slope of E_total(t), kcal/mol/ps (— for a run that fell apart: "
               "atoms flew apart or the forces became non-finite; the plot stops it at the edge with a cross). Loop work: mean over 4 loops "
               "of radius 0.05 Å; divided by the gross work ∮|F·dR| it says what share of the work does not cancel. "
               "Jacobian asymmetry at 3 frames of the run (central differences, h = 10⁻³ Å). A conservative field "
               "shows the integrator's and the differences' error only (≈ 10⁻⁶–10⁻⁴).")


@dataclass(frozen=True)
class ConservationOutcome:
    """A conservation job's reports so far (all of them once it is done) and the models that failed."""

    fingerprint: str
    frame: int
    reports: list
    failed: list
    n_fields: int

    def describe(self) -> str:
        return f"{len(self.reports)} of {self.n_fields} reports"


def _conservation_task(fields: list, traj: Trajectory, start_frame: int, settings):
    """The job: one conservation check per force field, each kept as soon as it finishes (no Streamlit here)."""
    from aff_app.workflows.conservation import conservation_check

    R0, fp = traj.R[start_frame], traj.fingerprint

    def task(job):
        reports, failed = [], []
        for k, field in enumerate(fields):
            def share(f, m, k=k, name=field.name):
                job.report((k + f) / len(fields), f"{name}: {m}")

            try:
                reports.append(conservation_check(field.name, field.forces, field.z, R0, energy=field.energy,
                                                  settings=settings, progress=share))
            except mw.EXPECTED_ERRORS as exc:  # one model's failure keeps the others' reports
                failed.append((field.name, mw.error_text(exc)))
            job.keep(ConservationOutcome(fp, start_frame, list(reports), list(failed), len(fields)))
        return ConservationOutcome(fp, start_frame, reports, failed, len(fields))

    return task


def collect_conservation(job) -> None:
    """Store a finished conservation job's reports (all, or those finished before a cancel or failure)."""
    notices = st.session_state.setdefault(state.CMP_NOTICE, [])
    outcome = job.result if job.state == "done" else job.partial
    if job.state == "failed":
        notices.append(("error", f"The conservation check failed ({job.label}): {job.error}"))
    if not isinstance(outcome, ConservationOutcome):
        if job.state == "cancelled":
            notices.append(("warning", f"The conservation check was cancelled ({job.label}) before a model finished: "
                                       "nothing to keep; the session is unchanged."))
        return
    if job.state == "cancelled":
        notices.append(("warning", f"The conservation check was cancelled ({job.label}): {outcome.describe()} are "
                                   "kept below."))
    st.session_state[state.CMP_CONS_RESULT] = {"fingerprint": outcome.fingerprint, "reports": outcome.reports,
                                              "frame": outcome.frame, "failed": outcome.failed}


def _start_frame(by_name: dict, chosen: list, traj: Trajectory) -> int:
    """A frame none of the chosen models trained on (the first recorded test frame when there is one)."""
    from aff_app.workflows.training import training_positions_mask

    free = np.ones(traj.n_frames, dtype=bool)
    for n in chosen:
        free &= ~training_positions_mask(by_name[n].force, traj)
    for n in chosen:
        for i in by_name[n].test_idx or []:
            if 0 <= i < traj.n_frames and free[i]:
                return int(i)
    idx = np.flatnonzero(free)
    return int(idx[0]) if idx.size else 0
