"""Where the virtual subjects of a dataset build come from: ids, a picklable loader, a fingerprint.

Virtual subjects of one source CT are deformed copies of one person, not independent patients
(see :mod:`xrlib.anatomy.cohort`); :func:`source_ct` names the source, the unit of independence.
Loaders are picklable objects (no closures), so that the shard tasks of
:func:`xrlib.data.build.build_datasets` can run in a process pool.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xrlib.core.atomic import sha256_file
from xrlib.core.profiles import Profile


def source_ct(subject_id: str) -> str:
    """The source CT of virtual subject ``<source>-v<iii>``."""
    return subject_id.rsplit("-v", 1)[0]


@dataclass
class SubjectSource:
    """Where virtual subjects come from: their ids, a loader and a fingerprint for caching.

    ``load(subject_id)`` returns ``(ct, labels)`` :class:`xrlib.core.ct.Volume` s; it is only called
    for subjects whose shards must be (re)built, and must be picklable for a process-pool executor.
    ``source_of(subject_id)`` names the source CT (the unit of independence). ``prepare()``, when
    set, is run once by the driver before any shard is rendered (e.g. to build the cohort).
    """

    ids: list[str]
    load: Callable[[str], tuple]
    fingerprint: str
    source_of: Callable[[str], str] = source_ct
    prepare: Callable[[], None] | None = None


@dataclass
class VolumeTable:
    """Loader over in-memory ``subject id → (ct, labels)`` volumes."""

    table: dict

    def __call__(self, subject_id: str) -> tuple:
        return self.table[subject_id]


def subjects_from_volumes(items: Sequence[tuple]) -> SubjectSource:
    """A :class:`SubjectSource` over in-memory ``(subject_id, ct, labels)`` triples."""
    table = {str(sid): (ct, lab) for sid, ct, lab in items}
    h = hashlib.sha256()
    for sid, (ct, lab) in sorted(table.items()):
        h.update(sid.encode())
        for vol in (ct, lab):
            h.update(np.ascontiguousarray(vol.array).tobytes())
            h.update(repr((vol.spacing, vol.origin, np.asarray(vol.direction).tolist())).encode())
    return SubjectSource(list(table), VolumeTable(table), h.hexdigest()[:16])


@functools.lru_cache(maxsize=2)
def _shrunk_example(shrink: tuple[int, int, int]) -> tuple:
    """The example CT and labels on the coarser grid (loaded once per process: cohorts of several
    configurations share it; the full-resolution volumes are not kept)."""
    from xrlib.anatomy.sources import shrink_source
    from xrlib.core.ct import load_example

    return shrink_source(*load_example(), shrink)


@dataclass
class CohortLoader:
    """Loads virtual subjects from the cohort folder, building the cohort first (once) if needed.

    Once built, pickling drops the source volumes, so tasks carry only the folder.
    """

    cohort_dir: Path
    config: object  # xrlib.anatomy.cohort.CohortConfig
    sources: list | None = None
    progress: bool = True
    executor: object = None  # an xrlib.exec executor for the cohort build (None: in-process)
    shrink: tuple[int, int, int] | None = None  # coarser source grid (xrlib.anatomy.sources.shrink_source)
    built: bool = field(default=False, compare=False)

    def prepare(self) -> None:
        """Build (or verify) the cohort with :func:`xrlib.anatomy.cohort.build_cohort`."""
        from xrlib.anatomy.cohort import build_cohort
        from xrlib.anatomy.sources import shrink_source

        if not self.built:
            if self.shrink is not None and self.sources is None:  # the example CT, loaded only now
                self.sources = [("example", *_shrunk_example(self.shrink))]
            elif self.shrink is not None:
                self.sources = [(n, *shrink_source(ct, lab, self.shrink)) for n, ct, lab in self.sources]
                self.shrink = None
            build_cohort(self.sources, self.config, self.cohort_dir, progress=self.progress, executor=self.executor)
            self.built = True

    def __call__(self, subject_id: str) -> tuple:
        from xrlib.anatomy.cohort import load_subject

        self.prepare()
        return load_subject(self.cohort_dir, subject_id)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["executor"] = None  # only the driver builds the cohort
        if state["built"]:
            state["sources"] = None
        return state


def cohort_subjects(profile: Profile, cohort_dir: str | Path, sources=None, progress: bool = True,
                    executor=None, config=None, shrink=None) -> SubjectSource:
    """Virtual subjects of :mod:`xrlib.anatomy.cohort` (built lazily, before the first ``load``).

    ``sources`` as in :func:`xrlib.anatomy.cohort.build_cohort` (``None``: the example CT). The cohort
    has ``profile.n_subjects`` subjects per source and the profile's seed; ``executor`` runs its
    subject tasks (``None``: in this process). ``config``: another
    :class:`~xrlib.anatomy.cohort.CohortConfig` (e.g. other deformation bands; default the
    profile's). ``shrink``: integer factors (i, j, k) by which the sources are put on a coarser
    grid before deforming (:func:`xrlib.anatomy.sources.shrink_source`; ``None``: as they are);
    both enter the fingerprint.
    """
    from xrlib.anatomy.cohort import CohortConfig, subject_id

    ccfg = CohortConfig.from_profile(profile) if config is None else config
    shrink = None if shrink is None or tuple(int(v) for v in shrink) == (1, 1, 1) else tuple(int(v) for v in shrink)
    names = ["example"] if sources is None else [s[0] for s in sources]
    ids = [subject_id(n, i) for n in names for i in range(ccfg.n_subjects)]
    if sources is None:  # the example CT: fingerprint its files (cheap, no loading)
        from xrlib.core.ct import example_paths

        src_fp = [sha256_file(p) for p in example_paths()]
    else:
        from xrlib.anatomy.cohort import _source_fingerprint

        src_fp = [_source_fingerprint(ct, lab) for _, ct, lab in sources]
    key = f"{ccfg.fingerprint()}|{names}|{src_fp}|{ccfg.n_subjects}" + ("" if shrink is None else f"|shrink{shrink}")
    fp = hashlib.sha256(key.encode()).hexdigest()[:16]
    loader = CohortLoader(Path(cohort_dir), ccfg, sources, progress, executor, shrink)
    return SubjectSource(ids, loader, fp, prepare=loader.prepare)
