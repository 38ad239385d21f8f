"""The rotation threat: the synthetic test subjects at the profile's angles (budget = α in degrees).

No re-rendering: the threatened image of a subject at budget α is its Syn_test image rendered at α
(the ground truth is the clavicle mask projected at α, i.e. transformed with the image); the clean
image is the same subject at α = 0. The clean prediction lies on another projection, so
``dice_vs_clean_pred`` and ``changed`` stay empty except at α = 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xrlib.attacks.base import TestImages, Threat, Threatened
from xrlib.core.errors import InputError

__all__ = ["RotationThreat"]


class RotationThreat(Threat):
    """Patient rotation about the SI axis over the angles ``alphas`` (degrees; must include 0)."""

    name = "rotation"
    budget_unit = "deg"
    geometric = True
    clean_budget = 0.0
    clean_keys = ("subject",)

    def __init__(self, alphas: Sequence[float]):
        self.alphas = tuple(float(a) for a in alphas)
        if not np.isclose(self.alphas, 0.0).any():
            raise InputError(None, f"rotation: the angles {list(self.alphas)} lack the clean angle 0°")

    def budgets(self) -> tuple[float, ...]:
        return self.alphas

    def apply(self, model, test: TestImages, budget: float) -> Threatened:
        keep = np.isclose(test.rows["alpha"].to_numpy(float), float(budget))
        if not keep.any():
            raise InputError(None, f"rotation: no test image at α = {budget:g}°")
        sub = test.subset(keep)
        return Threatened(sub.images, sub.masks, sub.rows,
                          same_view=np.full(len(sub.rows), bool(np.isclose(budget, self.clean_budget))))
