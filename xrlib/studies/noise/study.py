"""Chapter 10's analyses: noise maps, the noise threat's SAR/CMR, validation of the insertion, repeated trainings.

Everything the notebook ``10_noise_robustness`` computes; the notebook narrates and plots.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from xrlib.attacks.base import score_threat
from xrlib.attacks.noise import NoiseThreat
from xrlib.core.atomic import write_csv_atomic
from xrlib.core.profiles import Profile
from xrlib.drr import nps as nps_mod
from xrlib.drr.noise import clean_log
from xrlib.eval.robustness import cmr, cmr_ztest, sar, write_robustness
from xrlib.studies.noise.settings import NoiseSettings
from xrlib.studies.rotation import study
from xrlib.studies.rotation.groups import alpha_group
from xrlib.studies.rotation.models import study_configs
from xrlib.training import load_best

__all__ = ["changed_rates", "noise_dir", "noise_results", "repeated_configs", "sar_by", "seed_sar", "std_maps",
           "validate_insertion", "ztest_table"]


def noise_dir(run: Path) -> Path:
    """``<run>/noise``: the chapter's outputs."""
    return Path(run) / "noise"


def std_maps(threat: NoiseThreat, image: int, doses, n: int) -> dict:
    """Per-pixel std (−log units) over ``n`` re-rendered realisations of test image ``image`` at each dose,
    on the detector grid, NaN outside the field; also the clean −log image (``"clean"``)."""
    src = threat.sources[image]
    out = {"clean": np.where(src.field, clean_log(src.expected), np.nan)}
    for d in doses:
        reps = threat.noisy_log(image, float(d), "rerendered", n)
        out[float(d)] = np.where(src.field, reps.std(0, ddof=1), np.nan)
    return out


def noise_results(profile: Profile, run: Path, threat: NoiseThreat, models=None, progress: bool = False) -> pd.DataFrame:
    """Score the study models under ``threat`` and write ``<run>/robustness/noise.csv`` (the results contract)."""
    trained = study.study_models(profile, run, models)
    victims = {name: load_best(res) for name, res in trained.items()}
    df = score_threat(threat, victims, threat.test, study.pixel_mm(profile), groups=alpha_group, progress=progress)
    write_robustness(df, run, "noise")
    return df


def sar_by(df: pd.DataFrame, extra=()) -> pd.DataFrame:
    """SAR per model, arm, dose (and ``extra`` columns, e.g. ``alpha_group``) and clean band (Dice bands 0.8 / 0.5)."""
    return sar(df, by=["model", "arm", "budget", *extra], clean_budget=math.inf)


def changed_rates(df: pd.DataFrame) -> pd.DataFrame:
    """Share of noisy predictions that ``changed`` (Dice vs the clean prediction < 0.7) per model, arm and dose."""
    d = df[np.isfinite(df["budget"].to_numpy(float))]
    return (d.assign(changed=d["changed"].astype(float)).groupby(["model", "arm", "budget"], sort=False)
            .agg(changed=("changed", "mean"), n=("changed", "size"), dice=("dice", "mean")).reset_index())


def ztest_table(df: pd.DataFrame) -> pd.DataFrame:
    """Two-proportion Z-test per CMR entry, inserted (a) vs re-rendered (b), per model and dose."""
    d = df[np.isfinite(df["budget"].to_numpy(float))]
    a = cmr(d[d["arm"] == "inserted"], by=["model", "budget"], clean_budget=None)
    b = cmr(d[d["arm"] == "rerendered"], by=["model", "budget"], clean_budget=None)
    return cmr_ztest(a, b, by=["model", "budget"])


def _regions(clean: np.ndarray, field: np.ndarray) -> dict[str, np.ndarray]:
    """Three attenuation regions inside the field: tertiles of the clean −log image (low = lung/open, high = bone/mediastinum)."""
    lo, hi = np.percentile(clean[field], [100 / 3, 200 / 3])
    return {"low attenuation": field & (clean < lo), "middle": field & (clean >= lo) & (clean < hi),
            "high attenuation": field & (clean >= hi)}


