"""The robustness card of a user's own network: every threat of the book's card, placed beside the book's models.

:func:`external_card` wraps a network (:mod:`xrlib.nets.external`) into the book's convention, runs each
card threat (:data:`xrlib.studies.card.evidence.CURVE_THREATS`) over its chapter's budget grid on the
chapter's test subjects (the threat builders of :data:`xrlib.studies.robustness.THREATS`, the attacks in
the book's image space through the adapter's differentiable resize), and summarises the curves with the
card's statistics (:func:`xrlib.studies.card.evidence.curve_cells`). One external model has one "seed"
and no control, so its cells carry subject intervals and a *placement*, never a verdict: per threat and
statistic, whether its value lies below, within or above the seed range of the book's reference model
(the range of that model's per-seed values where the run has several seeds, else its interval — the
``reference_range`` column says which).

A network without usable input gradients (:func:`xrlib.nets.external.probe_gradients`) gets the
gradient-free variant of each gradient attack where one exists (:data:`GRADIENT_FREE`); the others are
listed as not run, with the reason, on the card.

The input attack gets chapter 09's attack diagnostics (:mod:`xrlib.studies.card.external_checks`) at the
model's own mid-range ε: their outcomes go on the card, their runs into the attack's per-image minimum, and a
failed check flags the PGD cell ("not converged", "possible gradient masking", "not at full success").
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.core.atomic import atomic_write, write_csv_atomic, write_text_atomic
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile
from xrlib.studies.card import evidence as ce
from xrlib.studies.card.external_checks import ExternalDiagnostics, check_external

__all__ = ["CARD_BUILDERS", "GRADIENT_FREE", "GRADIENT_TABLES", "REFERENCE", "ExternalCard", "card_threats", "diagnostics_markdown",
           "ensure_test_data", "external_card", "placement",
           "score_external", "write_external_card"]

#: The book model every external model is placed against.
REFERENCE = "U-Net(Real+Syn_all)"
#: Chapter tables whose threat follows the victim's input gradient.
GRADIENT_TABLES = frozenset({"pgd", "segpgd", "deformation", "pose"})


def _square_pgd(profile: Profile, run: Path):
    """The input attack for a network without usable gradients: the Square-style random search on chapter
    09's ε grid and test images, with as many forward passes as the white-box ensemble spends per image
    (one gradient step counted as one pass)."""
    from xrlib.attacks.ensemble import EnsembleThreat, gradient_free, members
    from xrlib.studies.pgd.settings import pgd_settings
    from xrlib.studies.pgd.study import test_images

    s = pgd_settings(profile)
    white = [m for m in members(s.steps, s.apgd_steps, s.step_fraction) if s.members is None or m.name in s.members]
    queries = sum(m.steps * m.restarts for m in white)
    return EnsembleThreat(gradient_free(queries), grid=s.grid, seed=s.seed), test_images(profile, run, s)


def _random_pose(profile: Profile, run: Path):
    """The pose threat's random search (uniform over the same box, as many renders as the gradient search)."""
    from xrlib.studies.pose.study import pose_threat

    return pose_threat(profile, run, method="random")


def _chapter_segpgd(profile: Profile, run: Path):
    """SegPGD as chapter 09 runs it (its ``segpgd`` table): at the profile's ``pgd.segpgd_budgets``, with its
    steps, step fraction and seed, on the chapter's test images — not the generic threat's default grid."""
    from xrlib.studies.pgd.settings import pgd_settings
    from xrlib.studies.pgd.study import test_images, threats

    s = pgd_settings(profile)
    return threats(profile, s)["segpgd"], test_images(profile, run, s)


def _card_noise(profile: Profile, run: Path):
    """The noise threat in the one arm the card reads (``rerendered``; its draws are seeded per image, dose and
    arm, so they are the chapter's)."""
    from xrlib.studies.robustness import THREATS

    return THREATS["noise"](profile, run, arms=("rerendered",))


#: The card's builders where they differ from :data:`xrlib.studies.robustness.THREATS` (whose defaults serve
#: ``xrlib robustness --threat``): the chapter tables' own grids and only what the card reads.
CARD_BUILDERS: dict[str, Callable] = {"segpgd": _chapter_segpgd, "noise": _card_noise}

#: Gradient-free stand-ins ``{table: builder(profile, run) -> (threat, test images)}`` for a network without
#: usable input gradients; a gradient table missing here (SegPGD, whose images the Square search replaces,
#: and the learned deformation) is not run for such a network.
GRADIENT_FREE: dict[str, Callable] = {"pgd": _square_pgd, "pose": _random_pose}


