"""The worst-case patient pose: a search over (α, tilt, shift) through the differentiable renderer.

Threat ``pose`` (budget b, unit ``deg``): for each test subject, the pose within the box
``|α| ≤ b°, |tilt| ≤ b/4°, |shift_x|, |shift_y|, |shift_z| ≤ b mm`` that minimises the model's soft
Dice, found through the whole differentiable chain

    pose → :class:`xrlib.drr.diffrender.DifferentiableRenderer` (naive physics, ∫μ dl)
         → :func:`xrlib.drr.physics.postprocess_torch` (window, unsharp mask — the datasets' display step)
         → :func:`xrlib.data.preprocess.preprocess_torch` (resize + pad to S×S, [0, 1])
         → network → 1 − soft Dice (MONAI ``DiceLoss``, :func:`xrlib.attacks.pgd.dice_objective`).

Search (:func:`search_pose`): a coarse grid over (α, tilt) at zero shift (``grid_alpha`` ×
``grid_tilt`` points spanning the box, corners included) is rendered once per subject and budget
and shared by all models; the search starts at the grid point with the highest objective and takes
``steps`` projected **sign-gradient** steps on all five pose parameters (step of coordinate k at
step t: ``step_fraction · bound_k · (steps − t) / steps``, then clipped to the box). It keeps the
best pose seen (grid start included), so it never ends worse than the grid start. It is
deterministic (no random start). The ground truth at a pose is the clavicle masks rendered at that
pose (path length ≥ ``mask_threshold_mm``, as :func:`xrlib.drr.render.render_batch`), resized
like the datasets' masks; it is held constant within a gradient step (the gradient flows through
the image, not through the binarised truth). Budget 0 is the subject at the neutral pose, rendered
by the same chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from xrlib.attacks.base import TestImages, Threat, Threatened
from xrlib.attacks.pgd import dice_objective, frozen
from xrlib.core.errors import InputError
from xrlib.data.preprocess import preprocess_torch, resize_pad_torch
from xrlib.drr.physics import postprocess_torch
from xrlib.drr.render import MASK_THRESHOLD_MM
from xrlib.eval.metrics import dice

__all__ = ["PARAMS", "PoseChain", "PoseSearch", "PoseThreat", "SearchResult", "grid_poses", "pose_bounds", "search_pose"]

#: The five pose parameters, in the order of a pose vector: α (deg), tilt (deg), shift x, y, z (mm, LPS).
PARAMS = ("alpha", "tilt", "shift_x", "shift_y", "shift_z")


def pose_bounds(budget: float) -> np.ndarray:
    """The box half-widths ``(5,)`` of budget ``b``: ``(b°, b/4°, b mm, b mm, b mm)``."""
    b = float(budget)
    if not np.isfinite(b) or b < 0:
        raise InputError(None, f"pose: the budget must be a finite number ≥ 0, got {budget!r}")
    return np.array([b, b / 4.0, b, b, b])


def grid_poses(budget: float, n_alpha: int, n_tilt: int) -> np.ndarray:
    """Poses ``(n_alpha·n_tilt, 5)`` of the coarse grid: α and tilt evenly over the box (ends included), no shift."""
    lim = pose_bounds(budget)
    a = np.linspace(-lim[0], lim[0], n_alpha) if n_alpha > 1 else np.zeros(1)
    t = np.linspace(-lim[1], lim[1], n_tilt) if n_tilt > 1 else np.zeros(1)
    aa, tt = np.meshgrid(a, t, indexing="ij")
    out = np.zeros((aa.size, 5))
    out[:, 0], out[:, 1] = aa.ravel(), tt.ravel()
    return out


@dataclass(frozen=True)
class PoseSearch:
    """Settings of the search: grid points per axis, sign-gradient steps and their first size
    (a fraction of each coordinate's bound), poses per rendering call."""

    grid_alpha: int = 5
    grid_tilt: int = 3
    steps: int = 5
    step_fraction: float = 0.25
    batch: int = 8

    def __post_init__(self):
        for name in ("grid_alpha", "grid_tilt", "batch"):
            if int(getattr(self, name)) < 1:
                raise InputError(None, f"pose search: {name} must be ≥ 1, got {getattr(self, name)}")
        if int(self.steps) < 0:
            raise InputError(None, f"pose search: steps must be ≥ 0, got {self.steps}")
        if not 0 < float(self.step_fraction) <= 1:
            raise InputError(None, f"pose search: step_fraction must be in (0, 1], got {self.step_fraction}")


class PoseChain:
    """Pose → network input and ground truth for one subject (renderer, post-processing, preprocessing).

    ``renderer``: a :class:`xrlib.drr.diffrender.DifferentiableRenderer` with clavicles; ``image_size``: the
    network's input side S. Rendering at S (``geometry.resized(S)``) makes the resize an identity.
    """

    def __init__(self, renderer, image_size: int, mask_threshold_mm: float = MASK_THRESHOLD_MM):
        if not renderer.has_masks:
            raise ValueError("the pose threat needs a renderer with clavicle masks")
        self.renderer, self.size, self.threshold = renderer, int(image_size), float(mask_threshold_mm)
        self.grid_cache: dict = {}

    def __call__(self, poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, truth)``, each ``(B, 1, S, S)``: the network input (differentiable w.r.t. ``poses`` ``(B, 5)``)
        and the binary ground truth (float 0/1, no gradient)."""
        r = self.renderer
        poses = poses.to(r.dtype)
        out = r(poses[:, 0], poses[:, 1], poses[:, 2:])
        x = preprocess_torch(postprocess_torch(out.image, out.field, pitch_mm=r.geometry.pitch), self.size)
        hit = ((out.mask_left >= self.threshold) | (out.mask_right >= self.threshold)).to(r.dtype)
        truth = (resize_pad_torch(hit, self.size) >= 0.5).to(r.dtype)
        return x[:, None], truth[:, None]

    def render(self, poses: np.ndarray, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`__call__` without gradient for many poses ``(N, 5)``, ``batch`` at a time."""
        xs, ts = [], []
        with torch.no_grad():
            for i in range(0, len(poses), batch):
                x, t = self(torch.as_tensor(np.asarray(poses[i:i + batch], float), device=self.renderer.device))
                xs.append(x)
                ts.append(t)
        return torch.cat(xs), torch.cat(ts)

    def neutral(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The neutral pose's input and truth ``(1, 1, S, S)`` (rendered once)."""
        if "neutral" not in self.grid_cache:
            self.grid_cache["neutral"] = self.render(np.zeros((1, 5)))
        return self.grid_cache["neutral"]

    def grid(self, budget: float, search: PoseSearch) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """The coarse grid's poses and renders at ``budget`` (rendered once, shared by all models)."""
        key = (float(budget), search.grid_alpha, search.grid_tilt)
        if key not in self.grid_cache:
            poses = grid_poses(budget, search.grid_alpha, search.grid_tilt)
            self.grid_cache[key] = (poses, *self.render(poses, search.batch))
        return self.grid_cache[key]


@dataclass
class SearchResult:
    """One subject's search: the best pose (``(5,)``, see :data:`PARAMS`), its objective (1 − soft
    Dice), image, truth; the grid start; the path of iterates (``(steps + 1, 5)``) and their
    objectives; the grid's poses and objectives."""

    pose: np.ndarray
    objective: float
    image: np.ndarray
    truth: np.ndarray
    grid_pose: np.ndarray
    grid_objective: float
    grid_image: np.ndarray
    grid_truth: np.ndarray
    path: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    path_objective: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grid: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    grid_objectives: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _objective(model, x: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    p = next(model.parameters(), None)
    dt = x.dtype if p is None else p.dtype
    return dice_objective(model(x.to(dt)), truth.to(dt))


def search_pose(model: torch.nn.Module, chain: PoseChain, budget: float, search: PoseSearch = PoseSearch()) -> SearchResult:
    """The worst pose for ``model`` within budget ``budget`` (see the module docstring); never worse than the grid."""
    lim = pose_bounds(budget)
    with frozen(model):
        grid, gx, gt = chain.grid(budget, search)
        with torch.no_grad():
            obj = torch.cat([_objective(model, gx[i:i + search.batch], gt[i:i + search.batch])
                             for i in range(0, len(gx), search.batch)]).double().cpu().numpy()
        k = int(np.argmax(obj))
        best = [grid[k].copy(), float(obj[k]), gx[k, 0].cpu().numpy(), gt[k, 0].cpu().numpy()]
        start = best[:]
        path, path_obj = [grid[k].copy()], [float(obj[k])]
        dev, dt = chain.renderer.device, chain.renderer.dtype
        lim_t = torch.as_tensor(lim, device=dev, dtype=dt)
        pose = torch.as_tensor(grid[k], device=dev, dtype=dt)
        if lim.any():
            for t in range(search.steps):
                p = pose.clone().requires_grad_(True)
                x, truth = chain(p[None])
                loss = _objective(model, x, truth).sum()
                (g,) = torch.autograd.grad(loss, p)
                if t > 0:  # the start's objective is the grid's
                    path.append(pose.detach().cpu().numpy().copy())
                    path_obj.append(float(loss.detach()))
                    if float(loss.detach()) > best[1]:
                        best = [path[-1], float(loss.detach()), x[0, 0].detach().cpu().numpy(), truth[0, 0].cpu().numpy()]
                step = search.step_fraction * lim_t * (search.steps - t) / search.steps
                pose = torch.clamp(pose.detach() + step * torch.sign(g), -lim_t, lim_t)
            if search.steps:
                with torch.no_grad():
                    x, truth = chain(pose[None])
                    val = float(_objective(model, x, truth).sum())
                path.append(pose.cpu().numpy().copy())
                path_obj.append(val)
                if val > best[1]:
                    best = [path[-1], val, x[0, 0].cpu().numpy(), truth[0, 0].cpu().numpy()]
    return SearchResult(best[0], best[1], best[2], best[3], start[0], start[1], start[2], start[3],
                        np.asarray(path), np.asarray(path_obj), grid, obj)


def _predict_one(model, image: np.ndarray) -> np.ndarray:
    p = next(model.parameters())
    with torch.no_grad():
        return torch.sigmoid(model(torch.as_tensor(image, dtype=p.dtype, device=p.device)[None, None]))[0, 0].cpu().numpy()


class PoseThreat(Threat):
    """The worst-case pose within budget b (see the module docstring) for each test subject.

    Args:
        chain: ``subject id → PoseChain`` (called once per subject; the chains are kept).
        grid: the budgets (b ≥ 0; the clean budget 0 is added).
        search: :class:`PoseSearch` settings.

    The test images' rows name the subjects (one row per subject, e.g. its α = 0 image); their
    images are not used: every image, the clean one included, is rendered by the chain.
    Extra columns: the found pose (``pose_alpha``, ``pose_tilt``, ``pose_shift_x/y/z``), the grid
    start (``grid_alpha``, ``grid_tilt``), ``dice_grid`` (Dice at the grid start) and the soft-Dice
    objective at both (``objective``, ``objective_grid``; 1 − soft Dice).
    """

    name = "pose"
    budget_unit = "deg"
    geometric = True
    clean_budget = 0.0
    clean_keys = ("subject",)

    def __init__(self, chain: Callable[[str], PoseChain], grid: Sequence[float] = (5.0, 10.0, 20.0),
                 search: PoseSearch = PoseSearch()):
        for b in grid:
            pose_bounds(b)
        self.grid = tuple(dict.fromkeys([0.0, *(float(b) for b in grid)]))
        self.search, self._make, self._chains = search, chain, {}
        #: ``(id(model), subject, budget) → SearchResult`` of every search run by :meth:`apply`.
        self.searches: dict = {}

    def budgets(self) -> tuple[float, ...]:
        return self.grid

    def chain(self, subject: str) -> PoseChain:
        if subject not in self._chains:
            self._chains[subject] = self._make(subject)
        return self._chains[subject]

    def apply(self, model, test: TestImages, budget: float) -> Threatened:
        subjects = list(dict.fromkeys(test.rows["subject"].astype(str)))
        rows = test.rows.drop_duplicates("subject").reset_index(drop=True)
        images, masks, extra = [], [], []
        for sid in subjects:
            ch = self.chain(sid)
            if float(budget) == self.clean_budget:
                x, t = ch.neutral()
                img, truth = x[0, 0].cpu().numpy(), t[0, 0].cpu().numpy()
                pose, gpose, obj, gobj, dgrid = np.zeros(5), np.zeros(5), np.nan, np.nan, np.nan
            else:
                res = search_pose(model, ch, budget, self.search)
                self.searches[(id(model), sid, float(budget))] = res
                img, truth, pose, gpose, obj, gobj = res.image, res.truth, res.pose, res.grid_pose, res.objective, res.grid_objective
                dgrid = dice(_predict_one(model, res.grid_image), res.grid_truth)
            images.append(img.astype(np.float32))
            masks.append(truth.astype(np.uint8))
            extra.append({"pose_alpha": pose[0], "pose_tilt": pose[1], "pose_shift_x": pose[2], "pose_shift_y": pose[3],
                          "pose_shift_z": pose[4], "grid_alpha": gpose[0], "grid_tilt": gpose[1], "dice_grid": dgrid,
                          "objective": obj, "objective_grid": gobj})
        ex = pd.DataFrame(extra)
        rows = rows.copy()
        rows["alpha"] = ex["pose_alpha"].to_numpy(float)
        for col, src in (("tilt", "pose_tilt"), ("shift_x", "pose_shift_x"), ("shift_y", "pose_shift_y"), ("shift_z", "pose_shift_z")):
            if col in rows.columns:
                rows[col] = ex[src].to_numpy(float)
        same = np.full(len(rows), float(budget) == self.clean_budget)
        return Threatened(np.stack(images), np.stack(masks), rows, same_view=same, extra=ex)
