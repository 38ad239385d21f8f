"""Virtual cohort on disk: seeded deformed copies of source CTs, cached with a manifest.

Only one chest CT is available offline, so more "subjects" are made by deforming each source CT
(and its label map, jointly) with a random but reproducible spatial transform
(:mod:`xrlib.anatomy.deformation` describes the transform, its folding guard and its checks).
This module names the subjects (:func:`subject_id`), plans which of them must be (re)built,
runs one picklable :class:`SubjectTask` per subject through an :mod:`xrlib.exec` executor, and
writes the manifest ``cohort.csv`` in the driver alone.

.. warning::
   Virtual subjects made from one CT are **not independent patients**. They share the source's
   anatomy, pathology, scanner, reconstruction kernel and noise; only their shape differs. Any
   statistic over virtual subjects of one source describes variation *around one person*, and
   splits, confidence intervals and paired tests must treat the source CT as the unit of
   independence. Results reported on a virtual cohort must say so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import SimpleITK as sitk

from xrlib.anatomy.deformation import (
    DeformationConfig,
    DeformationError,
    deform,
    sample_params,
    subject_seed,
)
from xrlib.anatomy.sources import validate_sources
from xrlib.core.atomic import sha256_file, write_csv_atomic, write_image_atomic
from xrlib.core.ct import Volume, load_ct, load_example, load_labels
from xrlib.core.errors import InputError

#: Bumped whenever the deformation algorithm changes, so cached subjects are rebuilt.
COHORT_VERSION = 1

CT_FILE = "ct.nii.gz"
LABELS_FILE = "labels.nii.gz"
MANIFEST_FILE = "cohort.csv"


def subject_id(source: str, index: int) -> str:
    """Name (and folder) of virtual subject ``index`` of source CT ``source``: ``<source>-v<iii>``."""
    return f"{source}-v{int(index):03d}"


@dataclass
class CohortConfig(DeformationConfig):
    """A virtual cohort: ``n_subjects`` per source CT, drawn from ``seed``, with the deformation
    settings of :class:`~xrlib.anatomy.deformation.DeformationConfig` (bands, folding guard, checks;
    documented there)."""

    n_subjects: int = 10
    seed: int = 0

    def __post_init__(self):
        if int(self.n_subjects) < 0:
            raise InputError("CohortConfig", f"n_subjects must be ≥ 0, got {self.n_subjects!r}")
        super().__post_init__()

    @classmethod
    def from_profile(cls, profile, **overrides) -> "CohortConfig":
        """The cohort of a typed :class:`~xrlib.core.profiles.Profile`: its ``n_subjects`` and ``seed``."""
        return cls(n_subjects=int(profile.n_subjects), seed=int(profile.seed), **overrides)

    def fingerprint(self) -> str:
        """Hash of every setting that affects a subject's files (not ``n_subjects``): a cache key."""
        d = dataclasses.asdict(self)
        d.pop("n_subjects")
        d["version"] = COHORT_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


def _source_fingerprint(ct: Volume, labels: Volume) -> str:
    """Hash of a source CT and its label map (voxels, dtype, grid): a cache key."""
    h = hashlib.sha256()
    for v in (ct, labels):
        h.update(np.ascontiguousarray(v.array).tobytes())
        h.update(str(v.array.dtype).encode())
        h.update(np.asarray([*v.spacing, *v.origin, *np.asarray(v.direction).ravel()], float).tobytes())
        h.update(str(v.array.shape).encode())
    return h.hexdigest()[:16]


def _ct_to_int16(vol: Volume) -> sitk.Image:
    """CT rounded to integer HU (int16): ≤ 0.5 HU change, half the size and faster compression."""
    arr = np.rint(vol.array)
    info = np.iinfo(np.int16)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):  # np.clip reads and writes every voxel
        np.clip(arr, info.min, info.max, out=arr)
    return vol.with_array(arr.astype(np.int16)).to_sitk()


