"""The Workspace page's sections (pages/workspace.py is the storyboard).

Every action is one call of :class:`aff_app.workspace.Workspace`; a refusal (a name taken,
data still used by models, a damaged file) is shown as a message and changes nothing.
"""

from __future__ import annotations

import datetime as dt

import streamlit as st

from aff_app.errors import AFFError
from aff_app.workflows.kinds import MODE_LABELS
from aff_app.workspace import Workspace

from aff_app.ui import model_widgets as mw
from aff_app.ui import session_store, state

#: Session-state keys of this page's widgets.
NEW_SESSION = "ws_new_session"
DEEP_SCAN = "ws_deep_scan"
DATA_PICK = "ws_data_pick"
DATA_OPEN = "ws_data_open"
DATA_DELETE = "ws_data_delete"
DATA_DOWNLOAD = "ws_data_download"
MODEL_PICK = "ws_model_pick"
MODEL_ADD = "ws_model_add"
MODEL_NAME = "ws_model_name"
MODEL_RENAME = "ws_model_rename"
MODEL_DELETE = "ws_model_delete"
MODEL_DOWNLOAD = "ws_model_download"
NOTICE = "ws_page_notice"


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f}"


def require_workspace() -> Workspace:
    """The workspace, or why there is none (and stop the page)."""
    ws = session_store.workspace()
    if ws is None:
        st.error(st.session_state.get(state.WS_UNAVAILABLE, "The workspace cannot be used."))
        st.stop()
    notice = st.session_state.pop(NOTICE, None)
    if notice:
        getattr(st, notice[0])(notice[1])
    return ws


def session_card(ws: Workspace) -> None:
    """This session's key and folder, and the 'start a fresh session' button."""
    key = session_store.session_key()
    with st.container(border=True):
        st.markdown(f"**This session** · key `{key}` · folder `{ws.root}`")
        st.caption("The address of this page carries the key (`?s=…`): bookmark it or open it in another tab to "
                   "come back to this session. Set another folder with the environment variable AFF_WORKSPACE "
                   "before starting the app.")
        st.button("Start a fresh session", key=NEW_SESSION, icon="✨", on_click=_start_fresh, args=(ws,),
                  help="An empty session with a new address; this one stays stored (its address still opens it).")


def _start_fresh(ws: Workspace) -> None:
    """``on_click``: a new workspace session, and an empty Streamlit session (before the rerun draws anything)."""
    try:
        fresh = ws.new_session()
    except AFFError as exc:
        st.session_state[NOTICE] = ("error", f"No new session: {exc}")
        return
    for k in list(st.session_state):
        del st.session_state[k]
    st.session_state[state.WS_SESSION] = fresh
    st.query_params[session_store.SESSION_PARAM] = fresh
    st.session_state[NOTICE] = ("success", "A fresh session started; the previous one stays stored under its old "
                                           "address.")


def problems_section(ws: Workspace) -> None:
    """Files that are missing, damaged, foreign or left over: each with what to do."""
    deep = st.session_state.get(DEEP_SCAN, False)
    report = ws.scan(deep=deep)
    if report.ok:
        st.success(f"{report.n_data} data set(s) and {report.n_models} model(s) stored; every file "
                   + ("passed its size and SHA-256 checks." if deep else "is present at its stored size."))
    else:
        st.warning(f"{len(report.problems)} problem(s) in the workspace; those files are never loaded, everything "
                   "else works:")
        for p in report.problems:
            st.markdown(f"- **{p.kind}** `{p.path.name}`: {p.message}")
    st.toggle("Check every file's SHA-256 (reads all files)", key=DEEP_SCAN)


