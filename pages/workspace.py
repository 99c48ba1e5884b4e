"""Workspace page: what the server keeps for this session and for everyone — data, models, and their files.

The storyboard; each part is drawn by ``aff_app.ui.workspace_sections`` over ``aff_app.workspace``.
Nothing here is lost by a reload: the session's key is in the address (``?s=``).
"""

import streamlit as st

from aff_app.ui import workspace_sections as ws_ui

st.title("Workspace")
st.caption("Loaded data and trained models are kept on disk under the workspace folder, so a reload, a second tab "
           "on the same address, or a restart of the server finds them again. Identical fits are computed once "
           "and shared.")

ws = ws_ui.require_workspace()
# -- this session: its address, and a fresh start
ws_ui.session_card(ws)
# -- files that failed their checks (reported, never loaded)
ws_ui.problems_section(ws)
# -- stored data: open, download, delete
ws_ui.data_section(ws)
# -- stored models: add to the session, rename, download, delete
ws_ui.models_section(ws)
