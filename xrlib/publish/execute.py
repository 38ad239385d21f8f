"""Executing the chapters: stage keys and stamps (the cache), papermill runs, fail-fast failure lines.

Every notebook of ``notebooks/`` runs in study order with papermill (kernel ``python3``, working
directory = the notebooks folder), with ``profile`` (and ``run_root`` when given) plus ``-p KEY VALUE``
overrides injected. Executed copies go to ``book/executed/<profile>/<name>.ipynb``.

Cache
    A stage is reused (status ``cached``) when its executed copy exists, has no error output, and
    its stamp ``<name>.stamp.json`` matches the stage key: SHA-256 of the notebook source without
    outputs, the profile YAML text, the overrides, the run folder, the xrlib version and the stamps
    of all earlier stages. Each stamp also records *when* the stage ran, so re-running an upstream
    stage changes its stamp and invalidates every later stage, and the id of the machine fingerprint
    the stage recorded (:mod:`xrlib.core.machine`; not part of the key).

Executor
    ``--executor local|process|ray`` reaches the notebooks whose parameters cell declares
    ``executor`` (01, 04, 05, 08, 13: cohort, datasets, trainings, chapter 08's trainings, the card's seed trainings) as that papermill parameter; ``--address``
    reaches them as the environment variable ``XRLIB_RAY_ADDRESS`` of the kernel. Neither is part of
    the stage key: every executor writes the same artifacts, so switching it reuses cached stages.

``--only STAGE …``
    Runs (or reuses, if fresh) just the named stages; ``--force`` re-runs them regardless. Every
    stage *before* a selected one must already have a fresh stamp — otherwise nothing runs and the
    command exits with status 2 naming the missing stage (an ``--only`` run never computes
    upstream artifacts behind your back, and never runs on stale ones). Unselected stages are
    reported ``cached`` when fresh, else ``skipped``.

Failure
    On a cell error the run stops at once: the executed notebook is kept as
    ``<name>.failed.ipynb``, one line ``book: <notebook> cell <n>: <Exception>: <message>`` goes to
    stderr (``n`` is the execution count shown in the executed notebook) and the exit status is 1.

Portability
    The kernels are started by this process and inherit its environment, so with ``XRLIB_PORTABLE=1``
    (set by ``xrlib`` on import, :mod:`xrlib.core.machine`) they start with torch, oneDNN and numpy
    pinned, before the notebook imports any of them.

Kernel transport
    The kernel talks to papermill over local IPC sockets (in a private temporary folder), not TCP on
    127.0.0.1: the kernel would otherwise warn, once per notebook, that it runs "over TCP without
    encryption", and IPC is what that warning recommends.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import nbformat

from xrlib import __version__
from xrlib.core.atomic import write_json_atomic
from xrlib.core.profiles import load_profile
from xrlib.core.runs import REPO_ROOT, run_dir
from xrlib.publish.errors import BookUsageError
from xrlib.publish.report import BookReport, StageResult

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
BOOK_DIR = REPO_ROOT / "book"
KERNEL = "python3"
#: Parameters set by ``--profile`` / ``--run-root`` / ``--executor``; ``-p`` may not override them.
RESERVED = ("profile", "run_root", "executor")
#: The notebook parameter that receives ``--executor`` (only notebooks whose parameters cell has it).
EXECUTOR_PARAM = "executor"


def notebooks_in(folder: str | Path) -> list[Path]:
    """The study notebooks of ``folder`` (``NN_name.ipynb``) in study order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BookUsageError(f"xrlib book: notebooks folder {str(folder)!r} does not exist")
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise BookUsageError(f"xrlib book: no NN_name.ipynb notebooks in {str(folder)!r}")
    return paths


def source_digest(path: Path) -> str:
    """SHA-256 of a notebook's cells (type, source, tags) — outputs, counts and ids ignored."""
    nb = nbformat.read(path, as_version=4)
    cells = [[c.cell_type, c.source, sorted(c.metadata.get("tags", []))] for c in nb.cells]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=True).encode()).hexdigest()


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=True, default=str).encode()).hexdigest()


def stage_key(nb_path: Path, profile_text: str, overrides: dict, run: Path, upstream: list[str]) -> str:
    """The cache key of one stage (see the module docstring)."""
    return _sha({"notebook": source_digest(nb_path), "profile": profile_text, "overrides": overrides,
                 "run": str(Path(run).resolve()), "xrlib": __version__, "upstream": upstream})


