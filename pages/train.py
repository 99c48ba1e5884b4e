"""Train page: fit AFF, GDML or sGDML on the loaded trajectory; keep, rename, download and upload models.

The storyboard; each step is drawn by ``aff_app.ui.train_sections``. The cost of the fit is shown
before the button is pressed, and a fit above the memory budget is refused there. Trained models
live in the session's ``ModelRegistry`` (``state.MODELS``); a failure leaves them and the data
untouched.
"""

import streamlit as st

from aff_app.ui import model_widgets as mw
from aff_app.ui import state
from aff_app.ui import train_sections as ts

st.title("Train")
st.caption(
    "Fit a force model on M random frames of the loaded trajectory; the frames it never saw are held out for "
    "the Predictions page. Positions in Å, forces in kcal/mol/Å, energies in kcal/mol."
)

traj = state.require_trajectory()
registry = mw.get_registry()
ts.notices()

if ts.trainable(traj):  # else it says why, and the models below stay usable
    # -- what to fit, and what it will cost before anything runs
    form = ts.settings_form(traj)
    symmetry = ts.symmetry_caption(traj, form.mode)
    over_budget = ts.cost_card(traj, form, symmetry)
    # -- the fit: progress, cancel, then the new model's summary (or why it failed)
    ts.train_button(traj, form, symmetry, over_budget)

# -- the session's models: table, rename, remove, download; and uploads from this page or the CLI
ts.models_section(registry, traj.fingerprint)
ts.upload_section(registry, traj)
