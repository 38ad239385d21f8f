"""Building the datasets of a profile: plan one shard task per subject, run them, collect the manifest.

:func:`build_datasets` is *plan → run tasks → collect* (:mod:`xrlib.exec`). The plan assigns
subjects to pools and splits (:func:`xrlib.data.pools.assign_pools`) and makes one picklable task
per shard: :class:`SubjectShardTask` loads a virtual subject and renders it with its pool's
:class:`xrlib.data.recipes.PoolRecipe`, :class:`RealShardTask` preprocesses one real radiograph.
Each task writes its shard atomically and returns its manifest rows; only the driver writes
``<out>/manifest.csv`` (after each collected shard, so an interrupted build resumes) and
``<out>/build.json`` (the configuration hash and ``complete``).

Every run checks each shard listed in the manifest against its SHA-256 and rebuilds missing,
truncated or corrupted ones; a build whose shards are all intact is a no-op (nothing is rewritten
and the cohort is not even loaded). The build hash (:func:`dataset_hash`) covers the profile's
dataset sections, the subjects' fingerprint and :data:`DATASETS_VERSION`.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd

from xrlib.core.atomic import save_npz_atomic
from xrlib.core.runs import default_threads
from xrlib.core.atomic import sha256_file, write_text_atomic
from xrlib.core.errors import InputError
from xrlib.core.profiles import DATASET_KEYS, Profile, profile_hash
from xrlib.data.pools import POOLS, assign_pools, leakage_note, real_splits, source_folds, split_mode
from xrlib.data.preprocess import preprocess
from xrlib.data.real import RealItem, load_real_folder, real_fingerprint
from xrlib.data.recipes import PoolRecipe, render_subject, study_recipes
from xrlib.data.shards import MANIFEST_COLUMNS, MANIFEST_FILE, extra_columns, read_manifest, shard_arrays, shard_rows
from xrlib.data.subjects import SubjectSource, cohort_subjects
from xrlib.exec import Executor, ProcessPoolExecutor, get_executor

#: Bumped whenever the datasets code changes what it writes, so cached datasets are rebuilt.
#: 2: the surrogate pool has per-image acquisition variability; the realistic chain draws its quantum
#: noise before the detector blur (correlated noise).
#: 3: the surrogate pool has the room effects no simulator models (:mod:`xrlib.drr.surrogate`) and its own
#: quantum-noise stream; electronic noise is set per native 0.24 mm detector element and scaled to the
#: binned pixel.
#: 4: the surrogate's kVp is set in 1-kV steps (:data:`xrlib.drr.acquisition.ACQUISITION_RANGES`).
DATASETS_VERSION = 4
BUILD_FILE = "build.json"


def dataset_hash(profile: Profile, subjects_fp: str) -> str:
    """Hash of everything that determines the datasets: profile sizes, subjects, code version."""
    return hashlib.sha256(f"{profile_hash(profile, DATASET_KEYS)}|{subjects_fp}|v{DATASETS_VERSION}".encode()).hexdigest()


def build_fingerprint(profile: Profile, subjects: SubjectSource, real_folder: str | Path | None = None,
                      recipes_key: str | None = None, fold: tuple[int, int] | None = None) -> str:
    """What :func:`dataset_hash` keys a build by besides the profile: the subjects' fingerprint, plus the real
    folder, non-default recipes, the split mode when subjects are assigned by source
    (:func:`xrlib.data.pools.split_mode`) and the cross-validation fold, each only when present — so a
    one-source build (the example CT) keys exactly as before source-disjoint splits existed."""
    fp = subjects.fingerprint
    if real_folder:
        fp += "|real:" + real_fingerprint(real_folder)
    if recipes_key is not None:
        fp += "|recipes:" + str(recipes_key)
    mode = split_mode(subjects.ids, profile, subjects.source_of)
    if mode != "subjects":  # assigned by source: not the permutation that older builds of these subjects used
        fp += "|split:" + mode
    if fold is not None:
        fp += f"|fold:{int(fold[0])}/{int(fold[1])}"
    return fp


@dataclass
class ShardResult:
    """What a shard task returns: the shard's manifest rows and its SHA-256."""

    rows: list[dict]
    checksum: str


@dataclass
class ShardTask(ABC):
    """Writes one shard ``out_dir/rel`` of ``subject`` and returns its :class:`ShardResult`."""

    key: str
    threads: int
    out_dir: str
    rel: str
    subject: str
    source: str
    pool: str
    split: str

    @abstractmethod
    def arrays(self) -> dict:
        """The shard's arrays (``image``, ``mask``, … as :func:`xrlib.data.shards.shard_arrays` makes them)."""

    def run(self) -> ShardResult:
        path = Path(self.out_dir) / self.rel
        arrays = self.arrays()
        save_npz_atomic(path, arrays)
        checksum = sha256_file(path)
        return ShardResult(shard_rows(self.subject, self.source, self.pool, self.split, self.rel, arrays, checksum), checksum)


