"""Intervals, tests and verdicts that include both sources of variance: training seeds and test subjects.

Design
------
A test subject is the unit of inference (its images are correlated) and a training seed the unit of
model variability. Every statistic is first summarised per (model, seed, subject)
(:func:`unit_means`); the S subjects × K seeds table of those summaries is a crossed design

    y_ij = μ + a_i + b_j + e_ij,   a_i ~ (0, σ²_subject), b_j ~ (0, σ²_seed), e_ij ~ (0, σ²_res),

and the grand mean ȳ has Var(ȳ) = σ²_subject/S + σ²_seed/K + σ²_res/(S·K). :func:`crossed_mean` estimates it
from the two-way ANOVA without replication (mean squares of subjects and of seeds, a slightly
conservative combination, see there) and forms a t interval with Satterthwaite degrees of freedom;
:func:`variance_components` gives the method-of-moments components, cross-checked against
:class:`statsmodels.regression.mixed_linear_model.MixedLM` (crossed seed and subject effects, REML) in
the tests, as is the interval's standard error. It works on arrays of shape
``(..., S, K)``, so thousands of simulated tables are handled in one call (the calibration tests).

A paired contrast (a defense minus its control on the same subjects and images, seed k of both from
seed k of the base) is the same design applied to the per-(seed, subject) differences
(:func:`paired_contrast`). :func:`adjust` applies Holm or Benjamini–Hochberg over a table's verdicts,
:func:`mdd` gives each contrast's minimum detectable difference and :func:`verdict` the words.

With one seed the interval is the one-sample t interval over subjects, conditional on that training
(it omits seed variance; :func:`crossed_mean` says so in ``note``). With several source CTs (column
``source`` with more than one level) the source is the outer unit: subjects are averaged within a
source and the source plays the subject's role. Virtual subjects of one CT are conditional on that
anatomy: the interval speaks about that CT's virtual cohort, not about patients.

Minimum number of subjects
--------------------------
Below :data:`MIN_SUBJECTS` a cell prints ``"n/a (k subjects)"`` (:func:`format_interval`) instead of an
interval: with 2 subjects the subject variance rests on one degree of freedom, the t quantile is 12.7
and the "interval" is the spread of two values scaled by chance; 3 subjects give 2 degrees of freedom,
the fewest for which a t interval has a finite expected width. One subject (or one source) has no
subject variance at all and raises :class:`~xrlib.core.errors.InputError` (never a zero-width interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sst

from xrlib.core.errors import InputError

__all__ = ["MIN_SUBJECTS", "VERDICT_ALPHA", "Interval", "adjust", "crossed_mean", "format_interval", "interval_table", "mdd",
           "paired_contrast", "summarise", "unit_means", "variance_components", "verdict"]

#: Fewest subjects (or sources) for which an interval is printed (module docstring).
MIN_SUBJECTS = 3
#: Level of the tests, of the adjusted p-values in a verdict and of the intervals (1 − α).
VERDICT_ALPHA = 0.05
#: Power at which :func:`mdd` states the minimum detectable difference.
MDD_POWER = 0.8


@dataclass(frozen=True)
class Interval:
    """A mean with its t interval: ``se`` and Satterthwaite ``df``; ``lo``/``hi`` are ``nan`` when the cell
    has fewer than :data:`MIN_SUBJECTS` subjects (``note`` says why)."""

    mean: float
    lo: float
    hi: float
    se: float
    df: float
    n_subjects: int
    n_seeds: int
    note: str = ""

    @property
    def p(self) -> float:
        """Two-sided p-value of ``mean = 0`` (t test, same variance model); ``nan`` without an interval."""
        if not (self.se > 0) or math.isnan(self.df):
            return math.nan
        return float(2 * sst.t.sf(abs(self.mean) / self.se, self.df))

    @property
    def mdd(self) -> float:
        """Minimum detectable difference at :data:`VERDICT_ALPHA` (two-sided) and power :data:`MDD_POWER`."""
        return mdd(self.se, self.df)

    def text(self, digits: int = 3) -> str:
        return format_interval(self, digits)


def _components(y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mean squares of a two-way table without replication, ``y`` of shape ``(..., S, K)``."""
    S, K = y.shape[-2:]
    g = y.mean(axis=(-2, -1), keepdims=True)
    ri = y.mean(axis=-1, keepdims=True)  # subject means
    cj = y.mean(axis=-2, keepdims=True)  # seed means
    ms_a = K * ((ri - g) ** 2).sum(axis=(-2, -1)) / (S - 1)
    ms_b = S * ((cj - g) ** 2).sum(axis=(-2, -1)) / (K - 1) if K > 1 else np.zeros(y.shape[:-2])
    resid = y - ri - cj + g
    ms_e = (resid ** 2).sum(axis=(-2, -1)) / ((S - 1) * (K - 1)) if K > 1 else np.zeros(y.shape[:-2])
    return g[..., 0, 0], ms_a, ms_b, ms_e


