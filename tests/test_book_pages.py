"""The book's Markdown pages and API reference, built without the notebooks (the smoke book covers those).

One ``jupyter-book build`` (with ``-W``, as ``xrlib book`` runs it) of the book's own pages, two layers of
the API reference and an introduction whose findings hold a card-sized table, plus one deliberately
broken cross-reference to an ``xrlib`` target: the build must fail naming it, must not complain about
references to other packages, and must still render the docstrings; the introduction's table must fit a
1,400 px wide window in headless Chromium.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from browser import chromium, serve, table_overflow
from xrlib.publish.api import LAYERS, layer_modules, layer_page, xrlib_reference_warnings
from xrlib.publish.errors import BookError
from xrlib.publish.html import run_jupyter_book, write_reference_pages

REPO = Path(__file__).resolve().parent.parent
BROKEN = "xrlib.publish.api.no_such_function"
TEST_LAYERS = ("exec", "publish")

#: A card as wide as the book's: a model column and eight threats, each cell "value [CI] (n)".
THREATS = ["clean (synthetic, α 0), α = 0°: mean Dice ↑", "clean (Real surrogate), Real test split: mean Dice ↑",
           "rotation (Moderate α), α ∈ ±[12°, 20°]: mean Dice ↑", "worst-case pose, b = 10: mean Dice ↑",
           "acquisition shift, budget 1: mean Dice ↑", "quantum noise, 4e-05 mAs: SAR of the good predictions ↓",
           "PGD/SegPGD L∞, ε = 0.03: min mean Dice over attacks ↑",
           "learned deformation + bias, ξ = 2: success rate (per-image D+V) ↓"]
MODELS = ["U-Net(Real)", "U-Net(Real+Syn_all)+noise-adaptive it2", "Realistic/strong", "U-Net(Real)+worst-pose"]


def _findings() -> str:
    rows = ["| model | " + " | ".join(THREATS) + " |", "|" + "---|" * (len(THREATS) + 1)]
    rows += ["| " + m + " | " + " | ".join("0.779 [0.74, 0.82] (40)" if j != 5 else "0.625 [0.25, 1.00] (8 of 24)"
                                          for j in range(len(THREATS))) + " |" for m in MODELS]
    return ("![result figure of card](generated/figures/card.png)\n\n**The robustness card (chapter 13) — profile test.**\n\n"
            + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def pages_build(tmp_path_factory):
    """The book's Markdown pages without the chapters, built once; returns (html folder, BookError message, log)."""
    tmp = tmp_path_factory.mktemp("pages")
    book = tmp / "book"
    book.mkdir()
    for path in (REPO / "book").glob("*.md"):
        shutil.copy(path, book / path.name)
    config = yaml.safe_load((REPO / "book" / "_config.yml").read_text(encoding="utf-8"))
    others = "|".join(x for x in LAYERS if x not in TEST_LAYERS)  # references into layers this build leaves out
    config["sphinx"]["config"]["nitpick_ignore_regex"].append(["py:.*", rf"~?xrlib\.({others})\b.*"])
    (book / "_config.yml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    shutil.copytree(REPO / "book" / "_static", book / "_static")
    toc = yaml.safe_load((REPO / "book" / "_toc.yml").read_text(encoding="utf-8"))
    parts = []
    for part in toc["parts"]:
        files = [c for c in part["chapters"] if not c["file"].startswith("chapters/")
                 and (not c["file"].startswith("api/") or c["file"] in ("api/index", *(f"api/{x}" for x in TEST_LAYERS)))]
        if files:
            parts.append({**part, "chapters": files})
    (book / "_toc.yml").write_text(yaml.safe_dump({**toc, "parts": parts}, allow_unicode=True), encoding="utf-8")
    gen = book / "generated"
    (gen / "figures").mkdir(parents=True)
    shutil.copy(REPO / "book" / "figures" / "rotated_radiographs.png", gen / "figures" / "card.png")
    (gen / "findings.md").write_text(_findings(), encoding="utf-8")
    (gen / "run_metadata.md").write_text("*No run: a test build of the Markdown pages.*\n", encoding="utf-8")
    write_reference_pages(book, results=tmp / "no-results", layers=TEST_LAYERS)
    with (book / "methods.md").open("a", encoding="utf-8") as f:  # one broken xrlib reference, one to numpy
        f.write(f"\n\nSee {{py:func}}`{BROKEN}`, {{py:func}}`xrlib.publish.api.write_api_pages` and "
                "{py:class}`numpy.ndarray`.\n")
    with pytest.raises(BookError) as err:
        run_jupyter_book(book, tmp / "out", tmp / "jupyter-book.log")
    return tmp / "out" / "_build" / "html", str(err.value), (tmp / "jupyter-book.log").read_text(encoding="utf-8")


def _text(path: Path) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", path.read_text(encoding="utf-8")).split())


def test_a_broken_xrlib_reference_fails_the_build_naming_it(pages_build):
    _, message, log = pages_build
    assert message.startswith("book: jupyter-book build failed") and f"broken cross-reference(s) to {BROKEN}" in message
    warnings = [ln for ln in log.splitlines() if "WARNING" in ln or "ERROR" in ln]
    assert len(warnings) == 1 and BROKEN in warnings[0], "\n".join(warnings)  # numpy.ndarray is not checked


def test_api_pages_render_the_docstrings(pages_build):
    html, _, _ = pages_build
    publish = _text(html / "api" / "publish.html")
    assert "are not checked (there is no intersphinx without network)" in publish  # a function's docstring
    assert "one page per layer of xrlib , written at build time" in publish  # a module's docstring
    execs = _text(html / "api" / "exec.html")
    assert re.search(r"Parameters : .*address", execs) or re.search(r"Parameters .{0,20}address", execs), \
        "a Google-style 'Args:' section (napoleon) is not rendered as parameters"
    methods = (html / "methods.html").read_text(encoding="utf-8")
    assert 'href="api/publish.html#xrlib.publish.api.write_api_pages"' in methods  # a working reference links


def test_intro_card_fits_a_1400px_window(pages_build, tmp_path):
    html, _, _ = pages_build
    exe = chromium()
    with serve(html) as url:
        found = table_overflow(exe, html, url, "intro.html", tmp_path / "chrome", width=1400)
    assert found["tables"] >= 1 and found["wide"] == [], found
    assert found["page"][0] <= found["page"][1], found


def test_every_public_module_is_on_its_layer_page_once():
    import pkgutil

    import xrlib

    public = {m.name for m in pkgutil.walk_packages(xrlib.__path__, "xrlib.")
              if not any(p.startswith("_") for p in m.name.split(".")) and m.name != "xrlib.cli"}
    listed = [m for layer in LAYERS for m in layer_modules(layer)]
    assert sorted(listed) == sorted(public) and len(listed) == len(set(listed))
    page = layer_page("exec")
    assert ".. automodule:: xrlib.exec\n   :members:\n   :ignore-module-all:" in page
    assert "## `xrlib.exec.ray`" in page and ".. automodule:: xrlib.exec.ray\n   :members:" in page
    with pytest.raises(ValueError, match="unknown layer 'cli'"):
        layer_modules("cli")


def test_toc_lists_every_layer_page():
    toc = (REPO / "book" / "_toc.yml").read_text(encoding="utf-8")
    assert re.findall(r"- file: api/(\w+)", toc) == ["index", *LAYERS]


def test_reference_warnings_keep_xrlib_targets_only():
    log = ("/x.md:3: WARNING: py:func reference target not found: xrlib.a.b\n"
           "/y.md:9: WARNING: py:class reference target not found: ~xrlib.core.ct.Volume\n"
           "/z.md:1: WARNING: py:class reference target not found: numpy.ndarray\n"
           "/x.md:4: WARNING: py:func reference target not found: xrlib.a.b\n"
           "/w.md:2: WARNING: py:mod reference target not found: xrlibrary\n")
    assert xrlib_reference_warnings(log) == ["xrlib.a.b", "xrlib.core.ct.Volume"]
    assert xrlib_reference_warnings("build succeeded.") == []
