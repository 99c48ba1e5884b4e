"""In-page progress bars: the text with elapsed and remaining time, and a thread-safe callback.

Long jobs (fits, learning curves, MD, sequential design, conservation checks,
simulations) run in the server's job queue (``aff_app.ui.background``,
``aff_app.jobqueue``), independent of the page; this module only drives an
``st.progress`` bar for work a page does while the user waits (held-out
predictions), and formats the progress text.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from aff_app.cancel import CancelToken


Progress = Callable[[float, str], None]

def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{int(s // 60)} min {int(s % 60):02d} s"


def progress_text(message: str, fraction: float, elapsed_s: float, estimate_s: float | None = None) -> str:
    """The bar's text: the step, the fraction, and (after 2 s) the elapsed and the likely remaining time.

    The remaining time extrapolates the elapsed time once a fifth is done
    (elapsed·(1 − f)/f); before that it is the estimate minus the elapsed time,
    when there is an estimate.
    """
    text = f"{message} ({fraction:.0%})"
    if elapsed_s < 2.0:
        return text
    text += f" · {_duration(elapsed_s)} elapsed"
    if fraction >= 0.2:
        left = elapsed_s * (1.0 - fraction) / fraction
    elif estimate_s is not None:
        left = max(estimate_s - elapsed_s, 0.0)
    else:
        return text
    return text + (", finishing" if left < 1.0 else f", about {_duration(left)} left")


def progress_callback(bar, token: CancelToken | None = None, *, estimate_s: float | None = None) -> Progress:
    """A ``progress(fraction, message)`` callback that drives ``bar`` (an ``st.progress``) and honours ``token``.

    Thread-safe: the library may report from worker threads (the per-set
    factorisations run in a thread pool), where Streamlit has no session
    context; those reports are kept and shown at the next report from the
    script's own thread. Every report first checks ``token`` (raising
    :class:`Cancelled` in whichever thread reported). Updating the bar is a
    Streamlit call, so it is also where Streamlit stops a run that a click has
    superseded. The text carries the elapsed and remaining time
    (:func:`progress_text`; ``estimate_s`` until a fifth is done).
    """
    owner = threading.get_ident()
    start = time.perf_counter()
    latest: list = [0.0, ""]

    def update(fraction: float, message: str) -> None:
        if token is not None:
            token.check(message)
        try:
            f = min(max(float(fraction), 0.0), 1.0)
        except (TypeError, ValueError):
            f = latest[0]
        latest[:] = [max(f, latest[0]), message]
        if threading.get_ident() != owner:
            return
        bar.progress(latest[0], text=progress_text(latest[1], latest[0], time.perf_counter() - start, estimate_s))

    return update
