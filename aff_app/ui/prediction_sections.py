"""The Predictions page's sections: each function draws one part of the page (pages/predictions.py).

Every figure is drawn from one ``HeldOut`` record (``aff_app.workflows.pipeline.evaluate``), computed
once per (model, data, test frames) and kept in the session (``state.HELD_OUT``).
"""

from __future__ import annotations

import numpy as np
import streamlit as st
from ase.data import chemical_symbols

from aff_app.errors import AFFError
from aff_app.figures import predictions as figp
from aff_app.io.trajectory import Trajectory
from aff_app.ui import data_widgets as dw
from aff_app.ui import model_widgets as mw
from aff_app.ui import state
from aff_app.units import ENERGY_UNIT, FORCE_UNIT
from aff_app.workflows.kinds import no_interval_note
from aff_app.workflows.predictions import HeldOut, Predicted, energy_csv, predict_structures, predictions_file
from aff_app.workflows.registry import TrainedModel

LEVEL = 0.95
KIND_LABELS = {
    "latent": "latent: the force itself",
    "observation": "observation: a new noisy label (adds σ̂²λ)",
}
COLOR_BY = {
    "error": "prediction error |F̂ − F|",
    "std": "predicted uncertainty (sd of |F|, √Σσ²)",
}
VIEW_HEIGHT = 430


def has_reference(traj: Trajectory) -> bool:
    """True when the data has reference labels to score held-out predictions; otherwise say what the page offers."""
    if traj.has_labels:
        return True
    st.info("The loaded data has no reference energies and forces: there are no held-out errors to show. The "
            "model's predictions on its frames, with their sds, are below (and a download). Load a labelled "
            "trajectory on the Data page for the comparison.")
    return False


def pick_model(models: list[TrainedModel]) -> tuple[TrainedModel, str]:
    """The model selector and the interval kind: (entry, 'latent' or 'observation')."""
    names = [e.name for e in models]
    if st.session_state.get(state.PRED_MODEL) not in names:
        st.session_state[state.PRED_MODEL] = names[-1]
    registry = mw.get_registry()
    c_model, c_kind = st.columns([2, 2])
    picked = c_model.selectbox("Model", names, key=state.PRED_MODEL,
                               format_func=lambda n: mw.model_label(registry.get(n)))
    entry = registry.get(picked)
    kind = c_kind.radio("Interval shown", list(KIND_LABELS), format_func=KIND_LABELS.get, key=state.PRED_KIND,
                        horizontal=True, disabled=not entry.has_interval,
                        help="Latent: uncertainty about the force itself (what PCI/LCI in the paper use). Observation: "
                             "for a new noisy label, adding the nugget variance σ̂ᵢ²λ of each atom's PE set.")
    if not entry.has_interval:
        st.info(f"{no_interval_note(entry.mode)} Interval columns and bands show —; the calibration curve is not drawn.")
    return entry, kind


def held_out(entry: TrainedModel, traj: Trajectory) -> tuple[HeldOut, str]:
    """The held-out frames (recorded at training, or chosen here) and their predictions: (held, note)."""
    recorded = entry.test_idx if entry.data_fingerprint == traj.fingerprint else None
    if recorded:
        n_test, seed = len(recorded), int(entry.seed or 0)
        frames_note = f"the {n_test} test frames drawn when it was trained (never used for training)"
    else:
        from aff_app.workflows.training import training_positions_mask

        pool = int((~training_positions_mask(entry.force, traj)).sum())
        if pool == 0:
            st.error("Every frame of the loaded data is a training frame of this model: nothing is held out.")
            st.stop()
        n_test = int(st.number_input(f"Held-out frames to evaluate (≤ {pool:,})", min_value=1, max_value=pool,
                                     value=min(200, pool), step=50, key=state.PRED_N_TEST,
                                     help="Drawn at random (seed 0) among the frames that are not training frames."))
        seed = 0
        frames_note = f"{n_test} random frames of the loaded data that are not training frames of this model"

    bar = st.empty()
    try:
        held = mw.held_out(entry, traj, n_test=n_test, seed=seed,
                           progress=mw.progress_adapter(bar.progress(0.0, text="predicting the held-out frames")))
    except mw.EXPECTED_ERRORS as exc:
        bar.empty()
        st.error(f"Evaluation failed: {mw.error_text(exc)}")
        st.stop()
    bar.empty()
    n_bad = int(np.sum(~np.isfinite(held.F_mean))) + (int(np.sum(~np.isfinite(held.E_mean))) if held.has_energy else 0)
    if n_bad:
        st.warning(f"{n_bad} predicted value(s) of this model are NaN or infinite on these frames: they are shown as — and "
                   "every metric that depends on them is —. Retrain with a larger λ or without duplicate frames.")
    mw.get_registry().set_metrics(entry.name, mw.held_report(held, LEVEL, "latent"))  # Compare uses the paper's (latent) PCI
    return held, frames_note


