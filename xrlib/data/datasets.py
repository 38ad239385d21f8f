"""Datasets of the study: pools, subject-disjoint splits, preprocessing, shards and a manifest.

Pools
-----
Virtual subjects (see :mod:`xrlib.anatomy.cohort`) are assigned to three subject-disjoint pools by a
permutation drawn from the profile's seed:

``surrogate``
    The clinical-surrogate stand-in for the paper's "Real" domain: *realistic* physics
    (polychromatic spectrum, noise, blur, scatter, −log, display processing) at well-positioned
    poses — α, tilt ~ U(±jitter) and a small random shift — ``poses_per_subject`` per subject.
    When a folder of real radiographs is configured it **replaces** this pool (pool ``real``).
``syn_train``
    Plain DRRs (naive physics + the same display processing) at every synthetic α
    (−20°…20° step 2°). ``Syn_cen`` is this pool at α ∈ {−2°, 0°, 2°}; ``Syn_all`` all angles.
``syn_test``
    As ``syn_train``, for testing only.

Inside the surrogate and ``syn_train`` pools subjects are split into train/validation/test, again
by a seeded permutation, so no subject contributes images to two splits. Virtual subjects of one
source CT are deformed copies of one person, not independent patients (see :mod:`xrlib.anatomy.cohort`);
the ``source`` column of the manifest names the unit of independence.

Images
------
Each radiograph goes through :func:`xrlib.drr.physics.postprocess` (window + unsharp masking, [0, 1])
and :func:`preprocess` (aspect-preserving bilinear resize, centred zero padding to S×S, min–max to
[0, 1]; the mask resized bilinearly and thresholded at 0.5). Images are stored as uint8 (×255).

Storage and caching
-------------------
``<out>/shards/<pool>/<subject>.npz`` holds all images of one subject (``image``, ``mask``,
``mask_left``, ``mask_right``: uint8 ``(P, S, S)``, plus the pose parameters); ``<out>/manifest.csv``
has one row per image; ``<out>/build.json`` records the configuration hash and ``complete``.
Shards are written atomically and the manifest is rewritten after each subject, so an interrupted
build resumes. Every run checks each shard listed in the manifest against its SHA-256 and rebuilds
missing, truncated or corrupted ones; a build whose shards are all intact is a no-op (nothing is
rewritten and the cohort is not even loaded).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.core.atomic import save_npz_atomic, sha256_file, write_text_atomic
from xrlib.core.errors import InputError
from xrlib.core.profiles import DATASET_KEYS, profile_hash

#: Bumped whenever this module changes what it writes, so cached datasets are rebuilt.
DATASETS_VERSION = 1

MANIFEST_FILE = "manifest.csv"
BUILD_FILE = "build.json"
POOLS = ("surrogate", "syn_train", "syn_test")
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = [
    "subject", "source", "pool", "split", "alpha", "tilt", "shift_x", "shift_y", "shift_z",
    "physics", "dose_mas", "shard", "index", "checksum",
]
#: Named training/evaluation sets of the study (paper 000).
DATASET_NAMES = ("Real", "Syn_cen", "Syn_all", "Syn_test")
_IMAGE_SUFFIXES = (".png", ".dcm", ".dicom")


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def _resize_bilinear(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    down = shape[0] < x.shape[0] or shape[1] < x.shape[1]
    out = F.interpolate(t, size=shape, mode="bilinear", align_corners=False, antialias=down)
    return out[0, 0].numpy()


def preprocess(image: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize keeping the aspect ratio, zero-pad to ``size × size`` (centred), scale to [0, 1].

    The longer side becomes ``size``; the image is resized bilinearly (antialiased when
    shrinking) and min–max normalised to [0, 1] before padding, so padding is 0. The mask is
    resized the same way as a float image and thresholded at 0.5 (uint8 0/1). Returns
    ``(float32 (S, S), uint8 (S, S) or None)``.
    """
    img = np.asarray(image, np.float32)
    if img.ndim != 2 or min(img.shape) < 1:
        raise ValueError(f"expected a 2-D image, got shape {img.shape}")
    if mask is not None and np.shape(mask) != img.shape:
        raise ValueError(f"mask shape {np.shape(mask)} differs from image shape {img.shape}")
    h, w = img.shape
    scale = size / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    small = _resize_bilinear(img, (nh, nw))
    lo, hi = float(small.min()), float(small.max())
    small = (small - lo) / (hi - lo) if hi > lo else np.zeros_like(small)
    top, left = (size - nh) // 2, (size - nw) // 2
    out = np.zeros((size, size), np.float32)
    out[top:top + nh, left:left + nw] = np.clip(small, 0.0, 1.0)
    if mask is None:
        return out, None
    m = _resize_bilinear((np.asarray(mask) > 0).astype(np.float32), (nh, nw)) >= 0.5
    mout = np.zeros((size, size), np.uint8)
    mout[top:top + nh, left:left + nw] = m
    return out, mout


