"""The study's headline result as a Markdown section: mean Dice per model at Center vs Moderate α.

Chapter 06 writes it to ``<run>/evaluation/headline.md`` (:func:`write_headline`); the publishing
layer includes every ``headline.md`` of the run in the book's findings (the README shows the card's
alone) without knowing this study.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from xrlib.core.atomic import write_text_atomic
from xrlib.core.profiles import Profile
from xrlib.data.shards import read_manifest
from xrlib.studies.rotation.study import real_domain
from xrlib.studies.rotation.models import study_configs
from xrlib.training.data import select_images

#: Where chapter 06 writes the section, relative to the run folder.
HEADLINE = Path("evaluation") / "headline.md"


def study_train_images(run: Path, cfg: Profile) -> dict[str, int]:
    """Training images of each study model, counted from the run's dataset manifest ({} if unreadable)."""
    try:
        return {c.name: len(select_images(Path(run) / "datasets", c.train_sets, "train", c.cen_alphas))
                for c in study_configs(cfg)}
    except Exception:  # a missing or foreign manifest: the table says "?"
        return {}


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |" for r in rows])


def headline_markdown(df: pd.DataFrame, run: Path, cfg: Profile) -> str:
    """Caption and table of mean Dice (%) per model at Center vs Moderate α on the synthetic test set."""
    syn = df[df["test_set"] == "Syn_test"] if "test_set" in df.columns else df
    try:
        domain = str(real_domain(read_manifest(Path(run) / "datasets")))
    except Exception:  # no manifest: say what plays Real by default
        domain = "clinical surrogate (realistic-physics renders at well-positioned poses)"
    n_train = study_train_images(run, cfg)
    rows = []
    for model in dict.fromkeys(syn["model"]):
        m = syn[syn["model"] == model]
        center = m[m["group"] == "Center"]["dice"].mean() * 100
        moderate = m[m["group"].astype(str).str.startswith("Moderate")]["dice"].mean() * 100
        rows.append([model, n_train.get(model, "?"), f"{center:.1f}", f"{moderate:.1f}", f"{moderate - center:+.1f}"])
    n_sub = syn["subject"].nunique() if "subject" in syn.columns else "?"
    n_alpha = syn["alpha"].nunique() if "alpha" in syn.columns else "?"
    most = max(n_train.values()) if n_train else None
    lines = [
        f"**Mean Dice (%) on the synthetic test set — profile {cfg.name}; 'Real' training domain: "
        f"{domain}; test subjects are a virtual cohort from one CT, not independent patients.** "
        f"{n_sub} test subject(s) × {n_alpha} angles. Center = α ∈ [−2°, 2°]; Moderate = "
        f"|α| ∈ [12°, 20°] (Moderate− and Moderate+ pooled).",
        "",
        _table(["model", "training images", "Center", "Moderate", "Moderate − Center"], rows),
        "",
        *([] if cfg.name == "paper" else [
            f"The {cfg.name!r} profile trains each model on "
            f"{f'at most {most} images' if most is not None else 'a small set of images'}, on a CPU budget; these "
            "numbers check the pipeline end to end and show the direction of the effects, not the paper's "
            "absolute values.", ""]),
    ]
    return "\n".join(lines)


def write_headline(df: pd.DataFrame, cfg: Profile, run: Path) -> Path:
    """Write :func:`headline_markdown` of the results ``df`` to ``<run>/evaluation/headline.md``."""
    path = Path(run) / HEADLINE
    write_text_atomic(path, headline_markdown(df, run, cfg))
    return path