def metrics_card(entry: TrainedModel, held: HeldOut, rep: dict, frames_note: str, kind: str) -> None:
    """The Table-I metrics of the held-out frames, with units."""
    st.markdown(f"##### Held-out metrics (Table I) — {held.n_frames} frames: {frames_note}")
    k = [c for row in (st.columns(3), st.columns(3)) for c in row]  # two rows: the labels carry units
    k[0].metric("Training frames M", f"{entry.n_train:,}")
    k[1].metric(f"Force MAE ({FORCE_UNIT})", mw.fmt(rep["force_mae"], ".3g"),
                help=f"RMSE {mw.fmt(rep['force_rmse'], '.3g', unit=FORCE_UNIT)}; over every force component")
    k[2].metric(f"Energy MAE ({ENERGY_UNIT})", mw.fmt(rep["energy_mae"], ".3g"),
                help="— : no energy model (or no reference energies)" if rep["energy_mae"] is None else
                f"RMSE {mw.fmt(rep['energy_rmse'], '.3g', unit=ENERGY_UNIT)}; {held.energy_model}")
    k[3].metric(f"PCI({LEVEL:.0%}) {kind}", mw.fmt(rep["pci"], percent=True),
                help="Share of held-out force components inside their 95% interval (ideal: 95%).")
    k[4].metric(f"LCI({LEVEL:.0%}) ({FORCE_UNIT})", mw.fmt(rep["lci"], ".3g"), help="Mean length of the 95% intervals.")
    k[5].metric("Train time (s)", mw.fmt(entry.train_time_s, ".3g"),
                help="Symmetry search, force fit (hyperparameter search included) and energy fit.")
    notes = []
    if rep["energy_mae"] is None:
        notes.append("energy MAE — : this model has no energy model" if entry.energy is None
                     else "energy MAE — : the loaded data has no reference energies" if not held.has_energy
                     else "energy MAE — : some energy predictions are NaN or infinite")
    if entry.train_time_s is None:
        notes.append("train time — : not recorded in the model file")
    if not entry.has_interval:  # a peer: no γ, λ of ours, no interval to judge
        st.caption(f"{entry.mode_label}: PCI, LCI, L_norm and Δp need intervals (—)."
                   + (" " + "; ".join(notes) + "." if notes else ""))
        return
    st.caption(f"γ = {mw.fmt(entry.gamma, '.4g')} 1/Å, λ = {mw.fmt(entry.lam, '.2e')}; L_norm = {mw.fmt(rep['l_norm'], '.3g')}, "
               f"Δp = 0.95 − PCI = {mw.fmt(rep['delta_p'], '+.3f')}." + (" " + "; ".join(notes) + "." if notes else ""))


def force_band(traj: Trajectory, held: HeldOut, kind: str) -> bool:
    """One atom's force component along the held-out frames with its band; returns the 'show errors' toggle."""
    st.subheader("Forces along the held-out frames")
    atom_labels = [f"{chemical_symbols[int(a)]}{i}" for i, a in enumerate(traj.z)]
    c_atom, c_comp, c_res = st.columns([1, 1, 1], vertical_alignment="bottom")
    atom = c_atom.selectbox("Atom", range(traj.n_atoms), format_func=lambda i: atom_labels[i], key=state.PRED_ATOM)
    comp = c_comp.radio("Component", ["x", "y", "z"], horizontal=True, key=state.PRED_COMPONENT)
    residual = c_res.toggle("Show errors (predicted − reference)", key=state.PRED_RESIDUAL,
                            help="Plots the error with its interval around zero: narrow bands become visible.")
    ci = "xyz".index(comp)
    if held.has_force_interval:
        lo, hi = held.force_interval(LEVEL, kind)
        band_label = f"{LEVEL:.0%} interval ({kind})"
    else:  # a peer: means only
        lo, hi = held.F_mean, held.F_mean
        band_label = "no interval (— : this model gives none)"
    mw.band_chart(
        held.test_idx, held.F_ref[:, atom, ci], held.F_mean[:, atom, ci], lo[:, atom, ci], hi[:, atom, ci],
        key=state.PRED_FORCE_BAND_CHART,
        title=f"Force F_{comp} on {atom_labels[atom]}: prediction, {band_label} and reference",
        quantity=f"F_{comp} of {atom_labels[atom]}", unit=FORCE_UNIT, band_label=band_label, residual=residual,
    )
    if not residual:
        st.caption("Crosses: predictions; circles: reference. The band is often narrower than the markers: turn on "
                   "'Show errors' to see it.")
    return residual


