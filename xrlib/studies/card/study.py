"""Chapter 13 end to end: :func:`build_card` joins every row with every column and writes the card.

Outputs (``<run>`` = ``runs/<profile>``): ``<run>/card/cells.csv`` and ``<run>/card/verdicts.csv`` (the
curve summaries per model × threat with seeds × subjects intervals, and the verdicts of each defense
against its control, :mod:`xrlib.studies.card.evidence`), ``<run>/robustness/card.csv`` (the fixed-budget
view: one row per model × column, including the rows and columns whose chapter is not in this build,
marked as such), ``<run>/robustness/card.md`` (that matrix as Markdown) and ``<run>/card/headline.md``
(the curve card, the verdicts and the fixed-budget view, for the book's introduction and the README).
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
from xrlib.studies.card import evidence as ce
from xrlib.studies.card.card import cells, few_subjects_note, gather, matrix
from xrlib.studies.card.columns import COLUMNS, Column
from xrlib.studies.card.rows import FLOOR, ROWS, RowSpec, Victim, available_rows, floor_victims, pose_seed_victims
from xrlib.studies.card.seeds import AA_SUFFIX, grid_tables, seed_plans, train_seeds
from xrlib.studies.card.settings import CardSettings, card_settings

__all__ = ["Card", "HEADLINE", "OTHER_SEEDS", "SUMMARY", "build_card", "summary_markdown", "card_evidence", "card_markdown", "card_table", "columns_table",
           "contrasts", "curve_markdown", "evidence_markdown", "headline_markdown", "rows_table", "write_card"]

#: Where the chapter writes its headline (and the notebook its heatmap, ``headline.png``), relative to the run.
HEADLINE = Path("card") / "headline.md"
#: The card in brief (the README's generated section shows it: :data:`xrlib.publish.readme.README_SECTION`).
SUMMARY = Path("card") / "summary.md"


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
    evidence: pd.DataFrame = field(default_factory=pd.DataFrame)
    verdicts: pd.DataFrame = field(default_factory=pd.DataFrame)
    seconds: dict = field(default_factory=dict)
    seed_victims: list[Victim] = field(default_factory=list)
    #: What the synthetic test subjects are (:func:`xrlib.studies.rotation.study.cohort_phrase`).
    cohort: str = "virtual subjects of one CT (not independent patients)"

    @property
    def models(self) -> list[str]:
        return [v.name for v in self.victims]

    @property
    def missing_columns(self) -> list[Column]:
        return [c for c in self.columns if c.missing]


def build_card(profile: Profile | str | Path, run: str | Path, rows: tuple[RowSpec, ...] = ROWS,
               columns: tuple[Column, ...] = COLUMNS, floor: RowSpec | None = FLOOR, progress: bool = False,
               executor=None) -> Card:
    """Every available row under every available column (cells from the chapters' tables or computed and
    cached), the ranking, the seed spread, the costs, and the curve cells and verdicts of :func:`card_evidence`.

    With ``card.seeds`` n ≥ 2, the verdict-carrying models (:mod:`xrlib.studies.card.seeds`) get seeds 1 … n − 1,
    their controls and the A/A row's other seeds — trained as independent tasks on ``executor`` (see
    :func:`~xrlib.studies.card.seeds.train_seeds`) or read from the cache — and are scored over the chapters'
    budget grids for the curve cells and verdicts (:attr:`Card.seed_victims`; the fixed-budget view keeps seed 0)."""
    from xrlib.studies.rotation.study import cohort_phrase

    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    run = Path(run)
    s = card_settings(profile)
    t0 = time.perf_counter()
    victims, missing = available_rows(profile, run, rows)
    seeds = floor_victims(profile, run, floor if s.seed_floor else None)
    seeded, extra = [], {}
    if s.seeds >= 2:
        plans = seed_plans(profile, run, [v.name for v in victims], s.seeds)
        control = {p.model: p.control for p in plans}
        for v in victims:
            v.control = control.get(v.name, v.control)
        seeded = train_seeds(profile, run, plans, s.seeds, executor=executor, progress=progress)
        if any(v.row == "worst-pose" for v in victims):  # chapter 12's pair: fine-tuned by its own loop, not a TrainConfig
            seeded += pose_seed_victims(profile, run, s.seeds)
    t1 = time.perf_counter()
    got = gather(profile, run, s, victims + seeds, columns, progress)
    t2 = time.perf_counter()
    table = cells(got, columns)
    names = [v.name for v in victims]
    mat = matrix(table, list(dict.fromkeys(names + [v.name for v in seeds])), columns).loc[names]
    fl = analysis.noise_floor(table, [v.name for v in seeds], columns)
    if seeded:  # the verdict-carrying models over the grids: every seed, the chapters' seed 0 where a table lacks it
        planned = {v.model for v in seeded}
        todo = [v for v in victims if v.name in planned] + seeded
        pose_pair = [v for v in todo if v.chapter == "12"]  # a pose defense: its threats, not the input attacks
        extra = grid_tables(profile, run, [v for v in todo if v.chapter != "12"], progress=progress)
        for name, rows in grid_tables(profile, run, pose_pair, POSE_PAIR_TABLES, progress=progress).items():
            extra[name] = pd.concat([extra[name], rows], ignore_index=True) if name in extra else rows
    t3 = time.perf_counter()
    ev_cells, verdicts = card_evidence(run, victims + seeded, seeds, extra)
    return Card(profile.name, s, victims, seeds, missing, tuple(columns), table, mat,
                analysis.ranking(table, names, columns), fl, analysis.costs(table, victims), ev_cells, verdicts,
                {"models (load/train)": t1 - t0, "cells (read/compute)": t2 - t1, "seed models over the grids": t3 - t2,
                 "statistics": time.perf_counter() - t3}, seeded, cohort_phrase(run))


#: The grid tables of chapter 12's defense pair's seeds: the physical threats its training targets (the input
#: attacks' grids — the card's costliest — are left out: those cells keep seed 0 and give no verdict).
POSE_PAIR_TABLES = ("rotation", "pose", "acquisition")

#: Name of the A/A row's second model: the base retrained with other seeds.
OTHER_SEEDS = AA_SUFFIX


def contrasts(victims: list[Victim], seeds: list[Victim]) -> list[ce.Contrast]:
    """The verdict-carrying pairs, one per model (its seeds together): each model with a ``control`` against it; a
    model with only a ``base`` against that base as a :data:`~xrlib.studies.card.evidence.NO_CONTROL` row
    (interval, no verdict); the A/A row — the base against ``<base> [other seeds]``: the victims of that name
    (the base retrained with other seeds under its own recipe) when there are any, else the floor models."""
    out, done = [], set()
    aa = sorted({v.model.removesuffix(OTHER_SEEDS) for v in victims if v.model.endswith(OTHER_SEEDS)})
    for v in victims:
        if v.model in done or v.model.endswith(OTHER_SEEDS):
            continue
        done.add(v.model)
        if v.control:
            out.append(ce.Contrast(v.model, v.control))
        elif v.base:
            out.append(ce.Contrast(v.model, v.base, ce.NO_CONTROL))
    for b in aa or sorted({v.base or "U-Net(Real+Syn_all)" for v in seeds}):
        out.append(ce.Contrast(b, b + OTHER_SEEDS, "A/A"))
    return out


def card_evidence(run: Path, victims: list[Victim], seeds: list[Victim],
                  extra: dict[str, pd.DataFrame] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(cells, verdicts)`` from the chapters' robustness tables over their budget grids
    (:mod:`xrlib.studies.card.evidence`), for the card's models — plus, in ``cells``, mean Dice at the grid budget
    nearest the A/A base's b50 per threat (statistic ``dice@<b>``, the fixed-budget rows); the floor models (the base retrained with
    other seeds) enter as one model ``<base> [other seeds]`` whose seeds are theirs, unless the victims hold that
    model already (the card's own A/A seeds). ``extra`` (``{table: rows}``, :func:`~xrlib.studies.card.seeds.grid_tables`)
    adds the seed models' rows to the chapters' tables (model = the victim's ``model``, with a ``seed`` column).
    A threat whose table is not in this build, or holds none of the card's models, has no cells."""
    tables = ce.read_tables(run)
    for name, d in (extra or {}).items():
        if name in tables:
            tables[name] = pd.concat([tables[name], d], ignore_index=True)
    names = {v.model for v in victims}
    own_aa = any(n.endswith(OTHER_SEEDS) for n in names)
    alias = {} if own_aa else {v.name: i + 1 for i, v in enumerate(seeds)}
    base = next((n.removesuffix(OTHER_SEEDS) for n in names if n.endswith(OTHER_SEEDS)),
                (seeds[0].base or "U-Net(Real+Syn_all)") if seeds else "")
    rows = {}
    for th in ce.CURVE_THREATS:
        sub = {}
        for name, d in tables.items():
            if name not in th.tables:
                continue
            d = d[d["model"].isin(names | set(alias))].copy()
            if alias:
                is_floor = d["model"].isin(alias)
                d.loc[is_floor, "seed"] = d.loc[is_floor, "model"].map(alias)
                d.loc[is_floor, "model"] = base + OTHER_SEEDS
            if "seed" in d:
                d["seed"] = pd.to_numeric(d["seed"], errors="coerce").fillna(0).astype(int)
            sub[name] = d
        r = ce.threat_rows(sub, th)
        if len(r) and (r["severity"] > 0).any() and r.loc[r["severity"] > 0, "severity"].nunique() >= 2:
            rows[th.key] = r
    cells_, units = ce.curve_cells(rows)
    if len(cells_) and base:  # the fixed-budget rows of cells.csv: at the A/A base's own halving budget
        cells_ = pd.concat([cells_, ce.fixed_cells(rows, ce.b50_budgets(cells_, base))], ignore_index=True)
    verdicts = ce.verdict_table(units, contrasts(victims, seeds)) if len(units) else pd.DataFrame(columns=ce.VERDICT_FIELDS)
    return cells_, verdicts


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
                rec.update({k: r[k] for k in ("value", "lo", "hi", "n_images", "n_rows", "n_subjects", "n_seeds", "strongest",
                                             "source")})
                rec["status"] = "ok"
            out.append(rec)
    for spec in card.missing_rows:
        for c in card.columns:
            out.append({"row": spec.key, "model": "", "defense": spec.defense, "model_chapter": spec.chapter,
                        "column": c.key, "threat": c.title, "threat_chapter": c.chapter,
                        "budget": c.budget(card.settings), "statistic": c.statistic,
                        "higher_is_better": c.higher_better, "status": spec.missing})
    cols = ["row", "model", "defense", "model_chapter", "column", "threat", "threat_chapter", "budget", "statistic",
            "higher_is_better", "value", "lo", "hi", "n_images", "n_rows", "n_subjects", "n_seeds", "strongest", "source",
            "status"]
    df = pd.DataFrame(out).reindex(columns=cols)
    return df.astype({"n_images": "Int64", "n_rows": "Int64", "n_subjects": "Int64", "n_seeds": "Int64"})


