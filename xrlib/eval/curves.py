"""Robustness curves summarised over a whole budget grid: area under mean Dice over log-budget and b50.

Per (model, seed, subject) unit (:func:`xrlib.eval.evidence.unit_means` conventions) the curve is the mean
Dice of the unit's images at each budget of the grid; the summaries are computed per unit and their
interval by the seeds × subjects design of :mod:`xrlib.eval.evidence`.

Log axis and budget 0
---------------------
Budgets are positive severities (rotation ``|α|`` in deg, dose halvings, ε, pose b, ξ, acquisition scale).
The log axis runs from the grid's first positive budget b_1 to its largest b_max; budget 0 has no place
on it and is used only as the curve's clean start: the clean score of a unit is its mean Dice at budget 0
when the table has budget-0 rows, else the mean of ``dice_clean``.

* ``auc``: trapezoidal area under the unit's mean Dice over log10(budget) from b_1 to b_max (Dice × decades);
* ``rel_auc``: ``auc / (log10(b_max / b_1) · clean)`` — the retained fraction, 1 = no loss over the grid;
* ``b50``: the budget at which mean Dice first falls to half the clean score, interpolated linearly on
  log-budget between grid points; between budget 0 and b_1 (already halved at b_1) linearly on the budget.
  A unit that never halves is censored at b_max (``b50_censored``). Its interval is computed on log10(b50)
  (a geometric mean); a model with more than half of its units censored reports "> b_max" instead.
* Rates such as ``success`` count only images whose clean prediction is good (:func:`good_clean`).

Reported only for models that beat a constant mean-mask baseline on clean images
(:func:`mean_mask_dice`, :func:`beats_baseline`): a curve of a model no better than the average mask
says nothing about robustness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from xrlib.core.errors import InputError
from xrlib.eval.evidence import Interval

__all__ = ["CURVE_STATISTICS", "GOOD_CLEAN", "beats_baseline", "curve_table", "curve_units", "good_clean", "halving",
           "mean_mask_dice"]

#: A clean prediction is good (counted in rates such as ``success``) at Dice ≥ this.
GOOD_CLEAN = 0.8


def good_clean(df: pd.DataFrame, column: str = "success", clean_min: float = GOOD_CLEAN) -> pd.Series:
    """``column`` as floats, ``nan`` (not scored) where the image's clean Dice is below ``clean_min``."""
    v = pd.to_numeric(df[column].astype("Float64"), errors="coerce").astype(float)
    return v.where(df["dice_clean"].astype(float) >= clean_min)


def halving(budgets: np.ndarray, dice: np.ndarray, clean: float) -> tuple[float, bool]:
    """``(b50, censored)`` of one curve: ``budgets`` positive and ascending, ``dice`` its mean Dice there,
    ``clean`` the Dice at budget 0 (module docstring). ``(nan, False)`` when ``clean`` is not positive."""
    b, m = np.asarray(budgets, float), np.asarray(dice, float)
    if not clean > 0:
        return math.nan, False
    h = clean / 2.0
    below = np.nonzero(m <= h)[0]
    if len(below) == 0:
        return float(b[-1]), True
    k = int(below[0])
    if k == 0:
        return float(b[0] * (clean - h) / (clean - m[0])), False
    x0, x1 = math.log10(b[k - 1]), math.log10(b[k])
    y0, y1 = m[k - 1], m[k]
    return float(10 ** (x0 + (x1 - x0) * (y0 - h) / (y0 - y1))), False


