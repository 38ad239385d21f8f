"""Network-input preprocessing: the package's bilinear resize and the aspect-preserving resize + pad to S×S."""

from __future__ import annotations

import numpy as np


def resize_bilinear(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(..., H, W)`` to ``(..., *shape)`` (float32; antialiased when shrinking).

    Pixel centres are aligned (``align_corners=False``); leading axes are resized independently.
    """
    import torch
    import torch.nn.functional as F

    arr = np.ascontiguousarray(x, dtype=np.float32)
    if not arr.flags.writeable:  # e.g. a view of a PIL image; torch wants writable memory
        arr = arr.copy()
    lead = arr.shape[:-2]
    t = torch.from_numpy(arr.reshape(1, -1, *arr.shape[-2:]))
    down = shape[0] < arr.shape[-2] or shape[1] < arr.shape[-1]
    out = F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False, antialias=down)
    return out[0].numpy().reshape(*lead, *shape)


def fit(shape: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """``(nh, nw, top, left)``: an ``H × W`` image resized so its longer side is ``size``, centred in ``size × size``."""
    h, w = shape
    scale = size / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    return nh, nw, (size - nh) // 2, (size - nw) // 2


def preprocess(image: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize keeping the aspect ratio, zero-pad to ``size × size`` (centred), scale to [0, 1].

    The longer side becomes ``size``; the image is resized bilinearly (antialiased when
    shrinking) and min–max normalised to [0, 1] before padding, so padding is 0. The mask is
    resized the same way as a float image and thresholded at 0.5 (uint8 0/1). Returns
    ``(float32 (S, S), uint8 (S, S) or None)``.
    """
    img = np.asarray(image, np.float32)
    if img.ndim != 2 or min(img.shape) < 1:
        raise ValueError(f"expected a 2-D image, got shape {img.shape}")
    if mask is not None and np.shape(mask) != img.shape:
        raise ValueError(f"mask shape {np.shape(mask)} differs from image shape {img.shape}")
    nh, nw, top, left = fit(img.shape, size)
    small = resize_bilinear(img, (nh, nw))
    lo, hi = float(small.min()), float(small.max())
    small = (small - lo) / (hi - lo) if hi > lo else np.zeros_like(small)
    out = np.zeros((size, size), np.float32)
    out[top:top + nh, left:left + nw] = np.clip(small, 0.0, 1.0)
    if mask is None:
        return out, None
    m = resize_bilinear((np.asarray(mask) > 0).astype(np.float32), (nh, nw)) >= 0.5
    mout = np.zeros((size, size), np.uint8)
    mout[top:top + nh, left:left + nw] = m
    return out, mout


def _resize_torch(x, size: int):
    """Bilinear resize of a batch ``(B, H, W)`` as :func:`resize_bilinear` to :func:`fit`'s size; and the fit."""
    import torch.nn.functional as F

    nh, nw, top, left = fit(tuple(x.shape[-2:]), size)
    down = nh < x.shape[-2] or nw < x.shape[-1]
    small = F.interpolate(x[:, None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=down)[:, 0]
    return small, (left, size - nw - left, top, size - nh - top)


def resize_pad_torch(x, size: int):
    """The resize + centred zero padding of :func:`preprocess` for a torch batch ``(B, H, W)``; differentiable.

    Applied to a (soft) mask it gives the float map that :func:`preprocess` thresholds: the numpy
    mask equals ``resize_pad_torch((mask > 0).float(), size) >= 0.5``.
    """
    import torch.nn.functional as F

    small, pad = _resize_torch(x, size)
    return F.pad(small, pad)


def preprocess_torch(image, size: int):
    """:func:`preprocess` of a batch of images ``(B, H, W)`` in torch: resize keeping the aspect ratio,
    min–max normalise each image to [0, 1], zero-pad to ``(B, size, size)``; differentiable.

    Same operations as the numpy path (which also resizes with torch), so float32 inputs agree
    with it to rounding (about 1e-6).
    """
    import torch
    import torch.nn.functional as F

    small, pad = _resize_torch(image, size)
    lo = small.amin(dim=(-2, -1), keepdim=True)
    span = small.amax(dim=(-2, -1), keepdim=True) - lo
    small = torch.where(span > 0, (small - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
    return F.pad(small.clamp(0.0, 1.0), pad)
