"""Local noise power spectra and noise insertion: estimate from repeated images, synthesise from white noise.

The insertion arm of paper 003 adapted to projection images: the noise of a radiograph is not
stationary (larger behind bone and the mediastinum) and, after the detector blur, correlated. From a
few repeated realisations at a reference dose, :func:`estimate_local_nps` estimates a noise power
spectrum (NPS) per square patch of ``patch`` pixels on a grid with ``overlap`` (paper: 30 %) between
neighbours; :func:`synthesize` filters one white Gaussian field with √NPS of each patch (the
kernel ``IFFT(√NPS)``, applied by linear convolution, so neighbouring patches filter the *same*
white noise) and blends the patches with trapezoidal weights (linear ramps across each overlap,
normalised to sum to 1 per pixel).

Convention: ``NPS(k) = E|FFT(n)(k)|² / P²`` for a P×P patch (no window, no pixel-size factor), so
the mean of the NPS over the frequency bins is the variance of the noise. Needs no CT: a few
repeated exposures of an object are enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import signal

__all__ = ["LocalNPS", "estimate_local_nps", "nps_2d", "patch_px", "patch_starts", "patch_weights", "radial_nps", "synthesize", "trapezoid_weights"]


def patch_starts(n: int, patch: int, overlap: float) -> list[int]:
    """Start indices of patches of ``patch`` pixels covering ``0..n−1`` with ≈ ``overlap`` between neighbours
    (stride ``round(patch·(1−overlap))``; the last patch ends at ``n``)."""
    if not (1 <= patch <= n):
        raise ValueError(f"patch size {patch} must be between 1 and the image size {n}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    stride = max(1, int(round(patch * (1.0 - overlap))))
    starts = list(range(0, n - patch + 1, stride))
    if starts[-1] != n - patch:
        starts.append(n - patch)
    return starts


def _ramp_1d(n: int, starts: list[int], patch: int) -> np.ndarray:
    """(len(starts), n) trapezoids: 1 inside a patch, linear ramps across overlaps, summing to 1."""
    w = np.zeros((len(starts), n))
    for i, s in enumerate(starts):
        w[i, s:s + patch] = 1.0
        if i > 0 and starts[i - 1] + patch > s:  # ramp up across the overlap with the previous patch
            ov = starts[i - 1] + patch - s
            w[i, s:s + ov] = (np.arange(ov) + 1.0) / (ov + 1.0)
        if i + 1 < len(starts) and s + patch > starts[i + 1]:
            ov = s + patch - starts[i + 1]
            w[i, s + patch - ov:s + patch] = 1.0 - (np.arange(ov) + 1.0) / (ov + 1.0)
    return w / np.maximum(w.sum(0), 1e-12)


def trapezoid_weights(shape: tuple[int, int], patch: int, overlap: float) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Patch origins ``(y, x)`` and their blending weights ``(n_patches, H, W)`` (separable trapezoids; Σ = 1)."""
    ys, xs = patch_starts(shape[0], patch, overlap), patch_starts(shape[1], patch, overlap)
    wy, wx = _ramp_1d(shape[0], ys, patch), _ramp_1d(shape[1], xs, patch)
    origins = [(y, x) for y in ys for x in xs]
    weights = np.stack([wy[i][:, None] * wx[j][None, :] for i in range(len(ys)) for j in range(len(xs))])
    return origins, weights