def stamp_digest(stamp: dict) -> str:
    """What later stages depend on: the key *and* when the stage ran."""
    return _sha([stamp.get("key"), stamp.get("ran_at")])


def executed_dir(book_dir: str | Path, profile: str) -> Path:
    """Where the executed copies and stamps of a profile's stages live."""
    return Path(book_dir) / "executed" / profile


def _paths(out_dir: Path, name: str) -> dict[str, Path]:
    return {"done": out_dir / f"{name}.ipynb", "stamp": out_dir / f"{name}.stamp.json",
            "failed": out_dir / f"{name}.failed.ipynb", "running": out_dir / f"{name}.running.ipynb"}


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or ``None`` (missing, unreadable or not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def read_stamp(out_dir: Path, name: str) -> dict:
    """The stamp of stage ``name`` in ``out_dir`` ({} when there is none)."""
    return read_json(_paths(out_dir, name)["stamp"]) or {}


def stage_timings(run: Path, name: str) -> dict:
    """The ``<run>/<name>.timings.json`` a stage writes (device, step and total times; {} if absent)."""
    return read_json(Path(run) / f"{name}.timings.json") or {}


def _has_error(path: Path) -> bool:
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # unreadable counts as broken
        return True
    return any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def fresh_stamp(out_dir: Path, name: str, key: str, run: Path | None = None) -> dict | None:
    """The stamp of a reusable executed copy, or ``None`` (missing, stale key, an error inside, or — with
    ``run`` — the ``<run>/<name>.timings.json`` the stage wrote gone: its artifacts were deleted since it ran)."""
    p = _paths(out_dir, name)
    stamp = read_json(p["stamp"])
    if not stamp or stamp.get("key") != key or not p["done"].is_file() or _has_error(p["done"]):
        return None
    if run is not None and stamp.get("timings") and not (Path(run) / f"{name}.timings.json").is_file():
        return None
    return stamp


def failure_line(nb_name: str, exc: Exception) -> str:
    """``book: <notebook> cell <n>: <Exception>: <message>`` for a failed papermill run."""
    ename = getattr(exc, "ename", None) or type(exc).__name__
    evalue = getattr(exc, "evalue", None)
    evalue = str(exc) if evalue is None else str(evalue)
    msg = " ".join(evalue.split())[:300]
    count = getattr(exc, "exec_count", None)
    where = f" cell {count}" if count is not None else ""
    return f"book: {nb_name}{where}: {ename}: {msg}"


def declares_parameter(path: Path, name: str) -> bool:
    """Whether the notebook's ``parameters`` cell assigns ``name`` (``name = ...`` at the start of a line)."""
    import re

    nb = nbformat.read(path, as_version=4)
    pattern = re.compile(rf"^{re.escape(name)}\s*(:[^=]*)?=", re.M)
    return any(pattern.search(c.source) for c in nb.cells
               if c.cell_type == "code" and "parameters" in c.metadata.get("tags", []))


def run_notebook(src: Path, dst: Path, params: dict, cwd: Path, progress: bool) -> None:
    """Execute ``src`` into ``dst`` with papermill, the kernel on IPC sockets (see the module docstring)."""
    import papermill  # here: importing it takes seconds, and a fully cached run needs none
    from traitlets.config import Config

    sockets = Path(tempfile.mkdtemp(prefix="xrlib-kernel-"))  # short and private: a socket path has ~100 bytes
    try:
        config = Config({"KernelManager": {"transport": "ipc", "ip": str(sockets / "k")}})
        papermill.execute_notebook(str(src), str(dst), parameters=params, kernel_name=KERNEL, cwd=str(cwd),
                                   progress_bar=progress, config=config)
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


@contextlib.contextmanager
def _address_env(address: str | None):
    """``XRLIB_RAY_ADDRESS`` set to ``address`` for the kernels started inside (restored after)."""
    if address is None:
        yield
        return
    old = os.environ.get("XRLIB_RAY_ADDRESS")
    os.environ["XRLIB_RAY_ADDRESS"] = str(address)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("XRLIB_RAY_ADDRESS", None)
        else:
            os.environ["XRLIB_RAY_ADDRESS"] = old


def execute_stages(
    profile: str,
    *,
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    book_dir: str | Path = BOOK_DIR,
    only: list[str] | None = None,
    overrides: dict | None = None,
    run_root: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    log=print,
    executor: str = "local",
    address: str | None = None,
) -> BookReport:
    """Execute (or reuse) the stages of a profile; see the module docstring for the rules.

    ``executor``/``address``: where notebooks that take an ``executor`` parameter run their tasks
    (see the module docstring; not part of the stage keys).
    Returns a :class:`BookReport`; ``report.error`` holds the one-line failure message, if any.
    Raises :class:`BookUsageError` for a bad ``only`` / ``overrides`` and
    :class:`~xrlib.core.errors.InputError` for an unknown profile.
    """
    overrides = dict(overrides or {})
    bad = [k for k in overrides if k in RESERVED]
    if bad:
        raise BookUsageError(f"xrlib book: set {bad[0]!r} with --{bad[0].replace('_', '-')}, not -p")
    cfg = load_profile(profile)
    name = cfg.name
    profile_text = Path(cfg.path).read_text(encoding="utf-8")
    notebooks = notebooks_in(notebooks_dir)
    stems = [p.stem for p in notebooks]
    selected = set(stems)
    if only:
        unknown = [s for s in only if s not in stems and Path(s).stem not in stems]
        if unknown:
            raise BookUsageError(f"xrlib book: unknown stage {unknown[0]!r} for --only; stages: {', '.join(stems)}")
        selected = {Path(s).stem for s in only}
    run = run_dir(name, run_root)
    out_dir = executed_dir(book_dir, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"profile": name, **({"run_root": str(run_root)} if run_root else {}), **overrides}

    report = BookReport(profile=name, stages=[StageResult(nb.stem) for nb in notebooks])  # all "skipped"
    last_selected = max(i for i, s in enumerate(stems) if s in selected)
    upstream: list[str] = []
    chain_ok = True  # every earlier stage is fresh, so later keys are computable
    for i, (nb, res) in enumerate(zip(notebooks, report.stages)):
        key = stage_key(nb, profile_text, overrides, run, upstream) if chain_ok else None
        stamp = fresh_stamp(out_dir, nb.stem, key, run) if key else None
        if nb.stem not in selected or (stamp and not force):
            if stamp:
                res.status = "cached"
                res.wall_s = stamp.get("wall_s")
                res.device = stage_timings(run, nb.stem).get("device", "")
                upstream.append(stamp_digest(stamp))
            else:
                chain_ok = False
                if i < last_selected:  # an upstream stage of a selected one is not fresh
                    raise BookUsageError(
                        f"xrlib book: --only needs the earlier stage {nb.stem} to be built and current first "
                        f"(run 'xrlib book --profile {name}' or add it to --only)")
            continue
        p = _paths(out_dir, nb.stem)
        for old in p.values():
            old.unlink(missing_ok=True)
        t0 = time.perf_counter()
        nb_params = {**params, EXECUTOR_PARAM: executor} if declares_parameter(nb, EXECUTOR_PARAM) else params
        try:  # papermill writes the "running" copy as it goes; it is renamed only once complete
            with _address_env(address):
                run_notebook(nb, p["running"], nb_params, Path(notebooks_dir), progress)
        except Exception as exc:  # papermill.PapermillExecutionError, a dead kernel, ...
            res.status, res.wall_s = "failed", time.perf_counter() - t0
            if p["running"].exists():
                p["running"].replace(p["failed"])
                res.note = f"see {p['failed']}"
            report.error = failure_line(nb.name, exc)
            break
        res.status, res.wall_s = "ran", time.perf_counter() - t0
        res.device = stage_timings(run, nb.stem).get("device", "")
        p["running"].replace(p["done"])
        stamp = {"stage": nb.stem, "key": key, "ran_at": _dt.datetime.now(_dt.UTC).isoformat(),
                 "wall_s": res.wall_s, "profile": name, "overrides": overrides, "run": str(run),
                 "xrlib": __version__, "executor": nb_params.get(EXECUTOR_PARAM, "local"),
                 "timings": (run / f"{nb.stem}.timings.json").is_file(),
                 "machine": (stage_timings(run, nb.stem).get("machine") or {}).get("id")}
        write_json_atomic(p["stamp"], stamp, indent=2)
        upstream.append(stamp_digest(stamp))
    return report
