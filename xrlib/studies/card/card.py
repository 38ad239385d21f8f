"""Building the card: every available row under every available column, from the chapters' tables or computed.

:func:`gather` collects, per victim and column part, the contract rows: from the chapter's
``<run>/robustness/<threat>.csv`` where it holds that model at the card's budget, else computed with
the chapter's threat code and cached as ``<run>/card/cells/<column>/<part>/<model>-<key>.csv`` (``key``:
a hash of the card settings, the profile and the model's weights folder), so a rebuild is cheap.
:func:`cells` turns the rows into one statistic per model × column with a seeds × subjects interval
(:mod:`xrlib.eval.evidence`) and the number of images; :func:`matrix` checks that no row × column cell is missing.

``n_rows`` counts the threatened images behind a cell, ``n_images`` those its statistic is computed
on: the same number except in a conditional column (:attr:`Column.scored`), where a cell may score
few images — or none (value ``nan``: defined, but not applicable to that model) — and
:func:`xrlib.studies.card.analysis.ranking` leaves such cells unranked.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.core.atomic import write_csv_atomic
from xrlib.core.profiles import Profile, profile_hash
from xrlib.eval.robustness import FEW_SUBJECTS, robustness_path
from xrlib.eval import evidence as ev
from xrlib.studies.card.columns import COLUMNS, Column, Part
from xrlib.studies.card.rows import Victim
from xrlib.studies.card.settings import CardSettings
from xrlib.training.config import safe_name

__all__ = ["CELL_COLUMNS", "CardError", "cells", "gather", "matrix", "part_rows"]

#: Columns of :func:`cells` (one row per model × column).
CELL_COLUMNS = ("model", "column", "value", "lo", "hi", "n_images", "n_rows", "n_subjects", "n_seeds", "strongest",
                "source")
#: Version of the cached cells (bump when the scoring of a computed cell changes).
CACHE_VERSION = 1  # the cached rows are the contract rows; a new statistic over them needs no bump


class CardError(RuntimeError):
    """A row × column cell of the card is missing (a join bug, never a user error)."""


def _key(profile: Profile, s: CardSettings, column: Column, part: Part, victim: Victim) -> str:
    text = json.dumps({"v": CACHE_VERSION, "profile": profile_hash(profile), "card": {k: v for k, v in asdict(s).items() if k != "seeds"}, "column": column.key,
                       "part": part.threat, "model": victim.name, "weights": victim.identity}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _cache_path(run: Path, column: Column, part: Part, victim: Victim, key: str) -> Path:
    return Path(run) / "card" / "cells" / column.key / part.threat / f"{safe_name(victim.name)}-{key}.csv"


def _read(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"subject": str, "alpha_group": str})
    for col in ("success", "changed"):
        if col in df:
            df[col] = df[col].astype("boolean")
    return df


def part_rows(profile: Profile, run: Path, s: CardSettings, column: Column, part: Part, victims: Sequence[Victim],
              progress: bool = False) -> dict[str, tuple[pd.DataFrame, str]]:
    """``{model: (rows, source)}`` of one column part for every victim: the chapter's rows, the cached
    cell or a fresh computation (one threat run for all the victims that need it)."""
    run = Path(run)
    chapter = pd.DataFrame()
    csv = robustness_path(run, part.threat)
    if part.chapter_csv and csv.is_file():
        chapter = _read(csv)
    out, todo = {}, []
    for v in victims:
        rows = part.select(chapter[chapter["model"] == v.name], profile, s) if len(chapter) else chapter
        if len(rows):
            out[v.name] = (rows.reset_index(drop=True), f"chapter {part.chapter or column.chapter} table ({csv.name})")
            continue
        path = _cache_path(run, column, part, v, _key(profile, s, column, part, v))
        if path.is_file():
            out[v.name] = (_read(path), "computed by the card (cached)")
        else:
            todo.append((v, path))
    if todo:
        t0 = time.perf_counter()
        new = part.compute(profile, run, s, {v.name: v.load() for v, _ in todo})
        if progress:
            print(f"card: computed {column.key}/{part.threat} for {len(todo)} model(s) in {time.perf_counter() - t0:.1f} s: "
                  f"{', '.join(v.name for v, _ in todo)}", flush=True)
        for v, path in todo:
            rows = part.select(new[new["model"] == v.name], profile, s).reset_index(drop=True)
            write_csv_atomic(path, rows)
            out[v.name] = (rows, "computed by the card")
    return out


def gather(profile: Profile, run: Path, s: CardSettings, victims: Sequence[Victim],
           columns: Sequence[Column] = COLUMNS, progress: bool = False) -> dict[tuple[str, str, str], tuple[pd.DataFrame, str]]:
    """``{(model, column, part threat): (rows, source)}`` for every victim and every available column."""
    out = {}
    for col in columns:
        for part in col.parts:
            for name, got in part_rows(profile, run, s, col, part, victims, progress).items():
                out[(name, col.key, part.threat)] = got
    return out


def _interval(model: str, df: pd.DataFrame, values: pd.Series) -> dict:
    """Mean of the per-image ``values`` with its seeds × subjects interval (:mod:`xrlib.eval.evidence`):
    per (seed, subject) means first; ``lo``/``hi`` ``nan`` below :data:`~xrlib.eval.evidence.MIN_SUBJECTS`
    subjects (one subject included: no interval, never a zero-width one)."""
    v = pd.DataFrame({"model": model, "subject": df["subject"].astype(str).to_numpy(), "v": values.to_numpy(float)})
    if "seed" in df:
        v["seed"] = df["seed"].to_numpy()
    if "source" in df:
        v["source"] = df["source"].to_numpy()
    ok = v["v"].notna()
    u = ev.unit_means(v, "v")
    n_sub, n_seeds = int(u["unit"].nunique()), int(u["seed"].nunique())
    if n_sub == 0:
        return {"value": np.nan, "lo": np.nan, "hi": np.nan, "n_images": 0, "n_subjects": 0, "n_seeds": 0}
    if n_sub == 1:
        return {"value": float(v.loc[ok, "v"].mean()), "lo": np.nan, "hi": np.nan, "n_images": int(ok.sum()),
                "n_subjects": 1, "n_seeds": n_seeds}
    r = ev.interval_table(u, "value").iloc[0]
    return {"value": float(r["value"]), "lo": float(r["lo"]), "hi": float(r["hi"]), "n_images": int(ok.sum()),
            "n_subjects": n_sub, "n_seeds": n_seeds}


def cells(rows: Mapping[tuple[str, str, str], tuple[pd.DataFrame, str]], columns: Sequence[Column] = COLUMNS) -> pd.DataFrame:
    """One statistic per model × column (:data:`CELL_COLUMNS`): the mean over (seed, subject) means of the
    column's per-image ``value`` with its seeds × subjects 95 % interval (:func:`xrlib.eval.evidence.summarise`;
    no interval below :data:`~xrlib.eval.evidence.MIN_SUBJECTS` subjects) — images the value leaves ``nan``
    (outside a conditional column's condition) are not scored: ``n_images`` of ``n_rows``; a column of several
    parts takes the part with the worst mean (``strongest`` names it). A cell whose rows are empty has ``n_rows``
    0."""
    by_col = {c.key: c for c in columns}
    parts: dict[tuple[str, str], list] = {}
    for (model, col, part), (df, source) in rows.items():
        parts.setdefault((model, col), []).append((part, df, source))
    out = []
    for (model, col), items in parts.items():
        c = by_col[col]
        recs = []
        for part, df, source in items:
            if len(df):
                rec = {**_interval(model, df, c.value(df)), "n_rows": len(df)}
            else:
                rec = {"value": np.nan, "lo": np.nan, "hi": np.nan, "n_images": 0, "n_rows": 0, "n_subjects": 0,
                       "n_seeds": 0}
            recs.append({**rec, "model": model, "column": col, "strongest": part if len(items) > 1 else "",
                         "source": source})
        if any(r["n_rows"] == 0 for r in recs):  # a part without images: the cell is incomplete
            best = next(r for r in recs if r["n_rows"] == 0)
        elif all(np.isnan(r["value"]) for r in recs):  # a conditional column with no scored image
            best = recs[0]
        else:
            best = (min if c.higher_better else max)((r for r in recs if not np.isnan(r["value"])), key=lambda r: r["value"])
        out.append(best)
    return pd.DataFrame(out, columns=list(CELL_COLUMNS))


def matrix(cell_table: pd.DataFrame, models: Sequence[str], columns: Sequence[Column] = COLUMNS) -> pd.DataFrame:
    """Models × available columns of ``value``; :class:`CardError` names any missing or empty cell."""
    avail = [c.key for c in columns if not c.missing]
    have = {(m, c) for m, c, n in cell_table[["model", "column", "n_rows"]].itertuples(index=False) if n > 0}
    lost = [(m, c) for m in models for c in avail if (m, c) not in have]
    if lost:
        raise CardError(f"card: {len(lost)} cell(s) without images, first: model {lost[0][0]!r} × column {lost[0][1]!r}")
    dup = cell_table.duplicated(["model", "column"])
    if dup.any():
        r = cell_table[dup].iloc[0]
        raise CardError(f"card: cell model {r['model']!r} × column {r['column']!r} appears twice")
    m = cell_table.pivot(index="model", columns="column", values="value")
    return m.reindex(index=list(models), columns=avail)


def subjects_per_column(cell_table: pd.DataFrame, models: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
    """``{column: (fewest, most)}`` subjects behind the scored cells of each column (of ``models``, default all)."""
    d = cell_table[cell_table["n_images"] > 0]
    if models is not None:
        d = d[d["model"].isin(models)]
    return {c: (int(g["n_subjects"].min()), int(g["n_subjects"].max())) for c, g in d.groupby("column", sort=False)}


def few_subjects_note(cell_table: pd.DataFrame, columns: Sequence[Column] = COLUMNS, models: Sequence[str] | None = None) -> str:
    """A caption note naming, per column, how many subjects its CIs resample where that is fewer than
    :data:`FEW_SUBJECTS` ("" when every column has enough)."""
    per = subjects_per_column(cell_table, models)
    titles = {c.key: c.title for c in columns}
    few = [(titles.get(k, k), lo, hi) for k, (lo, hi) in per.items() if lo < FEW_SUBJECTS]
    if not few:
        return ""
    counts = "; ".join(f"{t} {lo}" if lo == hi else f"{t} {lo}–{hi}" for t, lo, hi in few)
    return (f"The intervals rest on few subjects — per column: {counts} — virtual subjects of few CTs (and "
            "the Real surrogate's test subjects): rough indications, not population intervals.")


__all__ += ["few_subjects_note", "subjects_per_column", "FEW_SUBJECTS"]
