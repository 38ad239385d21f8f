"""Chapter 08's images: the varied "Real" surrogate, the matched simulated sets and the acquisition-shift test images.

Datasets (one cached build each, under ``<run>/sim/datasets/<domain>``, through
:func:`xrlib.data.build.build_datasets` on the run's cohort and pool assignment):

``real``
    The surrogate pool's subjects at its jittered poses (the first ``sim.poses_per_subject`` of them), realistic physics with per-image acquisition
    variability (:class:`xrlib.data.recipes.VariedRecipe` at scale 1; settings in the manifest's
    ``acq_*`` columns), the room effects no simulator models (:mod:`xrlib.drr.surrogate`: grid lines, heel
    and off-axis fall-off, gain/offset non-uniformity and defects, collimation, a side marker, multi-frequency
    processing) and a quantum-noise stream of its own. Chapter 08's "Real" domain; the rotation study's surrogate pool (chapters 04–07,
    :func:`xrlib.data.recipes.study_recipes`) is the same recipe, so these images are its first poses.
``naive``, ``heuristic``, ``realistic``
    *The same subjects and poses* rendered with each simulator of the ladder at its one fixed default
    setting: only the image formation differs (the projected masks are the same, which the tests pin).
    Every domain's images of a subject come from one projection of all the simulators' channels and the
    masks (:func:`xrlib.data.recipes.shared_projection`), made by the first domain built in the process.
``realistic-scaled``
    The realistic simulator with ``scaled_factor`` times as many poses per subject (same subjects:
    one CT's cohort has no more to give).

Only the surrogate pool is rendered in these builds (the synthetic pools are ``None``); its subjects
keep the run's assignment. The acquisition threat's test images (:func:`acquisition_threat`) are the
run's Syn_test subjects at the chosen angles (all of them, or each subject its own stratified subset,
:func:`subject_angles`), rendered with the realistic chain at each budget's scaled settings, cached under
``<run>/sim/acquisition/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.attacks.acquisition import AcquisitionThreat
from xrlib.attacks.base import TestImages
from xrlib.core.atomic import save_npz_atomic
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile
from xrlib.data.build import build_datasets
from xrlib.data.pools import POOLS
from xrlib.data.preprocess import preprocess
from xrlib.data.recipes import JitteredRecipe, PoolRecipe, VariedRecipe, _subject_key, noise_seed, profile_effects
from xrlib.data.subjects import cohort_subjects
from xrlib.drr.acquisition import ACQUISITION_RANGES, sample_acquisition
from xrlib.drr.geometry import Geometry, Pose
from xrlib.drr.physics import RealisticParams
from xrlib.studies.rotation import study
from xrlib.studies.sim.settings import SimSettings, sim_settings

__all__ = ["DOMAINS", "SIMULATORS", "acquisition_threat", "build_domain", "domain_dir", "domain_recipe",
           "subject_angles", "syn_test_subjects"]

#: The simulator ladder (SyntheX naming) and the domains chapter 08 builds.
SIMULATORS = ("naive", "heuristic", "realistic")
DOMAINS = ("real", *SIMULATORS, "realistic-scaled")
#: Bumped when this module changes what it renders (enters every key below).
SIM_VERSION = 3  # 3: kVp in 1-kV steps


def domain_dir(run: Path, domain: str) -> Path:
    return Path(run) / "sim" / "datasets" / domain


def domain_recipe(profile: Profile, domain: str, settings: SimSettings | None = None) -> PoolRecipe:
    """The surrogate pool's recipe of ``domain`` (see the module docstring)."""
    s = settings or sim_settings(profile)
    sur = profile.surrogate
    if s.poses_per_subject is not None:
        sur = dataclasses.replace(sur, poses_per_subject=s.poses_per_subject)
    # every domain's images come from one projection per subject (all simulators' channels and the masks, at
    # the Realistic-Scaled poses, of which the others' poses are the first ones)
    share = {"shared_levels": SIMULATORS, "shared_poses": sur.poses_per_subject * s.scaled_factor}
    if domain == "real":
        return VariedRecipe(dose_mas=sur.dose_mas, seed=profile.seed, jitter=sur, acquisition_scale=1.0,
                            effects=profile_effects(profile), **share)
    if domain in SIMULATORS:
        return JitteredRecipe(physics=domain, dose_mas=sur.dose_mas if domain == "realistic" else None,
                              seed=profile.seed, jitter=sur, **share)
    if domain == "realistic-scaled":
        jitter = dataclasses.replace(sur, poses_per_subject=sur.poses_per_subject * s.scaled_factor)
        return JitteredRecipe(physics="realistic", dose_mas=sur.dose_mas, seed=profile.seed, jitter=jitter, **share)
    raise InputError(None, f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")


def build_domain(profile: Profile, run: Path, domain: str, progress: bool = False, executor=None,
                 settings: SimSettings | None = None, subjects=None) -> pd.DataFrame:
    """Build (or load from cache) the dataset of ``domain`` under :func:`domain_dir`; its manifest.

    ``subjects``: a :class:`xrlib.data.subjects.SubjectSource` (default the run's cohort, ``<run>/cohort``)."""
    run = Path(run)
    recipe = domain_recipe(profile, domain, settings)
    recipes = {p: (recipe if p == "surrogate" else None) for p in POOLS}
    key = f"sim-v{SIM_VERSION}|{domain}|{recipe!r}"
    if domain == "real":
        key += "|" + json.dumps({k: dataclasses.asdict(r) for k, r in ACQUISITION_RANGES.items()}, sort_keys=True)
    subjects = cohort_subjects(profile, run / "cohort", progress=progress) if subjects is None else subjects
    return build_datasets(profile, domain_dir(run, domain), subjects=subjects, progress=progress, executor=executor,
                          recipes=recipes, recipes_key=hashlib.sha256(key.encode()).hexdigest())


def syn_test_subjects(run: Path, profile: Profile) -> list[str]:
    """Subject ids of the run's Syn_test pool (sorted)."""
    rows = study.test_sets(run, profile.synthetic.cen_alphas)["Syn_test"]
    return sorted(rows["subject"].astype(str).unique())


def subject_angles(n_angles: int, k: int | None, subject: int, n_subjects: int) -> list[int]:
    """Indices (into a grid of ``n_angles`` angles) of the ``k`` angles of subject number ``subject`` of ``n_subjects``.

    A stratified systematic sample: the grid is cut into ``k`` equal strata and the subject takes the angle at the
    same relative offset ``(subject + 0.5) / n_subjects`` in each, i.e. index ``floor((j + offset) · n_angles / k)``
    for ``j = 0 … k − 1``. Every subject covers the whole range (one angle per stratum, so every α group), the
    subjects' offsets differ, and together they reach every angle once ``n_subjects · k ≥ n_angles``. ``k`` of
    ``None`` or ≥ ``n_angles``: every angle."""
    if n_angles < 1 or n_subjects < 1 or not 0 <= subject < n_subjects:
        raise ValueError(f"need n_angles ≥ 1 and 0 ≤ subject < n_subjects, got {n_angles}, {subject}, {n_subjects}")
    if k is None or k >= n_angles:
        return list(range(n_angles))
    if k < 1:
        raise ValueError(f"angles per subject must be ≥ 1, got {k}")
    offset = (subject + 0.5) / n_subjects
    return [int(np.floor((j + offset) * n_angles / k)) for j in range(k)]


def _acq_key(profile: Profile, budgets, alphas) -> str:
    text = json.dumps({"render": profile.raw.get("render"), "size": profile.image_size, "seed": profile.seed,
                       "dose": profile.surrogate.dose_mas, "budgets": list(budgets), "alphas": list(alphas),
                       "ranges": {k: dataclasses.asdict(r) for k, r in ACQUISITION_RANGES.items()}, "v": SIM_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _render_subject(profile: Profile, ct, labels, subject: str, alphas, budgets, draws=None) -> dict:
    """Every angle × budget of one subject: preprocessed images ``(B, A, S, S)``, masks ``(A, S, S)``, settings.

    ``draws``: the acquisition draw of each angle (default ``0 … A − 1``; a subset of the grid passes the angles'
    grid indices, so an angle gets the same settings whichever other angles are rendered with it)."""
    draws = list(range(len(alphas))) if draws is None else list(draws)
    from xrlib.anatomy.annotate import clavicles_from_labels
    from xrlib.drr.render import render_batch

    r = profile.render
    geom = Geometry.from_render(r)
    base = RealisticParams(dose_mas=float(profile.surrogate.dose_mas))
    acqs = []  # [angle][budget]: the same draws scaled by each budget
    for i in range(len(alphas)):
        rng = np.random.default_rng([int(profile.seed), _subject_key(subject), 4, int(draws[i])])
        acqs.append(sample_acquisition(rng, tuple(budgets)))
    poses = [Pose(alpha=a) for _ in budgets for a in alphas]
    params = [acqs[i][j].realistic_params(base) for j in range(len(budgets)) for i in range(len(alphas))]
    rgs = render_batch(ct, clavicles_from_labels(labels), geom, poses, physics="realistic", backend=r.backend,
                       seed=noise_seed(profile.seed, subject), fov=r.fov, realistic=params, prefilter=r.prefilter)
    size = profile.image_size
    images = np.zeros((len(budgets), len(alphas), size, size), np.float32)
    masks = np.zeros((len(alphas), size, size), np.float32)
    for k, rg in enumerate(rgs):
        j, i = divmod(k, len(alphas))
        img, m = preprocess(acqs[i][j].display(rg.image, rg.field, geom.pitch), rg.mask, size)
        images[j, i] = img
        masks[i] = m
    names = list(acqs[0][0].to_dict())
    settings = np.array([[[acqs[i][j].to_dict()[n] for n in names] for i in range(len(alphas))]
                         for j in range(len(budgets))], np.float64)
    return {"images": images, "masks": masks, "settings": settings, "names": np.array(names)}


def acquisition_threat(profile: Profile, run: Path, budgets=None, alphas=None, subjects=None,
                       progress: bool = False, angles_per_subject: int | None | str = "profile") -> AcquisitionThreat:
    """The acquisition-shift threat of the run: its Syn_test subjects (all, or the first ``subjects`` of them)
    at ``alphas`` (default the ``sim:`` block's, else the whole synthetic grid) — each subject at all of them, or
    at its own ``angles_per_subject`` of them (:func:`subject_angles`; default ``sim.acquisition.angles_per_subject``)
    — under the realistic chain at each budget's scaled settings (default ``sim.acquisition.budgets``). Cached per
    subject and angle set."""
    from tqdm.auto import tqdm

    from xrlib.anatomy.cohort import load_subject
    from xrlib.data.subjects import source_ct

    run = Path(run)
    s = sim_settings(profile)
    budgets = tuple(float(b) for b in (s.acquisition_budgets if budgets is None else budgets))
    if 0.0 not in budgets:
        budgets = (0.0, *budgets)
    alphas = tuple(float(a) for a in (alphas or s.acquisition_alphas or profile.synthetic.alphas))
    ids = syn_test_subjects(run, profile)
    n = subjects if subjects is not None else s.acquisition_subjects
    ids = ids if n is None else ids[:int(n)]
    if not ids:
        raise InputError(study.datasets_dir(run), "the datasets have no Syn_test subject")
    k = s.acquisition_angles_per_subject if angles_per_subject == "profile" else angles_per_subject
    picks = [subject_angles(len(alphas), k, i, len(ids)) for i in range(len(ids))]
    parts = []
    for sid, idx in tqdm(list(zip(ids, picks)), desc="acquisition test images", disable=not progress):
        mine = tuple(alphas[j] for j in idx)
        every = len(idx) == len(alphas)  # the whole grid: the key (and draws) of the builds before subsets
        path = run / "sim" / "acquisition" / f"{sid}-{_acq_key(profile, budgets, mine if every else (mine, idx))}.npz"
        if not path.is_file():
            ct, labels = load_subject(run / "cohort", sid)
            save_npz_atomic(path, _render_subject(profile, ct, labels, sid, mine, budgets, draws=idx))
        with np.load(path) as z:
            parts.append({k: z[k] for k in z.files})
    names = [str(x) for x in parts[0]["names"]]
    rows = pd.DataFrame([{"subject": sid, "alpha": alphas[j], "source": source_ct(sid)}
                         for sid, idx in zip(ids, picks) for j in idx])
    masks = np.concatenate([p["masks"] for p in parts])
    images = {b: np.concatenate([p["images"][j] for p in parts]) for j, b in enumerate(budgets)}
    settings = {b: pd.DataFrame(np.concatenate([p["settings"][j] for p in parts]), columns=[f"acq_{x}" for x in names])
                for j, b in enumerate(budgets)}
    return AcquisitionThreat(TestImages(images[0.0], masks, rows), images, settings)
