"""Exceptions for bad user input and missing model weights: one line that names the culprit.

Every error that a user can cause with a file or an argument is an :class:`InputError` whose
message names the offending file (or flag, or command) and then what is wrong with it, so that
command-line tools can print it as one line and exit with status 2 instead of showing a
traceback. Lower-level detail (e.g. the multi-line messages of ITK's readers) goes to
``details``, which ``xrlib --verbose`` prints below that line.

Domain errors stay with their domain (e.g. :class:`xrlib.anatomy.deformation.DeformationError`
for a virtual subject that cannot be made plausible): they are not the user's input.
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A file or argument given by the user cannot be used; the message says which and why.

    ``source`` names the file, flag or command (``None``: the problem says it all), ``problem``
    is one line, and ``details`` are optional extra lines for verbose output or a log.
    """

    def __init__(self, source: str | Path | None, problem: str, details: tuple[str, ...] | list[str] = ()):
        self.source = None if source is None else str(source)
        self.problem = problem
        self.details = tuple(details)
        super().__init__(problem if source is None else f"{source}: {problem}")

    def __reduce__(self):  # picklable across processes (the default would call cls(message))
        return (type(self), (self.source, self.problem, self.details))


class UsageError(InputError):
    """A bad command-line argument: ``source`` is the command (``"xrlib render"``), the problem names the flag."""


class MissingWeightsError(RuntimeError):
    """Model weights needed for a step are not on disk (and are never downloaded implicitly)."""
