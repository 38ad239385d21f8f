"""Chapter 12 on a study run: the pose threat's chains, test subjects, Dice landscape and summaries.

The threatened subjects are the first ``pose.subjects`` Syn_test subjects (virtual subjects of one
CT, not independent patients); each is loaded from the run's cohort (``<run>/cohort``) and rendered
by :class:`xrlib.drr.diffrender.DifferentiableRenderer` (naive physics, the synthetic domain) at
``pose.render_size`` pixels over the profile's detector field, then post-processed and preprocessed
as the datasets are (:class:`xrlib.attacks.pose.PoseChain`); the search's guide is a second renderer
of the same subject with μ smoothed by ``pose.smooth_mm`` and no field mask.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.attacks.base import TestImages
from xrlib.attacks.pose import PoseChain, PoseSearch, PoseThreat, SearchResult, grid_poses
from xrlib.attacks.pgd import frozen
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile
from xrlib.drr.geometry import Geometry
from xrlib.studies.pose.config import PoseConfig
from xrlib.studies.rotation import study

__all__ = ["SubjectChains", "chains", "Landscape", "dice_landscape", "neutral_comparison", "pose_test_images", "pose_threat",
           "pose_threats", "search_table", "worst_case_table"]


@dataclass
class SubjectChains:
    """Picklable ``subject id → PoseChain`` over the run's cohort (volumes loaded on first use)."""

    cohort_dir: Path
    geometry: Geometry
    image_size: int
    step_mm: float | None = None
    device: object = None
    prefilter: bool = False  # the profile's render.prefilter, as the datasets were rendered
    smooth_mm: float = 1.0  # the guide's smoothing of μ (0: the guide is the scored renderer)

    def __call__(self, subject: str) -> PoseChain:
        from xrlib.anatomy.annotate import clavicles_from_labels
        from xrlib.anatomy.cohort import load_subject
        from xrlib.drr import DifferentiableRenderer

        ct, labels = load_subject(self.cohort_dir, subject)
        clav = clavicles_from_labels(labels)
        kw = dict(physics="naive", device=self.device, step_mm=self.step_mm, prefilter=self.prefilter)
        r = DifferentiableRenderer(ct, clav, self.geometry, **kw)
        guide = None
        if self.smooth_mm > 0:
            guide = DifferentiableRenderer(ct, clav, self.geometry, fov="none", smooth_mm=self.smooth_mm, **kw)
        return PoseChain(r, self.image_size, guide=guide)


def chains(profile: Profile, run: Path, cfg: PoseConfig | None = None, device=None) -> SubjectChains:
    """The chains of the run's subjects at the chapter's render size and sampling step."""
    cfg = cfg or PoseConfig.from_profile(profile)
    g = Geometry.from_render(profile.render)
    g = g if cfg.render_size is None else g.resized(cfg.render_size)
    return SubjectChains(Path(run) / "cohort", g, profile.image_size, cfg.step_mm, device, profile.render.prefilter,
                         cfg.search.smooth_mm)


def pose_test_images(profile: Profile, run: Path, subjects: int | None = None) -> TestImages:
    """One row per threatened subject: the first ``subjects`` Syn_test subjects at α = 0 (all: ``None``)."""
    rows = study.test_sets(Path(run), profile.synthetic.cen_alphas)["Syn_test"]
    rows = rows[np.isclose(rows["alpha"].to_numpy(float), 0.0)]
    if rows.empty:
        raise InputError(None, "pose: no Syn_test image at α = 0 in the run's datasets")
    keep = list(dict.fromkeys(rows["subject"]))[: subjects or None]
    return TestImages.from_manifest(rows[rows["subject"].isin(keep)], study.datasets_dir(Path(run)))


def pose_threat(profile: Profile, run: Path, steps: int | None = None, subjects: int | None = None,
                device=None, method: str = "gradient") -> tuple[PoseThreat, TestImages]:
    """The ``pose`` threat of a profile (``steps``/``subjects`` override the ``pose:`` block) and its subjects."""
    cfg = PoseConfig.from_profile(profile)
    search = cfg.search if steps is None else replace(cfg.search, steps=int(steps))
    th = PoseThreat(chains(profile, run, cfg, device), cfg.budgets, search, method)
    return th, pose_test_images(profile, run, cfg.subjects if subjects is None else subjects)


def pose_threats(profile: Profile, run: Path, device=None) -> tuple[dict[str, PoseThreat], TestImages]:
    """Both searches of the ``pose:`` block, ``{"gradient": …, "random": …}``, sharing one set of chains
    (and so every cached render), and the threatened subjects."""
    grad, test = pose_threat(profile, run, device=device)
    rand = PoseThreat(grad._make, grad.grid, grad.search, "random", chains=grad._chains)
    return {"gradient": grad, "random": rand}, test


