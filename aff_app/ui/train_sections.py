"""The Train page's sections: each function draws one part of the page (pages/train.py is the storyboard).

Widget keys live in ``aff_app.ui.state``; the work is the library's (``aff_app.workflows.pipeline``),
run as a job of the server (``aff_app.ui.background``). A failure leaves the session's models and data untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from aff_app.gp import covariance as cov
from aff_app.gp.budget import ComputeBudgetError, check_budget, default_budget_bytes
from aff_app.gp.force import TASK_SET_SIDE
from aff_app.gp.persistence import load_model, model_bytes
from aff_app.io.trajectory import Trajectory
from aff_app.symmetry import SymmetryInfo
from aff_app.ui import background as bg
from aff_app.ui import data_widgets as dw
from aff_app.ui import model_widgets as mw
from aff_app.ui import state
from aff_app.ui import symmetry_widgets as sw
from aff_app.units import FORCE_UNIT
from aff_app.workflows import learning, pipeline
from aff_app.workflows.kinds import PEER_MODES, has_interval, no_interval_note, uses_symmetry
from aff_app.workflows.registry import MODE_LABELS, ModelRegistry, default_name
from aff_app.workflows.training import check_atoms_match

SETTINGS = (state.TRAIN_MODEL, state.TRAIN_M, state.TRAIN_SEED, state.TRAIN_N_TEST, state.TRAIN_HYPER,
            state.TRAIN_GAMMA, state.TRAIN_LAM, state.TRAIN_ENERGY_MODEL)
HYPER_LABELS = {
    "likelihood": "estimate γ, λ by the profile likelihood",
    "cv": "estimate γ, λ by cross-validation",
    "fixed": "set γ and λ by hand",
}
MODEL_HELP = (
    "AFF: one Gaussian process per PE set (the paper's method; cheap). GDML: one GP over all atoms, plain kernel. "
    "sGDML: one GP over all atoms with the permutationally symmetric kernel. GDML/sGDML factor a 3MN×3MN matrix. "
    "The peers, for comparison: the sgdml package (`sgdml all`, its own σ search; optional install) and a DCF-style "
    "direct-force network (forces only). Neither gives a predictive interval."
)
SLOW_SECONDS = 60.0
ENERGY_LABELS = {
    "integrated": "integrated forces (sGDML on a spread subset + residual GP)",
    "gp": "energy GP (training energies + forces at x*)",
}
ENERGY_HELP = (
    "AFF's energy. Integrated (default): the full-covariance force GP of a spread subset of the training frames "
    "integrated to an energy, corrected by a GP on the other training energies, its interval calibrated on "
    "random training frames (method.md \"AFF's energy\"; needs 60 frames). Energy GP: learns the surface from "
    "the training energies, conditioned on the predicted forces at the frame (method.md \"Energy prediction\"). "
    "GDML and sGDML always integrate their own force GP."
)


@dataclass(frozen=True)
class TrainForm:
    """What the form asks for: the model, M, the split seed, test frames, and the hyperparameters."""

    mode: str
    n_train: int
    seed: int
    n_test: int
    hyper: str
    gamma: float
    lam: float
    energy_model: str = "integrated"
    scheduler: object = None  # aff_app.parallel.SchedulerChoice; None when the field's text is not a scheduler

    @property
    def fixed(self) -> bool:
        """Whether γ and λ are set by hand."""
        return self.hyper == "fixed"


def notices() -> None:
    """The messages the last run and the session's finished fit jobs left (success, warnings, failures)."""
    bg.collect_finished()  # (app.py does it on every run; AppTest reruns only the page)
    notice = st.session_state.pop(state.TRAIN_NOTICE, None)
    for level, text in ([notice] if isinstance(notice, tuple) else notice or []):
        getattr(st, level)(text)


#: Fewest frames a fit needs: 2 to train on, 1 to test on.
MIN_FRAMES = 3


