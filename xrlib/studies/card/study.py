"""Chapter 13 end to end: :func:`build_card` joins every row with every column and writes the card.

Outputs (``<run>`` = ``runs/<profile>``): ``<run>/robustness/card.csv`` (one row per model × column,
including the rows and columns whose chapter is not in this build, marked as such),
``<run>/robustness/card.md`` (the matrix as Markdown) and ``<run>/card/headline.md`` (the card, the
noise floor and the generated transfer statements, for the book's introduction and the README).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.core.atomic import write_csv_atomic, write_text_atomic
from xrlib.core.profiles import Profile, load_profile
from xrlib.studies.card import analysis
from xrlib.studies.card.card import cells, few_subjects_note, gather, matrix
from xrlib.studies.card.columns import COLUMNS, Column
from xrlib.studies.card.rows import FLOOR, ROWS, RowSpec, Victim, available_rows, floor_victims
from xrlib.studies.card.settings import CardSettings, card_settings

__all__ = ["Card", "HEADLINE", "build_card", "card_markdown", "card_table", "columns_table", "headline_markdown", "rows_table",
           "write_card"]

#: Where the chapter writes its headline (and the notebook its heatmap, ``headline.png``), relative to the run.
HEADLINE = Path("card") / "headline.md"


@dataclass
class Card:
    """Everything the card computed (see :func:`build_card`)."""

    profile: str
    settings: CardSettings
    victims: list[Victim]
    floor_victims: list[Victim]
    missing_rows: list[RowSpec]
    columns: tuple[Column, ...]
    cells: pd.DataFrame
    matrix: pd.DataFrame
    ranking: pd.DataFrame
    floor: pd.DataFrame
    costs: pd.DataFrame
    transfer: pd.DataFrame
    seconds: dict = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return [v.name for v in self.victims]

    @property
    def missing_columns(self) -> list[Column]:
        return [c for c in self.columns if c.missing]


def build_card(profile: Profile | str | Path, run: str | Path, rows: tuple[RowSpec, ...] = ROWS,
               columns: tuple[Column, ...] = COLUMNS, floor: RowSpec | None = FLOOR, progress: bool = False) -> Card:
    """Every available row under every available column (cells from the chapters' tables or computed and
    cached), the ranking, the noise floor, the costs and the transfer verdicts."""
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    run = Path(run)
    s = card_settings(profile)
    t0 = time.perf_counter()
    victims, missing = available_rows(profile, run, rows)
    seeds = floor_victims(profile, run, floor if s.seed_floor else None)
    t1 = time.perf_counter()
    got = gather(profile, run, s, victims + seeds, columns, progress)
    t2 = time.perf_counter()
    table = cells(got, columns, n_boot=s.n_boot, seed=int(profile.seed))
    names = [v.name for v in victims]
    mat = matrix(table, list(dict.fromkeys(names + [v.name for v in seeds])), columns).loc[names]
    fl = analysis.noise_floor(table, [v.name for v in seeds], columns)
    return Card(profile.name, s, victims, seeds, missing, tuple(columns), table, mat,
                analysis.ranking(table, names, columns), fl, analysis.costs(table, victims),
                analysis.transfer(table, victims, fl, columns),
                {"models (load/train)": t1 - t0, "cells (read/compute)": t2 - t1, "statistics": time.perf_counter() - t2})


def card_table(card: Card) -> pd.DataFrame:
    """The card as one row per model × column (the CSV), the not-built rows and columns included as such."""
    val = card.cells.set_index(["model", "column"])
    out = []
    for v in [*card.victims, *card.floor_victims]:
        for c in card.columns:
            rec = {"row": v.row, "model": v.name, "defense": v.defense, "model_chapter": v.chapter, "column": c.key,
                   "threat": c.title, "threat_chapter": c.chapter, "budget": c.budget(card.settings),
                   "statistic": c.statistic, "higher_is_better": c.higher_better}
            if c.missing:
                rec["status"] = c.missing
            else:
                r = val.loc[(v.name, c.key)]
                rec.update({k: r[k] for k in ("value", "lo", "hi", "n_images", "n_rows", "n_subjects", "strongest", "source")})
                rec["status"] = "ok"
            out.append(rec)
    for spec in card.missing_rows:
        for c in card.columns:
            out.append({"row": spec.key, "model": "", "defense": spec.defense, "model_chapter": spec.chapter,
                        "column": c.key, "threat": c.title, "threat_chapter": c.chapter,
                        "budget": c.budget(card.settings), "statistic": c.statistic,
                        "higher_is_better": c.higher_better, "status": spec.missing})
    cols = ["row", "model", "defense", "model_chapter", "column", "threat", "threat_chapter", "budget", "statistic",
            "higher_is_better", "value", "lo", "hi", "n_images", "n_rows", "n_subjects", "strongest", "source", "status"]
    df = pd.DataFrame(out).reindex(columns=cols)
    return df.astype({"n_images": "Int64", "n_rows": "Int64", "n_subjects": "Int64"})


def _cell(r, col: Column) -> str:
    n = f"{int(r['n_images'])} of {int(r['n_rows'])}" if col.scored else f"{int(r['n_images'])}"
    if np.isnan(r["value"]):
        return f"n/a ({n})"
    return f"{r['value']:.3f} [{r['lo']:.2f}, {r['hi']:.2f}] ({n})"


def card_markdown(card: Card) -> str:
    """The matrix as a Markdown table: value [95 % CI] (images) per cell, the noise floor below."""
    cols = [c for c in card.columns if not c.missing]
    val = card.cells.set_index(["model", "column"])
    head = ["model"] + [f"{c.title}, {c.budget(card.settings)}: {c.statistic} {'↑' if c.higher_better else '↓'}"
                        for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in card.victims:
        lines.append("| " + " | ".join([v.name] + [_cell(val.loc[(v.name, c.key)], c) for c in cols]) + " |")
    if card.floor_victims and len(card.floor):
        fl = card.floor.set_index("column")
        n = int(fl["n_seeds"].max()) if len(fl) else 0
        lines.append("| " + " | ".join([f"*noise floor (max − min over {n} seeds)*"] + [
            "–" if np.isnan(fl.loc[c.key, "floor"]) else f"{fl.loc[c.key, 'floor']:.3f}" for c in cols]) + " |")
    return "\n".join(lines) + "\n"


def _not_built(card: Card) -> list[str]:
    out = [f"- row *{s.defense}* (chapter {s.chapter}): {s.missing}" for s in card.missing_rows]
    out += [f"- column *{c.title}* (chapter {c.chapter}): {c.missing}" for c in card.missing_columns]
    return out


def headline_markdown(card: Card) -> str:
    """The card with its caveats, what is not in this build, and the generated transfer statements."""
    s = card.settings
    pgd = card.cells[(card.cells["column"] == "pgd") & (card.cells["model"].isin(card.models))]
    strongest = ", ".join(f"{k} {n}×" for k, n in pgd["strongest"].value_counts().items()) if len(pgd) else ""
    lines = [f"**The robustness card (chapter 13) — profile {card.profile}.** Every model under every threat of this "
             f"build at fixed budgets; each cell: the statistic, its 95 % subject-bootstrap CI and (the number of images). "
             f"Synthetic test subjects are virtual subjects of one CT (not independent patients); \"Real\" is the clinical "
             f"surrogate (rendered), not real radiographs. PGD/SegPGD: the minimum over the two attacks at ε = {s.pgd_eps:g} "
             f"(the strongest per model: {strongest or 'n/a'}); the attacks run with the chapters' profile steps, weak below "
             f"`paper`. ↑ higher is more robust, ↓ lower is.", "", card_markdown(card).rstrip("\n")]
    note = few_subjects_note(card.cells, card.columns, card.models)
    if note:
        lines += ["", note]
    for c in card.columns:
        if c.scored and not c.missing:
            lines += ["", f"The {c.title} column is conditional: its statistic scores only the {c.scored} — (scored of "
                          f"all images) in its cells; a cell scoring fewer than {analysis.MIN_SCORED_SHARE:.0%} of its images "
                          "is not ranked and gets no transfer verdict."]
    left = analysis.unranked(card.cells, card.models, card.columns)
    by_col = {c.key: c for c in card.columns}
    for key, g in left.groupby("column", sort=False):
        c = by_col[key]
        who = ("every model" if len(g) == len(card.models) else
               ", ".join(f"{m} ({int(n)} of {int(r)})" for m, n, r in zip(g["model"], g["n_images"], g["n_rows"])))
        lines += ["", f"Not ranked under {c.title} (its statistic scores only the {c.scored or 'scored images'}, fewer "
                      f"than {analysis.MIN_SCORED_SHARE:.0%} of the cell's images): {who}."]
    if card.floor_victims:
        lines += ["", f"Noise floor: the spread (max − min) of each statistic over {len(card.floor_victims)} retrainings of "
                      f"U-Net(Real+Syn_all) with other seeds (chapter 10's repeats, shorter trainings than the study "
                      f"models); differences below it are not read as effects."]
    top = []
    for c in card.columns:
        r = card.ranking[(card.ranking["column"] == c.key) & (card.ranking["rank"] == 1)]
        if len(r) and not c.is_clean:
            top.append(f"{c.title}: {' = '.join(r['model'])} ({r['value'].iloc[0]:.3f})")
    if top:
        lines += ["", "Most robust per threat (rank 1 of the ranking; overlapping CIs and differences below the floor "
                      "do not make an order): " + "; ".join(top) + "."]
    nb = _not_built(card)
    if nb:
        lines += ["", "Not in this build (listed, not left blank or faked):", *nb]
    sentences = analysis.transfer_sentences(card.transfer, card.columns)
    if sentences:
        why = ("gain over its base model beyond the seed spread" if card.floor_victims else
               "gain over its base model; no seed floor in this build, so every difference counts — small ones are noise")
        lines += ["", f"Which defense transfers to which threat ({why}):", ""]
        lines += [f"- {x}" for x in sentences]
    return "\n".join(lines) + "\n"


def write_card(card: Card, run: str | Path) -> dict[str, Path]:
    """Write ``card.csv`` and ``card.md`` under ``<run>/robustness/`` and the headline; returns their paths."""
    run = Path(run)
    paths = {"csv": run / "robustness" / "card.csv", "md": run / "robustness" / "card.md", "headline": run / HEADLINE}
    write_csv_atomic(paths["csv"], card_table(card))
    write_text_atomic(paths["md"], card_markdown(card))
    write_text_atomic(paths["headline"], headline_markdown(card))
    return paths


def rows_table(card: Card) -> pd.DataFrame:
    """The rows of the card: every registry entry, its models (or why it is not in this build)."""
    out = [{"row": v.row, "chapter": v.chapter, "defense": v.defense, "model": v.name, "status": "in this build"}
           for v in card.victims]
    out += [{"row": "floor", "chapter": v.chapter, "defense": v.defense, "model": v.name, "status": "noise floor only"}
            for v in card.floor_victims]
    out += [{"row": s.key, "chapter": s.chapter, "defense": s.defense, "model": "–", "status": s.missing}
            for s in card.missing_rows]
    return pd.DataFrame(out)


def columns_table(card: Card) -> pd.DataFrame:
    """The columns of the card: threat, chapter, budget, statistic, and where its cells came from."""
    out = []
    for c in card.columns:
        src = card.cells.loc[card.cells["column"] == c.key, "source"].value_counts()
        out.append({"column": c.title, "chapter": c.chapter, "budget": c.budget(card.settings), "statistic": c.statistic,
                    "more robust": "higher" if c.higher_better else "lower",
                    "cells": c.missing or "; ".join(f"{n} from {k}" for k, n in src.items())})
    return pd.DataFrame(out)
