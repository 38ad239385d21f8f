"""The rotation-robustness study of Fok et al. (2024) on this project's data.

Trains the three study models — U-Net(Real), U-Net(Real+Syn_cen), U-Net(Real+Syn_all) — with the
same hyperparameters and seed (:func:`xrlib.training.train.study_configs`), evaluates them on the synthetic
test subjects at all 21 angles and on the Real (surrogate or real) test split, and adds the
TorchXRayVision baseline when its weights are on disk. The notebooks ``05_training``,
``06_rotation_robustness`` and ``07_ablation`` call these functions.

"Real" is the clinical surrogate unless a folder of real radiographs was configured, and all
subjects are virtual subjects of one CT: every table built from these results must say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.data.datasets import ShardDataset, read_manifest, select
from xrlib.eval.evaluate import evaluate_model
from xrlib.drr.geometry import Geometry
from xrlib.eval.metrics import image_pixel_mm
from xrlib.training.train import TrainConfig, TrainResult, load_best, study_configs, train_model

BASELINE_NAME = "TorchXRayVision"


def datasets_dir(run: Path) -> Path:
    return Path(run) / "datasets"


def pixel_mm(cfg: dict) -> float:
    """Size of one training-image pixel at the isocenter (mm) for a profile."""
    n = int(cfg["render"]["detector"])
    return image_pixel_mm(Geometry(height=n, width=n, pitch=float(cfg["render"]["field_mm"]) / n), int(cfg["image_size"]))


def real_domain(manifest: pd.DataFrame) -> str:
    """What plays the Real domain in this build (for table captions)."""
    return "real radiographs" if (manifest["pool"] == "real").any() else "clinical surrogate (rendered, not real)"


def train_all(configs: list[TrainConfig], run: Path, progress: bool = True) -> dict[str, TrainResult]:
    """Train (or load from cache) each configuration; results by model name."""
    return {c.name: train_model(c, datasets_dir(run), Path(run) / "models", progress=progress) for c in configs}


def train_study(cfg: dict, run: Path, progress: bool = True) -> dict[str, TrainResult]:
    """The three study models of the paper for profile ``cfg``."""
    return train_all(study_configs(cfg), run, progress)


def test_sets(run: Path, cen_alphas=(-2.0, 0.0, 2.0)) -> dict[str, pd.DataFrame]:
    """Manifest rows of the two test sets: synthetic test subjects (21 α) and the Real test split."""
    manifest = read_manifest(datasets_dir(run))
    return {"Syn_test": select(manifest, "Syn_test", cen_alphas=cen_alphas),
            "Real_test": select(manifest, "Real", "test", cen_alphas=cen_alphas)}


def baseline_model():
    """The TorchXRayVision PSPNet wrapper when its weights are on disk, else ``(None, reason)``."""
    from xrlib.nets.baseline import TxrvBaseline, txrv_status

    ok, reason = txrv_status()
    return (TxrvBaseline(), reason) if ok else (None, reason)


def evaluate_all(cfg: dict, run: Path, results: dict[str, TrainResult], include_baseline: bool = True) -> tuple[pd.DataFrame, str]:
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
    for set_name, rows in test_sets(run, cfg["synthetic"]["cen_alphas"]).items():
        if rows.empty:
            continue
        ds = ShardDataset(rows, root=datasets_dir(run))
        for name, model in models.items():
            df = evaluate_model(model, ds, rows.reset_index(drop=True), name, pixel_mm(cfg))
            frames.append(df.assign(test_set=set_name))
    return pd.concat(frames, ignore_index=True), status


def overlay_examples(cfg: dict, run: Path, results: dict[str, TrainResult], n_subjects: int = 3,
                     alphas=(-20.0, 0.0, 20.0)) -> dict:
    """Images, masks and each model's probabilities for a few synthetic test subjects at ``alphas``."""
    rows = test_sets(run, cfg["synthetic"]["cen_alphas"])["Syn_test"]
    subjects = sorted(rows["subject"].unique())[:n_subjects]
    keep = rows[rows["subject"].isin(subjects) & np.isclose(rows["alpha"].to_numpy()[:, None], np.asarray(alphas)[None]).any(1)]
    keep = keep.sort_values(["subject", "alpha"]).reset_index(drop=True)
    ds = ShardDataset(keep, root=datasets_dir(run))
    images = np.stack([ds[i][0][0].numpy() for i in range(len(ds))])
    masks = np.stack([ds[i][1][0].numpy() for i in range(len(ds))])
    probs, dices = {}, {}
    for name, res in results.items():
        df, p = evaluate_model(load_best(res), ds, keep, name, pixel_mm(cfg), return_probs=True)
        probs[name], dices[name] = p, df["dice"].to_list()
    titles = [f"{r.subject} · α = {r.alpha:+g}°" for r in keep.itertuples()]
    return {"images": images, "truth": masks, "preds": probs, "dices": dices, "titles": titles}


