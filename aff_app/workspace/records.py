"""The typed records of the workspace and its two errors.

Every row of the index comes back as one of these frozen dataclasses (never a
dict read by string keys). Times are Unix seconds (UTC), sizes bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aff_app.errors import AFFError

__all__ = ["WorkspaceError", "WorkspaceFileError", "DataEntry", "ModelEntry", "SessionRecord", "JobRecord", "Problem",
           "ScanReport", "PROBLEM_KINDS", "JOB_RECORD_STATES"]

#: States of a recorded job: the queue's, plus 'interrupted' (its server stopped while it was queued or running).
JOB_RECORD_STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")


class WorkspaceError(AFFError, ValueError):
    """A request the workspace refuses: a malformed or unknown key, an invalid or taken name."""


class WorkspaceFileError(WorkspaceError):
    """A file of the workspace is missing, damaged, foreign or not what its index row says."""


@dataclass(frozen=True)
class DataEntry:
    """One stored trajectory, content-addressed by its fingerprint.

    Attributes
    ----------
    key : str
        ``Trajectory.fingerprint`` (SHA-256 of z, R, E, F in internal units): the file is ``data/<key>.npz``.
    name, formula : str
        As the trajectory had them when it was stored.
    n_frames, n_atoms : int
    has_labels : bool
        Energies and forces present (trainable).
    source : str
        The file the data was first read from (its provenance), not the workspace copy.
    size_bytes : int
        Size of the stored file.
    created : float
    """

    key: str
    name: str
    formula: str
    n_frames: int
    n_atoms: int
    has_labels: bool
    source: str
    size_bytes: int
    created: float


@dataclass(frozen=True)
class ModelEntry:
    """One stored model file (the one format of ``aff_app.gp.persistence``).

    Attributes
    ----------
    id : str
        32 hexadecimal digits; the file is ``models/<id>.npz``.
    name : str
        Unique among the models of the same data.
    data_key : str or None
        The :class:`DataEntry` it was trained on (None: e.g. an uploaded model whose data is not stored).
    mode : str
        ``'aff'``, ``'gdml'``, ``'sgdml'`` or a peer.
    n_train : int
    has_energy : bool
    cache_key : str or None
        The fit-cache key it answers (:func:`aff_app.workspace.fit_key`), None when not cached.
    size_bytes : int
    created : float
    metrics : dict or None
        Held-out metrics stored with it (``TrainedModel.metrics``), None when not evaluated.
    """

    id: str
    name: str
    data_key: str | None
    mode: str
    n_train: int
    has_energy: bool
    cache_key: str | None
    size_bytes: int
    created: float
    metrics: dict | None = field(default=None, hash=False)


@dataclass(frozen=True)
class SessionRecord:
    """What a browser session had open: restored from its URL key after a reload or a restart.

    Attributes
    ----------
    key : str
        The URL-safe session key.
    data_key : str or None
        The current data.
    model_ids : tuple of str
        The session's models, in the order they were attached.
    created, updated : float
    """

    key: str
    data_key: str | None
    model_ids: tuple[str, ...]
    created: float
    updated: float


#: Kinds of :class:`Problem`: a file without an index row, a row without its file, a file that fails
#: its checks, a leftover temporary file of an interrupted write.
PROBLEM_KINDS = ("foreign", "missing", "corrupt", "temporary")


@dataclass(frozen=True)
class JobRecord:
    """One long job of a session as the index keeps it, so that a server restart cannot make it vanish.

    Attributes
    ----------
    id : str
        The queue's job id (uuid4 hex).
    session : str
        The session key it belongs to.
    kind, label : str
        As the queue has them ('training', 'learning_curve', 'md', ...; 'AFF, M = 200').
    state : str
        One of :data:`JOB_RECORD_STATES`.
    server : str
        'host:pid:start' of the server process that ran it (a restart is a new one).
    submitted, started, finished : float or None
    error : str or None
        Why it failed or was interrupted.
    partial : str or None
        JSON of what it had finished (e.g. learning-curve rows), written as it went.
    reported : bool
        Whether the session was told that the job was interrupted.
    """

    id: str
    session: str
    kind: str
    label: str
    state: str
    server: str
    submitted: float
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    partial: str | None = None
    reported: bool = False


@dataclass(frozen=True)
class Problem:
    """One thing wrong in the workspace, with the message shown to the user.

    Attributes
    ----------
    kind : {'foreign', 'missing', 'corrupt', 'temporary'}
    path : Path
        The file concerned.
    message : str
        What is wrong and what to do.
    entry : str or None
        The data key or model id of the index row concerned (None for a foreign or temporary file).
    """

    kind: str
    path: Path
    message: str
    entry: str | None = None


@dataclass(frozen=True)
class ScanReport:
    """The result of :meth:`aff_app.workspace.Workspace.scan`.

    Attributes
    ----------
    n_data, n_models : int
        Index rows whose file passed the checks.
    problems : tuple of Problem
    """

    n_data: int
    n_models: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """True when nothing is wrong (leftover temporary files count as wrong: they waste space)."""
        return not self.problems

    def of_kind(self, kind: str) -> tuple[Problem, ...]:
        """The problems of one kind of :data:`PROBLEM_KINDS`."""
        if kind not in PROBLEM_KINDS:
            raise WorkspaceError(f"problem kind must be one of {', '.join(PROBLEM_KINDS)}, got {kind!r}")
        return tuple(p for p in self.problems if p.kind == kind)
