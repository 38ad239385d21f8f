"""The robustness results contract and the summaries every threat chapter shares.

Every threat writes ``runs/<profile>/robustness/<threat>.csv``: one row per model × budget × test
image with at least :data:`CONTRACT_COLUMNS` (plus its own columns). Per image:

* ``dice``, ``hd95_mm`` — against the ground truth (transformed with the image for geometric threats);
* ``dice_clean`` — Dice of the model's prediction on the clean image (budget 0) against its truth;
* ``dice_vs_clean_pred`` — Dice against the model's own clean prediction, empty where that prediction
  cannot be mapped onto the threatened image (another projection);
* ``success`` — Dice fell by ≥ 30 % of the clean Dice (:func:`success_flags`);
* ``changed`` — ``dice_vs_clean_pred`` < 0.7, empty where that is empty.

An optional ``seed`` column names the training seed of a model evaluated with several (absent: one
seed); the card's intervals (:mod:`xrlib.eval.evidence`) use it as the unit of model variability.

Summaries: :func:`robustness_curve` (mean Dice vs budget with subject-clustered CIs),
:func:`halving_budget` (the budget at which mean Dice halves), :func:`cmr` and :func:`sar`
(quality-band transitions between clean and threatened predictions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.core.atomic import write_csv_atomic
from xrlib.eval.stats import bootstrap_by_group

__all__ = [
    "CHANGED_BELOW", "CONTRACT_COLUMNS", "DEFAULT_BAND_EDGES", "SUCCESS_DROP", "band_labels", "changed_flags",
    "ci_note", "cmr", "halving_budget", "quality_band", "read_robustness", "robustness_curve", "robustness_path",
    "cmr_ztest", "sar", "success_flags", "write_robustness",
]

#: The columns every threat's results table has (one row per model × budget × test image).
CONTRACT_COLUMNS = ("model", "threat", "budget", "budget_unit", "subject", "alpha", "alpha_group", "dice", "hd95_mm",
                    "dice_clean", "dice_vs_clean_pred", "success", "changed")
#: A threat succeeds on an image when its Dice fell by at least this fraction of the clean Dice.
SUCCESS_DROP = 0.3
#: A prediction has changed when its Dice against the clean prediction is below this.
CHANGED_BELOW = 0.7
#: Quality bands of a prediction against the ground truth: Dice ≥ 0.8 / 0.5–0.8 / < 0.5.
DEFAULT_BAND_EDGES = (0.8, 0.5)
#: Subjects below which a CI is flagged as resting on few subjects (the small profiles have fewer).
FEW_SUBJECTS = 20


def success_flags(dice, dice_clean, drop: float = SUCCESS_DROP) -> np.ndarray:
    """``dice_clean − dice ≥ drop · dice_clean`` per image; never a success when the clean Dice is 0
    (nothing to fall from). A 1e-12 tolerance counts a fall of exactly ``drop`` as a success."""
    d, c = np.asarray(dice, float), np.asarray(dice_clean, float)
    return (c > 0) & (c - d >= drop * c - 1e-12)


def changed_flags(dice_vs_clean_pred, below: float = CHANGED_BELOW) -> pd.Series:
    """``dice_vs_clean_pred < below`` as a nullable boolean: empty where the comparison is empty."""
    v = pd.Series(np.asarray(dice_vs_clean_pred, float))
    return (v < below).astype("boolean").mask(v.isna())


def robustness_path(run: str | Path, threat: str) -> Path:
    """``<run>/robustness/<threat>.csv``."""
    return Path(run) / "robustness" / f"{threat}.csv"


def _check_contract(df: pd.DataFrame, where: str) -> None:
    missing = [c for c in CONTRACT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: robustness results lack the contract column(s) {missing}")


def write_robustness(df: pd.DataFrame, run: str | Path, threat: str) -> Path:
    """Write the results of one threat atomically to :func:`robustness_path`; contract columns first."""
    _check_contract(df, threat)
    if set(df["threat"].unique()) - {threat}:
        raise ValueError(f"{threat}: the results hold rows of other threats {sorted(set(df['threat']) - {threat})}")
    cols = list(CONTRACT_COLUMNS) + [c for c in df.columns if c not in CONTRACT_COLUMNS]
    path = robustness_path(run, threat)
    write_csv_atomic(path, df[cols])
    return path


def read_robustness(run: str | Path, threat: str) -> pd.DataFrame:
    """The results of one threat as written by :func:`write_robustness` (flags as nullable booleans)."""
    from xrlib.core.errors import InputError

    path = robustness_path(run, threat)
    if not path.is_file():
        raise InputError(path, f"no results of the threat {threat!r}; run `xrlib robustness --threat {threat}` first")
    df = pd.read_csv(path, dtype={"subject": str, "alpha_group": str})
    _check_contract(df, str(path))
    for col in ("success", "changed"):
        df[col] = df[col].astype("boolean")
    return df


def ci_note(n_subjects: int) -> str:
    """A caption note for CIs that rest on fewer than :data:`FEW_SUBJECTS` subjects (the small profiles)."""
    if n_subjects >= FEW_SUBJECTS:
        return ""
    return (f"The confidence intervals resample only {n_subjects} subject(s), virtual subjects of few CTs: "
            "they are rough indications, not population intervals.")


def robustness_curve(df: pd.DataFrame, metric: str = "dice", n_boot: int = 2000, ci: float = 0.95, seed: int = 0,
                     cluster: str | None = "subject") -> pd.DataFrame:
    """Mean ``metric`` per model and budget with cluster-bootstrap CIs (subjects resampled).

    Columns: ``model``, ``budget``, ``mean``, ``lo``, ``hi``, ``n``, ``n_nan``, ``n_clusters``
    (:func:`xrlib.eval.stats.bootstrap_by_group`); ``attrs["note"]`` holds :func:`ci_note` of the
    fewest subjects behind a point ("" when there are enough).
    """
    out = bootstrap_by_group(df, metric, by=("model", "budget"), cluster=cluster, n_boot=n_boot, ci=ci, seed=seed)
    few = int(out["n_clusters"].min()) if len(out) and cluster is not None else FEW_SUBJECTS
    out.attrs["note"] = ci_note(few)
    return out


def halving_budget(df: pd.DataFrame, clean_budget: float = 0.0, metric: str = "dice") -> pd.DataFrame:
    """The budget at which a model's mean ``metric`` falls to half its clean value.

    Per model, the mean over images at each budget; the reference is the mean at ``clean_budget``.
    Budgets above it (direction ``"+"``) and below it (``"-"``, e.g. negative rotations) are walked
    away from the clean budget; at the first budget whose mean is ≤ half the reference, the budget
    is interpolated linearly between it and the previous budget. Columns: ``model``, ``direction``,
    ``clean_mean``, ``budget_half`` (``nan`` when the mean never halves or there is no reference) and
    ``reason`` (why it is ``nan``; empty otherwise).
    """
    means = df.groupby(["model", "budget"], sort=False)[metric].mean()
    rows = []
    for model in dict.fromkeys(df["model"]):
        m = means.loc[model].sort_index()
        b = m.index.to_numpy(float)
        ref_sel = np.isclose(b, clean_budget)
        ref = float(m.to_numpy()[ref_sel][0]) if ref_sel.any() else math.nan
        for direction, sel in (("+", b > clean_budget), ("-", b < clean_budget)):
            if not sel.any():
                continue
            rec = {"model": model, "direction": direction, "clean_mean": ref, "budget_half": math.nan, "reason": ""}
            steps = sorted(zip(b[sel], m.to_numpy()[sel]), key=lambda t: abs(t[0] - clean_budget))
            if math.isnan(ref):
                rec["reason"] = f"no images at the clean budget {clean_budget:g}"
            elif ref <= 0:
                rec["reason"] = f"the clean mean {metric} is {ref:g}: nothing to halve"
            else:
                half, (pb, pm) = ref / 2.0, (clean_budget, ref)
                for bb, mm in steps:
                    if mm <= half:
                        rec["budget_half"] = float(pb + (half - pm) * (bb - pb) / (mm - pm))
                        break
                    pb, pm = bb, mm
                else:
                    rec["reason"] = (f"the mean {metric} stays above half its clean value ({half:.3g}) "
                                     f"up to budget {steps[-1][0]:g}")
            rows.append(rec)
    return pd.DataFrame(rows, columns=["model", "direction", "clean_mean", "budget_half", "reason"])


def band_labels(edges: Sequence[float] = DEFAULT_BAND_EDGES) -> list[str]:
    """Names of the quality bands of descending ``edges``: ``["Dice ≥ 0.8", "0.5–0.8", "Dice < 0.5"]``."""
    e = list(edges)
    if any(a <= b for a, b in zip(e, e[1:])):
        raise ValueError(f"band edges must be strictly decreasing, got {e}")
    return [f"Dice ≥ {e[0]:g}"] + [f"{lo:g}–{hi:g}" for hi, lo in zip(e, e[1:])] + [f"Dice < {e[-1]:g}"]


def quality_band(dice, edges: Sequence[float] = DEFAULT_BAND_EDGES) -> np.ndarray:
    """Index of the quality band of each Dice (0 = best): band k holds ``edges[k] ≤ Dice < edges[k−1]``."""
    band_labels(edges)  # validates
    d = np.asarray(dice, float)
    return np.sum(d[..., None] < np.asarray(edges, float), axis=-1)


def cmr(df: pd.DataFrame, by: Sequence[str] = ("model",), edges: Sequence[float] = DEFAULT_BAND_EDGES,
        clean_budget: float | None = 0.0) -> pd.DataFrame:
    """Class (band) migration rates: CMR(i, j) = P(threatened prediction in band i | clean prediction in band j).

    Bands are quality bands of a prediction against the ground truth (:func:`quality_band`): the
    threatened band from ``dice``, the clean band from ``dice_clean``. Rows at ``clean_budget`` (where
    the threatened image is the clean one) are left out (``None`` keeps them). One row per ``by`` level,
    clean band j and threatened band i (all pairs, zeros included): ``clean_band``, ``threatened_band``
    (labels), ``n_clean`` (images whose clean prediction is in band j), ``n`` and ``cmr = n / n_clean``
    (``nan`` when ``n_clean`` is 0).
    """
    by = [by] if isinstance(by, str) else list(by)
    d = df if clean_budget is None else df[~np.isclose(df["budget"].to_numpy(float), clean_budget)]
    labels = band_labels(edges)
    k = len(labels)
    rows = []
    for key, g in d.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        j_band, i_band = quality_band(g["dice_clean"], edges), quality_band(g["dice"], edges)
        counts = np.zeros((k, k), int)
        np.add.at(counts, (i_band, j_band), 1)
        n_clean = counts.sum(axis=0)
        for j in range(k):
            for i in range(k):
                rate = counts[i, j] / n_clean[j] if n_clean[j] else math.nan
                rows.append({**dict(zip(by, key)), "clean_band": labels[j], "threatened_band": labels[i],
                             "n_clean": int(n_clean[j]), "n": int(counts[i, j]), "cmr": rate})
    return pd.DataFrame(rows, columns=by + ["clean_band", "threatened_band", "n_clean", "n", "cmr"])


def sar(df: pd.DataFrame, by: Sequence[str] = ("model",), edges: Sequence[float] = DEFAULT_BAND_EDGES,
        clean_budget: float | None = 0.0) -> pd.DataFrame:
    """Success rate per clean band: SAR_j = 1 − CMR(j, j), the share of images whose clean prediction is in
    band j and whose threatened prediction left it. Columns: ``by…``, ``band``, ``n_clean``, ``sar``."""
    c = cmr(df, by, edges, clean_budget)
    diag = c[c["clean_band"] == c["threatened_band"]].rename(columns={"clean_band": "band"})
    out = diag.assign(sar=1.0 - diag["cmr"])
    return out[[*([by] if isinstance(by, str) else list(by)), "band", "n_clean", "sar"]].reset_index(drop=True)


def cmr_ztest(a: pd.DataFrame, b: pd.DataFrame, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Two-proportion Z-test of every CMR entry between two :func:`cmr` tables of the same ``by`` levels.

    Per ``by`` level, clean band j and threatened band i: ``z`` and ``p`` of
    :func:`statsmodels.stats.proportion.proportions_ztest` on ``(n_a, n_b)`` out of
    ``(n_clean_a, n_clean_b)`` (pooled variance, two-sided). ``z`` is 0 (``p`` 1) where both proportions
    are equal with zero pooled variance (both 0 or both 1), ``nan`` where a clean band is empty.
    Columns: ``by…``, ``clean_band``, ``threatened_band``, ``cmr_a``, ``cmr_b``, ``n_clean_a``,
    ``n_clean_b``, ``z``, ``p``.
    """
    from statsmodels.stats.proportion import proportions_ztest

    by = [by] if isinstance(by, str) else list(by)
    keys = by + ["clean_band", "threatened_band"]
    m = a.merge(b, on=keys, suffixes=("_a", "_b"), how="inner")
    zs, ps = [], []
    for r in m.itertuples(index=False):
        na, nb, ca, cb = int(r.n_a), int(r.n_b), int(r.n_clean_a), int(r.n_clean_b)
        if ca == 0 or cb == 0:
            zs.append(math.nan)
            ps.append(math.nan)
        elif (na == 0 and nb == 0) or (na == ca and nb == cb):
            zs.append(0.0)
            ps.append(1.0)
        else:
            z, pv = proportions_ztest(np.array([na, nb]), np.array([ca, cb]))
            zs.append(float(z))
            ps.append(float(pv))
    out = m[keys + ["cmr_a", "cmr_b", "n_clean_a", "n_clean_b"]].copy()
    out["z"], out["p"] = zs, ps
    return out
