"""Shared fixtures.

``smoke_book`` builds the whole book once per test session with the ``smoke`` profile — every
notebook executed by papermill through ``xrlib book`` into a temporary run root and book folder,
then the HTML — so that the notebook smoke tests (``test_notebooks.py``) and the browser checks
(``test_book.py``) share one execution instead of running the notebooks twice.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
BOOK_SOURCES = ("_config.yml", "_toc.yml", "intro.md", "how_to_run.md", "data.md", "methods.md", "appendix.md")


#: Session fixtures that are expensive to build. Under pytest-xdist (``make test`` runs ``-n auto
#: --dist loadgroup``) every test using one of them goes to the same worker, so each is built once;
#: every other test goes with its module, so module-scoped fixtures are built once too.
SHARED_FIXTURES = ("smoke_book", "toy_run")


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = [name for name in SHARED_FIXTURES if name in getattr(item, "fixturenames", ())]
        item.add_marker(pytest.mark.xdist_group(used[0] if used else item.nodeid.split("::")[0]))


def pytest_configure(config):
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):  # workers share the cores: one torch thread each
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    """Build the smoke book once; returns its folders and the command's output."""
    tmp = tmp_path_factory.mktemp("smoke_book")
    book = tmp / "book"
    book.mkdir()
    for name in BOOK_SOURCES:
        shutil.copy(REPO / "book" / name, book / name)
    shutil.copy(REPO / "README.md", tmp / "README.md")  # its generated section is rewritten by --readme
    cmd = [sys.executable, "-m", "xrlib", "book", "--profile", "smoke", "--run-root", str(tmp / "runs"),
           "--book-dir", str(book), "--readme", str(tmp / "README.md")]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=2400)
    (ARTIFACTS / "book").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "book" / "xrlib-book.log").write_text(res.stdout + "\n" + res.stderr, encoding="utf-8")
    executed = book / "executed" / "smoke"
    if executed.is_dir():  # keep the executed notebooks for inspection
        shutil.copytree(executed, ARTIFACTS / "notebooks", dirs_exist_ok=True)
    log = book / "_build" / "jupyter-book.log"
    if log.is_file():
        shutil.copy(log, ARTIFACTS / "book" / "jupyter-book.log")
    return {"book": book, "html": book / "_build" / "html", "stdout": res.stdout, "stderr": res.stderr,
            "returncode": res.returncode, "runs": tmp / "runs", "executed": executed, "readme": tmp / "README.md"}


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """``(profile, run, results)`` of a tiny study run with trained models (see ``tests/toy_study.py``)."""
    from toy_study import build_toy_run

    return build_toy_run(tmp_path_factory)
