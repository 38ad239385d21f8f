"""Figures of the book (matplotlib, labelled axes and units)."""

from xrlib.plots.figures import *  # noqa: F401,F403
