"""Per-image segmentation metrics: Dice, Hausdorff distance (HD) and its 95th percentile (HD95).

Conventions:

* Binarisation: a prediction (probability or 0/1 mask) is foreground where ``value > threshold``
  (strictly greater, default 0.5); the target is binarised the same way, so 0/1 uint8 masks and
  probabilities can both be passed.
* Dice of two empty masks is 1.0 (nothing to find, nothing found); Dice with exactly one of the
  two masks empty is 0.0.
* HD and HD95 are MONAI's (:func:`monai.metrics.compute_hausdorff_distance`): between the *edges*
  of the two masks, symmetric, Euclidean — the same arithmetic, reproduced here (and for whole
  stacks in :func:`stack_metrics`) without MONAI's per-call overhead; the tests cross-check the
  values against MONAI. They are undefined when either mask is empty (MONAI warns and returns ``inf``/``nan``); here they are ``nan`` and :func:`image_metrics`
  records ``empty_pred`` / ``empty_target`` so that callers count such images instead of silently
  dropping them.
* Units: with ``spacing_mm`` the distances are in mm, with spacing 1 in pixels. The pixel size of
  the S×S training images at the isocenter is :func:`image_pixel_mm`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["binarize", "dice", "hausdorff", "image_metrics", "image_pixel_mm", "stack_metrics"]


def binarize(x, threshold: float = 0.5) -> np.ndarray:
    """Boolean mask ``x > threshold`` of a 2-D (or n-D) array or tensor."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x) > threshold