def _row_matches(row: dict, expect: dict, out_dir: Path) -> bool:
    for key, val in expect.items():
        if key not in row:
            return False
        got = row[key]
        if isinstance(val, float):
            try:
                if not math.isclose(float(got), val, rel_tol=1e-9, abs_tol=1e-12):
                    return False
            except (TypeError, ValueError):
                return False
        elif str(got) != str(val):
            return False
    for col in ("ct", "labels"):
        p = out_dir / str(row.get(f"{col}_path", ""))
        if not p.is_file() or sha256_file(p) != row.get(f"{col}_sha256"):
            return False
    return True


def _read_manifest(path: Path) -> pd.DataFrame:
    """The manifest CSV with hash columns kept as strings."""
    return pd.read_csv(path, dtype={c: str for c in ("subject", "source", "config_hash", "source_hash", "ct_sha256", "labels_sha256")})


@dataclass
class SubjectTask:
    """Build one virtual subject: draw parameters (redrawing implausible ones), deform, write its two
    files atomically, and return its manifest row. Picklable, so any :mod:`xrlib.exec` executor runs it.

    ``threads`` caps ITK's threads while it runs (results do not depend on it). ``ct`` and ``labels``
    are the same objects in every task of a source: :attr:`shared` names them, so the Ray executor
    ships them to its object store once, not once per subject.
    """

    shared: ClassVar[tuple[str, ...]] = ("ct", "labels")

    source: str
    index: int
    ct: Volume
    labels: Volume
    config: CohortConfig
    out_dir: Path
    config_hash: str
    source_hash: str
    threads: int = 1

    @property
    def key(self) -> str:
        return subject_id(self.source, self.index)

    def run(self) -> dict:
        previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(self.threads))
        try:
            return self._build()
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)

    def _build(self) -> dict:
        config, subject = self.config, self.key
        last: Exception | None = None
        for attempt in range(config.max_attempts):
            params = sample_params(subject_seed(config.seed, self.source, self.index, attempt), config)
            try:
                new_ct, new_lab, stats = deform(self.ct, self.labels, params, config)
                break
            except DeformationError as exc:
                last = exc
        else:
            raise DeformationError(f"{subject}: no acceptable deformation in {config.max_attempts} attempts (last: {last})")
        sub_dir = Path(self.out_dir) / subject
        sub_dir.mkdir(parents=True, exist_ok=True)
        for stale in sub_dir.glob(".*.part*"):  # temporaries of a killed earlier build
            stale.unlink(missing_ok=True)
        ct_path, lab_path = sub_dir / CT_FILE, sub_dir / LABELS_FILE
        write_image_atomic(ct_path, _ct_to_int16(new_ct))
        write_image_atomic(lab_path, new_lab.to_sitk())
        return {
            "subject": subject,
            "source": self.source,
            "index": self.index,
            "attempt": attempt,
            **params.to_dict(),
            **stats,
            "ct_path": f"{subject}/{CT_FILE}",
            "labels_path": f"{subject}/{LABELS_FILE}",
            "ct_sha256": sha256_file(ct_path),
            "labels_sha256": sha256_file(lab_path),
            "config_hash": self.config_hash,
            "source_hash": self.source_hash,
        }


def _is_current(row: dict, source: str, index: int, config: CohortConfig, cfg_hash: str, src_hash: str, out_dir: Path) -> bool:
    """Whether a manifest row describes subject ``index`` of ``source`` as this call would build it."""
    attempt = int(row["attempt"]) if str(row.get("attempt", "")).isdigit() else 0
    expect = {
        "subject": subject_id(source, index),
        "source": source,
        "index": index,
        "attempt": attempt,
        "config_hash": cfg_hash,
        "source_hash": src_hash,
        **sample_params(subject_seed(config.seed, source, index, attempt), config).to_dict(),
    }
    return _row_matches(row, expect, out_dir)