def validate_insertion(threat: NoiseThreat, doses, n: int, images=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The inserted arm against re-rendering on the detector grid (−log domain), per image, dose and region.

    Returns ``(moments, nps)``: ``moments`` has per image, dose, region and arm the first four
    moments of the noise (noisy − clean): mean, std, skewness, excess kurtosis over the region's
    pixels of ``n`` realisations, and the relative std difference; ``nps`` the radially averaged NPS
    (central patch of ``threat.patch`` pixels) per dose and arm, averaged over the images.
    """
    images = range(len(threat.sources)) if images is None else images
    mrows, nrows = [], []
    for i in images:
        src = threat.sources[i]
        clean = clean_log(src.expected)
        regions = _regions(clean, src.field)
        h, w = clean.shape
        p = threat.patch
        y0, x0 = h // 2 - p // 2, w // 2 - p // 2
        for d in doses:
            for arm in ("rerendered", "inserted"):
                noise = threat.noisy_log(i, float(d), arm, n).astype(float) - clean
                for reg, sel in regions.items():
                    v = noise[:, sel].ravel()
                    mrows.append({"image": i, "dose": float(d), "region": reg, "arm": arm, "mean": v.mean(),
                                  "std": v.std(), "skewness": stats.skew(v), "excess_kurtosis": stats.kurtosis(v)})
                c = noise[:, y0:y0 + p, x0:x0 + p]
                f, r = nps_mod.radial_nps(nps_mod.nps_2d(c - c.mean(0)))
                nrows += [{"image": i, "dose": float(d), "arm": arm, "frequency": fi, "nps": ri} for fi, ri in zip(f, r)]
    m = pd.DataFrame(mrows)
    piv = m.pivot_table(index=["image", "dose", "region"], columns="arm", values="std")
    m = m.merge((piv["inserted"] / piv["rerendered"] - 1).rename("std_rel_diff").reset_index(), on=["image", "dose", "region"])
    nps = pd.DataFrame(nrows).groupby(["dose", "arm", "frequency"]).nps.mean().reset_index()
    return m, nps


def repeated_configs(profile: Profile, settings: NoiseSettings):
    """U-Net(Real+Syn_all) with ``settings.seeds`` seeds (profile seed + 1 …) and ``settings.seed_epochs`` epochs."""
    from dataclasses import replace

    base = next(c for c in study_configs(profile) if c.name == "U-Net(Real+Syn_all)")
    return [replace(base, name=f"U-Net(Real+Syn_all) seed {profile.seed + k + 1}", seed=int(profile.seed) + k + 1,
                    epochs=int(settings.seed_epochs), patience=min(int(base.patience), int(settings.seed_epochs)))
            for k in range(settings.seeds)]


def seed_sar(profile: Profile, run: Path, threat: NoiseThreat, results: dict, doses) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score the repeated trainings under the re-rendered arm at ``doses``; write ``<run>/noise/seeds.csv``.

    Returns ``(rows, per_seed)``: the contract rows, and per model the clean Dice and, per dose, the
    SAR of the best band (Dice ≥ 0.8) and the share of changed predictions.
    """
    victims = {name: load_best(res) for name, res in results.items()}
    df = score_threat(threat, victims, threat.test, study.pixel_mm(profile), budgets=[math.inf, *doses],
                      groups=alpha_group)
    df = df[(df["arm"] == "rerendered") | ~np.isfinite(df["budget"].to_numpy(float))]
    write_csv_atomic(noise_dir(run) / "seeds.csv", df)
    s = sar(df, by=["model", "budget"], clean_budget=math.inf)
    s = s[s["band"] == s["band"].iloc[0]] if len(s) else s
    ch = changed_rates(df)
    clean = df[~np.isfinite(df["budget"].to_numpy(float))].groupby("model", sort=False)["dice"].mean().rename("clean_dice")
    per = s.merge(ch[["model", "budget", "changed"]], on=["model", "budget"]).merge(clean.reset_index(), on="model")
    return df, per
