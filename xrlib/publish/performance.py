"""Benchmark results as files, and the book's *Performance* page made from them.

Each benchmark of ``benchmarks/`` (``make bench``) writes every table it measures with
:func:`write_result` to ``benchmarks/results/<name>.json`` (or ``$XRLIB_BENCH_RESULTS``: the tests
point it at a temporary folder), one JSON object per table::

    {"benchmark": str, "title": str, "command": str, "date": ISO 8601 str, "machine": {...},
     "columns": [str, ...], "rows": [[cell, ...], ...], "notes": [str, ...]}

The book build renders every such file into ``book/generated/performance.md``
(:func:`performance_markdown`), which ``book/performance.md`` includes: the page shows what the last
``make bench`` on some machine measured, with its command, date and machine, and never a number typed
by hand.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

from xrlib.core.atomic import write_json_atomic
from xrlib.core.runs import REPO_ROOT
from xrlib.publish.errors import BookError
from xrlib.publish.pages import md_table

#: Environment variable naming the results folder (default :data:`DEFAULT_RESULTS_DIR`).
RESULTS_ENV = "XRLIB_BENCH_RESULTS"
#: Where ``make bench`` leaves its results.
DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
#: The keys of a result file and their JSON types.
SCHEMA = {"benchmark": str, "title": str, "command": str, "date": str, "machine": dict, "columns": list,
          "rows": list, "notes": list}


def results_dir() -> Path:
    """The folder benchmark results go to: ``$XRLIB_BENCH_RESULTS`` if set, else :data:`DEFAULT_RESULTS_DIR`."""
    value = os.environ.get(RESULTS_ENV, "").strip()
    return Path(value) if value else DEFAULT_RESULTS_DIR


def machine_description() -> dict:
    """What a result was measured on: the default device (:func:`xrlib.core.runs.device_description`),
    the platform, and the machine fingerprint (:func:`xrlib.core.machine.machine_fingerprint`: CPU model,
    ISA flags, torch's CPU capability, library builds, thread counts and its id)."""
    from xrlib.core.machine import machine_fingerprint
    from xrlib.core.runs import device_description

    return {"device": device_description(), "platform": platform.platform(), **machine_fingerprint()}


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran the benchmark, as a user would type it from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]) if argv else Path("?")
    try:
        script = script.resolve().relative_to(REPO_ROOT)
    except ValueError:
        pass
    return shlex.join(["python", script.as_posix(), *argv[1:]])


def write_result(name: str, title: str, columns: list[str], rows: list[list], notes: list[str] | None = None, *,
                 benchmark: str | None = None, folder: str | Path | None = None,
                 machine: dict | None = None) -> Path:
    """Write one measured table to ``<folder>/<name>.json`` (atomically); returns the path.

    ``name``: the file's stem (letters, digits, ``-``, ``_``); ``benchmark``: the script (default: the
    running one's stem); cells are JSON scalars (numbers rounded as the benchmark prints them).
    """
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"result name {name!r}: use letters, digits, '-' and '_'")
    rows = [list(r) for r in rows]
    for i, r in enumerate(rows):
        if len(r) != len(columns):
            raise ValueError(f"result {name}: row {i + 1} has {len(r)} cells for {len(columns)} columns")
    record = {"benchmark": benchmark or Path(sys.argv[0]).stem, "title": title, "command": command_line(),
              "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
              "machine": machine if machine is not None else machine_description(),
              "columns": list(columns), "rows": rows, "notes": list(notes or [])}
    path = Path(folder if folder is not None else results_dir()) / f"{name}.json"
    write_json_atomic(path, record)
    return path


def load_result(path: str | Path) -> dict:
    """One result file, checked against :data:`SCHEMA`; :class:`BookError` naming the file and the problem."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BookError(f"book: {path}: not a readable benchmark result ({exc})") from None
    if not isinstance(record, dict):
        raise BookError(f"book: {path}: a benchmark result is a JSON object, got {type(record).__name__}")
    for key, kind in SCHEMA.items():
        if not isinstance(record.get(key), kind):
            raise BookError(f"book: {path}: key {key!r} missing or not a {kind.__name__}")
    try:
        _dt.datetime.fromisoformat(record["date"])
    except ValueError:
        raise BookError(f"book: {path}: 'date' {record['date']!r} is not an ISO 8601 date") from None
    for i, row in enumerate(record["rows"]):
        if not isinstance(row, list) or len(row) != len(record["columns"]):
            raise BookError(f"book: {path}: row {i + 1} does not have one cell per column ({len(record['columns'])})")
    return record


def _cell(value) -> str:
    if value is None:
        return "–"
    return str(value).replace("\n", " ")


#: The fingerprint keys a result's caption names (the whole fingerprint stays in its file).
CAPTION_KEYS = ("device", "cpu_model", "torch_cpu_capability", "threads", "portable", "id")


def _machine_line(m: dict) -> str:
    if not m:
        return "machine not recorded"
    keys = [k for k in CAPTION_KEYS if k in m] or list(m)
    return ", ".join(f"{'fingerprint' if k == 'id' else k} {m[k]}" for k in keys)


def performance_markdown(folder: str | Path | None = None) -> str:
    """Every result file of ``folder`` (default :func:`results_dir`) as a Markdown section, by benchmark and name."""
    folder = Path(folder if folder is not None else results_dir())
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not paths:
        return ("No benchmark results yet: run `make bench` (or one script of `benchmarks/`) and rebuild the "
                "book; each benchmark writes its tables to `benchmarks/results/`.\n")
    records = sorted(((load_result(p), p) for p in paths), key=lambda rp: (rp[0]["benchmark"], rp[1].name))
    lines: list[str] = []
    for rec, path in records:
        where = _machine_line(rec["machine"])
        lines += [f"### {rec['title']}", "",
                  f"*`{rec['command']}` — {rec['date']}; {where}. File `{path.name}`.*", "",
                  md_table([_cell(c) for c in rec["columns"]], [[_cell(v) for v in r] for r in rec["rows"]]), ""]
        lines += [f"- {_cell(n)}" for n in rec["notes"]]
        if rec["notes"]:
            lines.append("")
    return "\n".join(lines)
