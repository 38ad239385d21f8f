"""Chapter 12 end to end: the study models under both pose searches, the gradient check, the b = 0
comparison, the landscape, the defense and its control, the headline.

:func:`run_chapter` scores the three study models at every budget of the ``pose:`` block by the
gradient search and by the random search at the same number of scored renders (one set of chains:
model-independent renders are shared), trains (or reads from cache) the two defended models
(worst-pose and its uniform-pose control) and scores them at the clean budget and ``defense.budget``
with the gradient threat, writes ``<run>/robustness/pose.csv`` (all victims and both searches,
results contract plus ``search`` and the pose in deg and mm), checks the search objective's gradient
against central differences at the step scale, compares the chain's neutral image with the dataset's
α = 0 image, and computes the landscape of one subject and model. :func:`write_headline` writes
``<run>/pose/headline.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.attacks.base import score_threat
from xrlib.attacks.pose import GRADIENT_RTOL, gradient_check, image_gradient_check
from xrlib.core.atomic import write_text_atomic
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile
from xrlib.eval.robustness import write_robustness
from xrlib.studies.pose.config import PoseConfig
from xrlib.studies.pose.defense import defense_models
from xrlib.studies.pose.study import Landscape, dice_landscape, neutral_comparison, pose_threats, search_table, worst_case_table
from xrlib.studies.rotation import study
from xrlib.studies.rotation.groups import alpha_group
from xrlib.training import load_best

__all__ = ["HEADLINE", "PoseChapter", "defense_table", "headline_markdown", "run_chapter", "write_headline"]

#: Where the chapter writes its headline, relative to the run folder.
HEADLINE = Path("pose") / "headline.md"


@dataclass
class PoseChapter:
    """What the chapter computed: contract rows (study models under both searches, defended models under
    the gradient search), the gradient check of the objective and of the network input (both renderers), the b = 0 comparison, the landscape, the
    neutral-pose render of the landscape subject and its dataset α = 0 input and truth, defense infos,
    wall times of the two searches and of the gradient check (``seconds``), the settings and the CSV's path."""

    results: pd.DataFrame
    check: pd.DataFrame
    image_check: pd.DataFrame
    neutral_table: pd.DataFrame
    landscape: Landscape
    neutral: tuple[np.ndarray, np.ndarray]
    dataset_neutral: tuple[np.ndarray, np.ndarray]
    probs: tuple[np.ndarray, np.ndarray]
    subject: str
    defense: dict
    seconds: dict
    cfg: PoseConfig
    path: Path


def _prob(model, image: np.ndarray) -> np.ndarray:
    p = next(model.parameters())
    with torch.no_grad():
        return torch.sigmoid(model(torch.as_tensor(image, dtype=p.dtype, device=p.device)[None, None]))[0, 0].cpu().numpy()


def run_chapter(profile: Profile, run: Path, device=None, progress: bool = False) -> PoseChapter:
    cfg = PoseConfig.from_profile(profile)
    src = profile.path or profile.name
    if not np.isclose(cfg.budgets, cfg.defense.budget).any():
        raise InputError(src, f"pose.defense.budget {cfg.defense.budget:g} is not one of pose.budgets")
    if not np.isclose(cfg.budgets, cfg.landscape_budget).any():
        raise InputError(src, f"pose.landscape.budget {cfg.landscape_budget:g} is not one of pose.budgets")
    run = Path(run)
    threats, test = pose_threats(profile, run, device=device)
    victims = {n: load_best(r, device) for n, r in study.study_models(profile, run).items()}
    if cfg.landscape_model not in victims:
        raise InputError(src, f"pose.landscape.model {cfg.landscape_model!r} is not a study model")
    px = study.pixel_mm(profile)
    frames, seconds = [], {}
    for method, th in threats.items():
        t0 = time.perf_counter()
        frames.append(score_threat(th, victims, test, px, groups=alpha_group, device=device, progress=progress))
        seconds[method] = time.perf_counter() - t0
    defended = defense_models(profile, run, cfg, device, progress)
    # the defended pair over the whole grid (gradient search): the card's pose curve for both rows
    frames.append(score_threat(threats["gradient"], {n: m for n, (m, _) in defended.items()}, test, px,
                               groups=alpha_group, device=device, progress=progress))
    allres = pd.concat(frames, ignore_index=True)
    path = write_robustness(allres, run, "pose")
    subject = str(test.rows["subject"].iloc[0])
    model = victims[cfg.landscape_model]
    th = threats["gradient"]
    chain = th.chain(subject)
    res = th.result(model, subject, cfg.landscape_budget)
    s = cfg.search
    guide = f"guide (μ smoothed {s.smooth_mm:g} mm, no field mask)"
    renderers = ((True, guide), (False, "scored (unsmoothed)"))
    objectives = ((True, s.offsets, f"search objective: {guide}, smoothed over the pose (σ {s.smooth_pose:g}, K = {len(s.offsets)})"),
                  (True, None, f"{guide}, not smoothed over the pose"), (False, None, "scored (unsmoothed)"))
    t0 = time.perf_counter()
    check = pd.concat([gradient_check(model, chain, res.start_pose, guided=g, offsets=o, batch=s.batch).assign(renderer=name)
                       for g, o, name in objectives], ignore_index=True)
    seconds["check"] = time.perf_counter() - t0
    image_check = pd.concat([image_gradient_check(chain, res.start_pose, guided=g).assign(renderer=name)
                             for g, name in renderers], ignore_index=True)
    land = dice_landscape(model, chain, cfg.landscape_budget, cfg.landscape_alpha, cfg.landscape_tilt, th.search, res)
    x, t = chain.neutral()
    neutral = (x[0, 0].cpu().numpy(), t[0, 0].cpu().numpy())
    probs = (_prob(model, neutral[0]), _prob(model, land.search.image))
    k = int(np.flatnonzero(test.rows["subject"].astype(str).to_numpy() == subject)[0])
    dataset = (np.asarray(test.images[k], float), np.asarray(test.masks[k]))
    return PoseChapter(allres, check, image_check, neutral_comparison(th, victims, test), land, neutral, dataset, probs, subject,
                       {n: i for n, (_, i) in defended.items()}, seconds, cfg, path)