def data_section(ws: Workspace) -> None:
    """Stored data sets: table, open in this session, download, delete."""
    st.subheader("Stored data")
    entries = ws.list_data()
    if not entries:
        st.caption("None yet: data loaded on the Data page is stored here.")
        return
    current = state.get_trajectory()
    st.dataframe([{"name": d.name, "formula": d.formula, "frames": d.n_frames, "atoms": d.n_atoms,
                   "labels": "yes" if d.has_labels else "no", "size (MB)": _mb(d.size_bytes),
                   "stored": _when(d.created), "in this session": current is not None and current.fingerprint == d.key,
                   "source": d.source} for d in entries], hide_index=True, width="stretch")
    by_key = {d.key: d for d in entries}
    pick = st.selectbox("Data set", list(by_key), format_func=lambda k: f"{by_key[k].name} ({by_key[k].formula}, "
                        f"{by_key[k].n_frames} frames) · {k[:8]}", key=DATA_PICK)
    c_open, c_down, c_del = st.columns(3)
    if c_open.button("Open in this session", key=DATA_OPEN, width="stretch"):
        try:
            traj = ws.get_data(pick)
        except AFFError as exc:
            st.error(f"Could not open it: {exc}")
        else:
            state.set_trajectory(traj)
            st.session_state[NOTICE] = ("success", f"Opened {traj.name or traj.formula} ({traj.n_frames} frames).")
            st.rerun()
    c_down.download_button("Download (.npz)", data=lambda k=pick: ws.data_path(k).read_bytes(),
                           file_name=f"{by_key[pick].name or 'data'}.npz".replace(" ", "_"),
                           mime="application/octet-stream", key=DATA_DOWNLOAD, on_click="ignore", width="stretch")
    if c_del.button("Delete for good", key=DATA_DELETE, width="stretch",
                    help="Refused while stored models were trained on it (delete those first)."):
        try:
            ws.delete_data(pick)
        except AFFError as exc:
            st.error(f"Not deleted: {exc}")
        else:
            st.session_state[NOTICE] = ("info", f"Deleted the data {by_key[pick].name!r} from the workspace.")
            st.rerun()


def models_section(ws: Workspace) -> None:
    """Stored models (everyone's): table, add to this session, rename, download, delete."""
    st.subheader("Stored models")
    entries = ws.list_models()
    if not entries:
        st.caption("None yet: models trained or uploaded on the Train page are stored here.")
        return
    registry = mw.get_registry()
    mine = registry.uid_names()
    data_names = {d.key: d.name for d in ws.list_data()}
    st.dataframe([{"name": m.name, "model": MODE_LABELS.get(m.mode, m.mode), "M": m.n_train,
                   "energy": "yes" if m.has_energy else "no",
                   "force MAE (kcal/mol/Å)": mw.fmt((m.metrics or {}).get("force_mae"), ".3g"),
                   "data": data_names.get(m.data_key, "—"), "shared fit": "yes" if m.cache_key else "no",
                   "in this session": m.id in mine, "size (MB)": _mb(m.size_bytes), "stored": _when(m.created)}
                  for m in entries], hide_index=True, width="stretch")
    by_id = {m.id: m for m in entries}
    pick = st.selectbox("Model", list(by_id), format_func=lambda i: f"{by_id[i].name} · {data_names.get(by_id[i].data_key, 'no stored data')}",
                        key=MODEL_PICK)
    chosen = by_id[pick]
    c_add, c_name, c_ren, c_down, c_del = st.columns([1.2, 1.6, 0.8, 1, 1], vertical_alignment="bottom")
    if c_add.button("Add to this session", key=MODEL_ADD, disabled=pick in mine, width="stretch"):
        try:
            session_store.add_stored(ws, chosen, registry)  # first: a damaged file is refused before it is attached
            ws.attach(session_store.session_key(), model_id=pick)
        except AFFError as exc:
            st.error(f"Not added: {exc}")
        else:
            st.session_state[NOTICE] = ("success", f"Added {chosen.name!r} to this session.")
            st.rerun()
    new_name = c_name.text_input("New name", key=MODEL_NAME, placeholder=chosen.name)
    if c_ren.button("Rename", key=MODEL_RENAME, width="stretch"):
        try:
            stored = ws.rename_model(pick, new_name)  # first: the workspace's rule (unique per data) may refuse
            if pick in mine:
                registry.rename(mine[pick], stored.name, notify=False)
        except AFFError as exc:
            st.error(f"Rename failed: {exc}")
        else:
            st.session_state[NOTICE] = ("success", f"Renamed {chosen.name!r} to {new_name.strip()!r}.")
            st.session_state.pop(MODEL_NAME, None)
            st.rerun()
    c_down.download_button("Download (.npz)", data=lambda i=pick: ws.model_path(i).read_bytes(),
                           file_name=chosen.name.replace(" ", "_").replace("/", "_").replace("=", "") + ".npz",
                           mime="application/octet-stream", key=MODEL_DOWNLOAD, on_click="ignore", width="stretch")
    if c_del.button("Delete for good", key=MODEL_DELETE, width="stretch",
                    help="Removes the file: every session that has it loses it, and identical fits are computed "
                         "again."):
        try:
            if pick in mine:
                registry.remove(mine[pick], notify=False)
            ws.delete_model(pick)
        except AFFError as exc:
            st.error(f"Not deleted: {exc}")
        else:
            st.session_state[NOTICE] = ("info", f"Deleted {chosen.name!r} from the workspace.")
            st.rerun()