def _cell(r, col: Column) -> str:
    n = f"{int(r['n_images'])} of {int(r['n_rows'])}" if col.scored else f"{int(r['n_images'])}"
    if np.isnan(r["value"]):
        return f"n/a ({n})"
    if np.isnan(r["lo"]):
        return f"{r['value']:.3f}, n/a ({int(r['n_subjects'])} subjects) ({n})"
    return f"{r['value']:.3f} [{r['lo']:.2f}, {r['hi']:.2f}] ({n}; {int(r['n_subjects'])}×{int(r['n_seeds'])})"


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
        lines.append("| " + " | ".join([f"*seed spread (max − min over {n} seeds)*"] + [
            "–" if np.isnan(fl.loc[c.key, "floor"]) else f"{fl.loc[c.key, 'floor']:.3f}" for c in cols]) + " |")
    return "\n".join(lines) + "\n"


def _not_built(card: Card) -> list[str]:
    out = [f"- row *{s.defense}* (chapter {s.chapter}): {s.missing}" for s in card.missing_rows]
    out += [f"- column *{c.title}* (chapter {c.chapter}): {c.missing}" for c in card.missing_columns]
    return out


def headline_markdown(card: Card) -> str:
    """The curve card and the verdicts (:func:`evidence_markdown`), then the fixed-budget view with its caveats and
    what is not in this build."""
    s = card.settings
    pgd = card.cells[(card.cells["column"] == "pgd") & (card.cells["model"].isin(card.models))]
    strongest = ", ".join(f"{k} {n}×" for k, n in pgd["strongest"].value_counts().items()) if len(pgd) else ""
    lines = [evidence_markdown(card), "", f"**Fixed-budget view — profile {card.profile}.** Every model under every threat of this "
             f"build at fixed budgets; each cell: the statistic, its 95 % seeds × subjects interval (n/a below 3 subjects) and (the number of images). "
             f"Synthetic test subjects are {card.cohort}; \"Real\" is the clinical "
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
                          "is not ranked."]
    left = analysis.unranked(card.cells, card.models, card.columns)
    by_col = {c.key: c for c in card.columns}
    for key, g in left.groupby("column", sort=False):
        c = by_col[key]
        who = ("every model" if len(g) == len(card.models) else
               ", ".join(f"{m} ({int(n)} of {int(r)})" for m, n, r in zip(g["model"], g["n_images"], g["n_rows"])))
        lines += ["", f"Not ranked under {c.title} (its statistic scores only the {c.scored or 'scored images'}, fewer "
                      f"than {analysis.MIN_SCORED_SHARE:.0%} of the cell's images): {who}."]
    if card.floor_victims:
        lines += ["", f"Seed spread (last row): max − min of each statistic over {len(card.floor_victims)} retrainings of "
                      f"U-Net(Real+Syn_all) with other seeds (chapter 10's repeats, shorter trainings than the study "
                      f"models); descriptive only — the verdicts above come from the seeds × subjects intervals."]
    top = []
    for c in card.columns:
        r = card.ranking[(card.ranking["column"] == c.key) & (card.ranking["rank"] == 1)]
        if len(r) and not c.is_clean:
            top.append(f"{c.title}: {' = '.join(r['model'])} ({r['value'].iloc[0]:.3f})")
    if top:
        lines += ["", "Highest at the fixed budget per threat (rank 1; overlapping intervals do not make an order, "
                      "the verdicts above do): " + "; ".join(top) + "."]
    nb = _not_built(card)
    if nb:
        lines += ["", "Not in this build (listed, not left blank or faked):", *nb]
    return "\n".join(lines) + "\n"