def energy_band(entry: TrainedModel, held: HeldOut, residual: bool) -> None:
    """The energy along the held-out frames with its band (Fig. 4)."""
    st.subheader("Energy along the held-out frames (Fig. 4)")
    if not held.has_energy:
        why = ("the DCF-style network predicts forces only (no energy derivative)." if entry.mode == "dcf" else
               "this model has no energy model (trained on data without energies, or uploaded as a force model only)."
               if entry.energy is None else "the loaded data has no energies.")
        st.info("— No energy predictions: " + why)
    else:
        offset = float(np.mean(held.E_ref))
        if held.has_energy_interval:
            elo, ehi = held.energy_interval(LEVEL)
            e_label = f"{LEVEL:.0%} interval"
        else:
            elo, ehi = held.E_mean, held.E_mean
            e_label = "no interval (— : the energy model gives none)"
        mw.band_chart(
            held.test_idx, held.E_ref, held.E_mean, elo, ehi, key=state.PRED_ENERGY_BAND_CHART,
            title=f"Energy: prediction ({held.energy_model}), {e_label} and reference",
            quantity="energy", unit=ENERGY_UNIT, band_label=e_label, residual=residual, offset=offset,
        )
        if not residual:
            st.caption(f"Energies are shown relative to the mean reference energy of these frames, {offset:,.2f} "
                       f"{ENERGY_UNIT}. Turn on 'Show errors' above to see the band when it is narrower than the points.")


def parity_and_calibration(held: HeldOut, rep: dict, kind: str) -> None:
    """Force and energy parity plots, and the calibration curve."""
    st.subheader("Parity and calibration")
    c_fp, c_ep = st.columns(2)
    with c_fp:
        ok = np.isfinite(held.F_mean)
        if ok.any():
            fig = figp.parity_figure(held.F_ref[ok], held.F_mean[ok], quantity="force components", unit=FORCE_UNIT,
                                     mae=rep["force_mae"], rmse=rep["force_rmse"])
            st.plotly_chart(fig, width="stretch", key=state.PRED_FORCE_PARITY_CHART)
        if not ok.all():
            st.caption(f"{int((~ok).sum())} NaN or infinite predictions are left out of this plot (and of its MAE/RMSE).")
    with c_ep:
        if held.has_energy and np.isfinite(held.E_mean).any():
            e_ok = np.isfinite(held.E_mean)
            fig = figp.parity_figure(held.E_ref[e_ok], held.E_mean[e_ok], quantity="energy", unit=ENERGY_UNIT,
                                     mae=rep["energy_mae"], rmse=rep["energy_rmse"], offset=float(np.mean(held.E_ref)))
            st.plotly_chart(fig, width="stretch", key=state.PRED_ENERGY_PARITY_CHART)
            if not e_ok.all():
                st.caption(f"{int((~e_ok).sum())} NaN or infinite energy predictions are left out of this plot (and of its "
                           "MAE/RMSE).")
        else:
            st.info("— No energy parity plot: no energy predictions for this model.")
    if not held.has_force_interval:
        st.info("— No calibration curve: this model predicts no intervals (means only).")
        return
    cal = mw.held_calibration(held, kind=kind)
    fig = figp.calibration_figure(cal["levels"], cal["force"], cal["energy"], kind=kind)
    c_cal, c_txt = st.columns([1, 1])
    c_cal.plotly_chart(fig, width="stretch", key=state.PRED_CALIBRATION_CHART)
    c_txt.markdown(
        "**Reading the calibration curve.** For each nominal level (x), the share of held-out values inside their "
        "central interval at that level (y). On the diagonal the intervals mean what they say; above it they are "
        "too wide (conservative), below it too narrow (over-confident). The paper reports the 95% point as PCI(95%)."
    )