def build_cohort(
    sources: list[tuple[str, Volume, Volume]] | None,
    config: CohortConfig,
    out_dir: str | Path,
    progress: bool = True,
    executor=None,
) -> pd.DataFrame:
    """Generate ``config.n_subjects`` virtual subjects per source CT and write them with a manifest.

    ``sources`` is a list of ``(name, ct, labels)``; ``None`` uses the example CT as ``"example"``.
    Subject ``i`` of source ``name`` is :func:`subject_id` ``(name, i)``; its seed comes from
    :func:`~xrlib.anatomy.deformation.subject_seed` ``(config.seed, name, i, attempt)``, where
    ``attempt`` counts redraws after an :class:`~xrlib.anatomy.deformation.ImplausibleDeformationError`.
    Writes ``out_dir/<subject>/ct.nii.gz`` (int16 HU) and ``labels.nii.gz`` and the manifest
    ``out_dir/cohort.csv`` (one row per subject: source, every deformation parameter, the stats,
    relative paths and SHA-256 of the files, config and source fingerprints).

    Plan → run → collect: the subjects to (re)build become :class:`SubjectTask` objects run by
    ``executor`` (an :class:`xrlib.exec.base.Executor` or its name, ``None``: in this process); files
    are written to temporary names and renamed, and the driver rewrites the manifest after each
    collected subject, so an interrupted build resumes where it stopped.

    Idempotent: a subject whose manifest row matches (same parameters, config and source) and whose
    files exist with the recorded checksums is skipped; anything else is (re)built. The manifest
    describes the cohort of *this* call only (rows of other configurations are dropped; their files
    are left alone).

    Subjects from one source are deformed copies of one person, **not independent patients**: use
    the ``source`` column as the unit of independence (splits, statistics).
    """
    from xrlib.exec import get_executor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if sources is None:
        ct, lab = load_example()
        sources = [("example", ct, lab)]
    validate_sources(sources)
    executor = get_executor(executor)
    cfg_hash = config.fingerprint()
    manifest_path = out_dir / MANIFEST_FILE
    old: dict[str, dict] = {}
    if manifest_path.is_file():
        try:
            old = {str(r["subject"]): r for r in _read_manifest(manifest_path).to_dict("records")}
        except (pd.errors.ParserError, pd.errors.EmptyDataError, KeyError, UnicodeDecodeError):
            old = {}  # unreadable manifest: rebuild everything

    expected = [subject_id(n, i) for n, _, _ in sources for i in range(config.n_subjects)]
    # Rows of this cohort, in order. Current rows are kept; the rows of subjects to rebuild stay in
    # the manifest file until the first subject is collected, and are dropped from it then.
    state: dict[str, dict] = {}
    tasks: list[SubjectTask] = []
    chooser = getattr(executor, "default_task_threads", None)
    threads = int(chooser()) if chooser is not None else max(1, (os.cpu_count() or 1) // max(1, int(getattr(executor, "workers", 1))))
    for name, ct, labels in sources:
        src_hash = _source_fingerprint(ct, labels)
        for index in range(config.n_subjects):
            sid = subject_id(name, index)
            if sid in old and _is_current(old[sid], name, index, config, cfg_hash, src_hash, out_dir):
                state[sid] = old[sid]
            else:
                tasks.append(SubjectTask(name, index, ct, labels, config, out_dir, cfg_hash, src_hash, threads))

    def write_manifest():
        write_csv_atomic(manifest_path, pd.DataFrame([state[s] for s in expected if s in state]))

    for task, row in executor.map(tasks, progress=progress, desc="virtual cohort"):
        state[task.key] = row
        write_manifest()
    if tasks or sorted(old) != sorted(expected) or not manifest_path.is_file():
        write_manifest()
    return _read_manifest(manifest_path) if state else pd.DataFrame()


def load_subject(out_dir: str | Path, subject_id: str) -> tuple[Volume, Volume]:
    """Read a virtual subject written by :func:`build_cohort` as ``(ct, labels)``.

    Raises :class:`InputError` naming the missing or unreadable file.
    """
    sub = Path(out_dir) / subject_id
    ct = load_ct(sub / CT_FILE)
    return ct, load_labels(sub / LABELS_FILE, ct)
