"""Chapter 11's headline: ``<run>/learned/headline.md`` (collected into the book's findings)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from xrlib.core.atomic import write_text_atomic
from xrlib.core.profiles import Profile
from xrlib.studies.learned.config import LearnedSettings

__all__ = ["HEADLINE", "findings", "headline_markdown", "write_headline"]

HEADLINE = Path("learned") / "headline.md"


def _rows(results: pd.DataFrame) -> list[list[str]]:
    out = []
    clean = results[results["budget"] == 0].groupby("model", sort=False)["dice"].mean()
    for (model, method, variant, xi, target), g in results[results["budget"] > 0].groupby(
            ["model", "method", "variant", "budget", "generator_target"], sort=False):
        how = method + (f" (trained against {target})" if method == "generator" and target != model else "")
        out.append([model, how, variant, f"{xi:g}", f"{100 * clean[model]:.1f}", f"{100 * g['dice'].mean():.1f}",
                    f"{100 * g['dice_unwarped'].mean():.1f}", f"{100 * g['success'].astype(float).mean():.0f}",
                    f"{g['p'].mean():.3f}", f"{g['p_rel'].mean():.3f}", f"{g['seconds_per_image'].mean():.2f}"])
    return out


def _stats(results: pd.DataFrame, model: str, method: str, variant: str, xi: float) -> dict | None:
    g = results[(results["model"] == model) & (results["method"] == method) & (results["variant"] == variant)
                & (results["budget"] == xi)]
    if g.empty:
        return None
    drop = (g["dice_clean"] - g["dice"]).mean()
    return {"success": 100 * g["success"].astype(float).mean(), "dice": 100 * g["dice"].mean(), "drop": 100 * drop,
            "p_rel": g["p_rel"].mean(), "sec": g["seconds_per_image"].mean(), "train": g["train_seconds"].max(),
            "clean": 100 * g["dice_clean"].mean()}


def findings(results: pd.DataFrame, s: LearnedSettings) -> list[str]:
    """Sentences with this build's numbers: per-image search vs generator, D vs V, the defense."""
    out, v, xi = [], s.victim, s.ablation_xi
    pi, ge = _stats(results, v, "per-image", "DV", xi), _stats(results, v, "generator", "DV", xi)
    if pi and ge:
        stronger = "the per-image search" if pi["drop"] > ge["drop"] else "the generator" if ge["drop"] > pi["drop"] else "neither"
        out.append(f"At ξ = {xi:g} (D+V) the per-image search lowered the mean Dice by {pi['drop']:.1f} points "
                   f"(success {pi['success']:.0f} %, p/std {pi['p_rel']:.3f}, {pi['sec']:.2f} s per image), the generator "
                   f"by {ge['drop']:.1f} points (success {ge['success']:.0f} %, p/std {ge['p_rel']:.3f}, {ge['sec']:.2f} s "
                   f"per image after {ge['train']:.0f} s of training): the stronger attack here is {stronger}.")
    d, vv = _stats(results, v, "per-image", "D", xi), _stats(results, v, "per-image", "V", xi)
    if d and vv:
        which = "V hurts more than D" if vv["drop"] > d["drop"] else "D hurts more than V" if d["drop"] > vv["drop"] else "D and V hurt equally"
        out.append(f"Ablation at ξ = {xi:g} (paper 004's objective): D only lowered the Dice by {d['drop']:.1f} points "
                   f"(p/std {d['p_rel']:.3f}), V only by {vv['drop']:.1f} (p/std {vv['p_rel']:.3f}) — {which} at these "
                   "unequal perceptibilities (paper 004: V more, for three of four organs); the bound sweep below "
                   "compares them at an equal p/std.")
    dm = v + "+DV-adv"
    for x in s.defense_eval_xi:
        a, b = _stats(results, v, "per-image", "DV", x), _stats(results, dm, "per-image", "DV", x)
        if a and b:
            out.append(f"Defense ({dm}): clean Dice {a['clean']:.1f} → {b['clean']:.1f} %; under the per-image D+V "
                       f"search at ξ = {x:g}: {a['dice']:.1f} → {b['dice']:.1f} % (success {a['success']:.0f} → "
                       f"{b['success']:.0f} %).")
    return out