def variance_components(y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Method-of-moments (σ²_subject, σ²_seed, σ²_res) of a complete subjects × seeds table ``(..., S, K)``,
    clamped at 0 (for a balanced table: the REML estimates of the crossed mixed model when none is clamped)."""
    y = np.asarray(y, dtype=float)
    S, K = y.shape[-2:]
    _, ms_a, ms_b, ms_e = _components(y)
    return np.maximum((ms_a - ms_e) / K, 0.0), np.maximum((ms_b - ms_e) / S, 0.0), ms_e


def crossed_mean(y, level: float = 1 - VERDICT_ALPHA) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grand mean, its interval ``(lo, hi)``, standard error and degrees of freedom of a subjects × seeds table.

    ``y`` has shape ``(..., S, K)`` (subjects along the second-last axis, seeds along the last), complete
    (no ``nan``). Variance of the mean: V = s²(subject means)/S + s²(seed means)/K = (MS_subject + MS_seed)/(S·K).
    Each term estimates its own component plus σ²_res/(S·K), so E[V] = Var(ȳ) + σ²_res/(S·K): conservative
    by one residual share, and free of the pre-test "drop a component whose mean square falls below the
    residual's", which under-covers when the seed variance is real but three seeds happen to agree
    (tests/test_evidence_calibration.py shows both). Degrees of freedom: Satterthwaite,
    (MS_subject + MS_seed)² / (MS_subject²/(S−1) + MS_seed²/(K−1)), but at most K − 1 when the seed term is
    the larger part of V — Satterthwaite's df is optimistic exactly when a few-seed term dominates.
    With K = 1 it is the one-sample t interval over subjects (df S − 1; it omits seed variance).
    A table whose values are all equal has se 0 and a point interval. Raises :class:`InputError` with
    S < 2 (one cluster: no subject variance, never a zero-width interval) or any ``nan``.
    """
    y = np.asarray(y, dtype=float)
    if y.ndim < 2:
        raise InputError(None, f"crossed_mean: expected a subjects × seeds table, got shape {y.shape}")
    S, K = y.shape[-2:]
    if S < 2:
        raise InputError(None, f"one subject (cluster) only: no subject variance, no interval (table {S} × {K})")
    if K < 1:
        raise InputError(None, "no seed in the table")
    if np.isnan(y).any():
        raise InputError(None, "the subjects × seeds table has missing cells (nan); every subject needs every seed")
    g, ms_a, ms_b, _ = _components(y)
    num = ms_a + ms_b
    var = num / (S * K)
    if K == 1:
        df = np.full_like(var, S - 1.0)
    else:
        den = ms_a ** 2 / (S - 1.0) + ms_b ** 2 / (K - 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            df = np.where(den > 0, num ** 2 / np.where(den > 0, den, 1.0), np.nan)
            df = np.where(ms_b > ms_a, np.minimum(df, K - 1.0), df)
    se = np.sqrt(var)
    q = sst.t.ppf(0.5 + level / 2, np.where(np.isnan(df), 1.0, df))
    half = np.where(se > 0, q * se, 0.0)
    return g, g - half, g + half, se, df


def mdd(se, df, alpha: float = VERDICT_ALPHA, power: float = MDD_POWER):
    """Minimum detectable difference of a two-sided t test: (t_{1−α/2, df} + t_{power, df}) · se."""
    se, df = np.asarray(se, float), np.asarray(df, float)
    with np.errstate(invalid="ignore"):
        out = (sst.t.ppf(1 - alpha / 2, df) + sst.t.ppf(power, df)) * se
    return float(out) if out.ndim == 0 else out


def _unit(df: pd.DataFrame) -> str:
    return "source" if "source" in df and df["source"].nunique() > 1 else "subject"


def unit_means(df: pd.DataFrame, value: str, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Mean of ``value`` per ``by`` × seed × unit (images with a ``nan`` value are not scored).

    The unit is the subject, or the source CT when the column ``source`` has several levels (subjects
    are then averaged within their source first). A table without a ``seed`` column is one seed (0).
    Columns: ``by…``, ``seed``, ``unit``, ``value``, ``n_images``.
    """
    by = [by] if isinstance(by, str) else list(by)
    d = df.copy()
    if "seed" not in d:
        d["seed"] = 0
    d = d[~d[value].isna()]
    d = d.assign(_v=d[value].astype(float), subject=d["subject"].astype(str))
    per_subject = d.groupby(by + ["seed", "subject"] + (["source"] if "source" in d else []), sort=False, dropna=False)
    s = per_subject.agg(value=("_v", "mean"), n_images=("_v", "size")).reset_index()
    if _unit(df) == "source":
        s = s.groupby(by + ["seed", "source"], sort=False).agg(value=("value", "mean"), n_images=("n_images", "sum"))
        s = s.reset_index().rename(columns={"source": "unit"})
    else:
        s = s.rename(columns={"subject": "unit"}).drop(columns=[c for c in ("source",) if c in s])
    return s[by + ["seed", "unit", "value", "n_images"]]


def summarise(y, level: float = 1 - VERDICT_ALPHA) -> Interval:
    """:func:`crossed_mean` of one subjects × seeds table as an :class:`Interval`; fewer than
    :data:`MIN_SUBJECTS` subjects give the mean without interval (``note`` "n/a (k subjects)")."""
    y = np.asarray(y, float)
    if y.ndim == 1:
        y = y[:, None]
    S, K = y.shape
    g, lo, hi, se, df = (float(x) for x in crossed_mean(y, level))
    note = "" if K > 1 else "1 seed: the interval omits training-seed variance"
    if S < MIN_SUBJECTS:
        return Interval(g, math.nan, math.nan, math.nan, math.nan, S, K, f"n/a ({S} subjects)")
    return Interval(g, lo, hi, se, df, S, K, note)


def format_interval(iv: Interval, digits: int = 3) -> str:
    """``"0.812 [0.78, 0.84] (12 subj × 3 seeds)"``, or ``"0.812, n/a (2 subjects)"`` below :data:`MIN_SUBJECTS`."""
    size = f"{iv.n_subjects} subj × {iv.n_seeds} seed{'s' if iv.n_seeds != 1 else ''}"
    if math.isnan(iv.lo):
        return f"{iv.mean:.{digits}f}, n/a ({iv.n_subjects} subjects)"
    return f"{iv.mean:.{digits}f} [{iv.lo:.{max(digits - 1, 1)}f}, {iv.hi:.{max(digits - 1, 1)}f}] ({size})"


def adjust(p, method: str = "holm") -> np.ndarray:
    """Adjusted p-values over one table's verdicts (``"holm"`` or ``"fdr_bh"``, via
    :func:`statsmodels.stats.multitest.multipletests`); ``nan`` entries stay ``nan`` and are not counted."""
    from statsmodels.stats.multitest import multipletests

    if method not in ("holm", "fdr_bh"):
        raise InputError(None, f"adjust: method must be 'holm' or 'fdr_bh', got {method!r}")
    p = np.asarray(p, float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=VERDICT_ALPHA, method=method)[1]
    return out


def verdict(difference: float, lo: float, hi: float, p_adjusted: float, mdd_value: float,
            higher_better: bool = True, alpha: float = VERDICT_ALPHA) -> str:
    """``"more robust"``/``"less robust"`` only where the interval excludes 0 and the adjusted p < ``alpha``;
    otherwise ``"no evidence at this size (MDD x)"``; ``"n/a (…)"`` without an interval, or without a p where the
    interval has no width (the difference is the same for every subject and seed: nothing to test)."""
    if math.isnan(lo) or math.isnan(hi):
        return "n/a (too few subjects for an interval)"
    if math.isnan(p_adjusted):
        return ("n/a (no variance: the difference is the same for every subject and seed, e.g. b50 censored at "
                "b_max in both arms)" if lo == hi else "n/a (no p-value)")
    if (lo > 0 or hi < 0) and p_adjusted < alpha:
        better = (difference > 0) == higher_better
        return "more robust" if better else "less robust"
    return f"no evidence at this size (MDD {mdd_value:.3g})"


def _matrix(u: pd.DataFrame, value: str, where: str) -> pd.DataFrame:
    m = u.pivot_table(index="unit", columns="seed", values=value, aggfunc="mean")
    if m.isna().any().any():
        miss = [(s, k) for s in m.index for k in m.columns if pd.isna(m.loc[s, k])]
        raise InputError(where or None, f"missing (subject, seed) cells {miss[:5]}{' …' if len(miss) > 5 else ''}: "
                                        "every subject must be scored under every seed")
    return m


def interval_table(units: pd.DataFrame, value: str = "value", by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """One :func:`summarise` per group of a per-unit table (columns ``by…``, ``seed``, ``unit``, ``value``):
    ``by…``, ``value``, ``lo``, ``hi``, ``se``, ``df``, ``n_subjects``, ``n_seeds``, ``note``. Units with a
    ``nan`` value are dropped first; a group left with one subject raises :class:`InputError`."""
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, g in units.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        where = ", ".join(f"{k}={v}" for k, v in zip(by, key))
        g = g[~g[value].isna()]
        iv = summarise(_matrix(g, value, where).to_numpy(float)) if len(g) else None
        rec = dict(zip(by, key))
        if iv is None:
            rec.update(value=math.nan, lo=math.nan, hi=math.nan, se=math.nan, df=math.nan, n_subjects=0, n_seeds=0,
                       note="no scored image")
        else:
            rec.update(value=iv.mean, lo=iv.lo, hi=iv.hi, se=iv.se, df=iv.df, n_subjects=iv.n_subjects,
                       n_seeds=iv.n_seeds, note=iv.note)
        rows.append(rec)
    return pd.DataFrame(rows)


def paired_contrast(units: pd.DataFrame, a: str, b: str, value: str = "value", model: str = "model") -> Interval:
    """Interval of ``a − b`` (two levels of ``model`` in a per-unit table), paired on (unit, seed): seed k of
    ``a`` against seed k of ``b``. Subjects or seeds present in only one raise :class:`InputError`."""
    ua = units[units[model] == a].dropna(subset=[value])
    ub = units[units[model] == b].dropna(subset=[value])
    where = f"{a} − {b}"
    ma, mb = _matrix(ua, value, where), _matrix(ub, value, where)
    if set(ma.index) != set(mb.index) or set(ma.columns) != set(mb.columns):
        raise InputError(where, "a paired contrast needs the same subjects and seeds in both models: subjects only "
                                f"in one {sorted(set(ma.index) ^ set(mb.index))[:5]}, seeds only in one "
                                f"{sorted(set(ma.columns) ^ set(mb.columns))}")
    return summarise((ma - mb.loc[ma.index, ma.columns]).to_numpy(float))
