"""An opt-in log of every script run's duration on the server (for the load test, ``benchmarks/load_test.py``).

Set ``AFF_RUN_LOG=/path/file.jsonl`` before starting the app: each run of ``app.py`` appends one JSON line
``{"t": unix time at the end, "page": title, "s": seconds, "outcome": "ok" | exception name}``. A run that
Streamlit stops for a newer one ends with ``StopException``; a rerun request with ``RerunException``. Off by
default: nothing is written and nothing is timed.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Iterator

#: Environment variable naming the log file.
ENV_VAR = "AFF_RUN_LOG"
_LOCK = threading.Lock()


@contextlib.contextmanager
def timed(page: str) -> Iterator[None]:
    """Time the script run of ``page`` (the whole of ``app.py``) into ``$AFF_RUN_LOG`` when it is set."""
    path = os.environ.get(ENV_VAR, "").strip()
    if not path:
        yield
        return
    start, outcome = time.perf_counter(), "ok"
    try:
        yield
    except BaseException as exc:  # control flow of Streamlit (stop, rerun) included: recorded, then re-raised
        outcome = type(exc).__name__
        raise
    finally:
        line = json.dumps({"t": time.time(), "page": page, "s": time.perf_counter() - start, "outcome": outcome})
        with _LOCK, open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
