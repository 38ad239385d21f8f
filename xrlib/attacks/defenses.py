"""Training recipes that defend against input attacks: PGD/SegPGD and deformation + bias-field adversarial training, random-noise training.

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
* ``deformation-adversarial`` — ``x'`` = a per-image adversarial smooth deformation + bias field
  (paper 004's parameterisation, :mod:`xrlib.attacks.deformation`), and the mask is warped with the
  same deformation: ``([x; x'], [y; y'])``.

The attack's random start and the noise come from the step's generator (``ctx.generator``), so a
resumed training equals an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from xrlib.attacks.pgd import pgd_attack, uniform_noise
from xrlib.training.recipes import Recipe, StepContext, register_recipe

__all__ = ["DeformationAdversarialTraining", "PGDAdversarialTraining", "SegPGDAdversarialTraining", "UniformNoiseTraining"]


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


@register_recipe
@dataclass
class DeformationAdversarialTraining(Recipe):
    """Train on clean images and their per-image adversarial deformation + bias field (paper 004's
    parameterisation, :func:`xrlib.attacks.deformation.optimise_fields`, a few RMSProp steps at the
    target ``xi``), with the mask warped by the same D: ½ L(x, y) + ½ L(I_DV, warp(y, D)).

    Parameters: ``xi``, ``steps``, ``lr``, ``grid``, ``max_disp_px`` (pixels of the network input),
    ``max_bias``, ``lambda_d``, ``lambda_v``, ``init_std``, ``variant`` — the fields of
    :class:`xrlib.attacks.deformation.FieldSettings`. The random start comes from ``ctx.generator``.
    """

    name: ClassVar[str] = "deformation-adversarial"
    xi: float = 2.0
    steps: int = 3
    lr: float = 0.1
    grid: int = 8
    max_disp_px: float = 2.0
    max_bias: float = 0.1
    lambda_d: float = 0.1
    lambda_v: float = 0.01
    init_std: float = 0.1
    variant: str = "DV"

    def __post_init__(self):
        self.fields()  # bad values fail when the configuration is validated

    def fields(self):
        from xrlib.attacks.deformation import FieldSettings

        return FieldSettings(variant=self.variant, grid=self.grid, max_disp_px=self.max_disp_px, max_bias=self.max_bias,
                             lambda_d=self.lambda_d, lambda_v=self.lambda_v, steps=self.steps, lr=self.lr,
                             init_std=self.init_std)

    def batch(self, x, y, model, ctx: StepContext):
        from xrlib.attacks.deformation import optimise_fields, warp_mask

        adv, disp, _, _ = optimise_fields(model, x, self.xi, self.fields(), ctx.generator)
        return torch.cat([x, adv]), torch.cat([y, warp_mask(y, disp)])
