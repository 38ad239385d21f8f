"""The real smoke book, built once per session (``tests/conftest.py``): every notebook executed by
papermill with the ``smoke`` profile into a temporary run and book folder (the repository's
``book/_build`` is not touched), then opened in headless Chromium: every page renders its title, every
image is a real image file, every local link resolves, and screenshots of the index and the robustness
chapter go to ``test-artifacts/book/``. Chromium is required (``.ci/run`` installs it); without it these
tests fail saying how to install it, unless ``XRLIB_NO_BROWSER=1`` is set.

Every test that reads the smoke book lives in this file, so under pytest-xdist (``--dist loadfile``)
one worker builds it while the other runs the rest of the suite.
"""
from __future__ import annotations

import functools
import html.parser
import http.server
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nbformat
import pytest

from browser import chromium, run_chromium, table_overflow
from test_book import statuses
from xrlib.publish import readme as xreadme

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "book"
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
    intro = (html / "intro.html").read_text(encoding="utf-8")
    assert "Findings of this build" in intro and "smoke" in intro
    results = smoke_book["runs"] / "smoke" / "evaluation" / "results.csv"
    if results.is_file():
        assert "Center" in intro and "virtual cohort" in intro
    appendix = (html / "appendix.html").read_text(encoding="utf-8")
    timings = json.loads((smoke_book["runs"] / "smoke" / "06_rotation_robustness.timings.json").read_text(encoding="utf-8"))
    assert timings["device"] in appendix and "06_rotation_robustness" in appendix
    # the README's generated section: this build's headline numbers and stage times
    readme = smoke_book["readme"].read_text(encoding="utf-8")
    section = readme[readme.index(xreadme.README_BEGIN):readme.index(xreadme.README_END)]
    assert re.search(r"Last `xrlib book --profile smoke --executor \w+` build", section)
    if results.is_file():
        import pandas as pd

        df = pd.read_csv(results)
        syn = df[(df["test_set"] == "Syn_test") & (df["model"] == "U-Net(Real+Syn_all)")]
        center = 100 * syn[syn["group"] == "Center"]["dice"].mean()
        manifest = pd.read_csv(smoke_book["runs"] / "smoke" / "datasets" / "manifest.csv")
        n_train = int(((manifest["split"] == "train") & manifest["pool"].isin(["surrogate", "syn_train"])).sum())
        findings = (smoke_book["book"] / "generated" / "findings.md").read_text(encoding="utf-8")
        assert f"| U-Net(Real+Syn_all) | {n_train} | {center:.1f} |" in findings  # the chapters' sections: in the book
    assert "The robustness card" in section and "Mean Dice (%)" not in section  # the README: the card alone
    for stem in notebooks:
        assert re.search(rf"\| {stem} \| ran \| [^|]+ \| \d+\.\d \|", section), stem
    assert "HTML (jupyter-book)" in section and "**total**" in section
    original = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme[:readme.index(xreadme.README_BEGIN)] == original[:original.index(xreadme.README_BEGIN)]
    assert readme[readme.index(xreadme.README_END):] == original[original.index(xreadme.README_END):]
    # the injected parameters cell is hidden, the profile banner shown
    chapter = (html / "chapters" / "03_projection.html").read_text(encoding="utf-8")
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


def _is_image(path: Path) -> bool:
    head = path.read_bytes()[:512]
    return (head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8") or head.startswith(b"GIF8")
            or b"<svg" in head.lower() or head.startswith(b"RIFF"))


