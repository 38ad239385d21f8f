"""The book's generated Markdown pages: the findings of the introduction and the run-metadata appendix.

Result sections are generic: every ``headline.md`` under the run folder (written by the study
chapters, e.g. ``<run>/evaluation/headline.md``) is included, in path order. Publishing reads these
artifacts and never imports a study, so a later chapter adds its own section by writing one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

from xrlib.core.machine import fingerprint_rows
from xrlib.core.profiles import DATASET_KEYS, Profile, profile_hash
from xrlib.core.runs import versions
from xrlib.publish.execute import BOOK_DIR, executed_dir, read_stamp, stage_timings
from xrlib.publish.report import BookReport

#: The file name of a result section in the run folder (any depth).
RESULT_SECTION = "headline.md"
#: A result section's figure: a PNG of this name beside a ``headline.md`` is shown above it in the book's
#: introduction (copied to ``book/generated/figures/``; the README shows the section's text only).
RESULT_FIGURE = "headline.png"
#: Packages listed in the appendix (those installed).
VERSION_PACKAGES = ("xrlib", "numpy", "pandas", "torch", "monai", "itk-rtk", "diffdrr", "spekpy", "xraydb",
                    "matplotlib", "papermill", "jupyter-book", "sphinx", "myst-nb")


def md_table(header: list[str], rows: list[list]) -> str:
    """A Markdown pipe table (``|`` in cells escaped)."""
    esc = lambda v: str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def result_sections(run: Path, figures: bool = False) -> list[str]:
    """The lines of every result section (``headline.md``) under ``run``, each followed by a blank line;
    ``figures``: also its :data:`RESULT_FIGURE` first (the result before its table and caveats; as
    ``generated/figures/<name>``, see :func:`result_figures`)."""
    lines: list[str] = []
    names = {fig.parent: name for fig, name in result_figures(run).items()} if figures else {}
    for path in sorted(Path(run).rglob(RESULT_SECTION)):
        text = path.read_text(encoding="utf-8").strip("\n")
        if path.parent in names:  # the include in intro.md resolves image paths from book/
            lines += [f"![result figure of {names[path.parent][:-4]}](generated/figures/{names[path.parent]})", ""]
        if text.strip():
            lines += [*text.split("\n"), ""]
    return lines


def result_figures(run: Path) -> dict[Path, str]:
    """``{figure path: name under book/generated/figures/}`` of every :data:`RESULT_FIGURE` beside a result section."""
    out = {}
    for path in sorted(Path(run).rglob(RESULT_SECTION)):
        fig = path.with_name(RESULT_FIGURE)
        if fig.is_file():
            out[fig] = "-".join(path.parent.relative_to(run).parts or ("run",)) + ".png"
    return out


def findings_markdown(report: BookReport, run: Path) -> str:
    """The "findings of this build" section of the introduction, from the run's result sections."""
    lines = [f"*Generated from the run of this build — profile **{report.profile}**, run folder "
             f"`{run.name}/`. Numbers below are computed, not typed.*", ""]
    sections = result_sections(run, figures=True)
    if not sections:
        ran = ", ".join(f"{s.name} ({s.status})" for s in report.stages)
        lines.append(f"No results in this run (no `{RESULT_SECTION}` under `{run.name}/`). Stages: {ran}.")
        return "\n".join(lines) + "\n"
    return "\n".join(lines + sections) + "\n"


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), **versions(VERSION_PACKAGES)}


def machine_markdown(machines: dict[str, tuple[dict, list[str]]]) -> list[str]:
    """The appendix's "Machine" section: one table per machine fingerprint the stages recorded
    (``{id: (fingerprint, stage names)}``), lines followed by a blank line."""
    out = ["## Machine", ""]
    if not machines:
        return out + ["No stage of this run recorded a machine fingerprint.", ""]
    out += ["The machine fingerprint each stage recorded (`xrlib.core.machine`); stages with the same "
            "fingerprint id ran on the same instruction sets, library builds and thread counts. "
            "`xrlib runs compare RUN_A RUN_B` names the first stage whose artifacts differ between two runs.", ""]
    for fid, (fp, stages) in machines.items():
        if len(machines) > 1:
            out += [f"Stages {', '.join(stages)}:", ""]
        out += [md_table(["item", "value"], fingerprint_rows(fp)), ""]
    return out


def metadata_markdown(report: BookReport, run: Path, cfg: Profile, overrides: dict, book_dir: Path = BOOK_DIR) -> str:
    """The generated appendix: profile, hashes, versions, devices and stage times of this build."""
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"*Generated at build time ({when}).*", "",
           md_table(["item", "value"], [
               ["profile", f"{report.profile} (`{Path(cfg.path).name}`)"],
               ["profile hash (all keys)", f"`{profile_hash(cfg)[:16]}`"],
               ["dataset hash (dataset keys)", f"`{profile_hash(cfg, DATASET_KEYS)[:16]}`"],
               ["overrides (-p)", f"`{json.dumps(overrides, sort_keys=True)}`" if overrides else "none"],
               ["run folder", f"`{run.name}/`"],
               ["build host", f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores"],
           ]), "", "## Stages", ""]
    rows, steps, machines = [], [], {}
    out_dir = executed_dir(book_dir, report.profile)
    for s in report.stages:
        t = stage_timings(run, s.name)
        stamp = read_stamp(out_dir, s.name)
        total = t.get("total_s")
        fp = t.get("machine") if isinstance(t.get("machine"), dict) else {}
        if fp.get("id"):
            machines.setdefault(fp["id"], (fp, []))[1].append(s.name)
        arts = t.get("artifacts") if isinstance(t.get("artifacts"), dict) else None
        rows.append([s.name, s.status, t.get("device", "-"), "-" if total is None else f"{total:.1f}",
                     f"`{fp['id']}`" if fp.get("id") else "-", "-" if arts is None else str(len(arts)),
                     f"`{str(stamp.get('key', ''))[:12]}`", stamp.get("ran_at", "-")[:19]])
        for label, sec in (t.get("steps") or {}).items():
            steps.append([s.name, label, f"{sec:.2f}"])
    out += [md_table(["stage", "status", "device", "notebook time (s)", "machine", "artifacts", "stage key",
                      "executed at (UTC)"], rows), ""]
    out += machine_markdown(machines)
    if steps:
        out += ["## Step times", "", md_table(["stage", "step", "seconds"], steps), ""]
    out += ["## Package versions", "", md_table(["package", "version"], [[k, v] for k, v in _versions().items()]), ""]
    return "\n".join(out) + "\n"
