"""Effects of a real X-ray room that no simulator of the ladder models, applied to the Real surrogate only.

The ladder (naive, heuristic, realistic) and the surrogate share one projector and one realistic chain;
per-image acquisition settings (:mod:`xrlib.drr.acquisition`) vary that chain's parameters but add no
effect the realistic simulator lacks. :class:`SurrogateEffects` adds those effects, in the order a
radiograph acquires them, each documented with its source or marked as an *assumption*:

Detector signal (relative intensity ``I = exp(−image)`` of the realistic chain's ``−log(I/I0)``):

``falloff``
    Off-axis fall-off ``cos³θ`` of the primary fluence (inverse square × obliquity), ``θ`` the angle of
    a pixel's ray to the central ray at the source-to-detector distance (Bushberg et al., *The
    Essential Physics of Medical Imaging*, 3rd ed., ch. 6). The realistic chain divides it out (it
    cancels in ``I/I0``); a room without flat-field correction of it keeps it.
``heel``
    Anode heel effect: intensity rising linearly from the anode to the cathode side, ``1 + h·u``,
    ``u ∈ [−1, 1]`` along the anode–cathode axis (one of four orientations, drawn per image),
    ``h ~ U(heel)``: the cathode-to-anode edge ratio is ``(1 + h)/(1 − h)``. Bushberg, ch. 6: up to
    ±20 % over a 43 cm field at 100 cm; less at a chest room's 180 cm (the default 5–15 % is an
    assumption for a partly flat-fielded panel).
``grid``
    Anti-scatter grid lines: lead strips at ``grid_lines_per_cm`` (40 lines/cm is a common stationary
    grid, e.g. IEC 60627 grid ratios 8–12 at 36–80 lines/cm), absorbing a fraction ``m ~ U(grid_modulation)``
    of the primary in a cosine pattern, point-sampled at the pixel centres so it aliases at the
    detector pitch (:func:`aliased_frequency`; the moiré of a stationary grid on a flat panel). Point
    sampling, i.e. no pixel-aperture or resampling attenuation, is an assumption that keeps the moiré
    visible at this book's coarse pitches.
``gain``
    Gain and offset non-uniformity left after calibration: per-pixel gain ``1 + gain_sd·N(0, 1)``, a
    per-readout-line (column) gain ``gain_line_sd·N(0, 1)`` and a per-pixel offset ``offset_sd·N(0, 1)``
    (fractions of the unattenuated signal; magnitudes are an assumption, of the order of IEC 62220-1
    residual-structure measurements).
``defects``
    Defect pixels (``defect_fraction`` of the field: half dead, half hot — half the field's lowest
    signal and twice its highest, :data:`DEFECT_DEAD`, :data:`DEFECT_HOT`) and up to ``defect_lines``
    dead rows or columns (a failed gate or readout line). Uncorrected defect maps
    are an assumption: a real room interpolates most of them, not all.
``electronic_noise``
    Additive Gaussian readout noise of standard deviation ``electronic_noise_sd`` (fraction of the
    unattenuated signal), drawn from the surrogate's own seed stream (:func:`effects_rng`), never
    from the ladder's noise seed (assumption on its magnitude).

Display image (after :meth:`xrlib.drr.acquisition.Acquisition.display`, values in [0, 1], 0 outside
the field):

``pyramid``
    Multi-frequency contrast enhancement as in vendor processing (Agfa MUSICA: Vuylsteke &
    Schoeters, *Proc. SPIE* 2167, 1994): an undecimated Laplacian pyramid with ``pyramid_levels``
    detail bands (Gaussian σ = 2^k px), each band multiplied by a gain ``~ U(pyramid_gains)`` and the
    coarse residual compressed about its mean by ``~ U(pyramid_residual)`` (latitude reduction). With
    all gains 1 it is the identity (:func:`laplacian_pyramid`, :func:`pyramid_process`).
``collimation``
    Collimator edges: a margin ``~ U(collimation_margin)`` of each side outside the collimated field,
    blacked out as by electronic shuttering (assumption: some vendors leave it white). A margin never
    enters the clavicles' bounding box, so the mask stays the image's ground truth.
``marker``
    A burned-in lead side marker ("R" or "L", a 5 × 7 bitmap scaled by a whole factor to about ``marker_mm``
    tall — lead letters of 1.5–2.5 cm are usual (assumption) —, white as lead is) in a corner of the collimated field whose box does not touch the clavicles (dilated); the mask
    is never changed. Skipped, and recorded so, when no corner is free.

Every effect's parameters are drawn per image from ``rng`` (:func:`effects_rng`: the profile seed, the
subject and the image index, a stream of its own). :func:`surrogate_effects` reads the profile's
``surrogate.effects`` block (every key optional; unknown keys are an error).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

from xrlib.core.errors import InputError

__all__ = ["EFFECTS", "GLYPHS", "SurrogateEffects", "aliased_frequency", "effects_rng", "laplacian_pyramid",
           "pyramid_process", "surrogate_effects"]

#: The effects in the order they are applied (detector signal, then display image).
EFFECTS = ("falloff", "heel", "grid", "gain", "defects", "electronic_noise", "pyramid", "collimation", "marker")
#: Seed-stream tag of the surrogate's effects (the ladder's noise uses another, :func:`xrlib.data.recipes.noise_seed`).
EFFECTS_STREAM = 5

#: 5 × 7 bitmaps of the side-marker letters (row 0 on top).
GLYPHS = {
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
}

#: Positive floor of the relative intensity (the log domain needs one).
DEAD_FLOOR = 1e-4
#: A dead pixel (or line) reads this fraction of the field's lowest signal, a hot one this multiple of its highest:
#: outliers just beyond the image's range, so a percentile window is not stretched by orders of magnitude.
DEFECT_DEAD, DEFECT_HOT = 0.5, 2.0


@dataclass(frozen=True)
class SurrogateEffects:
    """Parameters of the surrogate's extra effects (see the module docstring; ranges are ``(lo, hi)`` of a uniform draw).

    Attributes:
        enabled: the effects applied (a subset of :data:`EFFECTS`).
        grid_lines_per_cm: anti-scatter grid line density (lines/cm).
        grid_modulation: fraction of the primary the strips' pattern modulates (cosine amplitude).
        heel: half the relative cathode-to-anode intensity difference ``h``.
        gain_sd, gain_line_sd, offset_sd: per-pixel gain, per-column gain and per-pixel offset sd (fractions).
        defect_fraction: fraction of the field's pixels that are defect (half dead, half hot).
        defect_lines: at most this many dead rows/columns per image (uniform 0..n).
        electronic_noise_sd: additive readout-noise sd (fraction of the unattenuated signal).
        pyramid_levels: detail bands of the Laplacian pyramid.
        pyramid_gains: range of each detail band's gain.
        pyramid_residual: range of the coarse residual's gain about its mean.
        collimation_margin: range of each side's collimated margin (fraction of the side).
        marker_mm: side-marker height at the detector (mm).
    """

    enabled: tuple[str, ...] = EFFECTS
    grid_lines_per_cm: float = 40.0
    grid_modulation: tuple[float, float] = (0.02, 0.06)
    heel: tuple[float, float] = (0.05, 0.15)
    gain_sd: float = 0.02
    gain_line_sd: float = 0.01
    offset_sd: float = 0.002
    defect_fraction: float = 5e-4
    defect_lines: int = 2
    electronic_noise_sd: float = 0.003
    pyramid_levels: int = 4
    pyramid_gains: tuple[float, float] = (1.0, 2.0)
    pyramid_residual: tuple[float, float] = (0.5, 1.0)
    collimation_margin: tuple[float, float] = (0.0, 0.06)
    marker_mm: float = 20.0

    def __post_init__(self):
        unknown = sorted(set(self.enabled) - set(EFFECTS))
        if unknown:
            raise ValueError(f"unknown surrogate effect(s) {unknown}; known: {', '.join(EFFECTS)}")
        for name in ("grid_modulation", "heel", "pyramid_gains", "pyramid_residual", "collimation_margin"):
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi):
                raise ValueError(f"{name} must be a range 0 ≤ lo ≤ hi, got {(lo, hi)}")
        if self.heel[1] >= 1 or self.grid_modulation[1] >= 1 or self.collimation_margin[1] >= 0.5:
            raise ValueError("need heel < 1, grid_modulation < 1 and collimation_margin < 0.5")
        if min(self.gain_sd, self.gain_line_sd, self.offset_sd, self.electronic_noise_sd) < 0 or \
                not 0 <= self.defect_fraction < 1 or self.defect_lines < 0 or self.pyramid_levels < 1 or \
                not (self.grid_lines_per_cm > 0 and self.marker_mm > 0):
            raise ValueError("need non-negative sds, 0 ≤ defect_fraction < 1, defect_lines ≥ 0, pyramid_levels ≥ 1, "
                             "grid_lines_per_cm > 0 and marker_mm > 0")

    def on(self, name: str) -> bool:
        return name in self.enabled

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    # ---- detector signal -------------------------------------------------------------------------------
    def detector(self, image: np.ndarray, field: np.ndarray, pitch_mm: float, sdd_mm: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """``image`` (−log(I/I0), rows superior → inferior) with the detector-signal effects; and what was drawn."""
        x = np.asarray(image, np.float64)
        h, w = x.shape
        f = np.asarray(field, bool)
        intensity = np.exp(-x)
        info: dict = {}
        yy = (np.arange(h) - (h - 1) / 2) * pitch_mm
        xx = (np.arange(w) - (w - 1) / 2) * pitch_mm
        if self.on("falloff"):
            r2 = yy[:, None] ** 2 + xx[None, :] ** 2
            intensity = intensity * (sdd_mm / np.sqrt(sdd_mm ** 2 + r2)) ** 3
        if self.on("heel"):
            hv = float(rng.uniform(*self.heel))
            direction = int(rng.integers(4))  # cathode side: 0 bottom, 1 top, 2 right, 3 left
            u = np.linspace(-1.0, 1.0, h)[:, None] if direction < 2 else np.linspace(-1.0, 1.0, w)[None, :]
            u = u if direction % 2 == 0 else -u
            intensity = intensity * (1.0 + hv * u)
            info["heel"] = hv
            info["heel_cathode"] = ("bottom", "top", "right", "left")[direction]
        if self.on("grid"):
            m = float(rng.uniform(*self.grid_modulation))
            along_cols = bool(rng.integers(2))  # lines parallel to the columns: the pattern varies along a row
            phase = float(rng.uniform(0, 2 * math.pi))
            pos = (np.arange(w if along_cols else h) + 0.5) * pitch_mm
            wave = 1.0 + m * np.cos(2 * math.pi * self.grid_lines_per_cm / 10.0 * pos + phase)
            intensity = intensity * (wave[None, :] if along_cols else wave[:, None])
            info["grid_modulation"] = m
            info["grid_axis"] = "columns" if along_cols else "rows"
            info["grid_alias_per_mm"] = aliased_frequency(self.grid_lines_per_cm / 10.0, pitch_mm)
        if self.on("gain"):
            gain = 1.0 + self.gain_sd * rng.standard_normal((h, w)) + self.gain_line_sd * rng.standard_normal((1, w))
            intensity = gain * intensity + self.offset_sd * rng.standard_normal((h, w))
        if self.on("electronic_noise"):
            intensity = intensity + self.electronic_noise_sd * rng.standard_normal((h, w))
        intensity = np.maximum(intensity, DEAD_FLOOR)
        if self.on("defects"):
            idx = np.flatnonzero(f)
            k = int(round(self.defect_fraction * idx.size))
            pick = rng.choice(idx, size=k, replace=False) if k else np.zeros(0, int)
            dead, hot = pick[: (k + 1) // 2], pick[(k + 1) // 2:]
            lo, hi = (float(intensity[f].min()), float(intensity[f].max())) if f.any() else (1.0, 1.0)
            dead_value, hot_value = max(DEFECT_DEAD * lo, DEAD_FLOOR), DEFECT_HOT * hi
            flat = intensity.reshape(-1)
            flat[dead] = dead_value
            flat[hot] = hot_value
            n_lines = int(rng.integers(self.defect_lines + 1))
            lines = []
            for _ in range(n_lines):
                if rng.integers(2):
                    j = int(rng.integers(w))
                    intensity[:, j] = dead_value
                    lines.append(f"column {j}")
                else:
                    i = int(rng.integers(h))
                    intensity[i, :] = dead_value
                    lines.append(f"row {i}")
            info["defect_pixels"] = k
            info["defect_lines"] = lines
        return (-np.log(intensity)).astype(np.float32), info

    # ---- display image ---------------------------------------------------------------------------------
    def display(self, display: np.ndarray, field: np.ndarray, mask: np.ndarray | None, pitch_mm: float,
                rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """A display image in [0, 1] with the pyramid processing, collimation and side marker; ``mask`` is only read."""
        x = np.asarray(display, np.float64)
        f = np.asarray(field, bool)
        info: dict = {}
        if self.on("pyramid"):
            gains = [float(g) for g in rng.uniform(*self.pyramid_gains, size=self.pyramid_levels)]
            res = float(rng.uniform(*self.pyramid_residual))
            x = pyramid_process(x, f, gains, res)
            info["pyramid_gains"], info["pyramid_residual"] = gains, res
        h, w = x.shape
        box = _bbox(mask)
        top, bottom, left, right = 0, h, 0, w
        if self.on("collimation"):
            mt, mb, ml, mr = (int(round(v)) for v in rng.uniform(*self.collimation_margin, 4) * np.array([h, h, w, w]))
            if box is not None:  # the collimator never cuts the clavicles (ground truth unchanged)
                mt, mb, ml, mr = min(mt, box[0]), min(mb, h - 1 - box[1]), min(ml, box[2]), min(mr, w - 1 - box[3])
            top, bottom, left, right = mt, h - mb, ml, w - mr
            keep = np.zeros_like(f)
            keep[top:bottom, left:right] = True
            x = np.where(keep, x, 0.0)
            info["collimation_px"] = [mt, mb, ml, mr]
        if self.on("marker"):
            letter = "R" if rng.integers(2) else "L"
            glyph = np.array([[c == "1" for c in row] for row in GLYPHS[letter]])
            k = max(1, int(round(self.marker_mm / pitch_mm / glyph.shape[0])))
            glyph = np.kron(glyph, np.ones((k, k), bool))
            gh, gw = glyph.shape
            busy = np.zeros((h, w), bool) if mask is None else ndimage.binary_dilation(np.asarray(mask) > 0, iterations=2)
            inset = 2
            corners = [(top + inset, left + inset), (top + inset, right - inset - gw),
                       (bottom - inset - gh, left + inset), (bottom - inset - gh, right - inset - gw)]
            placed = None
            for c in rng.permutation(4):
                r0, c0 = corners[int(c)]
                if r0 < top or c0 < left or r0 + gh > bottom or c0 + gw > right:
                    continue
                if not busy[r0:r0 + gh, c0:c0 + gw].any() and f[r0:r0 + gh, c0:c0 + gw].all():
                    placed = (r0, c0)
                    break
            if placed is not None:
                r0, c0 = placed
                x[r0:r0 + gh, c0:c0 + gw] = np.where(glyph, 1.0, x[r0:r0 + gh, c0:c0 + gw])
            info["marker"] = None if placed is None else {"letter": letter, "row": placed[0], "col": placed[1],
                                                         "size_px": [gh, gw]}
        return np.where(f, np.clip(x, 0.0, 1.0), 0.0).astype(np.float32), info

    def apply(self, image: np.ndarray, field: np.ndarray, mask: np.ndarray | None, pitch_mm: float, sdd_mm: float,
              display: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """The surrogate's display image: detector effects on ``image``, ``display`` (the acquisition's window,
        unsharp masking, tone curve: −log image → [0, 1]), then the display effects. Returns it and the draws."""
        sig, a = self.detector(image, field, pitch_mm, sdd_mm, rng)
        out, b = self.display(display(sig), field, mask, pitch_mm, rng)
        return out, {**a, **b}


def aliased_frequency(f: float, pitch_mm: float) -> float:
    """The frequency (cycles/mm, in [0, Nyquist]) that a pattern of frequency ``f`` (cycles/mm) shows when
    point-sampled at ``pitch_mm``: the distance from ``f`` to the nearest multiple of the sampling rate."""
    fs = 1.0 / pitch_mm
    return float(abs(f - round(f / fs) * fs))


def _smooth(x: np.ndarray, field: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur normalised over ``field`` (out-of-field values do not leak in), as the display's unsharp mask."""
    m = field.astype(float)
    return ndimage.gaussian_filter(x * m, sigma) / np.maximum(ndimage.gaussian_filter(m, sigma), 1e-12)


