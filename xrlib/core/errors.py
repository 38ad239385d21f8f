"""Exceptions raised for bad user input.

Every error that a user can cause with a file or an argument is an :class:`InputError` whose
message names the offending file (or argument) and what is wrong with it, so that command-line
tools can print it as one line and exit with status 2 instead of showing a traceback.
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A file or argument given by the user cannot be used; the message says which and why."""

    def __init__(self, source: str | Path | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(problem if source is None else f"{source}: {problem}")


class MissingWeightsError(RuntimeError):
    """Model weights needed for a step are not on disk (and are never downloaded implicitly)."""