def training_table(results: dict[str, TrainResult]) -> pd.DataFrame:
    """One row per model: data sizes, best epoch, validation Dice, time and throughput."""
    return pd.DataFrame([{
        "model": name, "train images": r.train_images, "val images": r.val_images, "epochs run": r.epochs_run,
        "best epoch": r.best_epoch, "best val Dice": r.best_val_dice, "time (s)": r.seconds,
        "images/s": r.images_per_s, "device": r.device,
    } for name, r in results.items()]).round(3)


#: Mean ± sd Dice (%) per α group on synthetic test images, Table 2 of Fok et al. 2024 (Sci. Rep.).
PAPER_TABLE2_DICE = {
    "TorchXRayVision": {"Moderate-": (48.67, 21.86), "Low-": (58.06, 21.53), "Center": (62.26, 20.32),
                        "Low+": (60.21, 22.25), "Moderate+": (53.27, 26.12)},
    "U-Net(Real)": {"Moderate-": (79.12, 8.90), "Low-": (82.94, 10.46), "Center": (83.79, 13.24),
                    "Low+": (86.37, 6.61), "Moderate+": (76.71, 17.69)},
    "U-Net(Real+Syn_cen)": {"Moderate-": (87.14, 4.58), "Low-": (88.84, 4.52), "Center": (89.61, 2.78),
                            "Low+": (89.14, 3.30), "Moderate+": (86.02, 7.57)},
    "U-Net(Real+Syn_all)": {"Moderate-": (88.50, 3.45), "Low-": (89.03, 3.47), "Center": (89.21, 3.49),
                            "Low+": (89.32, 2.19), "Moderate+": (88.95, 3.39)},
}
#: Mean ± sd Dice (%) on 350 real test radiographs, Table 4 of Fok et al. 2024.
PAPER_TABLE4_DICE = {"TorchXRayVision": (42.03, 32.62), "U-Net(Real)": (92.58, 7.14),
                     "U-Net(Real+Syn_cen)": (91.96, 9.47), "U-Net(Real+Syn_all)": (92.30, 8.29)}
#: Mean Dice (%) of the 18 U-Net(Real) ablation configurations (Exp 1-18), Table 3 of Fok et al. 2024.
PAPER_TABLE3_DICE = [89.79, 89.88, 90.00, 89.42, 89.28, 88.60, 91.63, 91.37, 91.33,
                     91.17, 91.45, 91.23, 92.04, 92.14, 92.58, 92.26, 91.53, 90.96]


def compare_table2(df: pd.DataFrame) -> pd.DataFrame:
    """Our mean Dice (%) per model and α group next to the paper's Table 2 values."""
    from xrlib.eval.evaluate import GROUP_ORDER

    ours = df.groupby(["model", "group"])["dice"].mean().mul(100)
    rows = []
    for (model, group), value in ours.items():
        paper = PAPER_TABLE2_DICE.get(model, {}).get(group, (np.nan, np.nan))[0]
        rows.append({"model": model, "group": group, "this build": value, "paper": paper})
    out = pd.DataFrame(rows).pivot(index="model", columns="group", values=["this build", "paper"])
    return out.reindex(columns=[(k, g) for k in ("this build", "paper") for g in GROUP_ORDER if (k, g) in out.columns]).round(2)


def table3(df: pd.DataFrame, results: dict[str, TrainResult] | None = None) -> pd.DataFrame:
    """Dice (%) on the Real test split per ablation model next to the paper's Table 3.

    ``df``: per-image results whose ``model`` names start with ``ExpNN`` (:func:`xrlib.training.train.ablation_configs`);
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
