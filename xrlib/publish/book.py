"""The publishing layer: execute the chapters with papermill and assemble the HTML book.

``xrlib book --profile NAME`` (see :func:`build_book`) does two things:

1. **Execute** every notebook of ``notebooks/`` in study order with papermill (kernel ``python3``,
   working directory = the notebooks folder), injecting ``profile`` (and ``run_root`` when given)
   plus ``-p KEY VALUE`` overrides. Executed copies go to ``book/executed/<profile>/<name>.ipynb``.
2. **Publish** them: copy the executed notebooks into ``book/chapters/`` (papermill's injected
   parameters cell removed, a "built with" banner added), write the generated pages
   (``book/generated/findings.md`` for the introduction, ``book/generated/run_metadata.md`` for
   the appendix) and run ``jupyter-book build`` with notebook execution off.

Cache
    A stage is reused (status ``cached``) when its executed copy exists, has no error output, and
    its stamp ``<name>.stamp.json`` matches the stage key: SHA-256 of the notebook source without
    outputs, the profile YAML text, the overrides, the run folder, the xrlib version and the stamps
    of all earlier stages. Each stamp also records *when* the stage ran, so re-running an upstream
    stage changes its stamp and invalidates every later stage.

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

Publishing is all-or-nothing
    HTML is built only when every stage of the profile is fresh (``ran`` or ``cached``) in this
    invocation. The book is built into a temporary folder next to ``book/_build/html`` and swapped
    in only when ``jupyter-book`` succeeds (strict: ``-W`` turns broken cross-references, missing
    images and unknown documents into errors), so ``book/_build/html`` is always one complete,
    consistent build — never a mix of stale and fresh chapters. A failed invocation leaves the
    previous complete book untouched and says so.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from xrlib import __version__
from xrlib.core.runs import REPO_ROOT, run_dir, versions
from xrlib.core.profiles import DATASET_KEYS, load_profile, profile_hash

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
BOOK_DIR = REPO_ROOT / "book"
KERNEL = "python3"
#: Parameters set by ``--profile`` / ``--run-root``; ``-p`` may not override them.
RESERVED = ("profile", "run_root")
#: Packages listed in the appendix (those installed).
VERSION_PACKAGES = ("xrlib", "numpy", "pandas", "torch", "monai", "itk-rtk", "diffdrr", "spekpy", "xraydb",
                    "matplotlib", "papermill", "jupyter-book", "sphinx", "myst-nb")


class BookError(Exception):
    """A stage failed or the HTML build failed (one-line message, exit status 1)."""


class BookUsageError(Exception):
    """Bad ``xrlib book`` arguments (one-line message, exit status 2)."""


@dataclass
class StageResult:
    name: str
    status: str = "skipped"          # ran | cached | failed | skipped
    wall_s: float | None = None
    device: str = ""
    note: str = ""


@dataclass
class BookReport:
    profile: str
    stages: list[StageResult] = field(default_factory=list)
    html: Path | None = None
    html_note: str = ""
    error: str = ""
    html_s: float | None = None      # wall time of the jupyter-book build

    @property
    def ok(self) -> bool:
        return not self.error

    def table(self) -> str:
        rows = [("stage", "status", "wall", "device")]
        for s in self.stages:
            wall = "-" if s.wall_s is None else f"{s.wall_s:.1f} s"
            rows.append((s.name, s.status + (f" ({s.note})" if s.note else ""), wall, s.device or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# stages, stamps and the cache


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


def _paths(out_dir: Path, name: str) -> dict[str, Path]:
    return {"done": out_dir / f"{name}.ipynb", "stamp": out_dir / f"{name}.stamp.json",
            "failed": out_dir / f"{name}.failed.ipynb", "running": out_dir / f"{name}.running.ipynb"}


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _has_error(path: Path) -> bool:
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # unreadable counts as broken
        return True
    return any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def fresh_stamp(out_dir: Path, name: str, key: str) -> dict | None:
    """The stamp of a reusable executed copy, or ``None`` (missing, stale key, or an error inside)."""
    p = _paths(out_dir, name)
    stamp = _read_json(p["stamp"])
    if not stamp or stamp.get("key") != key or not p["done"].is_file() or _has_error(p["done"]):
        return None
    return stamp


def _timings(run: Path, name: str) -> dict:
    return _read_json(run / f"{name}.timings.json") or {}


def _failure_line(nb_name: str, exc: Exception) -> str:
    ename = getattr(exc, "ename", None) or type(exc).__name__
    evalue = getattr(exc, "evalue", None)
    evalue = str(exc) if evalue is None else str(evalue)
    msg = " ".join(evalue.split())[:300]
    count = getattr(exc, "exec_count", None)
    where = f" cell {count}" if count is not None else ""
    return f"book: {nb_name}{where}: {ename}: {msg}"


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
) -> BookReport:
    """Execute (or reuse) the stages of a profile; see the module docstring for the rules.

    Returns a :class:`BookReport`; ``report.error`` holds the one-line failure message, if any.
    Raises :class:`BookUsageError` for a bad ``only`` / ``overrides`` and
    :class:`~xrlib.core.errors.InputError` for an unknown profile.
    """
    overrides = dict(overrides or {})
    bad = [k for k in overrides if k in RESERVED]
    if bad:
        raise BookUsageError(f"xrlib book: set {bad[0]!r} with --{bad[0].replace('_', '-')}, not -p")
    cfg = load_profile(profile)
    name = cfg["name"]
    profile_text = Path(cfg["path"]).read_text(encoding="utf-8")
    notebooks = notebooks_in(notebooks_dir)
    stems = [p.stem for p in notebooks]
    selected = set(stems)
    if only:
        unknown = [s for s in only if s not in stems and Path(s).stem not in stems]
        if unknown:
            raise BookUsageError(f"xrlib book: unknown stage {unknown[0]!r} for --only; stages: {', '.join(stems)}")
        selected = {Path(s).stem for s in only}
    run = run_dir(name, run_root)
    out_dir = Path(book_dir) / "executed" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"profile": name, **({"run_root": str(run_root)} if run_root else {}), **overrides}

    report = BookReport(profile=name, stages=[StageResult(nb.stem) for nb in notebooks])  # all "skipped"
    last_selected = max(i for i, s in enumerate(stems) if s in selected)
    upstream: list[str] = []
    chain_ok = True  # every earlier stage is fresh, so later keys are computable
    for i, (nb, res) in enumerate(zip(notebooks, report.stages)):
        key = stage_key(nb, profile_text, overrides, run, upstream) if chain_ok else None
        stamp = fresh_stamp(out_dir, nb.stem, key) if key else None
        if nb.stem not in selected or (stamp and not force):
            if stamp:
                res.status = "cached"
                res.wall_s = stamp.get("wall_s")
                res.device = _timings(run, nb.stem).get("device", "")
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
        import papermill  # here: importing it takes seconds, and a fully cached run needs none

        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(str(nb), str(p["running"]), parameters=params, kernel_name=KERNEL,
                                       cwd=str(Path(notebooks_dir)), progress_bar=progress)
        except Exception as exc:  # papermill.PapermillExecutionError, a dead kernel, ...
            res.status, res.wall_s = "failed", time.perf_counter() - t0
            if p["running"].exists():
                p["running"].replace(p["failed"])
                res.note = f"see {p['failed']}"
            report.error = _failure_line(nb.name, exc)
            break
        res.status, res.wall_s = "ran", time.perf_counter() - t0
        res.device = _timings(run, nb.stem).get("device", "")
        p["running"].replace(p["done"])
        stamp = {"stage": nb.stem, "key": key, "ran_at": _dt.datetime.now(_dt.UTC).isoformat(),
                 "wall_s": res.wall_s, "profile": name, "overrides": overrides, "run": str(run),
                 "xrlib": __version__}
        tmp = p["stamp"].with_suffix(".tmp")
        tmp.write_text(json.dumps(stamp, indent=2), encoding="utf-8")
        tmp.replace(p["stamp"])
        upstream.append(stamp_digest(stamp))
    return report


# ---------------------------------------------------------------------------------------------
# generated pages and the HTML build


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), **versions(VERSION_PACKAGES)}


def _md_table(header: list[str], rows: list[list]) -> str:
    esc = lambda v: str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def headline_markdown(df, run: Path, profile: str) -> list[str]:
    """Caption and table of mean Dice (%) per model at Center vs Moderate α on the synthetic test set."""
    syn = df[df["test_set"] == "Syn_test"] if "test_set" in df.columns else df
    domain = "clinical surrogate (realistic-physics renders at well-positioned poses)"
    try:
        from xrlib.data.shards import read_manifest
        from xrlib.studies.rotation.study import real_domain

        domain = str(real_domain(read_manifest(run / "datasets")))
    except Exception:
        pass
    n_train = study_train_images(run, profile)
    rows = []
    for model in dict.fromkeys(syn["model"]):
        m = syn[syn["model"] == model]
        center = m[m["group"] == "Center"]["dice"].mean() * 100
        moderate = m[m["group"].astype(str).str.startswith("Moderate")]["dice"].mean() * 100
        rows.append([model, n_train.get(model, "?"), f"{center:.1f}", f"{moderate:.1f}", f"{moderate - center:+.1f}"])
    n_sub = syn["subject"].nunique() if "subject" in syn.columns else "?"
    n_alpha = syn["alpha"].nunique() if "alpha" in syn.columns else "?"
    most = max(n_train.values()) if n_train else None
    return [
        f"**Mean Dice (%) on the synthetic test set — profile {profile}; 'Real' training domain: "
        f"{domain}; test subjects are a virtual cohort from one CT, not independent patients.** "
        f"{n_sub} test subject(s) × {n_alpha} angles. Center = α ∈ [−2°, 2°]; Moderate = "
        f"|α| ∈ [12°, 20°] (Moderate− and Moderate+ pooled).",
        "",
        _md_table(["model", "training images", "Center", "Moderate", "Moderate − Center"], rows),
        "",
        *([] if profile == "paper" else [
            f"The {profile!r} profile trains each model on "
            f"{f'at most {most} images' if most is not None else 'a small set of images'}, on a CPU budget; these "
            "numbers check the pipeline end to end and show the direction of the effects, not the paper's "
            "absolute values.", ""]),
    ]


def study_train_images(run: Path, profile: str) -> dict[str, int]:
    """Training images of each study model, counted from the run's dataset manifest ({} if unreadable)."""
    try:
        from xrlib.training.train import select_images, study_configs

        cfg = load_profile(profile)
        return {c.name: len(select_images(Path(run) / "datasets", c.train_sets, "train", c.cen_alphas))
                for c in study_configs(cfg)}
    except Exception:  # a missing or foreign manifest: the table says "?"
        return {}


