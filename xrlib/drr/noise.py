"""Detector noise the physics way: quantum noise drawn where X-rays are absorbed, *then* the blur.

In an energy-integrating indirect detector the quanta are absorbed in the scintillator, whose light
spread then blurs their signal, and the read-out adds electronic noise to each pixel. So quantum
noise is correlated by the detector blur and electronic noise is white. This module draws noise in
that order from a cached noise-free *expected signal* (:class:`ExpectedSignal`): one realisation
costs a noise draw, not a re-projection.

Chain of :func:`noisy_log` at a dose ``D`` (mAs), per pixel:

1. quantum noise (compound Poisson, matched in mean and variance): ``S = q·Poisson(D·s/q)``, with ``s``
   the expected signal per mAs (keV, primary + scatter, before the blur) and ``q = v/m`` the keV
   per equivalent quantum (:func:`xrlib.drr.physics.expected_detector_signal`);
2. detector blur: Gaussian, σ = ``blur_sigma_mm / pitch`` pixels (scintillator light spread);
3. electronic noise: white Gaussian, std = ``electronic_quanta``·q0 keV (read-out, after the light
   spread, so not blurred); ``electronic_quanta`` is the per-element std of the realistic chain
   scaled to the pixel (:func:`xrlib.drr.physics.electronic_quanta_at`);
4. zero-count clipping: the signal is clipped below at **0.5·q0** (half the signal of one detected
   flat-field photon) — at very low dose a pixel can receive no quanta and the electronic noise
   can make it negative; below one quantum the log carries no information — so −log saturates at
   ``log(2·N_flat)``, N_flat the detected flat-field quanta per pixel at that dose;
5. flat-field correction and −log: ``−log(S / (D·flat))``, ``flat`` the noise-free flat field per mAs.

The *clean* image (:func:`clean_log`) is the noise-free expected image (infinite dose): −log of the
blurred expected signal over the flat field.

The datasets' realistic chain (:func:`xrlib.drr.physics.realistic_intensity`) draws its noise the
same way: both call :func:`xrlib.drr.physics.detector_readout`, so a dataset image at the profile's dose
and a re-rendered realisation here are the same random process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from xrlib.drr import materials as mat
from xrlib.drr import physics as phys

__all__ = ["ExpectedSignal", "clean_log", "dose_axis", "expected_signal", "input_bin_side", "noisy_log", "render_expected"]


@dataclass(frozen=True)
class ExpectedSignal:
    """The noise-free detector signal of one radiograph, per mAs, before the detector blur.

    Attributes:
        signal: float64 (H, W), expected absorbed energy per pixel per mAs (keV/mAs), primary + scatter.
        quantum_kev: float64 (H, W), keV per equivalent quantum (q = v/m of the local spectrum).
        flat: noise-free flat-field signal per pixel per mAs (keV/mAs).
        quantum0_kev: mean detected photon energy of the flat field, q0 (keV).
        blur_sigma_px: detector blur σ in detector pixels (0: none).
        electronic_quanta: electronic read-noise std in units of q0 (0: none).
    """

    signal: np.ndarray
    quantum_kev: np.ndarray
    flat: float
    quantum0_kev: float
    blur_sigma_px: float
    electronic_quanta: float

    def __post_init__(self):
        if self.signal.shape != self.quantum_kev.shape or self.signal.ndim != 2:
            raise ValueError(f"signal {self.signal.shape} and quantum map {self.quantum_kev.shape} must be one 2-D shape")
        if not (self.flat > 0 and self.quantum0_kev > 0 and self.blur_sigma_px >= 0 and self.electronic_quanta >= 0):
            raise ValueError("flat and q0 must be positive, blur and electronic noise non-negative")

    @property
    def electronic_kev(self) -> float:
        """Electronic read-noise std (keV)."""
        return float(self.electronic_quanta * self.quantum0_kev)

    def flat_quanta(self, dose_mas: float) -> float:
        """Detected flat-field quanta per pixel at ``dose_mas``."""
        return float(dose_mas * self.flat / self.quantum0_kev)

    def blurred(self, x: np.ndarray) -> np.ndarray:
        """The detector blur of the last two axes of ``x`` (reflecting borders, as the datasets' chain)."""
        if self.blur_sigma_px <= 0:
            return x
        sigma = (0,) * (x.ndim - 2) + (self.blur_sigma_px, self.blur_sigma_px)
        return ndimage.gaussian_filter(x, sigma, mode="reflect")

    def to_arrays(self) -> dict:
        return {"signal": self.signal, "quantum_kev": self.quantum_kev,
                "scalars": np.array([self.flat, self.quantum0_kev, self.blur_sigma_px, self.electronic_quanta])}

    @classmethod
    def from_arrays(cls, a) -> "ExpectedSignal":
        f, q0, b, e = (float(x) for x in a["scalars"])
        return cls(np.asarray(a["signal"], float), np.asarray(a["quantum_kev"], float), f, q0, b, e)


def expected_signal(line_integrals: dict[str, np.ndarray], pitch_mm: float, sdd_mm: float,
                    params: phys.RealisticParams | None = None) -> ExpectedSignal:
    """:class:`ExpectedSignal` of per-material line integrals (g/cm³·mm) with the realistic chain's
    spectrum, detector and scatter (:func:`xrlib.drr.physics.expected_detector_signal` at 1 mAs)."""
    params = params or phys.RealisticParams()
    pitch = float(pitch_mm)
    signal, q, m0, q0 = phys.expected_detector_signal(line_integrals, pitch * pitch, sdd_mm,
                                                      replace(params, dose_mas=1.0), pitch)
    return ExpectedSignal(signal, q, float(m0), float(q0), float(params.blur_sigma_mm) / pitch,
                          phys.electronic_quanta_at(params.electronic_noise, pitch))


def clean_log(es: ExpectedSignal) -> np.ndarray:
    """The noise-free image −log(blur(s)/flat) (float32; the infinite-dose limit of :func:`noisy_log`)."""
    return (-np.log(np.maximum(es.blurred(es.signal), 1e-300) / es.flat)).astype(np.float32)


def noisy_log(es: ExpectedSignal, dose_mas: float, rng: np.random.Generator, n: int | None = None,
              quantum: bool = True, electronic: bool = True) -> np.ndarray:
    """Noisy −log images at ``dose_mas`` (float32 (H, W), or (n, H, W) for ``n`` realisations).

    The chain of the module docstring: compound-Poisson quantum noise, blur, electronic noise,
    clipping at 0.5·q0, flat-field correction and −log. ``quantum``/``electronic`` switch the two
    noise sources (both off gives :func:`clean_log` up to the clipping).
    """
    if not dose_mas > 0:
        raise ValueError(f"dose must be positive, got {dose_mas} mAs")
    shape = es.signal.shape if n is None else (int(n), *es.signal.shape)
    sig = phys.detector_readout(dose_mas * es.signal, es.quantum_kev, es.quantum0_kev, es.blur_sigma_px,
                                es.electronic_quanta if electronic else 0.0, rng, quantum=quantum, shape=shape)
    return (-np.log(sig / (dose_mas * es.flat))).astype(np.float32)


def render_expected(ct, clavicles, geometry, poses: Sequence, params: phys.RealisticParams | None = None,
                    backend="auto", fov: str = "pad", mask_threshold_mm: float = 0.5, isocenter=None,
                    prefilter: bool = False) -> list[dict]:
    """Expected signals of ``ct`` at ``poses`` with the realistic chain (no noise drawn).

    The projection of :func:`xrlib.drr.render.render_batch` (:func:`~xrlib.drr.render.project_levels`: same
    channels, field and masks, ``prefilter`` as there); per pose
    a dict with ``expected`` (:class:`ExpectedSignal`), ``field`` (bool (H, W)) and ``mask`` (uint8,
    both clavicles; ``None`` without ``clavicles``).
    """
    from xrlib.drr.render import MASK_CHANNELS, project_levels

    pr = project_levels(ct, clavicles, geometry, poses, ("realistic",), backend, fov, isocenter=isocenter, prefilter=prefilter)
    col = {n: i for i, n in enumerate(pr.names)}
    out = []
    for stack, fld in zip(pr.stack, pr.fields):
        es = expected_signal({m: stack[col[m]] for m in mat.MATERIALS}, geometry.pitch, geometry.sdd, params)
        mask = None
        if clavicles is not None:
            left, right = (stack[col[c]] >= mask_threshold_mm for c in MASK_CHANNELS)
            mask = ((left | right) & fld).astype(np.uint8)
        out.append({"expected": es, "field": fld, "mask": mask})
    return out


def input_bin_side(detector_shape: tuple[int, int], input_size: int) -> float:
    """Detector pixels per side of one network-input pixel: the datasets' resize maps the longer detector
    side onto ``input_size`` pixels keeping the aspect ratio (:func:`xrlib.data.preprocess.fit`)."""
    if input_size < 1 or min(detector_shape) < 1:
        raise ValueError(f"need a positive input size and detector shape, got {input_size} and {detector_shape}")
    return float(max(detector_shape)) / float(input_size)


def dose_axis(es: ExpectedSignal, mask: np.ndarray, field: np.ndarray, doses_mas: Sequence[float], bin_side: float,
              pitch_mm: float, ring_mm: float = 5.0) -> dict[str, np.ndarray]:
    """The dose in units a reader knows: detected quanta per network-input pixel and clavicle CNR at the input.

    An input pixel covers ``bin_side``² detector pixels (:func:`input_bin_side`); its signal is taken as
    the sum over that area (an ideal area binning; the datasets' antialiased bilinear resize is close
    to it). Per dose ``D`` (mAs):

    * ``flat_quanta``: detected equivalent quanta per input pixel in the open field, D·flat/q0·bin²;
    * ``clavicle_quanta``: the same behind the clavicles, mean over ``mask`` of D·s/q·bin² (s the
      expected signal per mAs before the blur, q the local keV per equivalent quantum);
    * ``cnr``: clavicle contrast-to-noise ratio at the input, ΔL/σ: ΔL the mean noise-free −log over the
      clavicles minus that over a ring of ``ring_mm`` around them (inside ``field``); σ² the mean over
      the clavicles of the −log variance of a binned pixel, (q·S + σ_e²)/(bin²·S²) with S = D·blur(s)
      (keV) and σ_e the electronic std per detector pixel (keV): quantum variance q·S and electronic
      variance add per detector pixel and sum over the bin. Windowing is affine, so the CNR holds for
      the windowed image too (unsharp masking aside). Quantum limited (σ_e = 0) the CNR grows as √D.

    Returns a dict of float arrays over ``doses_mas``: ``dose_mas``, ``flat_quanta``, ``clavicle_quanta``,
    ``contrast`` (ΔL, dose independent), ``noise_std`` and ``cnr``.
    """
    m, f = np.asarray(mask) > 0, np.asarray(field, bool)
    if m.shape != es.signal.shape or f.shape != es.signal.shape:
        raise ValueError(f"mask {m.shape} and field {f.shape} must have the signal's shape {es.signal.shape}")
    m &= f
    if not m.any():
        raise ValueError("the clavicle mask has no pixel inside the field")
    ring = ndimage.binary_dilation(m, iterations=max(1, int(round(ring_mm / pitch_mm)))) & f & ~m
    if not ring.any():
        raise ValueError("no background pixel around the clavicles inside the field")
    clean = clean_log(es).astype(float)
    contrast = float(clean[m].mean() - clean[ring].mean())
    area = float(bin_side) ** 2
    doses = np.asarray([float(d) for d in doses_mas])
    if not (doses > 0).all():
        raise ValueError(f"doses must be positive mAs, got {list(doses)}")
    s, q, sb = es.signal[m], es.quantum_kev[m], es.blurred(es.signal)[m]
    e2 = es.electronic_kev ** 2
    noise = np.array([math.sqrt(float(np.mean((q * d * sb + e2) / (area * (d * sb) ** 2)))) for d in doses])
    return {"dose_mas": doses, "flat_quanta": doses * es.flat / es.quantum0_kev * area,
            "clavicle_quanta": np.array([float(np.mean(d * s / q)) * area for d in doses]),
            "contrast": np.full(len(doses), contrast), "noise_std": noise, "cnr": contrast / noise}
