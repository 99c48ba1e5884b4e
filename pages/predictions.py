"""Predictions page: a trained model on its held-out frames (the paper's Fig. 4 and Table I).

The storyboard; each step is drawn by ``aff_app.ui.prediction_sections``. The held-out predictions
are computed once per (model, data, test frames) and kept in the session; every figure is drawn
from them.
"""

import streamlit as st

from aff_app.ui import model_widgets as mw
from aff_app.ui import prediction_sections as ps
from aff_app.ui import state

st.title("Predictions")
st.caption(
    "How a trained model does on frames it never saw: forces and energies along the held-out frames with their "
    "95% intervals, parity plots, calibration, and the forces on the molecule. Forces in kcal/mol/Å, energies "
    "in kcal/mol."
)

traj = state.require_trajectory()
models = mw.require_models(traj)

# -- which model, which interval, which frames
entry, kind = ps.pick_model(models)
if ps.has_reference(traj):
    held, frames_note = ps.held_out(entry, traj)
    rep = mw.held_report(held, ps.LEVEL, kind)

    # -- Table I, then the figures: forces and energy along the frames (Fig. 4), parity, calibration, the molecule
    ps.metrics_card(entry, held, rep, frames_note, kind)
    residual = ps.force_band(traj, held, kind)
    ps.energy_band(entry, held, residual)
    ps.parity_and_calibration(held, rep, kind)
    ps.molecule_view(traj, held, kind)

    # -- the same predictions file as the CLI writes
    ps.downloads(entry, held, kind)

# -- structures without labels: the loaded ones, or an upload (forces, energies, sds, download)
ps.other_structures(entry, traj)