def _iv(r) -> str:
    if pd.isna(r["value"]):
        note = r["note"] if isinstance(r["note"], str) else ""
        return "–" if not note else note if note.startswith("n/a") else f"n/a ({note})"
    size = f"{int(r['n_subjects'])}×{int(r['n_seeds'])}"
    if r["statistic"] == "b50" and isinstance(r["note"], str) and r["note"].startswith("> b_max"):
        return f"> {r['value']:.3g} ({size})"
    fmt = ".3g" if r["statistic"] == "b50" else ".3f"
    if pd.isna(r["lo"]):
        return f"{r['value']:{fmt}}, n/a ({int(r['n_subjects'])} subjects)"
    return f"{r['value']:{fmt}} [{r['lo']:{fmt}}, {r['hi']:{fmt}}] ({size})"


CURVE_TABLES = (("rel_auc", "retained fraction (relative AUC over log-budget) ↑"), ("b50", "halving budget b50 ↑"))


def curve_markdown(cells_: pd.DataFrame, statistics: tuple[tuple[str, str], ...] = CURVE_TABLES) -> str:
    """The curve card: per model × threat the relative AUC and b50 (``statistics``), value [95 % interval]
    (subjects×seeds)."""
    if not len(cells_):
        return "No threat table of this build holds a budget grid for the card's models.\n"
    lines = []
    for stat, title in statistics:
        d = cells_[cells_["statistic"] == stat]
        threats = list(dict.fromkeys(d["threat"]))
        lines += [f"*{title}*", "", "| model | " + " | ".join(threats) + " |", "|---|" + "---|" * len(threats)]
        val = d.set_index(["model", "threat"])
        for m in dict.fromkeys(d["model"]):
            lines.append(f"| {m} | " + " | ".join(_iv(val.loc[(m, t)]) if (m, t) in val.index else "–" for t in threats) + " |")
        lines.append("")
    return "\n".join(lines)