@dataclass
class ExternalCard:
    """What :func:`external_card` computed for one network."""

    name: str
    spec: str
    profile: str
    differentiable: bool
    gradient_note: str
    cells: pd.DataFrame
    placement: pd.DataFrame
    not_run: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    diagnostics: ExternalDiagnostics | None = None


def card_threats(keys: Sequence[str] | None) -> list[ce.CurveThreat]:
    """The card's threats named by ``keys`` (``None``: all); an unknown name is an :class:`InputError` on ``--threats``."""
    known = {t.key: t for t in ce.CURVE_THREATS}
    if keys is None:
        return list(ce.CURVE_THREATS)
    bad = [k for k in keys if k not in known]
    if bad:
        raise InputError("--threats", f"unknown threat {bad[0]!r}; the card's threats: {', '.join(known)}")
    return [known[k] for k in keys]


def score_external(profile: Profile, run: Path, model, name: str, threats: Sequence[ce.CurveThreat],
                   differentiable: bool = True, progress: bool = False,
                   seconds: dict | None = None) -> tuple[dict[str, pd.DataFrame], list[tuple[str, str]], dict]:
    """``({table: contract rows}, not_run, {table: (threat, test images)})``: ``model`` (book convention) under
    every chapter table of ``threats`` over the threat's own budget grid; ``not_run`` lists ``(table, reason)``
    for what could not run here; the threat objects are kept (the attack diagnostics reuse their cached runs).
    ``seconds`` (when given) receives each table's wall time (s) as ``threat <table>``."""
    from xrlib.attacks.base import score_threat
    from xrlib.studies.robustness import THREATS
    from xrlib.studies.rotation import study
    from xrlib.studies.rotation.groups import alpha_group

    tables, not_run, built = {}, [], {}
    for th in threats:
        for table in th.tables:
            t0 = time.perf_counter()
            build = CARD_BUILDERS.get(table, THREATS[table])
            if table in GRADIENT_TABLES and not differentiable:
                build = GRADIENT_FREE.get(table)
                if build is None:
                    not_run.append((table, "needs input gradients, which this network does not give; no gradient-free "
                                           "variant of this threat in this build"))
                    continue
            try:
                threat, test = build(profile, run)
            except (FileNotFoundError, KeyError) as exc:  # a chapter's inputs are not in this run
                not_run.append((table, f"its test data are not in this run ({type(exc).__name__}: {exc})"))
                continue
            rows = score_threat(threat, {name: model}, test, study.pixel_mm(profile), groups=alpha_group, progress=progress)
            tables[table] = rows.assign(seed=0)
            built[table] = (threat, test)
            if seconds is not None:
                seconds[f"threat {table}"] = time.perf_counter() - t0
    return tables, not_run, built


def _seed_values(tables: dict[str, pd.DataFrame], threat: ce.CurveThreat, model: str) -> pd.DataFrame:
    """Per-seed statistics of ``model`` under ``threat`` from the run's chapter ``tables`` (:func:`ce.read_tables`,
    read once per card; empty if absent)."""
    from xrlib.eval.curves import curve_units

    rows = ce.threat_rows({k: v[v["model"] == model] for k, v in tables.items()}, threat)
    if not len(rows):
        return pd.DataFrame()
    try:
        u = curve_units(rows.rename(columns={"severity": "budget"}))
    except InputError:
        return pd.DataFrame()
    return u.groupby("seed").mean(numeric_only=True).reset_index()


