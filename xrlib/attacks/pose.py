"""The worst-case patient pose: a search over (α, tilt, shift) through the differentiable renderer.

Threat ``pose`` (budget b, unit ``deg``): for each test subject, the pose within the box
``|α| ≤ b°, |tilt| ≤ b/4°, |shift_x|, |shift_y|, |shift_z| ≤ b mm`` where the model's hard Dice is lowest,
found through the whole chain

    pose → :class:`xrlib.drr.diffrender.DifferentiableRenderer` (naive physics, ∫μ dl)
         → :func:`xrlib.drr.physics.postprocess_torch` (window, unsharp mask — the datasets' display step)
         → :func:`xrlib.data.preprocess.preprocess_torch` (resize + pad to S×S, [0, 1])
         → network.

Two renderers per subject (:class:`PoseChain`): the **scored** one renders what the datasets
render (μ as is, the complete-ray field); every candidate pose is scored with it, by the hard Dice
of the thresholded prediction against the clavicle masks rendered at that pose. The **guide** marches
μ smoothed by a Gaussian of ``smooth_mm`` (about one voxel) and does not mask the field: the scored
image is piecewise linear in the pose between voxels, and 0 outside a field whose edge moves with
the pose, so its local derivative does not follow the trend that a step of about a degree or a
millimetre sees.

The search objective
--------------------
A smooth *image* is not enough: through a trained U-Net (MONAI: strided convolutions, instance
normalisation, PReLU) the guide's objective ``f(θ) = 1 − soft Dice`` (truth held at the current pose)
is still rough at the step scale. Measured on a trained U-Net of the quick build at the chapter's check
pose (h = 0.5° / 0.5 mm): the guide's network input follows central differences on 5 of 5 parameters,
but f's derivative on 1 of 5; a stronger prefilter of μ (2 or 3 mm), a Gaussian blur of the network
input (0.5–2 px) or softplus in place of the PReLUs (β = 3–30) reached 1–3 of 5. So the search follows a
**Gaussian-smoothed objective over the pose**

    F(θ) = (1/K) Σ_k f(θ + δ_k),     δ_k ~ N(0, diag(σ²)),   σ = ``smooth_pose`` (deg for α and tilt, mm for shifts)

estimated with **common random numbers**: the K offsets (:func:`pose_offsets`: antithetic pairs ±z of a
scrambled Sobol sample mapped to normal quantiles, seeded) are fixed for a search, so the function that
the search steps on, its autograd derivative and its central differences in :func:`gradient_check` are
one deterministic function (:func:`search_objective`). Its trend is f's smoothed at the scale σ, but the
rough part of f averages out only as about 1/√K (the offsets are a sample, not a quadrature), so K sets
how well its derivative follows the trend; whether it does, at the step scale, is measured, not assumed.
``smooth_pose = 0`` (or K = 1 with σ = 0) is the unsmoothed guide objective. Cost: K guide renders, K
network passes and one backward per step.

Searches (:func:`search_pose`), both over the same 5-D box and the same number of scored renders:

* ``gradient``: ``starts`` Latin-hypercube poses over the box (:func:`lhs_poses`, seeded, the same
  for every victim; their renders do not depend on the model and are cached) are scored; from the
  worst of them and the carried pose (below), ``steps`` projected **sign-gradient** steps on the
  search objective F (step of coordinate k at step t: ``step_fraction · bound_k · (steps − t) /
  steps``, clipped to the box), each iterate scored. Scored renders: ``starts + steps``.
* ``random``: ``starts + steps`` poses uniform over the box (:func:`random_poses`, seeded, shared by
  all victims and cached), scored.

Either returns the candidate with the lowest hard Dice (ties: the highest 1 − soft Dice). Budgets are
**nested**: a search at b also scores the pose found at the next smaller budget of the threat (inside
the larger box, its render cached), so the Dice found at b is at most the Dice found at any smaller
budget. The ground truth at a pose is the clavicle masks rendered there (path length ≥
``mask_threshold_mm``, as :func:`xrlib.drr.render.render_batch`), resized like the datasets' masks;
within a gradient step it is held constant (the gradient flows through the image). Budget 0 is the
subject at the neutral pose, rendered by the scored chain.
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

__all__ = ["GRADIENT_FLOOR", "GRADIENT_RTOL", "METHODS", "PARAMS", "PARAM_COLUMNS", "PoseChain", "PoseSearch",
           "PoseThreat", "SearchResult", "derivative_check", "gradient_check", "grid_poses", "image_gradient_check", "lhs_poses",
           "pose_bounds", "pose_offsets", "random_poses", "search_objective", "search_pose"]

#: The five pose parameters, in the order of a pose vector: α (deg), tilt (deg), shift x, y, z (mm, LPS).
PARAMS = ("alpha", "tilt", "shift_x", "shift_y", "shift_z")
#: Their units.
UNITS = ("deg", "deg", "mm", "mm", "mm")
#: The results columns of the found pose, named with their units.
PARAM_COLUMNS = tuple(f"pose_{p}_{u}" for p, u in zip(PARAMS, UNITS))
#: The two searches.
METHODS = ("gradient", "random")
#: :func:`gradient_check`: autograd agrees with central differences when ``|autograd − central| ≤
#: GRADIENT_RTOL · max(|central|, GRADIENT_FLOOR · the largest |central| of the five parameters)``.
GRADIENT_RTOL = 0.2
GRADIENT_FLOOR = 0.05


def pose_bounds(budget: float) -> np.ndarray:
    """The box half-widths ``(5,)`` of budget ``b``: ``(b°, b/4°, b mm, b mm, b mm)``."""
    b = float(budget)
    if not np.isfinite(b) or b < 0:
        raise InputError(None, f"pose: the budget must be a finite number ≥ 0, got {budget!r}")
    return np.array([b, b / 4.0, b, b, b])


def grid_poses(budget: float, n_alpha: int, n_tilt: int) -> np.ndarray:
    """Poses ``(n_alpha·n_tilt, 5)`` of a grid over the box's (α, tilt) face (ends included), no shift."""
    lim = pose_bounds(budget)
    a = np.linspace(-lim[0], lim[0], n_alpha) if n_alpha > 1 else np.zeros(1)
    t = np.linspace(-lim[1], lim[1], n_tilt) if n_tilt > 1 else np.zeros(1)
    aa, tt = np.meshgrid(a, t, indexing="ij")
    out = np.zeros((aa.size, 5))
    out[:, 0], out[:, 1] = aa.ravel(), tt.ravel()
    return out


