"""Shared fixtures.

``smoke_book`` builds the whole book once per test session with the ``smoke`` profile — every
notebook executed by papermill through ``xrlib book`` into a temporary run root and book folder,
then the HTML — so that the notebook smoke tests (``test_notebooks.py``) and the browser checks
(``test_book.py``) share one execution instead of running the notebooks twice.

Under pytest-xdist every worker holds one core's worth of threads: the workers run torch on one
thread (:func:`pytest_configure`) and the smoke book's notebooks too (``xdist_threads.one_core_env``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from xdist_threads import one_core_env

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
BOOK_SOURCES = ("_config.yml", "_toc.yml", "intro.md", "how_to_run.md", "data.md", "methods.md", "threats.md",
                "architecture.md", "running_at_scale.md", "performance.md", "own_model.md", "appendix.md", "_static")


def _shared_folder(tmp_path_factory, name: str) -> Path:
    """A folder for an expensive session fixture, shared by all pytest-xdist workers of this session
    (``make test`` runs ``-n auto --dist loadfile``), so it is built once; without xdist, this session's."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above the workers' own
    return base / name


def pytest_configure(config):
    # benchmark scripts run by the tests write their results here, never into benchmarks/results/
    if not os.environ.get("XRLIB_BENCH_RESULTS"):
        import tempfile

        os.environ["XRLIB_BENCH_RESULTS"] = tempfile.mkdtemp(prefix="xrlib-bench-results-")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # workers share the cores: one torch thread each
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    """Build the smoke book once; returns its folders and the command's output."""
    from filelock import FileLock

    tmp = _shared_folder(tmp_path_factory, "smoke_book")
    tmp.mkdir(parents=True, exist_ok=True)
    with FileLock(str(tmp) + ".lock"):
        return _build_smoke_book(tmp)


def _build_smoke_book(tmp: Path) -> dict:
    book = tmp / "book"
    done = tmp / "result.json"
    if done.is_file():  # another worker built it
        res = json.loads(done.read_text(encoding="utf-8"))
        return _smoke_book_result(tmp, book, res["stdout"], res["stderr"], res["returncode"])
    book.mkdir()
    for name in BOOK_SOURCES:
        src = REPO / "book" / name
        if src.is_dir():
            shutil.copytree(src, book / name)
        else:
            shutil.copy(src, book / name)
    shutil.copy(REPO / "README.md", tmp / "README.md")  # its generated section is rewritten by --readme
    cmd = [sys.executable, "-m", "xrlib", "book", "--profile", "smoke", "--run-root", str(tmp / "runs"),
           "--book-dir", str(book), "--readme", str(tmp / "README.md")]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace",
                         timeout=2400, env={**os.environ, **one_core_env()})
    (ARTIFACTS / "book").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "book" / "xrlib-book.log").write_text(res.stdout + "\n" + res.stderr, encoding="utf-8")
    executed = book / "executed" / "smoke"
    if executed.is_dir():  # keep the executed notebooks for inspection
        shutil.copytree(executed, ARTIFACTS / "notebooks", dirs_exist_ok=True)
    log = book / "_build" / "jupyter-book.log"
    if log.is_file():
        shutil.copy(log, ARTIFACTS / "book" / "jupyter-book.log")
    done.write_text(json.dumps({"stdout": res.stdout, "stderr": res.stderr, "returncode": res.returncode}), encoding="utf-8")
    return _smoke_book_result(tmp, book, res.stdout, res.stderr, res.returncode)


def _smoke_book_result(tmp: Path, book: Path, stdout: str, stderr: str, returncode: int) -> dict:
    return {"book": book, "html": book / "_build" / "html", "stdout": stdout, "stderr": stderr,
            "returncode": returncode, "runs": tmp / "runs", "executed": book / "executed" / "smoke",
            "readme": tmp / "README.md", "env": one_core_env()}


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """``(profile, run, results)`` of a tiny study run with trained models (see ``tests/toy_study.py``)."""
    from toy_study import build_toy_run

    return build_toy_run(tmp_path_factory.mktemp("runs"))  # one per worker: tests write into its run folder
