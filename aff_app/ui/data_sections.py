"""The Data page's sections: each function draws one part of the page (pages/data.py is the storyboard).

The loaded trajectory lives in ``st.session_state[state.TRAJECTORY]`` and is replaced only when a
load succeeds; a failed load, upload or simulation says why and keeps what was loaded.
"""

from __future__ import annotations

import streamlit as st

from aff_app.errors import AFFError
from aff_app.io import files as data_lib
from aff_app.io import simulate
from aff_app.io.trajectory import Trajectory
from aff_app.ui import data_widgets as dw
from aff_app.ui import state
from aff_app.units import ENERGY_UNITS, LENGTH_UNITS

AUTO = "auto"


def _kept_tail() -> str:
    """The sentence saying which data set stays loaded after a failure (empty when none)."""
    kept = state.get_trajectory()
    return f"\n\nThe previously loaded data set ({kept.name or kept.formula}) is still loaded." if kept else ""


def load_into_session(loader, where, *, announce: bool = True) -> None:
    """Run ``loader()``; on success make its trajectory the loaded one, else show why (old data stays)."""
    try:
        traj = loader()
    except AFFError as exc:  # one place per action turns the user's errors into a message; a bug shows as one
        where.error(f"Loading failed: {dw.error_message(exc)}{_kept_tail()}")
        return
    state.set_trajectory(traj)
    if announce:
        where.success(f"Loaded {traj.name or traj.formula}: {traj.n_frames:,} frames of {traj.formula}.")


def notices_and_default_sample() -> None:
    """The last job's notice (a simulation), and the benzene sample a fresh session opens on."""
    notice = st.session_state.pop(state.DATA_NOTICE, None)
    if notice:
        getattr(st, notice[0])(notice[1])

    # A fresh session (first visit, or a browser reload) opens on the bundled benzene sample.
    if state.get_trajectory() is None and not st.session_state.get(state.DEFAULT_SAMPLE_TRIED):
        st.session_state[state.DEFAULT_SAMPLE_TRIED] = True
        load_into_session(lambda: dw.load_sample(dw.DEFAULT_SAMPLE), st.container(), announce=False)


def sample_tab(tab_sample) -> None:
    """Load a bundled sample."""
    samples = dw.sample_files()
    if not samples:
        st.warning(f"No samples found in {dw.SAMPLE_DIR}.")
    else:
        names = list(samples)
        col_pick, col_btn = st.columns([3, 1], vertical_alignment="bottom")
        choice = col_pick.selectbox(
            "Sample (sGDML .npz, kcal/mol and Å)", names,
            index=names.index(dw.DEFAULT_SAMPLE) if dw.DEFAULT_SAMPLE in names else 0,
            key=state.SAMPLE_CHOICE,
        )
        if col_btn.button("Load sample", key=state.SAMPLE_LOAD, type="primary"):
            load_into_session(lambda: dw.load_sample(choice), tab_sample)