@dataclass
class Landscape:
    """Dice over an (α, tilt) grid at zero shift for one subject and model, and the search on it.

    ``alphas`` ``(A,)``, ``tilts`` ``(T,)`` (deg); ``dice``/``soft_dice`` ``(A, T)``: hard Dice of the
    thresholded prediction and soft Dice against the truth rendered at each pose (scored renderer);
    ``search``: the gradient search's result (path over all five parameters; the figure shows α and tilt).
    """

    alphas: np.ndarray
    tilts: np.ndarray
    dice: np.ndarray
    soft_dice: np.ndarray
    search: SearchResult


def dice_landscape(model: torch.nn.Module, chain: PoseChain, budget: float, n_alpha: int, n_tilt: int,
                   search: PoseSearch, result: SearchResult) -> Landscape:
    """The Dice landscape over the pose box's (α, tilt) face (zero shift) beside ``result``, the search
    already run for this model, chain and budget."""
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
    return Landscape(np.unique(poses[:, 0]), np.unique(poses[:, 1]), hard.reshape(n_alpha, n_tilt),
                     soft.reshape(n_alpha, n_tilt), result)


def worst_case_table(results: pd.DataFrame, search: str = "gradient") -> pd.DataFrame:
    """Mean Dice per model (rows) and budget (columns, deg; 0 = neutral pose) of one search."""
    r = results[results["search"] == search] if "search" in results.columns else results
    t = r.groupby(["model", "budget"], sort=False)["dice"].mean().unstack()
    return t.reindex(index=list(dict.fromkeys(r["model"])))


#: The columns of :func:`search_table`.
SEARCH_TABLE_COLUMNS = ("model", "budget", "dice_gradient", "dice_random", "difference", "gradient_worse", "random_worse",
                        "ties", "subjects", "renders_gradient", "renders_random")


def search_table(results: pd.DataFrame) -> pd.DataFrame:
    """Gradient vs random search per model and budget (> 0), at the same number of scored renders:
    mean Dice of each (``dice_gradient``, ``dice_random``), their difference (gradient − random; < 0:
    the gradient search found worse poses), the subjects where each found the strictly lower Dice
    (``gradient_worse``, ``random_worse``), ties, and the renders per subject."""
    r = results[results["budget"] > 0]
    w = r.pivot_table(index=["model", "budget", "subject"], columns="search", values="dice", sort=False)
    n = r.groupby(["model", "budget", "search"], sort=False)["renders"].max().unstack()
    if not {"gradient", "random"} <= set(w.columns):
        return pd.DataFrame(columns=list(SEARCH_TABLE_COLUMNS))
    w = w.dropna(subset=["gradient", "random"])  # cells that ran one search only (the defended models) are left out
    rows = []
    for (m, b), g in w.groupby(level=[0, 1], sort=False):
        gd, rd = g["gradient"].to_numpy(float), g["random"].to_numpy(float)
        rows.append({"model": m, "budget": b, "dice_gradient": gd.mean(), "dice_random": rd.mean(),
                     "difference": gd.mean() - rd.mean(), "gradient_worse": int((gd < rd).sum()),
                     "random_worse": int((rd < gd).sum()), "ties": int((gd == rd).sum()), "subjects": len(gd),
                     "renders_gradient": int(n.loc[(m, b), "gradient"]), "renders_random": int(n.loc[(m, b), "random"])})
    return pd.DataFrame(rows, columns=list(SEARCH_TABLE_COLUMNS))


def neutral_comparison(threat: PoseThreat, victims: dict, test: TestImages) -> pd.DataFrame:
    """At b = 0: the chain's neutral-pose image vs the dataset's α = 0 image of the same subject.

    One row per subject and model: ``rel_l2`` = ‖chain − dataset‖ / ‖dataset‖ of the network inputs,
    ``mask_disagreement`` (fraction of pixels where the two truths differ), and the model's Dice on
    each image against its own truth (``dice_chain``, ``dice_dataset``).
    """
    from xrlib.eval.metrics import dice

    rows = []
    rt = test.rows.reset_index(drop=True)
    for sid in dict.fromkeys(rt["subject"].astype(str)):
        k = int(np.flatnonzero(rt["subject"].astype(str).to_numpy() == sid)[0])
        x, t = threat.chain(sid).neutral()
        xc, tc = x[0, 0].cpu().numpy().astype(float), t[0, 0].cpu().numpy() > 0.5
        xd, td = np.asarray(test.images[k], float), np.asarray(test.masks[k]) > 0.5
        rel = float(np.linalg.norm(xc - xd) / np.linalg.norm(xd))
        for name, model in victims.items():
            p = next(model.parameters())
            with torch.no_grad():
                pr = torch.sigmoid(model(torch.as_tensor(np.stack([xc, xd])[:, None], dtype=p.dtype, device=p.device)))
            pr = pr[:, 0].cpu().numpy()
            rows.append({"subject": sid, "model": name, "rel_l2": rel, "mask_disagreement": float(np.mean(tc != td)),
                         "dice_chain": dice(pr[0], tc), "dice_dataset": dice(pr[1], td)})
    return pd.DataFrame(rows)
