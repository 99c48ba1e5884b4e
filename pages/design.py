"""Sequential design page: add the frames the model is least sure of, against random selection (issue 17, item 3).

The storyboard; each step is drawn by ``aff_app.ui.design_sections``. From a pool of frames (the loaded
trajectory, or the session's last MD run of the emulator) the run repeatedly labels the frames with the
largest predicted force variance (from the file, or with GFN2-xTB), refits, and scores every model on the
same held-out frames; random selection from the same pool with the same start and batches is the baseline.
"""

import streamlit as st

from aff_app.ui import design_sections as ds
from aff_app.ui import state

st.title("Sequential design")
st.caption("Uncertainty-driven sequential design (active learning): start from a few random frames, then repeatedly "
           "add the frames whose forces the model predicts with the largest variance, label them, refit — and compare "
           "the learning curve with random frames from the same pool. Method and measured numbers: docs/design.md.")

traj = state.require_trajectory()
ds.notices()

# -- the pool and the settings
pool = ds.pool_choice(traj)
form = ds.design_form(pool)

# -- the run (a server job): progress, Cancel (the finished rounds are kept)
ds.run_button(pool, form)

# -- the answer, the learning curves, the chosen frames on the energy trace, the download
st.subheader("Learning curves and chosen frames")
ds.results(pool)
