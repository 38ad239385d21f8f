"""Chapter 12 end to end: the study models under the pose threat, the landscape, the defense, the headline.

:func:`run_chapter` scores the three study models at every budget of the ``pose:`` block, trains
(or reads from cache) the two defended models and scores them at the clean budget and
``defense.budget`` with the *same* threat object (chains and grid renders are shared), writes
``<run>/robustness/pose.csv`` (all victims, results contract) and computes the landscape of one
subject and model. :func:`write_headline` writes ``<run>/pose/headline.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.attacks.base import score_threat
from xrlib.core.atomic import write_text_atomic
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile
from xrlib.eval.robustness import write_robustness
from xrlib.studies.pose.config import PoseConfig
from xrlib.studies.pose.defense import defense_models
from xrlib.studies.pose.study import Landscape, dice_landscape, grid_gain_table, pose_threat, worst_case_table
from xrlib.studies.rotation import study
from xrlib.studies.rotation.groups import alpha_group
from xrlib.training import load_best

__all__ = ["HEADLINE", "PoseChapter", "headline_markdown", "run_chapter", "write_headline"]

#: Where the chapter writes its headline, relative to the run folder.
HEADLINE = Path("pose") / "headline.md"


@dataclass
class PoseChapter:
    """What the chapter computed: contract rows (study and defended models), the landscape, the
    neutral-pose render of the landscape subject, defense infos and the settings."""

    results: pd.DataFrame
    landscape: Landscape
    neutral: tuple[np.ndarray, np.ndarray]
    probs: tuple[np.ndarray, np.ndarray]
    subject: str
    defense: dict
    cfg: PoseConfig
    path: Path


def _prob(model, image: np.ndarray) -> np.ndarray:
    p = next(model.parameters())
    with torch.no_grad():
        return torch.sigmoid(model(torch.as_tensor(image, dtype=p.dtype, device=p.device)[None, None]))[0, 0].cpu().numpy()


def run_chapter(profile: Profile, run: Path, device=None, progress: bool = False) -> PoseChapter:
    cfg = PoseConfig.from_profile(profile)
    if not np.isclose(cfg.budgets, cfg.defense.budget).any():
        raise InputError(profile.path or profile.name, f"pose.defense.budget {cfg.defense.budget:g} is not one of pose.budgets")
    run = Path(run)
    th, test = pose_threat(profile, run, device=device)
    victims = {n: load_best(r, device) for n, r in study.study_models(profile, run).items()}
    if cfg.landscape_model not in victims:
        raise InputError(profile.path or profile.name, f"pose.landscape.model {cfg.landscape_model!r} is not a study model")
    px = study.pixel_mm(profile)
    results = score_threat(th, victims, test, px, groups=alpha_group, device=device, progress=progress)
    defended = defense_models(profile, run, cfg, device, progress)
    dres = score_threat(th, {n: m for n, (m, _) in defended.items()}, test, px, budgets=[cfg.defense.budget],
                        groups=alpha_group, device=device, progress=progress)
    allres = pd.concat([results, dres], ignore_index=True)
    path = write_robustness(allres, run, "pose")
    subject = str(test.rows["subject"].iloc[0])
    model = victims[cfg.landscape_model]
    chain = th.chain(subject)
    land = dice_landscape(model, chain, cfg.landscape_budget, cfg.landscape_alpha, cfg.landscape_tilt, th.search,
                          th.searches.get((id(model), subject, float(cfg.landscape_budget))))
    x, t = chain.neutral()
    neutral = (x[0, 0].cpu().numpy(), t[0, 0].cpu().numpy())
    probs = (_prob(model, neutral[0]), _prob(model, land.search.image))
    return PoseChapter(allres, land, neutral, probs, subject, {n: i for n, (_, i) in defended.items()}, cfg, path)


def headline_markdown(ch: PoseChapter, profile: Profile) -> str:
    """Worst-case Dice per model and budget, the search's gain over its grid start, and the defense."""
    r = ch.results
    cfg = ch.cfg
    study_names = list(dict.fromkeys(r["model"]))[:3]
    wc = worst_case_table(r[r["model"].isin(study_names)])
    budgets = [b for b in wc.columns]
    lines = [f"**Worst-case patient pose (chapter 12) — profile {profile.name}.** Mean Dice at the worst pose found "
             f"within budget b (|α| ≤ b°, |tilt| ≤ b/4°, |shift| ≤ b mm; b = 0: neutral pose) on "
             f"{r['subject'].nunique()} synthetic test subject(s) (virtual subjects of one CT, not independent patients); "
             f"search: {cfg.search.grid_alpha}×{cfg.search.grid_tilt} (α, tilt) grid, then {cfg.search.steps} sign-gradient "
             f"steps through the differentiable renderer — a weak search below `paper`.", "",
             "| model | " + " | ".join(f"b = {b:g}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for m, row in wc.iterrows():
        lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in row.to_numpy(float)) + " |")
    gain = grid_gain_table(r[r["model"].isin(study_names)])
    if len(gain):
        lines += ["", f"Gain of the gradient search over its grid start (mean Dice at the grid minimum − after the search, "
                      f"all study models and budgets): {gain['gain'].mean():+.3f} (largest {gain['gain'].max():+.3f})."]
    d = r[~r["model"].isin(study_names) & (r["budget"] == cfg.defense.budget)]
    start = r[(r["model"] == cfg.defense.start) & (r["budget"] == cfg.defense.budget)]
    if len(d):
        parts = [f"{cfg.defense.start} {start['dice'].mean():.3f}"]
        parts += [f"{m} {g['dice'].mean():.3f}" for m, g in d.groupby("model", sort=False)]
        info = next(iter(ch.defense.values()), {})
        lines += ["", f"Defense (fine-tuned from {cfg.defense.start}, {cfg.defense.rounds} round(s) × {cfg.defense.epochs} "
                      f"epoch(s), {info.get('synthetic_images', '?')} synthetic images each, the same number for both): mean Dice "
                      f"at b = {cfg.defense.budget:g}: " + "; ".join(parts) + "."]
    return "\n".join(lines) + "\n"


def write_headline(ch: PoseChapter, profile: Profile, run: Path) -> Path:
    path = Path(run) / HEADLINE
    write_text_atomic(path, headline_markdown(ch, profile))
    return path