def curve_units(df: pd.DataFrame, by: Sequence[str] = ("model",), metric: str = "dice") -> pd.DataFrame:
    """Per ``by`` × seed × unit: ``clean``, ``auc``, ``rel_auc``, ``b50``, ``log10_b50``, ``b50_censored``,
    ``b_min``, ``b_max`` (module docstring). A table without a ``seed`` column is one seed (0); the unit
    is the subject, or the source CT when several sources exist (subjects averaged within it).
    Raises :class:`InputError` when fewer than two positive budgets are present (no log-span)."""
    by = [by] if isinstance(by, str) else list(by)
    d = df.copy()
    if "seed" not in d:
        d["seed"] = 0
    d["subject"] = d["subject"].astype(str)
    unit = "source" if "source" in d and d["source"].nunique() > 1 else "subject"
    grid = np.sort(d.loc[d["budget"] > 0, "budget"].unique().astype(float))
    if len(grid) < 2:
        raise InputError(None, f"a curve summary needs at least two positive budgets, got {[float(b) for b in grid]}")
    keys = by + ["seed", unit]
    sub = ["subject"] if unit == "source" else []
    per = d.groupby(keys + sub + ["budget"], sort=False)[metric].mean().reset_index()
    per = per.groupby(keys + ["budget"], sort=False)[metric].mean().reset_index()
    has_zero = (d["budget"] == 0).any()
    if not has_zero:
        cl = d.groupby(keys + sub, sort=False)["dice_clean"].mean().reset_index()
        cl = cl.groupby(keys, sort=False)["dice_clean"].mean()
    span = math.log10(grid[-1] / grid[0])
    rows = []
    for key, g in per.groupby(keys, sort=False):
        s = g.set_index("budget")[metric]
        missing = [b for b in grid if b not in s.index]
        if missing:
            raise InputError(None, f"{dict(zip(keys, key))}: no images at budget(s) {missing[:5]} of the grid")
        m = s.loc[grid].to_numpy(float)
        clean = float(s.loc[0.0]) if has_zero and 0.0 in s.index else float(cl.loc[key]) if not has_zero else math.nan
        auc = float(np.trapezoid(m, np.log10(grid)))
        b50, cens = halving(grid, m, clean)
        rows.append({**dict(zip(keys, key)), "clean": clean, "auc": auc,
                     "rel_auc": auc / (span * clean) if clean > 0 else math.nan, "b50": b50,
                     "log10_b50": math.log10(b50) if b50 > 0 else math.nan, "b50_censored": cens,
                     "b_min": float(grid[0]), "b_max": float(grid[-1])})
    out = pd.DataFrame(rows)
    return out.rename(columns={unit: "unit"})


def mean_mask_dice(train_masks, test_masks, threshold: float = 0.5) -> np.ndarray:
    """Per-image Dice of the constant baseline: the mean training mask thresholded at ``threshold``.

    ``train_masks`` ``(N, H, W)`` and ``test_masks`` ``(M, H, W)`` binary (same H × W). Two empty masks
    score 1 (nothing to find, nothing predicted)."""
    tr, te = np.asarray(train_masks, float), np.asarray(test_masks) > 0.5
    if tr.ndim != 3 or te.ndim != 3 or tr.shape[1:] != te.shape[1:]:
        raise InputError(None, f"mean_mask_dice: expected (N, H, W) masks of one size, got {tr.shape} and {te.shape}")
    pred = tr.mean(axis=0) >= threshold
    inter = (te & pred).sum(axis=(1, 2))
    tot = te.sum(axis=(1, 2)) + pred.sum()
    return np.where(tot > 0, 2.0 * inter / np.where(tot > 0, tot, 1), 1.0)


def beats_baseline(clean: Interval, baseline: float) -> bool:
    """Whether a model's clean Dice beats the constant baseline: the interval's lower end above it, or the
    mean where there is no interval (too few subjects)."""
    ref = clean.mean if math.isnan(clean.lo) else clean.lo
    return bool(ref > baseline)


#: The curve statistics of :func:`curve_table`, in order.
CURVE_STATISTICS = ("clean", "auc", "rel_auc", "b50")


def curve_table(units: pd.DataFrame, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Per group of :func:`curve_units` and statistic of :data:`CURVE_STATISTICS`: the interval of
    :func:`xrlib.eval.evidence.interval_table` — for ``b50`` on log10(b50), back-transformed (a geometric
    mean), and "> b_max" (``value`` b_max, no interval, ``censored`` True) when more than half of the group's
    units never halve. Columns: ``by…``, ``statistic``, ``value``, ``lo``, ``hi``, ``se``, ``df``,
    ``n_subjects``, ``n_seeds``, ``censored``, ``note``."""
    from xrlib.eval.evidence import interval_table

    by = [by] if isinstance(by, str) else list(by)
    out = []
    for stat in CURVE_STATISTICS:
        col = "log10_b50" if stat == "b50" else stat
        t = interval_table(units, col, by)
        t.insert(len(by), "statistic", stat)
        t["censored"] = False
        if stat == "b50":
            frac = units.groupby(by, sort=False)["b50_censored"].mean().reindex(pd.MultiIndex.from_frame(t[by])
                                                                                  if len(by) > 1 else t[by[0]])
            bmax = units.groupby(by, sort=False)["b_max"].max().reindex(frac.index)
            n_c = units.groupby(by, sort=False)["b50_censored"].sum().reindex(frac.index)
            for c in ("value", "lo", "hi"):
                t[c] = 10 ** t[c]
            cens = frac.to_numpy() > 0.5
            t.loc[cens, "value"] = bmax.to_numpy()[cens]
            t.loc[cens, ["lo", "hi", "se", "df"]] = math.nan
            t["censored"] = cens
            t["note"] = [f"> b_max = {b:g}" if c else (f"{int(n)} unit(s) censored at b_max = {b:g}: a lower bound"
                                                       if n else note)
                         for c, n, b, note in zip(cens, n_c.to_numpy(), bmax.to_numpy(), t["note"])]
        out.append(t)
    return pd.concat(out, ignore_index=True)
