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
from xrlib.drr.noise import clean_log, dose_axis, input_bin_side
from xrlib.eval.robustness import cmr, cmr_ztest, sar, write_robustness
from xrlib.studies.noise.settings import NoiseSettings
from xrlib.studies.rotation import study
from xrlib.studies.rotation.groups import alpha_group
from xrlib.training import load_best

__all__ = ["ACCEPT", "acceptance_table", "changed_rates", "dose_table", "noise_dir", "noise_results", "repeated_configs",
           "sar_by", "seed_sar", "std_maps", "tost_subjects", "tost_table", "validate_insertion", "window_effect", "ztest_table"]


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
    """Two-proportion Z-test per CMR entry, inserted (a) vs re-rendered (b), per model and dose.

    Degenerate cells — both arms' CMR 0 or both 1, where the pooled variance is 0 and the test says
    nothing — are flagged (``degenerate``) and get ``z`` and ``p`` NaN, so counts of "testable" entries
    leave them out. The Z-test treats realisations of one image as independent; :func:`tost_table` is
    the subject-clustered equivalence test beside it.
    """
    d = df[np.isfinite(df["budget"].to_numpy(float))]
    a = cmr(d[d["arm"] == "inserted"], by=["model", "budget"], clean_budget=None)
    b = cmr(d[d["arm"] == "rerendered"], by=["model", "budget"], clean_budget=None)
    z = cmr_ztest(a, b, by=["model", "budget"])
    ca, cb = z["cmr_a"].to_numpy(float), z["cmr_b"].to_numpy(float)
    z["degenerate"] = ((ca == 0) & (cb == 0)) | ((ca == 1) & (cb == 1))
    z.loc[z["degenerate"], ["z", "p"]] = np.nan
    return z


#: Significance level of the equivalence test (each one-sided test at 5 %).
TOST_ALPHA = 0.05


def tost_subjects(a: np.ndarray, b: np.ndarray, margin: float) -> dict:
    """Paired TOST of per-subject values ``a`` vs ``b`` with equivalence bounds ±``margin``
    (:func:`statsmodels.stats.weightstats.ttost_paired`): ``diff`` (mean a − b), ``p`` (the larger
    one-sided p), ``equivalent`` (p < :data:`TOST_ALPHA`), ``n_subjects``; with fewer than 2 subjects
    ``p`` is NaN and ``equivalent`` False."""
    from statsmodels.stats.weightstats import ttost_paired

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two paired 1-D arrays, got shapes {a.shape} and {b.shape}")
    out = {"diff": float(np.mean(a - b)) if len(a) else math.nan, "n_subjects": int(len(a)), "margin": float(margin)}
    if len(a) < 2:
        return {**out, "p": math.nan, "equivalent": False}
    if np.allclose(a, b):
        return {**out, "p": 0.0, "equivalent": True}  # identical pairs: zero variance, difference 0
    p = float(ttost_paired(a, b, -float(margin), float(margin))[0])
    return {**out, "p": p, "equivalent": bool(p < TOST_ALPHA)}


def tost_table(df: pd.DataFrame, margin: float, metric: str = "dice") -> pd.DataFrame:
    """Equivalence of the inserted and re-rendered arms per model and dose on a subject-clustered variance.

    ``metric`` is first averaged per subject and arm (over its images and realisations: one value per
    subject and arm), then :func:`tost_subjects` tests the paired per-subject difference against ±``margin``.
    """
    d = df[np.isfinite(df["budget"].to_numpy(float)) & df["arm"].isin(["inserted", "rerendered"])]
    per = d.groupby(["model", "budget", "subject", "arm"], sort=False)[metric].mean().unstack("arm").dropna()
    rows = []
    for (model, dose), g in per.groupby(level=["model", "budget"], sort=False):
        rows.append({"model": model, "budget": dose, **tost_subjects(g["inserted"].to_numpy(), g["rerendered"].to_numpy(), margin)})
    return pd.DataFrame(rows)


def _regions(clean: np.ndarray, field: np.ndarray) -> dict[str, np.ndarray]:
    """Three attenuation regions inside the field: tertiles of the clean −log image (low = lung/open, high = bone/mediastinum)."""
    lo, hi = np.percentile(clean[field], [100 / 3, 200 / 3])
    return {"low attenuation": field & (clean < lo), "middle": field & (clean >= lo) & (clean < hi),
            "high attenuation": field & (clean >= hi)}


