"""The root of every error that is the user's to fix.

A user error is bad input (a damaged or foreign file, a unit or frame
selection that does not fit the data, an impossible request such as more
training frames than the trajectory holds or a fit above the memory budget) or
a missing optional part; its message says what is wrong and how to fix it.
Every such class in the library derives from :class:`AFFError` (and keeps its
conventional base, e.g. ``ValueError``, so ``except ValueError`` still works).

The CLI reports an :class:`AFFError` with exit code 2 and its message, the app
as a message on the page; anything else is a bug in aff_app and is reported as
one (a traceback, exit code 1), never as the user's mistake.
"""

from __future__ import annotations

__all__ = ["AFFError"]


class AFFError(Exception):
    """An error the user can fix; the message says what is wrong and what to do."""
