"""The publishing layer: ``xrlib book`` (papermill execution, cache, failure handling, HTML book).

* Cache and failure behaviour are tested on one or two tiny notebooks in a temporary folder
  (``--notebooks`` / ``--book-dir`` point the command there), so they take seconds.
* ``test_smoke_book_*`` use the real smoke book built once per session (``tests/conftest.py``; the
  notebook smoke tests read the same executed notebooks): all seven notebooks with the
  ``smoke`` profile into a temporary run and book folder — the repository's ``book/_build`` is not
  touched) and open it in headless Chromium: every page renders its title, every image is a real
  image file, every local link resolves, and screenshots of the index and the robustness chapter go
  to ``test-artifacts/book/``. Chromium is required (``.ci/run`` installs it); without it these tests
  fail saying how to install it, unless ``XRLIB_NO_BROWSER=1`` is set.
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nbformat
import pytest

from xrlib.publish import pages as xpages
from xrlib.publish import readme as xreadme
from xrlib.publish.report import BookReport, StageResult

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "book"
BOOK_SOURCES = ("_config.yml", "_toc.yml", "intro.md", "how_to_run.md", "data.md", "methods.md", "appendix.md")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def xrlib_book(*args, cwd=REPO, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xrlib", "book", "--no-progress", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


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
    assert "Last `xrlib book --profile quick` build" in text[i:j]  # written by a quick build, not by hand


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
    assert previous.read_text() == "<html>previous complete build</html>"  # not replaced by a partial book
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
    appendix = (tiny["book"] / "_build" / "html" / "appendix.html").read_text()
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


def _chromium() -> str:
    if os.environ.get("XRLIB_NO_BROWSER") == "1":
        pytest.skip("XRLIB_NO_BROWSER=1: the browser checks of the HTML book are switched off")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.fail("headless Chromium is required to check the HTML book: install it with "
                    "'apt-get install -y chromium' (.ci/run does this), or set XRLIB_NO_BROWSER=1 to skip")
    return exe


@pytest.mark.slow
def test_smoke_book_builds_every_stage(smoke_book):
    assert smoke_book["returncode"] == 0, smoke_book["stderr"][-3000:]
    # the kernels run on IPC sockets: no "Kernel is running over TCP without encryption" warning
    assert "without encryption" not in smoke_book["stdout"] + smoke_book["stderr"]
    stages = statuses(smoke_book["stdout"])
    notebooks = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(stages) == notebooks and set(stages.values()) == {"ran"}
    html = smoke_book["html"]
    for stem in notebooks:
        assert (html / "chapters" / f"{stem}.html").is_file()
    # generated pages: numbers come from the run, not from the sources
    intro = (html / "intro.html").read_text()
    assert "Findings of this build" in intro and "smoke" in intro
    results = smoke_book["runs"] / "smoke" / "evaluation" / "results.csv"
    if results.is_file():
        assert "Center" in intro and "virtual cohort" in intro
    appendix = (html / "appendix.html").read_text()
    timings = json.loads((smoke_book["runs"] / "smoke" / "06_rotation_robustness.timings.json").read_text())
    assert timings["device"] in appendix and "06_rotation_robustness" in appendix
    # the README's generated section: this build's headline numbers and stage times
    readme = smoke_book["readme"].read_text(encoding="utf-8")
    section = readme[readme.index(xreadme.README_BEGIN):readme.index(xreadme.README_END)]
    assert "Last `xrlib book --profile smoke` build" in section
    if results.is_file():
        import pandas as pd

        df = pd.read_csv(results)
        syn = df[(df["test_set"] == "Syn_test") & (df["model"] == "U-Net(Real+Syn_all)")]
        center = 100 * syn[syn["group"] == "Center"]["dice"].mean()
        manifest = pd.read_csv(smoke_book["runs"] / "smoke" / "datasets" / "manifest.csv")
        n_train = int(((manifest["split"] == "train") & manifest["pool"].isin(["surrogate", "syn_train"])).sum())
        assert f"| U-Net(Real+Syn_all) | {n_train} | {center:.1f} |" in section
    for stem in notebooks:
        assert re.search(rf"\| {stem} \| ran \| [^|]+ \| \d+\.\d \|", section), stem
    assert "HTML (jupyter-book)" in section and "**total**" in section
    original = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme[:readme.index(xreadme.README_BEGIN)] == original[:original.index(xreadme.README_BEGIN)]
    assert readme[readme.index(xreadme.README_END):] == original[original.index(xreadme.README_END):]
    # the injected parameters cell is hidden, the profile banner shown
    chapter = (html / "chapters" / "03_projection.html").read_text()
    assert "Built with profile" in chapter
    assert "# Parameters" not in chapter  # papermill's injected cell starts with this comment
    assert not re.search(r'<span class="n">run_root</span>\s+<span class="o">=</span>\s+<span class="s2">', chapter)


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.imgs.append(a["src"])
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(smoke_book):
    handler = functools.partial(_Quiet, directory=str(smoke_book["html"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _run_chromium(exe: str, profile_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def _is_image(path: Path) -> bool:
    head = path.read_bytes()[:512]
    return (head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8") or head.startswith(b"GIF8")
            or b"<svg" in head.lower() or head.startswith(b"RIFF"))


@pytest.mark.slow
def test_smoke_book_in_headless_chromium(smoke_book, served, tmp_path):
    exe = _chromium()
    html = smoke_book["html"]
    pages = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                   if not p.relative_to(html).as_posix().startswith(("_static/", "_sources/", "_images/"))
                   and p.name not in ("genindex.html", "search.html"))
    chapters = [p for p in pages if p.startswith("chapters/")]
    assert len(chapters) == len(list((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    problems = []
    for page in pages:
        url = served + page
        source = (html / page).read_text()
        if 'http-equiv="Refresh"' in source or 'http-equiv="refresh"' in source:
            continue  # index.html: jupyter-book's redirect to the root page (checked as intro.html)
        title = re.search(r"<h1[^>]*>(.*?)</h1>", source, re.DOTALL)
        assert title, f"{page}: no <h1>"
        title_text = re.sub(r"<[^>]+>", "", title.group(1)).replace("#", "").strip()
        dom = _run_chromium(exe, tmp_path / "chrome", "--dump-dom", url)
        if dom.returncode != 0 or title_text[:20] not in dom.stdout:
            problems.append(f"{page}: Chromium did not render its title {title_text!r} (rc {dom.returncode})")
        links = _Links()
        links.feed(source)
        if page in chapters and not links.imgs:
            problems.append(f"{page}: a chapter without images")
        for src in links.imgs:
            if src.startswith("data:"):
                continue
            target = urllib.parse.urljoin(url, src)
            if not target.startswith(served):
                continue
            local = html / urllib.parse.unquote(urllib.parse.urlsplit(target).path).lstrip("/")
            if not local.is_file() or local.stat().st_size == 0 or not _is_image(local):
                problems.append(f"{page}: image {src} is missing or not an image")
        for href in links.hrefs:
            target = urllib.parse.urljoin(url, href)
            if not target.startswith(served):
                continue  # external link
            path = urllib.parse.urlsplit(target).path
            try:
                with urllib.request.urlopen(served.rstrip("/") + path, timeout=10) as r:
                    ok = r.status == 200
            except urllib.error.HTTPError:
                ok = False
            if not ok:
                problems.append(f"{page}: link {href} does not resolve")
    assert not problems, "\n".join(problems[:20])

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    index = "index.html"
    redirect = re.search(r'url=([^"\']+)', (html / index).read_text())
    if redirect:  # screenshot the page index.html redirects to
        index = redirect.group(1)
    for page, name in ((index, "index.png"), ("chapters/06_rotation_robustness.html", "robustness.png")):
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        res = _run_chromium(exe, tmp_path / "chrome", f"--screenshot={shot}", "--window-size=1280,1600",
                            served + page)
        assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot of {page}: {res.stderr[-500:]}"


# --------------------------------------------------------------------------------------------
# Every notebook ran under papermill in the smoke build (moved here from test_notebooks.py so that
# all readers of the smoke book are in one file), and the training benchmark plans its training sets.
# --------------------------------------------------------------------------------------------

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


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


def _bench_training():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_training", REPO / "benchmarks" / "bench_training.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_training_bench_plans_the_training_sets_that_the_smoke_build_made(smoke_book):
    from xrlib.core.profiles import load_profile
    from xrlib.studies.rotation.models import study_configs
    from xrlib.training.data import select_images

    cfg = load_profile("smoke")
    built = {c.name: len(select_images(smoke_book["runs"] / "smoke" / "datasets", c.train_sets, "train", c.cen_alphas))
             for c in study_configs(cfg)}
    assert _bench_training().train_images(cfg) == built