# --------------------------------------------------------------------------------------------
# Subjects
# --------------------------------------------------------------------------------------------


@dataclass
class SubjectSource:
    """Where virtual subjects come from: their ids, a loader and a fingerprint for caching.

    ``load(subject_id)`` returns ``(ct, labels)`` :class:`xrlib.core.ct.Volume` s; it is only called
    for subjects whose shards must be (re)built. ``source_of(subject_id)`` names the source CT
    (the unit of independence).
    """

    ids: list[str]
    load: Callable[[str], tuple]
    fingerprint: str
    source_of: Callable[[str], str] = lambda sid: sid.rsplit("-v", 1)[0]


def subjects_from_volumes(items: Sequence[tuple]) -> SubjectSource:
    """A :class:`SubjectSource` over in-memory ``(subject_id, ct, labels)`` triples."""
    table = {str(sid): (ct, lab) for sid, ct, lab in items}
    h = hashlib.sha256()
    for sid, (ct, lab) in sorted(table.items()):
        h.update(sid.encode())
        for vol in (ct, lab):
            h.update(np.ascontiguousarray(vol.array).tobytes())
            h.update(repr((vol.spacing, vol.origin, np.asarray(vol.direction).tolist())).encode())
    return SubjectSource(list(table), lambda sid: table[sid], h.hexdigest()[:16])


def cohort_subjects(cfg: dict, cohort_dir: str | Path, sources=None, progress: bool = True) -> SubjectSource:
    """Virtual subjects of :mod:`xrlib.anatomy.cohort` (built lazily, on the first ``load``).

    ``sources`` as in :func:`xrlib.anatomy.cohort.build_cohort` (``None``: the example CT). The cohort
    has ``cfg["cohort"]["n_subjects"]`` subjects per source and the profile's seed.
    """
    from xrlib.anatomy.cohort import CohortConfig, build_cohort, load_subject, subject_id

    ccfg = CohortConfig.from_profile(cfg)
    names = ["example"] if sources is None else [s[0] for s in sources]
    ids = [subject_id(n, i) for n in names for i in range(ccfg.n_subjects)]
    state: dict = {}

    def load(sid: str):
        if "built" not in state:
            build_cohort(sources, ccfg, cohort_dir, progress=progress)
            state["built"] = True
        return load_subject(cohort_dir, sid)

    if sources is None:  # the example CT: fingerprint its files (cheap, no loading)
        from xrlib.core.ct import example_paths

        src_fp = [sha256_file(p) for p in example_paths()]
    else:
        from xrlib.anatomy.cohort import _source_fingerprint

        src_fp = [_source_fingerprint(ct, lab) for _, ct, lab in sources]
    fp = hashlib.sha256(f"{ccfg.fingerprint()}|{names}|{src_fp}|{ccfg.n_subjects}".encode()).hexdigest()[:16]
    return SubjectSource(ids, load, fp)


