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

from dataclasses import dataclass

import numpy as np
from scipy import signal

__all__ = ["LocalNPS", "estimate_local_nps", "nps_2d", "patch_starts", "radial_nps", "synthesize", "trapezoid_weights"]


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
        _, w = trapezoid_weights(self.shape, self.patch, self.overlap)
        return np.tensordot(self.nps.mean(axis=(1, 2)), w, axes=1)


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
    origins, _ = trapezoid_weights(n.shape[1:], patch, overlap)
    nps = np.stack([nps_2d(n[:, y:y + patch, x:x + patch]) for y, x in origins])
    return LocalNPS(tuple(n.shape[1:]), int(patch), float(overlap), origins, nps)


def synthesize(lnps: LocalNPS, rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """``n`` noise fields ``(n, H, W)`` with the local NPS of ``lnps`` (see the module docstring)."""
    h, w = lnps.shape
    p = lnps.patch
    origins, weights = trapezoid_weights(lnps.shape, p, lnps.overlap)
    kernels = np.fft.fftshift(np.real(np.fft.ifft2(np.sqrt(np.maximum(lnps.nps, 0.0)))), axes=(1, 2))
    out = np.zeros((n, h, w))
    for k in range(n):
        white = rng.standard_normal((h + p, w + p))  # margin p//2 .. p: linear convolution, no wrap-around
        for (y, x), kern, wt in zip(origins, kernels, weights):
            region = white[y:y + 2 * p - 1, x:x + 2 * p - 1]
            filt = signal.fftconvolve(region, kern, mode="valid")  # (p, p); one offset for every patch
            out[k, y:y + p, x:x + p] += wt[y:y + p, x:x + p] * filt
    return out


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