def sweep_text(curves: pd.DataFrame | None, equal: pd.DataFrame | None) -> str:
    """The Dice-drop bound sweep in sentences: the largest Dice drop and success rate per variant, and
    D-only vs V-only at the largest p/std both reach (``None``/empty: not run or no common p/std)."""
    if curves is None or curves.empty:
        return "Dice-drop bound sweep: not run in this profile."
    parts = []
    for v, g in curves.groupby("variant"):
        top = g.sort_values("bound").iloc[-1]
        unit = "mm" if v == "D" else "(image units)"
        parts.append(f"{v} only up to {top['bound']:g} {unit}: Dice drop {100 * top['Dice drop']:.1f} points, success "
                     f"{100 * top['success rate']:.0f} % of {int(top['n good'])} image(s) with clean Dice ≥ 0.8, "
                     f"p/std {top['p/std']:.3f}")
    text = "Dice-drop attack (per image, best iterate, within the bounds): " + "; ".join(parts) + "."
    if equal is not None and len(equal):
        e = equal.set_index("variant")
        which = ("V hurts more" if e.loc["V", "Dice drop"] > e.loc["D", "Dice drop"] else
                 "D hurts more" if e.loc["D", "Dice drop"] > e.loc["V", "Dice drop"] else "they hurt equally")
        text += (f" At an equal p/std of {e['p/std'].iloc[0]:.3f} (interpolated): D only {100 * e.loc['D', 'Dice drop']:.1f}, "
                 f"V only {100 * e.loc['V', 'Dice drop']:.1f} Dice points — {which}.")
    else:
        text += " D only and V only reach no common p/std: no equal-budget comparison."
    return text


def headline_markdown(results: pd.DataFrame, profile: Profile, s: LearnedSettings,
                      sweep: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> str:
    """Caption and table: per model × method × variant × ξ the clean and attacked mean Dice (%), success
    rate (%), p and p/std, and seconds per image — all computed from ``results``; then the bound sweep
    (``sweep``: :func:`xrlib.studies.learned.sweep.sweep_curves` and :func:`~xrlib.studies.learned.sweep.equal_pstd`)."""
    n = results[results["budget"] == 0].drop_duplicates(["subject", "alpha"])
    header = ["model", "method", "variant", "ξ", "clean Dice", "Dice (warped truth)", "Dice (unwarped)", "success %",
              "p", "p/std", "s/image"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(results)]
    g = s.generator
    caption = (
        f"**Smooth deformation + bias-field attack (paper 004) on {s.victim} — profile {profile.name}.** "
        f"{len(n)} Syn_test image(s) ({n['subject'].nunique()} virtual subject(s) of one CT, not independent "
        f"patients); fields on a {s.fields.grid}×{s.fields.grid} grid, |D| ≤ {s.max_displacement_mm:g} mm at the "
        f"isocenter per component, |V| ≤ {s.fields.max_bias:g}; per-image search: {s.fields.steps} RMSProp steps; "
        f"generator: {g.steps} steps of batch {g.batch_size}. success = Dice (warped truth) fell ≥ 30 %.")
    weak = "" if profile.name == "paper" else (
        f"\n\nThe {profile.name!r} profile runs weak attacks (few steps, a briefly trained generator, a one-"
        "epoch warm-started defense): read these numbers as a pipeline check and a direction, not as the "
        "paper's attack strength.")
    found = " ".join(findings(results, s))
    sweep_line = "\n\n" + sweep_text(*(sweep or (None, None)))
    return caption + "\n\n" + "\n".join(lines) + ("\n\n" + found if found else "") + sweep_line + weak + "\n"


def write_headline(results: pd.DataFrame, profile: Profile, s: LearnedSettings, run: Path,
                   sweep: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> Path:
    """Write :func:`headline_markdown` to ``<run>/learned/headline.md``."""
    path = Path(run) / HEADLINE
    write_text_atomic(path, headline_markdown(results, profile, s, sweep))
    return path