@dataclass
class SubjectShardTask(ShardTask):
    """A virtual subject (``load(subject)`` → ``(ct, labels)``) rendered with its pool's recipe.

    ``load`` is the same object in every task (it may hold every subject's volumes): :attr:`shared`
    names it, so the Ray executor ships it once."""

    shared: ClassVar[tuple[str, ...]] = ("load",)
    load: Callable[[str], tuple]
    profile: Profile
    recipe: PoolRecipe

    def arrays(self) -> dict:
        ct, labels = self.load(self.subject)
        return render_subject(ct, labels, self.profile, self.recipe, self.subject)


@dataclass
class RealShardTask(ShardTask):
    """One real radiograph, preprocessed to ``size × size`` (no clavicle sides, no pose)."""

    item: RealItem
    size: int

    def arrays(self) -> dict:
        img, mask = preprocess(self.item.image, self.item.mask, self.size)
        nan3 = [float("nan")] * 3
        return shard_arrays([img], [mask], [0 * mask], [0 * mask], [float("nan")], [float("nan")], [nan3],
                            "real", float("nan"), "none")


def plan_shards(profile: Profile, out_dir: str | Path, subjects: SubjectSource, recipes: Mapping[str, PoolRecipe],
                real_items: list[RealItem] | None = None, threads: int = 1,
                fold: tuple[int, int] | None = None) -> list[ShardTask]:
    """One task per shard, in manifest order: assigned subjects by pool then id, then real images.
    ``fold=(i, k)``: the splits of fold ``i`` of a ``k``-fold cross-validation over sources."""
    out = str(out_dir)
    assignment = assign_pools(subjects.ids, profile, subjects.source_of, fold=fold)
    order = {p: i for i, p in enumerate((*POOLS, *recipes))}
    plan: list[ShardTask] = []
    for sid in sorted(assignment, key=lambda s: (order[assignment[s][0]], s)):
        pool, split = assignment[sid]
        if pool not in recipes:
            raise ValueError(f"no image recipe for pool {pool!r}")
        if recipes[pool] is None:  # a build that leaves this pool out
            continue
        rel = f"shards/{pool}/{sid}.npz"
        plan.append(SubjectShardTask(rel, threads, out, rel, sid, subjects.source_of(sid), pool, split,
                                     subjects.load, profile, recipes[pool]))
    if real_items is not None:
        splits = real_splits([it.name for it in real_items], profile)
        for it in real_items:
            rel = f"shards/real/{it.name}.npz"
            plan.append(RealShardTask(rel, threads, out, rel, it.name, "real", "real", splits[it.name], it,
                                      profile.image_size))
    return plan