def findings_markdown(report: BookReport, run: Path) -> str:
    """The "findings of this build" section of the introduction, from ``<run>/evaluation/results.csv``."""
    import pandas as pd

    lines = [f"*Generated from the run of this build — profile **{report.profile}**, run folder "
             f"`{run.name}/`. Numbers below are computed, not typed.*", ""]
    path = run / "evaluation" / "results.csv"
    df = None
    if path.is_file():
        try:
            df = pd.read_csv(path)
        except Exception:
            df = None
    if df is None or not {"model", "group", "dice"} <= set(df.columns):
        ran = ", ".join(f"{s.name} ({s.status})" for s in report.stages)
        lines.append(f"No evaluation results in this run (`evaluation/results.csv` is missing). Stages: {ran}.")
        return "\n".join(lines) + "\n"
    lines += headline_markdown(df, run, report.profile)
    return "\n".join(lines) + "\n"


def metadata_markdown(report: BookReport, run: Path, cfg: dict, overrides: dict, book_dir: Path = BOOK_DIR) -> str:
    """The generated appendix: profile, hashes, versions, devices and stage times of this build."""
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"*Generated at build time ({when}).*", "",
           _md_table(["item", "value"], [
               ["profile", f"{report.profile} (`{Path(cfg['path']).name}`)"],
               ["profile hash (all keys)", f"`{profile_hash(cfg)[:16]}`"],
               ["dataset hash (dataset keys)", f"`{profile_hash(cfg, DATASET_KEYS)[:16]}`"],
               ["overrides (-p)", f"`{json.dumps(overrides, sort_keys=True)}`" if overrides else "none"],
               ["run folder", f"`{run.name}/`"],
               ["build host", f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores"],
           ]), "", "## Stages", ""]
    rows, steps = [], []
    out_dir = Path(book_dir) / "executed" / report.profile
    for s in report.stages:
        t = _timings(run, s.name)
        stamp = _read_json(out_dir / f"{s.name}.stamp.json") or {}
        total = t.get("total_s")
        rows.append([s.name, s.status, t.get("device", "-"), "-" if total is None else f"{total:.1f}",
                     f"`{str(stamp.get('key', ''))[:12]}`", stamp.get("ran_at", "-")[:19]])
        for label, sec in (t.get("steps") or {}).items():
            steps.append([s.name, label, f"{sec:.2f}"])
    out += [_md_table(["stage", "status", "device", "notebook time (s)", "stage key", "executed at (UTC)"], rows), ""]
    if steps:
        out += ["## Step times", "", _md_table(["stage", "step", "seconds"], steps), ""]
    out += ["## Package versions", "", _md_table(["package", "version"], [[k, v] for k, v in _versions().items()]), ""]
    return "\n".join(out) + "\n"


