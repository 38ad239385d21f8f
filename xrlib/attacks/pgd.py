"""Gradient attacks on the network input: PGD (paper 002, Algorithm 1) and SegPGD, with the threats ``pgd`` and ``segpgd``.

:func:`pgd_attack` perturbs a batch of images ``(B, 1, S, S)`` in [0, 1] so as to *raise* an
objective of the model's logits against the ground truth:

1. random start ``x₀ = clip(x + ξ)`` with ``ξ`` uniform in the ε-ball (L∞: uniform per pixel in
   [−ε, ε]; L2: uniform in the ball, a Gaussian direction with radius ``ε·u^(1/d)``), or ``x₀ = x``;
2. ``N`` steps ``x ← Π(x + s·h(∇ₓJ))`` with ``h`` the sign of the gradient (L∞) or the gradient
   divided by its L2 norm per image (L2); ``Π`` projects ``δ = x − x_clean`` onto the ε-ball
   (L∞: clamp to [−ε, ε]; L2: ``δ·min(1, ε/‖δ‖₂)``) and then the image onto [0, 1] — clamping to the
   box keeps ``δ`` inside the ball, so the result satisfies both constraints;
3. with ``restarts > 1`` the whole attack runs again from new random starts and, per image, the
   result with the lowest hard Dice against the ground truth is kept (ties: the earlier one).

Objectives (:data:`OBJECTIVES`): ``"dice"`` — 1 − soft Dice of ``sigmoid(logits)`` against the truth
(paper 002 eq. 5, the in-distribution attack; MONAI's ``DiceLoss``, as in training); ``"ce"`` — the
mean pixel-wise binary cross-entropy (the ART cross-check); ``"balanced-ce"`` and ``"masked-ce"`` —
the class-balanced and the masked cross-entropy of SEA (Croce, Singh & Hein, ECCV 2024); ``"segpgd"`` — SegPGD (Gu et al., ECCV
2022), the cross-entropy split into the pixels the model currently classifies correctly (set
``P_T``) and wrongly (``P_F``), with a weight that moves from the former to the latter over the
steps ``t = 1 … T``::

    L(t) = (1 − λ(t)) / (H·W) · Σ_{j ∈ P_T} CE_j  +  λ(t) / (H·W) · Σ_{k ∈ P_F} CE_k,    λ(t) = (t − 1) / (2T)

(first only the correct pixels are pushed over the boundary; later the wrong ones are kept wrong).

The attack is batched (one gradient for the whole batch, each image's objective independent of
the others), runs on the images' device, draws its randomness from a ``torch.Generator`` (CPU) and
leaves the model as it found it: its parameters are frozen during the attack (``requires_grad``
restored), it runs in eval mode (its training flag restored), and only the input gets gradients.

:class:`PGDThreat` and :class:`SegPGDThreat` are the threats ``pgd`` and ``segpgd`` of the results
contract: budget = ε in [0, 1] image units, unit ``linf`` or ``l2``; budget 0 is the clean image,
and the threatened image lies on the same pixels, so ``dice_vs_clean_pred`` and ``changed`` are filled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from xrlib.attacks.base import TestImages, Threat, Threatened
from xrlib.core.errors import InputError
from xrlib.nets.losses import dice_per_image

__all__ = ["LINF_BUDGETS", "NORMS", "OBJECTIVES", "PGDThreat", "SegPGDThreat", "balanced_ce_objective", "ce_objective", "input_attack_grid",
           "dice_objective", "masked_ce_objective",
           "frozen", "l2_budgets", "perturbation_norms", "pgd_attack", "project", "segpgd_objective", "segpgd_weight",
           "uniform_noise"]

#: The norms of the ε-ball.
NORMS = ("linf", "l2")
#: Paper 002's L∞ evaluation grid (ε in [0, 1] image units; 0 is the clean image).
LINF_BUDGETS = (0.0, 0.01, 0.03, 0.05, 0.07, 0.1, 0.2)
_TINY = 1e-12


def l2_budgets(image_size: int, linf: Sequence[float] = LINF_BUDGETS) -> tuple[float, ...]:
    """L2 radii matched to L∞ budgets for ``S × S`` images: ``ε·S``, the L2 norm of a perturbation of
    ±ε at every pixel (the energy of a saturated L∞ attack, spent where the attacker likes)."""
    return tuple(float(e) * float(image_size) for e in linf)


# ------------------------------------------------------------------------------------------- objectives
# Each maps (logits, target, t, T) to one value per image (B,); the attack ascends their sum.


def dice_objective(logits: torch.Tensor, target: torch.Tensor, t: int = 1, steps: int = 1) -> torch.Tensor:
    """1 − soft Dice of ``sigmoid(logits)`` against ``target`` per image (MONAI ``DiceLoss``, the training loss)."""
    from monai.losses import DiceLoss

    return DiceLoss(sigmoid=True, reduction="none")(logits, target).reshape(len(logits))


def _pixel_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")


def ce_objective(logits: torch.Tensor, target: torch.Tensor, t: int = 1, steps: int = 1) -> torch.Tensor:
    """Mean pixel-wise binary cross-entropy per image (= two-class softmax CE of the logits ``(−z/2, z/2)``)."""
    return _pixel_ce(logits, target).flatten(1).mean(1)


def segpgd_weight(t: int, steps: int) -> float:
    """SegPGD's λ(t) = (t − 1) / (2T) for step ``t`` of ``T`` (1-based): 0 at the first step, < ½ at the last."""
    return (t - 1) / (2.0 * steps)


