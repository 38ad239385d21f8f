"""Chapter 12 on a study run: the pose threat's chains, test subjects, Dice landscape and summaries.

The threatened subjects are the first ``pose.subjects`` Syn_test subjects (virtual subjects of one
CT, not independent patients); each is loaded from the run's cohort (``<run>/cohort``) and rendered
by :class:`xrlib.drr.diffrender.DifferentiableRenderer` (naive physics, the synthetic domain) at
``pose.render_size`` pixels over the profile's detector field, then post-processed and preprocessed
as the datasets are (:class:`xrlib.attacks.pose.PoseChain`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.attacks.base import TestImages
from xrlib.attacks.pose import PoseChain, PoseSearch, PoseThreat, SearchResult, grid_poses, search_pose
from xrlib.attacks.pgd import frozen
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile
from xrlib.drr.geometry import Geometry
from xrlib.studies.pose.config import PoseConfig
from xrlib.studies.rotation import study

__all__ = ["SubjectChains", "Landscape", "dice_landscape", "pose_test_images", "pose_threat", "worst_case_table", "grid_gain_table"]


@dataclass
class SubjectChains:
    """Picklable ``subject id → PoseChain`` over the run's cohort (volumes loaded on first use)."""

    cohort_dir: Path
    geometry: Geometry
    image_size: int
    step_mm: float | None = None
    device: object = None
    prefilter: bool = False  # the profile's render.prefilter, as the datasets were rendered

    def __call__(self, subject: str) -> PoseChain:
        from xrlib.anatomy.annotate import clavicles_from_labels
        from xrlib.anatomy.cohort import load_subject
        from xrlib.drr import DifferentiableRenderer

        ct, labels = load_subject(self.cohort_dir, subject)
        r = DifferentiableRenderer(ct, clavicles_from_labels(labels), self.geometry, physics="naive", device=self.device,
                                   step_mm=self.step_mm, prefilter=self.prefilter)
        return PoseChain(r, self.image_size)


def chains(profile: Profile, run: Path, cfg: PoseConfig | None = None, device=None) -> SubjectChains:
    """The chains of the run's subjects at the chapter's render size and sampling step."""
    cfg = cfg or PoseConfig.from_profile(profile)
    g = Geometry.from_render(profile.render)
    g = g if cfg.render_size is None else g.resized(cfg.render_size)
    return SubjectChains(Path(run) / "cohort", g, profile.image_size, cfg.step_mm, device, profile.render.prefilter)


def pose_test_images(profile: Profile, run: Path, subjects: int | None = None) -> TestImages:
    """One row per threatened subject: the first ``subjects`` Syn_test subjects at α = 0 (all: ``None``)."""
    rows = study.test_sets(Path(run), profile.synthetic.cen_alphas)["Syn_test"]
    rows = rows[np.isclose(rows["alpha"].to_numpy(float), 0.0)]
    if rows.empty:
        raise InputError(None, "pose: no Syn_test image at α = 0 in the run's datasets")
    keep = list(dict.fromkeys(rows["subject"]))[: subjects or None]
    return TestImages.from_manifest(rows[rows["subject"].isin(keep)], study.datasets_dir(Path(run)))


def pose_threat(profile: Profile, run: Path, steps: int | None = None, subjects: int | None = None,
                device=None) -> tuple[PoseThreat, TestImages]:
    """The ``pose`` threat of a profile (``steps``/``subjects`` override the ``pose:`` block) and its subjects."""
    cfg = PoseConfig.from_profile(profile)
    search = cfg.search if steps is None else PoseSearch(cfg.search.grid_alpha, cfg.search.grid_tilt, int(steps),
                                                          cfg.search.step_fraction, cfg.search.batch)
    th = PoseThreat(chains(profile, run, cfg, device), cfg.budgets, search)
    return th, pose_test_images(profile, run, cfg.subjects if subjects is None else subjects)


@dataclass
class Landscape:
    """Dice over an (α, tilt) grid at zero shift for one subject and model, and the search on it.

    ``alphas`` ``(A,)``, ``tilts`` ``(T,)`` (deg); ``dice``/``soft_dice`` ``(A, T)``: hard Dice of the
    thresholded prediction and soft Dice against the truth rendered at each pose; ``search``: the
    search result (path over all five parameters; the figure shows its α and tilt).
    """

    alphas: np.ndarray
    tilts: np.ndarray
    dice: np.ndarray
    soft_dice: np.ndarray
    search: SearchResult


def dice_landscape(model: torch.nn.Module, chain: PoseChain, budget: float, n_alpha: int, n_tilt: int,
                   search: PoseSearch, result: SearchResult | None = None) -> Landscape:
    """The Dice landscape over the pose box's (α, tilt) face (zero shift) and the search within ``budget``
    (``result``: a search already run for this model, chain and budget; else it is run here)."""
    from xrlib.attacks.pgd import dice_objective

    poses = grid_poses(budget, n_alpha, n_tilt)
    x, t = chain.render(poses, search.batch)
    with frozen(model), torch.no_grad():
        dt = next(model.parameters()).dtype
        logits = torch.cat([model(x[i:i + search.batch].to(dt)) for i in range(0, len(x), search.batch)])
        soft = 1.0 - dice_objective(logits, t.to(dt)).cpu().numpy()
        p = (torch.sigmoid(logits) > 0.5).cpu().numpy()[:, 0]
    tt = t.cpu().numpy()[:, 0] > 0.5
    inter, tot = (p & tt).sum((1, 2)), p.sum((1, 2)) + tt.sum((1, 2))
    hard = np.where(tot > 0, 2.0 * inter / np.maximum(tot, 1), 1.0)
    res = result if result is not None else search_pose(model, chain, budget, search)
    return Landscape(np.unique(poses[:, 0]), np.unique(poses[:, 1]), hard.reshape(n_alpha, n_tilt),
                     soft.reshape(n_alpha, n_tilt), res)


def worst_case_table(results: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice per model (rows) and budget (columns, deg; 0 = neutral pose)."""
    t = results.groupby(["model", "budget"], sort=False)["dice"].mean().unstack()
    return t.reindex(index=list(dict.fromkeys(results["model"])))


def grid_gain_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per model and budget (> 0): mean Dice at the grid start, after the search, and the search's gain
    (grid − search, Dice points; ≥ 0 in soft Dice by construction, the hard Dice may differ)."""
    r = results[results["budget"] > 0]
    t = r.groupby(["model", "budget"], sort=False).agg(dice_grid=("dice_grid", "mean"), dice_search=("dice", "mean"),
                                                       n=("dice", "size"))
    t["gain"] = t["dice_grid"] - t["dice_search"]
    return t.reset_index()