def assign_pools(subject_ids: Sequence[str], cfg: dict) -> dict[str, tuple[str, str]]:
    """Map subject id → ``(pool, split)``, deterministic from ``cfg["seed"]``.

    Subjects are permuted once; the first ones fill ``surrogate`` (train, val, test), then
    ``syn_train``, then ``syn_test``, in the counts of ``cfg["pools"]``. Unused subjects are left
    out. With a real folder configured the surrogate pool is skipped (its counts are not drawn).
    """
    ids = sorted(str(s) for s in subject_ids)
    order = np.random.default_rng([int(cfg["seed"]), 0xDA7A]).permutation(len(ids))
    pools = [p for p in POOLS if not (p == "surrogate" and cfg.get("real", {}).get("folder"))]
    need = sum(int(n) for p in pools for n in cfg["pools"][p].values())
    if need > len(ids):
        raise InputError("profile", f"the pools need {need} subjects but only {len(ids)} are available")
    out, pos = {}, 0
    for pool in pools:
        for split in SPLITS:
            for _ in range(int(cfg["pools"][pool].get(split, 0))):
                out[ids[order[pos]]] = (pool, split)
                pos += 1
    return out


def surrogate_poses(cfg: dict, subject: str):
    """Well-positioned poses of one surrogate subject (seeded by profile seed and subject id)."""
    from xrlib.drr.geometry import Pose

    s = cfg["surrogate"]
    key = int.from_bytes(hashlib.sha256(subject.encode()).digest()[:4], "little")
    rng = np.random.default_rng([int(cfg["seed"]), key, 1])
    poses = []
    for _ in range(int(s["poses_per_subject"])):
        a = rng.uniform(-1, 1) * s["alpha_jitter_deg"]
        t = rng.uniform(-1, 1) * s["tilt_jitter_deg"]
        sh = rng.uniform(-1, 1, 3) * s["shift_jitter_mm"]
        poses.append(Pose(alpha=round(float(a), 4), tilt=round(float(t), 4), shift=tuple(round(float(x), 3) for x in sh)))
    return poses


def _noise_seed(cfg: dict, subject: str) -> int:
    key = int.from_bytes(hashlib.sha256(subject.encode()).digest()[:4], "little")
    return int(np.random.SeedSequence([int(cfg["seed"]), key, 2]).generate_state(1)[0])


def study_geometry(cfg: dict):
    """The profile's detector: ``render.detector`` px square over ``render.field_mm`` mm (paper PA geometry)."""
    from xrlib.drr.geometry import Geometry

    n = int(cfg["render"]["detector"])
    return Geometry(height=n, width=n, pitch=float(cfg["render"]["field_mm"]) / n)


def preprocessing_example(ct, labels, cfg: dict, alpha: float = 10.0) -> dict:
    """One synthetic (naive-physics) radiograph before and after :func:`preprocess`, as the datasets make them.

    Returns ``detector`` (post-processed display image at the profile's detector size, [0, 1]),
    ``detector_mask``, ``geometry``, ``image`` and ``mask`` (``image_size`` square) and ``alpha`` (deg).
    """
    from xrlib.drr import physics as phys
    from xrlib.anatomy.annotate import clavicles_from_labels
    from xrlib.drr.geometry import Pose
    from xrlib.drr.render import render_batch

    geo = study_geometry(cfg)
    rg = render_batch(ct, clavicles_from_labels(labels), geo, [Pose(alpha=float(alpha))], physics="naive",
                      backend=cfg["render"]["backend"], fov=cfg["render"].get("fov", "pad"))[0]
    disp = phys.postprocess(rg.image, rg.field, pitch_mm=geo.pitch)
    img, mask = preprocess(disp, rg.mask, int(cfg["image_size"]))
    return {"detector": disp, "detector_mask": rg.mask, "geometry": geo, "image": img, "mask": mask,
            "alpha": float(alpha)}


