"""Run profiles: one YAML file per profile is the single source of sizes for every stage.

Profiles live in ``book/profiles/<name>.yml`` (``smoke``, ``quick``, ``paper``). They differ only in
sizes (number of virtual subjects, poses, detector and image sizes, training budget), never in
code paths. :func:`load_profile` reads and validates one, once, and returns a typed, frozen
:class:`Profile` (one dataclass per section, angle lists expanded); :func:`profile_hash`
fingerprints (a part of) its normalised mapping for caching.

Schema (all keys required unless marked optional)::

    name: quick                      # optional; defaults to the file stem
    seed: 0
    cohort:
      n_subjects: 14                 # virtual subjects per source CT (≥ sum of the pool sizes)
    pools:                           # virtual subjects per pool and split (subject-disjoint; in total over
                                     # the source CTs, which split by patient: xrlib.data.pools)
      surrogate: {train: 4, val: 1, test: 1}   # clinical-surrogate "Real" domain
      syn_train: {train: 4, val: 1, test: 0}   # synthetic training pool
      syn_test:  {test: 3}                      # synthetic test pool
    surrogate:
      poses_per_subject: 4
      alpha_jitter_deg: 2.0          # α ~ U(−2°, 2°)
      tilt_jitter_deg: 2.0           # tilt ~ U(−2°, 2°)
      shift_jitter_mm: 5.0           # each shift component ~ U(−5, 5) mm
      dose_mas: 2.0                  # realistic physics tube current-time product
    synthetic:
      alphas: {start: -20, stop: 20, step: 2}   # or an explicit list
      cen_alphas: [-2, 0, 2]         # the Syn_cen subset
    render:
      detector: 256                  # N×N pixels over the same field (pitch = field_mm / N)
      field_mm: 432.0
      backend: auto
      fov: pad
      prefilter: false               # optional: physics channels averaged to the detector pitch (xrlib.drr.render)
    image_size: 256                  # S: network input S×S
    real: {folder: null}             # optional: folder of real radiographs replacing the surrogate
    folds: null                      # optional: K ≥ 2 splits the source CTs (patients) into K folds of a
                                     # cross-validation, each fold once the test set (xrlib dataset --folds)
    train: {...}                     # optional, used by the training stage; its optional
                                     # compile: true trains the study's models through torch.compile
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from xrlib.core.errors import InputError

#: Folder of the profiles shipped with the book.
PROFILES_DIR = Path(__file__).resolve().parents[2] / "book" / "profiles"

#: The rendering vocabulary (one definition for profiles, the command line and :mod:`xrlib.drr`).
PHYSICS_CHAINS = ("naive", "heuristic", "realistic")
PROJECTOR_BACKENDS = ("rtk", "torch", "diffdrr")
FOV_MODES = ("pad", "collimate", "none")

_SPLITS = ("train", "val", "test")
_POOL_SPLITS = {"surrogate": _SPLITS, "syn_train": _SPLITS, "syn_test": ("test",)}


def available_profiles(folder: Path = PROFILES_DIR) -> list[str]:
    """Names of the profiles in ``folder`` (file stems of ``*.yml``)."""
    return sorted(p.stem for p in Path(folder).glob("*.yml")) if Path(folder).is_dir() else []


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yml", ".yaml") or path.parent != Path(".") or path.is_file():
        if not path.is_file():
            raise InputError(path, "profile file not found")
        return path
    path = PROFILES_DIR / f"{text}.yml"
    if not path.is_file():
        names = ", ".join(available_profiles()) or "none"
        raise InputError(path, f"unknown profile {text!r}; available profiles: {names}")
    return path


def _get(cfg: dict, dotted: str, source: Path):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise InputError(source, f"missing key {dotted!r}")
        node = node[part]
    return node


def _int(cfg: dict, dotted: str, source: Path, minimum: int = 0) -> int:
    value = _get(cfg, dotted, source)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(source, f"{dotted} must be an integer ≥ {minimum}, got {value!r}")
    return value


def _float(cfg: dict, dotted: str, source: Path, positive: bool = False) -> float:
    value = _get(cfg, dotted, source)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
        raise InputError(source, f"{dotted} must be a {'positive' if positive else 'non-negative'} number, got {value!r}")
    return float(value)


def _alphas(value, source: Path) -> list[float]:
    if isinstance(value, dict):
        try:
            start, stop, step = (float(value[k]) for k in ("start", "stop", "step"))
        except (KeyError, TypeError, ValueError):
            raise InputError(source, "synthetic.alphas must be a list or {start, stop, step}") from None
        if step <= 0 or stop < start:
            raise InputError(source, f"synthetic.alphas: need step > 0 and stop ≥ start, got {value!r}")
        n = int(round((stop - start) / step)) + 1
        return [round(start + i * step, 6) for i in range(n)]
    if isinstance(value, list) and value and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in value):
        return [float(a) for a in value]
    raise InputError(source, f"synthetic.alphas must be a non-empty list of angles or {{start, stop, step}}, got {value!r}")


def validate_profile(cfg: dict, source: str | Path = "<profile>") -> "Profile":
    """Check a profile mapping and return it as a :class:`Profile` (angles expanded, numbers typed)."""
    return Profile.from_mapping(_normalise(cfg, source), source)


def _normalise(cfg: dict, source: str | Path) -> dict:
    """The checked, normalised copy of a profile mapping (the form that is hashed)."""
    source = Path(str(source))
    if not isinstance(cfg, dict):
        raise InputError(source, "a profile must be a YAML mapping")
    cfg = copy.deepcopy(cfg)
    cfg.setdefault("name", source.stem)
    cfg["seed"] = _int(cfg, "seed", source)
    _int(cfg, "cohort.n_subjects", source, 1)
    total = 0
    for pool, splits in _POOL_SPLITS.items():
        node = _get(cfg, f"pools.{pool}", source)
        if not isinstance(node, dict):
            raise InputError(source, f"pools.{pool} must map split names to subject counts")
        extra = sorted(set(node) - set(splits))
        if extra:
            raise InputError(source, f"pools.{pool}: unknown split(s) {extra}; expected {list(splits)}")
        for split in splits:
            if split != "train" and pool != "syn_test":
                node.setdefault(split, 0)  # an omitted val/test split is empty
            total += _int(cfg, f"pools.{pool}.{split}", source)
    for pool in ("surrogate", "syn_train"):
        if cfg["pools"][pool]["train"] < 1:
            raise InputError(source, f"pools.{pool}.train must be ≥ 1")
    if cfg["pools"]["syn_test"]["test"] < 1:
        raise InputError(source, "pools.syn_test.test must be ≥ 1")
    if cfg["cohort"]["n_subjects"] < total:
        raise InputError(source, f"cohort.n_subjects ({cfg['cohort']['n_subjects']}) is smaller than the "
                                 f"{total} subjects the pools need")
    _int(cfg, "surrogate.poses_per_subject", source, 1)
    for key in ("alpha_jitter_deg", "tilt_jitter_deg", "shift_jitter_mm"):
        cfg["surrogate"][key] = _float(cfg, f"surrogate.{key}", source)
    cfg["surrogate"]["dose_mas"] = _float(cfg, "surrogate.dose_mas", source, positive=True)
    cfg["synthetic"]["alphas"] = _alphas(_get(cfg, "synthetic.alphas", source), source)
    cen = _alphas(_get(cfg, "synthetic.cen_alphas", source), source)
    missing = [a for a in cen if a not in cfg["synthetic"]["alphas"]]
    if missing:
        raise InputError(source, f"synthetic.cen_alphas {missing} are not in synthetic.alphas")
    cfg["synthetic"]["cen_alphas"] = cen
    _int(cfg, "render.detector", source, 8)
    cfg["render"]["field_mm"] = _float(cfg, "render.field_mm", source, positive=True)
    backend = _get(cfg, "render.backend", source)
    if backend not in ("auto", *PROJECTOR_BACKENDS):
        raise InputError(source, f"render.backend must be auto, {', '.join(PROJECTOR_BACKENDS)}, got {backend!r}")
    cfg["render"].setdefault("fov", "pad")
    if cfg["render"]["fov"] not in FOV_MODES:
        raise InputError(source, f"render.fov must be {', '.join(FOV_MODES)}, got {cfg['render']['fov']!r}")
    # Optional and not filled in when absent: a profile without it hashes (and caches) as before.
    if "prefilter" in cfg["render"] and not isinstance(cfg["render"]["prefilter"], bool):
        raise InputError(source, f"render.prefilter must be true or false, got {cfg['render']['prefilter']!r}")
    _int(cfg, "image_size", source, 8)
    # Optional and not filled in when absent; not a dataset key (each fold's build keys its own folder).
    folds = cfg.get("folds")
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise InputError(source, f"folds must be null or an integer ≥ 2 (source CTs split into K folds), got {folds!r}")
    real = cfg.setdefault("real", {"folder": None})
    if not isinstance(real, dict) or "folder" not in real:
        raise InputError(source, "real must be a mapping with a 'folder' key (null for the surrogate)")
    if "train" in cfg:
        train = cfg["train"]
        if not isinstance(train, dict):
            raise InputError(source, "train must be a mapping (epochs, batch_size, patience, lr)")
        for key in ("epochs", "batch_size", "patience"):
            _int(cfg, f"train.{key}", source, 1)
        train["lr"] = _float(cfg, "train.lr", source)
        if "compile" in train and not isinstance(train["compile"], bool):
            raise InputError(source, f"train.compile must be true or false, got {train['compile']!r}")
        subset = train.get("ablation_subset")
        if subset is not None and not (isinstance(subset, int) and not isinstance(subset, bool)
                                       or isinstance(subset, list) and all(isinstance(n, int) for n in subset)):
            raise InputError(source, f"train.ablation_subset must be null, an integer or a list of integers, got {subset!r}")
    return cfg


def load_profile(name_or_path: str | Path) -> "Profile":
    """Read and validate a profile by name (``book/profiles/<name>.yml``) or path.

    Raises :class:`InputError` naming the file for an unknown profile (listing the available
    ones), unreadable YAML, a missing key or a bad value.
    """
    path = _resolve(name_or_path)
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(path, f"cannot read profile ({' '.join(str(exc).split())})") from None
    if isinstance(cfg, dict):
        cfg.setdefault("name", path.stem)
        cfg["path"] = str(path)
    return validate_profile(cfg, path)


def real_folder_digest(folder: str | Path) -> str:
    """Hash (16 hex) of the names and bytes of every file under ``folder/images`` and ``folder/masks``
    (a folder of real radiographs and their masks), computed once per process while those files'
    names, sizes and modification times stay the same."""
    folder = Path(folder)
    files = []
    for sub in ("images", "masks"):
        for p in sorted((folder / sub).glob("*")):
            if p.is_file():
                st = p.stat()
                files.append((f"{sub}/{p.name}", str(p), st.st_size, st.st_mtime_ns))
    return _files_digest(tuple(files))


@functools.lru_cache(maxsize=8)
def _files_digest(files: tuple) -> str:
    h = hashlib.sha256()
    for rel, path, _, _ in files:
        h.update(rel.encode())
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


#: Sections of a profile that determine the datasets (others, e.g. ``train``, do not).
DATASET_KEYS = ("seed", "cohort", "pools", "surrogate", "synthetic", "render", "image_size", "real")


def profile_hash(cfg: "Profile | dict", keys: tuple[str, ...] | None = None) -> str:
    """SHA-256 (hex) of the canonical JSON of a profile's normalised mapping (restricted to ``keys``).

    ``name`` and ``path`` are ignored, so a copy of a profile under another name hashes the same; a
    real-radiograph folder (``real.folder``) enters as its content (:func:`real_folder_digest`), not its
    path, so moving it keeps the hash (a profile without one hashes as it always did).
    The mapping is the one :func:`validate_profile` normalised, so cache keys do not depend on how
    the profile is represented in memory.
    """
    if isinstance(cfg, Profile):
        cfg = cfg.raw
    d = {k: v for k, v in cfg.items() if k not in ("name", "path") and (keys is None or k in keys)}
    real = d.get("real")
    if isinstance(real, dict) and real.get("folder"):  # its content, not where it lies
        d["real"] = {**{k: v for k, v in real.items() if k != "folder"}, "folder_content": real_folder_digest(real["folder"])}
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Typed sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitCounts:
    """Virtual subjects per split of one pool."""

    train: int = 0
    val: int = 0
    test: int = 0

    @property
    def total(self) -> int:
        return self.train + self.val + self.test

    def as_dict(self) -> dict[str, int]:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass(frozen=True)
class PoolsSection:
    """Subject-disjoint pools: the "Real" surrogate, synthetic training and synthetic test."""

    surrogate: SplitCounts
    syn_train: SplitCounts
    syn_test: SplitCounts


@dataclass(frozen=True)
class SurrogateSection:
    """Clinical-surrogate poses (jitter half-widths in deg and mm) and dose (mAs)."""

    poses_per_subject: int
    alpha_jitter_deg: float
    tilt_jitter_deg: float
    shift_jitter_mm: float
    dose_mas: float


@dataclass(frozen=True)
class SyntheticSection:
    """Synthetic rotation angles α (deg) and the Syn_cen subset."""

    alphas: tuple[float, ...]
    cen_alphas: tuple[float, ...]


@dataclass(frozen=True)
class RenderSection:
    """Detector (N×N px over ``field_mm`` at the detector), projector backend and FOV handling."""

    detector: int
    field_mm: float
    backend: str
    fov: str
    prefilter: bool = False  # project the physics channels through xrlib.drr.render.detector_prefilter

    @property
    def pitch_mm(self) -> float:
        """Detector pixel pitch (mm)."""
        return self.field_mm / self.detector


@dataclass(frozen=True)
class TrainSection:
    """Training budget; ``depth``/``loss``/``base_channels`` are optional model overrides; ``compile``
    trains the study's models through ``torch.compile`` (:class:`xrlib.training.config.TrainConfig`)."""

    epochs: int
    batch_size: int
    patience: int
    lr: float
    depth: int | None = None
    loss: str | None = None
    base_channels: int = 16
    ablation_subset: int | tuple[int, ...] | None = None
    compile: bool = False


