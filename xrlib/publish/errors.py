"""Exceptions of the publishing layer, in the style of :mod:`xrlib.core.errors` (one-line messages)."""

from __future__ import annotations

from xrlib.core.errors import InputError


class BookError(RuntimeError):
    """A stage failed or the HTML build failed (one-line message, exit status 1)."""


class BookUsageError(InputError):
    """Bad ``xrlib book`` arguments (one-line message naming the argument, exit status 2)."""

    def __init__(self, problem: str):
        super().__init__(None, problem)
