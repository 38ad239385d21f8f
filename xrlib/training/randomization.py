"""Domain randomization (SyntheX, paper 001 §5.1) as a training recipe: ``regular`` and ``strong``.

Per training image, with parameters drawn from the hook's seeded generator (``ctx.generator``):

``regular`` (always, in this order)
    Gaussian noise ``x + N(0, σ)``, σ ~ U(0.005, 0.1) × the image's intensity range; gamma
    ``norm(x)^γ`` on the min–max normalised image, γ ~ U(0.7, 1.3); a random square crop of 90 % of
    the side at a random place, resized back to the input size (the mask is cropped with it).
``strong``
    ``regular``, then up to two (0, 1 or 2, uniformly) of the eleven effects below, distinct, in random
    order: invert; impulse / pepper / salt noise on 10 % of the pixels; affine warp (rotation ±15°,
    translation ±10 %, scale 0.9–1.1, shear ±10°: the paper gives no ranges, these are assumptions);
    contrast (linear, log or sigmoid); blur (Gaussian σ = 3 px, or average blur with an odd kernel
    3–7 px — the paper allows 2–7, even kernels would shift the image); box corruption (1–5 boxes of
    5–20 % of the side replaced by large noise); dropout (1–10 % of the pixels, or a rectangle of 2–5 %
    of the image area, set to 0); sharpen or emboss (blend factor α ~ U(0, 1)); pooling (average, max,
    min or median, kernel 2–4, back to size by nearest-neighbour); multiply (global brightness or
    per-pixel factors, 50–150 %); distort (a random thin-plate-spline warp of a 4 × 4 control grid,
    standing in for imgaug's piecewise-affine warp).

Geometric effects (crop, affine, distort, pooling's resampling does not move content) transform the
mask with the image (nearest-neighbour, so it stays binary). Images are clipped to [0, 1] at the end.

From kornia (maintained): gamma/log/sigmoid/linear contrast (``kornia.enhance``), Gaussian, box and
median blur and the 3×3 filters (``kornia.filters``), crop-and-resize, affine and thin-plate-spline warps
(``kornia.geometry``). Written here: the sampling of every parameter from the seeded generator (kornia's
random augmentations draw from torch's global generator, which would break resuming), the noise, dropout,
box-corruption, invert, multiply and pooling effects (one line each in torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xrlib.training.recipes import Recipe, StepContext, register_recipe

__all__ = ["DR_LEVELS", "DR_VERSION", "STRONG_EFFECTS", "DomainRandomization", "randomize", "randomize_batch"]

DR_LEVELS = ("regular", "strong")
#: Bumped when the randomization changes what it draws or does; callers put it in the recipe parameters
#: (``version``), so models trained with an older randomization are not reused.
DR_VERSION = 1


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g))


def _int(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _norm(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def _crop(x, y, g, frac: float = 0.9):
    from kornia.geometry.transform import crop_and_resize

    s = x.shape[-1]
    c = max(1, int(round(frac * s)))
    top, left = _int(g, 0, s - c), _int(g, 0, s - c)
    box = torch.tensor([[[left, top], [left + c - 1, top], [left + c - 1, top + c - 1], [left, top + c - 1]]], dtype=x.dtype)
    xi = crop_and_resize(x[None], box, (s, s), mode="bilinear")[0]
    yi = crop_and_resize(y[None], box, (s, s), mode="nearest")[0]
    return xi, yi, (top, left, c)


def regular(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, record: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Regular DR of one image ``x`` ``(1, S, S)`` and its mask ``y`` (see the module docstring).

    ``record``: filled with the drawn ``sigma_fraction``, ``gamma`` and ``crop`` (top, left, side)."""
    from kornia.enhance import adjust_gamma

    rng = float(x.max() - x.min())
    frac, gamma = _u(g, 0.005, 0.1), _u(g, 0.7, 1.3)
    x = x + frac * (rng if rng > 0 else 1.0) * torch.randn(x.shape, generator=g, dtype=x.dtype)
    x = adjust_gamma(_norm(x), gamma)
    x, y, box = _crop(x, y, g)
    if record is not None:
        record.update(sigma_fraction=frac, gamma=gamma, crop=box)
    return x, y