def upload_tab(tab_upload) -> None:
    """Upload a file: format, frames, label set, keys and units (suggested from the file), then load it."""
    upload = st.file_uploader(
        f"Trajectory file ({', '.join('.' + e for e in data_lib.SUPPORTED_EXTENSIONS)}; up to {data_lib.MAX_UPLOAD_MB} MB)",
        type=list(data_lib.SUPPORTED_EXTENSIONS),
        key=state.UPLOAD_FILE,
        max_upload_size=data_lib.MAX_UPLOAD_MB,
    )
    if upload is not None:
        too_big = dw.upload_too_large(upload)
        if too_big:
            st.error(f"Loading failed: {too_big}{_kept_tail()}")
        else:
            raw = upload.getvalue()
            # hash each upload once; a new file resets the options that depend on it
            memo = st.session_state.get(state.UPLOAD_DIGEST)
            if not memo or memo[0] != upload.file_id:
                memo = (upload.file_id, dw.digest(raw))
                st.session_state[state.UPLOAD_DIGEST] = memo
                for key in state.UPLOAD_FILE_DEPENDENT:
                    st.session_state.pop(key, None)
            content_hash = memo[1]

            c1, c2 = st.columns(2)
            fmt = c1.selectbox("Format", [AUTO, *data_lib.FORMATS], key=state.UPLOAD_FORMAT,
                               help="auto: from the file extension (.xyz is read as extended XYZ).")
            frames = c2.text_input("Frames (ASE slice)", value=":", key=state.UPLOAD_FRAMES,
                                   help="':' all, '::10' every 10th, '-500:' the last 500, '5' one frame.")
            fmt = None if fmt == AUTO else fmt
            opts = dw.label_options_cached(content_hash, upload.name, fmt, _data=raw)
            if opts["error"]:
                st.warning(f"Could not inspect the file: {opts['error']}")
            c3, c4, c5 = st.columns(3)
            label_set = energy_key = forces_key = None
            if opts["label_sets"]:
                label_set = c3.selectbox(
                    "Label set", opts["label_sets"], key=state.UPLOAD_LABEL_SET,
                    help="rmd17 = recomputed (E, F); md17 = original MD17 labels (E_md17, F_md17). Never mix them.",
                )
            else:
                c3.selectbox("Label set", ["— (none found)"], disabled=True, key=state.UPLOAD_LABEL_SET)
            # explicit keys: default to the library's suggestion only when no label set covers the file
            e_opts = [AUTO, *[k for k in opts["energy"] if k]]
            f_opts = [AUTO, *[k for k in opts["forces"] if k]]
            e_default = 0 if opts["label_sets"] or len(e_opts) == 1 else 1
            f_default = 0 if opts["label_sets"] or len(f_opts) == 1 else 1
            energy_key = c4.selectbox("Energy key", e_opts, index=e_default, key=state.UPLOAD_ENERGY_KEY,
                                      help="Which field holds the energies (suggested from the file).")
            forces_key = c5.selectbox("Forces key", f_opts, index=f_default, key=state.UPLOAD_FORCES_KEY,
                                      help="Which field holds the forces (suggested from the file).")
            c6, c7 = st.columns(2)
            energy_unit = c6.selectbox("Energy unit in the file", [AUTO, *ENERGY_UNITS], key=state.UPLOAD_ENERGY_UNIT,
                                       help="auto: what the file records, else kcal/mol for .npz and eV for ASE formats. "
                                            "Forces are taken in energy unit / length unit.")
            length_unit = c7.selectbox("Length unit in the file", [AUTO, *LENGTH_UNITS], key=state.UPLOAD_LENGTH_UNIT,
                                       help="auto: what the file records, else Å.")
            drop_nonfinite = st.checkbox(
                "Drop frames with NaN or infinite values", key=state.UPLOAD_DROP_NONFINITE,
                help="Off: a file with any NaN/inf value is refused, naming the first one. On: those frames are "
                     "dropped (and listed in the report below).")

            def _load_upload():
                """The upload read with the options chosen above (cached on its hash)."""
                return dw.load_cached(
                    content_hash, upload.name, fmt, frames.strip() or ":", label_set,
                    None if energy_key == AUTO else energy_key,
                    None if forces_key == AUTO else forces_key,
                    None if energy_unit == AUTO else energy_unit,
                    None if length_unit == AUTO else length_unit,
                    "drop" if drop_nonfinite else "error",
                    _data=raw,
                )

            if st.button("Load file", key=state.UPLOAD_LOAD, type="primary"):
                load_into_session(_load_upload, tab_upload)