README_BEGIN = "<!-- begin: generated by `xrlib book --readme` from the last build; do not edit by hand -->"
README_END = "<!-- end: generated -->"


def _git_commit(path: Path, ignore: Path | None = None) -> str:
    """Short commit of ``path``'s repository, flagged when tracked files (other than ``ignore``) differ."""
    exclude = [f":(exclude){Path(ignore).resolve()}"] if ignore is not None else []
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=False, timeout=10)
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no", "--",
                                ".", *exclude], capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def readme_markdown(report: BookReport, run: Path, repo: Path = REPO_ROOT, readme: Path | None = None) -> str:
    """The README's generated section: headline result and measured cost of this (complete) build."""
    import pandas as pd

    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    host = f"{platform.system()} {platform.machine()} with {os.cpu_count()} CPU cores"
    lines = [f"*Last `xrlib book --profile {report.profile}` build: {when}, commit {_git_commit(repo, readme)}, {host}.*", ""]
    path = run / "evaluation" / "results.csv"
    if path.is_file():
        lines += headline_markdown(pd.read_csv(path), run, report.profile)
    else:
        lines += ["No evaluation results in this build (`evaluation/results.csv` is missing).", ""]
    rows, total = [], 0.0
    for s in report.stages:
        rows.append([s.name, s.status, s.device or "-", "-" if s.wall_s is None else f"{s.wall_s / 60:.1f}"])
        total += s.wall_s or 0.0
    if report.html_s is not None:
        rows.append(["HTML (jupyter-book)", "ran", "-", f"{report.html_s / 60:.1f}"])
        total += report.html_s
    rows.append(["**total**", "", "", f"**{total / 60:.1f}**"])
    cached = any(s.status == "cached" for s in report.stages)
    lines += [f"Cost of this build (wall minutes per stage; papermill execution{', cached stages show the time of the run that built them' if cached else ''}; `make setup` not included):", "",
              _md_table(["stage", "status", "device", "minutes"], rows), ""]
    return "\n".join(lines)