def evidence_markdown(card: Card) -> str:
    """The curve card and the verdict table with their reading (and the A/A warning when it applies)."""
    lines = [f"**The robustness card (chapter 13) — profile {card.profile}.** Per model and threat, summaries of the "
             "whole robustness curve over the chapter's budget grid: the retained fraction (area under mean Dice over "
             "log-budget, relative to the clean Dice) and the budget at which mean Dice halves (b50; \"> b_max\" when "
             f"it never does). Each cell: value [95 % interval over seeds and subjects] (subjects×seeds); test subjects "
             f"are {card.cohort}, so the interval speaks about that cohort.", "", curve_markdown(card.evidence)]
    have = set(card.evidence["threat"]) if len(card.evidence) else set()
    left = [th.title for th in ce.CURVE_THREATS if th.key not in have]
    if left:
        lines += [f"Not summarised as curves in this build (no chapter table with a budget grid of at least two positive "
                  f"budgets for the card's models): {', '.join(left)}.", ""]
    if len(card.verdicts):
        lines += ["**Verdicts.** A defense against its control (trained identically without it, same seeds): \"more/less "
                  "robust\" only where the interval excludes 0 and the Holm-adjusted p < 0.05; otherwise no evidence at "
                  "this size, with the minimum detectable difference (MDD, α 0.05, power 0.8). b50 differences are in "
                  "decades of budget. Rows \"vs base (no control)\" are descriptive: no control was trained, so the "
                  "difference includes the extra training itself. The A/A row compares the base with itself retrained "
                  "with other seeds and should get no verdict.", "", ce.verdicts_markdown(card.verdicts).rstrip("\n")]
    return "\n".join(lines) + "\n"


