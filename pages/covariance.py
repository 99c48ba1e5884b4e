"""Covariance page (the paper's Fig. 1): the force covariance the kernel implies, per PE set, and in the data.

The storyboard; each step is drawn by ``aff_app.ui.covariance_sections``.
"""

import streamlit as st

from aff_app.ui import covariance_sections as cs
from aff_app.ui import state
from aff_app.ui import symmetry_widgets as sw

st.title("Force covariance (Fig. 1)")
st.caption(
    "How strongly the model couples the force components of different atoms and configurations. The Matérn 5/2 "
    "kernel on inverse distances implies a covariance for every pair of force components (method.md: "
    "cov(F_a, F_b) = J_aᵀ H J_b). AFF keeps only the blocks inside each PE set: the picture shows what it drops."
)

traj = state.require_trajectory()
sym = sw.ensure_symmetry(traj)
view = cs.settings(traj, sym)
frames = cs.full_and_empirical(traj, sym, view)
cs.what_aff_keeps(traj, sym, view, frames)
cs.one_set(traj, sym, view)
sw.save_settings(state.COV_SETTINGS, cs.SETTINGS, fingerprint=traj.fingerprint)
