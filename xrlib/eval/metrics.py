"""Per-image segmentation metrics: Dice, Hausdorff distance (HD) and its 95th percentile (HD95).

Conventions
-----------
* Binarisation: a prediction (probability or 0/1 mask) is foreground where ``value > threshold``
  (strictly greater, default 0.5); the target is binarised the same way, so 0/1 uint8 masks and
  probabilities can both be passed.
* Dice of two empty masks is 1.0 (nothing to find, nothing found); Dice with exactly one of the
  two masks empty is 0.0.
* HD and HD95 are computed by MONAI (:func:`monai.metrics.compute_hausdorff_distance`) between
  the *edges* of the two masks, symmetric, Euclidean. They are undefined when either mask is empty
  (MONAI warns and returns ``inf``/``nan``); here they are ``nan`` and :func:`image_metrics`
  records ``empty_pred`` / ``empty_target`` so that callers count such images instead of silently
  dropping them.
* Units: with ``spacing_mm`` the distances are in mm, with spacing 1 in pixels. The pixel size of
  the S×S training images at the isocenter is :func:`image_pixel_mm`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["binarize", "dice", "hausdorff", "image_metrics", "image_pixel_mm"]


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


def hausdorff(
    pred,
    target,
    spacing_mm: float | Sequence[float] = 1.0,
    percentile: float | None = None,
    threshold: float = 0.5,
) -> float:
    """Symmetric Hausdorff distance between two 2-D masks (MONAI), ``nan`` if either is empty.

    Args:
        pred, target: 2-D arrays (probabilities or 0/1 masks), thresholded at ``threshold``.
        spacing_mm: pixel size (one number, or ``(row, column)`` sizes). The result is in the same
            unit: mm for the isocenter pixel size, pixels for spacing 1.
        percentile: ``None`` for the maximum (HD), ``95`` for HD95.

    Returns:
        The distance as a float, or ``nan`` when the prediction or the target is empty (the
        distance is undefined; see :func:`image_metrics`, which flags such images).
    """
    from monai.metrics import compute_hausdorff_distance

    p, t = binarize(pred, threshold), binarize(target, threshold)
    _check_shapes(p, t)
    if p.ndim != 2:
        raise ValueError(f"hausdorff expects 2-D masks, got shape {p.shape}")
    if not p.any() or not t.any():
        return math.nan
    if np.ndim(spacing_mm) == 0:
        spacing = float(spacing_mm)
    else:
        spacing = [float(s) for s in spacing_mm]
        if len(spacing) != 2:
            raise ValueError(f"spacing_mm must be a number or (row, column), got {spacing_mm!r}")
    # Crop to the bounding box of the union with a 1-pixel zero margin, exactly what MONAI's
    # get_mask_edges does internally (CropForeground, margin=1, zero padding): same edges and
    # distances, but MONAI's own (slow) bounding-box search then runs on a small array.
    rows_any = np.flatnonzero((p | t).any(axis=1))
    cols_any = np.flatnonzero((p | t).any(axis=0))
    box = (slice(rows_any[0], rows_any[-1] + 1), slice(cols_any[0], cols_any[-1] + 1))
    p = np.pad(p[box], 1)
    t = np.pad(t[box], 1)
    # One image, one channel (the clavicle foreground): include_background=True so that MONAI does
    # not discard the only channel as "background".
    yp = p[None, None].astype(np.float32)
    yt = t[None, None].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(
            yp, yt, include_background=True, distance_metric="euclidean",
            percentile=percentile, directed=False, spacing=spacing,
        )
    value = float(hd.reshape(-1)[0])
    return value if math.isfinite(value) else math.nan


def image_metrics(pred_prob, target, pixel_mm_iso: float, threshold: float = 0.5) -> dict:
    """All per-image metrics of one prediction.

    Keys: ``dice``, ``hd_mm``, ``hd95_mm``, ``hd_px``, ``hd95_px`` (``nan`` when either mask is
    empty), ``empty_pred``, ``empty_target`` (bool), ``pred_area_px``, ``target_area_px`` (int).
    Distances in mm are those in pixels times ``pixel_mm_iso`` (isotropic pixels).
    """
    if not (pixel_mm_iso > 0 and math.isfinite(pixel_mm_iso)):
        raise ValueError(f"pixel_mm_iso must be a positive number, got {pixel_mm_iso!r}")
    p, t = binarize(pred_prob, threshold), binarize(target, 0.5)
    _check_shapes(p, t)
    hd_px = hausdorff(p, t, 1.0, None)
    hd95_px = hausdorff(p, t, 1.0, 95)
    return {
        "dice": dice(p, t),
        # Euclidean distances scale linearly with an isotropic spacing: no second MONAI pass.
        "hd_mm": hd_px * pixel_mm_iso,
        "hd95_mm": hd95_px * pixel_mm_iso,
        "hd_px": hd_px,
        "hd95_px": hd95_px,
        "empty_pred": bool(not p.any()),
        "empty_target": bool(not t.any()),
        "pred_area_px": int(p.sum()),
        "target_area_px": int(t.sum()),
    }


def image_pixel_mm(geometry, size: int) -> float:
    """Isocenter pixel size (mm) of the ``size × size`` training images of a detector ``geometry``.

    The H×W detector image (pitch ``p``, i.e. ``p·SID/SDD`` at the isocenter) is resized keeping
    its aspect ratio so that its longer side becomes ``size``, then zero padded; one training pixel
    therefore spans ``max(H, W) · pitch_iso / size`` mm at the isocenter.
    """
    if int(size) < 1:
        raise ValueError(f"image size must be positive, got {size}")
    return max(geometry.height, geometry.width) * geometry.pitch_iso / int(size)
