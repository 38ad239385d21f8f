"""The card's evidence: curve summaries per model × threat with seeds × subjects intervals, and the verdicts.

Reads the chapters' robustness tables (the results contract, one row per model × budget × image, plus an
optional ``seed`` column: a model's rows without it are one seed, 0) and writes

* ``<run>/card/cells.csv`` — :data:`CELL_FIELDS`: per model, threat and statistic (``clean``, ``auc``,
  ``rel_auc``, ``b50`` of :mod:`xrlib.eval.curves`; ``dice@b`` in the fixed-budget view) the value, its
  95 % interval (``nan`` with fewer than :data:`~xrlib.eval.evidence.MIN_SUBJECTS` subjects) and the
  subjects × seeds behind it, and a ``note``;
* ``<run>/card/verdicts.csv`` — :data:`VERDICT_FIELDS`: per contrast (a defense against its control,
  trained identically without the defense, seed k of both from seed k of the base; and the A/A row, the
  base against the base retrained with other seeds), threat and statistic the paired difference, its
  interval, p, the p adjusted over every verdict of the table (Holm) and the minimum detectable difference,
  and the verdict of :func:`xrlib.eval.evidence.verdict`.

The severity axis of each threat (:data:`CURVE_THREATS`): rotation ``|α|`` (deg), noise the dose reduction
ref/dose (ref: the grid's largest dose; its log is the number of halvings), PGD ε, pose b, learned ξ,
acquisition the scale. Curve summaries are reported only for models that beat the constant mean-mask
baseline on clean images when a baseline is given (:func:`xrlib.eval.curves.beats_baseline`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.core.atomic import write_csv_atomic
from xrlib.eval import evidence as ev
from xrlib.eval.curves import beats_baseline, curve_table, curve_units
from xrlib.eval.robustness import robustness_path

__all__ = ["CELL_FIELDS", "CURVE_THREATS", "NO_CONTROL", "Contrast", "CurveThreat", "VERDICT_FIELDS", "aa_warning", "curve_cells",
           "b50_budgets", "fixed_cells", "read_tables", "threat_rows", "verdict_table", "verdicts_markdown", "write_evidence"]

CELL_FIELDS = ("model", "threat", "statistic", "value", "lo", "hi", "n_subjects", "n_seeds", "note")
VERDICT_FIELDS = ("defense", "control", "threat", "statistic", "difference", "lo", "hi", "p", "p_adjusted", "mdd",
                  "verdict", "n_subjects", "n_seeds", "kind", "note")
#: Fewest seeds per model for a verdict: with one, the interval omits training-seed variance (a verdict would
#: compare two trainings, not two recipes).
MIN_VERDICT_SEEDS = 2
#: Seeds of the evidence design; fewer (2, the smoke profile's) under-cover when seed variance dominates
#: (tests/test_evidence_calibration.py), and the row's note says so.
DESIGN_SEEDS = 3
#: Statistics that carry a verdict, with "higher is more robust".
VERDICT_STATISTICS = {"rel_auc": True, "b50": True}


def _keep(df: pd.DataFrame, **eq) -> pd.DataFrame:
    for col, val in eq.items():
        if col in df:
            df = df[df[col].astype(str) == val]
    return df


def _dose_reduction(df: pd.DataFrame) -> pd.Series:
    b = df["budget"].astype(float)
    pos = b[b > 0]
    ref = float(pos.max()) if len(pos) else math.nan
    return pd.Series(np.where(b > 0, ref / b.where(b > 0, 1.0), 0.0), index=df.index)


@dataclass(frozen=True)
class CurveThreat:
    """A threat of the card over its budget grid: ``key``, ``title``, the chapter ``tables`` (CSV names; with
    several, an image's Dice is the minimum over them — the strongest attack per image), ``select`` (the card's
    rows of a table) and ``severity`` (the budget axis, positive, 0 = clean) with its ``unit``."""

    key: str
    title: str
    tables: tuple[str, ...]
    unit: str
    select: Callable[[pd.DataFrame], pd.DataFrame] = lambda d: d
    severity: Callable[[pd.DataFrame], pd.Series] = lambda d: d["budget"].astype(float)


#: The card's threats over their budget grids, in the card's order.
CURVE_THREATS: tuple[CurveThreat, ...] = (
    CurveThreat("rotation", "rotation", ("rotation",), "|α| (deg)", severity=lambda d: d["alpha"].astype(float).abs()),
    CurveThreat("pose", "worst-case pose", ("pose",), "b"),
    CurveThreat("acquisition", "acquisition shift", ("acquisition",), "scale"),
    CurveThreat("noise", "quantum noise", ("noise",), "dose reduction (ref/dose)",
                select=lambda d: _keep(d, arm="rerendered"), severity=_dose_reduction),
    CurveThreat("pgd", "PGD/SegPGD L∞", ("pgd", "segpgd"), "ε"),
    CurveThreat("learned", "learned deformation + bias", ("deformation",), "ξ",
                select=lambda d: _keep(d, method="per-image", variant="DV")),
)

_IMAGE = ("model", "seed", "subject", "severity", "_image")  # + alpha where the tables have it


def threat_rows(tables: Mapping[str, pd.DataFrame], threat: CurveThreat) -> pd.DataFrame:
    """The rows of ``threat`` from its chapter ``tables`` (``{csv name: contract rows}``): ``model``, ``seed``,
    ``subject``, ``severity``, ``dice``, ``dice_clean`` (+ ``source`` when present); several tables combine per
    image (same model, seed, subject, severity and position within them) by the minimum Dice. Empty when no
    table of the threat is given."""
    parts = []
    for name in threat.tables:
        if name not in tables:
            continue
        d = threat.select(tables[name]).copy()
        if "seed" not in d:
            d["seed"] = 0
        d["subject"] = d["subject"].astype(str)
        d["severity"] = threat.severity(d).to_numpy(float)
        pos = ["model", "seed", "subject", "severity"] + (["alpha"] if "alpha" in d else [])
        d["_image"] = d.groupby(pos, sort=False).cumcount()
        keep = [c for c in (*_IMAGE, "alpha", "dice", "dice_clean", "source") if c in d]
        parts.append(d[keep])
    if not parts:
        return pd.DataFrame(columns=[*_IMAGE[:4], "dice", "dice_clean"])
    d = pd.concat(parts, ignore_index=True)
    key = list(_IMAGE) + (["alpha"] if "alpha" in d else [])
    agg = {"dice": "min", "dice_clean": "first", **({"source": "first"} if "source" in d else {})}
    d = d.groupby(key, sort=False, dropna=False).agg(agg).reset_index()
    return d.drop(columns="_image")


def curve_cells(rows: Mapping[str, pd.DataFrame], baseline: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(cells, units)``: the curve statistics of every model under every threat in ``rows`` (``{threat key:
    threat_rows}``) as :data:`CELL_FIELDS` rows, and the per-(model, seed, unit) summaries behind them (for the
    verdicts). With a ``baseline`` (the mean-mask Dice on clean images), a model whose clean Dice does not beat
    it keeps only its ``clean`` cell; its curve cells are ``nan`` with the note saying why. A model whose curve
    cannot be summarised (one subject, a budget of the grid missing) gets ``nan`` cells whose note names the
    problem. The budget grid is each model's own (every model of a chapter table shares it)."""
    from xrlib.core.errors import InputError
    from xrlib.eval.curves import CURVE_STATISTICS

    cells, units = [], []
    for key, d in rows.items():
        for model, dm in d.groupby("model", sort=False):
            try:
                u = curve_units(dm.rename(columns={"severity": "budget"}))
                t = curve_table(u)
            except InputError as e:  # e.g. one subject, or a budget of the grid missing: named, not dropped
                t = pd.DataFrame({"model": model, "statistic": list(CURVE_STATISTICS), "value": math.nan,
                                  "lo": math.nan, "hi": math.nan, "n_subjects": dm["subject"].nunique(),
                                  "n_seeds": dm["seed"].nunique(), "note": f"n/a ({e.problem})"})
                u = None
            t["threat"] = key
            if baseline is not None and u is not None:
                r = t[t["statistic"] == "clean"].iloc[0]
                iv = ev.Interval(r["value"], r["lo"], r["hi"], r["se"], r["df"], r["n_subjects"], r["n_seeds"])
                if not beats_baseline(iv, baseline):
                    sel = t["statistic"] != "clean"
                    t.loc[sel, ["value", "lo", "hi"]] = math.nan
                    t.loc[sel, "note"] = f"clean Dice does not beat the mean-mask baseline ({baseline:.3f})"
            cells.append(t)
            if u is not None:
                units.append(u.assign(threat=key))
    if not cells:
        return pd.DataFrame(columns=list(CELL_FIELDS)), pd.DataFrame()
    out = pd.concat(cells, ignore_index=True)
    return out[list(CELL_FIELDS)], (pd.concat(units, ignore_index=True) if units else pd.DataFrame())