# --------------------------------------------------------------------------- strong effects (x, y, g) → (x, y)

def _invert(x, y, g):
    return x.max() - x, y


def _impulse(x, y, g):
    hit = torch.rand(x.shape, generator=g) < 0.1
    kind = _int(g, 0, 2)  # impulse (random values), pepper (0), salt (max)
    val = torch.rand(x.shape, generator=g, dtype=x.dtype) if kind == 0 else torch.full_like(x, 0.0 if kind == 1 else float(x.max()))
    return torch.where(hit, val, x), y


def _affine(x, y, g):
    from kornia.geometry.transform import get_affine_matrix2d, warp_affine

    s = x.shape[-1]
    t = torch.tensor([[_u(g, -0.1, 0.1) * s, _u(g, -0.1, 0.1) * s]], dtype=x.dtype)
    c = torch.tensor([[(s - 1) / 2, (s - 1) / 2]], dtype=x.dtype)
    sc = torch.full((1, 2), _u(g, 0.9, 1.1), dtype=x.dtype)
    ang = torch.tensor([_u(g, -15.0, 15.0)], dtype=x.dtype)
    sh = torch.tensor([math.tan(math.radians(_u(g, -10.0, 10.0)))], dtype=x.dtype)  # kornia takes the shear factor
    m = get_affine_matrix2d(t, c, sc, ang, sx=sh, sy=torch.zeros(1, dtype=x.dtype))[:, :2]
    return (warp_affine(x[None], m, (s, s), mode="bilinear")[0], warp_affine(y[None], m, (s, s), mode="nearest")[0])


def _contrast(x, y, g):
    from kornia.enhance import adjust_contrast, adjust_log, adjust_sigmoid

    kind = _int(g, 0, 2)
    x = x.clamp(0, 1)
    if kind == 0:
        return adjust_contrast(x, _u(g, 0.5, 1.5)), y
    if kind == 1:
        return adjust_log(x, _u(g, 0.7, 1.3)), y
    return adjust_sigmoid(x, _u(g, 0.4, 0.6), _u(g, 5.0, 10.0)), y


def _blur(x, y, g):
    from kornia.filters import box_blur, gaussian_blur2d

    if _int(g, 0, 1) == 0:
        return gaussian_blur2d(x[None], (19, 19), (3.0, 3.0))[0], y
    k = 2 * _int(g, 1, 3) + 1
    return box_blur(x[None], (k, k))[0], y


def _boxes(x, y, g):
    s = x.shape[-1]
    x = x.clone()
    for _ in range(_int(g, 1, 5)):
        h, w = (max(1, int(_u(g, 0.05, 0.2) * s)) for _ in range(2))
        top, left = _int(g, 0, s - h), _int(g, 0, s - w)
        x[..., top:top + h, left:left + w] = 0.5 + 0.5 * torch.randn((x.shape[0], h, w), generator=g, dtype=x.dtype)
    return x, y


def _dropout(x, y, g):
    s = x.shape[-1]
    if _int(g, 0, 1) == 0:
        return torch.where(torch.rand(x.shape, generator=g) < _u(g, 0.01, 0.1), torch.zeros_like(x), x), y
    area = _u(g, 0.02, 0.05) * s * s
    aspect = _u(g, 0.5, 2.0)
    h = min(s, max(1, int(round(math.sqrt(area * aspect)))))
    w = min(s, max(1, int(round(area / h))))
    top, left = _int(g, 0, s - h), _int(g, 0, s - w)
    x = x.clone()
    x[..., top:top + h, left:left + w] = 0.0
    return x, y