def _check_shapes(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction and target shapes differ: {pred.shape} vs {target.shape}")


def dice(pred, target, threshold: float = 0.5) -> float:
    """Dice coefficient ``2|P∩T| / (|P| + |T|)`` of two masks after thresholding at ``threshold``.

    Returns 1.0 when both masks are empty and 0.0 when only one of them is.
    """
    p, t = binarize(pred, threshold), binarize(target, threshold)
    _check_shapes(p, t)
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return 2.0 * float(np.logical_and(p, t).sum()) / denom


def _spacing(spacing_mm) -> float | list[float]:
    if np.ndim(spacing_mm) == 0:
        return float(spacing_mm)
    spacing = [float(s) for s in spacing_mm]
    if len(spacing) != 2:
        raise ValueError(f"spacing_mm must be a number or (row, column), got {spacing_mm!r}")
    return spacing


def _edges(masks: np.ndarray) -> np.ndarray:
    """Edge pixels of boolean masks ``(..., H, W)``: each mask minus its erosion by the 4-neighbour
    cross, with background outside the image — MONAI's ``binary_erosion(m) ^ m`` (scipy's default
    structure and border), computed for a whole stack at once."""
    pad = np.pad(masks, [(0, 0)] * (masks.ndim - 2) + [(1, 1), (1, 1)])
    inner = (pad[..., 1:-1, 1:-1] & pad[..., :-2, 1:-1] & pad[..., 2:, 1:-1]
             & pad[..., 1:-1, :-2] & pad[..., 1:-1, 2:])
    return masks & ~inner


def _hausdorff_edges(edges_p: np.ndarray, edges_t: np.ndarray, union: np.ndarray, spacing,
                     percentiles: Sequence[float | None]) -> list[float]:
    """Symmetric (percentile) Hausdorff distances between two non-empty 2-D edge maps.

    The arithmetic is MONAI's (1.6, CPU, Euclidean): the distance from every edge pixel of one mask
    to the nearest edge pixel of the other, in float64 then float32, the maximum (``percentile``
    falsy) or ``torch.quantile`` of each direction, and the larger of the two directions. MONAI
    finds the nearest edge pixels with a KD-tree over coordinates relative to the union's bounding
    box with a 1-pixel margin, scaled by the spacing; so does this function for a spacing other than
    1, while for spacing 1 it reads them from a distance transform of the bounding box, which gives
    the same float64 numbers (the square root of the same integer) in a time that does not grow with
    the number of edge pixels.
    """
    import torch

    rows = np.flatnonzero(union.any(axis=1))
    cols = np.flatnonzero(union.any(axis=0))
    if np.ndim(spacing) == 0 and float(spacing) == 1.0:
        from scipy.ndimage import distance_transform_edt

        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        ep, et = edges_p[box], edges_t[box]
        dists = (distance_transform_edt(~et)[ep], distance_transform_edt(~ep)[et])
    else:
        from scipy.spatial import KDTree

        origin = np.array([rows[0] - 1, cols[0] - 1])
        scale = np.asarray(spacing, dtype=np.float64)
        pts_p = (np.argwhere(edges_p) - origin).astype(np.float64) * scale
        pts_t = (np.argwhere(edges_t) - origin).astype(np.float64) * scale
        dists = (KDTree(pts_t, leafsize=32).query(pts_p, k=1)[0], KDTree(pts_p, leafsize=32).query(pts_t, k=1)[0])
    both = [torch.as_tensor(d).to(torch.float32) for d in dists]
    out = []
    for pc in percentiles:
        if pc and not 0 <= pc <= 100:
            raise ValueError(f"percentile should be a value between 0 and 100, get {pc}.")
        per_dir = [d.max() if not pc else torch.quantile(d, pc / 100) for d in both]
        value = float(torch.max(torch.stack(per_dir)))
        out.append(value if math.isfinite(value) else math.nan)
    return out


def hausdorff(
    pred,
    target,
    spacing_mm: float | Sequence[float] = 1.0,
    percentile: float | None = None,
    threshold: float = 0.5,
) -> float:
    """Symmetric Hausdorff distance between two 2-D masks (MONAI's definition), ``nan`` if either is empty.

    Args:
        pred, target: 2-D arrays (probabilities or 0/1 masks), thresholded at ``threshold``.
        spacing_mm: pixel size (one number, or ``(row, column)`` sizes). The result is in the same
            unit: mm for the isocenter pixel size, pixels for spacing 1.
        percentile: ``None`` for the maximum (HD), ``95`` for HD95.

    Returns:
        The distance as a float, or ``nan`` when the prediction or the target is empty (the
        distance is undefined; see :func:`image_metrics`, which flags such images).

    The value is that of :func:`monai.metrics.compute_hausdorff_distance` (``include_background=True``,
    Euclidean, symmetric) bit for bit, computed without MONAI's per-call overhead (the tests
    cross-check it against MONAI).
    """
    p, t = binarize(pred, threshold), binarize(target, threshold)
    _check_shapes(p, t)
    if p.ndim != 2:
        raise ValueError(f"hausdorff expects 2-D masks, got shape {p.shape}")
    if not p.any() or not t.any():
        return math.nan
    return _hausdorff_edges(_edges(p), _edges(t), p | t, _spacing(spacing_mm), [percentile])[0]


def stack_metrics(pred_probs, targets, pixel_mm_iso: float, threshold: float = 0.5) -> pd.DataFrame:
    """:func:`image_metrics` of a stack of ``N`` predictions, one row per image (same keys as columns).

    ``pred_probs`` and ``targets`` are ``(N, H, W)``; the values equal those of :func:`image_metrics`
    image by image, computed with the thresholding, areas, Dice and edges vectorised over the stack.
    """
    return pd.DataFrame(_metric_columns(pred_probs, targets, pixel_mm_iso, threshold))


def _metric_columns(pred_probs, targets, pixel_mm_iso: float, threshold: float) -> dict[str, np.ndarray]:
    if not (pixel_mm_iso > 0 and math.isfinite(pixel_mm_iso)):
        raise ValueError(f"pixel_mm_iso must be a positive number, got {pixel_mm_iso!r}")
    p, t = binarize(pred_probs, threshold), binarize(targets, 0.5)
    _check_shapes(p, t)
    if p.ndim != 3:
        raise ValueError(f"stack_metrics expects (N, H, W) stacks, got shape {p.shape}")
    area_p = p.sum(axis=(1, 2), dtype=np.int64)
    area_t = t.sum(axis=(1, 2), dtype=np.int64)
    inter = np.logical_and(p, t).sum(axis=(1, 2), dtype=np.int64)
    denom = area_p + area_t
    with np.errstate(invalid="ignore", divide="ignore"):
        dice_v = np.where(denom == 0, 1.0, 2.0 * inter.astype(np.float64) / np.maximum(denom, 1))
    hd = np.full((len(p), 2), math.nan)
    both = np.flatnonzero((area_p > 0) & (area_t > 0))
    if len(both):
        edges_p, edges_t = _edges(p[both]), _edges(t[both])
        for k, i in enumerate(both):
            hd[i] = _hausdorff_edges(edges_p[k], edges_t[k], p[i] | t[i], 1.0, (None, 95))
    return {
        "dice": dice_v,
        # Euclidean distances scale linearly with an isotropic spacing: no second distance pass.
        "hd_mm": hd[:, 0] * pixel_mm_iso,
        "hd95_mm": hd[:, 1] * pixel_mm_iso,
        "hd_px": hd[:, 0],
        "hd95_px": hd[:, 1],
        "empty_pred": area_p == 0,
        "empty_target": area_t == 0,
        "pred_area_px": area_p,
        "target_area_px": area_t,
    }


def image_metrics(pred_prob, target, pixel_mm_iso: float, threshold: float = 0.5) -> dict:
    """All per-image metrics of one prediction.

    Keys: ``dice``, ``hd_mm``, ``hd95_mm``, ``hd_px``, ``hd95_px`` (``nan`` when either mask is
    empty), ``empty_pred``, ``empty_target`` (bool), ``pred_area_px``, ``target_area_px`` (int).
    Distances in mm are those in pixels times ``pixel_mm_iso`` (isotropic pixels).
    """
    p, t = binarize(pred_prob, threshold), binarize(target, 0.5)
    _check_shapes(p, t)
    if p.ndim != 2:
        raise ValueError(f"image_metrics expects 2-D masks, got shape {p.shape}")
    cols = _metric_columns(p[None], t[None], pixel_mm_iso, 0.5)
    return {key: bool(v[0]) if key.startswith("empty") else int(v[0]) if key.endswith("area_px") else float(v[0])
            for key, v in cols.items()}


def image_pixel_mm(geometry, size: int) -> float:
    """Isocenter pixel size (mm) of the ``size × size`` training images of a detector ``geometry``.

    The H×W detector image (pitch ``p``, i.e. ``p·SID/SDD`` at the isocenter) is resized keeping
    its aspect ratio so that its longer side becomes ``size``, then zero padded; one training pixel
    therefore spans ``max(H, W) · pitch_iso / size`` mm at the isocenter.
    """
    if int(size) < 1:
        raise ValueError(f"image size must be positive, got {size}")
    return max(geometry.height, geometry.width) * geometry.pitch_iso / int(size)