def segpgd_objective(logits: torch.Tensor, target: torch.Tensor, t: int = 1, steps: int = 1) -> torch.Tensor:
    """SegPGD's loss per image (module docstring): ``(1 − λ)/(HW)·Σ_correct CE + λ/(HW)·Σ_wrong CE``."""
    lam = segpgd_weight(t, steps)
    correct = ((logits > 0) == (target > 0.5)).to(logits.dtype)
    weight = (1.0 - lam) * correct + lam * (1.0 - correct)
    return (weight * _pixel_ce(logits, target)).flatten(1).mean(1)


def balanced_ce_objective(logits: torch.Tensor, target: torch.Tensor, t: int = 1, steps: int = 1) -> torch.Tensor:
    """Class-balanced cross-entropy per image: ½ (mean CE over the truth's foreground + mean CE over its
    background); a class absent from the truth contributes 0. The small clavicles weigh as much as the rest."""
    ce = _pixel_ce(logits, target).flatten(1)
    fg = (target > 0.5).flatten(1).to(ce.dtype)
    bg = 1.0 - fg
    return 0.5 * ((ce * fg).sum(1) / fg.sum(1).clamp(min=1.0) + (ce * bg).sum(1) / bg.sum(1).clamp(min=1.0))


def masked_ce_objective(logits: torch.Tensor, target: torch.Tensor, t: int = 1, steps: int = 1) -> torch.Tensor:
    """Masked cross-entropy per image (SEA, Croce, Singh & Hein 2024): the pixel-wise CE summed over the pixels
    the model still classifies correctly, divided by H·W — the pixels already flipped stop pulling the gradient."""
    correct = ((logits > 0) == (target > 0.5)).to(logits.dtype)
    return (correct * _pixel_ce(logits, target)).flatten(1).mean(1)


#: Objective name → per-image objective ``f(logits, target, t, T)``.
OBJECTIVES: dict[str, Callable[..., torch.Tensor]] = {
    "dice": dice_objective, "ce": ce_objective, "segpgd": segpgd_objective, "balanced-ce": balanced_ce_objective,
    "masked-ce": masked_ce_objective}


# --------------------------------------------------------------------------------------------- the attack


