"""Comparing two runs stage by stage: which stage's artifacts first differ, and how.

A run folder holds one record per stage, ``<stage>.timings.json`` (:class:`xrlib.core.stage.Stage`),
listing the artifacts the stage wrote (paths relative to the run folder, :mod:`xrlib.core.artifacts`).
:func:`compare_runs` walks the stages in book order (their names, ``NN_name``, sort in that order),
gives every file of either run to the first stage that recorded it (files no stage recorded form a
last group, ``(no stage)``), and compares the two copies of each file:

``identical``
    the same bytes (SHA-256; a recorded digest is reused while the file's size and modification
    time are those recorded);
``within tolerance``
    different bytes, equal content: CSV tables (numeric columns with ``numpy.isclose(a, b, rtol, atol)``,
    NaN equal to NaN, other columns exactly), JSON, ``.npz`` / ``.npy`` arrays and ``.pt`` objects
    (tensors) compared the same way;
``differ``
    anything else, with the first difference found; ``missing in A`` / ``missing in B`` for a file one
    run lacks.

Ignored everywhere: the stage records themselves (wall times), and inside CSV and JSON the columns
and keys that hold times or dates (:data:`TIME_KEY`: ``…_s``, ``seconds``, ``time``, ``wall``,
``elapsed``, ``timestamp``, ``date``, ``ran_at``, ``…_at``), ISO timestamps and absolute paths
(strings). Other files (images, NIfTI, Markdown, notebooks) are compared as bytes.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from xrlib.core.artifacts import RECORD_SUFFIX, snapshot
from xrlib.core.atomic import sha256_file
from xrlib.core.errors import InputError

#: Column / key names whose values are times or dates (case-insensitive).
TIME_KEY = re.compile(r"(_s|seconds|secs|\(s\)|time|times|wall|elapsed|timestamp|date|ran_at|_at)$", re.I)
_ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d")
#: The group of the files no stage recorded.
NO_STAGE = "(no stage)"
#: File statuses, from best to worst.
STATUSES = ("identical", "within tolerance", "differ", "missing in A", "missing in B")


@dataclass
class FileResult:
    """One file of a stage: its path (relative to the run folders), status and, when it differs, how."""

    path: str
    status: str
    detail: str = ""


@dataclass
class StageResult:
    """One stage: the comparison of each of its files; ``status`` is the worst of them."""

    stage: str
    files: list[FileResult] = field(default_factory=list)

    @property
    def status(self) -> str:
        worst = max((STATUSES.index(f.status) for f in self.files), default=0)
        return "differ" if worst >= 2 else STATUSES[worst]

    @property
    def differs(self) -> bool:
        return self.status == "differ"


@dataclass
class RunComparison:
    """The comparison of two runs: per stage in book order; :attr:`first_difference` is the first stage that differs."""

    run_a: Path
    run_b: Path
    stages: list[StageResult]
    rtol: float
    atol: float

    @property
    def first_difference(self) -> StageResult | None:
        return next((s for s in self.stages if s.differs), None)

    @property
    def equal(self) -> bool:
        return self.first_difference is None

    def report(self) -> str:
        """Human-readable lines: the verdict, then one line per stage and the files that are not identical."""
        first = self.first_difference
        lines = [f"runs {self.run_a} and {self.run_b}: " +
                 ("equal (identical bytes or numbers within rtol={:g}, atol={:g})".format(self.rtol, self.atol)
                  if first is None else f"first differing stage: {first.stage}")]
        for s in self.stages:
            n = len(s.files)
            counts = ", ".join(f"{sum(f.status == st for f in s.files)} {st}" for st in STATUSES
                               if any(f.status == st for f in s.files))
            lines.append(f"  {s.stage}: {s.status} ({n} file{'s' if n != 1 else ''}{': ' + counts if counts else ''})")
            for f in s.files:
                if f.status != "identical":
                    lines.append(f"    {f.status}: {f.path}" + (f" — {f.detail}" if f.detail else ""))
        return "\n".join(lines)


def _records(run: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(run.glob(f"*{RECORD_SUFFIX}")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise InputError(path, "unreadable stage record (not JSON)") from None
        if isinstance(data, dict):
            out[path.name[: -len(RECORD_SUFFIX)]] = data
    return out


def _check_run(path: str | Path, which: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise InputError(str(path), f"run {which} is not a folder")
    if not any(p.glob(f"*{RECORD_SUFFIX}")):
        raise InputError(str(path), f"run {which} has no stage records (*{RECORD_SUFFIX}); is it a run folder?")
    return p


def compare_runs(run_a: str | Path, run_b: str | Path, rtol: float = 1e-6, atol: float = 0.0) -> RunComparison:
    """Compare two run folders (module docstring). :class:`InputError` for a path that is not a run
    folder or a negative tolerance."""
    for name, v in (("--rtol", rtol), ("--atol", atol)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise InputError(name, f"must be a finite number ≥ 0, got {v!r}")
    a, b = _check_run(run_a, "A"), _check_run(run_b, "B")
    rec_a, rec_b = _records(a), _records(b)
    files_a, files_b = snapshot(a), snapshot(b)
    owner: dict[str, str] = {}
    for stage in sorted(set(rec_a) | set(rec_b)):
        for rec in (rec_a.get(stage, {}), rec_b.get(stage, {})):
            for rel in (rec.get("artifacts") or {}):
                owner.setdefault(rel, stage)
    groups: dict[str, list[str]] = {s: [] for s in sorted(set(rec_a) | set(rec_b))}
    groups[NO_STAGE] = []
    for rel in sorted(set(files_a) | set(files_b) | set(owner)):
        groups[owner.get(rel, NO_STAGE)].append(rel)
    stages = []
    for stage, rels in groups.items():
        if stage == NO_STAGE and not rels:
            continue
        known_a = (rec_a.get(stage, {}).get("artifacts") or {}) if stage != NO_STAGE else {}
        known_b = (rec_b.get(stage, {}).get("artifacts") or {}) if stage != NO_STAGE else {}
        res = StageResult(stage)
        for rel in rels:
            if rel not in files_a:
                res.files.append(FileResult(rel, "missing in A"))
            elif rel not in files_b:
                res.files.append(FileResult(rel, "missing in B"))
            else:
                res.files.append(compare_files(a / rel, b / rel, rel, rtol, atol,
                                               _digest(a, rel, files_a[rel], known_a), _digest(b, rel, files_b[rel], known_b)))
        stages.append(res)
    return RunComparison(a, b, stages, float(rtol), float(atol))


def _digest(run: Path, rel: str, stat: tuple[int, int], known: dict) -> str:
    rec = known.get(rel)
    if isinstance(rec, dict) and (rec.get("bytes"), rec.get("mtime_ns")) == tuple(stat) and rec.get("sha256"):
        return str(rec["sha256"])
    return sha256_file(run / rel)


def compare_files(pa: Path, pb: Path, rel: str, rtol: float, atol: float,
                  sha_a: str | None = None, sha_b: str | None = None) -> FileResult:
    """One file of both runs: ``identical``, ``within tolerance`` or ``differ`` (module docstring)."""
    if (sha_a or sha256_file(pa)) == (sha_b or sha256_file(pb)):
        return FileResult(rel, "identical")
    name = pa.name.lower()
    try:
        if name.endswith(".csv"):
            why = _csv_difference(pa, pb, rtol, atol)
        elif name.endswith(".json"):
            why = _value_difference(_read_json(pa), _read_json(pb), rtol, atol, "")
        elif name.endswith((".npz", ".npy")):
            why = _value_difference(_read_arrays(pa), _read_arrays(pb), rtol, atol, "")
        elif name.endswith((".pt", ".pth")):
            why = _value_difference(_read_torch(pa), _read_torch(pb), rtol, atol, "")
        else:
            return FileResult(rel, "differ", "different bytes")
    except Exception as exc:  # unreadable content: the bytes differ and nothing more can be said
        return FileResult(rel, "differ", f"different bytes (content not comparable: {type(exc).__name__}: {exc})"[:300])
    return FileResult(rel, "within tolerance") if why is None else FileResult(rel, "differ", why)


def _csv_difference(pa: Path, pb: Path, rtol: float, atol: float) -> str | None:
    import numpy as np
    import pandas as pd

    da, db = pd.read_csv(pa), pd.read_csv(pb)
    keep_a = [c for c in da.columns if not TIME_KEY.search(str(c).strip())]
    keep_b = [c for c in db.columns if not TIME_KEY.search(str(c).strip())]
    if keep_a != keep_b:
        return f"columns differ: {sorted(set(keep_a) ^ set(keep_b)) or 'order'}"
    if len(da) != len(db):
        return f"{len(da)} rows vs {len(db)}"
    for c in keep_a:
        xa, xb = da[c], db[c]
        if pd.api.types.is_numeric_dtype(xa) and pd.api.types.is_numeric_dtype(xb):
            va, vb = xa.to_numpy(float), xb.to_numpy(float)
            ok = np.isclose(va, vb, rtol=rtol, atol=atol, equal_nan=True)
            if not ok.all():
                i = int(np.argmin(ok))
                return f"column {c!r} row {i}: {_show(va[i])} vs {_show(vb[i])}" + _max_rel(va, vb)
        else:
            sa, sb = xa.map(_normal_text).to_numpy(), xb.map(_normal_text).to_numpy()
            bad = [i for i in range(len(sa)) if not (sa[i] == sb[i] or (_is_nan(sa[i]) and _is_nan(sb[i])))]
            if bad:
                return f"column {c!r} row {bad[0]}: {xa.iloc[bad[0]]!r} vs {xb.iloc[bad[0]]!r}"
    return None


def _max_rel(va, vb) -> str:
    import numpy as np

    with np.errstate(all="ignore"):
        rel = np.abs(va - vb) / np.maximum(np.abs(va), np.abs(vb))
    rel = rel[np.isfinite(rel)]
    return f" (largest relative difference {rel.max():.3g})" if rel.size else ""


def _show(v) -> str:
    """A numpy scalar as its Python value's repr (``0.25``, not ``np.float64(0.25)``)."""
    return repr(v.item() if hasattr(v, "item") else v)


