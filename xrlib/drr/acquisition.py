"""Acquisition variability: the settings of real X-ray rooms that a simulator with one fixed setting does not know.

A real radiograph is made at *some* tube voltage and dose, behind *some* grid (scatter), on *some*
detector (blur, gain non-uniformity), and displayed with *some* vendor's post-processing (window,
unsharp masking, tone curve). :data:`ACQUISITION_RANGES` documents one range per parameter, each with
its source or, where no public source fixes it, the word *assumption*. :func:`sample_acquisition`
draws one :class:`Acquisition` per image from a seeded generator, scaled about the simulator's fixed
default setting:

``value = default + scale · (u − default)``, ``u ~ U(lo, hi)`` (multiplicative parameters in log space),

so ``scale = 0`` is the default setting exactly (the *realistic* simulator), ``scale = 1`` spans the
documented ranges and ``scale = 2`` twice their extent about the default; values are then clamped to
what is physical (:attr:`Range.bounds`). The same draws ``u`` serve every scale, so an image at scale 2
deviates exactly twice as far as at scale 1 (common random numbers).

:meth:`Acquisition.realistic_params` gives the realistic chain's parameters (:mod:`xrlib.drr.physics`);
:meth:`Acquisition.display` applies the detector's residual gain ramp in the log domain and the
post-processing (:func:`xrlib.drr.physics.postprocess`, then the tone curve). The varied settings alone
add no effect the realistic simulator lacks (at scale 0 they are that simulator); the Real surrogate's
room effects that no simulator models — grid lines, heel and off-axis fall-off, gain/offset
non-uniformity and defects, collimation, side markers, multi-frequency processing — are
:mod:`xrlib.drr.surrogate`. :func:`clamped_parameters` names, per scale, the parameters whose draws
reach a physical bound and for what fraction of images (exact, from the ranges).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from xrlib.drr import physics as phys

__all__ = ["ACQUISITION_RANGES", "Acquisition", "Range", "clamped_parameters", "default_acquisition", "sample_acquisition",
           "tone_curve"]


@dataclass(frozen=True)
class Range:
    """A documented range ``[lo, hi]`` of one acquisition parameter, its physical ``bounds`` and ``source``.

    ``log``: the parameter is multiplicative (it is a *factor* of the default and is scaled in log space).
    ``step``: the setting is chosen in steps of this size (after scaling and clamping; 0: continuous).
    """

    lo: float
    hi: float
    bounds: tuple[float, float]
    source: str
    unit: str = ""
    log: bool = False
    step: float = 0.0


#: Per-image acquisition variability of the Real surrogate (see the module docstring). The simulator's
#: fixed default is :func:`default_acquisition` (the realistic chain's :class:`~xrlib.drr.physics.RealisticParams`
#: and :func:`~xrlib.drr.physics.postprocess` defaults).
ACQUISITION_RANGES: dict[str, Range] = {
    "kvp": Range(100.0, 125.0, (60.0, 150.0), "PA chest practice: EUR 16260 (1996) quality criteria recommend "
                 "125 kVp; 100–125 kVp is the range of the high-kV chest technique in routine use; set in 1-kV steps, as "
                 "generator consoles do (each kVp's spekpy spectrum is then computed once per process)", "kVp", step=1.0),
    "dose_factor": Range(0.5, 2.0, (0.05, 20.0), "AEC-terminated exposures vary with habitus and room: ×0.5–2 of "
                         "the reference mAs (assumption, about the spread of national PA-chest dose surveys)", "×", log=True),
    "scatter_to_primary": Range(0.2, 0.5, (0.0, 2.0), "behind an anti-scatter grid, PA chest at 120 kVp: "
                                "SPR ≈ 0.2–0.5 behind the lungs (literature range quoted in xrlib.drr.physics)", ""),
    "blur_sigma_mm": Range(0.1, 0.25, (0.0, 1.0), "CsI:Tl flat panels, light spread of a 0.5–0.6 mm layer "
                           "(Gaussian σ; assumption matched to published presampled MTFs)", "mm"),
    "gain_ramp": Range(-0.15, 0.15, (-0.6, 0.6), "residual gain non-uniformity along the anode–cathode axis "
                       "(heel effect, flat-field mismatch): ±15 % over the field (assumption; the heel effect "
                       "alone can exceed this before flat-field correction)", "rel."),
    "window_lo_pct": Range(0.0, 2.0, (0.0, 10.0), "display window, lower percentile (vendor-specific; assumption)", "%"),
    "window_hi_pct": Range(98.0, 100.0, (90.0, 100.0), "display window, upper percentile (vendor-specific; assumption)", "%"),
    "unsharp_amount": Range(0.25, 1.0, (0.0, 3.0), "unsharp-mask strength (vendor-specific edge enhancement; assumption)", ""),
    "unsharp_sigma_mm": Range(2.0, 6.0, (0.5, 20.0), "unsharp-mask kernel σ (vendor-specific; assumption)", "mm"),
    "tone_contrast": Range(0.0, 6.0, (0.0, 20.0), "slope k of a logistic S-shaped tone curve, 0 = linear "
                           "(a vendor-like look-up table; assumption)", ""),
}


_DISPLAY = inspect.signature(phys.postprocess).parameters


@dataclass(frozen=True)
class Acquisition:
    """One image's acquisition and display settings (units as in :data:`ACQUISITION_RANGES`)."""

    # The defaults are the realistic chain's and the display's own (one source each, not copies).
    kvp: float = phys.RealisticParams.kvp
    dose_factor: float = 1.0
    scatter_to_primary: float = phys.RealisticParams.scatter_to_primary
    blur_sigma_mm: float = phys.RealisticParams.blur_sigma_mm
    gain_ramp: float = 0.0
    window_lo_pct: float = _DISPLAY["window"].default[0]
    window_hi_pct: float = _DISPLAY["window"].default[1]
    unsharp_amount: float = _DISPLAY["unsharp_amount"].default
    unsharp_sigma_mm: float = _DISPLAY["unsharp_sigma_mm"].default
    tone_contrast: float = 0.0

    def to_dict(self) -> dict:
        return {k: float(v) for k, v in asdict(self).items()}

    def realistic_params(self, base: phys.RealisticParams) -> phys.RealisticParams:
        """``base`` with this image's tube voltage, dose (``base.dose_mas`` × factor), SPR and detector blur."""
        return replace(base, kvp=self.kvp, dose_mas=base.dose_mas * self.dose_factor,
                       scatter_to_primary=self.scatter_to_primary, blur_sigma_mm=self.blur_sigma_mm)

    def display(self, image: np.ndarray, field: np.ndarray, pitch_mm: float) -> np.ndarray:
        """Display image in [0, 1] of a −log ``image``: gain ramp (log domain), window, unsharp masking, tone curve.

        The gain ramp multiplies the detected intensity by ``1 + gain_ramp·(2r − 1)``, ``r`` ∈ [0, 1] the
        row position (superior → inferior, the anode–cathode axis of a chest room), i.e. subtracts its log.
        """
        x = np.asarray(image, np.float64)
        if self.gain_ramp:
            r = np.linspace(-1.0, 1.0, x.shape[0])[:, None]
            x = x - np.log1p(self.gain_ramp * r)
        lo, hi = self.window_lo_pct, self.window_hi_pct
        out = phys.postprocess(x, field, window=(lo, hi), unsharp_sigma_mm=self.unsharp_sigma_mm,
                               unsharp_amount=self.unsharp_amount, pitch_mm=pitch_mm)
        return np.where(field, tone_curve(out, self.tone_contrast), 0.0).astype(np.float32)