def _sharpen(x, y, g):
    from kornia.filters import filter2d

    a = _u(g, 0.0, 1.0)
    if _int(g, 0, 1) == 0:  # sharpen: blend with the sharpened image
        k = torch.tensor([[[0, -1, 0], [-1, 5, -1], [0, -1, 0]]], dtype=x.dtype)
        return (1 - a) * x + a * filter2d(x[None], k, border_type="replicate")[0], y
    k = torch.tensor([[[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]], dtype=x.dtype)  # emboss: add the relief
    return x + a * (filter2d(x[None], k, border_type="replicate")[0] - x), y


def _pool(x, y, g):
    from kornia.filters import median_blur

    s, k, kind = x.shape[-1], _int(g, 2, 4), _int(g, 0, 3)
    if kind == 3:  # median: kornia needs an odd kernel
        return median_blur(x[None], (3, 3))[0], y
    pool = {0: lambda t: F.avg_pool2d(t, k, ceil_mode=True), 1: lambda t: F.max_pool2d(t, k, ceil_mode=True),
            2: lambda t: -F.max_pool2d(-t, k, ceil_mode=True)}[kind]
    return F.interpolate(pool(x[None]), size=(s, s), mode="nearest")[0], y


def _multiply(x, y, g):
    if _int(g, 0, 1) == 0:
        return x * _u(g, 0.5, 1.5), y
    return x * (0.5 + torch.rand(x.shape, generator=g, dtype=x.dtype)), y


def _distort(x, y, g):
    from kornia.geometry.transform import get_tps_transform, warp_image_tps

    n = 4
    grid = torch.linspace(-0.8, 0.8, n, dtype=x.dtype)
    src = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1).reshape(1, -1, 2)
    dst = src + 0.05 * (2 * torch.rand(src.shape, generator=g, dtype=x.dtype) - 1)
    kc, kw = get_tps_transform(dst, src)
    return (warp_image_tps(x[None], src, kc, kw, align_corners=False)[0],
            (warp_image_tps(y[None], src, kc, kw, align_corners=False)[0] >= 0.5).to(y.dtype))


#: The eleven strong effects (name → ``(x, y, generator) → (x, y)``).
STRONG_EFFECTS: dict[str, Callable] = {
    "invert": _invert, "impulse": _impulse, "affine": _affine, "contrast": _contrast, "blur": _blur,
    "box_corruption": _boxes, "dropout": _dropout, "sharpen_emboss": _sharpen, "pooling": _pool,
    "multiply": _multiply, "distort": _distort,
}


def randomize(x: torch.Tensor, y: torch.Tensor, level: str, g: torch.Generator, effects: list[str] | None = None,
              record: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """DR of one image ``(C, S, S)`` and mask; returns ``(x, y, strong effects applied)``.

    ``effects`` forces the strong effects (for figures and tests); default drawn from ``g``. ``record``:
    filled with the regular step's parameters (:func:`regular`)."""
    if level not in DR_LEVELS:
        raise ValueError(f"unknown domain randomization level {level!r}; expected one of {', '.join(DR_LEVELS)}")
    dtype = x.dtype
    x, y = regular(x.float(), y.float(), g, record)
    chosen: list[str] = []
    if level == "strong":
        names = list(STRONG_EFFECTS)
        if effects is None:
            k = _int(g, 0, 2)
            order = torch.randperm(len(names), generator=g)[:k].tolist()
            chosen = [names[i] for i in order]
        else:
            bad = [e for e in effects if e not in STRONG_EFFECTS]
            if bad:
                raise ValueError(f"unknown strong effect(s) {bad}; expected some of {', '.join(names)}")
            chosen = list(effects)
        for name in chosen:
            x, y = STRONG_EFFECTS[name](x, y, g)
    return x.clamp(0.0, 1.0).to(dtype), (y >= 0.5).to(dtype), chosen


def randomize_batch(x: torch.Tensor, y: torch.Tensor, level: str, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`randomize` of every image of a batch ``(B, C, S, S)`` (CPU work; returned on ``x``'s device)."""
    dev = x.device
    out = [randomize(xi.cpu(), yi.cpu(), level, g)[:2] for xi, yi in zip(x, y)]
    return torch.stack([o[0] for o in out]).to(dev), torch.stack([o[1] for o in out]).to(dev)


@register_recipe
@dataclass
class DomainRandomization(Recipe):
    """Train on domain-randomized batches (``level``: ``regular`` or ``strong``); validation images are untouched."""

    name = "domain_randomization"
    level: str = "strong"
    version: int = DR_VERSION

    def __post_init__(self):
        if self.level not in DR_LEVELS:
            raise ValueError(f"unknown domain randomization level {self.level!r}; expected one of {', '.join(DR_LEVELS)}")

    def batch(self, x, y, model, ctx: StepContext):
        return randomize_batch(x, y, self.level, ctx.generator)
