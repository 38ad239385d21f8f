"""Chapter 11's headline: ``<run>/learned/headline.md`` (collected into the book's findings and the README)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from xrlib.core.atomic import write_text_atomic
from xrlib.core.profiles import Profile
from xrlib.studies.learned.config import LearnedSettings

__all__ = ["HEADLINE", "headline_markdown", "write_headline"]

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


def headline_markdown(results: pd.DataFrame, profile: Profile, s: LearnedSettings) -> str:
    """Caption and table: per model × method × variant × ξ the clean and attacked mean Dice (%), success
    rate (%), p and p/std, and seconds per image — all computed from ``results``."""
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
    return caption + "\n\n" + "\n".join(lines) + weak + "\n"


def write_headline(results: pd.DataFrame, profile: Profile, s: LearnedSettings, run: Path) -> Path:
    """Write :func:`headline_markdown` to ``<run>/learned/headline.md``."""
    path = Path(run) / HEADLINE
    write_text_atomic(path, headline_markdown(results, profile, s))
    return path
