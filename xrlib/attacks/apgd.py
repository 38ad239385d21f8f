"""APGD (Croce & Hein, ICML 2020), the gradient-free Square-style random search, and the per-iterate record.

:func:`apgd_attack` ascends a per-image objective ``f(logits, target, t, T)`` inside the L∞ or L2
ε-ball intersected with the [0, 1] box, without a step-size parameter:

1. start ``x⁽⁰⁾`` (a uniform random point of the ball, or the clean image); step ``η⁽⁰⁾ = 2ε``;
2. ``x⁽¹⁾ = Π(x⁽⁰⁾ + η h(∇f(x⁽⁰⁾)))`` with ``h`` the sign (L∞) or the per-image normalised gradient (L2);
3. for ``k ≥ 1``: ``z = Π(x⁽ᵏ⁾ + η h(∇f(x⁽ᵏ⁾)))`` and the momentum step
   ``x⁽ᵏ⁺¹⁾ = Π(x⁽ᵏ⁾ + α(z − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾))`` with ``α = 0.75``;
4. at the checkpoints ``w_j = ⌈p_j N⌉`` with ``p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``
   the step is halved per image — and the iterate reset to the image's best point so far — when
   (i) fewer than ``ρ = 0.75`` of the steps since the last checkpoint raised the objective, or
   (ii) the step was not halved at the last checkpoint and the best objective has not moved since.

The best point of the ascent (highest objective) drives the restarts of step 4; the point the attack
*returns* is, per image, the iterate with the lowest :func:`score` (default: the hard Dice against
the truth, :func:`xrlib.nets.losses.dice_per_image`) over every iterate including the start — the
objective is only a surrogate of what is reported. One iteration costs one forward and one backward
pass; the score of iterate ``k`` is read from the forward pass that gives its gradient (one extra
forward pass scores the last iterate).

:func:`square_attack` is the gradient-free check (Andriushchenko et al., ECCV 2020, L∞ version with
one channel): from vertical stripes of ±ε, each query re-draws one random square of the perturbation
as ±ε and keeps the change per image when the objective rose; the side of the square shrinks with the
schedule of the paper. One query = one forward pass. It scores every query with the same ``score``.

Both return an :class:`AttackRun`: the chosen images, their scores and the mean score after each
iteration (``history``, for the convergence diagnostic).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from xrlib.attacks.pgd import _check, _direction, _random_start, frozen, project
from xrlib.nets.losses import dice_per_image

__all__ = ["AttackRun", "MOMENTUM", "RHO", "apgd_attack", "apgd_checkpoints", "pgd_run", "square_attack"]

#: APGD's momentum α and its checkpoint threshold ρ (the paper's values).
MOMENTUM, RHO = 0.75, 0.75


@dataclass
class AttackRun:
    """One attack run on a batch: ``images`` (per image the iterate with the lowest ``score``),
    ``score`` ``(B,)`` (that lowest score), ``history`` (mean over the batch of the running per-image
    minimum after each iteration, length = iterations + 1 with the start first), ``passes`` (forward
    passes spent; one gradient step counts one)."""

    images: torch.Tensor
    score: torch.Tensor
    history: np.ndarray
    passes: int


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ⌈p_j N⌉`` (j ≥ 1) at which APGD may halve its step, for ``N = steps``."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({int(math.ceil(round(q * steps, 9))) for q in p[1:] if q <= 1.0})


def _bshape(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _hard_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return dice_per_image(logits, target)


class _Best:
    """Per image, the lowest score seen and its image."""

    def __init__(self, x: torch.Tensor, score: torch.Tensor):
        self.x, self.score, self.history = x.detach().clone(), score.detach().clone(), [float(score.mean())]

    def update(self, x: torch.Tensor, score: torch.Tensor) -> None:
        better = score < self.score
        self.x = torch.where(_bshape(better, x), x.detach(), self.x)
        self.score = torch.minimum(score.detach(), self.score)
        self.history.append(float(self.score.mean()))


def _grad(model, fn, x, y, t, steps):
    x = x.detach().requires_grad_(True)
    logits = model(x)
    f = fn(logits, y, t, steps)
    (g,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), g.detach(), logits.detach()


def apgd_attack(
    model: torch.nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    eps: float,
    steps: int = 50,
    norm: str = "linf",
    objective: str | Callable[..., torch.Tensor] = "dice",
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _hard_dice,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> AttackRun:
    """APGD (module docstring) on ``images`` ``(B, …)`` in [0, 1]; ``target`` is passed to ``objective`` and ``score``.

    Args:
        eps: radius of the ball in [0, 1] image units (L∞ per pixel, L2 per image); 0 returns the images.
        steps: N, the iterations (the checkpoints scale with N).
        objective: a name of :data:`xrlib.attacks.pgd.OBJECTIVES` or ``f(logits, target, t, T)`` → (B,), ascended.
        score: ``score(logits, target)`` → (B,); per image the iterate with the lowest score is returned.
        generator: CPU generator of the random start (default: seeded with 0).
    """
    fn = _check(float(eps), steps, norm, objective, 1)
    x = images.detach()
    eps, steps = float(eps), int(steps)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    with frozen(model):
        x_cur = _random_start(x, eps, norm, gen) if (random_start and eps > 0) else x.clone()
        f_cur, g, logits = _grad(model, fn, x_cur, target, 1, steps)
        best = _Best(x_cur, score(logits, target))
        if eps == 0 or len(x) == 0:
            return AttackRun(best.x, best.score, np.asarray(best.history), 1)
        eta = torch.full((len(x),), 2.0 * eps, device=x.device, dtype=x.dtype)
        x_max, f_max, g_max = x_cur.clone(), f_cur.clone(), g.clone()
        x_prev = x_cur.clone()
        checkpoints = set(apgd_checkpoints(steps))
        last_w, rises = 0, torch.zeros(len(x), device=x.device)
        f_max_at_last, halved_last = f_max.clone(), torch.ones(len(x), dtype=torch.bool, device=x.device)
        passes = 1
        for k in range(steps):
            z = project(x_cur + _bshape(eta, x) * _direction(g, norm), x, eps, norm)
            if k == 0:
                x_new = z
            else:
                x_new = project(x_cur + MOMENTUM * (z - x_cur) + (1 - MOMENTUM) * (x_cur - x_prev), x, eps, norm)
            f_new, g_new, logits = _grad(model, fn, x_new, target, min(k + 2, steps), steps)
            passes += 1
            best.update(x_new, score(logits, target))
            rises += (f_new > f_cur).float()
            up = f_new > f_max
            x_max = torch.where(_bshape(up, x), x_new, x_max)
            g_max = torch.where(_bshape(up, x), g_new, g_max)
            f_max = torch.where(up, f_new, f_max)
            x_prev, x_cur, f_cur, g = x_cur, x_new, f_new, g_new
            it = k + 1
            if it in checkpoints and it < steps:
                few = rises < RHO * (it - last_w)
                stuck = (~halved_last) & (f_max_at_last >= f_max)
                halve = few | stuck
                eta = torch.where(halve, eta / 2.0, eta)
                m = _bshape(halve, x)
                x_cur = torch.where(m, x_max, x_cur)
                x_prev = torch.where(m, x_max, x_prev)
                g = torch.where(m, g_max, g)
                f_cur = torch.where(halve, f_max, f_cur)
                halved_last, f_max_at_last = halve, f_max.clone()
                last_w, rises = it, torch.zeros_like(rises)
    return AttackRun(best.x, best.score, np.asarray(best.history), passes)


def pgd_run(
    model: torch.nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    norm: str = "linf",
    objective: str | Callable[..., torch.Tensor] = "dice",
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _hard_dice,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> AttackRun:
    """PGD (:func:`xrlib.attacks.pgd.pgd_attack`, one restart) keeping, per image, the iterate with the lowest score."""
    fn = _check(float(eps), steps, norm, objective, 1)
    x = images.detach()
    eps, steps = float(eps), int(steps)
    step = eps / 5.0 if step_size is None else float(step_size)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    with frozen(model):
        x_adv = _random_start(x, eps, norm, gen) if (random_start and eps > 0) else x.clone()
        best = None
        for t in range(1, steps + 1):
            _, g, logits = _grad(model, fn, x_adv, target, t, steps)
            s = score(logits, target)
            if best is None:
                best = _Best(x_adv, s)
            else:
                best.update(x_adv, s)
            if eps == 0:
                return AttackRun(best.x, best.score, np.asarray(best.history), 1)
            x_adv = project(x_adv + step * _direction(g, norm), x, eps, norm)
        with torch.no_grad():
            best.update(x_adv, score(model(x_adv), target))
    return AttackRun(best.x, best.score, np.asarray(best.history), steps + 1)


def _square_fraction(i: int, queries: int, p_init: float = 0.05) -> float:
    """Square attack's schedule of the square's area fraction (rescaled to ``queries`` as in the paper's 10 000)."""
    i = int(i / max(queries, 1) * 10000)
    for edge, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if i <= edge:
            return p_init / div
    return p_init / 512


def square_attack(
    model: torch.nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    eps: float,
    queries: int = 100,
    objective: str | Callable[..., torch.Tensor] = "dice",
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _hard_dice,
    generator: torch.Generator | None = None,
    p_init: float = 0.05,
) -> AttackRun:
    """L∞ Square-style random search (module docstring) on ``images`` ``(B, 1, H, W)`` with ``queries`` forward passes."""
    fn = _check(float(eps), queries, "linf", objective, 1)
    x = images.detach()
    eps = float(eps)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    b, _, h, w = x.shape
    with frozen(model), torch.no_grad():
        stripes = (2.0 * torch.randint(0, 2, (b, 1, 1, w), generator=gen) - 1.0).expand(b, 1, h, w) * eps
        x_cur = project(x + stripes.to(device=x.device, dtype=x.dtype), x, eps, "linf")
        logits = model(x_cur)
        f_cur = fn(logits, target, 1, 1)
        best = _Best(x_cur, score(logits, target))
        for i in range(1, int(queries)):
            side = max(1, min(h, w, int(round(math.sqrt(_square_fraction(i, queries, p_init) * h * w)))))
            r = torch.randint(0, h - side + 1, (b,), generator=gen)
            c = torch.randint(0, w - side + 1, (b,), generator=gen)
            sign = (2.0 * torch.randint(0, 2, (b,), generator=gen) - 1.0) * eps
            rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
            inside = ((rows >= r[:, None, None]) & (rows < (r + side)[:, None, None])
                      & (cols >= c[:, None, None]) & (cols < (c + side)[:, None, None]))[:, None].to(x.device)
            delta = torch.where(inside, _bshape(sign.to(x.device, x.dtype), x).expand_as(x), x_cur - x)
            x_new = project(x + delta, x, eps, "linf")
            logits = model(x_new)
            f_new = fn(logits, target, 1, 1)
            best.update(x_new, score(logits, target))
            keep = f_new > f_cur
            x_cur = torch.where(_bshape(keep, x), x_new, x_cur)
            f_cur = torch.where(keep, f_new, f_cur)
    return AttackRun(best.x, best.score, np.asarray(best.history), int(queries))
