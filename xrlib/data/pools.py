"""Subject-disjoint pools and splits of the study, surrogate poses, and the named sets built from them.

Virtual subjects are assigned to three subject-disjoint pools by a permutation drawn from the
profile's seed:

``surrogate``
    The clinical-surrogate stand-in for the paper's "Real" domain (realistic physics at
    well-positioned poses, :func:`surrogate_poses`). When a folder of real radiographs is configured
    it **replaces** this pool (pool ``real``, split by :func:`real_splits`).
``syn_train``
    Plain DRRs at every synthetic α. ``Syn_cen`` is this pool at the profile's ``cen_alphas``;
    ``Syn_all`` all angles.
``syn_test``
    As ``syn_train``, for testing only.

Inside the surrogate and ``syn_train`` pools subjects are split into train/validation/test by the
same seeded permutation, so no subject contributes images to two splits. :func:`select` returns
the rows of a named set (``Real``, ``Syn_cen``, ``Syn_all``, ``Syn_test``) and :func:`table1`
counts them (the paper's Table 1).

Patients (source CTs)
---------------------
Virtual subjects of one source CT are deformed copies of one person (:mod:`xrlib.data.subjects`).
When the subjects come from several sources, :func:`assign_pools` makes the splits
**source-disjoint**: every source belongs to exactly one of train / validation / test across all
pools, so no test image shares a patient with a training or validation image. How the profile's
counts (subjects, not sources) map onto sources:

* The profile's ``pools`` counts are subjects in total, whatever the number of sources (the
  profile still asks ``cohort.n_subjects`` per source to cover them all, so one source can fill
  them alone); with several sources only these totals are drawn, spread over the sources.
* The slots of a split are the profile's counts of that split summed over the pools (e.g. test =
  ``surrogate.test + syn_train.test + syn_test.test`` subjects).
* Sources are ranked by ``sha256(seed, source name)`` (:func:`rank_sources`). Every source is
  used: each split with slots gets at least the sources its slots need (``ceil(slots /
  subjects per source)``, at least one), the remaining sources are dealt one at a time to the
  split with the most slots per source (D'Hondt), and the splits take consecutive blocks of the
  ranking (test, validation, train).
* Inside a split the sources' subjects are interleaved (the first subject of each source, then the
  second, …; a source's subjects in the order of ``sha256(seed, subject id)``) and fill the
  slots pool by pool, so a split's subjects spread over its patients.

A rank by hash rather than a permutation of the sorted names keeps the assignment stable: adding
a patient inserts it into the ranking without reordering the others, and moves at most one
existing source across each of the two block boundaries when the sources have the same number of
subjects, as a cohort makes them (a permutation of the sorted names would reshuffle them all).

With too few sources for three source-disjoint splits, two sources or more still keep the test
split on its own patients (validation and training then share sources, subjects stay disjoint);
with one source (the example CT), or when the sources' subjects cannot fill the slots, subjects
are assigned as before, by one seeded permutation of all of them, and :func:`leakage_note` gives
the one line that every report of such a build prints. :func:`source_folds` and ``fold=`` make the
folds of a cross-validation over patients (each fold's sources are once the test split).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile, SplitCounts, SurrogateSection
from xrlib.data.subjects import source_ct
from xrlib.drr.geometry import Pose

POOLS = ("surrogate", "syn_train", "syn_test")
SPLITS = ("train", "val", "test")
#: Named training/evaluation sets of the study (paper 000).
DATASET_NAMES = ("Real", "Syn_cen", "Syn_all", "Syn_test")


def _assign(subject_ids: Sequence[str], seed: int, counts: dict[str, SplitCounts]) -> dict[str, tuple[str, str]]:
    """Permute the sorted ids once (seeded) and fill ``counts`` pool by pool, split by split (subjects, not
    sources: the assignment of a one-source cohort)."""
    ids = sorted(str(s) for s in subject_ids)
    order = np.random.default_rng([int(seed), 0xDA7A]).permutation(len(ids))
    need = sum(c.total for c in counts.values())
    if need > len(ids):
        raise InputError("profile", f"the pools need {need} subjects but only {len(ids)} are available")
    out, pos = {}, 0
    for pool, c in counts.items():
        for split in SPLITS:
            for _ in range(getattr(c, split)):
                out[ids[order[pos]]] = (pool, split)
                pos += 1
    return out


#: How :func:`assign_pools` split the subjects (:func:`split_mode`): three source-disjoint splits,
#: test on its own sources (validation and training share), or one permutation of all subjects.
SPLIT_MODES = ("source-disjoint", "test-disjoint", "subjects")
_GROUPINGS = {"source-disjoint": (("test",), ("val",), ("train",)), "test-disjoint": (("test",), ("train", "val"))}


def _hash_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{int(seed)}|{text}".encode()).hexdigest()


def rank_sources(sources: Sequence[str], seed: int) -> list[str]:
    """The distinct ``sources`` ranked by ``sha256("<seed>|<name>")`` (ties, impossible in practice, by name)."""
    return sorted({str(s) for s in sources}, key=lambda n: (_hash_key(seed, n), n))


def _pool_counts(profile: Profile) -> dict[str, SplitCounts]:
    """The profile's counts per pool drawn from virtual subjects (no surrogate with a real folder)."""
    return {p: getattr(profile.pools, p) for p in POOLS if not (p == "surrogate" and profile.real_folder)}


