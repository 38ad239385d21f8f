"""Shape variability vs robustness: paper 002's P3/P5/P10 on the virtual cohort.

Paper 002 trains on images generated from statistical shape models with 3, 5 and 10 modes — more
or less anatomical variability at a fixed (large) image count — and compares the standard and the
adversarially trained model. The analogue here is the virtual cohort's **deformation amplitude**:
at each level ``a`` of the profile's ``pgd.shape.levels`` every sampling band of the study's cohort
(:class:`xrlib.anatomy.cohort.CohortConfig`: the three scale bands, the B-spline displacement's
std and the three shoulder bands) is multiplied by ``a`` (:func:`level_cohort_config`), with the
same seed, so subject *i* of every level is drawn from the same uniform/normal numbers and only
the amplitude differs (a redraw after an implausible clavicle volume can break that for a
subject; the manifest records the attempt).

Per level, under ``<run>/pgd/shape/amplitude_<a>/`` — never the study's cohort or datasets:
``cohort/`` (the level's virtual subjects), ``datasets/`` (the study's recipes, the pools of
``pgd.shape.subjects`` at the angles ``pgd.shape.alphas``: the same subjects, poses and angles at every level, so the **image count is
fixed**), ``models/`` (U-Net(Real+Syn_all)'s configuration trained on them for
``pgd.shape.epochs``, and its PGD-adversarially trained twin with the chapter's ``defense``
settings, warm-started from the level's standard model when ``defense.warm_start``). Everything is
cached by the machinery below (cohort manifest, dataset build hash, model configuration hash).

Every level's two models are attacked (L∞ PGD, the chapter's steps and seed, ε of
``pgd.shape.budgets``) on the **same** test images, the study's Syn_test subjects at the chapter's
angles (paper 002 also tests every model on one test set). Rows: ``<run>/pgd/shape/shape.csv``
(the results contract's columns plus ``level``).

Below ``paper`` the source CT is block-averaged (``ct_shrink``) and the deformation sampled on a
coarser grid (``field_spacing_mm``) so that three cohorts cost seconds; the test subjects keep the
study's full-resolution cohort — a small domain shift that the chapter states.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.anatomy.cohort import MANIFEST_FILE as COHORT_MANIFEST, CohortConfig
from xrlib.attacks import defenses  # noqa: F401  (registers the defense recipes)
from xrlib.attacks.base import TestImages, score_threat
from xrlib.attacks.pgd import PGDThreat
from xrlib.core.atomic import write_csv_atomic
from xrlib.core.profiles import Profile
from xrlib.data.build import build_datasets
from xrlib.data.shards import read_manifest
from xrlib.data.subjects import cohort_subjects
from xrlib.eval.stats import bootstrap_by_group
from xrlib.studies.pgd.settings import PGDSettings, ShapeSettings
from xrlib.studies.pgd.study import BASE_MODEL
from xrlib.studies.rotation import study
from xrlib.studies.rotation.groups import alpha_group
from xrlib.studies.rotation.models import study_configs
from xrlib.training import TrainConfig, TrainResult, load_best, train_all

__all__ = ["FOLDER", "MODELS", "SCALED_BANDS", "amplitude_table", "build_level", "describe", "level_cohort_config",
           "level_configs", "level_dir", "level_profile", "run_shape_study", "shape_curves", "shape_summary"]

#: This study's folder under the run.
FOLDER = Path("pgd") / "shape"
#: The two models trained per level.
MODELS = (BASE_MODEL, BASE_MODEL + "+PGD-AT")
#: The cohort's sampling bands that the amplitude multiplies.
SCALED_BANDS = ("scale_lr_band", "scale_ap_band", "scale_si_band", "bspline_std_mm", "shoulder_si_mm",
                "shoulder_ap_mm", "shoulder_lr_mm")


def _require(s: PGDSettings) -> ShapeSettings:
    if s.shape is None:
        raise ValueError("the profile's pgd.shape is null: this profile does not run the shape study")
    return s.shape


def level_dir(run: Path, level: float) -> Path:
    """``<run>/pgd/shape/amplitude_<level>``."""
    return Path(run) / FOLDER / f"amplitude_{level:g}"


def level_profile(profile: Profile, sh: ShapeSettings) -> Profile:
    """``profile`` with the level's pools: ``pgd.shape.subjects`` for training, no Syn_test subjects
    (the models are tested on the study's), as many cohort subjects as the pools need, and the
    synthetic angles ``pgd.shape.alphas`` when given (Syn_cen: the profile's centre angles among
    them, else the one nearest 0; only Syn_all is trained on here)."""
    raw = copy.deepcopy(profile.raw)
    pools = {p: {"train": c["train"], "val": c["val"], "test": 0} for p, c in sh.subjects.items()}
    raw["pools"] = {**pools, "syn_test": {"test": 0}}
    raw["cohort"] = {"n_subjects": sum(c["train"] + c["val"] for c in sh.subjects.values())}
    if sh.alphas is not None:
        alphas = [float(a) for a in sh.alphas]
        cen = [a for a in raw["synthetic"]["cen_alphas"] if a in alphas] or [min(alphas, key=abs)]
        raw["synthetic"] = {**raw["synthetic"], "alphas": alphas, "cen_alphas": cen}
    return Profile.from_mapping(raw, profile.path or profile.name)


def level_cohort_config(profile: Profile, sh: ShapeSettings, level: float) -> CohortConfig:
    """The study cohort's configuration with every band of :data:`SCALED_BANDS` × ``level`` and the
    profile's ``field_spacing_mm``; the seed and the subject count of :func:`level_profile`."""
    base = CohortConfig.from_profile(level_profile(profile, sh))
    scaled = {k: float(getattr(base, k)) * float(level) for k in SCALED_BANDS}
    return dataclasses.replace(base, field_spacing_mm=float(sh.field_spacing_mm), **scaled)


def build_level(profile: Profile, run: Path, s: PGDSettings, level: float, sources=None,
                progress: bool = False) -> pd.DataFrame:
    """Build (or verify) the level's cohort and datasets; returns the datasets manifest.

    ``sources``: source CTs as in :func:`xrlib.anatomy.cohort.build_cohort` (``None``: the example CT).
    """
    sh = _require(s)
    lp, d = level_profile(profile, sh), level_dir(run, level)
    subjects = cohort_subjects(lp, d / "cohort", sources=sources, progress=progress,
                               config=level_cohort_config(profile, sh, level), shrink=sh.ct_shrink)
    return build_datasets(lp, d / "datasets", subjects=subjects, progress=progress)


def level_configs(profile: Profile, run: Path, s: PGDSettings, level: float) -> list[TrainConfig]:
    """U-Net(Real+Syn_all)'s configuration for the level (``pgd.shape.epochs``, patience = epochs, width
    ``pgd.shape.base_channels`` when given) and
    its PGD adversarial training (the chapter's ``defense`` attack; Adam ``defense.lr``), started
    from the level's standard model when ``defense.warm_start``, else from scratch with the study's lr."""
    sh, d = _require(s), s.defense
    base = {c.name: c for c in study_configs(level_profile(profile, sh))}[BASE_MODEL]
    width = base.base_channels if sh.base_channels is None else sh.base_channels
    std = dataclasses.replace(base, epochs=sh.epochs, patience=sh.epochs, base_channels=width)
    params = {"eps": d.eps, "steps": d.steps, "step_size": d.step_size, "norm": "linf"}
    if d.warm_start:
        params["warm_start"] = std.folder_name(level_dir(run, level) / "datasets")
    adv = dataclasses.replace(std, name=MODELS[1], lr=d.lr if d.warm_start else std.lr, recipe="pgd-adversarial",
                              recipe_params=params)
    return [std, adv]


def _train_level(profile: Profile, run: Path, s: PGDSettings, level: float, progress: bool) -> dict[str, TrainResult]:
    d = level_dir(run, level)
    out = {}
    for cfg in level_configs(profile, run, s, level):  # one at a time: the warm start reads the first
        out.update(train_all([cfg], d / "datasets", d / "models", progress=progress, imports=("xrlib.attacks.defenses",)))
    return out


def run_shape_study(profile: Profile, run: Path, s: PGDSettings, test: TestImages, sources=None,
                    progress: bool = False) -> dict:
    """Every level: build, train both models, attack them on ``test``; write ``<run>/pgd/shape/shape.csv``.

    Returns ``{"rows": contract rows + level, "training": one row per level × model,
    "amplitude": :func:`amplitude_table`}``.
    """
    sh = _require(s)
    threat = PGDThreat(grid=sh.grid, steps=s.steps, step_fraction=s.step_fraction, seed=s.seed)
    frames, training = [], []
    for level in sh.levels:
        build_level(profile, run, s, level, sources, progress)
        trained = _train_level(profile, run, s, level, progress)
        models = {name: load_best(res) for name, res in trained.items()}
        df = score_threat(threat, models, test, study.pixel_mm(profile), groups=alpha_group)
        frames.append(df.assign(level=float(level)))
        training += [{"level": float(level), "model": n, "train images": r.train_images, "val images": r.val_images,
                      "epochs run": r.epochs_run, "best val Dice": r.best_val_dice, "time (s)": r.seconds}
                     for n, r in trained.items()]
    rows = pd.concat(frames, ignore_index=True)
    write_csv_atomic(Path(run) / FOLDER / "shape.csv", rows)
    return {"rows": rows, "training": pd.DataFrame(training).round(3), "amplitude": amplitude_table(profile, run, s)}


def amplitude_table(profile: Profile, run: Path, s: PGDSettings) -> pd.DataFrame:
    """Per level, the deformation actually applied (from the level's cohort manifest) and the image count.

    Columns: ``level``; ``subjects``; ``mean |scale − 1| (%)`` (over the three axes and the
    subjects); ``mean shoulder shift (mm)`` (length of each shoulder's displacement, both sides);
    ``mean max non-rigid (mm)`` (the largest B-spline + shoulder displacement of each subject's
    applied field, after the folding guard); ``clavicle volume ratio`` (min–max after/before);
    ``training images`` (train + val rows of the level's datasets manifest).
    """
    sh = _require(s)
    out = []
    for level in sh.levels:
        d = level_dir(run, level)
        c = pd.read_csv(d / "cohort" / COHORT_MANIFEST)
        scale = np.abs(c[["scale_lr", "scale_ap", "scale_si"]].to_numpy(float) - 1.0).mean() * 100
        shoulders = [np.linalg.norm(c[[f"shoulder_{side}_d{a}_mm" for a in "xyz"]].to_numpy(float), axis=1)
                     for side in ("left", "right")]
        ratios = c[["clavicle_left_volume_ratio", "clavicle_right_volume_ratio"]].to_numpy(float)
        manifest = read_manifest(d / "datasets")
        out.append({"level": float(level), "subjects": len(c), "mean |scale − 1| (%)": scale,
                    "mean shoulder shift (mm)": float(np.mean(shoulders)),
                    "mean max non-rigid (mm)": float(c["max_nonrigid_displacement_mm"].mean()),
                    "clavicle volume ratio": f"{np.nanmin(ratios):.2f}–{np.nanmax(ratios):.2f}",
                    "training images": int(manifest["split"].isin(["train", "val"]).sum())})
    return pd.DataFrame(out).round(2)


def shape_curves(rows: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Mean Dice per level, model and ε with subject-clustered bootstrap CIs."""
    return bootstrap_by_group(rows, "dice", by=("level", "model", "budget"), seed=seed)


def shape_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice, one row per model × level, one column per ε (``ε = 0`` is the clean Dice)."""
    wide = rows.groupby(["model", "level", "budget"], sort=False)["dice"].mean().unstack("budget")
    wide.columns = [f"ε = {b:g}" for b in wide.columns]
    order = {m: i for i, m in enumerate(MODELS)}
    wide = wide.reset_index()
    wide["_m"] = wide["model"].map(order)
    return wide.sort_values(["_m", "level"]).drop(columns="_m").reset_index(drop=True).round(4)


def describe(profile: Profile, s: PGDSettings) -> str:
    """What the shape study runs under this profile, in words."""
    if s.shape is None:
        return (f"profile {profile.name}: the shape-variability study is not run (pgd.shape is null; it runs in "
                f"the paper profile, and in smoke on tiny sizes)")
    sh = s.shape
    n = {p: c["train"] + c["val"] for p, c in sh.subjects.items()}
    shrink = ("the full-resolution source CT" if tuple(sh.ct_shrink) == (1, 1, 1) else
              f"the source CT block-averaged {'×'.join(map(str, sh.ct_shrink))} (a size: the test subjects keep full resolution)")
    width = "the study's U-Net width" if sh.base_channels is None else f"U-Nets of {sh.base_channels} base channels (a size)"
    n_alphas = len(level_profile(profile, sh).synthetic.alphas)
    return (f"shape study: amplitudes {', '.join(f'{a:g}' for a in sh.levels)} × the study cohort's deformation bands; "
            f"per level {n['surrogate']} surrogate + {n['syn_train']} synthetic training subjects, the latter at "
            f"{n_alphas} angle(s) (same image count at every level), {shrink}, deformation field every "
            f"{sh.field_spacing_mm:g} mm; {width}, {sh.epochs} epoch(s) per model; L∞ PGD at "
            f"ε ∈ {{{', '.join(f'{e:g}' for e in sh.budgets)}}}, N = {s.steps}, on the study's Syn_test images")
