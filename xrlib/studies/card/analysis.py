"""The fixed-budget view of the card: ranking per threat, the seed spread and the cost of each defense.

The verdicts (which defense is more or less robust than its control) are :mod:`xrlib.studies.card.evidence`'s.

All functions read the cell table of :func:`xrlib.studies.card.card.cells` (one row per model ×
column) and the victims' registry data; nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from xrlib.studies.card.columns import COLUMNS, Column
from xrlib.studies.card.rows import Victim

__all__ = ["MIN_SCORED_SHARE", "costs", "noise_floor", "ranked", "ranking", "unranked"]

#: A cell of a conditional column is ranked only when its statistic scores at least this share of its
#: images (for the noise column: at least half of the clean predictions are good, Dice ≥ 0.8).
MIN_SCORED_SHARE = 0.5


def _oriented(value, col: Column):
    """Higher = more robust: the value itself for Dice columns, minus it for rate columns."""
    return value if col.higher_better else -value


def ranked(cell_table: pd.DataFrame) -> pd.Series:
    """Whether each cell takes part in the ranking: its value is defined and it
    scores at least :data:`MIN_SCORED_SHARE` of its images (always true outside conditional columns)."""
    v = cell_table["value"].to_numpy(float)
    n, rows = cell_table["n_images"].to_numpy(float), cell_table["n_rows"].to_numpy(float)
    return pd.Series(~np.isnan(v) & (n >= MIN_SCORED_SHARE * rows) & (rows > 0), index=cell_table.index)


def unranked(cell_table: pd.DataFrame, models: Sequence[str], columns: Sequence[Column] = COLUMNS) -> pd.DataFrame:
    """The cells of ``models`` left out of the ranking (:func:`ranked`): ``column``, ``model``, ``value``,
    ``n_images`` (scored), ``n_rows`` and ``reason`` in words."""
    by_col = {c.key: c for c in columns if not c.missing}
    d = cell_table[cell_table["column"].isin(by_col) & cell_table["model"].isin(models)]
    d = d[~ranked(d)]
    reasons = [f"{by_col[c].scored or 'scored images'}: {int(n)} of {int(r)} images"
               + (" (none: not applicable)" if n == 0 else f" (< {MIN_SCORED_SHARE:.0%})")
               for c, n, r in zip(d["column"], d["n_images"], d["n_rows"])]
    return d.assign(reason=reasons)[["column", "model", "value", "n_images", "n_rows", "reason"]].reset_index(drop=True)


def ranking(cell_table: pd.DataFrame, models: Sequence[str], columns: Sequence[Column] = COLUMNS) -> pd.DataFrame:
    """Per available column, the ``models`` from most to least robust: ``column``, ``rank`` (1 = most
    robust; ties share the better rank), ``model``, ``value``, ``lo``, ``hi``. Cells that :func:`ranked`
    rejects (a conditional statistic on too few images) are left out; :func:`unranked` lists them."""
    out = []
    cell_table = cell_table[ranked(cell_table)]
    for col in columns:
        if col.missing:
            continue
        d = cell_table[(cell_table["column"] == col.key) & cell_table["model"].isin(models)].copy()
        d["rank"] = _oriented(d["value"], col).rank(ascending=False, method="min").astype(int)
        d = d.sort_values(["rank", "model"], kind="stable")
        out.append(d[["column", "rank", "model", "value", "lo", "hi"]])
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["column", "rank", "model", "value", "lo", "hi"])


def noise_floor(cell_table: pd.DataFrame, floor_models: Sequence[str], columns: Sequence[Column] = COLUMNS) -> pd.DataFrame:
    """Per available column, the spread (max − min) of the statistic over models that differ only by their
    training seed (descriptive; no verdict rests on it): ``column``, ``floor``, ``n_seeds`` (``floor`` is ``nan`` with fewer than two)."""
    rows = []
    cell_table = cell_table[ranked(cell_table)]
    for col in columns:
        if col.missing:
            continue
        v = cell_table.loc[(cell_table["column"] == col.key) & cell_table["model"].isin(floor_models), "value"].dropna()
        rows.append({"column": col.key, "floor": float(v.max() - v.min()) if len(v) >= 2 else np.nan, "n_seeds": len(v)})
    return pd.DataFrame(rows, columns=["column", "floor", "n_seeds"])


def costs(cell_table: pd.DataFrame, victims: Sequence[Victim]) -> pd.DataFrame:
    """Per model with a base: extra training time (s; ``nan`` where its chapter did not record it) and the
    change of both clean Dice values against the base (``model − base``)."""
    val = cell_table.set_index(["model", "column"])["value"]
    rows = []
    for v in victims:
        if v.base is None:
            continue
        rec = {"model": v.name, "defense": v.defense, "chapter": v.chapter, "base": v.base,
               "extra training (s)": np.nan if v.extra_s is None else float(v.extra_s)}
        for col in (c for c in COLUMNS if c.is_clean):
            rec[f"Δ {col.title}"] = val.get((v.name, col.key), np.nan) - val.get((v.base, col.key), np.nan)
        rows.append(rec)
    return pd.DataFrame(rows)
