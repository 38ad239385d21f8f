"""The acquisition-shift threat: the same subjects and poses, imaged by an unfamiliar scanner (budget = scale).

Budget ``s`` scales the per-image acquisition variability of :mod:`xrlib.drr.acquisition` about the
simulator's fixed default setting: 0 is that default (the clean image: the realistic chain at one
setting), 1 the documented ranges (tube voltage, dose, scatter, detector blur and gain, window,
unsharp masking, tone curve), 2 twice their extent. The images are rendered beforehand (they are not
a function of the victim), one per test image and budget, with the same random draws scaled by the
budget; the ground truth is the projected mask, which no acquisition setting moves
(``geometric = False``, ``same_view``: the clean prediction lies on the same pixels). Extra columns:
the image's acquisition settings (``acq_<parameter>``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from xrlib.attacks.base import TestImages, Threat, Threatened
from xrlib.core.errors import InputError

__all__ = ["AcquisitionThreat"]


class AcquisitionThreat(Threat):
    """Acquisition shift at budgets (scales) ``images`` holds: budget → ``(N, S, S)`` images of the ``test``
    subjects and poses (``test.images`` are the budget-0 ones), ``settings``: budget → per-image settings
    (one row per image, columns ``acq_*``)."""

    name = "acquisition"
    budget_unit = "× documented range"
    geometric = False
    clean_budget = 0.0
    clean_keys = ("subject", "alpha")

    def __init__(self, test: TestImages, images: Mapping[float, np.ndarray], settings: Mapping[float, pd.DataFrame]):
        self.test = test
        self.images = {float(b): np.asarray(v, np.float32) for b, v in images.items()}
        self.settings = {float(b): v.reset_index(drop=True) for b, v in settings.items()}
        if 0.0 not in self.images:
            raise InputError(None, "acquisition: the budgets must include 0 (the simulator's default setting)")
        for b, v in self.images.items():
            if v.shape != test.images.shape or len(self.settings.get(b, ())) != len(v):
                raise ValueError(f"acquisition: budget {b:g} has images {v.shape} and {len(self.settings.get(b, ()))} "
                                 f"settings rows for test images {test.images.shape}")

    def budgets(self) -> tuple[float, ...]:
        return tuple(sorted(self.images))

    def apply(self, model, test: TestImages, budget: float) -> Threatened:
        b = float(budget)
        key = next((k for k in self.images if np.isclose(k, b)), None)
        if key is None:
            raise InputError(None, f"acquisition: scale {b:g} is not one of {', '.join(f'{k:g}' for k in self.budgets())}")
        n = len(self.test.rows)
        return Threatened(self.images[key], self.test.masks, self.test.rows, np.ones(n, bool), self.settings[key])