@contextmanager
def frozen(model: torch.nn.Module):
    """Run ``model`` in eval mode with its parameters frozen; restore both afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


def _l2(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.ndim - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``x_adv`` projected onto the ε-ball around ``x`` (per image) and then onto [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * torch.clamp(eps / (_l2(delta) + _TINY), max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    if norm == "linf":
        xi = (2.0 * torch.rand(x.shape, generator=generator) - 1.0) * eps
    else:
        d = x[0].numel()
        direction = torch.randn(x.shape, generator=generator)
        direction = direction / (_l2(direction) + _TINY)
        radius = eps * torch.rand((len(x),) + (1,) * (x.ndim - 1), generator=generator) ** (1.0 / d)
        xi = direction * radius
    return project(x + xi.to(device=x.device, dtype=x.dtype), x, eps, norm)


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / (_l2(grad) + _TINY)


def _check(eps: float, steps: int, norm: str, objective, restarts: int) -> Callable[..., torch.Tensor]:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not eps >= 0:
        raise ValueError(f"ε must be ≥ 0, got {eps!r}")
    if int(steps) < 1 or int(restarts) < 1:
        raise ValueError(f"steps and restarts must be ≥ 1, got {steps!r} and {restarts!r}")
    if callable(objective):
        return objective
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective]


def pgd_attack(
    model: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    norm: str = "linf",
    objective: str | Callable[..., torch.Tensor] = "dice",
    random_start: bool = True,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial images for ``images`` ``(B, 1, S, S)`` in [0, 1] with ground truth ``masks`` (same shape).

    Args:
        model: maps ``(B, 1, S, S)`` images to ``(B, 1, S, S)`` logits; left unchanged (module docstring).
        eps: radius of the ball (L∞: per pixel; L2: per image), in [0, 1] image units. ε = 0 returns a copy
            of ``images`` without running the model.
        steps: N, the gradient steps per restart.
        step_size: s (default ε/5, paper 002's evaluation setting).
        norm: ``"linf"`` (sign of the gradient) or ``"l2"`` (gradient normalised per image).
        objective: a name of :data:`OBJECTIVES` or a function ``f(logits, target, t, T)`` → one value per image.
        random_start: start from a uniform random point of the ball (Algorithm 1) or from the clean image.
        restarts: independent runs; per image the one with the lowest hard Dice is kept.
        generator: the CPU generator of the random starts (default: a fresh one seeded with 0).

    Returns the adversarial images (detached, on the images' device, inside the ε-ball and [0, 1]).
    """
    fn = _check(float(eps), steps, norm, objective, restarts)
    x = images.detach()
    y = masks.detach().to(device=x.device, dtype=x.dtype)
    if float(eps) == 0.0 or len(x) == 0:
        return x.clone()
    eps = float(eps)
    step = eps / 5.0 if step_size is None else float(step_size)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    best, best_dice = None, None
    with frozen(model):
        for _ in range(int(restarts)):
            x_adv = _random_start(x, eps, norm, gen) if random_start else x.clone()
            for t in range(1, int(steps) + 1):
                x_adv.requires_grad_(True)
                loss = fn(model(x_adv), y, t, int(steps)).sum()
                (grad,) = torch.autograd.grad(loss, x_adv)
                x_adv = project(x_adv.detach() + step * _direction(grad, norm), x, eps, norm)
            if restarts == 1:
                return x_adv.detach()
            with torch.no_grad():
                d = dice_per_image(model(x_adv), y)
            if best is None:
                best, best_dice = x_adv.detach(), d
            else:
                worse = d < best_dice
                best = torch.where(worse.reshape(-1, *([1] * (x.ndim - 1))), x_adv.detach(), best)
                best_dice = torch.minimum(d, best_dice)
    return best