def _slots(counts: dict[str, SplitCounts], group: Sequence[str]) -> list[tuple[str, str]]:
    """``(pool, split)`` slots of the splits in ``group``, pool by pool, split by split (one per subject)."""
    return [(pool, split) for pool, c in counts.items() for split in SPLITS if split in group
            for _ in range(getattr(c, split))]


def _blocks(ranked: list[str], sizes: dict[str, int], groups, counts) -> dict[tuple[str, ...], list[str]] | None:
    """Consecutive blocks of ``ranked`` sources per group (D'Hondt over the slots, each group with at least the
    sources its slots need), or ``None`` when the sources cannot fill the slots."""
    need = {g: len(_slots(counts, g)) for g in groups}
    active = [g for g in groups if need[g] > 0]
    per_source = min(sizes[s] for s in ranked) if ranked else 0
    if per_source < 1 or len(active) > len(ranked):
        return None
    seats = {g: max(1, math.ceil(need[g] / per_source)) for g in active}
    if sum(seats.values()) > len(ranked):
        return None
    while sum(seats.values()) < len(ranked):
        best = max(active, key=lambda g: (need[g] / (seats[g] + 1), -active.index(g)))
        seats[best] += 1
    out, pos = {}, 0
    for g in groups:
        out[g] = ranked[pos:pos + seats.get(g, 0)]
        pos += seats.get(g, 0)
    if any(sum(sizes[s] for s in out[g]) < need[g] for g in active):
        return None
    return out


def _fill(by_source: dict[str, list[str]], sources: list[str], slots: list[tuple[str, str]], seed: int) -> dict:
    """Interleave the subjects of ``sources`` (each in seeded-hash order) and fill ``slots`` in order."""
    queues = [sorted(by_source[s], key=lambda sid: (_hash_key(seed, sid), sid)) for s in sources]
    order = [q[i] for i in range(max((len(q) for q in queues), default=0)) for q in queues if i < len(q)]
    return {sid: slot for sid, slot in zip(order, slots)}