def simulate_tab(tab_sim) -> None:
    """Run a GFN2-xTB simulation of a named molecule or a SMILES, with progress and cancel."""
    st.caption(
        "Langevin dynamics with the GFN2-xTB calculator (tblite): a small, reproducible data set "
        "when no ab initio data is at hand. Takes a few seconds per hundred steps for a small molecule."
    )
    mode = st.radio("Molecule from", ["name", "SMILES"], horizontal=True, key=state.SIM_MODE)
    if mode == "name":
        molecules = simulate.list_molecules()
        molecule = st.selectbox("Molecule", molecules,
                                index=molecules.index("ethanol") if "ethanol" in molecules else 0,
                                key=state.SIM_MOLECULE)
        smiles = None
    else:
        smiles = st.text_input("SMILES", value="CCO", key=state.SIM_SMILES).strip() or None
        molecule = None
    s1, s2, s3, s4, s5, s6 = st.columns(6)
    steps = s1.number_input(f"Frames (≤ {simulate.MAX_STEPS:,})", min_value=1, max_value=simulate.MAX_STEPS,
                            value=200, step=50, key=state.SIM_STEPS)
    sample_every = s2.number_input("MD steps per frame", min_value=1, max_value=1000, value=2,
                                   key=state.SIM_SAMPLE_EVERY)
    equilibration = s3.number_input("Equilibration steps", min_value=0, max_value=100_000, value=200, step=100,
                                    key=state.SIM_EQUILIBRATION, help="MD steps run and discarded first.")
    temperature = s4.number_input("Temperature (K)", min_value=1.0, max_value=5000.0, value=300.0, step=50.0,
                                  key=state.SIM_TEMPERATURE)
    timestep = s5.number_input("Time step (fs)", min_value=0.05, max_value=2.0, value=0.5, step=0.05,
                               key=state.SIM_TIMESTEP)
    seed = s6.number_input("Seed", min_value=0, value=0, step=1, key=state.SIM_SEED)
    from aff_app.ui import background as bg

    clicked = st.button("Run simulation", key=state.SIM_RUN, type="primary")
    job = bg.active_job("simulation")
    if clicked and job is None:
        settings = dict(smiles=smiles, steps=int(steps), temperature_K=float(temperature), timestep_fs=float(timestep),
                        equilibration_steps=int(equilibration), sample_every=int(sample_every), seed=int(seed))

        def task(job, molecule=molecule, settings=settings):
            """The simulation with the settings above (no Streamlit in here)."""
            return simulate.simulate_trajectory(molecule, **settings, progress=job.report)

        job = bg.submit_task("simulation", f"Simulation: {molecule or smiles}, {int(steps)} frames", task)
    elif clicked:
        tab_sim.info(f"A simulation of this session is still running ({job.label}): cancel it first to start another.")
    if job is None:
        return
    bg.run_here(job, cancel_key=state.SIM_CANCEL, cancel_label="Cancel",
                caption="The simulation runs on the server: you may switch pages — the sidebar shows its progress; "
                        "the data set it makes is loaded when it ends.")
    st.rerun()  # the loaded data and the notice are drawn above


def collect_simulation(job) -> None:
    """A finished simulation job: its trajectory becomes the loaded data; a failure or a cancel says why (the data
    loaded meanwhile stays)."""
    label = job.label.removeprefix("Simulation: ")
    if job.state == "done" and isinstance(job.result, Trajectory):
        traj = job.result
        state.set_trajectory(traj)
        st.session_state[state.DATA_NOTICE] = (
            "success", f"Loaded the simulation {label}: {traj.n_frames:,} frames of {traj.formula}.")
    elif job.state == "failed":
        st.session_state[state.DATA_NOTICE] = ("error", f"Simulation failed ({label}): {job.error}{_kept_tail()}")
    else:
        st.session_state[state.DATA_NOTICE] = (
            "warning", f"Simulation cancelled ({label}): no trajectory was stored; the loaded data and the session's "
                       "models are unchanged.")


def require_loaded() -> Trajectory:
    """The loaded trajectory; when there is none, say how to get one and stop the page."""
    traj = state.get_trajectory()
    if traj is None:
        st.info("Nothing loaded yet: pick a bundled sample, upload a file or run a simulation above.")
        st.stop()
    return traj
