"""Compare page: every model of the session side by side, and learning curves (the paper's Fig. 3 and Fig. 5).

The storyboard; each step is drawn by ``aff_app.ui.compare_sections``. Learning curves are computed on
demand; every point's cost is checked against the memory budget first.
"""

import streamlit as st

from aff_app.ui import compare_sections as cs
from aff_app.ui import model_widgets as mw
from aff_app.ui import state

st.title("Compare")
st.caption("The models trained in this session side by side, and learning curves: held-out error, training time "
           "and interval quality against the number of training frames M.")

traj = state.require_trajectory()
registry = mw.get_registry()
cs.notices()  # learning curves and conservation checks run in the job queue (what they finished is kept)
cs.models_table(registry)

# -- learning curves: settings and plan, the run, the curves
st.subheader("Learning curves (Fig. 3) and interval quality (Fig. 5)")
cs.require_labelled(traj)
form = cs.curve_form(traj)
cs.compute_button(traj, form)
cs.curves(traj, form)

# -- is each model's force field the gradient of an energy? (NVE drift, loop work, Jacobian asymmetry)
cs.conservation_section(registry, traj)