def placement(ext_cells: pd.DataFrame, book_cells: pd.DataFrame | None, seed_values: dict[str, pd.DataFrame],
              reference: str = REFERENCE) -> pd.DataFrame:
    """Per threat × statistic of ``ext_cells``: the external value, the reference model's range and where the
    value lies ("below", "within", "above"; higher is more robust for every curve statistic).

    The range is the min–max of the reference's per-seed values (``seed_values[threat]``, a frame with one row
    per seed and a column per statistic) when it has two or more seeds, else its interval from ``book_cells``
    (the run's ``card/cells.csv``); without either the placement is "no book card in this run"."""
    out = []
    for r in ext_cells.itertuples(index=False):
        rec = {"threat": r.threat, "statistic": r.statistic, "value": r.value, "ref_lo": math.nan,
               "ref_hi": math.nan, "reference_range": "", "placement": "no book card in this run"}
        sv = seed_values.get(r.threat)
        col = "b50" if r.statistic == "b50" else r.statistic
        if sv is not None and len(sv) >= 2 and col in sv:
            rec.update(ref_lo=float(sv[col].min()), ref_hi=float(sv[col].max()),
                       reference_range=f"{reference}: range over {len(sv)} seeds")
        elif book_cells is not None and len(book_cells):
            b = book_cells[(book_cells["model"] == reference) & (book_cells["threat"] == r.threat)
                           & (book_cells["statistic"] == r.statistic)]
            if len(b) and not math.isnan(float(b["lo"].iloc[0])):
                size = (f"{int(b['n_subjects'].iloc[0])} subjects × {int(b['n_seeds'].iloc[0])} seed(s)"
                        if {"n_subjects", "n_seeds"} <= set(b.columns) else "the book's card")
                rec.update(ref_lo=float(b["lo"].iloc[0]), ref_hi=float(b["hi"].iloc[0]),
                           reference_range=f"{reference}: 95 % interval of the book's card ({size})")
            elif len(b):
                rec["placement"] = f"{reference} has no interval here ({b['note'].iloc[0]})"
        if rec["reference_range"]:
            v = float(r.value)
            rec["placement"] = ("n/a (no value)" if math.isnan(v) else "below" if v < rec["ref_lo"]
                                else "above" if v > rec["ref_hi"] else "within")
        out.append(rec)
    return pd.DataFrame(out, columns=["threat", "statistic", "value", "ref_lo", "ref_hi", "reference_range", "placement"])


def ensure_test_data(profile: Profile, run: Path, progress: bool = False, log=print) -> bool:
    """Build the profile's virtual cohort and datasets in ``run`` when it has no complete datasets build (as
    ``xrlib dataset --profile P`` does), saying so; ``True`` when it built them. The threats that render from
    the cohort's CTs (pose, noise, acquisition) read it too."""
    from xrlib.data.build import BUILD_FILE, build_datasets
    from xrlib.data.subjects import cohort_subjects

    datasets = Path(run) / "datasets"
    if (datasets / BUILD_FILE).is_file():
        return False
    log(f"card: no built datasets in {datasets}: building the {profile.name} profile's cohort and datasets first "
        f"(as `xrlib dataset --profile {profile.name}`)")
    subjects = cohort_subjects(profile, Path(run) / "cohort", progress=progress)
    build_datasets(profile, datasets, subjects=subjects, progress=progress)
    return True


def external_card(profile: Profile, run: Path, model, name: str, spec: str, threats: Sequence[str] | None = None,
                  differentiable: bool = True, gradient_note: str = "", progress: bool = False) -> ExternalCard:
    """The card of one wrapped network (book convention) on the run's test data, placed against the run's card."""
    t0 = time.perf_counter()
    seconds: dict = {}
    chosen = card_threats(threats)
    built = ensure_test_data(profile, run, progress)
    tables, not_run, attacks = score_external(profile, run, model, name, chosen, differentiable, progress, seconds)
    diag = None
    if "pgd" in attacks:
        td = time.perf_counter()
        diag = check_external(profile, run, model, name, *attacks["pgd"], tables["pgd"], differentiable)
        tables["pgd"] = diag.rows
        seconds["diagnostics"] = time.perf_counter() - td
    t1 = time.perf_counter()
    rows = {}
    for th in chosen:
        r = ce.threat_rows(tables, th)
        if len(r):
            rows[th.key] = r
    cells, _ = ce.curve_cells(rows)
    cells["flag"] = np.where(cells["threat"] == "pgd", diag.flag if diag is not None else "", "")
    book_path = Path(run) / "card" / "cells.csv"
    book = pd.read_csv(book_path) if book_path.is_file() else None
    book_tables = ce.read_tables(run, chosen)
    seeds = {th.key: _seed_values(book_tables, th, REFERENCE) for th in chosen}
    notes = ["One network, one training: its intervals carry subject variance only, and it has no control, so the "
             "card places it against the book's models instead of giving verdicts."]
    if built:
        notes.append("The test data were built for this card (the run had none): the same profile and seeds as the "
                     "book's, so the same test subjects.")
    if book is None:
        notes.append(f"No book card in this run ({book_path} is missing): build chapter 13 of profile "
                     f"{profile.name} to place the model against the book's models.")
    seconds.update(total_threats=t1 - t0, statistics=time.perf_counter() - t1)
    return ExternalCard(name, spec, profile.name, differentiable, gradient_note, cells,
                        placement(cells, book, seeds), not_run, notes, seconds, diag)


def _fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.3f}"