def fixed_cells(rows: Mapping[str, pd.DataFrame], budgets: Mapping[str, float]) -> pd.DataFrame:
    """The secondary, fixed-budget view: mean Dice per model at the grid budget nearest ``budgets[threat]``
    (on the log axis), with its seeds × subjects interval; statistic ``dice@<budget>``."""
    out = []
    for key, d in rows.items():
        if key not in budgets or not len(d):
            continue
        grid = np.unique(d.loc[d["severity"] > 0, "severity"].to_numpy(float))
        if not len(grid):
            continue
        b = float(grid[np.argmin(np.abs(np.log(grid) - math.log(budgets[key])))])
        at = d[np.isclose(d["severity"], b)]
        t = ev.interval_table(ev.unit_means(at, "dice"), "value")
        t["threat"], t["statistic"] = key, f"dice@{b:g}"
        out.append(t)
    if not out:
        return pd.DataFrame(columns=list(CELL_FIELDS))
    return pd.concat(out, ignore_index=True)[list(CELL_FIELDS)]


def b50_budgets(cells: pd.DataFrame, base: str) -> dict[str, float]:
    """``{threat: b50}`` of the ``base`` model where its b50 is defined and not censored: the budgets of the
    fixed-budget view (:func:`fixed_cells`), so that it sits where the base model has lost half its Dice."""
    d = cells[(cells["model"] == base) & (cells["statistic"] == "b50")]
    ok = d["value"].notna() & ~d["note"].fillna("").astype(str).str.startswith("> b_max")
    return {t: float(v) for t, v in zip(d.loc[ok, "threat"], d.loc[ok, "value"]) if v > 0}