def _default_threads(executor: Executor) -> int:
    chooser = getattr(executor, "default_task_threads", None)  # any Executor; duck-typed ones may lack it
    if chooser is not None:
        return int(chooser())
    if isinstance(executor, ProcessPoolExecutor):
        return max(1, default_threads() // executor.workers)
    return default_threads()


def build_datasets(
    profile: Profile,
    out_dir: str | Path,
    subjects: SubjectSource | None = None,
    real_folder: str | Path | None = None,
    progress: bool = True,
    executor: Executor | str | None = None,
    threads: int | None = None,
    recipes: Mapping[str, PoolRecipe | None] | None = None,
    recipes_key: str | None = None,
    fold: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Build (or resume, or verify) the datasets of ``profile`` under ``out_dir``.

    Args:
        profile: a validated profile (:func:`xrlib.core.profiles.load_profile`).
        out_dir: the datasets folder (``runs/<profile>/datasets``).
        subjects: where subjects come from; default the virtual cohort of the example CT built in
            ``cohort/`` next to ``out_dir`` (``runs/<profile>/cohort``, :func:`xrlib.data.subjects.cohort_subjects`).
        real_folder: real radiographs replacing the surrogate pool (default ``profile.real_folder``).
        progress: show tqdm progress bars.
        executor: runs the shard tasks (:func:`xrlib.exec.get_executor`: ``None``/``"local"`` in
            process, ``"process"`` a process pool, or an instance).
        threads: torch threads per task (default: this process's count in process, cores / workers
            in a pool).
        recipes: pool → :class:`xrlib.data.recipes.PoolRecipe` (default :func:`xrlib.data.recipes.study_recipes`);
            ``None`` for a pool leaves it out of this build (its subjects keep their assignment).
        recipes_key: a text that identifies non-default ``recipes``; it enters the build hash, so a
            folder built with other recipes is rebuilt (default: nothing added, the study's hash).
        fold: ``(i, k)`` builds fold ``i`` of a ``k``-fold cross-validation over source CTs
            (:func:`xrlib.data.pools.assign_pools`; :func:`build_folds` builds all ``k``); the manifest
            then has a ``fold`` column, the fold of each row's source.

    Subjects of several sources get source-disjoint splits (:func:`xrlib.data.pools.split_mode`), a
    mode that enters the build hash; a one-source build (the example CT) hashes as before. ``build.json``
    records the split mode and :func:`xrlib.data.pools.leakage_note` (read by every chapter's header).

    Returns the manifest (one row per image). See the module docstring for caching.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    real_folder = real_folder if real_folder is not None else profile.real_folder
    if real_folder:
        profile = profile.with_real_folder(real_folder)
    if subjects is None:
        subjects = cohort_subjects(profile, out_dir.parent / "cohort", progress=progress)
    real_items = load_real_folder(real_folder) if real_folder else None
    fp = build_fingerprint(profile, subjects, real_folder, recipes_key, fold)
    mode = split_mode(subjects.ids, profile, subjects.source_of)
    folds = None
    if fold is not None:
        folds = source_folds([subjects.source_of(s) for s in subjects.ids], profile.seed, int(fold[1]))
    digest = dataset_hash(profile, fp)
    build_path, manifest_path = out_dir / BUILD_FILE, out_dir / MANIFEST_FILE
    executor = get_executor(executor)
    threads = _default_threads(executor) if threads is None else int(threads)

    # Rows recorded by a previous run of the same configuration, grouped by shard.
    old: dict[str, list[dict]] = {}
    try:
        info = json.loads(build_path.read_text(encoding="utf-8"))
        if info.get("hash") == digest and manifest_path.is_file():
            for row in read_manifest(manifest_path).to_dict("records"):
                old.setdefault(row["shard"], []).append(row)
    except (OSError, ValueError, InputError, pd.errors.ParserError, pd.errors.EmptyDataError):
        old = {}
    was_complete = bool(old) and json.loads(build_path.read_text(encoding="utf-8")).get("complete") is True

    plan = plan_shards(profile, out_dir, subjects, study_recipes(profile) if recipes is None else recipes,
                       real_items, threads, fold=fold)
    order = [t.rel for t in plan]
    rows: dict[str, list[dict]] = {}
    todo = []
    for task in plan:
        prev = old.get(task.rel)
        path = out_dir / task.rel
        if prev and path.is_file() and sha256_file(path) == str(prev[0]["checksum"]):
            rows[task.rel] = prev
        else:
            todo.append(task)

    pending = {"hash": digest, "complete": False, "version": DATASETS_VERSION}
    if todo or not was_complete or not build_path.is_file():
        write_text_atomic(build_path, json.dumps(pending))
    if todo and subjects.prepare is not None and any(isinstance(t, SubjectShardTask) for t in todo):
        subjects.prepare()
    for task, result in executor.map(todo, progress=progress, desc="datasets"):
        rows[task.rel] = result.rows if folds is None else [
            {**r, "fold": folds.get(str(r["source"]), -1)} for r in result.rows]
        _write_manifest(manifest_path, rows, order)
    if todo or not manifest_path.is_file() or set(old) != set(rows):
        _write_manifest(manifest_path, rows, order)
    manifest = read_manifest(manifest_path)
    note = leakage_note(manifest)
    if todo or not was_complete:
        write_text_atomic(build_path, json.dumps({
            **pending, "complete": True, "profile": profile.name,
            "images": sum(len(r) for r in rows.values()), "subjects": len(rows),
            "split_mode": mode, **({} if fold is None else {"fold": list(fold)}), "leakage_note": note,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }, indent=1))
    else:  # a complete build from before the note was recorded gets it once
        info = json.loads(build_path.read_text(encoding="utf-8"))
        if info.get("leakage_note") != note or "split_mode" not in info:
            write_text_atomic(build_path, json.dumps({**info, "split_mode": mode, "leakage_note": note}, indent=1))
    return manifest


def fold_dir(run: str | Path, i: int) -> Path:
    """The run folder of fold ``i`` of a cross-validation: ``<run>/folds/<i>`` (its datasets in ``datasets/``)."""
    return Path(run) / "folds" / str(int(i))


def build_folds(profile: Profile, run: str | Path, k: int, subjects: SubjectSource | None = None,
                **kwargs) -> list[pd.DataFrame]:
    """The ``k`` dataset builds of a cross-validation over source CTs, fold ``i`` in
    ``<run>/folds/<i>/datasets`` (:func:`fold_dir`); each fold's sources are once the test split.

    ``subjects`` default: the virtual cohort in ``<run>/cohort`` (shared by the folds); ``kwargs`` go to
    :func:`build_datasets`. Bad ``k`` (< 2, more than the sources, a fold too small for the profile's
    test subjects) raises :class:`InputError` before anything is built. Returns the folds' manifests.
    """
    if subjects is None:
        subjects = cohort_subjects(profile, Path(run) / "cohort", progress=kwargs.get("progress", True))
    for i in range(int(k) if isinstance(k, int) and k >= 2 else 1):  # check every fold first: no half-built set
        assign_pools(subjects.ids, profile, subjects.source_of, fold=(i, k))
    return [build_datasets(profile, fold_dir(run, i) / "datasets", subjects=subjects, fold=(i, k), **kwargs)
            for i in range(k)]


def _write_manifest(path: Path, rows: dict[str, list[dict]], order: list[str]) -> None:
    flat = [r for rel in order if rel in rows for r in rows[rel]]
    df = pd.DataFrame(flat, columns=MANIFEST_COLUMNS + extra_columns(flat))
    write_text_atomic(path, df.to_csv(index=False))
