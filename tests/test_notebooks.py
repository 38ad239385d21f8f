"""Notebooks: committed without outputs, a tagged parameters cell, and a papermill smoke run each.

The smoke runs are those of the session's smoke book build (``tests/conftest.py``): every notebook
executed by papermill in study order with the ``smoke`` profile into one temporary run folder
(later stages reuse earlier stages' artifacts). A cell error fails the test of that notebook.
Executed copies are kept under ``test-artifacts/notebooks/`` for inspection.
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_smoke_run(path, smoke_book):
    """Each notebook ran under papermill with the smoke profile (in the session's smoke book build)."""
    out = smoke_book["executed"] / path.name
    assert out.is_file(), f"{path.name} was not executed: {smoke_book['stderr'][-2000:]}"
    executed = nbformat.read(out, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "not every cell ran"
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert images >= 1, "a chapter without a single figure"
    assert (smoke_book["runs"] / "smoke" / f"{path.stem}.timings.json").is_file()
