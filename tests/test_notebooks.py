"""Notebooks: committed without outputs, a tagged parameters cell, and a papermill smoke run each.

The smoke runs are checked in ``tests/test_book.py`` (every test that reads the session's smoke book
lives in that one file, so under pytest-xdist one worker builds it while the other runs the rest).
"""

from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert [p.stem[:2] for p in NOTEBOOKS][:4] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_a_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and "parameters" in code[0].metadata.get("tags", []), "first code cell must be tagged 'parameters'"
    assert "profile" in code[0].source and "run_root" in code[0].source
    for cell in code:
        assert not cell.outputs and cell.execution_count is None, f"outputs committed in: {cell.source[:60]!r}"
        assert len(cell.source.splitlines()) <= 25, f"cell too long (logic belongs in xrlib): {cell.source[:60]!r}"
