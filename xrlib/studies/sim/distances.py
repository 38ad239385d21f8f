"""How far each simulator of the ladder is from the Real surrogate, with measures that need no pretrained weights.

Images are compared pairwise on matching subjects and poses (the domains of :mod:`xrlib.studies.sim.sources`
share them), as preprocessed for the networks (``S × S``, [0, 1]):

``histogram_w1``
    The 1-Wasserstein (earth mover's) distance between the two images' grey-level distributions
    (:func:`scipy.stats.wasserstein_distance`; grey levels in [0, 1], so it is in grey-level units: a
    constant brightening by ``c`` gives ``c``).
``spectrum_log_l2``
    The root-mean-square difference of the two images' radially averaged power spectra in log10
    (:func:`radial_power_spectrum`, frequencies 1 … S/2 cycles per image, DC left out): a texture and
    sharpness distance (decades; scaling an image's contrast by ``k`` gives ``2·log10 k``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wasserstein_distance

from xrlib.data.shards import ShardDataset, read_manifest

__all__ = ["MEASURES", "histogram_distance", "matched_images", "radial_power_spectrum", "rung_distances",
           "spectrum_distance"]

MEASURES = ("histogram_w1", "spectrum_log_l2")
_KEYS = ["subject", "alpha", "tilt", "shift_x", "shift_y", "shift_z"]


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1-Wasserstein distance between the grey-level distributions of images ``a`` and ``b`` (grey-level units)."""
    return float(wasserstein_distance(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()))


def radial_power_spectrum(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of a 2-D image (mean removed): ``(frequency in cycles/image, power)``
    for integer radii 1 … min(H, W)//2 of the centred 2-D periodogram ``|FFT|² / (H·W)``."""
    x = np.asarray(image, np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {x.shape}")
    h, w = x.shape
    p = np.abs(np.fft.fftshift(np.fft.fft2(x - x.mean()))) ** 2 / (h * w)
    yy, xx = np.indices(p.shape)
    r = np.rint(np.hypot(yy - h // 2, xx - w // 2)).astype(int)
    n = min(h, w) // 2
    sums = np.bincount(r.ravel(), p.ravel(), minlength=n + 1)[: n + 1]
    counts = np.bincount(r.ravel(), minlength=n + 1)[: n + 1]
    freq = np.arange(1, n + 1, dtype=float)
    return freq, sums[1:] / np.maximum(counts[1:], 1)


def spectrum_distance(a: np.ndarray, b: np.ndarray, floor: float = 1e-12) -> float:
    """RMS difference (decades) of the log10 radial power spectra of ``a`` and ``b`` (same shape)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"images differ in shape: {np.shape(a)} vs {np.shape(b)}")
    _, pa = radial_power_spectrum(a)
    _, pb = radial_power_spectrum(b)
    return float(np.sqrt(np.mean((np.log10(pa + floor) - np.log10(pb + floor)) ** 2)))


def rung_distances(images: dict[str, np.ndarray], reference: str = "real") -> pd.DataFrame:
    """Distance of every domain in ``images`` (name → ``(N, S, S)``, the same subjects and poses in the same order)
    to ``reference``: one row per domain and measure with the mean, sd and number of image pairs."""
    if reference not in images:
        raise ValueError(f"the reference domain {reference!r} is not among {sorted(images)}")
    ref = np.asarray(images[reference])
    rows = []
    for name, x in images.items():
        if name == reference:
            continue
        x = np.asarray(x)
        if x.shape != ref.shape:
            raise ValueError(f"domain {name!r} has images {x.shape}, the reference {ref.shape}: not matched")
        per = {"histogram_w1": [histogram_distance(a, b) for a, b in zip(x, ref)],
               "spectrum_log_l2": [spectrum_distance(a, b) for a, b in zip(x, ref)]}
        for m, v in per.items():
            rows.append({"domain": name, "measure": m, "mean": float(np.mean(v)),
                         "sd": float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"), "pairs": len(v)})
    return pd.DataFrame(rows)


def matched_images(run: Path, domains, split: str = "train", limit: int | None = None) -> dict[str, np.ndarray]:
    """Preprocessed images of ``domains`` (chapter 08's datasets) on the subjects and poses they share in ``split``
    of the surrogate pool, in one order (matched on subject and pose); at most ``limit`` per domain."""
    from xrlib.studies.sim.sources import domain_dir

    mans = {}
    for d in domains:
        man = read_manifest(domain_dir(run, d))
        mans[d] = man[(man["pool"] == "surrogate") & (man["split"] == split)].reset_index(drop=True)
    common = None
    for man in mans.values():
        keys = man[_KEYS].round(6).astype(str).agg("|".join, axis=1)
        common = set(keys) if common is None else common & set(keys)
    order = sorted(common)[:limit] if limit is not None else sorted(common)
    out = {}
    for d, man in mans.items():
        keys = man[_KEYS].round(6).astype(str).agg("|".join, axis=1)
        rows = man.loc[[keys[keys == k].index[0] for k in order]]
        ds = ShardDataset(rows, root=domain_dir(run, d))
        out[d] = np.stack([ds[i][0][0].numpy() for i in range(len(rows))]) if len(rows) else np.zeros((0, 1, 1))
    return out