def trainable(traj: Trajectory) -> bool:
    """Whether the data can be trained on; when not, say why (with a link) and what the data allows.

    The page goes on either way: the session's models, their downloads and the upload stay usable.
    """
    report = dw.trainability(
        traj, unlabelled=f"{traj.name or traj.formula} has no energies and forces (view-only): it cannot be used for "
                         "training. Load a labelled file on the Data page.",
        untrainable="Cannot train on the loaded data: ")
    if report is None:
        return False
    if traj.n_frames < MIN_FRAMES:
        st.error(f"{traj.name or traj.formula} has {traj.n_frames} frame{'s' if traj.n_frames != 1 else ''}: a fit "
                 f"needs at least {MIN_FRAMES} (2 to train on, 1 held out to test on). Load more frames on the Data "
                 "page.")
        st.page_link(state.DATA_PAGE, label="Go to the Data page", icon="🗂️")
        return False
    for text in report.warnings:
        st.warning(text + " (see the Data page)")
    return True


def settings_form(traj: Trajectory) -> TrainForm:
    """The model, M, seed, test frames and hyperparameter inputs (restored per data set)."""
    fp = traj.fingerprint
    sw.restore_settings(state.TRAIN_SETTINGS, SETTINGS, fingerprint=fp)
    max_train = max(traj.n_frames - 1, 2)
    st.session_state.setdefault(state.TRAIN_MODEL, "aff")
    st.session_state.setdefault(state.TRAIN_M, min(200, max_train))
    st.session_state.setdefault(state.TRAIN_SEED, 0)
    st.session_state.setdefault(state.TRAIN_HYPER, "likelihood")
    prefill = mw.prefill_hyperparameters(traj, state.TRAIN_GAMMA, state.TRAIN_LAM, state.TRAIN_HYPER_FROM,
                                         default_gamma=sw.default_gamma_cached(fp, _R=traj.R))

    c_model, c_m, c_seed, c_test = st.columns([1.4, 1, 1, 1])
    mode = c_model.radio("Model", list(MODE_LABELS), format_func=MODE_LABELS.get, horizontal=True,
                         key=state.TRAIN_MODEL, help=MODEL_HELP)
    n_train = int(c_m.number_input(f"Training frames M (≤ {max_train:,})", min_value=2, max_value=max_train, step=50,
                                   key=state.TRAIN_M, help="Drawn at random (seeded) from the trajectory."))
    seed = int(c_seed.number_input("Split seed", min_value=0, step=1, key=state.TRAIN_SEED,
                                   help="Seed of the random training/test split (and of the search subset)."))
    max_test = traj.n_frames - n_train
    if max_test < 1:
        st.error(f"M = {n_train} leaves no frame of the {traj.n_frames} for testing: choose a smaller M.")
        st.stop()
    st.session_state.setdefault(state.TRAIN_N_TEST, min(200, max_test))
    if st.session_state[state.TRAIN_N_TEST] > max_test:
        st.session_state[state.TRAIN_N_TEST] = max_test
    n_test = int(c_test.number_input(f"Test frames (≤ {max_test:,})", min_value=1, max_value=max_test, step=50,
                                     key=state.TRAIN_N_TEST,
                                     help="Held-out frames, disjoint from the training frames, evaluated after training."))

    peer = mode in PEER_MODES
    c_hyper, c_gamma, c_lam = st.columns([2, 1, 1])
    hyper = c_hyper.radio("Hyperparameters", list(HYPER_LABELS), format_func=HYPER_LABELS.get, key=state.TRAIN_HYPER,
                          disabled=peer,
                          help="γ: range of the Matérn kernel on inverse distances (1/Å); λ: nugget (relative). "
                               "The search runs on max(100, M/4) of the training frames (fewer for large PE sets). "
                               "The peers choose their own (the package its σ on validation frames, the network "
                               "stops early on a validation share).")
    fixed = hyper == "fixed" and not peer
    gamma_in = c_gamma.number_input("γ (1/Å)", min_value=1e-4, max_value=1e4, format="%.4g", key=state.TRAIN_GAMMA,
                                    disabled=not fixed, help="Default: the median descriptor distance of the data.")
    lam_in = c_lam.number_input("λ (nugget)", min_value=0.0, max_value=1.0, format="%.1e", key=state.TRAIN_LAM,
                                disabled=not fixed, help="Labels are nearly noise-free: small values (1e-10…1e-6) fit best.")
    if fixed:
        st.caption(prefill)
    st.session_state.setdefault(state.TRAIN_ENERGY_MODEL, "integrated")
    energy_model = st.radio("Energy model (AFF)", list(ENERGY_LABELS), format_func=ENERGY_LABELS.get,
                            horizontal=True, key=state.TRAIN_ENERGY_MODEL, help=ENERGY_HELP,
                            disabled=mode != "aff" or traj.E is None)
    scheduler = mw.scheduler_field(
        "Run the fit on", state.TRAIN_SCHEDULER, "the fit",
        "AFF, GDML and sGDML: the hyperparameter search's γ candidates, and every PE set whose kernel is at least "
        f"{TASK_SET_SIDE:,} rows (and fits a worker), as tasks; the rest here. Pays off with workers on other "
        "machines, or to keep large kernels out of the server's memory. The peers ignore it.")
    sw.save_settings(state.TRAIN_SETTINGS, SETTINGS, fingerprint=fp)
    return TrainForm(mode=mode, n_train=n_train, seed=seed, n_test=n_test, hyper=hyper, gamma=float(gamma_in),
                     lam=float(lam_in), energy_model=energy_model, scheduler=scheduler)