@dataclass(frozen=True)
class Contrast:
    """A verdict-carrying pair: ``defense`` against ``control``; ``kind`` ``"defense"`` pairs seed k with seed k
    (the same warm start), ``"A/A"`` pairs the two models' seeds by rank (independent trainings)."""

    defense: str
    control: str
    kind: str = "defense"


def _rank_seeds(u: pd.DataFrame) -> pd.DataFrame:
    ranks = {s: i for i, s in enumerate(sorted(u["seed"].unique()))}
    return u.assign(seed=u["seed"].map(ranks))


#: Contrast kind of a defended model compared with its base because no control was trained: shown with its
#: interval, never given a verdict (the base lacks the defended model's extra training) and not adjusted over.
NO_CONTROL = "vs base (no control)"


def verdict_table(units: pd.DataFrame, contrasts: Sequence[Contrast], method: str = "holm") -> pd.DataFrame:
    """Per contrast × threat × statistic of :data:`VERDICT_STATISTICS`: the paired difference (defense −
    control; for ``b50`` of log10 b50, i.e. a ratio of halving budgets in decades), its interval, p, p adjusted
    over every verdict-carrying row of the table (``method``), the MDD and the verdict. A contrast whose models
    are missing from a threat, whose subjects or seeds do not pair, or that has no interval (too few subjects)
    gets a row with the reason and no p; so does one with fewer than :data:`MIN_VERDICT_SEEDS` seeds (its interval
    is shown); a :data:`NO_CONTROL` contrast gets its interval and p over the seeds both models have, no verdict."""
    from xrlib.core.errors import InputError

    rows = []
    for c in contrasts:
        for threat, u in units.groupby("threat", sort=False):
            a, b = u[u["model"] == c.defense], u[u["model"] == c.control]
            for stat, higher in VERDICT_STATISTICS.items():
                col = "log10_b50" if stat == "b50" else stat
                rec = {"defense": c.defense, "control": c.control, "threat": threat, "statistic": stat, "kind": c.kind,
                       "higher_better": higher}
                if not len(a) or not len(b):
                    rows.append({**rec, "verdict": "n/a (a model of the pair is not in this threat's table)"})
                    continue
                if c.kind == "A/A":
                    a, b = _rank_seeds(a), _rank_seeds(b)
                elif c.kind == NO_CONTROL:  # descriptive: over the seeds both models have (the base may have more)
                    both = set(a["seed"]) & set(b["seed"])
                    a, b = a[a["seed"].isin(both)], b[b["seed"].isin(both)]
                try:
                    iv = ev.paired_contrast(pd.concat([a, b]).rename(columns={col: "_v"}), c.defense, c.control, "_v")
                except InputError as e:
                    rows.append({**rec, "verdict": f"n/a ({e.problem})"})
                    continue
                rec.update(difference=iv.mean, lo=iv.lo, hi=iv.hi, p=iv.p, mdd=iv.mdd, n_subjects=iv.n_subjects,
                           n_seeds=iv.n_seeds, note=iv.note)
                if iv.n_seeds < DESIGN_SEEDS:
                    rec["note"] = (f"{iv.n_seeds} seed(s), fewer than the design's {DESIGN_SEEDS}: the interval may "
                                   "under-cover when seed variance dominates")
                if iv.n_seeds < MIN_VERDICT_SEEDS and c.kind != NO_CONTROL:
                    rec.update(p=math.nan, verdict=f"n/a ({iv.n_seeds} seed: no training-seed variance, no verdict)")
                if c.kind == NO_CONTROL:
                    rec["verdict"] = "no verdict: no control trained (the difference includes the extra training)"
                rows.append(rec)
    t = pd.DataFrame(rows).reindex(columns=[*VERDICT_FIELDS, "higher_better"])
    family = (t["kind"] != NO_CONTROL).to_numpy() if len(t) else np.zeros(0, bool)
    t["p_adjusted"] = np.where(family, ev.adjust(np.where(family, t["p"].to_numpy(float), np.nan), method), np.nan) \
        if len(t) else []
    t["verdict"] = [v if isinstance(v, str) else ev.verdict(d, lo, hi, pa, m, hb)
                    for v, d, lo, hi, pa, m, hb in zip(t["verdict"], t["difference"], t["lo"], t["hi"], t["p_adjusted"],
                                                       t["mdd"], t["higher_better"])]
    return t.drop(columns="higher_better")