def _by_source(subject_ids: Sequence[str], source_of: Callable[[str], str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for sid in sorted(str(s) for s in subject_ids):
        out.setdefault(str(source_of(sid)), []).append(sid)
    return out


def _disjoint(by_source: dict[str, list[str]], ranked: list[str], seed: int, counts, mode: str) -> dict | None:
    groups = _GROUPINGS[mode]
    blocks = _blocks(ranked, {s: len(by_source[s]) for s in ranked}, groups, counts)
    if blocks is None:
        return None
    out = {}
    for g in groups:
        out.update(_fill(by_source, blocks[g], _slots(counts, g), seed))
    return out


def split_mode(subject_ids: Sequence[str], profile: Profile, source_of: Callable[[str], str] = source_ct) -> str:
    """Which of :data:`SPLIT_MODES` :func:`assign_pools` uses for these subjects (see the module docstring)."""
    by_source = _by_source(subject_ids, source_of)
    ranked, counts = rank_sources(by_source, profile.seed), _pool_counts(profile)
    if len(ranked) >= 2:
        for mode in ("source-disjoint", "test-disjoint"):
            if _blocks(ranked, {s: len(by_source[s]) for s in ranked}, _GROUPINGS[mode], counts) is not None:
                return mode
    return "subjects"


def source_folds(sources: Sequence[str], seed: int, k: int) -> dict[str, int]:
    """Source → fold ``0 … k−1``: consecutive, near-equal blocks of :func:`rank_sources` (sizes differ by at
    most one). Adding a source moves at most one existing source across each of the ``k − 1`` boundaries.
    Raises :class:`InputError` (naming ``--folds``) unless ``2 ≤ k ≤`` the number of sources."""
    ranked = rank_sources(sources, seed)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise InputError("--folds", f"must be an integer ≥ 2 (each fold once the test set), got {k!r}")
    if k > len(ranked):
        raise InputError("--folds", f"{k} folds need at least {k} source CTs (patients), but there "
                                    f"{'is' if len(ranked) == 1 else 'are'} {len(ranked)}")
    return {s: (i * int(k)) // len(ranked) for i, s in enumerate(ranked)}


def assign_pools(subject_ids: Sequence[str], profile: Profile, source_of: Callable[[str], str] = source_ct,
                 fold: tuple[int, int] | None = None) -> dict[str, tuple[str, str]]:
    """Map subject id → ``(pool, split)``, deterministic from ``profile.seed``.

    ``source_of`` names each subject's source CT (default: the ``<source>-v<iii>`` id). With several
    sources the splits are source-disjoint as far as the sources allow (module docstring,
    :func:`split_mode`); with one source — the example CT — subjects are permuted once, exactly as
    before sources were considered: the first ones fill ``surrogate`` (train, val, test), then
    ``syn_train``, then ``syn_test``, in the counts of ``profile.pools``. Unused subjects are left
    out. With a real folder configured the surrogate pool is skipped (its counts are not drawn).

    ``fold=(i, k)``: fold ``i`` of a ``k``-fold cross-validation over sources (:func:`source_folds`): the
    test slots are filled from fold ``i``'s sources, the other sources make validation and training
    (source-disjoint when they allow, else sharing sources). Raises :class:`InputError` when fold ``i``'s
    subjects cannot fill the test slots or the others the training ones.
    """
    counts = _pool_counts(profile)
    by_source = _by_source(subject_ids, source_of)
    if fold is not None:
        return _assign_fold(by_source, profile.seed, counts, *fold)
    ranked = rank_sources(by_source, profile.seed)
    mode = split_mode(subject_ids, profile, source_of)
    if mode != "subjects":
        return _disjoint(by_source, ranked, profile.seed, counts, mode)
    return _assign(subject_ids, profile.seed, counts)


def _assign_fold(by_source: dict[str, list[str]], seed: int, counts, i: int, k: int) -> dict[str, tuple[str, str]]:
    folds = source_folds(list(by_source), seed, k)
    if not 0 <= int(i) < int(k):
        raise InputError("fold", f"fold index {i!r} is not in 0 … {k - 1}")
    test = [s for s in rank_sources(by_source, seed) if folds[s] == i]
    rest = [s for s in rank_sources(by_source, seed) if folds[s] != i]
    slots = _slots(counts, ("test",))
    have = sum(len(by_source[s]) for s in test)
    if have < len(slots):
        raise InputError("--folds", f"fold {i} of {k} has {have} subject(s) of {len(test)} source CT(s) for the "
                                    f"{len(slots)} test subjects the profile's pools need; use fewer folds")
    out = _fill(by_source, test, slots, seed)
    for mode in ("source-disjoint", "test-disjoint"):
        groups = _GROUPINGS[mode][1:]
        blocks = _blocks(rest, {s: len(by_source[s]) for s in rest}, groups, counts)
        if blocks is not None:
            for g in groups:
                out.update(_fill(by_source, blocks[g], _slots(counts, g), seed))
            return out
    need = len(_slots(counts, ("train", "val")))
    raise InputError("--folds", f"fold {i} of {k}: the other {len(rest)} source CT(s) cannot fill the {need} "
                                "training and validation subjects the profile's pools need; use fewer folds")


def leakage_note(manifest: pd.DataFrame) -> str:
    """One line when test subjects share patients (source CTs) with training or validation subjects, else "".

    Read from the manifest's ``source`` and ``split`` columns; real radiographs (pool ``real``, whose
    patients are unknown) are left out. Printed by ``xrlib dataset``, under Table 1 and in every
    chapter's stage header (from ``build.json``)."""
    df = manifest[manifest["pool"] != "real"] if "pool" in manifest.columns else manifest
    test = set(df.loc[df["split"] == "test", "source"].astype(str))
    fit = set(df.loc[df["split"].isin(["train", "val"]), "source"].astype(str))
    shared = sorted(test & fit)
    if not shared:
        return ""
    n_src = df["source"].nunique()
    return (f"Leakage: test subjects share patients with training subjects ({len(shared)} of {n_src} source CT(s) "
            "in both; virtual subjects of one CT are one person), so test scores are optimistic.")


def cohort_phrase(manifest: pd.DataFrame) -> str:
    """What the synthetic test subjects are, for generated prose: "virtual subjects of one CT (not independent
    patients)" for one source CT, else "virtual subjects of N source CTs" with whether the test patients are
    disjoint from the training and validation patients (from the manifest's ``source`` and ``split``)."""
    df = manifest[manifest["pool"] != "real"] if "pool" in manifest.columns else manifest
    n_src = int(df["source"].nunique()) if "source" in df.columns else 1
    if n_src <= 1:
        return "virtual subjects of one CT (not independent patients)"
    shared = "share patients with" if leakage_note(manifest) else "are patient-disjoint from"
    return f"virtual subjects of {n_src} source CTs (test subjects {shared} training subjects)"


def real_splits(names: Sequence[str], profile: Profile) -> dict[str, str]:
    """Split real radiographs ``names`` → split, in the proportions of the surrogate's counts (seeded)."""
    counts = profile.pools.surrogate
    n, total = len(names), counts.total or 1
    val = int(round(n * counts.val / total))
    test = int(round(n * counts.test / total))
    scaled = SplitCounts(train=max(n - val - test, 0), val=val, test=test)
    return {name: split for name, (_, split) in _assign(names, profile.seed, {"real": scaled}).items()}


def jittered_poses(seed: int, surrogate: SurrogateSection, subject: str) -> list[Pose]:
    """``surrogate.poses_per_subject`` poses with α, tilt and shift uniform in ± the jitters (seeded by subject)."""
    key = int.from_bytes(hashlib.sha256(subject.encode()).digest()[:4], "little")
    rng = np.random.default_rng([int(seed), key, 1])
    poses = []
    for _ in range(surrogate.poses_per_subject):
        a = rng.uniform(-1, 1) * surrogate.alpha_jitter_deg
        t = rng.uniform(-1, 1) * surrogate.tilt_jitter_deg
        sh = rng.uniform(-1, 1, 3) * surrogate.shift_jitter_mm
        poses.append(Pose(alpha=round(float(a), 4), tilt=round(float(t), 4), shift=tuple(round(float(x), 3) for x in sh)))
    return poses


def surrogate_poses(profile: Profile, subject: str) -> list[Pose]:
    """Well-positioned poses of one surrogate subject (seeded by profile seed and subject id)."""
    return jittered_poses(profile.seed, profile.surrogate, subject)


def spread_angles(alphas: Sequence[float], index: int, per_subject: int | None) -> list[float]:
    """The angles (degrees) of the ``index``-th test subject when each subject contributes ``per_subject`` of
    ``alphas``: a window of ``per_subject`` consecutive angles that advances by ``per_subject`` from one
    subject to the next, so that over the cohort every angle (and α group) is used about equally often.
    ``None`` (or ``per_subject ≥ len(alphas)``): every angle. The test subject is the statistical unit
    (:mod:`xrlib.eval.evidence`), so an expensive threat buys more subjects with fewer images each."""
    alphas = [float(a) for a in alphas]
    if per_subject is None or per_subject >= len(alphas):
        return alphas
    if per_subject < 1:
        raise ValueError(f"per_subject must be ≥ 1 or None, got {per_subject}")
    start = index * per_subject
    return sorted(alphas[(start + j) % len(alphas)] for j in range(per_subject))


def select(manifest: pd.DataFrame, dataset: str, split: str | None = None, *, cen_alphas: Sequence[float]) -> pd.DataFrame:
    """Rows of a named set: ``Real`` (surrogate or real pool), ``Syn_cen`` (syn_train at
    ``cen_alphas``, the profile's ``synthetic.cen_alphas``), ``Syn_all`` (syn_train, all α),
    ``Syn_test`` (syn_test); optionally one split."""
    if dataset == "Real":
        df = manifest[manifest["pool"].isin(["surrogate", "real"])]
    elif dataset == "Syn_cen":
        df = manifest[(manifest["pool"] == "syn_train") & np.isclose(manifest["alpha"].to_numpy()[:, None],
                                                                     np.asarray(cen_alphas, float)[None]).any(1)]
    elif dataset == "Syn_all":
        df = manifest[manifest["pool"] == "syn_train"]
    elif dataset == "Syn_test":
        df = manifest[manifest["pool"] == "syn_test"]
    else:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASET_NAMES)}")
    if split is not None:
        df = df[df["split"] == split]
    return df


def table1(manifest: pd.DataFrame, cen_alphas: Sequence[float]) -> pd.DataFrame:
    """Table 1 analog: images, subjects and patients (``sources``: distinct source CTs; real radiographs
    count as one) per named set, pool and split. Print :func:`leakage_note` under it."""
    rows = []
    for name in DATASET_NAMES:
        df = select(manifest, name, cen_alphas=cen_alphas)
        for (pool, split), g in df.groupby(["pool", "split"], sort=False):
            rows.append({"dataset": name, "pool": pool, "split": split, "images": len(g),
                         "subjects": g["subject"].nunique(), "sources": g["source"].nunique()})
    out = pd.DataFrame(rows, columns=["dataset", "pool", "split", "images", "subjects", "sources"])
    out["split"] = pd.Categorical(out["split"], SPLITS, ordered=True)
    return out.sort_values(["dataset", "split"], key=lambda s: s.map({n: i for i, n in enumerate(DATASET_NAMES)}) if s.name == "dataset" else s).reset_index(drop=True)
