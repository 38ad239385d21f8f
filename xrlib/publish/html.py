"""The HTML book: chapters prepared from the executed notebooks, the table of contents, ``jupyter-book build``.

The executed notebooks are copied into ``book/chapters/`` (papermill's injected parameters cell
hidden, a "built with" banner added), the generated pages are written to ``book/generated/``, and
the book is built into a temporary folder next to ``book/_build/html`` and swapped in only when
``jupyter-book`` succeeds (strict: ``-W`` turns broken cross-references, missing images and unknown
documents into errors), so ``book/_build/html`` is always one complete, consistent build. The pages
that do not depend on the run — the API reference (:mod:`xrlib.publish.api`) and the Performance
page (:mod:`xrlib.publish.performance`) — are written by :func:`write_reference_pages`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from xrlib import __version__
from xrlib.core.atomic import atomic_write, write_text_atomic
from xrlib.core.profiles import Profile
from xrlib.publish.api import LAYERS, write_api_pages, xrlib_reference_warnings
from xrlib.publish.errors import BookError
from xrlib.publish.execute import BOOK_DIR, executed_dir
from xrlib.publish.pages import chapter_findings_markdown, findings_markdown, metadata_markdown, result_figures
from xrlib.publish.performance import performance_markdown
from xrlib.publish.report import BookReport, StageResult


def banner(report: BookReport, res: StageResult, overrides: dict) -> str:
    """The "built with" line shown under a chapter's title."""
    extra = f", overrides `{json.dumps(overrides, sort_keys=True)}`" if overrides else ""
    how = "executed in this build" if res.status == "ran" else "reused from the cache"
    wall = f" in {res.wall_s:.1f} s" if res.wall_s is not None else ""
    return (f"> Built with profile **{report.profile}** on {res.device or 'an unknown device'}{wall} "
            f"({how}; xrlib {__version__}{extra}). Run details: [appendix](../appendix.md).")


def prepare_chapter(src: Path, dst: Path, banner: str, findings: str = "") -> None:
    """Copy an executed notebook into the book: hide the parameters cells, add the banner and, under it, what
    the chapter found in this build (``findings``: Markdown, :func:`xrlib.publish.pages.chapter_findings_markdown`),
    so that the page reads result first, then method."""
    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if ("injected-parameters" in tags or "parameters" in tags) and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    pos = 1 if nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("#") else 0
    new = [nbformat.v4.new_markdown_cell(text) for text in (banner, findings) if text]
    if pos:  # the title alone above the result; the chapter's introduction moves below it, with the method
        title, _, rest = nb.cells[0].source.lstrip().partition("\n")
        nb.cells[0].source = title
        if rest.strip():
            new.append(nbformat.v4.new_markdown_cell(rest.strip("\n")))
    for cell in new:
        if nb.nbformat_minor < 5:  # cell ids exist from nbformat 4.5 on
            cell.pop("id", None)
    nb.cells[pos:pos] = new
    with atomic_write(dst) as tmp:
        nbformat.write(nb, tmp)


def write_reference_pages(book_dir: Path = BOOK_DIR, results: Path | None = None, layers: tuple[str, ...] = LAYERS) -> None:
    """Write the pages made from the code and the benchmark results: ``api/*.md`` (``layers``: all for the
    book) and ``generated/performance.md`` (from ``results``, default ``benchmarks/results/``)."""
    book_dir = Path(book_dir)
    write_api_pages(book_dir, layers)
    write_text_atomic(book_dir / "generated" / "performance.md", performance_markdown(results))


def run_jupyter_book(book_dir: Path, out: Path, log_file: Path) -> Path:
    """``jupyter-book build`` of ``book_dir`` into ``out`` with warnings as errors; returns the HTML folder.

    The log goes to ``log_file``; a failed build raises :class:`BookError` naming the broken ``xrlib``
    cross-references first (then the first warning).
    """
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(book_dir), "--path-output", str(out),
           "--builder", "html", "-W", "--keep-going"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, encoding="utf-8", errors="replace")
    text = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + "\n" + proc.stderr)  # no terminal colours
    write_text_atomic(log_file, text)
    html = out / "_build" / "html"
    if proc.returncode != 0 or not (html / "index.html").is_file():
        warnings = [ln for ln in text.splitlines() if "WARNING" in ln or "ERROR" in ln]
        refs = xrlib_reference_warnings(text)
        first = " ".join((warnings[0] if warnings else "see the log").split())[:300]
        if refs:
            first = f"broken cross-reference(s) to {', '.join(refs[:5])}{' …' if len(refs) > 5 else ''}; {first}"
        raise BookError(f"book: jupyter-book build failed ({len(warnings)} warning(s)/error(s); log {log_file}): {first}")
    return html


def toc_chapters(book_dir: Path) -> list[str]:
    """Chapter stems listed as ``chapters/<stem>`` in ``_toc.yml``."""
    import yaml

    toc = yaml.safe_load((book_dir / "_toc.yml").read_text(encoding="utf-8"))
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(str(node["file"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    return [Path(f).name for f in files if f.startswith("chapters/")]


def build_html(report: BookReport, *, cfg: Profile, run: Path, overrides: dict, book_dir: Path = BOOK_DIR,
               log=print) -> Path:
    """Publish the executed chapters of ``report`` as HTML (atomic swap into ``_build/html``)."""
    book_dir = Path(book_dir)
    stems = [s.name for s in report.stages]
    listed = toc_chapters(book_dir)
    if listed != stems:
        raise BookError(f"book: _toc.yml lists chapters {listed} but the notebooks are {stems}")
    chapters = book_dir / "chapters"
    shutil.rmtree(chapters, ignore_errors=True)
    executed = executed_dir(book_dir, report.profile)
    for s in report.stages:
        prepare_chapter(executed / f"{s.name}.ipynb", chapters / f"{s.name}.ipynb", banner(report, s, overrides),
                        chapter_findings_markdown(run, s.name))
    gen = book_dir / "generated"
    shutil.rmtree(gen / "figures", ignore_errors=True)
    for fig, name in result_figures(run).items():
        (gen / "figures").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fig, gen / "figures" / name)
    write_text_atomic(gen / "findings.md", findings_markdown(report, run))
    write_text_atomic(gen / "run_metadata.md", metadata_markdown(report, run, cfg, overrides, book_dir))
    write_reference_pages(book_dir)

    build = book_dir / "_build"
    build.mkdir(exist_ok=True)
    tmp = build / f".staging-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"book: jupyter-book build ({report.profile}) ...")
    try:
        html = run_jupyter_book(book_dir, tmp, build / "jupyter-book.log")
    except BookError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = build / "html"
    old = build / f".old-{os.getpid()}"
    if final.exists():
        final.replace(old)
    html.replace(final)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return final / "index.html"
