"""The publishing layer: ``xrlib book`` (papermill execution, cache, failure handling, HTML book).

* Cache and failure behaviour are tested on one or two tiny notebooks in a temporary folder
  (``--notebooks`` / ``--book-dir`` point the command there), so they take seconds.
* The real smoke book (every notebook, then the HTML in headless Chromium) is tested in
  ``tests/test_smoke_book.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from xrlib.publish import pages as xpages
from xrlib.publish import readme as xreadme
from xrlib.publish.report import BookReport, StageResult

REPO = Path(__file__).resolve().parent.parent
BOOK_SOURCES = ("_config.yml", "_toc.yml", "intro.md", "how_to_run.md", "data.md", "methods.md", "appendix.md")


def xrlib_book(*args, cwd=REPO, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xrlib", "book", "--no-progress", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout, check=False)


def statuses(stdout: str) -> dict[str, str]:
    """stage -> status from the summary table."""
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"^(\d\d_\w+)\s+(ran|cached|failed|skipped)\b", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def tiny_notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = "quick"\nrun_root = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.fixture
def tiny(tmp_path):
    """Two tiny notebooks, an empty book folder and a run root in ``tmp_path``."""
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    tiny_notebook(nbs / "01_first.ipynb", "x = 1\nprint('first', profile)")
    tiny_notebook(nbs / "02_second.ipynb", "print('second', profile)")
    return {"nbs": nbs, "book": tmp_path / "book", "runs": tmp_path / "runs",
            "args": ["--profile", "smoke", "--notebooks", nbs, "--book-dir", tmp_path / "book",
                     "--run-root", tmp_path / "runs", "--no-html"]}


# ------------------------------------------------------------------------------------- cache


def test_cache_reuses_fresh_stages_and_invalidates_downstream(tiny):
    executed = tiny["book"] / "executed" / "smoke"
    first = xrlib_book(*tiny["args"])
    assert first.returncode == 0, first.stderr
    assert statuses(first.stdout) == {"01_first": "ran", "02_second": "ran"}
    assert (executed / "02_second.stamp.json").is_file()
    mtimes = {p.name: p.stat().st_mtime_ns for p in executed.iterdir()}

    # nothing changed: every stage cached, nothing executed or rewritten
    second = xrlib_book(*tiny["args"])
    assert second.returncode == 0, second.stderr
    assert statuses(second.stdout) == {"01_first": "cached", "02_second": "cached"}
    assert {p.name: p.stat().st_mtime_ns for p in executed.iterdir()} == mtimes

    # re-running an upstream stage (--only --force) makes the downstream one stale ...
    forced = xrlib_book(*tiny["args"], "--only", "01_first", "--force")
    assert forced.returncode == 0, forced.stderr
    assert statuses(forced.stdout) == {"01_first": "ran", "02_second": "skipped"}
    # ... so the next full run re-executes it, and only it
    again = xrlib_book(*tiny["args"])
    assert statuses(again.stdout) == {"01_first": "cached", "02_second": "ran"}

    # a changed notebook source and an override are part of the key
    tiny_notebook(tiny["nbs"] / "02_second.ipynb", "print('changed', profile)")
    changed = xrlib_book(*tiny["args"])
    assert statuses(changed.stdout) == {"01_first": "cached", "02_second": "ran"}
    with_p = xrlib_book(*tiny["args"], "-p", "extra", "[1, 2]")
    assert statuses(with_p.stdout) == {"01_first": "ran", "02_second": "ran"}
    nb = nbformat.read(executed / "01_first.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "extra = [1, 2]" in injected[0].source and 'profile = "smoke"' in injected[0].source


def test_a_stage_whose_run_artifacts_were_deleted_runs_again(tiny):
    """A stamp is no cache when the run folder it describes is gone (the stage's timings file is its witness)."""
    tiny_notebook(tiny["nbs"] / "01_first.ipynb", "from xrlib.core.stage import Stage\n"
                  "Stage('01_first', profile, reads=[], writes=[], run_root=run_root).summary()")
    first = xrlib_book(*tiny["args"])
    assert statuses(first.stdout) == {"01_first": "ran", "02_second": "ran"}, first.stdout + first.stderr
    assert statuses(xrlib_book(*tiny["args"]).stdout) == {"01_first": "cached", "02_second": "cached"}
    shutil.rmtree(tiny["runs"])
    again = xrlib_book(*tiny["args"])
    assert statuses(again.stdout) == {"01_first": "ran", "02_second": "ran"}, again.stdout + again.stderr


def test_only_refuses_when_an_upstream_stage_is_missing(tiny):
    res = xrlib_book(*tiny["args"], "--only", "02_second")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "01_first" in res.stderr
    assert not (tiny["book"] / "executed" / "smoke" / "02_second.ipynb").exists()


def test_bad_arguments_are_one_line_errors(tiny):
    for extra, needle in ((["-p", "profile", "paper"], "--profile"), (["--only", "09_nope"], "09_nope")):
        res = xrlib_book(*tiny["args"], *extra)
        assert res.returncode == 2 and needle in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    res = xrlib_book("--profile", "nope", "--notebooks", tiny["nbs"], "--book-dir", tiny["book"])
    assert res.returncode == 2 and "unknown profile" in res.stderr


def test_readme_without_markers_is_refused_before_anything_runs(tiny, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# a project\n\nno generated section here\n", encoding="utf-8")
    res = xrlib_book(*tiny["args"], "--readme", readme)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert f"book: {readme}: the generated section's markers are missing" in res.stderr
    assert not (tiny["book"] / "executed" / "smoke" / "01_first.ipynb").exists()
    assert readme.read_text(encoding="utf-8") == "# a project\n\nno generated section here\n"


def test_update_readme_replaces_only_the_generated_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{xreadme.README_BEGIN}\nold numbers\n{xreadme.README_END}\ntail\n", encoding="utf-8")
    xreadme.update_readme(readme, "new numbers\n")
    assert readme.read_text(encoding="utf-8") == f"head\n{xreadme.README_BEGIN}\nnew numbers\n{xreadme.README_END}\ntail\n"


def test_repository_readme_has_a_generated_section():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    i, j = text.find(xreadme.README_BEGIN), text.find(xreadme.README_END)
    assert 0 <= i < j, "README.md lacks the section that 'make book' regenerates"
    assert "Last `xrlib book --profile quick" in text[i:j]  # written by a quick build, not by hand


def test_kernel_runs_without_the_tcp_encryption_warning(tiny):
    res = xrlib_book(*tiny["args"])
    assert res.returncode == 0, res.stderr
    assert "without encryption" not in res.stdout + res.stderr, res.stderr
    assert not list(tiny["nbs"].glob("kernel-ipc*"))  # the IPC sockets live in a private temporary folder


def test_result_sections_are_read_from_the_run_folder(tmp_path):
    run = tmp_path / "runs" / "smoke"
    report = BookReport("smoke", [StageResult("01_a", "ran", 60.0, "cpu")])
    empty = xpages.findings_markdown(report, run)
    assert "No results in this run (no `headline.md` under `smoke/`)" in empty
    (run / "evaluation").mkdir(parents=True)
    (run / "evaluation" / "headline.md").write_text("**Study A.**\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (run / "later").mkdir()
    (run / "later" / "headline.md").write_text("**Study B.**\n")
    findings = xpages.findings_markdown(report, run)
    assert findings.index("**Study A.**") < findings.index("| 1 | 2 |") < findings.index("**Study B.**")
    section = xreadme.readme_markdown(report, run)
    assert section.index("**Study A.**") < section.index("**Study B.**") < section.index("Cost of this build")
    assert "| 01_a | ran | cpu | 1.0 |" in section


def test_a_chapter_page_opens_with_what_that_chapter_found(tmp_path):
    """The headline a stage wrote (found through its stage record's artifact digests) goes under the banner,
    above the chapter's own cells; a stage that wrote none, or has no record, gets no findings cell."""
    import json

    import nbformat

    from xrlib.publish.html import prepare_chapter

    run = tmp_path / "runs" / "smoke"
    (run / "pose").mkdir(parents=True)
    (run / "pose" / "headline.md").write_text("**Pose found this.**\n")
    (run / "pose" / "headline.png").write_bytes(b"png")
    (run / "evaluation").mkdir()
    (run / "evaluation" / "headline.md").write_text("**Another chapter's.**\n")
    record = {"artifacts": {"pose/headline.md": {"sha256": "x", "bytes": 1}, "pose/table.csv": {"sha256": "y", "bytes": 1}}}
    (run / "12_pose.timings.json").write_text(json.dumps(record))
    text = xpages.chapter_findings_markdown(run, "12_pose")
    assert text.startswith("## What this build found") and "**Pose found this.**" in text
    assert "![result figure](../generated/figures/pose.png)" in text and "Another chapter" not in text
    assert xpages.chapter_findings_markdown(run, "06_rotation") == ""  # no record
    (run / "05_training.timings.json").write_text(json.dumps({"artifacts": {"models/a.pt": {}}}))
    assert xpages.chapter_findings_markdown(run, "05_training") == ""  # wrote no headline

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 12 Pose\n\nHow the search works."),
                                         nbformat.v4.new_code_cell("x = 1")])
    src, dst = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    prepare_chapter(src, dst, "> banner", text)
    cells = nbformat.read(dst, as_version=4).cells
    assert [c.source.split("\n")[0] for c in cells] == ["# 12 Pose", "> banner", "## What this build found",
                                                        "How the search works.", "x = 1"]
    prepare_chapter(src, dst, "> banner", "")
    assert [c.source for c in nbformat.read(dst, as_version=4).cells][:3] == ["# 12 Pose", "> banner", "How the search works."]


def test_publish_reads_artifacts_and_never_imports_studies():
    import ast

    for path in sorted((REPO / "xrlib" / "publish").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        leaks = [m for m in names if m.startswith(("xrlib.studies", "xrlib.training", "xrlib.eval", "xrlib.data"))]
        assert not leaks, f"{path.name} imports {leaks}"


# ------------------------------------------------------------------------------------- failure


def test_broken_notebook_fails_fast_keeps_it_and_publishes_nothing(tiny):
    tiny_notebook(tiny["nbs"] / "02_second.ipynb", "raise ValueError('boom on purpose')")
    tiny_notebook(tiny["nbs"] / "03_third.ipynb", "print('never runs')")
    previous = tiny["book"] / "_build" / "html" / "index.html"  # a complete earlier book
    previous.parent.mkdir(parents=True)
    previous.write_text("<html>previous complete build</html>")
    args = [a for a in tiny["args"] if a != "--no-html"]  # HTML requested
    res = xrlib_book(*args)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert re.fullmatch(r"book: 02_second\.ipynb cell \d+: ValueError: boom on purpose", lines[-1]), res.stderr
    assert not any(ln.startswith("book:") for ln in lines[:-1])
    assert statuses(res.stdout) == {"01_first": "ran", "02_second": "failed", "03_third": "skipped"}
    executed = tiny["book"] / "executed" / "smoke"
    failed = executed / "02_second.failed.ipynb"
    assert failed.is_file()
    nb = nbformat.read(failed, as_version=4)
    assert any(o.get("ename") == "ValueError" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert not (executed / "02_second.ipynb").exists() and not (executed / "02_second.stamp.json").exists()
    assert not (executed / "03_third.ipynb").exists()
    assert previous.read_text(encoding="utf-8") == "<html>previous complete build</html>"  # not replaced by a partial book
    assert not (tiny["book"] / "chapters").exists()
    assert "HTML not built" in res.stdout


# ------------------------------------------------------------------------------------- strict HTML build

TINY_TOC = """format: jb-book
root: intro
chapters:
  - file: chapters/01_first
  - file: chapters/02_second
  - file: appendix
"""


def _tiny_book_sources(book: Path, intro_extra: str = "") -> None:
    book.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "book" / "_config.yml", book / "_config.yml")
    (book / "_toc.yml").write_text(TINY_TOC)
    (book / "intro.md").write_text("# Tiny book\n\n```{include} generated/findings.md\n```\n" + intro_extra)
    (book / "appendix.md").write_text("# Appendix\n\n```{include} generated/run_metadata.md\n```\n")


@pytest.mark.slow
def test_html_is_built_strictly_and_swapped_in_only_on_success(tiny):
    _tiny_book_sources(tiny["book"])
    args = [a for a in tiny["args"] if a != "--no-html"]
    ok = xrlib_book(*args)
    assert ok.returncode == 0, ok.stderr
    index = tiny["book"] / "_build" / "html" / "index.html"
    assert index.is_file()
    appendix = (tiny["book"] / "_build" / "html" / "appendix.html").read_text(encoding="utf-8")
    assert "01_first" in appendix and "smoke" in appendix  # generated at build time
    good = {p.relative_to(index.parent) for p in index.parent.rglob("*.html")}

    # a broken cross-reference and a missing image make the build fail; the last good book stays
    _tiny_book_sources(tiny["book"], "\nSee [nowhere](missing_page.md).\n\n![a figure](missing.png)\n")
    bad = xrlib_book(*args)
    assert bad.returncode == 1
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("book: jupyter-book build failed") and "missing" in last, bad.stderr
    assert statuses(bad.stdout) == {"01_first": "cached", "02_second": "cached"}
    assert {p.relative_to(index.parent) for p in index.parent.rglob("*.html")} == good
    assert not list((tiny["book"] / "_build").glob(".staging-*"))


# ------------------------------------------------------------------------------------- the smoke book