def symmetry_caption(traj: Trajectory, mode: str) -> SymmetryInfo | None:
    """The PE sets the fit will use (None for GDML and the peers), with a caption."""
    symmetry = None
    if mode == "sgdml-package":
        st.caption("The sgdml package finds its own permutations (`sgdml all`), trains on the M frames and selects σ "
                   "on up to 200 other frames that are neither training nor test frames.")
    elif mode == "dcf":
        st.caption("The DCF-style network predicts each atom's force from rotation-invariant features of its "
                   "neighbours and rotation-covariant vectors; one network per element makes it permutation "
                   "equivariant without a symmetry search. Forces only: no energy.")
    elif uses_symmetry(mode):
        symmetry = sw.ensure_symmetry(traj)
        st.caption(f"PE sets: {len(symmetry.pe_sets)} ({sw.describe(symmetry)}), sizes "
                   f"{sorted((len(s) for s in symmetry.pe_sets), reverse=True)}; {len(symmetry.perms)} permutations in "
                   "the kernel. Change them on the Symmetry page.")
    return symmetry


def cost_card(traj: Trajectory, form: TrainForm, symmetry: SymmetryInfo | None) -> str | None:
    """The memory, flop and time estimate before anything runs; the budget refusal's text, or None."""
    mode, n_train, fixed = form.mode, form.n_train, form.fixed
    # AFF takes the iterative path when its dense kernels exceed the budget (TrainSettings.solver = 'auto')
    est = learning.cost_for(mode, n_train, traj.n_atoms, symmetry, solver="auto")
    budget = default_budget_bytes()
    over_budget = None
    if mode == "sgdml-package":
        over_budget = _package_missing(traj)
        spare = traj.n_frames - n_train - form.n_test
        if over_budget is None and spare < 1:
            # the package selects σ on frames neither trained nor tested (pipeline.PACKAGE_VALID_FRAMES at most)
            over_budget = (f"M = {n_train} training and {form.n_test} test frames leave none of the {traj.n_frames} "
                           f"frames for the package's σ validation: use at most {traj.n_frames - n_train - 1} test "
                           "frames.")
    if over_budget is None:
        try:
            check_budget(est, budget, what=f"{MODE_LABELS[mode]} fit")
        except ComputeBudgetError as exc:
            over_budget = str(exc)
    with st.container(border=True):
        k = st.columns(4)
        k[0].metric("Cholesky work Σ(3Mlᵢ)³/3", cov.format_flops(est.cholesky_flops),
                    help=f"Kernel sides 3·M·lᵢ: {', '.join(f'{s:,}' for s in sorted(set(est.matrix_sides), reverse=True))}")
        k[1].metric("Peak memory", f"{est.peak_bytes / 2**30:.2f} GB",
                    help="All kernel matrices (float64) plus work space; 1 GB = 2³⁰ bytes.")
        k[2].metric("Memory budget", f"{budget / 2**30:.1f} GB", help="AFF_MEMORY_BUDGET_GB, or 60% of this machine's RAM.")
        times = learning.time_for(mode, n_train, traj.n_atoms, symmetry, search=not fixed, energy=traj.E is not None,
                                  n_test=form.n_test, energy_model=form.energy_model, solver="auto")
        k[3].metric("Time, train and test (est.)", _seconds(times.total_s),
                    help="Within about a factor of 2 on the reference 2-core machine (docs/benchmarks.md). Parts: "
                         + _parts(times) + ".")
        if over_budget:
            st.error(f"Cannot train: {over_budget}" if mode == "sgdml-package" else f"Refused before training: {over_budget}")
        elif times.total_s > SLOW_SECONDS:
            st.warning(f"This run may take several minutes (≈ {_seconds(times.total_s)}: {_parts(times)}).")
        if mode in PEER_MODES:
            st.caption(f"Estimated: {_parts(times)} ({'`sgdml all`: its σ trials each factor the 3MN-sided kernel' if mode == 'sgdml-package' else 'the network stops early or at its time limit'}). "
                       + no_interval_note(mode))
            return over_budget
        if est.solver == "iterative":
            st.info(f"The dense kernels would exceed the memory budget, so this fit takes the {est.summary} "
                    "(docs/method.md \"Iterative path\": λ is kept at or above 10⁻¹¹ of the kernel variance, the sd "
                    "is conditioned on the preconditioner's frames).")
        st.caption(f"Solver: {est.summary}. Estimated parts: {_parts(times)}."
                   + ("" if fixed else " The search builds and eigendecomposes the kernels of max(100, M/4) training "
                      "frames for about 10 values of γ; set γ and λ by hand to skip it."))
    return over_budget


