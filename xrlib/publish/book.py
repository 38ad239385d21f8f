"""``xrlib book``: execute the chapters, then publish them as one complete HTML book (the orchestration).

``xrlib book --profile NAME`` (see :func:`build_book`) does two things:

1. **Execute** every notebook of ``notebooks/`` in study order with papermill, reusing fresh stages
   (:mod:`xrlib.publish.execute`: stage keys, stamps, ``--only``/``--force``, fail-fast failure lines).
2. **Publish** them (:mod:`xrlib.publish.html`): the chapters, the generated pages
   (:mod:`xrlib.publish.pages`: ``book/generated/findings.md`` for the introduction,
   ``book/generated/run_metadata.md`` for the appendix) and ``jupyter-book build`` with notebook
   execution off; with ``--readme FILE``, also the README's generated section (:mod:`xrlib.publish.readme`).

Publishing is all-or-nothing
    HTML is built only when every stage of the profile is fresh (``ran`` or ``cached``) in this
    invocation, and swapped into ``book/_build/html`` only when ``jupyter-book`` succeeds, so
    ``book/_build/html`` is always one complete, consistent build — never a mix of stale and fresh
    chapters. A failed invocation leaves the previous complete book untouched and says so.
"""

from __future__ import annotations

import time
from pathlib import Path

from xrlib.core.profiles import load_profile
from xrlib.core.runs import run_dir
from xrlib.publish.errors import BookError, BookUsageError
from xrlib.publish.execute import BOOK_DIR, NOTEBOOKS_DIR, execute_stages
from xrlib.publish.html import build_html
from xrlib.publish.readme import readme_markdown, readme_span, update_readme
from xrlib.publish.report import BookReport

__all__ = ["BOOK_DIR", "NOTEBOOKS_DIR", "BookError", "BookReport", "BookUsageError", "build_book"]


def build_book(profile: str, *, html: bool = True, readme: str | Path | None = None, log=print,
               **options) -> BookReport:
    """Execute the stages, then (if all are fresh and ``html``) publish the HTML book.

    ``options``: those of :func:`~xrlib.publish.execute.execute_stages` (``notebooks_dir``,
    ``book_dir``, ``only``, ``overrides``, ``run_root``, ``force``, ``progress``).
    ``readme``: after a successful publish, rewrite that file's generated section
    (:func:`~xrlib.publish.readme.readme_markdown`: result sections and stage times of this build).
    """
    book_dir = Path(options.get("book_dir", BOOK_DIR))
    overrides = dict(options.get("overrides") or {})
    if readme is not None:  # check before hours of work, not after
        try:
            readme_span(Path(readme))
        except BookError as exc:
            raise BookUsageError(str(exc)) from None
    report = execute_stages(profile, log=log, **options)
    final = book_dir / "_build" / "html"
    previous = " (the previous complete book in book/_build/html is left as it was)" if final.exists() else ""
    if report.error:
        report.html_note = "HTML not built: a stage failed" + previous
    elif not html:
        report.html_note = "HTML not built (--no-html)"
    elif any(s.status not in ("ran", "cached") for s in report.stages):
        stale = [s.name for s in report.stages if s.status not in ("ran", "cached")]
        report.html_note = f"HTML not built: stage(s) {', '.join(stale)} not current (build them first)" + previous
    else:
        cfg = load_profile(profile)
        run = run_dir(cfg.name, options.get("run_root"))
        try:
            t0 = time.perf_counter()
            report.html = build_html(report, cfg=cfg, run=run, overrides=overrides, book_dir=book_dir, log=log)
            report.html_s = time.perf_counter() - t0
            report.html_note = f"HTML: {report.html}"
        except BookError as exc:
            report.error = str(exc)
            report.html_note = "HTML not built: jupyter-book failed" + previous
        if readme is not None and report.html is not None:
            try:
                update_readme(readme, readme_markdown(report, run, readme=Path(readme)))
                report.html_note += f"; generated section of {readme} updated"
            except BookError as exc:
                report.error = str(exc)
    return report
