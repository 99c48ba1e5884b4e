"""Data page: load a trajectory (bundled sample, upload, or GFN2-xTB simulation), inspect it, download it.

The storyboard; each step is drawn by ``aff_app.ui.data_sections`` and ``aff_app.ui.data_widgets``.
The loaded trajectory is replaced only when a load succeeds.
"""

import streamlit as st

from aff_app.ui import data_sections as ds
from aff_app.ui import data_widgets as dw

st.title("Data")
st.caption(
    "Load a molecular-dynamics trajectory with energies and forces. "
    "Everything is converted to kcal/mol, Å and kcal/mol/Å on loading."
)
ds.notices_and_default_sample()

# -- three ways to get data
tab_sample, tab_upload, tab_sim = st.tabs(["Bundled sample", "Upload a file", "Simulate (GFN2-xTB)"])
with tab_sample:
    ds.sample_tab(tab_sample)
with tab_upload:
    ds.upload_tab(tab_upload)
with tab_sim:
    ds.simulate_tab(tab_sim)

# -- the loaded data set: summary, checks before training, frames, downloads
traj = ds.require_loaded()
dw.summary_card(traj)
st.markdown("##### Checks before training")
dw.show_validation(traj)
dw.frame_explorer(traj)
st.markdown("##### Download the loaded data")
dw.download_buttons(traj)