def _package_missing(traj: Trajectory) -> str | None:
    """Why the package cannot train here (not installed, or no energies), or None."""
    missing = mw.package_status()
    if missing is not None:
        return missing + "; then restart the app."
    if traj.E is None:
        return "the sgdml package trains on energies and forces, and this data has no energies."
    return None


def _seconds(s: float) -> str:
    """'0.8 s', '42 s', '3 min 20 s'."""
    if s < 10:
        return f"{s:.1g} s" if s < 1 else f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    return f"{int(s // 60)} min {int(s % 60):02d} s"


def _parts(t) -> str:
    parts = [("search", t.search_s), ("force fit", t.fit_s), ("energy fit", t.energy_s),
             ("held-out predictions", t.held_out_s)]
    return ", ".join(f"{name} {_seconds(v)}" for name, v in parts if v > 0)


def train_button(traj: Trajectory, form: TrainForm, symmetry: SymmetryInfo | None, over_budget: str | None) -> None:
    """The model name, the Train button, and the run: progress, cancel, failure or the new model's summary."""
    mode, n_train, seed, n_test, fixed, hyper = form.mode, form.n_train, form.seed, form.n_test, form.fixed, form.hyper
    gamma_in, lam_in = form.gamma, form.lam
    c_name, c_btn = st.columns([3, 1], vertical_alignment="bottom")
    auto_name = default_name(mode, n_train, seed)
    name = c_name.text_input("Model name", key=state.TRAIN_NAME, placeholder=auto_name,
                             help=f"Leave empty for '{auto_name}'.").strip() or auto_name
    run = c_btn.button("Train", key=state.TRAIN_RUN, type="primary",
                       disabled=over_budget is not None or (form.scheduler is None and mode not in PEER_MODES),
                       width="stretch")
    scheduler = None if mode in PEER_MODES or form.scheduler is None or form.scheduler.is_serial else form.scheduler
    if run:
        label = f"{MODE_LABELS[mode]}, M = {n_train}" + ("" if scheduler is None else f" on {scheduler.describe()}")
        times = learning.time_for(mode, n_train, traj.n_atoms, symmetry, search=not fixed, energy=traj.E is not None,
                                  n_test=n_test, energy_model=form.energy_model, solver="auto")
        cost = learning.cost_for(mode, n_train, traj.n_atoms, symmetry, solver="auto")
        request = bg.FitRequest(
            traj=traj, n_train=n_train, n_test=n_test, seed=seed, name=name,
            settings=pipeline.TrainSettings(mode=mode, gamma=float(gamma_in) if fixed else None,
                                            lam=float(lam_in) if fixed else None,
                                            criterion="cv" if hyper == "cv" else "likelihood",
                                            energy_model=form.energy_model),
            symmetry=symmetry if uses_symmetry(mode) else None,
            training_share=min(max(times.training_share, 0.2), 0.95), scheduler=scheduler)
        try:
            submitted = bg.submit_fit(request, cost_bytes=cost.peak_bytes, estimate_s=times.total_s, label=label)
        except mw.EXPECTED_ERRORS as exc:
            st.error(f"Training refused: {mw.error_text(exc)}\n\nThe session's models and the data are unchanged.")
            return
        if submitted.how == "in session":
            st.session_state[state.TRAIN_NOTICE] = [(
                "info", f"This fit is in the session already, as **{_md(submitted.entry.name)}**: nothing was "
                        "computed.")]
            st.rerun()
        if submitted.how == "reused":
            st.session_state[state.TRAIN_NOTICE] = [(
                "success", f"Reused **{_md(submitted.entry.name)}**: an identical fit (same data, settings, split and code "
                           "version) is stored in the workspace, so nothing was computed. Its numbers are below.")]
            st.session_state.pop(state.TRAIN_NAME, None)
            st.rerun()
        job = submitted.job
        heading = (f"Waiting for the identical fit that is already running ({label})…" if submitted.how == "joined"
                   else f"Training {MODE_LABELS[mode]} on M = {n_train} frames…")
        with st.status(heading, expanded=True) as status:
            st.caption("The fit runs on the server: you may switch pages or reload — its progress stays in the "
                       "sidebar and the model arrives in the session when it is done.")
            bg.wait_here(job, cancel_key=state.TRAIN_CANCEL, cancel_label="Cancel training")
            if job.state == "failed" and job.exception is not None and not isinstance(job.exception, mw.EXPECTED_ERRORS):
                raise job.exception  # a bug in aff_app is shown as one, with its traceback
            status.update(label={"done": f"Trained {label}", "failed": "Training failed",
                                 "cancelled": "Training cancelled"}[job.state],
                          state="complete" if job.state == "done" else "error", expanded=job.state != "done")
        bg.collect_finished()
        st.session_state.pop(state.TRAIN_NAME, None)
        st.rerun()