def card_markdown(card: ExternalCard) -> str:
    """The external card as Markdown: what was run, the cells with their placement, and what was not run."""
    grad = "yes" if card.differentiable else "no"
    lines = [f"# Robustness card: {card.name}", "",
             f"Model `{card.spec}`, profile `{card.profile}`. Input gradients usable: {grad} ({card.gradient_note}).", "",
             "| threat | statistic | value [95 % CI] | subjects × seeds | reference range | placement | flag |",
             "|---|---|---|---|---|---|---|"]
    pl = card.placement.set_index(["threat", "statistic"])
    for r in card.cells.itertuples(index=False):
        p = pl.loc[(r.threat, r.statistic)]
        ci = f"{_fmt(r.value)} [{_fmt(r.lo)}, {_fmt(r.hi)}]" if not pd.isna(r.lo) else f"{_fmt(r.value)} {r.note or ''}".strip()
        ref = f"{_fmt(p['ref_lo'])}–{_fmt(p['ref_hi'])} ({p['reference_range']})" if p["reference_range"] else "–"
        flag = getattr(r, "flag", "") or ""
        lines.append(f"| {r.threat} | {r.statistic} | {ci} | {int(r.n_subjects)} × {int(r.n_seeds)} | {ref} | "
                     f"{p['placement']} | {flag} |")
    lines += diagnostics_markdown(card.diagnostics)
    if card.not_run:
        lines += ["", "Not run (listed, not left blank):", *[f"- {t}: {why}" for t, why in card.not_run]]
    lines += ["", *card.notes]
    return "\n".join(lines) + "\n"


def diagnostics_markdown(diag: ExternalDiagnostics | None) -> list[str]:
    """The attack diagnostics section of the card (empty when the input attack did not run)."""
    if diag is None:
        return []
    flag = diag.flag or "none (every applicable check passed)"
    lines = ["", f"Attack diagnostics (chapter 09's checks) at ε = {diag.budget:g}, the model's mid-range budget; their "
             f"runs are folded into the PGD cell's per-image minimum. Flag on the PGD cell: {flag}.", "",
             "| check | direction | tolerance | white-box Dice | check Dice | outcome |", "|---|---|---|---|---|---|"]
    for r in diag.table.itertuples(index=False, name=None):
        check, direction, tol, white, value, outcome = r
        lines.append(f"| {check} | {direction} | {_fmt(tol)} | {_fmt(white)} | {_fmt(value)} | {outcome} |")
    return lines + [*(f"- {n}" for n in diag.notes)]


def _heatmap_png(card: ExternalCard) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = card.cells[card.cells["statistic"].isin(["clean", "rel_auc"])]
    m = d.pivot(index="statistic", columns="threat", values="value")
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * max(1, m.shape[1]), 2.2))
    im = ax.imshow(m.to_numpy(float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(m.shape[1]), m.columns, rotation=30, ha="right")
    ax.set_yticks(range(m.shape[0]), ["clean Dice" if s == "clean" else "retained fraction (rel. AUC)" for s in m.index])
    for (i, j), v in np.ndenumerate(m.to_numpy(float)):
        ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label="score (0–1, higher is more robust)")
    ax.set_xlabel("threat")
    ax.set_title(card.name)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_external_card(card: ExternalCard, out: Path) -> dict[str, Path]:
    """Write ``card.md``, ``card.html`` (heatmap embedded), ``heatmap.png``, ``cells.csv``, ``placement.csv`` and,
    when the input attack ran, ``diagnostics.csv`` under ``out``; everything is rendered first, then each file
    is written atomically."""
    md = card_markdown(card)
    png = _heatmap_png(card)
    body = html.escape(md)
    page = ("<!doctype html><meta charset='utf-8'><title>" + html.escape(card.name) + "</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}pre{white-space:pre-wrap}</style>"
            f"<img alt='heatmap of the card' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
            f"<pre>{body}</pre>")
    out = Path(out)
    paths = {"md": out / "card.md", "html": out / "card.html", "png": out / "heatmap.png",
             "cells": out / "cells.csv", "placement": out / "placement.csv"}
    write_csv_atomic(paths["cells"], card.cells)
    write_csv_atomic(paths["placement"], card.placement)
    if card.diagnostics is not None:
        paths["diagnostics"] = out / "diagnostics.csv"
        write_csv_atomic(paths["diagnostics"], card.diagnostics.table.assign(budget=card.diagnostics.budget))
    with atomic_write(paths["png"]) as tmp:
        tmp.write_bytes(png)
    write_text_atomic(paths["html"], page)
    write_text_atomic(paths["md"], md)  # last: its presence marks a complete card
    return paths