def patch_weights(shape: tuple[int, int], patch: int, overlap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The blending weights of :func:`trapezoid_weights` restricted to each patch: ``(ys, xs, w)`` with the
    patch origins and ``w`` ``(n_patches, P, P)`` (no full-image weight maps)."""
    ys1, xs1 = patch_starts(shape[0], patch, overlap), patch_starts(shape[1], patch, overlap)
    wy, wx = _ramp_1d(shape[0], ys1, patch), _ramp_1d(shape[1], xs1, patch)
    py = np.stack([wy[i, y:y + patch] for i, y in enumerate(ys1)])
    px = np.stack([wx[j, x:x + patch] for j, x in enumerate(xs1)])
    w = (py[:, None, :, None] * px[None, :, None, :]).reshape(-1, patch, patch)
    ys = np.repeat(np.asarray(ys1), len(xs1))
    xs = np.tile(np.asarray(xs1), len(ys1))
    return ys, xs, w


@dataclass(frozen=True)
class LocalNPS:
    """Local NPS per patch: ``nps`` ``(n_patches, P, P)`` (unshifted FFT order; mean = variance) at ``origins``."""

    shape: tuple[int, int]
    patch: int
    overlap: float
    origins: list[tuple[int, int]]
    nps: np.ndarray

    def variance_map(self) -> np.ndarray:
        """The blended local variance (mean of each patch's NPS), (H, W)."""
        ys, xs, w = patch_weights(self.shape, self.patch, self.overlap)
        out = np.zeros(self.shape)
        for y, x, v, wt in zip(ys, xs, self.nps.mean(axis=(1, 2)), w):
            out[y:y + self.patch, x:x + self.patch] += v * wt
        return out


def nps_2d(noise: np.ndarray) -> np.ndarray:
    """NPS of zero-mean noise realisations ``(R, P, P)``: mean over R of ``|FFT|²/P²`` (unshifted)."""
    n = np.asarray(noise, float)
    if n.ndim == 2:
        n = n[None]
    return (np.abs(np.fft.fft2(n)) ** 2).mean(0) / (n.shape[-1] * n.shape[-2])


def estimate_local_nps(noise: np.ndarray, patch: int, overlap: float = 0.3) -> LocalNPS:
    """Local NPS of zero-mean noise realisations ``(R, H, W)`` on overlapping ``patch``-pixel patches.

    Callers subtract the ensemble mean (and scale by √(R/(R−1)) so the variance is unbiased).
    """
    n = np.asarray(noise, float)
    if n.ndim != 3 or len(n) < 1:
        raise ValueError(f"expected noise realisations (R, H, W), got shape {n.shape}")
    ys, xs, _ = patch_weights(n.shape[1:], patch, overlap)
    origins = list(zip(ys.tolist(), xs.tolist()))
    nps = np.stack([nps_2d(n[:, y:y + patch, x:x + patch]) for y, x in origins])
    return LocalNPS(tuple(n.shape[1:]), int(patch), float(overlap), origins, nps)


def synthesize(lnps: LocalNPS, rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """``n`` noise fields ``(n, H, W)`` with the local NPS of ``lnps`` (see the module docstring).

    Vectorised: every patch's ``(2P−1)²`` window of the white field is filtered with its kernel in one
    batched FFT convolution per realisation.
    """
    h, w = lnps.shape
    p = lnps.patch
    ys, xs, wpatch = patch_weights(lnps.shape, p, lnps.overlap)
    if list(zip(ys.tolist(), xs.tolist())) != [tuple(o) for o in lnps.origins]:
        raise ValueError("the local NPS's patch origins do not match its shape, patch and overlap")
    kernels = np.fft.fftshift(np.real(np.fft.ifft2(np.sqrt(np.maximum(lnps.nps, 0.0)))), axes=(1, 2))
    out = np.zeros((n, h, w))
    for k in range(n):
        white = rng.standard_normal((h + p, w + p))  # margin p//2 .. p: linear convolution, no wrap-around
        win = np.lib.stride_tricks.sliding_window_view(white, (2 * p - 1, 2 * p - 1))[ys, xs]
        filt = signal.fftconvolve(win, kernels, mode="valid", axes=(1, 2))  # (n_patches, P, P)
        np.add.at(out[k], (ys[:, None, None] + np.arange(p)[None, :, None], xs[:, None, None] + np.arange(p)[None, None, :]),
                  wpatch * filt)
    return out


def patch_px(patch_mm: float, pitch_mm: float, min_px: int, image_px: int) -> int:
    """NPS patch side in pixels: ``patch_mm`` at ``pitch_mm``, at least ``min_px`` pixels, at most the image.

    Raises ``ValueError`` when the image is smaller than ``min_px`` (the NPS would rest on too few pixels).
    """
    if not (patch_mm > 0 and pitch_mm > 0 and min_px >= 2):
        raise ValueError(f"need a positive patch size and pitch and min_px ≥ 2, got {patch_mm} mm, {pitch_mm} mm, {min_px}")
    if image_px < min_px:
        raise ValueError(f"the image ({image_px} px) is smaller than the NPS patch minimum of {min_px} px")
    return int(min(image_px, max(int(min_px), int(math.ceil(patch_mm / pitch_mm - 1e-9)))))


def radial_nps(nps: np.ndarray, n_bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged NPS of a ``(P, P)`` spectrum (unshifted): ``(frequency in cycles/pixel, NPS)``."""
    p = nps.shape[-1]
    f = np.fft.fftfreq(p)
    r = np.hypot(*np.meshgrid(np.fft.fftfreq(nps.shape[-2]), f, indexing="ij"))
    n_bins = n_bins or p // 2
    edges = np.linspace(0, 0.5, n_bins + 1)
    idx = np.clip(np.digitize(r.ravel(), edges) - 1, 0, n_bins - 1)
    sums = np.bincount(idx, nps.ravel(), n_bins)
    counts = np.maximum(np.bincount(idx, None, n_bins), 1)
    return 0.5 * (edges[1:] + edges[:-1]), sums / counts
