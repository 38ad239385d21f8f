"""Tables of mean ± sd per group: a numeric long table and its formatted wide view.

The grouping column (``by``) and its display order (``order``) are parameters: a study passes its
own groups (and their display order) and its baseline model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["format_group_table", "group_stats", "group_table", "ordered_levels"]


def ordered_levels(values, order: Sequence | None = None) -> list:
    """Distinct ``values`` for display: those in ``order`` first (in that order), then the others in
    order of appearance; without ``order``, all of them sorted ascending."""
    present = list(dict.fromkeys(values))
    if order is None:
        return sorted(present)
    known = [g for g in order if g in present]
    return known + [g for g in present if g not in known]


def group_stats(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("dice", "hd_mm", "hd95_mm"),
    baseline: str | None = None,
    by: str = "group",
    order: Sequence | None = None,
) -> pd.DataFrame:
    """Numeric long table: one row per (model, level of ``by``, metric), levels in ``order``.

    Columns: ``model``, ``by``, ``metric``, ``n_images``, ``n_empty`` (empty predictions), ``n``
    (images entering the statistics), ``mean``, ``sd`` (sample sd, ddof=1; ``nan`` for n < 2),
    ``baseline_mean`` and ``pct_change = (mean − baseline_mean) / baseline_mean · 100`` against the
    ``baseline`` model in the same level and metric (``nan`` where the baseline is absent).

    Dice is averaged over all images (an empty prediction has Dice 0); HD metrics over images with
    a non-empty prediction (``n = n_images − n_empty`` unless the target is empty too). For Dice a
    positive change is an improvement; for HD/HD95 (lower is better) a *negative* change is.
    """
    if by not in df.columns:
        raise ValueError(f"results lack the column {by!r}")
    records = []
    levels = ordered_levels(df[by], order)
    for model in dict.fromkeys(df["model"]):
        dm = df[df["model"] == model]
        for g in levels:
            dg = dm[dm[by] == g]
            if dg.empty:
                continue
            n_empty = int(dg["empty_pred"].sum()) if "empty_pred" in dg else 0
            for metric in metrics:
                v = dg[metric].to_numpy(dtype=float)
                v = v[~np.isnan(v)]
                records.append({
                    "model": model, by: g, "metric": metric, "n_images": len(dg), "n_empty": n_empty,
                    "n": len(v),
                    "mean": float(v.mean()) if len(v) else math.nan,
                    "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                })
    out = pd.DataFrame.from_records(
        records, columns=["model", by, "metric", "n_images", "n_empty", "n", "mean", "sd"])
    if baseline is not None and (out["model"] == baseline).any():
        base = out[out["model"] == baseline][[by, "metric", "mean"]].rename(columns={"mean": "baseline_mean"})
        out = out.merge(base, on=[by, "metric"], how="left")
    else:
        out["baseline_mean"] = math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        out["pct_change"] = (out["mean"] - out["baseline_mean"]) / out["baseline_mean"] * 100.0
    return out


def format_group_table(
    stats: pd.DataFrame,
    baseline: str | None = None,
    dice_percent: bool = True,
    decimals: int = 2,
    by: str = "group",
    order: Sequence | None = None,
) -> pd.DataFrame:
    """Wide table from :func:`group_stats`: rows = model, columns = (level of ``by``, metric).

    Cells read ``"mean ± sd"``, followed by ``" (+x.xx%)"`` (change vs ``baseline``; not shown
    for the baseline itself) and by ``" [k empty]"`` when k > 0 predictions of the cell were empty.
    With ``dice_percent`` Dice is shown ×100 (the % change is unaffected).
    """
    def cell(r) -> str:
        scale = 100.0 if (dice_percent and r["metric"] == "dice") else 1.0
        mean, sd = r["mean"] * scale, r["sd"] * scale
        s = f"{mean:.{decimals}f} ± {sd:.{decimals}f}"
        if r["model"] != baseline and not math.isnan(r["pct_change"]):
            s += f" ({r['pct_change']:+.{decimals}f}%)"
        if r["n_empty"] > 0:
            s += f" [{int(r['n_empty'])} empty]"
        return s

    if stats.empty:
        return pd.DataFrame()
    t = stats.assign(cell=stats.apply(cell, axis=1))
    wide = t.pivot(index="model", columns=[by, "metric"], values="cell")
    levels = ordered_levels(stats[by], order)
    metrics = list(dict.fromkeys(stats["metric"]))
    cols = [(g, m) for g in levels for m in metrics if (g, m) in wide.columns]
    models = list(dict.fromkeys(stats["model"]))
    return wide.reindex(index=models, columns=pd.MultiIndex.from_tuples(cols, names=[by, "metric"]))


def group_table(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("dice", "hd_mm", "hd95_mm"),
    baseline: str | None = None,
    dice_percent: bool = True,
    by: str = "group",
    order: Sequence | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(group_stats(df, …), format_group_table(stats, …))`` — numeric long and formatted wide."""
    stats = group_stats(df, metrics, baseline, by=by, order=order)
    return stats, format_group_table(stats, baseline, dice_percent, by=by, order=order)