def update_readme(path: str | Path, text: str) -> None:
    """Replace the section between :data:`README_BEGIN` and :data:`README_END` of ``path`` (atomic write)."""
    from xrlib.core.atomic import write_text_atomic

    path = Path(path)
    old, i, j = _readme_span(path)
    write_text_atomic(path, old[:i + len(README_BEGIN)] + "\n" + text.rstrip("\n") + "\n" + old[j:])


def _readme_span(path: Path) -> tuple[str, int, int]:
    if not path.is_file():
        raise BookError(f"book: {path}: no such file (--readme)")
    text = path.read_text(encoding="utf-8")
    i, j = text.find(README_BEGIN), text.find(README_END)
    if i < 0 or j < i:
        raise BookError(f"book: {path}: the generated section's markers are missing (a line {README_BEGIN!r} "
                        f"followed later by {README_END!r})")
    return text, i, j


def _banner(report: BookReport, res: StageResult, overrides: dict) -> str:
    extra = f", overrides `{json.dumps(overrides, sort_keys=True)}`" if overrides else ""
    how = "executed in this build" if res.status == "ran" else "reused from the cache"
    wall = f" in {res.wall_s:.1f} s" if res.wall_s is not None else ""
    return (f"> Built with profile **{report.profile}** on {res.device or 'an unknown device'}{wall} "
            f"({how}; xrlib {__version__}{extra}). Run details: [appendix](../appendix.md).")