def render_subject(ct, labels, cfg: dict, pool: str, subject: str) -> dict:
    """Render, post-process and preprocess every image of one subject; arrays of a shard."""
    from xrlib.drr import physics as phys
    from xrlib.anatomy.annotate import clavicles_from_labels
    from xrlib.drr.geometry import Pose
    from xrlib.drr.render import render_batch

    r = cfg["render"]
    geo = study_geometry(cfg)
    if pool == "surrogate":
        poses, physics = surrogate_poses(cfg, subject), "realistic"
        params = phys.RealisticParams(dose_mas=float(cfg["surrogate"]["dose_mas"]))
    else:
        poses, physics, params = [Pose(alpha=a) for a in cfg["synthetic"]["alphas"]], "naive", None
    rgs = render_batch(ct, clavicles_from_labels(labels), geo, poses, physics=physics, backend=r["backend"],
                       seed=_noise_seed(cfg, subject), fov=r.get("fov", "pad"), realistic=params)
    size = int(cfg["image_size"])
    arrays = {k: [] for k in ("image", "mask", "mask_left", "mask_right")}
    for rg in rgs:
        disp = phys.postprocess(rg.image, rg.field, pitch_mm=geo.pitch)
        img, mask = preprocess(disp, rg.mask, size)
        arrays["image"].append(np.round(img * 255).astype(np.uint8))
        arrays["mask"].append(mask)
        arrays["mask_left"].append(preprocess(disp, rg.mask_left, size)[1])
        arrays["mask_right"].append(preprocess(disp, rg.mask_right, size)[1])
    out = {k: np.stack(v) for k, v in arrays.items()}
    out["alpha"] = np.array([p.alpha for p in poses], np.float64)
    out["tilt"] = np.array([p.tilt for p in poses], np.float64)
    out["shift"] = np.array([p.shift for p in poses], np.float64).reshape(len(poses), 3)
    out["physics"] = np.array(physics)
    out["dose_mas"] = np.array(float(cfg["surrogate"]["dose_mas"]) if physics == "realistic" else np.nan)
    out["backend"] = np.array(rgs[0].meta["backend"])
    return out


# --------------------------------------------------------------------------------------------
# Real radiographs
# --------------------------------------------------------------------------------------------