def aa_warning(verdicts: pd.DataFrame) -> str:
    """A warning (never a failure) when an A/A row got a verdict: the design found a difference between two
    trainings of one recipe, so its intervals are too narrow for this build's variance; "" otherwise."""
    hit = verdicts[(verdicts["kind"] == "A/A") & verdicts["verdict"].isin(["more robust", "less robust"])]
    if not len(hit):
        return ""
    where = ", ".join(f"{t} {s}" for t, s in zip(hit["threat"], hit["statistic"]))
    return (f"**Warning:** the A/A row (the base against itself retrained with other seeds) got a verdict under {where}: "
            "a difference between two trainings of one recipe. Read every verdict of this card with that in mind.")


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def verdicts_markdown(verdicts: pd.DataFrame) -> str:
    """The verdict table as Markdown: contrast, threat, statistic, difference [interval], p (adjusted), MDD,
    subjects × seeds and the verdict; the A/A warning below when it applies."""
    head = ["defense − control", "threat", "statistic", "difference [95 % CI]", "p (Holm)", "MDD", "subj × seeds",
            "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in verdicts.itertuples(index=False):
        name = f"{r.defense} − {r.control}" + (" (A/A)" if r.kind == "A/A" else "")
        ci = f"{_fmt(r.difference)} [{_fmt(r.lo)}, {_fmt(r.hi)}]" if not pd.isna(r.lo) else _fmt(r.difference)
        size = "–" if pd.isna(r.n_subjects) else f"{int(r.n_subjects)} × {int(r.n_seeds)}"
        note = f" — {r.note}" if isinstance(r.note, str) and r.note else ""
        lines.append("| " + " | ".join([name, r.threat, r.statistic, ci, f"{_fmt(r.p)} ({_fmt(r.p_adjusted)})",
                                         _fmt(r.mdd), size, r.verdict + note]) + " |")
    warn = aa_warning(verdicts)
    return "\n".join(lines) + ("\n\n" + warn if warn else "") + "\n"


def read_tables(run: str | Path, threats: Sequence[CurveThreat] = CURVE_THREATS) -> dict[str, pd.DataFrame]:
    """``{csv name: rows}`` of every chapter table of ``threats`` present under ``<run>/robustness/``."""
    out = {}
    for th in threats:
        for name in th.tables:
            p = robustness_path(run, name)
            if p.is_file():
                out[name] = pd.read_csv(p, dtype={"subject": str, "alpha_group": str})
    return out


def write_evidence(run: str | Path, cells: pd.DataFrame, verdicts: pd.DataFrame) -> dict[str, Path]:
    """Write ``<run>/card/cells.csv`` and ``<run>/card/verdicts.csv`` atomically; returns their paths."""
    run = Path(run)
    paths = {"cells": run / "card" / "cells.csv", "verdicts": run / "card" / "verdicts.csv"}
    write_csv_atomic(paths["cells"], cells.reindex(columns=list(CELL_FIELDS)))
    write_csv_atomic(paths["verdicts"], verdicts.reindex(columns=list(VERDICT_FIELDS)))
    return paths
