"""What a stage wrote: a snapshot of the run folder before and after, and the digests of what changed.

A stage (:class:`xrlib.core.stage.Stage`) takes :func:`snapshot` of its run folder when it starts and
again when it ends; the files that are new or changed (size or modification time) are the stage's
artifacts, recorded by :func:`stage_artifacts` with their SHA-256 and size under their path relative
to the run folder (POSIX separators), so the record does not depend on where the run folder lives.

Why a snapshot and not the atomic writers registering what they write: a stage's artifacts are also
written by task processes (spawned pools, Ray workers) and by libraries, which a registry in the
notebook's process would not see; the snapshot sees every file, whoever wrote it, for the cost of one
``stat`` per file of the run folder.

A stage that reuses cached artifacts writes nothing new: its record keeps the artifacts of its last
record that are still unchanged on disk (same size and modification time), so a cached stage still
names what it produced.
"""

from __future__ import annotations

import os
from pathlib import Path

from xrlib.core.atomic import sha256_file

#: Files of the run folder that are never artifacts: the stage records themselves (they hold wall
#: times) and hidden files, among them the temporary names of unfinished atomic writes
#: (:func:`xrlib.core.atomic.atomic_write` names them ``.<name>.…``).
RECORD_SUFFIX = ".timings.json"


def _ignored(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return ("/" not in rel and name.endswith(RECORD_SUFFIX)) or name.startswith(".")


def snapshot(run: str | Path) -> dict[str, tuple[int, int]]:
    """``{relative POSIX path: (size in bytes, mtime in ns)}`` of every file under ``run`` (not the
    stage records or hidden files and folders)."""
    run = Path(run)
    out: dict[str, tuple[int, int]] = {}
    for root, dirs, files in os.walk(run):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(root) / name
            rel = path.relative_to(run).as_posix()
            if _ignored(rel):
                continue
            try:
                st = path.stat()
            except OSError:  # removed meanwhile
                continue
            out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def stage_artifacts(run: str | Path, before: dict, after: dict | None = None, previous: dict | None = None) -> dict:
    """``{relative path: {"sha256", "bytes", "mtime_ns"}}`` of the files new or changed between the snapshots
    ``before`` and ``after`` (default: a snapshot now), plus the entries of ``previous`` (the stage's last
    record) whose file is unchanged since; sorted by path."""
    run = Path(run)
    after = snapshot(run) if after is None else after
    out = {}
    for rel, (size, mtime) in after.items():
        if before.get(rel) != (size, mtime):
            out[rel] = {"sha256": sha256_file(run / rel), "bytes": size, "mtime_ns": mtime}
    for rel, rec in (previous or {}).items():
        if rel not in out and isinstance(rec, dict) and after.get(rel) == (rec.get("bytes"), rec.get("mtime_ns")):
            out[rel] = rec
    return dict(sorted(out.items()))
