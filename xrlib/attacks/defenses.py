"""Training recipes that defend against input attacks: PGD/SegPGD adversarial training and random-noise training.

They live here, not in :mod:`xrlib.training`, because they need the attacks and training may not
import them; importing this module registers the recipes by name (pass
``imports=("xrlib.attacks.defenses",)`` to :class:`xrlib.training.tasks.TrainTask` / ``train_all``
when training runs in another process). Each replaces a training batch ``(x, y)`` by
``([x; x'], [y; y])``: the training losses are batch means of per-image (Dice) or per-pixel (BCE)
terms, so the loss of the doubled batch is exactly ``½ L(x) + ½ L(x')`` (paper 002 eq. 10).

* ``pgd-adversarial`` — ``x'`` = PGD (:func:`xrlib.attacks.pgd.pgd_attack`, objective 1 − soft Dice)
  of the current model; paper 002's setting by default: N = 20, ε = 0.07 (L∞), step 0.01.
* ``segpgd-adversarial`` — the same with the SegPGD objective.
* ``uniform-noise`` — ``x'`` = ``x`` plus noise uniform in [−0.07, 0.07] per pixel, clamped to [0, 1].

The attack's random start and the noise come from the step's generator (``ctx.generator``), so a
resumed training equals an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from xrlib.attacks.pgd import pgd_attack, uniform_noise
from xrlib.training.recipes import Recipe, StepContext, register_recipe

__all__ = ["PGDAdversarialTraining", "SegPGDAdversarialTraining", "UniformNoiseTraining"]


def _doubled(x: torch.Tensor, x2: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x, x2]), torch.cat([y, y])


@register_recipe
@dataclass
class PGDAdversarialTraining(Recipe):
    """Train on clean and PGD images, ½ L(x) + ½ L(x_adv) (parameters: those of :func:`pgd_attack`)."""

    name: ClassVar[str] = "pgd-adversarial"
    objective: ClassVar[str] = "dice"
    eps: float = 0.07
    steps: int = 20
    step_size: float = 0.01
    norm: str = "linf"
    random_start: bool = True

    def batch(self, x, y, model, ctx: StepContext):
        x_adv = pgd_attack(model, x, y, self.eps, self.steps, self.step_size, self.norm, self.objective,
                           self.random_start, generator=ctx.generator)
        return _doubled(x, x_adv, y)


@register_recipe
@dataclass
class SegPGDAdversarialTraining(PGDAdversarialTraining):
    """As ``pgd-adversarial`` with the SegPGD objective."""

    name: ClassVar[str] = "segpgd-adversarial"
    objective: ClassVar[str] = "segpgd"


@register_recipe
@dataclass
class UniformNoiseTraining(Recipe):
    """Train on clean and noisy images, ½ L(x) + ½ L(x + U[−max_noise, max_noise]) (clamped to [0, 1])."""

    name: ClassVar[str] = "uniform-noise"
    max_noise: float = 0.07

    def batch(self, x, y, model, ctx: StepContext):
        return _doubled(x, uniform_noise(x, self.max_noise, ctx.generator), y)