def default_acquisition() -> Acquisition:
    """The simulator's fixed setting: the realistic chain's and :func:`~xrlib.drr.physics.postprocess`' defaults."""
    return Acquisition()


def tone_curve(x: np.ndarray, k: float) -> np.ndarray:
    """Logistic S-curve on [0, 1] with slope ``k`` at 0.5, rescaled so 0 → 0 and 1 → 1; ``k = 0`` is the identity."""
    x = np.asarray(x, np.float64)
    if k < 1e-6:
        return x
    s = lambda t: 1.0 / (1.0 + np.exp(-k * (t - 0.5)))  # noqa: E731
    return (s(x) - s(0.0)) / (s(1.0) - s(0.0))


def _scaled(default: float, u: float, scale: float, rg: Range) -> float:
    if rg.log:
        v = default * math.exp(scale * math.log(u / default))
    else:
        v = default + scale * (u - default)
    v = min(max(v, rg.bounds[0]), rg.bounds[1])
    return float(round(v / rg.step) * rg.step) if rg.step > 0 else float(v)


def sample_acquisition(rng: np.random.Generator, scale: float | tuple[float, ...] = 1.0,
                       ranges: dict[str, Range] | None = None) -> Acquisition | list[Acquisition]:
    """One :class:`Acquisition` drawn from ``rng`` at ``scale`` (see the module docstring), or one per
    scale when ``scale`` is a tuple (the same draws for all). ``ranges`` default :data:`ACQUISITION_RANGES`."""
    ranges = ACQUISITION_RANGES if ranges is None else ranges
    default = default_acquisition()
    names = [f.name for f in fields(Acquisition)]
    unknown = sorted(set(ranges) - set(names))
    if unknown:
        raise ValueError(f"unknown acquisition parameter(s) {unknown}; known: {', '.join(names)}")
    u = {n: float(rng.uniform(ranges[n].lo, ranges[n].hi)) for n in names if n in ranges}
    scales = scale if isinstance(scale, tuple) else (scale,)
    if any(not (s >= 0 and math.isfinite(s)) for s in scales):
        raise ValueError(f"acquisition scale must be a non-negative finite number, got {scale!r}")
    out = [replace(default, **{n: _scaled(getattr(default, n), u[n], float(s), ranges[n]) for n in u}) for s in scales]
    return out if isinstance(scale, tuple) else out[0]


