"""Fair rows for chapter 08's table: a constant mean-mask baseline, the "not learned" flag, learning curves, a plateau check.

Mean-mask baseline
    A "model" that ignores its input: the pixel-wise mean of the training masks, thresholded at the level
    that maximizes the mean training Dice (:func:`mean_mask_baseline`; ``rule="half"`` thresholds at 0.5
    instead). Chest radiographs at well-positioned poses put the clavicles in nearly the same pixels, so
    this constant prediction scores far above 0; a row whose mean Dice on the test images does not exceed
    the baseline's by :data:`LEARNED_MARGIN` is flagged *not learned* (:func:`flag_learned`) and not ranked.
Learning curves
    Validation Dice per optimisation step of every row (:func:`learning_curves`, from the training
    histories: epoch × steps per epoch, ``ceil(train images / batch size)`` steps an epoch), and the
    *learning-rate time* of each point: the sum of the learning rates of the steps so far over the first
    step's rate (full-rate-equivalent steps; each epoch's steps counted at the rate of its last step).
Plateau
    :func:`plateaued`: a least-squares line through the validation Dice over the last quarter of the
    learning-rate time changes by less than ``tol`` (Dice) across it. At a constant rate that is the last
    quarter of the steps. Under a decaying schedule it is a longer stretch of steps (for the cosine schedule
    the last ≈ 56 %), so a schedule cannot pass the check by freezing the weights: a curve whose Dice rises in
    proportion to the rate it is given fails exactly as a rising curve at a constant rate does.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from xrlib.eval.metrics import dice

__all__ = ["BASELINE", "LEARNED_MARGIN", "PLATEAU_TOL", "flag_learned", "learning_curves", "lr_time",
           "mean_mask_baseline", "plateau_change", "plateaued"]

#: Name of the constant baseline row.
BASELINE = "Mean mask (constant)"
#: A row "learned" when its mean Dice exceeds the baseline's on the same images by more than this (Dice).
LEARNED_MARGIN = 0.02
#: Largest change of validation Dice over the last quarter of the learning-rate time that counts as a plateau (Dice).
PLATEAU_TOL = 0.02


def mean_mask_baseline(train_masks: np.ndarray, rule: str = "best") -> tuple[np.ndarray, float]:
    """The constant prediction ``(S, S)`` (uint8) from training masks ``(N, S, S)`` and its threshold.

    ``rule="best"``: the threshold among the mean mask's distinct levels (at most 64, quantiles) that maximizes
    the mean Dice over the training masks; ``"half"``: 0.5. The prediction is ``mean > threshold`` (ties lose)."""
    m = np.asarray(train_masks, np.float64)
    if m.ndim != 3 or len(m) == 0:
        raise ValueError(f"need training masks (N, S, S) with N ≥ 1, got shape {m.shape}")
    mean = (m > 0).mean(0)
    if rule == "half":
        return (mean > 0.5).astype(np.uint8), 0.5
    if rule != "best":
        raise ValueError(f"unknown threshold rule {rule!r}; expected 'best' or 'half'")
    levels = np.unique(mean[mean > 0])
    if levels.size == 0:
        return np.zeros(mean.shape, np.uint8), 0.5
    if levels.size > 64:
        levels = np.unique(np.quantile(levels, np.linspace(0, 1, 64)))
    cands = np.concatenate([[0.0], levels[:-1]])  # mean > t for t just below each level
    scores = [np.mean([dice((mean > t).astype(float), y) for y in m]) for t in cands]
    t = float(cands[int(np.argmax(scores))])
    return (mean > t).astype(np.uint8), t


def flag_learned(table: pd.DataFrame, baseline_dice: float, margin: float = LEARNED_MARGIN) -> pd.DataFrame:
    """``table`` (one row per model, column ``dice``: mean test Dice on the baseline's images) with a boolean column
    ``learned`` (Dice > baseline + ``margin``) and ``rank`` (1 = best among the learned rows; <NA> for the others)."""
    out = table.copy()
    out["learned"] = out["dice"] > float(baseline_dice) + float(margin)
    rank = out.loc[out["learned"], "dice"].rank(ascending=False, method="min")
    out["rank"] = pd.array([pd.NA] * len(out), dtype="Int64")
    out.loc[rank.index, "rank"] = rank.astype(int).to_numpy()
    return out


def learning_curves(results: dict, batch_size: int) -> pd.DataFrame:
    """Validation Dice vs optimisation step of every :class:`~xrlib.training.checkpoint.TrainResult` in ``results``
    (name → result): columns ``model``, ``epoch``, ``step``, ``lr_time`` (module docstring; ``step`` where the history
    has no ``lr`` column), ``val_dice``, ``train_loss``."""
    frames = []
    for name, res in results.items():
        per_epoch = math.ceil(int(res.train_images) / int(batch_size))
        h = res.history[["epoch", "val_dice", "train_loss"]].copy()
        h.insert(0, "model", name)
        h.insert(2, "step", h["epoch"].astype(int) * per_epoch)
        h.insert(3, "lr_time", lr_time(res.history, per_epoch))
        frames.append(h)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["model", "epoch", "step", "lr_time", "val_dice", "train_loss"])


def lr_time(history: pd.DataFrame, per_epoch: int) -> np.ndarray:
    """Learning-rate time after each epoch of ``history`` (columns ``epoch`` and ``lr``: the rate of the epoch's last
    step): ``per_epoch`` × the cumulative sum of ``lr`` over the first epoch's ``lr`` (full-rate-equivalent steps).
    Without an ``lr`` column (or a first rate ≤ 0) the steps themselves."""
    steps = history["epoch"].to_numpy(np.float64) * per_epoch
    if "lr" not in history or len(history) == 0 or not float(history["lr"].iloc[0]) > 0:
        return steps
    lr = history["lr"].to_numpy(np.float64)
    return np.cumsum(lr) / lr[0] * per_epoch


def plateau_change(steps, val_dice) -> float:
    """Change of validation Dice over the last quarter of ``steps`` (the progress axis: optimisation steps, or the
    learning-rate time of :func:`learning_curves`), from a least-squares line through its points (slope × the
    quarter's length); NaN with fewer than 2 points in that quarter."""
    s = np.asarray(steps, np.float64)
    v = np.asarray(val_dice, np.float64)
    if s.shape != v.shape or s.ndim != 1 or len(s) == 0:
        raise ValueError(f"need matching 1-D steps and validation Dice, got {s.shape} and {v.shape}")
    start = s.max() - (s.max() - s.min()) / 4
    last = s >= start
    if last.sum() < 2 or np.ptp(s[last]) == 0:
        return float("nan")
    slope = np.polyfit(s[last], v[last], 1)[0]
    return float(slope * (s.max() - start))


def plateaued(steps, val_dice, tol: float = PLATEAU_TOL) -> bool:
    """Whether validation Dice has plateaued: :func:`plateau_change` is known and below ``tol`` in magnitude."""
    c = plateau_change(steps, val_dice)
    return bool(np.isfinite(c) and abs(c) < tol)