def lhs_poses(budget: float, n: int, seed: int) -> np.ndarray:
    """``n`` Latin-hypercube poses ``(n, 5)`` over the box of ``budget`` (``scipy.stats.qmc.LatinHypercube``,
    seeded): each of the five parameters takes ``n`` values, one in each of ``n`` equal slices of its range.
    The unit sample depends on ``(n, seed)`` only, so the starts of two budgets are scaled copies."""
    from scipy.stats import qmc

    unit = qmc.LatinHypercube(d=5, seed=np.random.default_rng(int(seed))).random(int(n))
    return (2.0 * unit - 1.0) * pose_bounds(budget)


def random_poses(budget: float, n: int, seed: int) -> np.ndarray:
    """``n`` poses ``(n, 5)`` uniform over the box of ``budget`` (seeded; scaled copies across budgets)."""
    unit = np.random.default_rng([int(seed), 1]).uniform(-1.0, 1.0, (int(n), 5))
    return unit * pose_bounds(budget)


def pose_offsets(sigma: float, samples: int, seed: int) -> np.ndarray:
    """The K common offsets ``(K, 5)`` (deg for α and tilt, mm for the shifts) of the smoothed objective
    :func:`search_objective`: ``σ · z`` with ``z`` antithetic pairs ``±Φ⁻¹(u)`` of ``⌈K/2⌉`` scrambled Sobol
    points ``u`` (``scipy.stats.qmc.Sobol``, seeded), so the sample mean of each offset is 0; an odd K adds
    the zero offset. ``sigma = 0``: the single zero offset (the unsmoothed objective)."""
    from scipy.stats import norm, qmc

    sigma, k = float(sigma), int(samples)
    if not np.isfinite(sigma) or sigma < 0 or k < 1:
        raise InputError(None, f"pose offsets: need σ ≥ 0 and K ≥ 1, got σ = {sigma!r}, K = {samples!r}")
    if sigma == 0 or k == 1:
        return np.zeros((1, 5))
    m = k // 2
    sob = qmc.Sobol(d=5, scramble=True, seed=np.random.default_rng([int(seed), 2]))
    u = sob.random_base2(int(np.ceil(np.log2(m))))[:m] if m > 1 else sob.random(1)
    z = norm.ppf(np.clip(u, 1e-12, 1 - 1e-12))
    out = np.vstack([z, -z] + ([np.zeros((1, 5))] if k % 2 else []))
    return sigma * out