@dataclass(frozen=True)
class Profile:
    """A validated profile: one typed section per YAML section (see the module docstring).

    ``raw`` is the normalised mapping that :func:`profile_hash` fingerprints (kept so that cache
    keys are those of the YAML, whatever the in-memory representation).
    """

    name: str
    path: str | None
    seed: int
    n_subjects: int
    pools: PoolsSection
    surrogate: SurrogateSection
    synthetic: SyntheticSection
    render: RenderSection
    image_size: int
    real_folder: str | None
    train: TrainSection | None
    raw: dict = field(repr=False, compare=False)
    folds: int | None = None

    @classmethod
    def from_mapping(cls, cfg: dict, source: str | Path = "<profile>") -> "Profile":
        """Build from a mapping already normalised by :func:`validate_profile`."""
        pools = PoolsSection(**{p: SplitCounts(**cfg["pools"][p]) for p in _POOL_SPLITS})
        t = cfg.get("train")
        train = None
        if t is not None:
            subset = t.get("ablation_subset")
            train = TrainSection(epochs=int(t["epochs"]), batch_size=int(t["batch_size"]), patience=int(t["patience"]),
                                 lr=float(t["lr"]), depth=t.get("depth"), loss=t.get("loss"),
                                 base_channels=int(t.get("base_channels", 16)),
                                 ablation_subset=tuple(subset) if isinstance(subset, list) else subset,
                                 compile=bool(t.get("compile", False)))
        r = cfg["render"]
        return cls(
            name=str(cfg["name"]), path=cfg.get("path"), seed=int(cfg["seed"]),
            n_subjects=int(cfg["cohort"]["n_subjects"]), pools=pools,
            surrogate=SurrogateSection(**{k: cfg["surrogate"][k] for k in SurrogateSection.__dataclass_fields__}),
            synthetic=SyntheticSection(tuple(cfg["synthetic"]["alphas"]), tuple(cfg["synthetic"]["cen_alphas"])),
            render=RenderSection(int(r["detector"]), float(r["field_mm"]), str(r["backend"]), str(r["fov"]),
                                 bool(r.get("prefilter", False))),
            image_size=int(cfg["image_size"]), real_folder=(cfg.get("real") or {}).get("folder") or None,
            train=train, raw=cfg, folds=cfg.get("folds"),
        )

    def require_train(self) -> TrainSection:
        """The ``train:`` section; an :class:`InputError` naming the profile file when it is absent."""
        if self.train is None:
            raise InputError(self.path or self.name, "the profile has no train: block (epochs, batch_size, patience, lr)")
        return self.train

    def section(self, name: str) -> dict:
        """A copy of a chapter's own top-level block (e.g. ``pgd:``), which that chapter types and checks.

        Chapters after the rotation study keep their settings in a block named after them, so adding
        one never touches the sections above (nor the dataset hash, which reads only
        :data:`DATASET_KEYS`). Raises :class:`InputError` naming the profile file when it is absent
        or not a mapping.
        """
        block = self.raw.get(name)
        if not isinstance(block, dict):
            what = "has no" if block is None else "has a malformed"
            raise InputError(self.path or self.name, f"the profile {what} {name}: block (a mapping of that chapter's settings)")
        return copy.deepcopy(block)

    def with_real_folder(self, folder: str | Path | None) -> "Profile":
        """The same profile with ``real.folder`` replaced (``None``: the clinical surrogate)."""
        raw = copy.deepcopy(self.raw)
        raw["real"] = {"folder": None if folder is None else str(folder)}
        return Profile.from_mapping(raw, self.path or self.name)

    def hash(self, keys: tuple[str, ...] | None = None) -> str:
        """:func:`profile_hash` of this profile."""
        return profile_hash(self, keys)