@dataclass
class RealItem:
    """One real radiograph with its clavicle mask (image float32, mask uint8 0/1)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    image_path: Path
    mask_path: Path


def _read_2d(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im.convert("F") if im.mode not in ("I;16", "I;16B", "I") else im, dtype=np.float32)
        else:
            import pydicom

            ds = pydicom.dcmread(str(path))
            arr = ds.pixel_array.astype(np.float32)
            arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
            if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
                arr = arr.max() - arr
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise InputError(path, f"cannot read image ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    if arr.ndim != 2:
        raise InputError(path, f"expected a single-channel 2-D image, got shape {arr.shape}")
    return arr


def load_real_folder(folder: str | Path) -> list[RealItem]:
    """Real radiographs ``folder/images/<name>.{png,dcm}`` with masks ``folder/masks/<name>.*``.

    Masks are binarized (> 0). Raises :class:`InputError` naming the file for a missing folder,
    a missing mask, an unreadable file or an image/mask size mismatch.
    """
    folder = Path(folder)
    img_dir, mask_dir = folder / "images", folder / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise InputError(d, "no such directory (expected images/ and masks/ with matching file names)")
    images = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if not images:
        raise InputError(img_dir, "no PNG or DICOM images found")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES}
    out = []
    for ip in images:
        mp = masks.get(ip.stem)
        if mp is None:
            raise InputError(ip, f"no mask named {ip.stem}.png/.dcm in {mask_dir}")
        img, mask = _read_2d(ip), _read_2d(mp)
        if img.shape != mask.shape:
            raise InputError(mp, f"mask size {mask.shape[1]}×{mask.shape[0]} differs from image size {img.shape[1]}×{img.shape[0]} ({ip.name})")
        out.append(RealItem(ip.stem, img, (mask > 0).astype(np.uint8), ip, mp))
    return out


def _real_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for sub in ("images", "masks"):
        for p in sorted((folder / sub).glob("*")):
            if p.is_file():
                h.update(f"{sub}/{p.name}".encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _real_shard(item: RealItem, size: int) -> dict:
    img, mask = preprocess(item.image, item.mask, size)
    return {
        "image": np.round(img * 255).astype(np.uint8)[None], "mask": mask[None],
        "mask_left": np.zeros_like(mask)[None], "mask_right": np.zeros_like(mask)[None],
        "alpha": np.array([np.nan]), "tilt": np.array([np.nan]), "shift": np.full((1, 3), np.nan),
        "physics": np.array("real"), "dose_mas": np.array(np.nan), "backend": np.array("none"),
    }


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _shard_rows(subject: str, source: str, pool: str, split: str, shard_rel: str, arrays: dict, checksum: str) -> list[dict]:
    rows = []
    for i in range(arrays["image"].shape[0]):
        sh = arrays["shift"][i]
        rows.append({
            "subject": subject, "source": source, "pool": pool, "split": split,
            "alpha": float(arrays["alpha"][i]), "tilt": float(arrays["tilt"][i]),
            "shift_x": float(sh[0]), "shift_y": float(sh[1]), "shift_z": float(sh[2]),
            "physics": str(arrays["physics"]), "dose_mas": float(arrays["dose_mas"]),
            "shard": shard_rel, "index": i, "checksum": checksum,
        })
    return rows


def read_manifest(path: str | Path) -> pd.DataFrame:
    """The dataset manifest (``manifest.csv``, or a datasets folder containing it)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise InputError(path, "no dataset manifest; build the datasets first (xrlib dataset --profile NAME)")
    df = pd.read_csv(path, dtype={"subject": str, "source": str, "checksum": str, "shard": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(path, f"manifest lacks columns {missing}")
    df.attrs["root"] = str(path.parent)
    return df


def dataset_hash(cfg: dict, subjects_fp: str) -> str:
    """Hash of everything that determines the datasets: profile sizes, subjects, code version."""
    return hashlib.sha256(f"{profile_hash(cfg, DATASET_KEYS)}|{subjects_fp}|v{DATASETS_VERSION}".encode()).hexdigest()


def build_datasets(
    cfg: dict,
    out_dir: str | Path,
    subjects: SubjectSource | None = None,
    real_folder: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Build (or resume, or verify) the datasets of profile ``cfg`` under ``out_dir``.

    Args:
        cfg: a validated profile (:func:`xrlib.core.profiles.load_profile`).
        out_dir: the datasets folder (``runs/<profile>/datasets``).
        subjects: where subjects come from; default the virtual cohort of the example CT built in
            ``cohort/`` next to ``out_dir`` (``runs/<profile>/cohort``, :func:`cohort_subjects`).
        real_folder: real radiographs replacing the surrogate pool (default ``cfg["real"]["folder"]``).
        progress: show tqdm progress bars.

    Returns the manifest (one row per image). See the module docstring for caching.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    real_folder = real_folder if real_folder is not None else cfg.real_folder
    if real_folder:
        cfg = cfg.with_real_folder(real_folder)
    if subjects is None:
        subjects = cohort_subjects(cfg, out_dir.parent / "cohort", progress=progress)
    fp = subjects.fingerprint
    real_items = None
    if real_folder:
        real_items = load_real_folder(real_folder)
        fp += "|real:" + _real_fingerprint(Path(real_folder))
    digest = dataset_hash(cfg, fp)
    build_path, manifest_path = out_dir / BUILD_FILE, out_dir / MANIFEST_FILE

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

    # Plan: (subject, source, pool, split, shard_rel, maker)
    plan = []
    assignment = assign_pools(subjects.ids, cfg)
    for sid in sorted(assignment, key=lambda s: (POOLS.index(assignment[s][0]), s)):
        pool, split = assignment[sid]
        plan.append((sid, subjects.source_of(sid), pool, split, f"shards/{pool}/{sid}.npz",
                     lambda sid=sid, pool=pool: render_subject(*subjects.load(sid), cfg, pool, sid)))
    if real_items is not None:
        names = [it.name for it in real_items]
        real_cfg = {**cfg, "pools": {**cfg["pools"], "surrogate": _scale_counts(cfg["pools"]["surrogate"], len(names))}}
        real_split = assign_pools(names, {**real_cfg, "real": {"folder": None},
                                          "pools": {"surrogate": real_cfg["pools"]["surrogate"],
                                                    "syn_train": {}, "syn_test": {}}})
        size = int(cfg["image_size"])
        for it in real_items:
            plan.append((it.name, "real", "real", real_split[it.name][1], f"shards/real/{it.name}.npz",
                         lambda it=it: _real_shard(it, size)))

    if not was_complete or not build_path.is_file():
        write_text_atomic(build_path, json.dumps({"hash": digest, "complete": False, "version": DATASETS_VERSION}))
    rows: dict[str, list[dict]] = {}
    rebuilt = 0
    bar = tqdm(plan, desc="datasets", unit="subject", disable=not progress)
    for sid, source, pool, split, rel, make in bar:
        bar.set_postfix_str(f"{pool}/{sid}")
        path = out_dir / rel
        prev = old.get(rel)
        if prev and path.is_file() and sha256_file(path) == str(prev[0]["checksum"]):
            rows[rel] = prev
            continue
        if was_complete:  # a finished build lost a shard: mark it incomplete until repaired
            write_text_atomic(build_path, json.dumps({"hash": digest, "complete": False, "version": DATASETS_VERSION}))
            was_complete = False
        arrays = make()
        save_npz_atomic(path, arrays)
        rows[rel] = _shard_rows(sid, source, pool, split, rel, arrays, sha256_file(path))
        rebuilt += 1
        _write_manifest(manifest_path, rows, plan)
    bar.close()
    if rebuilt or not manifest_path.is_file() or set(old) != set(rows):
        _write_manifest(manifest_path, rows, plan)
    if rebuilt or not was_complete:
        write_text_atomic(build_path, json.dumps({
            "hash": digest, "complete": True, "version": DATASETS_VERSION, "profile": cfg.get("name"),
            "images": sum(len(r) for r in rows.values()), "subjects": len(rows),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }, indent=1))
    return read_manifest(manifest_path)


def _scale_counts(counts: dict, n: int) -> dict:
    """Split ``n`` real images in the proportions of the surrogate's train/val/test counts."""
    total = sum(int(v) for v in counts.values()) or 1
    val = int(round(n * int(counts.get("val", 0)) / total))
    test = int(round(n * int(counts.get("test", 0)) / total))
    return {"train": max(n - val - test, 0), "val": val, "test": test}


def _write_manifest(path: Path, rows: dict, plan) -> None:
    order = [p[4] for p in plan if p[4] in rows]
    df = pd.DataFrame([r for rel in order for r in rows[rel]], columns=MANIFEST_COLUMNS)
    write_text_atomic(path, df.to_csv(index=False))


# --------------------------------------------------------------------------------------------
# Selections, Table 1, torch dataset
# --------------------------------------------------------------------------------------------


def select(manifest: pd.DataFrame, dataset: str, split: str | None = None, cen_alphas=(-2.0, 0.0, 2.0)) -> pd.DataFrame:
    """Rows of a named set: ``Real`` (surrogate or real pool), ``Syn_cen`` (syn_train at
    ``cen_alphas``), ``Syn_all`` (syn_train, all α), ``Syn_test`` (syn_test); optionally one split."""
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


def pool_samples(manifest: pd.DataFrame, root: str | Path, per_pool: int = 6,
                 pools: Sequence[str] = ("real", "surrogate", "syn_train", "syn_test")) -> tuple[list, list, list[str]]:
    """Up to ``per_pool`` preprocessed images per pool, spread evenly over the manifest order.

    Returns ``(images, masks, titles)``: float arrays in [0, 1], uint8 masks and "pool · subject · α" titles.
    """
    images, masks, titles = [], [], []
    for pool in pools:
        rows = manifest[manifest["pool"] == pool]
        if rows.empty:
            continue
        picks = rows.iloc[np.linspace(0, len(rows) - 1, min(per_pool, len(rows))).astype(int)]
        ds = ShardDataset(picks, root=root)
        for i, r in enumerate(picks.itertuples()):
            img, m = ds[i]
            images.append(img[0].numpy())
            masks.append(m[0].numpy())
            titles.append(f"{pool} · {r.subject} · α={r.alpha:+.1f}°")
    return images, masks, titles


def table1(manifest: pd.DataFrame, cen_alphas=(-2.0, 0.0, 2.0)) -> pd.DataFrame:
    """Table 1 analog: images and subjects per named set, pool and split."""
    rows = []
    for name in DATASET_NAMES:
        df = select(manifest, name, cen_alphas=cen_alphas)
        for (pool, split), g in df.groupby(["pool", "split"], sort=False):
            rows.append({"dataset": name, "pool": pool, "split": split, "images": len(g), "subjects": g["subject"].nunique()})
    out = pd.DataFrame(rows, columns=["dataset", "pool", "split", "images", "subjects"])
    out["split"] = pd.Categorical(out["split"], SPLITS, ordered=True)
    return out.sort_values(["dataset", "split"], key=lambda s: s.map({n: i for i, n in enumerate(DATASET_NAMES)}) if s.name == "dataset" else s).reset_index(drop=True)


try:
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object


class ShardDataset(_TorchDataset):
    """Images of a dataset build, read lazily from its shards.

    Args:
        manifest: a manifest DataFrame (or a datasets folder / manifest path).
        root: the datasets folder (default: where the manifest was read from).
        pool, split: optional filters (a name or a list of names).
        alphas: optional set of α values to keep (e.g. ``{-2, 0, 2}`` for Syn_cen).

    Items are ``(image, mask)``: float32 tensors ``(1, S, S)``, image in [0, 1], mask 0/1.
    The most recently used shard is kept in memory (items are ordered by shard).
    """

    def __init__(self, manifest, root=None, pool=None, split=None, alphas=None):
        if not isinstance(manifest, pd.DataFrame):
            manifest = read_manifest(manifest)
        self.root = Path(root if root is not None else manifest.attrs.get("root", "."))
        df = manifest
        for col, val in (("pool", pool), ("split", split)):
            if val is not None:
                df = df[df[col].isin([val] if isinstance(val, str) else list(val))]
        if alphas is not None:
            df = df[np.isclose(df["alpha"].to_numpy()[:, None], np.asarray(sorted(alphas), float)[None]).any(1)]
        self.rows = df.reset_index(drop=True)
        self._shards = self.rows["shard"].to_numpy()
        self._index = self.rows["index"].to_numpy().astype(int)
        self._cache: tuple[str, dict] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _arrays(self, rel: str) -> dict:
        if self._cache is None or self._cache[0] != rel:
            path = self.root / rel
            try:
                with np.load(path) as z:
                    arrays = {"image": z["image"], "mask": z["mask"]}
            except Exception as exc:  # noqa: BLE001
                raise InputError(path, f"unreadable shard ({type(exc).__name__}); rebuild the datasets") from None
            self._cache = (rel, arrays)
        return self._cache[1]

    def __getitem__(self, i: int):
        import torch

        a = self._arrays(self._shards[i])
        j = self._index[i]
        img = a["image"][j]
        img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
        return torch.from_numpy(img[None].copy()), torch.from_numpy(a["mask"][j][None].astype(np.float32))