def _is_nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _normal_text(v):
    """A string with timestamps and absolute paths blanked; other values unchanged."""
    if isinstance(v, str):
        if _ISO_TIME.match(v):
            return "<time>"
        if os.path.isabs(v) or re.match(r"^[A-Za-z]:[\\/]", v):
            return "<path>"
    return v


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _read_arrays(path: Path) -> dict:
    import numpy as np

    if path.name.lower().endswith(".npy"):
        return {"array": np.load(path, allow_pickle=False)}
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _read_torch(path: Path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _value_difference(a, b, rtol: float, atol: float, where: str) -> str | None:
    """The first difference between two loaded values (``None``: equal within tolerance), with its location."""
    import numpy as np

    at = where or "top level"
    if isinstance(a, dict) and isinstance(b, dict):
        ka = {k for k in a if not TIME_KEY.search(str(k))}
        kb = {k for k in b if not TIME_KEY.search(str(k))}
        if ka != kb:
            return f"{at}: keys differ: {sorted(map(str, ka ^ kb))[:5]}"
        for k in sorted(ka, key=str):
            why = _value_difference(a[k], b[k], rtol, atol, f"{where}.{k}" if where else str(k))
            if why:
                return why
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{at}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            why = _value_difference(x, y, rtol, atol, f"{where}[{i}]")
            if why:
                return why
        return None
    if _is_tensor(a) or _is_tensor(b):
        a, b = _to_numpy(a), _to_numpy(b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return f"{at}: shape {a.shape} vs {b.shape}"
        if a.dtype.kind in "biufc" and b.dtype.kind in "biufc":
            ok = np.isclose(a.astype(np.complex128 if "c" in a.dtype.kind + b.dtype.kind else np.float64),
                            b.astype(np.complex128 if "c" in a.dtype.kind + b.dtype.kind else np.float64),
                            rtol=rtol, atol=atol, equal_nan=True)
            if not ok.all():
                i = np.unravel_index(int(np.argmin(ok)), ok.shape) if ok.ndim else ()
                why = f"{at}{[int(x) for x in i] if i else ''}: {_show(a[i])} vs {_show(b[i])}; {int((~ok).sum())} of {ok.size} values"
                if "c" not in a.dtype.kind + b.dtype.kind:
                    why += _max_rel(a.ravel().astype(float), b.ravel().astype(float))
                return why
            return None
        if a.ndim == 0 and a.dtype.kind in "US" and b.dtype.kind in "US":  # e.g. a JSON string stored in an npz
            sa, sb = str(a[()]), str(b[()])
            try:
                return _value_difference(json.loads(sa), json.loads(sb), rtol, atol, where)
            except ValueError:
                return None if sa == sb else f"{at}: text differs"
        return None if a.dtype == b.dtype and np.array_equal(a, b) else f"{at}: values differ"
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return None if a == b else f"{at}: {a!r} vs {b!r}"
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol, abs_tol=atol) or \
                abs(a - b) <= atol + rtol * abs(b):
            return None
        return f"{at}: {a!r} vs {b!r}"
    if isinstance(a, str) and isinstance(b, str):
        return None if _normal_text(a) == _normal_text(b) else f"{at}: {a[:60]!r} vs {b[:60]!r}"
    return None if a == b else f"{at}: {str(a)[:60]!r} vs {str(b)[:60]!r}"


def _is_tensor(v) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "detach")


def _to_numpy(v):
    import numpy as np

    if _is_tensor(v):
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        return v.numpy()
    return np.asarray(v)
