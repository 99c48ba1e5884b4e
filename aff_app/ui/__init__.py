"""Streamlit helpers: the only package of aff_app that imports streamlit.

- ``state``: every ``st.session_state`` key and the ``require_trajectory()`` guard.
- ``data_widgets``: cached loading and the reusable summary / frame-explorer widgets.
- ``session_store``: the session kept in the workspace (its key in the URL); ``background``: the job queue.

Importing this package also makes sure a page never runs without ``app.py`` (below).
"""

# Imported here, once, under this package's import lock: plotly looks pandas up in sys.modules, and when
# twenty sessions drew their first page at once, some found pandas half-imported by another session's
# thread ("partially initialized module 'pandas' has no attribute 'Series'", the load test).
import pandas  # noqa: E402,F401
import plotly.graph_objects  # noqa: E402,F401


def _through_app_py() -> None:
    """Make a page that Streamlit ran on its own rerun through ``app.py`` (once per server process).

    Streamlit 1.67 keeps a relic of its first multipage design: until some run in the process has called
    ``st.navigation``, a ``pages/`` folder beside the entry point makes it run a requested page's file
    directly (``PagesManager.uses_pages_directory``). So on a freshly started server the first request
    for a deep link (``/train?s=…``, e.g. a tab reconnecting after a restart) skipped ``app.py``: no
    navigation, no restored session ("No trajectory loaded"). Every page imports this package; when it
    finds the flag still set it clears it and reruns, and the rerun executes ``app.py``, whose
    ``st.navigation`` opens the requested page with the session restored.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        import streamlit as st
        from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

        PagesManager.uses_pages_directory = False
        if get_script_run_ctx() is not None:  # in a script run (not a plain import by a test or the CLI)
            st.rerun()


_through_app_py()
