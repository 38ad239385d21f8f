"""Adaptive training's attack step: which threatened samples change the prediction's quality band.

:func:`band_changes` runs a model on the clean images of a threat and on its threatened images at
the given budgets, and records per threatened sample the quality band (:func:`xrlib.eval.robustness.quality_band`,
Dice against the ground truth, bands ``Dice ≥ 0.8 / 0.5–0.8 / < 0.5`` by default) of the clean and of
the threatened prediction. :func:`changed_samples` keeps the samples whose band changed — what
adaptive training adds to the training data, with their ground truth — and :func:`random_samples`
draws the same number at random from the same pool (plain augmentation, the control). Both return
:class:`AttackedSamples`, whose images and masks feed :func:`xrlib.training.added.save_added`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from xrlib.attacks.base import TestImages, Threat, _clean_index
from xrlib.eval.metrics import dice
from xrlib.eval.predict import predict
from xrlib.eval.robustness import DEFAULT_BAND_EDGES, quality_band

__all__ = ["AttackedSamples", "band_changes", "changed_samples", "random_samples"]


@dataclass
class AttackedSamples:
    """Threatened samples: ``images``/``masks`` ``(N, S, S)`` (inputs and their ground truth) and ``table``
    (one row each: ``budget``, the threat's rows and extra columns, ``dice_clean``, ``dice``,
    ``clean_band``, ``band`` (band indices, 0 = best) and ``band_changed``)."""

    images: np.ndarray
    masks: np.ndarray
    table: pd.DataFrame

    def __len__(self) -> int:
        return len(self.table)

    def subset(self, keep) -> "AttackedSamples":
        """The samples at the boolean mask or integer indices ``keep`` (in that order)."""
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(int)
        return AttackedSamples(self.images[idx], self.masks[idx], self.table.iloc[idx].reset_index(drop=True))

    @classmethod
    def concat(cls, parts: Sequence["AttackedSamples"]) -> "AttackedSamples":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls(np.zeros((0, 1, 1), np.float32), np.zeros((0, 1, 1), np.uint8), pd.DataFrame())
        return cls(np.concatenate([p.images for p in parts]), np.concatenate([p.masks for p in parts]),
                   pd.concat([p.table for p in parts], ignore_index=True))


def band_changes(model, threat: Threat, test: TestImages, budgets: Sequence[float],
                 edges: Sequence[float] = DEFAULT_BAND_EDGES, batch_size: int = 16, device=None) -> AttackedSamples:
    """Every threatened sample of ``threat`` at ``budgets`` with the bands of its clean and threatened prediction."""
    clean = threat.apply(model, test, threat.clean_budget)
    p_clean, _ = predict(model, (clean.images, clean.masks), batch_size, device)
    d_clean = np.array([dice(p, t) for p, t in zip(p_clean, clean.masks)])
    images, masks, frames = [], [], []
    for b in threat.check_budgets(budgets):
        if b == threat.clean_budget:
            continue
        th = threat.apply(model, test, b)
        p, _ = predict(model, (th.images, th.masks), batch_size, device)
        d = np.array([dice(pi, t) for pi, t in zip(p, th.masks)])
        dc = d_clean[_clean_index(clean.rows, th.rows, threat.clean_keys, threat.name)]
        t = th.rows.reset_index(drop=True).copy()
        t.insert(0, "budget", float(b))
        if len(th.extra.columns):
            t = pd.concat([t, th.extra.reset_index(drop=True)], axis=1)
        cb, nb = quality_band(dc, edges), quality_band(d, edges)
        frames.append(t.assign(dice_clean=dc, dice=d, clean_band=cb, band=nb, band_changed=cb != nb))
        images.append(np.asarray(th.images, np.float32))
        masks.append((np.asarray(th.masks) > 0.5).astype(np.uint8))
    if not frames:
        return AttackedSamples.concat([])
    return AttackedSamples(np.concatenate(images), np.concatenate(masks), pd.concat(frames, ignore_index=True))


def changed_samples(attacked: AttackedSamples) -> AttackedSamples:
    """The samples whose threatened prediction left the clean prediction's band (adaptive training's additions)."""
    return attacked.subset(attacked.table["band_changed"].to_numpy(bool) if len(attacked) else np.zeros(0, bool))


def random_samples(attacked: AttackedSamples, n: int, seed: int) -> AttackedSamples:
    """``n`` samples drawn without replacement from ``attacked`` (seeded; kept in pool order)."""
    if not 0 <= int(n) <= len(attacked):
        raise ValueError(f"cannot draw {n} of {len(attacked)} samples")
    idx = np.sort(np.random.default_rng(seed).choice(len(attacked), int(n), replace=False))
    return attacked.subset(idx)