def uniform_noise(images: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``images`` plus noise uniform in [−ε, ε] per pixel, clamped to [0, 1] (the random-noise baseline)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    xi = (2.0 * torch.rand(images.shape, generator=gen) - 1.0) * float(eps)
    return (images.detach() + xi.to(device=images.device, dtype=images.dtype)).clamp(0.0, 1.0)


def perturbation_norms(adv: np.ndarray, clean: np.ndarray) -> pd.DataFrame:
    """Per image: ``delta_linf`` and ``delta_l2`` of ``adv − clean`` (for checks in the results)."""
    delta = (np.asarray(adv, np.float64) - np.asarray(clean, np.float64)).reshape(len(adv), -1)
    return pd.DataFrame({"delta_linf": np.abs(delta).max(1, initial=0.0), "delta_l2": np.linalg.norm(delta, axis=1)})


# ---------------------------------------------------------------------------------------------- threats


def input_attack_grid(name: str, grid: Sequence[float] | None, norm: str, image_size: int | None) -> tuple[float, ...]:
    """The budgets of an input attack ``name``: ``grid``, or by default :data:`LINF_BUDGETS` (L∞) or
    :func:`l2_budgets` of ``image_size`` (L2); :class:`InputError` unless they are ≥ 0 and include the clean 0."""
    if grid is None:
        if norm == "l2" and image_size is None:
            raise InputError(None, f"{name}: L2 budgets need the image size (or an explicit grid)")
        grid = LINF_BUDGETS if norm == "linf" else l2_budgets(int(image_size))
    out = tuple(float(b) for b in grid)
    if not np.isclose(out, 0.0).any() or min(out) < 0:
        raise InputError(None, f"{name}: the budgets {list(out)} must be ≥ 0 and include the clean 0")
    return out


class PGDThreat(Threat):
    """PGD on the network input with the objective 1 − soft Dice (budget = ε, unit ``linf`` or ``l2``).

    The budget ``grid`` defaults to :data:`LINF_BUDGETS` (L∞) or, for L2, to :func:`l2_budgets` of
    ``image_size`` (required then); it must contain the clean budget 0. ``step_fraction`` gives the step ``s = step_fraction · ε``.
    The random starts of budget ε come from a generator seeded with ``(seed, ε)``, so a budget's
    images do not depend on which other budgets run. Extra columns: ``steps``, ``restarts``,
    ``step_size``, ``delta_linf``, ``delta_l2``.
    """

    name = "pgd"
    objective = "dice"
    clean_budget = 0.0
    clean_keys = ("subject", "alpha")

    def __init__(self, grid: Sequence[float] | None = None, steps: int = 10, norm: str = "linf",
                 restarts: int = 1, step_fraction: float = 0.2, random_start: bool = True, seed: int = 0,
                 batch_size: int = 16, image_size: int | None = None):
        if norm not in NORMS:
            raise InputError(None, f"{self.name}: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if int(steps) < 1 or int(restarts) < 1:
            raise InputError(None, f"{self.name}: steps and restarts must be ≥ 1, got {steps} and {restarts}")
        self.grid = input_attack_grid(self.name, grid, norm, image_size)
        self.norm, self.budget_unit = norm, norm
        self.steps, self.restarts, self.step_fraction = int(steps), int(restarts), float(step_fraction)
        self.random_start, self.seed, self.batch_size = bool(random_start), int(seed), int(batch_size)

    def budgets(self) -> tuple[float, ...]:
        return self.grid

    def generator(self, budget: float) -> torch.Generator:
        """The generator of the random starts at ``budget``."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(round(float(budget) * 1e6)))

    def attack(self, model: torch.nn.Module, images: np.ndarray, masks: np.ndarray, budget: float) -> np.ndarray:
        """Adversarial images ``(N, S, S)`` of ``images`` at ``budget``, in batches, on the model's device."""
        dev = next(iter(model.parameters()), torch.empty(0)).device
        gen, out = self.generator(budget), []
        for i in range(0, len(images), self.batch_size):
            x = torch.as_tensor(images[i:i + self.batch_size], dtype=torch.float32, device=dev)[:, None]
            y = torch.as_tensor(masks[i:i + self.batch_size], dtype=torch.float32, device=dev)[:, None]
            adv = pgd_attack(model, x, y, budget, self.steps, self.step_fraction * float(budget), self.norm,
                             self.objective, self.random_start, self.restarts, gen)
            out.append(adv[:, 0].cpu().numpy())
        return np.concatenate(out) if out else np.asarray(images, np.float32).copy()

    def apply(self, model, test: TestImages, budget: float) -> Threatened:
        images = np.asarray(test.images, np.float32)
        adv = images.copy() if float(budget) == 0.0 else self.attack(model, images, test.masks, budget)
        extra = perturbation_norms(adv, images)
        extra.insert(0, "step_size", self.step_fraction * float(budget))
        extra.insert(0, "restarts", self.restarts)
        extra.insert(0, "steps", self.steps)
        return Threatened(adv, test.masks, test.rows, same_view=np.ones(len(adv), bool), extra=extra)


class SegPGDThreat(PGDThreat):
    """SegPGD (module docstring) at the same budgets and parameters as :class:`PGDThreat`."""

    name = "segpgd"
    objective = "segpgd"