def molecule_view(traj: Trajectory, held: HeldOut, kind: str) -> None:
    """Reference and predicted force arrows on one held-out frame, with the per-atom table."""
    atom_labels = [f"{chemical_symbols[int(a)]}{i}" for i, a in enumerate(traj.z)]
    st.subheader("Reference and predicted forces on the molecule")
    c_frame, c_color, c_scale = st.columns([1, 1.3, 1])
    frame_pos = c_frame.selectbox("Held-out frame", range(held.n_frames), format_func=lambda i: f"frame {held.test_idx[i]}",
                                  key=state.PRED_FRAME)
    color_by = c_color.radio("Atom colour", list(COLOR_BY), format_func=COLOR_BY.get, key=state.PRED_COLOR_BY,
                             disabled=not held.has_force_interval)
    if not held.has_force_interval:
        color_by = "error"  # no sd to colour by
    scale = c_scale.slider("Arrow length (Å per 100 kcal/mol/Å)", min_value=0.5, max_value=10.0, value=2.0, step=0.5,
                           key=state.PRED_ARROW_SCALE)
    if color_by == "error":
        values = held.force_errors()[frame_pos]
    else:
        values = np.sqrt(np.sum(held.force_std(kind)[frame_pos] ** 2, axis=-1))
    c_view, c_tab = st.columns([1.5, 1])
    with c_view:
        try:
            html = figp.force_comparison_html(
                traj.z, held.R[frame_pos], held.F_ref[frame_pos], held.F_mean[frame_pos], values,
                value_label=COLOR_BY[color_by], force_scale=scale / 100.0, labels=True,
                caption=f"frame {held.test_idx[frame_pos]} (held out)",
            )
        except figp.FigureError as exc:
            st.warning(f"No 3D view of frame {held.test_idx[frame_pos]}: {exc} (a NaN or infinite prediction). Pick another "
                       "frame.")
        else:
            dw.embed_html(html, height=VIEW_HEIGHT)
    with c_tab:
        err = held.force_errors()[frame_pos]
        sd = (np.sqrt(np.sum(held.force_std(kind)[frame_pos] ** 2, axis=-1)) if held.has_force_interval
              else np.full(traj.n_atoms, np.nan))
        st.dataframe(
            [{"atom": atom_labels[i], "|F| reference": mw.fmt(np.linalg.norm(held.F_ref[frame_pos, i]), ".3g"),
              "|F̂ − F|": mw.fmt(err[i], ".3g"), "sd": mw.fmt(sd[i], ".3g")}
             for i in range(traj.n_atoms)],
            hide_index=True, width="stretch", height=VIEW_HEIGHT - 40,
        )
        st.caption(f"Per atom, in {FORCE_UNIT}: size of the reference force, of the prediction error, and the "
                   f"predicted sd √(σx²+σy²+σz²) ({kind}).")


def downloads(entry: TrainedModel, held: HeldOut, kind: str) -> None:
    """The predictions file (CSV, extended XYZ; the same as the CLI's) and the energies table."""
    st.markdown("##### Download the predictions")
    stem = entry.name.replace(" ", "_").replace("/", "_").replace("=", "")
    d1, d2, d3 = st.columns(3)
    d1.download_button(f"Predictions CSV ({FORCE_UNIT})",
                       data=lambda: predictions_file(Predicted.from_held_out(held, kind), "csv"),
                       file_name=f"{stem}_forces.csv", mime="text/csv", key=state.PRED_DOWNLOAD_CSV, on_click="ignore",
                       help="One row per frame and atom: position, predicted force, its sd (of the interval kind "
                            "shown), reference force; the frame's predicted energy, its sd and reference (kcal/mol). "
                            "The same file as `python -m aff_app predict … --out FILE.csv`.")
    d2.download_button(f"Energies CSV ({ENERGY_UNIT})", data=lambda: energy_csv(held) if held.has_energy else "",
                       file_name=f"{stem}_energies.csv", mime="text/csv", key=state.PRED_DOWNLOAD_ENERGY_CSV,
                       on_click="ignore", disabled=not held.has_energy,
                       help="One row per frame: reference, predicted, std." if held.has_energy else "No energy predictions.")
    d3.download_button("Extended XYZ (eV, Å)",
                       data=lambda: predictions_file(Predicted.from_held_out(held, kind), "extxyz"),
                       file_name=f"{stem}_predictions.extxyz", mime="text/plain", key=state.PRED_DOWNLOAD_EXTXYZ,
                       on_click="ignore",
                       help="Reference energy/forces as ASE calculator results; arrays forces_pred, forces_std; "
                            "info energy_pred, energy_std (eV, eV/Å). The same file as `python -m aff_app predict`.")