def summary_markdown(card: Card) -> str:
    """The card in brief, for the README: the retained fraction per model × threat and the verdicts that were
    reached (the A/A row's outcome included); the full card is the headline (:func:`headline_markdown`)."""
    lines = [f"**The robustness card (chapter 13) — profile {card.profile}, in brief.** The retained fraction of each "
             "model's clean Dice over each threat's budget grid (area under mean Dice over log-budget divided by the "
             "log-span × clean Dice; 1 = no loss), value [95 % interval over seeds and subjects] (subjects×seeds). "
             f"Test subjects are {card.cohort}; \"Real\" is a rendered surrogate. Halving budgets, the "
             "fixed-budget view and every caveat are in the book's introduction.", "",
             curve_markdown(card.evidence, CURVE_TABLES[:1]).rstrip("\n"), ""]
    v = card.verdicts
    if len(v):
        hit = v[v["verdict"].isin(["more robust", "less robust"])]
        family = v[v["kind"] != ce.NO_CONTROL]
        said = [f"{r.defense} vs {r.control}: {r.verdict} under {r.threat} ({r.statistic}, {r.difference:+.3f} "
                f"[{r.lo:+.3f}, {r.hi:+.3f}])" for r in hit.itertuples(index=False) if r.kind != "A/A"]
        lines.append("**Verdicts** (each defense against its control, paired over subjects and seeds, Holm-adjusted over "
                     f"{len(family)} contrast(s)): " + ("; ".join(said) + "." if said else "none reached: no evidence at "
                     "this size for any contrast (the card lists each one's minimum detectable difference)."))
        aa = v[v["kind"] == "A/A"]
        if len(aa):
            lines += ["", ce.aa_warning(v) or "The A/A row (the base against itself retrained with other seeds) got no "
                                               "verdict, as it should."]
    return "\n".join(lines) + "\n"


def write_card(card: Card, run: str | Path) -> dict[str, Path]:
    """Write ``cells.csv``, ``verdicts.csv`` and the headline under ``<run>/card/``, ``card.csv`` and ``card.md``
    (the fixed-budget view) under ``<run>/robustness/``; returns their paths."""
    run = Path(run)
    paths = {"csv": run / "robustness" / "card.csv", "md": run / "robustness" / "card.md", "headline": run / HEADLINE,
             "summary": run / SUMMARY, **ce.write_evidence(run, card.evidence, card.verdicts)}
    write_csv_atomic(paths["csv"], card_table(card))
    write_text_atomic(paths["md"], card_markdown(card))
    write_text_atomic(paths["summary"], summary_markdown(card))
    write_text_atomic(paths["headline"], headline_markdown(card))
    return paths


def rows_table(card: Card) -> pd.DataFrame:
    """The rows of the card: every registry entry, its models (or why it is not in this build)."""
    out = [{"row": v.row, "chapter": v.chapter, "defense": v.defense, "model": v.name, "status": "in this build"}
           for v in card.victims]
    out += [{"row": "floor", "chapter": v.chapter, "defense": v.defense, "model": v.name, "status": "noise floor only"}
            for v in card.floor_victims]
    out += [{"row": v.row, "chapter": v.chapter, "defense": v.defense, "model": v.name,
             "status": f"seed {v.seed} of {v.model} (curve cells and verdicts only)"} for v in card.seed_victims]
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
