"""MD page: molecular dynamics with a trained model, its live force uncertainty, and a GFN2-xTB reference.

The storyboard; each step is drawn by ``aff_app.ui.md_sections`` over ``aff_app.workflows.md`` (ASE's
velocity Verlet / Langevin). The run is a job of the server: it goes on when the user switches page (the sidebar shows it).
A run that stops early (the sd threshold, a molecule that falls apart, Cancel) keeps every frame it
recorded; the data and the session's models are never changed.
"""

import streamlit as st

from aff_app.ui import md_sections as ms
from aff_app.ui import state

st.title("MD")
st.caption("Run dynamics with a model of the session: NVE (velocity Verlet) or NVT (Langevin), with the model's "
           "calibrated force sd recorded along the way — it rises where the model extrapolates, and the run can stop "
           "there. Compare with GFN2-xTB from the same start: bond-length and energy distributions.")

traj = state.require_trajectory()
ms.notices()

# -- the model and the settings (start frame, ensemble, temperature, time step, steps, threshold, reference)
entry = ms.choose_model(traj)
form = ms.md_form(entry, traj)

# -- the run (a server job): progress, Cancel, live traces; stored as soon as it ends (stopped runs keep their frames)
ms.run_button(traj, form)

# -- the last run on this data: stop message, numbers, traces, 3D playback, download, the reference comparison
ms.results(traj, entry)