def defense_table(ch: PoseChapter) -> pd.DataFrame:
    """Mean Dice (gradient search) of the defense's start and both defended models at b = 0 and the defense budget."""
    r = ch.results[ch.results["search"] == "gradient"]
    names = [ch.cfg.defense.start, *ch.defense]
    keep = r["model"].isin(names) & r["budget"].isin([0.0, ch.cfg.defense.budget])
    return r[keep].groupby(["model", "budget"], sort=False)["dice"].mean().unstack().reindex(names)


def headline_markdown(ch: PoseChapter, profile: Profile) -> str:
    """Worst-case Dice per model and budget, gradient vs random search, the gradient check and the defense."""
    r = ch.results
    cfg, s = ch.cfg, ch.cfg.search
    study_names = [m for m in dict.fromkeys(r["model"]) if m not in ch.defense]
    wc = worst_case_table(r[r["model"].isin(study_names)])
    budgets = list(wc.columns)
    lines = [f"**Worst-case patient pose (chapter 12) — profile {profile.name}.** Mean Dice at the worst pose found "
             f"within budget b (|α| ≤ b°, |tilt| ≤ b/4°, |shift| ≤ b mm; b = 0: neutral pose) on "
             f"{r['subject'].nunique()} synthetic test subject(s) (virtual subjects of one CT, not independent patients); "
             f"gradient search: {s.starts} Latin-hypercube starts, then {s.steps} sign-gradient steps on 1 − soft Dice "
             f"through a renderer smoothed by {s.smooth_mm:g} mm, averaged over {len(s.offsets)} common pose offsets "
             f"(Gaussian, σ = {s.smooth_pose:g}° / mm), scored unsmoothed by hard Dice; budgets nested.", "",
             "| model | " + " | ".join(f"b = {b:g}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for m, row in wc.iterrows():
        lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in row.to_numpy(float)) + " |")
    st = search_table(r[r["model"].isin(study_names)])
    if len(st):
        g, q = int((st["difference"] < 0).sum()), int((st["difference"] > 0).sum())
        verdict = ("the gradient search found worse poses" if g > q else "the random search found worse poses" if q > g
                   else "neither search found worse poses more often")
        lines += ["", f"Gradient vs random search at {s.renders} scored renders each (uniform over the same box): "
                      f"lower mean Dice by the gradient search in {g}, by the random search in {q}, equal in "
                      f"{len(st) - g - q} of {len(st)} (model, budget) cells, mean difference (gradient − random) "
                      f"{st['difference'].mean():+.3f}: {verdict}. Wall time: gradient "
                      f"{ch.seconds.get('gradient', np.nan):.0f} s, random {ch.seconds.get('random', np.nan):.0f} s."]
    ok = ch.check.groupby("renderer", sort=False)["agrees"].sum()
    oki = ch.image_check.groupby("renderer", sort=False)["agrees"].sum()
    lines += ["", "Gradient check at the step scale (h = 0.5° / 0.5 mm, within "
                  f"{GRADIENT_RTOL:.0%}), parameters whose derivative agrees with central differences — objective "
                  "(1 − soft Dice): " + "; ".join(f"{k} {int(v)} of 5" for k, v in ok.items()) + "; network input: "
                  + "; ".join(f"{k} {int(v)} of 5" for k, v in oki.items()) + "."]
    if ch.defense:
        d = defense_table(ch)
        b = cfg.defense.budget
        info = next(iter(ch.defense.values()), {})
        parts = [f"{m} {d.loc[m, b]:.3f}" for m in d.index if b in d.columns]
        lines += ["", f"Defense (fine-tuned from {cfg.defense.start}, {cfg.defense.rounds} round(s) × {cfg.defense.epochs} "
                      f"epoch(s), {info.get('synthetic_images', '?')} synthetic images each from the same renderer and "
                      f"box; worst poses vs uniformly drawn poses): mean Dice at b = {b:g}: " + "; ".join(parts) + "."]
    return "\n".join(lines) + "\n"


def write_headline(ch: PoseChapter, profile: Profile, run: Path) -> Path:
    path = Path(run) / HEADLINE
    write_text_atomic(path, headline_markdown(ch, profile))
    return path