def laplacian_pyramid(x: np.ndarray, field: np.ndarray, levels: int) -> list[np.ndarray]:
    """Undecimated Laplacian pyramid: detail bands ``L_k = G_k − G_{k+1}`` (``G_0 = x``, ``G_{k+1}`` the field-normalised
    Gaussian blur of ``x`` at σ = 2^k px) and the residual ``G_levels`` last; the bands sum to ``x`` exactly."""
    x = np.asarray(x, np.float64)
    f = np.asarray(field, bool)
    g = [x] + [_smooth(x, f, 2.0 ** k) for k in range(levels)]
    return [g[k] - g[k + 1] for k in range(levels)] + [g[levels]]


def pyramid_process(x: np.ndarray, field: np.ndarray, gains, residual_gain: float = 1.0) -> np.ndarray:
    """Band gains on :func:`laplacian_pyramid` (one per detail band, fine → coarse) and the residual scaled about its
    field mean by ``residual_gain``; clipped to [0, 1], 0 outside ``field``. All gains 1: the identity on [0, 1] images."""
    f = np.asarray(field, bool)
    bands = laplacian_pyramid(x, f, len(gains))
    res = bands[-1]
    mean = float(res[f].mean()) if f.any() else 0.0
    out = mean + residual_gain * (res - mean) + sum(g * b for g, b in zip(gains, bands[:-1]))
    return np.where(f, np.clip(out, 0.0, 1.0), 0.0)