@dataclass(frozen=True)
class PoseSearch:
    """Settings of both searches: Latin-hypercube starts, sign-gradient steps and their first size (a
    fraction of each coordinate's bound), poses per rendering call, the seed of the starts, of the
    random search's poses and of the smoothing offsets, the guide's prefilter of μ (``smooth_mm``, mm),
    and the search objective's Gaussian smoothing over the pose: σ (``smooth_pose``; deg for α and tilt,
    mm for the shifts; 0: none) and its K common offsets (``smooth_samples``)."""

    starts: int = 8
    steps: int = 5
    step_fraction: float = 0.25
    batch: int = 8
    seed: int = 0
    smooth_mm: float = 1.0
    smooth_pose: float = 0.0
    smooth_samples: int = 1

    def __post_init__(self):
        for name in ("starts", "batch"):
            if int(getattr(self, name)) < 1:
                raise InputError(None, f"pose search: {name} must be ≥ 1, got {getattr(self, name)}")
        if int(self.steps) < 0:
            raise InputError(None, f"pose search: steps must be ≥ 0, got {self.steps}")
        if not 0 < float(self.step_fraction) <= 1:
            raise InputError(None, f"pose search: step_fraction must be in (0, 1], got {self.step_fraction}")
        if not np.isfinite(self.smooth_mm) or float(self.smooth_mm) < 0:
            raise InputError(None, f"pose search: smooth_mm must be ≥ 0, got {self.smooth_mm}")
        if not np.isfinite(self.smooth_pose) or float(self.smooth_pose) < 0:
            raise InputError(None, f"pose search: smooth_pose must be ≥ 0 (deg/mm), got {self.smooth_pose}")
        if int(self.smooth_samples) < 1 or (float(self.smooth_pose) > 0 and int(self.smooth_samples) < 2):
            raise InputError(None, f"pose search: smooth_samples must be ≥ 1 (≥ 2 with smooth_pose > 0), got {self.smooth_samples}")

    @property
    def offsets(self) -> np.ndarray:
        """The search objective's K common pose offsets ``(K, 5)`` (:func:`pose_offsets`)."""
        return pose_offsets(self.smooth_pose, self.smooth_samples, self.seed)

    @property
    def renders(self) -> int:
        """Scored renders per subject, budget and victim: ``starts + steps`` (either search)."""
        return int(self.starts) + int(self.steps)