@pytest.mark.slow
def test_smoke_book_in_headless_chromium(smoke_book, served, tmp_path):
    exe = chromium()
    html = smoke_book["html"]
    pages = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                   if not p.relative_to(html).as_posix().startswith(("_static/", "_sources/", "_images/"))
                   and p.name not in ("genindex.html", "search.html")
                   # the API pages (one per layer) are built from the code, not the run: tests/test_book_pages.py
                   and not (p.relative_to(html).as_posix().startswith("api/") and p.name != "index.html"))
    chapters = [p for p in pages if p.startswith("chapters/")]
    assert len(chapters) == len(list((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    problems = []
    for page in pages:
        url = served + page
        source = (html / page).read_text(encoding="utf-8")
        if 'http-equiv="Refresh"' in source or 'http-equiv="refresh"' in source:
            continue  # index.html: jupyter-book's redirect to the root page (checked as intro.html)
        title = re.search(r"<h1[^>]*>(.*?)</h1>", source, re.DOTALL)
        assert title, f"{page}: no <h1>"
        title_text = re.sub(r"<[^>]+>", "", title.group(1)).replace("#", "").strip()
        dom = run_chromium(exe, tmp_path / "chrome", "--dump-dom", url)
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
    # the introduction's card (a column per threat) fits a 1,400 px wide window: no table scrolls sideways
    wide = table_overflow(exe, html, served, "intro.html", tmp_path / "chrome-measure", width=1400)
    assert wide["tables"] >= 1 and wide["wide"] == [], wide

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    index = "index.html"
    redirect = re.search(r'url=([^"\']+)', (html / index).read_text(encoding="utf-8"))
    if redirect:  # screenshot the page index.html redirects to
        index = redirect.group(1)
    for page, name in ((index, "index.png"), ("chapters/06_rotation_robustness.html", "robustness.png")):
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        res = run_chromium(exe, tmp_path / "chrome", f"--screenshot={shot}", "--window-size=1280,1600",
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


def test_smoke_book_card_joins_every_row_with_every_column(smoke_book):
    """Chapter 13 on the smoke run: no row × column cell of the card is silently missing, the not-built rows
    and columns are listed as such, and the card (with its heatmap) heads the introduction and the README."""
    import pandas as pd

    from xrlib.studies.card.columns import COLUMNS
    from xrlib.studies.card.rows import ROWS

    assert smoke_book["returncode"] == 0, smoke_book["stderr"][-3000:]
    run = smoke_book["runs"] / "smoke"
    card = pd.read_csv(run / "robustness" / "card.csv")
    ok = card[card["status"] == "ok"]
    models = ok["model"].unique()
    built = [c.key for c in COLUMNS if not c.missing]
    assert len(ok) == len(models) * len(built) and set(ok["column"]) == set(built)
    assert (ok["n_rows"] > 0).all()  # every cell has its threatened images ...
    conditional = ok["column"].isin([c.key for c in COLUMNS if c.scored])
    assert ok.loc[~conditional, "value"].notna().all() and (ok.loc[~conditional, "n_images"] > 0).all()
    # ... and a conditional cell is n/a exactly when it scores no image (smoke's weak models: no good prediction)
    assert (ok.loc[conditional, "value"].isna() == (ok.loc[conditional, "n_images"] == 0)).all()
    expected = {r.missing for r in ROWS if r.victims is None} | {c.missing for c in COLUMNS if c.missing}
    assert set(card.loc[card["status"] != "ok", "status"]) == expected
    assert {"U-Net(Real)", "U-Net(Real+Syn_all)+PGD-AT", "U-Net(Real)+worst-pose"} <= set(models)
    intro = (smoke_book["html"] / "intro.html").read_text(encoding="utf-8")
    assert "robustness card (chapter 13)" in intro and re.search(r'<img [^>]*src="_images/card\.png"', intro)
    assert (smoke_book["html"] / "_images" / "card.png").is_file()
    section = smoke_book["readme"].read_text(encoding="utf-8")
    assert "robustness card (chapter 13) — profile smoke" in section and "card.png" not in section
    # chapter 12's defense and its control on every seed of the profile (smoke: 2), not on one training each
    curves = pd.read_csv(run / "card" / "cells.csv")
    pair = curves[curves["model"].isin(["U-Net(Real)+worst-pose", "U-Net(Real)+uniform-pose"]) & (curves["threat"] == "rotation")]
    assert set(pair["model"]) == {"U-Net(Real)+worst-pose", "U-Net(Real)+uniform-pose"} and (pair["n_seeds"] == 2).all(), pair


def test_smoke_book_card_costs_every_defense_with_a_recorded_time(smoke_book, monkeypatch):
    """Every defended row of the card has its extra training time from its chapter's record (the worst-pose
    fine-tuning and every round of adaptive training included), read from the caches the book made."""
    from xrlib.core.profiles import load_profile
    from xrlib.studies.card.rows import available_rows

    assert smoke_book["returncode"] == 0, smoke_book["stderr"][-3000:]
    for key, value in smoke_book["env"].items():  # the book's thread count: its trainings' cache keys
        monkeypatch.setenv(key, value)
    victims, _ = available_rows(load_profile("smoke"), smoke_book["runs"] / "smoke")
    extra = {v.name: v.extra_s for v in victims if v.base is not None}
    assert {"U-Net(Real)+worst-pose", "U-Net(Real+Syn_all)+PGD-AT"} <= set(extra)
    warm = [n for n in extra if n.endswith(("+worst-pose", "+PGD-AT")) or "noise-adaptive" in n]
    assert len(warm) >= 3 and all(extra[n] is not None and extra[n] > 0 for n in warm)  # warm-started: all extra
    missing = [n for n, s in extra.items() if s is None]
    assert missing == [], f"no recorded training time for {missing}"
