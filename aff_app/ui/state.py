"""Every ``st.session_state`` key the app uses, in one place, plus small helpers.

Rules (for everyone adding a page):

- Never write a bare string key in a page: add a constant here and import it.
- Widget keys double as test handles (``at.button(key=...)``, ``at.slider(key=...)``).
- Derived state (models, predictions...) should remember the
  ``Trajectory.fingerprint`` it was computed from, so a newly loaded data set
  is never silently mixed with results of the previous one.
- A full page reload starts a fresh Streamlit session; ``aff_app.ui.session_store``
  restores the data and models from the workspace (key ``?s=`` in the URL).
  Pages that need data still call :func:`require_trajectory` first.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from aff_app.io.trajectory import Trajectory

# -- app-wide state -------------------------------------------------------------------
#: The loaded ``Trajectory`` (replaced only when a new load succeeds).
TRAJECTORY = "trajectory"
#: True once this session has tried to open the default sample (so that a user
#: who loads something else is never overridden by the default again).
DEFAULT_SAMPLE_TRIED = "default_sample_tried"

#: The Data page's file, absolute (``st.page_link``/``st.switch_page`` accept it from any
#: page, and from test apps whose entry point lives elsewhere).
DATA_PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "data.py")

# -- Data page widgets -------------------------------------------------------------------
DATA_SOURCE_TABS = "data_source_tabs"
#: Bundled sample picker and its "Load" button.
SAMPLE_CHOICE = "data_sample_choice"
SAMPLE_LOAD = "data_sample_load"
#: Upload and its options.
UPLOAD_FILE = "data_upload_file"
UPLOAD_FORMAT = "data_upload_format"
UPLOAD_FRAMES = "data_upload_frames"
UPLOAD_LABEL_SET = "data_upload_label_set"
UPLOAD_ENERGY_KEY = "data_upload_energy_key"
UPLOAD_FORCES_KEY = "data_upload_forces_key"
UPLOAD_ENERGY_UNIT = "data_upload_energy_unit"
UPLOAD_LENGTH_UNIT = "data_upload_length_unit"
UPLOAD_LOAD = "data_upload_load"
#: ``(file_id, sha256)`` of the current upload, so large files are hashed once.
UPLOAD_DIGEST = "data_upload_digest"
#: Option widgets whose choices depend on the uploaded file (reset when the file changes).
UPLOAD_FILE_DEPENDENT = (UPLOAD_LABEL_SET, UPLOAD_ENERGY_KEY, UPLOAD_FORCES_KEY)
#: Simulation inputs.
SIM_MODE = "data_sim_mode"
SIM_MOLECULE = "data_sim_molecule"
SIM_SMILES = "data_sim_smiles"
SIM_STEPS = "data_sim_steps"
SIM_TEMPERATURE = "data_sim_temperature"
SIM_TIMESTEP = "data_sim_timestep"
SIM_EQUILIBRATION = "data_sim_equilibration"
SIM_SAMPLE_EVERY = "data_sim_sample_every"
SIM_SEED = "data_sim_seed"
SIM_RUN = "data_sim_run"
#: Frame explorer (slider, 3D view options).
FRAME = "data_frame"
SHOW_FORCES = "data_show_forces"
ARROW_LENGTH = "data_arrow_length"
SHOW_LABELS = "data_show_labels"
ENERGY_CHART = "data_energy_chart"
FORCE_CHART = "data_force_chart"
#: Downloads.
DOWNLOAD_EXTXYZ = "data_download_extxyz"
DOWNLOAD_NPZ = "data_download_npz"


# -- helpers ------------------------------------------------------------------------------


def get_trajectory() -> Trajectory | None:
    """The loaded trajectory, or None."""
    traj = st.session_state.get(TRAJECTORY)
    return traj if isinstance(traj, Trajectory) else None


def set_trajectory(traj: Trajectory) -> None:
    """Make ``traj`` the loaded data set and reset the frame selection.

    Call it only before the frame slider is drawn in the current run (the Data
    page loads data above the explorer), because it resets the slider's key.
    """
    if not isinstance(traj, Trajectory):
        raise TypeError(f"expected a Trajectory, got {type(traj).__name__}")
    st.session_state[TRAJECTORY] = traj
    st.session_state.pop(FRAME, None)
    from aff_app.ui import session_store  # (imports this module)

    session_store.remember_data(traj)


def require_trajectory() -> Trajectory:
    """Return the loaded trajectory, or explain what to do and stop the page.

    Other pages start with ``traj = require_trajectory()``: on a fresh session
    (e.g. after a browser reload) they show a pointer to the Data page instead
    of failing.
    """
    traj = get_trajectory()
    if traj is None:
        st.info("No trajectory loaded — go to the Data page to pick a sample, upload a file or simulate one.")
        st.page_link(DATA_PAGE, label="Go to the Data page", icon="🗂️")
        st.stop()
    return traj


# == Symmetry and Covariance pages (pages/symmetry.py, pages/covariance.py) ==================
# -- the active symmetry, shared with every page that needs PE sets or the PS kernel ---------
#: The active ``aff_app.symmetry.SymmetryInfo`` (detected, method 'data'/'graph', or the
#: user's override, method 'user') of the trajectory whose fingerprint is ``SYMMETRY_FOR``.
#: Read it with ``aff_app.ui.symmetry_widgets.get_symmetry(traj)`` (None when it belongs to
#: another data set) or ``ensure_symmetry(traj)`` (detects with method 'data' when missing).
SYMMETRY = "symmetry"
#: ``Trajectory.fingerprint`` the active symmetry belongs to.
SYMMETRY_FOR = "symmetry_for"
#: ``(fingerprint, method, n_samples, seed)`` of the detection the active symmetry came from.
SYMMETRY_SOURCE = "symmetry_source"
#: Message of the last rejected override (shown with st.error; the active sets stay).
SYMMETRY_ERROR = "symmetry_error"
#: Message of the last accepted override (shown with st.success).
SYMMETRY_NOTICE = "symmetry_notice"
#: Persistent copies of the Symmetry page's settings (widget state is dropped while another
#: page is shown; these restore it).
SYM_SETTINGS = "sym_settings"
# -- Symmetry page widgets ---------------------------------------------------------------------
SYM_METHOD = "sym_method"
SYM_N_SAMPLES = "sym_n_samples"
SYM_SEED = "sym_seed"
SYM_SHOW_LABELS = "sym_show_labels"
SYM_OVERRIDE_TEXT = "sym_override_text"
SYM_APPLY = "sym_apply"
SYM_RESET = "sym_reset"
SYM_MERGE_SETS = "sym_merge_sets"
SYM_MERGE = "sym_merge"
SYM_SPLIT_SET = "sym_split_set"
SYM_SPLIT = "sym_split"
SYM_COST_M = "sym_cost_m"
# -- Covariance page (Fig. 1) ---------------------------------------------------------------------
#: Persistent copies of the Covariance page's settings, with the fingerprint they belong to.
COV_SETTINGS = "cov_settings"
COV_FRAMES = "cov_frames"
COV_GAMMA = "cov_gamma"
COV_PS = "cov_ps"
COV_CORRELATION = "cov_correlation"
COV_SET = "cov_set"
COV_SET_FRAMES = "cov_set_frames"
COV_FULL_CHART = "cov_full_chart"
COV_SET_CHART = "cov_set_chart"
COV_EMPIRICAL_CHART = "cov_empirical_chart"
# == end of Symmetry and Covariance keys =====================================================


# == Train, Predictions and Compare pages (pages/train.py, pages/predictions.py, pages/compare.py) ==
#: Page files, absolute (for ``st.page_link`` from any page).
TRAIN_PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "train.py")
PREDICTIONS_PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "predictions.py")
COMPARE_PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "compare.py")
# -- shared model state ----------------------------------------------------------------------------
#: The session's ``aff_app.workflows.registry.ModelRegistry`` (read with ``model_widgets.get_registry()``).
MODELS = "models"
#: ``{(model uid, data fingerprint, n_test, seed): aff_app.workflows.predictions.HeldOut}`` (read-only arrays).
HELD_OUT = "held_out"
#: ``(level, message)`` or a list of them: the last train/upload/rename outcome, shown after the rerun it triggers.
TRAIN_NOTICE = "train_notice"
#: Persistent copies of the Train page's settings (widget state is dropped off-page).
TRAIN_SETTINGS = "train_settings"
# -- Train page widgets -------------------------------------------------------------------------------
TRAIN_MODEL = "train_model"
TRAIN_M = "train_m"
TRAIN_SEED = "train_seed"
TRAIN_N_TEST = "train_n_test"
TRAIN_HYPER = "train_hyper"
TRAIN_GAMMA = "train_gamma"
TRAIN_LAM = "train_lam"
TRAIN_ENERGY_MODEL = "train_energy_model"
TRAIN_SCHEDULER = "train_scheduler"  # where a fit's γ candidates and large PE sets run (aff_app.parallel)
#: (data fingerprint, uid of the searched model) the hand-set γ/λ were last filled from (Train, Compare).
TRAIN_HYPER_FROM = "train_hyper_from"
TRAIN_NAME = "train_name"
TRAIN_RUN = "train_run"
TRAIN_UPLOAD = "train_upload"
TRAIN_UPLOAD_ADD = "train_upload_add"
#: The upload expander: keyed, so a rerun that adds or removes a notice above it neither closes it nor
#: remounts the uploader inside (which dropped the chosen file: the first upload after a fit failed).
TRAIN_UPLOAD_EXPANDER = "train_upload_expander"
TRAIN_MANAGE = "train_manage"
TRAIN_RENAME_TEXT = "train_rename_text"
TRAIN_RENAME = "train_rename"
TRAIN_REMOVE = "train_remove"
TRAIN_DOWNLOAD = "train_download"
# -- Predictions page widgets ---------------------------------------------------------------------------
PRED_MODEL = "pred_model"
PRED_N_TEST = "pred_n_test"
PRED_KIND = "pred_kind"
PRED_ATOM = "pred_atom"
PRED_COMPONENT = "pred_component"
PRED_RESIDUAL = "pred_residual"
PRED_FRAME = "pred_frame"
PRED_COLOR_BY = "pred_color_by"
PRED_ARROW_SCALE = "pred_arrow_scale"
PRED_FORCE_BAND_CHART = "pred_force_band_chart"
PRED_ENERGY_BAND_CHART = "pred_energy_band_chart"
PRED_FORCE_PARITY_CHART = "pred_force_parity_chart"
PRED_ENERGY_PARITY_CHART = "pred_energy_parity_chart"
PRED_CALIBRATION_CHART = "pred_calibration_chart"
PRED_DOWNLOAD_CSV = "pred_download_csv"
PRED_DOWNLOAD_ENERGY_CSV = "pred_download_energy_csv"
PRED_DOWNLOAD_EXTXYZ = "pred_download_extxyz"
#: Predictions page, "other structures": the upload, the button, results {(model uid, data fingerprint): Predicted}.
PRED_OWN_UPLOAD = "pred_own_upload"
PRED_OWN_RUN = "pred_own_run"
PRED_OWN_RESULTS = "pred_own_results"
PRED_OWN_DOWNLOAD_CSV = "pred_own_download_csv"
PRED_OWN_DOWNLOAD_EXTXYZ = "pred_own_download_extxyz"
# -- Compare page -------------------------------------------------------------------------------------------
#: ``{'fingerprint', 'params', 'rows'}`` of the last learning-curve run.
CMP_RESULT = "cmp_result"
#: ``[(level, message)]`` a finished learning-curve job left (cancelled: the points kept), shown once.
CMP_NOTICE = "cmp_notice"
CMP_MODELS = "cmp_models"
CMP_SIZES = "cmp_sizes"
CMP_N_TEST = "cmp_n_test"
CMP_SEED = "cmp_seed"
CMP_HYPER = "cmp_hyper"
CMP_GAMMA = "cmp_gamma"
CMP_LAM = "cmp_lam"
CMP_HYPER_FROM = "cmp_hyper_from"
CMP_ENERGY = "cmp_energy"
#: Where the learning curve's points run: serial, local[:N] or tcp://host:port (aff_app.parallel).
CMP_SCHEDULER = "cmp_scheduler"
CMP_RUN = "cmp_run"
CMP_CURVE_CHART = "cmp_curve_chart"
CMP_UNCERTAINTY_CHART = "cmp_uncertainty_chart"
CMP_SCATTER_CHART = "cmp_scatter_chart"
#: Compare page, conservation check (issue 16): models, MD settings, the run, its reports and chart.
CMP_CONS_MODELS = "cmp_cons_models"
CMP_CONS_STEPS = "cmp_cons_steps"
CMP_CONS_DT = "cmp_cons_dt"
CMP_CONS_T = "cmp_cons_t"
CMP_CONS_RUN = "cmp_cons_run"
CMP_CONS_CANCEL = "cmp_cons_cancel"
CMP_CONS_RESULT = "cmp_cons_result"
CMP_CONS_CHART = "cmp_cons_chart"
# == end of Train, Predictions and Compare keys ==================================================


# == Bad input, long runs and cancellation (issue 6) ============================================
#: Cancel buttons shown while a job runs.
TRAIN_CANCEL = "train_cancel"
CMP_CANCEL = "cmp_cancel"
SIM_CANCEL = "data_sim_cancel"
#: Data page: drop the duplicate frames the validation report found.
DATA_DROP_DUPLICATES = "data_drop_duplicates"
#: Data page: read the labels in the energy unit the label-scale check names.
DATA_READ_UNIT = "data_read_unit"
#: ``(level, message)`` shown once after the Data page changed the loaded data by a button.
DATA_NOTICE = "data_notice"
#: Upload option: drop frames with NaN/inf values instead of refusing the file.
UPLOAD_DROP_NONFINITE = "data_upload_drop_nonfinite"
# == end of issue-6 keys ==========================================================================


# -- MD page
#: The last MD run of the emulator in this session: an object with ``z`` (N,), ``positions`` (T, N, 3) Å,
#: ``times_ps`` (T,), ``potential_energy`` (T,) kcal/mol (the model's) and ``label`` (str).
MD_RUN = "md_run"
#: The MD page's file, absolute (``st.page_link`` from any page).
MD_PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "md.py")
#: The reference run (GFN2-xTB) from the same start as ``MD_RUN``, or None.
MD_REFERENCE = "md_reference"
#: ``{'fingerprint', 'model', 'start', 'run', 'reference', 'reference_note'}`` of the last MD run on the data of
#: ``fingerprint`` (written as soon as each run ends, so an interrupted reference keeps the model run).
MD_RESULT = "md_result"
#: What finished MD jobs left to say: list of (level, text), shown once on the MD page.
MD_NOTICE = "md_notice"
#: ``{(model uid, hash of the start geometry): largest force sd there}`` (kcal/mol/Å; the threshold's default).
MD_START_SD = "md_start_sd"
#: ``(model uid, data fingerprint)`` the form's start frame and threshold were last defaulted for.
MD_FORM_FOR = "md_form_for"
# -- MD page widgets
MD_MODEL = "md_model"
MD_START = "md_start"
MD_FRAME = "md_frame"
MD_ENSEMBLE = "md_ensemble"
MD_TEMPERATURE = "md_temperature"
MD_TIMESTEP = "md_timestep"
MD_STEPS = "md_steps"
MD_RECORD_EVERY = "md_record_every"
MD_FRICTION = "md_friction"
MD_SEED = "md_seed"
MD_USE_THRESHOLD = "md_use_threshold"
MD_SD_THRESHOLD = "md_sd_threshold"
MD_CONSERVATIVE = "md_conservative"
MD_WITH_REFERENCE = "md_with_reference"
MD_RUN_BUTTON = "md_run_button"
MD_CANCEL = "md_cancel"
MD_TRACES_CHART = "md_traces_chart"
MD_BONDS_CHART = "md_bonds_chart"
MD_ENERGY_CHART = "md_energy_chart"
MD_DOWNLOAD = "md_download"
MD_DOWNLOAD_REFERENCE = "md_download_reference"


# -- Design page (pages/design.py; issue 17, item 3)
DESIGN_PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "design.py")
#: ``{'pool': pool key, 'run': run id, 'result': aff_app.workflows.design.DesignResult}`` of the last run
#: (written after every finished round, so a cancelled or interrupted run keeps its rounds).
DESIGN_RESULT = "design_result"
#: What finished design jobs left to say: list of (level, text), shown once on the Sequential design page.
DESIGN_NOTICE = "design_notice"
#: ``{pool key: aff_app.workflows.design.XTBLabels}``: GFN2-xTB labels computed so far, reused by later runs.
DESIGN_LABELLERS = "design_labellers"
DESIGN_POOL = "design_pool"
DESIGN_MODEL = "design_model"
DESIGN_INITIAL = "design_initial"
DESIGN_BATCH = "design_batch"
DESIGN_BUDGET = "design_budget"
DESIGN_N_TEST = "design_n_test"
DESIGN_SEED = "design_seed"
DESIGN_STRATEGIES = "design_strategies"
DESIGN_HYPER = "design_hyper"
DESIGN_SCORE = "design_score"
DESIGN_CANDIDATES = "design_candidates"
DESIGN_RUN = "design_run"
DESIGN_CANCEL = "design_cancel"
DESIGN_CURVE_CHART = "design_curve_chart"
DESIGN_TRACE_CHART = "design_trace_chart"
DESIGN_TRACE_STRATEGY = "design_trace_strategy"
DESIGN_DOWNLOAD = "design_download"
# -- end of Design page keys


# -- Workspace (issue 19): the session kept on disk, its key in the URL (aff_app.ui.session_store)
#: This browser session's workspace key (also in the address as ``?s=``).
WS_SESSION = "ws_session"
#: Why the workspace cannot be used (the session then lives in memory only), or absent.
WS_UNAVAILABLE = "ws_unavailable"
#: ``[(level, message)]`` left by a restore or a failed write, shown once.
WS_NOTICE = "ws_notice"
#: Ids of stored models that failed to load in this session (not retried on every run).
WS_SKIPPED = "ws_skipped"
#: The Workspace page's file, absolute.
WORKSPACE_PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "workspace.py")
#: Owner of this session's jobs when the workspace is unavailable (else the workspace key).
JOB_OWNER = "job_owner"
#: Ids of this session's jobs not yet collected (``aff_app.ui.background``).
JOBS_WATCHED = "jobs_watched"
#: Ids of this session's jobs collected after they ended.
JOBS_FINISHED = "jobs_finished"
#: Ids of the jobs that were active when the sidebar was last drawn (a job ending reruns the page).
JOBS_SEEN_ACTIVE = "jobs_seen_active"
