"""Symmetry page: the permutations the data realises, its PE sets on the molecule, overrides, and what they save.

The storyboard; each step is drawn by ``aff_app.ui.symmetry_sections``. The active sets are kept in
the session for the Covariance and Train pages.
"""

import streamlit as st

from aff_app.ui import state
from aff_app.ui import symmetry_sections as ss
from aff_app.ui import symmetry_widgets as sw

st.title("Symmetry")
st.caption(
    "Atoms are permutationally equivalent (PE) when the trajectory itself exchanges them: a relabelling of "
    "same-element atoms maps one configuration onto another. The orbits of those permutations are the PE sets; "
    "AFF fits one Gaussian process per set, and the permutationally symmetric (PS) kernel averages over the "
    "permutations."
)

traj = state.require_trajectory()
detected, active, source = ss.detection(traj)
ss.summary(active, detected)
rows = ss.sets_on_molecule(traj, active)
ss.override(traj, active, detected, source, rows)
ss.cost(traj, active)
sw.save_settings(state.SYM_SETTINGS, ss.SETTINGS)
