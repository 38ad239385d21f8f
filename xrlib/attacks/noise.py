"""The quantum-noise threat: lower the dose and see whether the prediction changes (budget = dose in mAs).

Each test image is held as its noise-free *expected detector signal* (:class:`NoiseSource`), so a
realisation costs a noise draw. Two arms make the noisy images at a dose:

``rerendered``
    :func:`xrlib.drr.noise.noisy_log`: compound-Poisson quantum noise in the detector signal, the
    detector blur, electronic noise, zero-count clipping and −log (the physics order).
``inserted``
    Paper 003's noise insertion adapted to projections (needs no CT). Where every pixel of the field
    still receives at least :data:`MIN_GAUSSIAN_QUANTA` effective quanta at the target dose (1st
    percentile; read noise counted, :func:`gaussian_insertion_holds`), Gaussian insertion with the local NPS (below); where fewer quanta arrive, Gaussian
    noise cannot reproduce the Poisson statistics (skew, the −log bias, zero counts), and the arm
    inserts in the *count domain* instead (:func:`count_inserted_noise`): expected quanta from the
    clean image and the detector calibration, Poisson counts, blur, read noise, −log. Gaussian
    insertion: the local NPS of the quantum
    noise is estimated from ``nps_realisations`` re-rendered images at ``reference_dose``
    (:func:`xrlib.drr.nps.estimate_local_nps`, ensemble mean subtracted, ``patch`` detector pixels, 30 %
    overlap) after removing the white electronic part; the synthesised noise is modulated per pixel by the
    quantum variance's variation within a patch (:func:`variance_modulation`) and scaled by
    √(reference/dose) and added to the clean −log image. The electronic part is *not* scaled with
    the quantum part: its −log-domain std at the target dose is σ_e / Ī(dose) per pixel (σ_e from the
    detector's dark-frame calibration, Ī the clean intensity at that dose), drawn as white noise —
    its variance grows as 1/dose², the quantum part's as 1/dose. The result is saturated at the
    same ceiling as the re-rendered arm's zero-count clipping (−log ≤ log(2·N_flat)).

``clean-window``
    The window control: the re-rendered arm's noisy images (the same draws), displayed with the window
    of the *noise-free* image instead of their own 0.5/99.5 percentiles. Against ``rerendered`` it
    separates the damage of the noise from that of a window stretched by outlier pixels.

All arms then go through the datasets' display and input chain: pixels outside the field set to
0, :func:`xrlib.drr.physics.postprocess` (window + unsharp masking) and
:func:`xrlib.data.preprocess.preprocess` to the network's size. The clean image (budget ``inf``) is
the noise-free expected image through the same chain. Realisations are seeded per image, dose and
arm, and every victim sees the same noisy images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from xrlib.attacks.base import TestImages, Threat, Threatened
from xrlib.core.errors import InputError
from xrlib.data.preprocess import preprocess
from xrlib.drr import nps as nps_mod
from xrlib.drr.noise import ExpectedSignal, clean_log, noisy_log
from scipy import ndimage

from xrlib.drr.physics import detector_readout, postprocess

__all__ = ["ARMS", "MIN_GAUSSIAN_QUANTA", "NoiseSource", "NoiseThreat", "count_inserted_noise", "display_fixed_window",
           "gaussian_insertion_holds", "inserted_noise", "rerendered_noise"]

ARMS = ("rerendered", "inserted", "clean-window")

#: Fewest effective quanta per detector pixel (1st percentile over the field) at which the inserted arm
#: uses Gaussian (NPS) insertion: −log of a Poisson count N has skew ≈ −1/√N and bias ≈ 1/(2N), so at
#: 50 quanta the skew is ≈ −0.14 and the bias ≈ 7 % of the std. Below it the arm inserts in the count domain.
MIN_GAUSSIAN_QUANTA = 50.0

#: The datasets' display window (percentiles of the field, :func:`xrlib.drr.physics.postprocess`'s default).
WINDOW_PERCENTILES = (0.5, 99.5)


@dataclass
class NoiseSource:
    """One test image as the noise threat needs it: expected signal, field, clavicle mask (detector grid), pitch (mm)."""

    expected: ExpectedSignal
    field: np.ndarray
    mask: np.ndarray
    pitch_mm: float

    def to_input(self, log_images: np.ndarray, size: int, clean_window: bool = False) -> np.ndarray:
        """−log images ``(H, W)`` or ``(n, H, W)`` → network inputs ``(n, size, size)`` (the datasets' chain);
        with ``clean_window`` each image is displayed with the noise-free image's window (the control)."""
        x = np.asarray(log_images)
        x = x[None] if x.ndim == 2 else x
        if clean_window:
            lo, hi = np.percentile(clean_log(self.expected)[self.field], WINDOW_PERCENTILES)
            shown = [display_fixed_window(np.where(self.field, im, 0.0), self.field, lo, hi, self.pitch_mm) for im in x]
        else:
            shown = [postprocess(np.where(self.field, im, 0.0), self.field, pitch_mm=self.pitch_mm) for im in x]
        return np.stack([preprocess(im, None, size)[0] for im in shown])


def display_fixed_window(image: np.ndarray, field: np.ndarray, lo: float, hi: float, pitch_mm: float,
                         unsharp_sigma_mm: float = 3.0, unsharp_amount: float = 0.5) -> np.ndarray:
    """:func:`xrlib.drr.physics.postprocess` with a given window ``[lo, hi]`` (−log units) instead of the
    image's own percentiles: window, unsharp masking (normalised over the field), clip, 0 outside."""
    mask = np.asarray(field, bool)
    x = np.where(mask, (np.asarray(image, np.float64) - lo) / (hi - lo if hi > lo else 1.0), 0.0)
    if unsharp_amount != 0 and unsharp_sigma_mm > 0:
        sg = unsharp_sigma_mm / pitch_mm
        smooth = ndimage.gaussian_filter(x, sg) / np.maximum(ndimage.gaussian_filter(mask.astype(float), sg), 1e-12)
        x = x + unsharp_amount * (x - smooth)
    return np.where(mask, np.clip(x, 0.0, 1.0), 0.0).astype(np.float32)


def rerendered_noise(src: NoiseSource, dose_mas: float, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` re-rendered noisy −log images (n, H, W) at ``dose_mas``."""
    return noisy_log(src.expected, dose_mas, rng, n)


def _electronic_std_log(es: ExpectedSignal, dose_mas: float) -> np.ndarray:
    """Per-pixel std of the electronic noise in the −log domain at a dose: σ_e / Ī (linearised)."""
    return es.electronic_kev / np.maximum(dose_mas * es.blurred(es.signal), 1e-300)


def quantum_nps(src: NoiseSource, reference_dose: float, rng: np.random.Generator, n: int, patch: int,
                overlap: float = 0.3) -> nps_mod.LocalNPS:
    """Local NPS of the quantum noise at ``reference_dose`` from ``n`` ≥ 2 re-rendered realisations.

    Noise = realisation − ensemble mean, scaled by √(n/(n−1)); the white electronic variance
    (mean of (σ_e/Ī)² over each patch) is subtracted from each patch's NPS (floored at 0).
    """
    if n < 2:
        raise InputError(None, f"noise insertion needs at least 2 realisations for the NPS, got {n}")
    reps = noisy_log(src.expected, reference_dose, rng, n).astype(float)
    noise = (reps - reps.mean(0)) * math.sqrt(n / (n - 1))
    lnps = nps_mod.estimate_local_nps(noise, patch, overlap)
    e_var = _electronic_std_log(src.expected, reference_dose) ** 2
    sub = np.array([e_var[y:y + patch, x:x + patch].mean() for y, x in lnps.origins])
    return nps_mod.LocalNPS(lnps.shape, lnps.patch, lnps.overlap, lnps.origins,
                            np.maximum(lnps.nps - sub[:, None, None], 0.0))


def gaussian_insertion_holds(src: NoiseSource, dose_mas: float, min_quanta: float = MIN_GAUSSIAN_QUANTA) -> bool:
    """Whether Gaussian insertion is used at ``dose_mas``: the 1st percentile over the field of the effective
    quanta per detector pixel is ≥ ``min_quanta``. Effective quanta N²/(N + σ_e²) — N = dose·blur(s)/q0 from
    the clean image and the calibration, σ_e the read-noise std in quanta — make the signal's relative
    variance 1/N_eff, so read noise counts against the Gaussian approximation as missing quanta do."""
    es = src.expected
    n = dose_mas * es.flat * np.exp(-clean_log(es).astype(float)[src.field]) / es.quantum0_kev
    n_eff = n * n / (n + es.electronic_quanta ** 2)
    return bool(np.percentile(n_eff, 1.0) >= min_quanta)


def count_inserted_noise(src: NoiseSource, dose_mas: float, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` noisy −log images (n, H, W) inserted in the count domain (needs no CT).

    From the clean image and the detector's calibration only: the expected signal at ``dose_mas`` is
    dose·flat·exp(−clean) (keV); :func:`xrlib.drr.physics.detector_readout` draws Poisson counts of
    flat-field quanta (q0 per quantum), the detector blur, read noise and the zero-count clipping;
    then −log. It differs from re-rendering in using the blurred expected signal and the flat field's
    keV per quantum (no CT: no local spectrum).
    """
    es = src.expected
    mean = dose_mas * es.flat * np.exp(-clean_log(es).astype(float))
    sig = detector_readout(mean, es.quantum0_kev, es.quantum0_kev, es.blur_sigma_px, es.electronic_quanta, rng,
                           shape=(int(n), *mean.shape))
    return (-np.log(sig / (dose_mas * es.flat))).astype(np.float32)


def variance_modulation(src: NoiseSource, lnps: nps_mod.LocalNPS) -> np.ndarray:
    """Per-pixel std factor √(a/ā) that restores the quantum variance's variation *within* an NPS patch.

    A patch's NPS carries the patch's mean variance, so on its own the synthesised noise smears the
    variance over the patch (too much in the lungs next to bone, too little behind it). The quantum
    variance of −log is ∝ a = 1/Ī (Ī = flat·exp(−clean), from the clean image and the calibration: no
    CT); ā is a blended over the patches with the synthesis's own trapezoid weights, so the factor
    averages to about 1 over each patch and the NPS's measured level and shape are kept.
    """
    es = src.expected
    a = np.exp(clean_log(es).astype(float)) / es.flat
    ys, xs, w = nps_mod.patch_weights(lnps.shape, lnps.patch, lnps.overlap)
    p = lnps.patch
    abar = np.zeros(lnps.shape)
    for y, x, wt in zip(ys, xs, w):
        abar[y:y + p, x:x + p] += wt * a[y:y + p, x:x + p].mean()
    return np.sqrt(a / np.maximum(abar, 1e-300))


def inserted_noise(src: NoiseSource, lnps: nps_mod.LocalNPS, reference_dose: float, dose_mas: float,
                   rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` Gaussian-inserted noisy −log images (n, H, W) at ``dose_mas`` (see the module docstring)."""
    es = src.expected
    quantum = nps_mod.synthesize(lnps, rng, n) * variance_modulation(src, lnps) * math.sqrt(reference_dose / dose_mas)
    electronic = rng.standard_normal(quantum.shape) * _electronic_std_log(es, dose_mas)
    ceiling = math.log(2.0 * es.flat_quanta(dose_mas))
    return np.minimum(clean_log(es) + quantum + electronic, ceiling).astype(np.float32)


class NoiseThreat(Threat):
    """Quantum noise at doses ``doses`` (mAs) in the arms ``arms`` with ``realisations`` per image and arm.

    ``sources``/``rows``/``masks``: per test image its :class:`NoiseSource`, its manifest row (at
    least ``subject`` and ``alpha``) and its preprocessed ground truth. Clean budget: ``inf`` (the
    noise-free image). Extra columns: ``arm`` and ``realisation`` (``clean``/0 at the clean budget).
    """

    name = "noise"
    budget_unit = "mAs"
    geometric = False
    clean_budget = math.inf
    clean_keys = ("subject", "alpha")

    def __init__(self, sources: Sequence[NoiseSource], rows: pd.DataFrame, image_size: int, doses: Sequence[float],
                 arms: Sequence[str] = ARMS, realisations: int = 4, reference_dose: float = 2.0,
                 nps_realisations: int = 8, patch: int = 32, overlap: float = 0.3, seed: int = 0):
        self.sources, self.rows = list(sources), rows.reset_index(drop=True)
        self.size, self.doses = int(image_size), tuple(float(d) for d in doses)
        self.arms, self.realisations = tuple(arms), int(realisations)
        self.reference_dose, self.nps_realisations = float(reference_dose), int(nps_realisations)
        self.patch, self.overlap, self.seed = int(patch), float(overlap), int(seed)
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise InputError(None, f"noise: unknown arm(s) {bad}; expected some of {', '.join(ARMS)}")
        if not self.doses or any(not (d > 0 and math.isfinite(d)) for d in self.doses):
            raise InputError(None, f"noise: doses must be positive and finite mAs, got {list(self.doses)}")
        if self.realisations < 1 or len(self.sources) != len(self.rows):
            raise InputError(None, "noise: need ≥ 1 realisation and one source per row")
        self._cache: dict[float, Threatened] = {}
        self._nps: dict[int, nps_mod.LocalNPS] = {}
        masks = np.stack([preprocess(s.mask.astype(np.float32), s.mask, self.size)[1] for s in self.sources])
        clean = np.concatenate([s.to_input(clean_log(s.expected), self.size) for s in self.sources])
        self.test = TestImages(clean, masks.astype(np.float32), self.rows)

    def budgets(self) -> tuple[float, ...]:
        return (math.inf, *self.doses)

    def rng(self, image: int, dose: float, arm: str, purpose: int = 0) -> np.random.Generator:
        """The seeded generator of one image, dose and arm (``purpose`` 1: the NPS realisations)."""
        arm = "rerendered" if arm == "clean-window" else arm  # the control shows the re-rendered draws
        key = [self.seed, int(image), int(round(dose * 1e9)), ARMS.index(arm), int(purpose)]
        return np.random.default_rng(np.random.SeedSequence(key))

    def local_nps(self, i: int) -> nps_mod.LocalNPS:
        """The inserted arm's quantum NPS of image ``i`` (estimated once)."""
        if i not in self._nps:
            self._nps[i] = quantum_nps(self.sources[i], self.reference_dose,
                                       self.rng(i, self.reference_dose, "inserted", 1), self.nps_realisations,
                                       self.patch, self.overlap)
        return self._nps[i]

    def noisy_log(self, i: int, dose: float, arm: str, n: int | None = None) -> np.ndarray:
        """``n`` (default :attr:`realisations`) noisy −log images of image ``i`` in ``arm`` at ``dose``."""
        n = self.realisations if n is None else int(n)
        rng = self.rng(i, dose, arm)
        if arm in ("rerendered", "clean-window"):
            return rerendered_noise(self.sources[i], dose, rng, n)
        if self.insertion(i, dose) == "counts":
            return count_inserted_noise(self.sources[i], dose, rng, n)
        return inserted_noise(self.sources[i], self.local_nps(i), self.reference_dose, dose, rng, n)

    def subset(self, arms: Sequence[str], doses: Sequence[float]) -> "NoiseThreat":
        """The same threat (sources, seed, NPS settings) restricted to ``arms`` and ``doses``: the same realisations."""
        return NoiseThreat(self.sources, self.rows, self.size, doses, arms=arms, realisations=self.realisations,
                           reference_dose=self.reference_dose, nps_realisations=self.nps_realisations, patch=self.patch,
                           overlap=self.overlap, seed=self.seed)

    def insertion(self, i: int, dose: float) -> str:
        """How the inserted arm makes image ``i``'s noise at ``dose``: ``"nps"`` (Gaussian) or ``"counts"``."""
        return "nps" if gaussian_insertion_holds(self.sources[i], dose) else "counts"

    def apply(self, model, test: TestImages, budget: float) -> Threatened:
        b = float(budget)
        if math.isinf(b):
            n = len(self.rows)
            return Threatened(self.test.images, self.test.masks, self.rows, np.ones(n, bool),
                              pd.DataFrame({"arm": ["clean"] * n, "realisation": [0] * n}))
        if not any(np.isclose(b, d) for d in self.doses):
            raise InputError(None, f"noise: {b:g} mAs is not one of the doses {list(self.doses)}")
        if b not in self._cache:
            images, masks, rows, extra = [], [], [], []
            for i, src in enumerate(self.sources):
                drawn: dict[str, np.ndarray] = {}
                for arm in self.arms:
                    key = "rerendered" if arm == "clean-window" else arm  # the control shows the re-rendered draws
                    if key not in drawn:
                        drawn[key] = self.noisy_log(i, b, key)
                    images.append(src.to_input(drawn[key], self.size, clean_window=arm == "clean-window"))
                    masks += [self.test.masks[i]] * self.realisations
                    rows += [i] * self.realisations
                    extra += [(arm, r) for r in range(self.realisations)]
            self._cache[b] = Threatened(np.concatenate(images), np.stack(masks), self.rows.iloc[rows].reset_index(drop=True),
                                        np.ones(len(rows), bool), pd.DataFrame(extra, columns=["arm", "realisation"]))
        return self._cache[b]