#: Most frames predicted at once on the page (the CLI's ``predict`` has no limit).
MAX_OWN_FRAMES = 5000


def other_structures(entry: TrainedModel, traj: Trajectory) -> None:
    """Predictions on structures without labels: the loaded data when it has none, or an uploaded file.

    Forces, energies and their latent sds, a per-frame table and the same
    files as ``python -m aff_app predict`` (issue 20: this was CLI-only).
    """
    st.subheader("Predict on other structures" if traj.has_labels else "Predictions on the loaded structures")
    source = traj
    if traj.has_labels:
        st.caption(f"Upload structures of {traj.formula} (any format the Data page reads; labels are not needed, "
                   "a plain XYZ will do): the model predicts their forces and energies"
                   + (" with sds." if entry.has_interval else " (means only: this model gives no sds)."))
        upload = st.file_uploader("Structures", key=state.PRED_OWN_UPLOAD, label_visibility="collapsed")
        if upload is None:
            return
        raw = upload.getvalue()
        try:
            source = dw.load_cached(dw.digest(raw), upload.name, _data=raw)
        except AFFError as exc:
            st.error(f"{upload.name}: {dw.error_message(exc)}")
            return
    if source.n_frames > MAX_OWN_FRAMES:
        st.error(f"{source.n_frames:,} structures: the page predicts at most {MAX_OWN_FRAMES:,} at once; use "
                 "`python -m aff_app predict MODEL FILE --out OUT.extxyz` (or select frames) for more.")
        return
    results = st.session_state.setdefault(state.PRED_OWN_RESULTS, {})
    key = (entry.uid, source.fingerprint)
    if key not in results:
        if not st.button(f"Predict {source.n_frames:,} structure(s) with {entry.name}", key=state.PRED_OWN_RUN):
            return
        bar = st.progress(0.0, text="predicting")
        try:
            results[key] = predict_structures(entry.force, entry.energy, source,
                                              progress=mw.progress_adapter(bar))
        except AFFError as exc:
            bar.empty()
            st.error(f"Cannot predict: {exc}")
            return
        bar.empty()
    pred: Predicted = results[key]
    fmax = np.linalg.norm(pred.F_mean, axis=-1).max(axis=1)
    sdmax = pred.F_std.max(axis=(1, 2)) if pred.F_std is not None else np.full(pred.frames.size, np.nan)
    rows = {"frame": pred.frames[:200], f"largest |F| ({FORCE_UNIT})": np.round(fmax[:200], 3)}
    if pred.F_std is not None:
        rows[f"largest force sd ({FORCE_UNIT})"] = np.round(sdmax[:200], 4)
    if pred.E_mean is not None:
        rows[f"energy ({ENERGY_UNIT})"] = np.round(pred.E_mean[:200], 3)
        if pred.E_std is not None:
            rows[f"energy sd ({ENERGY_UNIT})"] = np.round(pred.E_std[:200], 4)
    if pred.in_train is not None and pred.in_train.any():
        rows["training frame"] = pred.in_train[:200]
    st.dataframe(rows, hide_index=True, width="stretch")
    st.caption(f"{source.n_frames:,} structure(s) of {source.formula}"
               + (" (first 200 shown)" if source.n_frames > 200 else "")
               + ". sd: latent (the model's uncertainty about the force itself), calibrated on its training frames; "
               "a large one marks a structure unlike anything the model trained on."
               + ("" if pred.E_mean is not None else " This model has no energy model: forces only."))
    stem = f"{entry.name}_{source.name or 'structures'}".replace(" ", "_").replace("/", "_").replace("=", "")
    d1, d2 = st.columns(2)
    d1.download_button("Predictions, extended XYZ (eV, Å)", data=lambda: predictions_file(pred, "extxyz"),
                       file_name=f"{stem}_predictions.extxyz", mime="text/plain", key=state.PRED_OWN_DOWNLOAD_EXTXYZ,
                       on_click="ignore", help="Arrays forces_pred, forces_std; info energy_pred, energy_std (eV, eV/Å): "
                                               "the same file as `python -m aff_app predict`.")
    d2.download_button(f"Predictions CSV ({FORCE_UNIT})", data=lambda: predictions_file(pred, "csv"),
                       file_name=f"{stem}_predictions.csv", mime="text/csv", key=state.PRED_OWN_DOWNLOAD_CSV,
                       on_click="ignore", help="One row per structure and atom, in kcal/mol and kcal/mol/Å.")
