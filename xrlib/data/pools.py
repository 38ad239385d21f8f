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
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile, SplitCounts, SurrogateSection
from xrlib.drr.geometry import Pose

POOLS = ("surrogate", "syn_train", "syn_test")
SPLITS = ("train", "val", "test")
#: Named training/evaluation sets of the study (paper 000).
DATASET_NAMES = ("Real", "Syn_cen", "Syn_all", "Syn_test")


def _assign(subject_ids: Sequence[str], seed: int, counts: dict[str, SplitCounts]) -> dict[str, tuple[str, str]]:
    """Permute the sorted ids once (seeded) and fill ``counts`` pool by pool, split by split."""
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


def assign_pools(subject_ids: Sequence[str], profile: Profile) -> dict[str, tuple[str, str]]:
    """Map subject id → ``(pool, split)``, deterministic from ``profile.seed``.

    Subjects are permuted once; the first ones fill ``surrogate`` (train, val, test), then
    ``syn_train``, then ``syn_test``, in the counts of ``profile.pools``. Unused subjects are left
    out. With a real folder configured the surrogate pool is skipped (its counts are not drawn).
    """
    pools = [p for p in POOLS if not (p == "surrogate" and profile.real_folder)]
    return _assign(subject_ids, profile.seed, {p: getattr(profile.pools, p) for p in pools})


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
    """Table 1 analog: images and subjects per named set, pool and split."""
    rows = []
    for name in DATASET_NAMES:
        df = select(manifest, name, cen_alphas=cen_alphas)
        for (pool, split), g in df.groupby(["pool", "split"], sort=False):
            rows.append({"dataset": name, "pool": pool, "split": split, "images": len(g), "subjects": g["subject"].nunique()})
    out = pd.DataFrame(rows, columns=["dataset", "pool", "split", "images", "subjects"])
    out["split"] = pd.Categorical(out["split"], SPLITS, ordered=True)
    return out.sort_values(["dataset", "split"], key=lambda s: s.map({n: i for i, n in enumerate(DATASET_NAMES)}) if s.name == "dataset" else s).reset_index(drop=True)