def job_notices(job, entry) -> list[tuple[str, str]]:
    """What the Train page says about a finished fit job (``entry``: its model in the session, or None)."""
    if job.state == "cancelled":
        return [("warning", f"Training cancelled ({job.label}): no model was added; the data and the session's "
                            "models are unchanged.")]
    if job.state == "failed":
        return [("error", f"Training failed ({job.label}): {job.error}\n\nThe session's models and the data are "
                          "unchanged.")]
    if entry is None:
        return []
    stored = [] if not job.result.storage_error else [(
        "warning", f"The model could not be stored in the workspace ({job.result.storage_error}): it stays in this "
                   "browser session only — download it below to keep it.")]
    return [("success", trained_message(entry))] + stored + [("warning", w) for w in job.result.warnings]


def _md(text: str) -> str:
    """``text`` safe inside markdown (a model name may come from another user of the server)."""
    # mid-line (after "Trained **"), only these make markup: emphasis, code, links/images, html, math, tables
    return "".join("\\" + ch if ch in "\\`*_[]<>$|~" else ch for ch in str(text))


def trained_message(entry) -> str:
    """The summary of a freshly trained model: hyperparameters, held-out numbers, calibration, time."""
    mode = entry.mode
    record = entry.force.record
    m = entry.metrics or {}
    t = record.timings
    if not has_interval(mode):
        return (f"Trained **{_md(entry.name)}**: held-out force MAE {mw.fmt(m.get('force_mae'), '.3g', unit=FORCE_UNIT)}"
                + ("" if m.get("energy_mae") is None else
                   f", energy MAE {mw.fmt(m.get('energy_mae'), '.3g', unit='kcal/mol')}")
                + f". {no_interval_note(mode)} Time {mw.fmt(t.total_s, '.3g')} s: training "
                f"{mw.fmt(t.force_s, '.3g')} s, held-out predictions {mw.fmt(t.evaluation_s, '.2g')} s.")
    msg = (f"Trained **{_md(entry.name)}**: γ = {mw.fmt(entry.gamma, '.4g')} 1/Å, λ = {mw.fmt(entry.lam, '.2e')}; "
           "held-out force MAE "
           f"{mw.fmt(m.get('force_mae'), '.3g', unit=FORCE_UNIT)}, PCI(95%) {mw.fmt(m.get('pci'), percent=True)}.")
    if record.search.lam_at_floor:
        msg += (" λ is at its floor, 10⁻¹³ of the kernel variance (what double precision resolves): "
                "the search found the labels noise-free at this γ.")
    elif record.search.lam_min_rel > 0:
        msg += (f" The conjugate-gradient solver needs λ ≥ {record.search.lam_min_rel:.0e} of the kernel variance: "
                "γ was searched for such λ.")
    if record.solver.task_sets:
        sets = ", ".join(str(k + 1) for k in record.solver.task_sets)
        msg += f" PE sets {sets} were factored on {record.solver.scheduler}."
    check = record.lam_check
    if check.lowered:
        msg += (f" λ lowered {check.factor:.0f}× from the search's {mw.fmt(check.candidates[0], '.2e')}: on "
                "all training frames its leave-one-frame-out force error was "
                f"{mw.fmt(100 * check.gain, '.0f')}% smaller.")
    cal = record.calibration
    if cal.method == "loo":
        msg += (f" Interval widths scaled by {mw.fmt(cal.scale, '.3g')} so that 95% of the "
                f"leave-one-frame-out forces of {cal.frames} training frames fall inside them.")
    msg += (f" Time {mw.fmt(t.total_s, '.3g')} s: symmetry {mw.fmt(t.symmetry_s, '.2g')} s, force fit "
            f"{mw.fmt(t.force_s, '.3g')} s (search {mw.fmt(t.search_s, '.2g')} s), energy fit "
            f"{mw.fmt(t.energy_s, '.2g')} s, held-out predictions {mw.fmt(t.evaluation_s, '.2g')} s.")
    return msg


