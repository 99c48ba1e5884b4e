"""Streamlit helpers: the only package of aff_app that imports streamlit.

- ``state``: every ``st.session_state`` key and the ``require_trajectory()`` guard.
- ``data_widgets``: cached loading and the reusable summary / frame-explorer widgets.
"""
