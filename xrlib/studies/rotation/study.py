"""The rotation-robustness study of Fok et al. (2024) on this project's data.

Trains the three study models — U-Net(Real), U-Net(Real+Syn_cen), U-Net(Real+Syn_all) — with the
same hyperparameters and seed (:func:`xrlib.studies.rotation.models.study_configs`), evaluates them on the synthetic
test subjects at all 21 angles and on the Real (surrogate or real) test split, and adds the
TorchXRayVision baseline when its weights are on disk. The notebooks ``05_training``,
``06_rotation_robustness`` and ``07_ablation`` call these functions.

"Real" is the clinical surrogate unless a folder of real radiographs was configured, and all
subjects are virtual subjects of one CT: every table built from these results must say so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.attacks.base import TestImages
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile
from xrlib.data.pools import select
from xrlib.data.shards import ShardDataset, read_manifest
from xrlib.drr.geometry import Geometry
from xrlib.eval.metrics import dice, image_pixel_mm
from xrlib.eval.predict import evaluate_model, predict
from xrlib.eval.tables import group_table
from xrlib.studies.rotation.groups import GROUP_ORDER, alpha_group
from xrlib.studies.rotation.paper import PAPER_TABLE2_DICE, PAPER_TABLE3_DICE, PAPER_TABLE4_DICE
from xrlib.studies.rotation.models import study_configs
from xrlib.training import TrainConfig, TrainResult, load_best
from xrlib.training.checkpoint import cached_result
from xrlib.training import train_all as _train_all

BASELINE_NAME = "TorchXRayVision"


def datasets_dir(run: Path) -> Path:
    return Path(run) / "datasets"


def pixel_mm(profile: Profile) -> float:
    """Size of one training-image pixel at the isocenter (mm) for a profile."""
    return image_pixel_mm(Geometry.from_render(profile.render), profile.image_size)


def real_domain(manifest: pd.DataFrame) -> str:
    """What plays the Real domain in this build (for table captions)."""
    return "real radiographs" if (manifest["pool"] == "real").any() else "clinical surrogate (rendered, not real)"


def train_all(configs: list[TrainConfig], run: Path, progress: bool = True, executor=None) -> dict[str, TrainResult]:
    """Train (or load from cache) each configuration in ``<run>/models``; results by model name.

    ``executor``: ``None``/``"local"`` trains here, one after another (with per-epoch progress);
    ``"process"``, ``"ray"`` or an :class:`xrlib.exec.base.Executor` runs one task per model
    (:func:`xrlib.exec.get_executor`; the same models, byte for byte, since each task sets the
    configuration's thread count)."""
    if isinstance(executor, str):
        from xrlib.exec import get_executor

        executor = None if executor == "local" else get_executor(executor)
    return _train_all(configs, datasets_dir(run), Path(run) / "models", executor=executor, progress=progress)


def train_study(profile: Profile, run: Path, progress: bool = True, executor=None) -> dict[str, TrainResult]:
    """The three study models of the paper for ``profile`` (``executor``: see :func:`train_all`)."""
    return train_all(study_configs(profile), run, progress, executor)


#: Thread counts tried when no study model was trained with this process's (:func:`study_models`).
_OTHER_THREADS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def study_models(profile: Profile, run: Path, names=None) -> dict[str, TrainResult]:
    """The study models already trained for ``profile`` in ``run`` (read from the cache, never trained).

    ``names``: a subset of the study's model names (default all three). An unknown name, or a model
    that has not been trained yet, raises :class:`InputError` naming it. The torch thread count is part of a
    training's cache key (it changes rounding, :mod:`xrlib.training.config`); when no model was trained with
    this process's count (``XRLIB_THREADS``), the same configuration trained with another count is read, so a
    command run with other threads than the build (e.g. ``xrlib card --model``) finds the build's models.
    """
    configs = {c.name: c for c in study_configs(profile)}
    names = list(configs) if names is None else list(names)
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise InputError(None, f"unknown model {unknown[0]!r}; the study models are {', '.join(configs)}")
    out = {}
    for name in names:
        result = cached_result(configs[name], datasets_dir(run), Path(run) / "models")
        for threads in _OTHER_THREADS:
            if result is not None:
                break
            if threads != configs[name].threads:
                result = cached_result(dataclasses.replace(configs[name], threads=threads), datasets_dir(run),
                                       Path(run) / "models")
        if result is None:
            folder = Path(run) / "models" / configs[name].folder_name(datasets_dir(run))
            raise InputError(folder, f"model {name!r} is not trained; run chapter 05 (xrlib book --only 05_training) first")
        out[name] = result
    return out


def test_sets(run: Path, cen_alphas) -> dict[str, pd.DataFrame]:
    """Manifest rows of the two test sets: synthetic test subjects (21 α) and the Real test split."""
    manifest = read_manifest(datasets_dir(run))
    return {"Syn_test": select(manifest, "Syn_test", cen_alphas=cen_alphas),
            "Real_test": select(manifest, "Real", "test", cen_alphas=cen_alphas)}


def cohort_phrase(run: Path) -> str:
    """:func:`xrlib.data.pools.cohort_phrase` of the run's datasets (one CT when the manifest is not there yet)."""
    from xrlib.data.pools import cohort_phrase as phrase
    from xrlib.data.shards import read_manifest

    path = datasets_dir(Path(run)) / "manifest.csv"
    return phrase(read_manifest(path)) if path.is_file() else phrase(pd.DataFrame({"source": ["ct"]}))


def syn_test_images(profile: Profile, run: Path, alphas: Sequence[float] | None = None,
                    per_subject: int | None = None) -> TestImages:
    """The Syn_test images of the run: all angles, or only those at one of ``alphas`` (degrees, compared
    with ``np.isclose``); with ``per_subject``, each subject (in sorted order) keeps only ``per_subject`` of
    those angles, rotating through them (:func:`xrlib.data.pools.spread_angles`). The test set of every
    threat on synthetic images (:mod:`xrlib.studies.robustness`); raises :class:`InputError` when no image
    is at one of ``alphas``."""
    from xrlib.data.pools import spread_angles

    test = TestImages.from_manifest(test_sets(run, profile.synthetic.cen_alphas)["Syn_test"], datasets_dir(run))
    if alphas is None and per_subject is None:
        return test
    have = test.rows["alpha"].to_numpy(float)
    if alphas is None:
        alphas = sorted(set(have.tolist()))
    keep = np.isclose(have[:, None], np.asarray(alphas, float)[None, :]).any(1)
    if not keep.any():
        raise InputError(None, f"no Syn_test image at the angles {list(alphas)}")
    if per_subject is not None:
        subjects = test.rows["subject"].astype(str).to_numpy()
        index = {sid: i for i, sid in enumerate(sorted(set(subjects)))}
        mine = np.array([np.isclose(a, spread_angles(alphas, index[sid], per_subject)).any()
                         for a, sid in zip(have, subjects)], bool)
        keep &= mine
    return test.subset(keep)


def baseline_model():
    """The TorchXRayVision PSPNet wrapper when its weights are on disk, else ``(None, reason)``."""
    from xrlib.nets.baseline import TxrvBaseline, txrv_status

    ok, reason = txrv_status()
    return (TxrvBaseline(), reason) if ok else (None, reason)


def evaluate_all(profile: Profile, run: Path, results: dict[str, TrainResult], include_baseline: bool = True) -> tuple[pd.DataFrame, str]:
    """Per-image metrics of every model on both test sets (one tidy table) and the baseline status.

    The table has one row per (model, test image) with the manifest columns, the α group, Dice,
    HD and HD95 in mm and px, and empty-prediction flags; ``test_set`` names the set.
    """
    models = {name: load_best(res) for name, res in results.items()}
    status = "not requested"
    if include_baseline:
        base, status = baseline_model()
        if base is not None:
            models = {BASELINE_NAME: base, **models}
    frames = []
    for set_name, rows in test_sets(run, profile.synthetic.cen_alphas).items():
        if rows.empty:
            continue
        ds = ShardDataset(rows, root=datasets_dir(run))
        for name, model in models.items():
            df = evaluate_model(model, ds, rows.reset_index(drop=True), name, pixel_mm(profile), groups=alpha_group)
            frames.append(df.assign(test_set=set_name))
    return pd.concat(frames, ignore_index=True), status


def crossval_study(profile: Profile, run: Path, k: int | None = None, progress: bool = True,
                   executor=None) -> pd.DataFrame:
    """The rotation study as a ``k``-fold cross-validation over source CTs (patients), pooled.

    Fold ``i``'s datasets must be built in ``<run>/folds/<i>/datasets`` (:func:`xrlib.data.build.build_folds`,
    ``xrlib dataset --folds K``). Per fold the three study models are trained (or loaded) in
    ``<run>/folds/<i>/models`` with the same code as the single split (:func:`train_study`) and scored on that
    fold's test sets (:func:`evaluate_all`, without the baseline); the folds' per-image rows are concatenated,
    so every test patient is scored once, by models that never saw it. The ``fold`` column (from the fold's
    manifest) says which fold each test patient came from. ``k`` default: ``profile.folds``.
    """
    from xrlib.data.build import fold_dir

    k = profile.folds if k is None else int(k)
    if k is None:
        raise InputError(profile.path or profile.name, "no folds: give k or set folds: K in the profile")
    frames = []
    for i in range(k):
        frun = fold_dir(run, i)
        if not (datasets_dir(frun) / "manifest.csv").is_file():
            raise InputError(datasets_dir(frun), f"fold {i} of {k} is not built; run xrlib dataset --folds {k} first")
        df, _ = evaluate_all(profile, frun, train_study(profile, frun, progress, executor), include_baseline=False)
        if "fold" not in df.columns or set(df["fold"].astype(int)) != {i}:
            raise InputError(datasets_dir(frun), f"the test rows of fold {i} are not all from fold {i}'s patients")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def overlay_examples(profile: Profile, run: Path, results: dict[str, TrainResult], n_subjects: int = 3,
                     alphas=(-20.0, 0.0, 20.0)) -> dict:
    """Images, masks and each model's probabilities for a few synthetic test subjects at ``alphas``."""
    rows = test_sets(run, profile.synthetic.cen_alphas)["Syn_test"]
    subjects = sorted(rows["subject"].unique())[:n_subjects]
    keep = rows[rows["subject"].isin(subjects) & np.isclose(rows["alpha"].to_numpy()[:, None], np.asarray(alphas)[None]).any(1)]
    keep = keep.sort_values(["subject", "alpha"]).reset_index(drop=True)
    test = TestImages.from_manifest(keep, datasets_dir(run))
    probs, dices = {}, {}
    for name, res in results.items():
        p, _ = predict(load_best(res), (test.images, test.masks))
        probs[name], dices[name] = p, [dice(pi, t) for pi, t in zip(p, test.masks)]
    images, masks = test.images, test.masks
    titles = [f"{r.subject} · α = {r.alpha:+g}°" for r in keep.itertuples()]
    return {"images": images, "truth": masks, "preds": probs, "dices": dices, "titles": titles}


def training_table(results: dict[str, TrainResult]) -> pd.DataFrame:
    """One row per model: data sizes, best epoch, validation Dice, time and throughput."""
    return pd.DataFrame([{
        "model": name, "train images": r.train_images, "val images": r.val_images, "epochs run": r.epochs_run,
        "best epoch": r.best_epoch, "best val Dice": r.best_val_dice, "time (s)": r.seconds,
        "images/s": r.images_per_s, "device": r.device,
    } for name, r in results.items()]).round(3)


def table2(df: pd.DataFrame, baseline: str | None = "U-Net(Real)", dice_percent: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2: mean ± sd per α group and % change vs ``baseline`` — ``(numeric long, formatted wide)``
    (:func:`xrlib.eval.tables.group_table` with the study's α groups)."""
    return group_table(df, baseline=baseline, dice_percent=dice_percent, by="group", order=GROUP_ORDER)


def compare_table2(df: pd.DataFrame) -> pd.DataFrame:
    """Our mean Dice (%) per model and α group next to the paper's Table 2 values."""
    ours = df.groupby(["model", "group"])["dice"].mean().mul(100)
    rows = []
    for (model, group), value in ours.items():
        paper = PAPER_TABLE2_DICE.get(model, {}).get(group, (np.nan, np.nan))[0]
        rows.append({"model": model, "group": group, "this build": value, "paper": paper})
    out = pd.DataFrame(rows).pivot(index="model", columns="group", values=["this build", "paper"])
    return out.reindex(columns=[(k, g) for k in ("this build", "paper") for g in GROUP_ORDER if (k, g) in out.columns]).round(2)


def table3(df: pd.DataFrame, results: dict[str, TrainResult] | None = None) -> pd.DataFrame:
    """Dice (%) on the Real test split per ablation model next to the paper's Table 3.

    ``df``: per-image results whose ``model`` names start with ``ExpNN`` (:func:`xrlib.studies.rotation.models.ablation_configs`);
    only rows with ``test_set == "Real_test"`` are used. ``results`` adds best epoch, best validation
    Dice and training time from :func:`training_table`.
    """
    real = df[df["test_set"] == "Real_test"]
    out = real.groupby("model", sort=False)["dice"].agg(["mean", "std", "count"]).mul([100, 100, 1])
    out.columns = ["mean Dice (%)", "sd", "images"]
    numbers = []
    for name in out.index:
        digits = str(name)[3:5]
        if not (str(name).startswith("Exp") and digits.isdigit() and 1 <= int(digits) <= len(PAPER_TABLE3_DICE)):
            raise ValueError(f"table3: model {name!r} is not an ablation experiment named Exp01..Exp18")
        numbers.append(int(digits))
    out["paper mean (%)"] = [PAPER_TABLE3_DICE[n - 1] for n in numbers]
    if results:
        out = out.join(training_table(results).set_index("model")[["best epoch", "best val Dice", "time (s)"]])
    return out.round(2)


def table4(df: pd.DataFrame) -> pd.DataFrame:
    """Dice (%) on the Real test split per model (mean, sd, n) next to the paper's Table 4."""
    real = df[df["test_set"] == "Real_test"]
    out = real.groupby("model", sort=False)["dice"].agg(["mean", "std", "count"]).mul([100, 100, 1])
    out.columns = ["mean Dice (%)", "sd", "images"]
    out["paper mean (%)"] = [PAPER_TABLE4_DICE.get(m, (np.nan,))[0] for m in out.index]
    out["paper sd"] = [PAPER_TABLE4_DICE.get(m, (np.nan, np.nan))[1] for m in out.index]
    return out.round(2)