def validate_insertion(threat: NoiseThreat, doses, n: int, images=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The inserted arm against re-rendering on the detector grid (−log domain), per image, dose and region.

    Returns ``(moments, nps)``: ``moments`` has per image, dose, region and arm the moments of the
    noise (noisy − clean) over the region's pixels of ``n`` realisations — ``mean``, ``std``,
    ``skewness``, ``excess_kurtosis`` — and ``method`` (how the inserted arm made it: ``nps`` Gaussian
    or ``counts``); ``nps`` the radially averaged NPS per dose and arm, averaged over every
    non-overlapping ``threat.patch``-pixel tile inside the field (realisation mean removed per tile) and
    over the images: the image's average noise spectrum.
    """
    images = range(len(threat.sources)) if images is None else images
    mrows, nrows = [], []
    for i in images:
        src = threat.sources[i]
        clean = clean_log(src.expected)
        regions = _regions(clean, src.field)
        h, w = clean.shape
        p = threat.patch
        tiles = [(y, x) for y in range(0, h - p + 1, p) for x in range(0, w - p + 1, p) if src.field[y:y + p, x:x + p].all()]
        for d in doses:
            method = threat.insertion(i, float(d))
            for arm in ("rerendered", "inserted"):
                noise = threat.noisy_log(i, float(d), arm, n).astype(float) - clean
                for reg, sel in regions.items():
                    v = noise[:, sel].ravel()
                    mrows.append({"image": i, "dose": float(d), "region": reg, "arm": arm, "method": method,
                                  "mean": v.mean(), "std": v.std(), "skewness": stats.skew(v),
                                  "excess_kurtosis": stats.kurtosis(v)})
                c = np.concatenate([noise[:, y:y + p, x:x + p] for y, x in tiles])  # every tile in the field
                c = c - np.concatenate([noise[:, y:y + p, x:x + p].mean(0, keepdims=True).repeat(n, 0) for y, x in tiles])
                f, r = nps_mod.radial_nps(nps_mod.nps_2d(c))
                nrows += [{"image": i, "dose": float(d), "arm": arm, "frequency": fi, "nps": ri} for fi, ri in zip(f, r)]
    m = pd.DataFrame(mrows)
    piv = m.pivot_table(index=["image", "dose", "region"], columns="arm", values="std")
    m = m.merge((piv["inserted"] / piv["rerendered"] - 1).rename("std_rel_diff").reset_index(), on=["image", "dose", "region"])
    nps = pd.DataFrame(nrows).groupby(["dose", "arm", "frequency"]).nps.mean().reset_index()
    return m, nps


#: Acceptance of the inserted arm against re-rendering, per dose and region (means over the validated
#: images): ``|Δmean| ≤ mean_sd · std`` (re-rendered), ``|std ratio − 1| ≤ sd_rel``, ``|Δskew| ≤ skew_abs``;
#: per dose, the image-average radial NPS within ``nps_rel`` (mean ``|ratio − 1|`` over 0.05–0.45 cycles/px).
ACCEPT = {"mean_sd": 0.10, "sd_rel": 0.10, "skew_abs": 0.20, "nps_rel": 0.15}


def acceptance_table(moments: pd.DataFrame, nps: pd.DataFrame, tol: dict | None = None) -> pd.DataFrame:
    """Per dose and region: both arms' mean, std and skew, the inserted arm's method, each criterion of
    :data:`ACCEPT` (``*_ok``) and ``accepted`` (all of them, the dose's NPS included)."""
    tol = {**ACCEPT, **(tol or {})}
    g = moments.groupby(["dose", "region", "arm"], sort=False)[["mean", "std", "skewness"]].mean().unstack("arm")
    method = moments.groupby(["dose", "region"], sort=False)["method"].agg(lambda x: "/".join(sorted(set(x))))
    out = pd.DataFrame({"method": method,
                        "mean_rerendered": g[("mean", "rerendered")], "mean_inserted": g[("mean", "inserted")],
                        "std_rerendered": g[("std", "rerendered")], "std_inserted": g[("std", "inserted")],
                        "skew_rerendered": g[("skewness", "rerendered")], "skew_inserted": g[("skewness", "inserted")]})
    out["mean_ok"] = (out["mean_inserted"] - out["mean_rerendered"]).abs() <= tol["mean_sd"] * out["std_rerendered"]
    out["sd_ok"] = (out["std_inserted"] / out["std_rerendered"] - 1).abs() <= tol["sd_rel"]
    out["skew_ok"] = (out["skew_inserted"] - out["skew_rerendered"]).abs() <= tol["skew_abs"]
    band = nps[(nps["frequency"] > 0.05) & (nps["frequency"] <= 0.45)].pivot_table(
        index=["dose", "frequency"], columns="arm", values="nps")
    rel = (band["inserted"] / band["rerendered"] - 1).abs().groupby(level="dose").mean().rename("nps_rel_diff")
    out = out.reset_index().merge(rel.reset_index(), on="dose", how="left")
    out["nps_ok"] = out["nps_rel_diff"] <= tol["nps_rel"]
    out["accepted"] = out[["mean_ok", "sd_ok", "skew_ok", "nps_ok"]].all(axis=1)
    return out


def dose_table(threat: NoiseThreat, doses=None) -> pd.DataFrame:
    """The dose axis of the test images (:func:`xrlib.drr.noise.dose_axis`, means over the images): per dose
    (mAs) the open-field and behind-clavicle quanta per network-input pixel and the clavicle CNR at the input."""
    doses = threat.doses if doses is None else tuple(float(d) for d in doses)
    per = []
    for src in threat.sources:
        a = dose_axis(src.expected, src.mask, src.field, doses, input_bin_side(src.expected.signal.shape, threat.size),
                      src.pitch_mm)
        per.append(pd.DataFrame(a))
    t = pd.concat(per).groupby("dose_mas", sort=False).mean().reset_index()
    return t.sort_values("dose_mas", ascending=False, ignore_index=True)[
        ["dose_mas", "flat_quanta", "clavicle_quanta", "contrast", "noise_std", "cnr"]]


def window_effect(df: pd.DataFrame) -> pd.DataFrame:
    """The window control per model and dose: mean Dice clean, with the noisy image's own window
    (``rerendered``) and with the noise-free image's window (``clean-window``), and ``window_share`` — the
    part of the Dice lost to noise that the window control recovers, (clean-window − own)/(clean − own)
    (NaN where less than 0.01 Dice was lost)."""
    fin = np.isfinite(df["budget"].to_numpy(float))
    clean = df[~fin].groupby("model", sort=False)["dice"].mean().rename("dice_clean")
    d = df[fin & df["arm"].isin(["rerendered", "clean-window"])]
    t = d.groupby(["model", "budget", "arm"], sort=False)["dice"].mean().unstack("arm").reset_index()
    t = t.rename(columns={"rerendered": "dice_own_window", "clean-window": "dice_clean_window"}).merge(clean.reset_index(), on="model")
    lost = t["dice_clean"] - t["dice_own_window"]
    t["window_share"] = np.where(lost > 0.01, (t["dice_clean_window"] - t["dice_own_window"]) / lost.where(lost > 0.01), np.nan)
    return t[["model", "budget", "dice_clean", "dice_own_window", "dice_clean_window", "window_share"]]


def repeated_configs(profile: Profile, settings: NoiseSettings):
    """U-Net(Real+Syn_all) with ``settings.seeds`` other seeds at the study model's own schedule (epochs,
    patience, lr): they differ from the victim only by the seed. They are the base's seeds ``1 … k`` — the
    evidence design's seeds of the base that chapter 05 trains (:func:`xrlib.studies.rotation.seeds.evidence_seed_configs`:
    the card's verdict seeds and its A/A seeds), read from the cache; seeds beyond those train here."""
    from xrlib.studies.rotation.seeds import BASE_MODEL, study_seed_config

    return [study_seed_config(profile, BASE_MODEL, 1 + k) for k in range(settings.seeds)]


def seed_sar(profile: Profile, run: Path, threat: NoiseThreat, results: dict, doses) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score the repeated trainings under the re-rendered arm at ``doses``; write ``<run>/noise/seeds.csv``.

    Returns ``(rows, per_seed)``: the contract rows, and per model the clean Dice and, per dose, the
    SAR of the best band (Dice ≥ 0.8) and the share of changed predictions.
    """
    victims = {name: load_best(res) for name, res in results.items()}
    rer = threat.subset(("rerendered",), doses)  # the same re-rendered realisations, no other arm computed
    df = score_threat(rer, victims, rer.test, study.pixel_mm(profile), budgets=[math.inf, *doses],
                      groups=alpha_group)
    df = df[(df["arm"] == "rerendered") | ~np.isfinite(df["budget"].to_numpy(float))]
    write_csv_atomic(noise_dir(run) / "seeds.csv", df)
    s = sar(df, by=["model", "budget"], clean_budget=math.inf)
    s = s[s["band"] == s["band"].iloc[0]] if len(s) else s
    ch = changed_rates(df)
    clean = df[~np.isfinite(df["budget"].to_numpy(float))].groupby("model", sort=False)["dice"].mean().rename("clean_dice")
    per = s.merge(ch[["model", "budget", "changed"]], on=["model", "budget"]).merge(clean.reset_index(), on="model")
    return df, per