class PoseChain:
    """Pose → network input and ground truth for one subject, through a scored renderer and a guide.

    ``renderer``: a :class:`xrlib.drr.diffrender.DifferentiableRenderer` with clavicles (the images that are
    scored); ``guide``: the renderer whose gradient steers the search (e.g. ``smooth_mm=1``,
    ``fov="none"``; default: ``renderer``); ``image_size``: the network's input side S. Rendering at
    S (``geometry.resized(S)``) makes the resize an identity. Scored renders are cached per pose
    (:meth:`render`): they do not depend on the model, so victims share them.
    """

    def __init__(self, renderer, image_size: int, mask_threshold_mm: float = MASK_THRESHOLD_MM, guide=None):
        for r in (renderer, guide):
            if r is not None and not r.has_masks:
                raise ValueError("the pose threat needs a renderer with clavicle masks")
        self.renderer, self.size, self.threshold = renderer, int(image_size), float(mask_threshold_mm)
        self.guide = renderer if guide is None else guide
        self.cache: dict = {}

    def __call__(self, poses: torch.Tensor, guided: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, truth)``, each ``(B, 1, S, S)``: the network input (differentiable w.r.t. ``poses`` ``(B, 5)``)
        and the binary ground truth (float 0/1, no gradient), by the scored renderer or (``guided``) the guide."""
        r = self.guide if guided else self.renderer
        poses = poses.to(r.dtype)
        out = r(poses[:, 0], poses[:, 1], poses[:, 2:])
        x = preprocess_torch(postprocess_torch(out.image, out.field, pitch_mm=r.geometry.pitch), self.size)
        hit = ((out.mask_left >= self.threshold) | (out.mask_right >= self.threshold)).to(r.dtype)
        truth = (resize_pad_torch(hit, self.size) >= 0.5).to(r.dtype)
        return x[:, None], truth[:, None]

    def render(self, poses: np.ndarray, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Scored renders of poses ``(N, 5)`` without gradient, ``batch`` at a time, each pose rendered once
        per chain (cached): ``(x, truth)``, each ``(N, 1, S, S)``."""
        poses = np.asarray(poses, float).reshape(-1, 5)
        keys = [tuple(np.round(p, 9)) for p in poses]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        with torch.no_grad():
            for i in range(0, len(todo), batch):
                chunk = np.array(todo[i:i + batch], float)
                x, t = self(torch.as_tensor(chunk, device=self.renderer.device))
                for k, xi, ti in zip(todo[i:i + batch], x, t):
                    self.cache[k] = (xi, ti)
        return torch.stack([self.cache[k][0] for k in keys]), torch.stack([self.cache[k][1] for k in keys])

    def neutral(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The neutral pose's input and truth ``(1, 1, S, S)``."""
        return self.render(np.zeros((1, 5)))


@dataclass
class SearchResult:
    """One subject's search: the worst pose found (``(5,)``, see :data:`PARAMS`), its hard Dice and
    1 − soft Dice, image and truth; the search (``gradient``/``random``); the start (the worst scored
    starting candidate, the carried pose included; the gradient search's first iterate) and its Dice; every scored candidate's
    pose ``(K, 5)``, Dice and objective (starts, the carried pose, iterates, in that order); the
    gradient path ``(steps + 1, 5)`` from the start; the scored renders it made (``starts + steps``;
    the carried pose's render is the smaller budget's)."""

    pose: np.ndarray
    dice: float
    objective: float
    image: np.ndarray
    truth: np.ndarray
    method: str
    start_pose: np.ndarray
    start_dice: float
    candidates: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    candidate_dice: np.ndarray = field(default_factory=lambda: np.zeros(0))
    candidate_objective: np.ndarray = field(default_factory=lambda: np.zeros(0))
    path: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    renders: int = 0


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    p = next(model.parameters(), None)
    return model(x.to(x.dtype if p is None else p.dtype))


def _score(model, x: torch.Tensor, truth: torch.Tensor, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Hard Dice (prediction p ≥ 0.5 vs truth) and 1 − soft Dice of each image, without gradient."""
    hard, soft = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            lg = _logits(model, x[i:i + batch])
            t = truth[i:i + batch].to(lg.dtype)
            soft.append(dice_objective(lg, t).double().cpu().numpy())
            prob = torch.sigmoid(lg).cpu().numpy()
            hard += [dice(p[0], tt[0]) for p, tt in zip(prob, t.cpu().numpy())]
    return np.asarray(hard, float), np.concatenate(soft) if soft else np.zeros(0)


def _worst(d: np.ndarray, obj: np.ndarray) -> int:
    """Index of the lowest hard Dice, ties broken by the highest objective."""
    return int(np.lexsort((-obj, d))[0])


def search_pose(model: torch.nn.Module, chain: PoseChain, budget: float, search: PoseSearch = PoseSearch(),
                method: str = "gradient", carry: np.ndarray | None = None) -> SearchResult:
    """The worst pose for ``model`` within ``budget`` by the ``gradient`` or ``random`` search (module
    docstring). ``carry``: a pose found at a smaller budget, scored as one more candidate (nesting)."""
    if method not in METHODS:
        raise InputError(None, f"pose search: method must be one of {', '.join(METHODS)}, got {method!r}")
    lim = pose_bounds(budget)
    if not lim.any():
        cands = np.zeros((1, 5))
    elif method == "gradient":
        cands = lhs_poses(budget, search.starts, search.seed)
    else:
        cands = random_poses(budget, search.renders, search.seed)
    renders = len(cands) if lim.any() else 0
    if carry is not None:
        carry = np.asarray(carry, float).reshape(5)
        if np.any(np.abs(carry) > lim + 1e-9):
            raise InputError(None, f"pose search: the carried pose {carry.tolist()} is outside the box of budget {budget:g}")
        cands = np.vstack([cands, carry[None]])
    with frozen(model):
        x, t = chain.render(cands, search.batch)
        d, obj = _score(model, x, t, search.batch)
        k = _worst(d, obj)
        start, start_dice = cands[k].copy(), float(d[k])
        path = [start.copy()]
        if method == "gradient" and lim.any() and search.steps:
            dev, dt = chain.guide.device, chain.guide.dtype
            lim_t = torch.as_tensor(lim, device=dev, dtype=dt)
            pose = torch.as_tensor(start, device=dev, dtype=dt)
            offsets = search.offsets
            for s in range(search.steps):
                with torch.no_grad():
                    _, tg = chain(pose[None], guided=True)  # the truth at the iterate, held within the step
                p = pose.clone().requires_grad_(True)
                (g,) = torch.autograd.grad(search_objective(model, chain, p, tg, offsets, search.batch), p)
                step = search.step_fraction * lim_t * (search.steps - s) / search.steps
                pose = torch.clamp(pose.detach() + step * torch.sign(g), -lim_t, lim_t)
                path.append(pose.cpu().double().numpy().copy())
            steps = np.array(path[1:])
            xs, ts = chain.render(steps, search.batch)
            ds, os_ = _score(model, xs, ts, search.batch)
            cands, d, obj = np.vstack([cands, steps]), np.concatenate([d, ds]), np.concatenate([obj, os_])
            x, t = torch.cat([x, xs]), torch.cat([t, ts])
            renders += len(steps)
        b = _worst(d, obj)
    return SearchResult(cands[b].copy(), float(d[b]), float(obj[b]), x[b, 0].cpu().numpy(), t[b, 0].cpu().numpy(),
                        method, start, start_dice, cands, d, obj, np.asarray(path), renders)


def search_objective(model: torch.nn.Module, chain: PoseChain, pose: torch.Tensor, truth: torch.Tensor,
                     offsets: np.ndarray, batch: int = 8, guided: bool = True) -> torch.Tensor:
    """The search objective ``F(pose) = (1/K) Σ_k (1 − soft Dice)(model(x(pose + δ_k)), truth)`` (module
    docstring), a scalar tensor differentiable w.r.t. ``pose`` ``(5,)`` (deg, deg, mm, mm, mm).

    ``truth`` ``(1, 1, S, S)`` is held fixed (the truth at the current pose); ``offsets`` ``(K, 5)`` are the
    common offsets δ_k (:func:`pose_offsets`; one zero row: the unsmoothed objective); ``x`` is the guide's
    network input (``guided``) or the scored renderer's; ``batch`` poses per rendering call.
    """
    r = chain.guide if guided else chain.renderer
    poses = pose.to(r.dtype)[None] + torch.as_tensor(np.asarray(offsets, float), device=r.device, dtype=r.dtype)
    total = None
    for i in range(0, len(poses), int(batch)):
        x, _ = chain(poses[i:i + int(batch)], guided=guided)
        lg = _logits(model, x)
        part = dice_objective(lg, truth.to(lg.dtype).expand(len(x), -1, -1, -1)).sum()
        total = part if total is None else total + part
    return total / len(poses)


def derivative_check(objective: Callable[[torch.Tensor], torch.Tensor], pose: Sequence[float],
                     h: Sequence[float] = (0.5,) * 5, dtype=torch.float64, device=None) -> pd.DataFrame:
    """Autograd derivative of a scalar ``objective`` of the pose ``(5,)`` vs its own central differences with
    steps ``h`` (deg for α and tilt, mm for the shifts): the check behind :func:`gradient_check`, for any
    deterministic function (common random numbers: a smoothed objective must reuse its offsets).

    One row per parameter: ``param``, ``unit``, ``h``, ``autograd``, ``central`` (per deg or mm),
    ``rel_error`` = ``|autograd − central| / max(|central|, GRADIENT_FLOOR · max |central|)`` (:data:`GRADIENT_FLOOR`) and
    ``agrees`` (``rel_error ≤`` :data:`GRADIENT_RTOL`).
    """
    base = torch.as_tensor(np.asarray(pose, float), device=device, dtype=dtype)
    hs = np.broadcast_to(np.asarray(h, float), (5,))
    p = base.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(objective(p), p)
    with torch.no_grad():
        e = torch.eye(5, dtype=dtype, device=base.device)
        fd = np.array([float(objective(base + hk * e[k]) - objective(base - hk * e[k])) / (2 * hk) for k, hk in enumerate(hs)])
    ag = g.double().cpu().numpy()
    scale = np.maximum(np.abs(fd), GRADIENT_FLOOR * np.abs(fd).max())
    rel = np.abs(ag - fd) / np.where(scale > 0, scale, np.inf)
    return pd.DataFrame({"param": PARAMS, "unit": UNITS, "h": hs, "autograd": ag, "central": fd, "rel_error": rel,
                         "agrees": rel <= GRADIENT_RTOL})


def gradient_check(model: torch.nn.Module, chain: PoseChain, pose: Sequence[float], h: Sequence[float] = (0.5,) * 5,
                   guided: bool = True, offsets: np.ndarray | None = None, batch: int = 8) -> pd.DataFrame:
    """d F/d pose by autograd vs central differences of the same F (:func:`derivative_check`), where F is
    :func:`search_objective` with the common ``offsets`` (``None``: the unsmoothed objective) through the guide
    (``guided``) or the scored renderer, truth fixed at ``pose`` — with a search's ``offsets``
    (:attr:`PoseSearch.offsets`), exactly the function its gradient steps follow. Columns as
    :func:`derivative_check`.
    """
    r = chain.guide if guided else chain.renderer
    off = np.zeros((1, 5)) if offsets is None else np.asarray(offsets, float).reshape(-1, 5)
    base = torch.as_tensor(np.asarray(pose, float), device=r.device, dtype=r.dtype)
    with frozen(model):
        with torch.no_grad():
            _, truth = chain(base[None], guided=guided)
        return derivative_check(lambda q: search_objective(model, chain, q, truth, off, batch, guided), pose, h,
                                dtype=r.dtype, device=r.device)


def image_gradient_check(chain: PoseChain, pose: Sequence[float], h: Sequence[float] = (0.5,) * 5, h_local: float = 0.01,
                         guided: bool = True) -> pd.DataFrame:
    """The renderer's share of :func:`gradient_check`: does the network input's local derivative follow its
    change over a step? Per pose parameter, the derivative of the network input (all pixels) by central
    differences with the tiny step ``h_local`` (deg or mm; the local derivative that autograd returns, which
    the tests pin against autograd) vs with the step ``h``.

    One row per parameter: ``param``, ``unit``, ``h``, ``rel_l2`` = ‖local − step‖ / ‖step‖ over the pixels
    and ``agrees`` (``rel_l2 ≤`` :data:`GRADIENT_RTOL`). No model is involved.
    """
    r = chain.guide if guided else chain.renderer
    base = torch.as_tensor(np.asarray(pose, float), device=r.device, dtype=r.dtype)
    hs = np.broadcast_to(np.asarray(h, float), (5,))
    e = torch.eye(5, dtype=r.dtype, device=r.device)
    rel = []
    with torch.no_grad():
        for k, hk in enumerate(hs):
            d = {}
            for step in (float(h_local), float(hk)):
                x, _ = chain(torch.stack([base + step * e[k], base - step * e[k]]), guided=guided)
                d[step] = ((x[0] - x[1]) / (2 * step)).double().flatten()
            rel.append(float((d[float(h_local)] - d[float(hk)]).norm() / d[float(hk)].norm().clamp_min(1e-300)))
    rel = np.asarray(rel)
    return pd.DataFrame({"param": PARAMS, "unit": UNITS, "h": hs, "rel_l2": rel, "agrees": rel <= GRADIENT_RTOL})


class PoseThreat(Threat):
    """The worst-case pose within budget b (see the module docstring) for each test subject.

    Args:
        chain: ``subject id → PoseChain`` (called once per subject; the chains are kept).
        grid: the budgets (b ≥ 0; the clean budget 0 is added).
        search: :class:`PoseSearch` settings.
        method: ``gradient`` or ``random``.
        chains: a dict of chains to share with another threat (e.g. the other search: cached renders
            are shared too).

    The test images' rows name the subjects (one row per subject, e.g. its α = 0 image); their
    images are not used: every image, the clean one included, is rendered by the chain.
    Extra columns: ``search``, the found pose (:data:`PARAM_COLUMNS`), the start of the search
    (``start_alpha_deg`` … ``start_shift_z_mm``: the worst of its starting candidates, the carried
    pose included; the gradient search's first iterate), ``dice_start`` (its Dice), ``objective`` (1 − soft
    Dice at the found pose) and ``renders`` (scored renders of the search).
    """

    name = "pose"
    budget_unit = "deg"
    geometric = True
    clean_budget = 0.0
    clean_keys = ("subject",)

    def __init__(self, chain: Callable[[str], PoseChain], grid: Sequence[float] = (5.0, 10.0, 20.0),
                 search: PoseSearch = PoseSearch(), method: str = "gradient", chains: dict | None = None):
        for b in grid:
            pose_bounds(b)
        if method not in METHODS:
            raise InputError(None, f"pose threat: method must be one of {', '.join(METHODS)}, got {method!r}")
        self.grid = tuple(sorted(dict.fromkeys([0.0, *(float(b) for b in grid)])))
        self.search, self.method, self._make = search, method, chain
        self._chains = {} if chains is None else chains
        #: ``(id(model), subject, budget) → SearchResult`` of every search run by :meth:`apply`.
        self.searches: dict = {}

    def budgets(self) -> tuple[float, ...]:
        return self.grid

    def chain(self, subject: str) -> PoseChain:
        if subject not in self._chains:
            self._chains[subject] = self._make(subject)
        return self._chains[subject]

    def result(self, model, subject: str, budget: float) -> SearchResult:
        """The search of ``model`` on ``subject`` at ``budget`` (run once; the smaller budgets first, nested)."""
        key = (id(model), subject, float(budget))
        if key not in self.searches:
            smaller = [b for b in self.grid if 0 < b < float(budget)]
            carry = self.result(model, subject, smaller[-1]).pose if smaller else None
            self.searches[key] = search_pose(model, self.chain(subject), budget, self.search, self.method, carry)
        return self.searches[key]

    def apply(self, model, test: TestImages, budget: float) -> Threatened:
        subjects = list(dict.fromkeys(test.rows["subject"].astype(str)))
        rows = test.rows.drop_duplicates("subject").reset_index(drop=True)
        images, masks, extra = [], [], []
        for sid in subjects:
            if float(budget) == self.clean_budget:
                x, t = self.chain(sid).neutral()
                img, truth = x[0, 0].cpu().numpy(), t[0, 0].cpu().numpy()
                pose, start, dstart, obj, renders = np.zeros(5), np.zeros(5), np.nan, np.nan, 0
            else:
                res = self.result(model, sid, budget)
                img, truth, pose, start, dstart, obj, renders = (res.image, res.truth, res.pose, res.start_pose,
                                                                 res.start_dice, res.objective, res.renders)
            images.append(img.astype(np.float32))
            masks.append(truth.astype(np.uint8))
            extra.append({"search": self.method, **dict(zip(PARAM_COLUMNS, pose)),
                          **{c.replace("pose_", "start_", 1): v for c, v in zip(PARAM_COLUMNS, start)},
                          "dice_start": dstart, "objective": obj, "renders": renders})
        ex = pd.DataFrame(extra)
        rows = rows.copy()
        rows["alpha"] = ex[PARAM_COLUMNS[0]].to_numpy(float)
        for col, src in zip(PARAMS[1:], PARAM_COLUMNS[1:]):
            if col in rows.columns:
                rows[col] = ex[src].to_numpy(float)
        same = np.full(len(rows), float(budget) == self.clean_budget)
        return Threatened(np.stack(images), np.stack(masks), rows, same_view=same, extra=ex)
