"""Cooperative cancellation of long runs (training, learning curves, simulation).

The library's long functions report through a ``progress(fraction, message)``
callback. A caller that wants to stop one early makes that callback raise
:class:`Cancelled`: :func:`aff_app.gp.force.fit_force_model`,
:func:`aff_app.workflows.training.train_model`, :func:`aff_app.workflows.learning.learning_curve` and
:func:`aff_app.io.simulate.simulate_trajectory` catch only their own specific
errors, so the exception leaves them untouched and nothing half-made is
returned. :class:`CancelToken` is the flag such a callback checks;
:func:`cancellable` wraps a callback so that it checks one.

No Streamlit here (the app cancels a job through its token: ``aff_app.jobqueue``).
"""

from __future__ import annotations

import threading
from typing import Callable

__all__ = ["Cancelled", "CancelToken", "cancellable"]

Progress = Callable[[float, str], None]


class Cancelled(Exception):
    """A long run stopped at the user's request (raised from a progress callback).

    Deliberately not a ValueError/RuntimeError: the library's ``except`` clauses
    for its own failures never catch it, so it reaches the caller that asked
    for the cancellation.
    """


class CancelToken:
    """A thread-safe "please stop" flag shared by the requester and the running job.

    Examples
    --------
    >>> token = CancelToken("training")
    >>> token.check()            # nothing happens
    >>> token.cancel()
    >>> token.cancelled
    True
    """

    def __init__(self, what: str = "run") -> None:
        self.what = str(what)
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop at its next progress report."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self, message: str = "") -> None:
        """Raise :class:`Cancelled` when :meth:`cancel` was called."""
        if self._event.is_set():
            where = f" (at: {message})" if message else ""
            raise Cancelled(f"{self.what} cancelled{where}")

    def __repr__(self) -> str:
        return f"CancelToken({self.what!r}, cancelled={self.cancelled})"


def cancellable(progress: Progress | None, token: CancelToken) -> Progress:
    """``progress`` wrapped so that every report first checks ``token`` (raising :class:`Cancelled`)."""

    def report(fraction: float, message: str) -> None:
        token.check(message)
        if progress is not None:
            progress(fraction, message)

    return report