def clamped_parameters(budgets, ranges: dict[str, Range] | None = None) -> list[dict]:
    """Which parameters clamp at their physical bounds at each budget (scale), and for what fraction of draws.

    At scale ``s`` a draw ``u ~ U(lo, hi)`` gives ``default + s·(u − default)`` (log space for a multiplicative
    parameter), clamped to :attr:`Range.bounds`; so the draws below the threshold
    ``u* = default + (bound − default)/s`` (``default·(bound/default)^(1/s)`` in log space) clamp at the lower bound,
    those above the upper threshold at the upper one. The fraction is the uniform measure of those draws
    (exact, no sampling). Returns one dict per (budget, parameter, side) that clamps with a positive fraction:
    ``budget``, ``parameter``, ``side`` (``lower``/``upper``), ``bound``, ``unit``, ``fraction`` (of images).
    """
    ranges = ACQUISITION_RANGES if ranges is None else ranges
    default = default_acquisition()
    out = []
    for b in budgets:
        s = float(b)
        if not (s >= 0 and math.isfinite(s)):
            raise ValueError(f"acquisition scale must be a non-negative finite number, got {b!r}")
        if s == 0:
            continue
        for name, rg in ranges.items():
            d = float(getattr(default, name))
            for side, bound in (("lower", rg.bounds[0]), ("upper", rg.bounds[1])):
                if rg.log:
                    if bound <= 0:
                        continue
                    thr = d * (bound / d) ** (1.0 / s)
                else:
                    thr = d + (bound - d) / s
                frac = (thr - rg.lo) / (rg.hi - rg.lo) if side == "lower" else (rg.hi - thr) / (rg.hi - rg.lo)
                frac = min(max(frac, 0.0), 1.0)
                if frac > 0:
                    out.append({"budget": s, "parameter": name, "side": side, "bound": float(bound), "unit": rg.unit,
                                "fraction": float(frac)})
    return out
