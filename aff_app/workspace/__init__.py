"""The workspace: loaded data, trained models and sessions kept on disk (issue 19).

Files plus the stdlib's ``sqlite3`` for the index, under one folder
(:func:`default_root`: ``$AFF_WORKSPACE`` or ``~/.aff_app/workspace``); no
server to run. Pure library: the app's ``aff_app.ui`` calls it, nothing here
imports Streamlit.

* :class:`Workspace` — ``put_data``/``get_data``/``list_data`` (content-addressed),
  ``put_model``/``get_model``/``list_models``/``rename_model``/``delete_model``/``model_path``,
  sessions (``new_session``, ``session_state``, ``attach``, ``detach_model``, ``forget_session``),
  the fit cache (``cached_model``), job records that outlive the server (``record_job``, ``session_jobs``,
  ``interrupt_stale_jobs``, ``mark_reported``), and checks (``problems``, ``scan``);
* :func:`fit_key` — the shared fit cache's key: data fingerprint, settings, split, code version.
"""

from aff_app.workspace.fitcache import IGNORED_SETTINGS, fit_key
from aff_app.workspace.records import (
    PROBLEM_KINDS,
    JOB_RECORD_STATES,
    DataEntry,
    JobRecord,
    ModelEntry,
    Problem,
    ScanReport,
    SessionRecord,
    WorkspaceError,
    WorkspaceFileError,
)
from aff_app.workspace.store import ENV_VAR, MAX_NAME_LENGTH, THIS_SERVER, Workspace, default_root, server_alive

__all__ = [
    "Workspace", "default_root", "fit_key", "DataEntry", "ModelEntry", "SessionRecord", "JobRecord", "JOB_RECORD_STATES", "Problem", "ScanReport",
    "WorkspaceError", "WorkspaceFileError", "PROBLEM_KINDS", "IGNORED_SETTINGS", "ENV_VAR", "MAX_NAME_LENGTH",
    "THIS_SERVER", "server_alive",
]