def models_section(registry: ModelRegistry, fp: str) -> None:
    """The session's models: table, rename, remove, download."""
    st.subheader("Models in this session")
    if len(registry) == 0:
        st.caption("None yet: train one above, or upload a model saved earlier.")
    else:
        rows = []
        for e in registry:
            m = e.metrics or {}
            rows.append({
                "name": e.name, "model": e.mode_label, "M": e.n_train, "seed": mw.fmt(e.seed, "d"),
                "γ (1/Å)": mw.fmt(e.gamma, ".4g"), "λ": mw.fmt(e.lam, ".2e"),
                "train time (s)": mw.fmt(e.train_time_s, ".3g"),
                f"force MAE ({FORCE_UNIT})": mw.fmt(m.get("force_mae"), ".3g"),
                "energy model": e.energy.label if e.energy is not None else "none",
                "data": "loaded data" if e.data_fingerprint == fp else ("other data" if e.data_fingerprint else "unknown"),
            })
        st.dataframe(rows, hide_index=True, width="stretch")
        st.caption("— : not known (e.g. an uploaded model not evaluated yet; open Predictions to evaluate it).")
        st.page_link(state.PREDICTIONS_PAGE, label="See the predictions", icon="🎯")

        names = registry.names()
        c_pick, c_new, c_ren, c_del = st.columns([2, 2, 1, 1], vertical_alignment="bottom")
        picked = c_pick.selectbox("Manage model", names, index=len(names) - 1, key=state.TRAIN_MANAGE)
        new_name = c_new.text_input("New name", key=state.TRAIN_RENAME_TEXT, placeholder=picked)
        if c_ren.button("Rename", key=state.TRAIN_RENAME, width="stretch"):
            try:
                registry.rename(picked, new_name)
            except mw.EXPECTED_ERRORS as exc:
                st.error(f"Rename failed: {mw.error_text(exc)}")
            else:
                st.session_state[state.TRAIN_NOTICE] = ("success", f"Renamed {picked!r} to {new_name.strip()!r}.")
                st.session_state.pop(state.TRAIN_RENAME_TEXT, None)
                st.session_state.pop(state.TRAIN_MANAGE, None)
                st.rerun()
        if c_del.button("Remove", key=state.TRAIN_REMOVE, width="stretch"):
            registry.remove(picked)
            st.session_state[state.TRAIN_NOTICE] = ("info", f"Removed {picked!r} from the session.")
            st.session_state.pop(state.TRAIN_MANAGE, None)
            st.rerun()
        if picked in registry:
            entry = registry.get(picked)
            what = "force and energy model" if entry.energy is not None else "force model"
            st.download_button(
                f"Download {picked} ({what}, .npz)", data=lambda e=entry: model_bytes(e.force, e.energy),
                file_name=picked.replace(" ", "_").replace("/", "_").replace("=", "") + ".npz",
                mime="application/octet-stream", key=state.TRAIN_DOWNLOAD, on_click="ignore",
                help="Plain arrays (no pickle): upload it here later, or use it with `python -m aff_app`.",
            )


def upload_section(registry: ModelRegistry, traj: Trajectory) -> None:
    """Upload a model file (from this page or the CLI) into the session."""
    with st.expander("Upload a saved model (.npz)", key=state.TRAIN_UPLOAD_EXPANDER):
        up = st.file_uploader("Model file downloaded from this page (or written by `python -m aff_app train`)",
                              type=["npz"], key=state.TRAIN_UPLOAD)
        if st.button("Add uploaded model", key=state.TRAIN_UPLOAD_ADD, disabled=up is None):
            try:
                force, energy = load_model(up.getvalue(), where=up.name)
                check_atoms_match(force.z, traj.z, what=f"the loaded data ({traj.name or traj.formula})")
                base = up.name.rsplit(".", 1)[0] + " (uploaded)"
                entry = registry.add(force, name=base, energy=energy, source="uploaded")
            except mw.EXPECTED_ERRORS as exc:
                st.error(f"Could not add {up.name}: {mw.error_text(exc)}")
            else:
                st.session_state[state.TRAIN_NOTICE] = (
                    "success", f"Added **{entry.name}** ({entry.mode_label}, M = {entry.n_train}"
                               + (", with its energy model" if energy is not None else "") + ").")
                st.rerun()
