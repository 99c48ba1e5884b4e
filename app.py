"""aff_app entry point: page configuration and navigation only.

Run with ``bash scripts/start.sh`` (or ``streamlit run app.py``). Each page is
a thin script under ``pages/``; to add one, add one ``st.Page`` line below.

Icons must be emoji: the browser turns the current page's icon into the
favicon, and for ``:material/...:`` icons it fetches that from fonts.gstatic.com
(the app must make no request beyond 127.0.0.1); emoji become a ``data:`` URL.
"""

import streamlit as st

from aff_app.ui import background, runlog, session_store

st.set_page_config(page_title="aff_app · atomized force fields", page_icon="⚛️", layout="wide")

PAGES = [
    st.Page("pages/data.py", title="Data", icon="🗂️", default=True),
    st.Page("pages/symmetry.py", title="Symmetry", icon="🔀"),
    st.Page("pages/covariance.py", title="Covariance", icon="🟥"),
    st.Page("pages/train.py", title="Train", icon="🏋️"),
    st.Page("pages/predictions.py", title="Predictions", icon="🎯"),
    st.Page("pages/compare.py", title="Compare", icon="📈"),
    st.Page("pages/md.py", title="MD", icon="🧪"),
    st.Page("pages/design.py", title="Sequential design", icon="🧭"),
    st.Page("pages/workspace.py", title="Workspace", icon="🗄️"),
]

page = st.navigation(PAGES)
with runlog.timed(page.title):  # only with AFF_RUN_LOG set (the load test)
    # the session's key in the URL; its data and models restored after a reload or a server restart (issue 19)
    session_store.begin_run()
    # fits run in the server's job queue, independent of the page: finished ones reach the session, the
    # sidebar shows the rest
    background.collect_finished()
    background.sidebar()
    session_store.notices()
    page.run()