def prepare_chapter(src: Path, dst: Path, banner: str) -> None:
    """Copy an executed notebook into the book: hide the parameters cells, add the banner."""
    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if ("injected-parameters" in tags or "parameters" in tags) and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    pos = 1 if nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("#") else 0
    cell = nbformat.v4.new_markdown_cell(banner)
    if nb.nbformat_minor < 5:  # cell ids exist from nbformat 4.5 on
        cell.pop("id", None)
    nb.cells.insert(pos, cell)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)


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


def build_html(report: BookReport, *, cfg: dict, run: Path, overrides: dict, book_dir: Path = BOOK_DIR,
               log=print) -> Path:
    """Publish the executed chapters of ``report`` as HTML (atomic swap into ``_build/html``)."""
    book_dir = Path(book_dir)
    stems = [s.name for s in report.stages]
    listed = toc_chapters(book_dir)
    if listed != stems:
        raise BookError(f"book: _toc.yml lists chapters {listed} but the notebooks are {stems}")
    chapters = book_dir / "chapters"
    shutil.rmtree(chapters, ignore_errors=True)
    executed = book_dir / "executed" / report.profile
    for s in report.stages:
        prepare_chapter(executed / f"{s.name}.ipynb", chapters / f"{s.name}.ipynb", _banner(report, s, overrides))
    gen = book_dir / "generated"
    gen.mkdir(exist_ok=True)
    (gen / "findings.md").write_text(findings_markdown(report, run), encoding="utf-8")
    (gen / "run_metadata.md").write_text(metadata_markdown(report, run, cfg, overrides, book_dir), encoding="utf-8")

    build = book_dir / "_build"
    build.mkdir(exist_ok=True)
    tmp = build / f".staging-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(book_dir), "--path-output", str(tmp),
           "--builder", "html", "-W", "--keep-going"]
    log(f"book: jupyter-book build ({report.profile}) ...")
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    text = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + "\n" + proc.stderr)  # no terminal colours
    logfile = build / "jupyter-book.log"
    logfile.write_text(text, encoding="utf-8")
    html = tmp / "_build" / "html"
    if proc.returncode != 0 or not (html / "index.html").is_file():
        warnings = [ln for ln in text.splitlines() if "WARNING" in ln or "ERROR" in ln]
        shutil.rmtree(tmp, ignore_errors=True)
        first = " ".join((warnings[0] if warnings else "see the log").split())[:300]
        raise BookError(f"book: jupyter-book build failed ({len(warnings)} warning(s)/error(s); log {logfile}): {first}")
    final = build / "html"
    old = build / f".old-{os.getpid()}"
    if final.exists():
        final.replace(old)
    html.replace(final)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return final / "index.html"


def build_book(
    profile: str,
    *,
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    book_dir: str | Path = BOOK_DIR,
    only: list[str] | None = None,
    overrides: dict | None = None,
    run_root: str | Path | None = None,
    html: bool = True,
    force: bool = False,
    progress: bool = True,
    readme: str | Path | None = None,
    log=print,
) -> BookReport:
    """Execute the stages, then (if all are fresh and ``html``) publish the HTML book.

    ``readme``: after a successful publish, rewrite that file's generated section
    (:func:`readme_markdown`: headline result and stage times of this build).
    """
    overrides = dict(overrides or {})
    if readme is not None:  # check before hours of work, not after
        try:
            _readme_span(Path(readme))
        except BookError as exc:
            raise BookUsageError(str(exc)) from None
    report = execute_stages(profile, notebooks_dir=notebooks_dir, book_dir=book_dir, only=only,
                            overrides=overrides, run_root=run_root, force=force, progress=progress, log=log)
    final = Path(book_dir) / "_build" / "html"
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
        run = run_dir(cfg["name"], run_root)
        try:
            t0 = time.perf_counter()
            report.html = build_html(report, cfg=cfg, run=run, overrides=overrides, book_dir=Path(book_dir), log=log)
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