def _bbox(mask) -> tuple[int, int, int, int] | None:
    if mask is None or not np.any(mask):
        return None
    rows, cols = np.flatnonzero(np.any(mask, 1)), np.flatnonzero(np.any(mask, 0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def effects_rng(seed: int, subject: str, index: int) -> np.random.Generator:
    """The generator of one surrogate image's effects: profile ``seed``, ``subject`` and image ``index``, in a stream
    (:data:`EFFECTS_STREAM`) separate from the ladder's noise seed and the acquisition draws."""
    key = int.from_bytes(hashlib.sha256(str(subject).encode()).digest()[:4], "little")
    return np.random.default_rng([int(seed), key, EFFECTS_STREAM, int(index)])


def surrogate_effects(block: dict | None, where: str = "<profile>") -> SurrogateEffects:
    """:class:`SurrogateEffects` from a profile's ``surrogate.effects`` mapping (``None``: the defaults); bad keys
    or values raise :class:`InputError` naming ``where``."""
    if block is None:
        return SurrogateEffects()
    if not isinstance(block, dict):
        raise InputError(where, "surrogate.effects must be a mapping of effect parameters")
    known = {f.name: f for f in fields(SurrogateEffects)}
    unknown = sorted(set(block) - set(known))
    if unknown:
        raise InputError(where, f"surrogate.effects: unknown key(s) {unknown}; known: {', '.join(known)}")
    kw = {}
    try:
        for k, v in block.items():
            default = getattr(SurrogateEffects, k) if k != "enabled" else EFFECTS
            if isinstance(default, tuple):
                kw[k] = tuple(str(t) for t in v) if k == "enabled" else tuple(float(t) for t in v)
                if k != "enabled" and len(kw[k]) != 2:
                    raise ValueError(f"{k} must be [lo, hi]")
            else:
                kw[k] = type(default)(v)
        return SurrogateEffects(**kw)
    except (TypeError, ValueError) as exc:
        raise InputError(where, f"surrogate.effects: {exc}") from None
