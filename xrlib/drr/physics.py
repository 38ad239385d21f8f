"""X-ray physics for turning CT into radiographs: the spectral chain of the realistic rung.

The HU → material maps (the naive and heuristic μ volumes, the realistic rung's per-material density
volumes) are in :mod:`xrlib.drr.materials`; this module takes their per-material line integrals to a
radiograph.

Units and conventions
---------------------
* Mass attenuation μ/ρ is in **cm²/g**; mass density ρ in **g/cm³**. A per-material line integral
  ``L = ∫ρ dl`` is in **g/cm³·mm**, and ``(μ/ρ)·L/10`` is dimensionless.
* Photon energies are in **keV** (xraydb takes eV; the conversion happens only here).
* Detector signals (:func:`realistic_intensity`) are **absorbed energy per pixel in keV**.

Chain
-----
Polychromatic tube spectrum (:func:`tube_spectrum`), attenuation of each material
(:func:`mass_attenuation`), energy-integrating CsI detector, scatter, blur, quantum and electronic
noise, −log (:func:`realistic_image`), then :func:`postprocess`.

Attenuation data are xraydb's Elam tables (total cross-section including coherent scattering,
which matches NIST XCOM "with coherent" to about 1 % in 20–150 keV).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
import xraydb
from scipy import ndimage

from xrlib.drr.materials import MATERIALS

#: Elemental mass fractions. Lung, soft tissue and cortical bone: ICRU Report 44 (1989) as listed
#: in NIST's X-ray mass attenuation tables (Hubbell & Seltzer, NISTIR 5632). Air: NIST "Air, dry
#: (near sea level)". Bone stands for all bone voxels, trabecular bone included (an approximation).
_COMPOSITION: dict[str, dict[str, float]] = {
    "air": {"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827},
    "lung": {"H": 0.103, "C": 0.105, "N": 0.031, "O": 0.749, "Na": 0.002, "P": 0.002, "S": 0.003,
             "Cl": 0.003, "K": 0.002},
    "soft_tissue": {"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.708, "Na": 0.002, "P": 0.003,
                    "S": 0.003, "Cl": 0.002, "K": 0.003},
    "bone": {"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002, "P": 0.103,
             "S": 0.003, "Ca": 0.225},
}

#: CsI:Tl density, g/cm³ (CRC Handbook of Chemistry and Physics).
_CSI_DENSITY = 4.51


def _check_material(material: str) -> None:
    if material not in MATERIALS:
        raise ValueError(f"unknown material {material!r}; expected one of {', '.join(MATERIALS)}")


@lru_cache(maxsize=64)
def _mass_attenuation(material: str, energies_kev: tuple[float, ...]) -> np.ndarray:
    e_ev = np.asarray(energies_kev, float) * 1e3
    out = sum(w * np.asarray(xraydb.mu_elam(el, e_ev), float) for el, w in _COMPOSITION[material].items())
    out = out / sum(_COMPOSITION[material].values())  # renormalise rounding in the tables
    out.setflags(write=False)
    return out


def mass_attenuation(material: str, energies_kev: np.ndarray) -> np.ndarray:
    """Total mass attenuation μ/ρ (cm²/g) of ``material`` at ``energies_kev`` (keV).

    Mass-fraction-weighted sum of elemental values from xraydb (Elam tables, total incl. coherent).
    """
    _check_material(material)
    e = np.atleast_1d(np.asarray(energies_kev, float))
    return _mass_attenuation(material, tuple(e.tolist())).reshape(np.shape(energies_kev)).copy()


@dataclass(frozen=True)
class Spectrum:
    """X-ray tube output: ``fluence[i]`` photons/cm² per mAs at 1 m in the bin centred at ``energies_kev[i]``."""

    energies_kev: np.ndarray
    fluence: np.ndarray

    @property
    def mean_energy(self) -> float:
        """Fluence-weighted mean photon energy (keV)."""
        return float(np.sum(self.energies_kev * self.fluence) / np.sum(self.fluence))


@lru_cache(maxsize=256)  # a few kB each; the acquisition draws set kVp in 1-kV steps (60–150 kVp: 91 values)
def _spectrum(kvp: float, al: float, cu: float, angle: float, dk: float) -> Spectrum:
    import spekpy

    s = spekpy.Spek(kvp=kvp, th=angle, dk=dk)  # tungsten anode; defaults z=100 cm, 1 mAs
    if al > 0:
        s.filter("Al", al)
    if cu > 0:
        s.filter("Cu", cu)
    k, f = s.get_spectrum(diff=False)  # bin mid-energies (keV), photons/cm² per bin
    keep = f > 1e-6 * f.max()  # drop bins the filtration has emptied (< 1 ppm of the peak)
    k, f = np.asarray(k[keep], float), np.asarray(f[keep], float)
    k.setflags(write=False)
    f.setflags(write=False)
    return Spectrum(k, f)


def tube_spectrum(kvp: float = 120.0, filtration_mm_al: float = 3.0, anode_angle_deg: float = 12.0,
                  bin_kev: float = 1.0, filtration_mm_cu: float = 0.0) -> Spectrum:
    """Tungsten-anode tube spectrum from spekpy (photons/cm²/mAs at 1 m per ``bin_kev`` bin).

    Default filtration 3.0 mm Al total: IEC 60601-1-3 requires at least 2.5 mm Al total
    filtration for general radiography and chest units typically have about 3 mm; spekpy models
    the anode's self-filtration itself. Optional added copper (``filtration_mm_cu``, often
    0.1–0.2 mm on chest units) hardens the beam further. Results are cached (spekpy takes ~1 s).
    """
    if not (kvp > 0 and bin_kev > 0 and filtration_mm_al >= 0 and filtration_mm_cu >= 0):
        raise ValueError(f"kvp and bin_kev must be positive and filtration non-negative, got "
                         f"kvp={kvp}, bin_kev={bin_kev}, Al={filtration_mm_al} mm, Cu={filtration_mm_cu} mm")
    return _spectrum(float(kvp), float(filtration_mm_al), float(filtration_mm_cu), float(anode_angle_deg), float(bin_kev))


@dataclass(frozen=True)
class DetectorModel:
    """Indirect flat-panel detector: a scintillator layer read out energy-integrating.

    Default: 0.6 mm CsI:Tl, a typical thickness of chest flat panels (0.5–0.6 mm). A photon of
    energy E interacts with probability η(E) = 1 − exp(−μ(E)·t) (total μ) and is assumed to
    deposit all of E (K-fluorescence escape ignored), so its signal weight is E·η(E).
    """

    scintillator: str = "CsI"
    thickness_mm: float = 0.6
    density_g_cm3: float = _CSI_DENSITY

    def efficiency(self, energies_kev: np.ndarray) -> np.ndarray:
        """Absorbed (interacting) fraction η(E) in [0, 1] at ``energies_kev`` (keV)."""
        mu_cm = xraydb.material_mu(self.scintillator, np.asarray(energies_kev, float) * 1e3, density=self.density_g_cm3)
        return 1.0 - np.exp(-np.asarray(mu_cm) * self.thickness_mm / 10.0)


@dataclass(frozen=True)
class RealisticParams:
    """Acquisition and detector parameters of the *realistic* rung.

    Attributes:
        kvp, filtration_mm_al, filtration_mm_cu, anode_angle_deg: tube (see :func:`tube_spectrum`).
        dose_mas: tube current-time product (mAs); 2 mAs is typical of a PA chest at 120 kVp.
        quantum_noise: draw compound-Poisson quantum noise.
        electronic_noise: std of additive Gaussian read noise of one native detector element
            (:data:`NATIVE_ELEMENT_MM`) in *equivalent quanta*, i.e. in units of the mean signal of
            one detected photon of the unattenuated beam. A coarser pixel sums (pitch/element)²
            elements, whose read noise is independent, so its std is this times pitch/element
            (:func:`electronic_quanta_at`). The value 3 is an assumption (the order of the additive
            noise of indirect CsI/a-Si flat panels in equivalent quanta), not a measured panel.
        blur_sigma_mm: Gaussian detector PSF sigma at the detector (mm); ≈ light spread in CsI.
        scatter_to_primary: scatter-to-primary ratio (SPR). 0.3 is a typical value behind an
            anti-scatter grid for a PA chest at 120 kVp (literature range ≈ 0.2–0.5 behind the
            lungs, more behind the mediastinum); a typical value, not fitted.
        scatter_sigma_mm: sigma of the broad Gaussian scatter kernel at the detector (mm).
        detector: the scintillator model.
    """

    kvp: float = 120.0
    filtration_mm_al: float = 3.0
    dose_mas: float = 2.0
    quantum_noise: bool = True
    electronic_noise: float = 3.0
    blur_sigma_mm: float = 0.15
    scatter_to_primary: float = 0.3
    scatter_sigma_mm: float = 40.0
    filtration_mm_cu: float = 0.0
    anode_angle_deg: float = 12.0
    detector: DetectorModel = field(default_factory=DetectorModel)

    def __post_init__(self) -> None:
        if not self.dose_mas > 0:
            raise ValueError(f"dose_mas must be positive, got {self.dose_mas} mAs")
        for name in ("electronic_noise", "blur_sigma_mm", "scatter_to_primary", "scatter_sigma_mm"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


#: Side of one native detector element (mm): the 0.24 mm pitch of the paper's 1800-pixel detector.
#: Electronic noise is specified per element and scaled to the binned pixel (:func:`electronic_quanta_at`).
NATIVE_ELEMENT_MM = 0.24


def electronic_quanta_at(electronic_noise: float, pitch_mm: float) -> float:
    """Electronic read-noise std of a ``pitch_mm`` pixel (equivalent quanta) from its std per native element.

    A pixel of side ``pitch_mm`` bins (pitch/:data:`NATIVE_ELEMENT_MM`)² native elements whose read
    noise is independent, so the variances add: std = ``electronic_noise``·pitch/element.
    """
    return float(electronic_noise) * float(pitch_mm) / NATIVE_ELEMENT_MM


def _broad_blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Sum-preserving Gaussian blur (reflecting borders); very wide kernels run on a coarser grid."""
    f = max(1, int(sigma_px // 4))
    if f == 1:
        return ndimage.gaussian_filter(img, sigma_px, mode="reflect")
    h, w = img.shape
    padded = np.pad(img, ((0, -h % f), (0, -w % f)), mode="reflect")
    coarse = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).mean(axis=(1, 3))
    coarse = ndimage.gaussian_filter(coarse, sigma_px / f, mode="reflect")
    fine = ndimage.zoom(coarse, f, order=1, mode="nearest", grid_mode=True)
    return fine[:h, :w]


def expected_detector_signal(line_integrals: dict[str, np.ndarray], pixel_area_mm2: float, sdd_mm: float,
                             params: RealisticParams, pitch_mm: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Noise-free detector signal *before* the detector blur, and what its noise needs.

    Steps 1–3 of :func:`realistic_intensity` (primary, compound-Poisson moments, scatter) at
    ``params.dose_mas``. Returns ``(signal, q, m0, q0)``: ``signal`` (float64 (H, W), keV per pixel,
    primary + scatter), ``q`` = v/m of the primary (keV per equivalent quantum; the flat field's
    v0/m0 where the primary is 0), ``m0`` the flat-field signal (keV per pixel) and ``q0`` the mean
    detected photon energy of the flat field (keV). ``signal`` and ``m0`` are proportional to the
    dose; ``q`` and ``q0`` do not depend on it.
    """
    if not line_integrals:
        raise ValueError("line_integrals is empty; need at least one material")
    for mat in line_integrals:
        _check_material(mat)
    shapes = {np.shape(a) for a in line_integrals.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"line integrals must be 2-D maps of one shape, got shapes {sorted(shapes)}")
    if not (pixel_area_mm2 > 0 and sdd_mm > 0 and pitch_mm > 0):
        raise ValueError(f"pixel area, SDD and pitch must be positive, got {pixel_area_mm2}, {sdd_mm}, {pitch_mm}")
    p = params
    spec = tube_spectrum(p.kvp, p.filtration_mm_al, p.anode_angle_deg, 1.0, p.filtration_mm_cu)
    e = spec.energies_kev
    n0 = spec.fluence * p.dose_mas * (1000.0 / sdd_mm) ** 2 * (pixel_area_mm2 / 100.0)
    eta = p.detector.efficiency(e)
    mats = list(line_integrals)
    mus = np.stack([mass_attenuation(m, e) / 10.0 for m in mats]).astype(np.float32)  # per g/cm³·mm
    lis = [np.asarray(line_integrals[m], np.float32) for m in mats]
    shape = next(iter(shapes))
    mean, var = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    path, tmp = np.empty(shape, np.float32), np.empty(shape, np.float32)
    for i, energy in enumerate(e):  # in-place float32 work: one H×W buffer pair, whatever the bin count
        np.multiply(lis[0], -mus[0, i], out=path)
        for k in range(1, len(mats)):
            path -= np.multiply(lis[k], mus[k, i], out=tmp)
        np.exp(path, out=path)  # primary transmission
        w = n0[i] * eta[i] * energy
        mean += np.multiply(path, np.float32(w), out=tmp)
        var += np.multiply(path, np.float32(w * energy), out=tmp)
    mean, var = mean.astype(np.float64), var.astype(np.float64)
    m0, v0 = float(np.sum(e * eta * n0)), float(np.sum(e * e * eta * n0))
    q = np.where(mean > 0, var / np.maximum(mean, 1e-300), v0 / m0)
    img = mean
    if p.scatter_to_primary > 0:
        potential = mean * np.log(np.maximum(m0 / np.maximum(mean, 1e-300), 1.0))
        attenuating = mean < 0.99 * m0
        if attenuating.any():
            spread = _broad_blur(potential, p.scatter_sigma_mm / pitch_mm)
            k = p.scatter_to_primary * mean[attenuating].sum() / max(spread[attenuating].sum(), 1e-300)
            img = img + k * spread
    q0 = m0 / float(np.sum(eta * n0))
    return img, q, m0, q0


def detector_readout(mean_kev: np.ndarray, quantum_kev: np.ndarray | float, quantum0_kev: float, blur_sigma_px: float,
                     electronic_quanta: float, rng: np.random.Generator | None, quantum: bool = True,
                     shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The detector's read-out of an expected signal, in the physics order (keV per pixel, float64).

    1. quantum noise where the X-rays are absorbed: ``q·Poisson(mean/q)`` (compound Poisson matched
       in mean and variance, ``q`` = keV per equivalent quantum), when ``quantum``;
    2. the scintillator's light spread: Gaussian blur of σ = ``blur_sigma_px`` on the last two axes
       (reflecting borders), so quantum noise comes out *correlated*;
    3. electronic read-out noise after the light spread (white): Gaussian, std ``electronic_quanta``·q0;
    4. clipping below at 0.5·q0 (half the signal of one detected flat-field photon): with noise the
       signal can be 0 or negative, and below one quantum the log carries no information.

    ``shape`` (default ``mean_kev.shape``) draws several realisations at once, e.g. ``(n, H, W)``.
    The one implementation behind :func:`realistic_image` (the datasets) and
    :func:`xrlib.drr.noise.noisy_log` (chapter 10's re-rendered noise).
    """
    shape = np.shape(mean_kev) if shape is None else tuple(shape)
    if quantum or electronic_quanta > 0:
        rng = np.random.default_rng() if rng is None else rng
    if quantum:
        sig = rng.poisson(np.broadcast_to(mean_kev / quantum_kev, shape)) * quantum_kev
    else:
        sig = np.broadcast_to(np.asarray(mean_kev, float), shape).astype(float)
    if blur_sigma_px > 0:
        sig = ndimage.gaussian_filter(sig, (0,) * (len(shape) - 2) + (blur_sigma_px, blur_sigma_px), mode="reflect")
    if electronic_quanta > 0:
        sig = sig + rng.normal(0.0, electronic_quanta * quantum0_kev, shape)
    return np.maximum(sig, 0.5 * quantum0_kev)


def realistic_intensity(line_integrals: dict[str, np.ndarray], pixel_area_mm2: float, sdd_mm: float,
                        params: RealisticParams, rng: np.random.Generator | None, pitch_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Detector signal (keV absorbed per pixel) for per-material density line integrals.

    ``line_integrals`` maps material names (a subset of :data:`MATERIALS`) to ∫ρ dl maps
    (g/cm³·mm, shape (H, W)). Steps:

    1. Photons per pixel and bin: N0(E) = fluence(E)·mAs·(1000 mm/SDD)²·area(cm²) (inverse-square
       from spekpy's 1 m reference; the cos³ fall-off off-axis is ignored, it cancels in I/I0).
    2. Primary: N(E) = N0(E)·exp(−Σ_m (μ/ρ)_m(E)·L_m/10); mean signal m = Σ E·η(E)·N(E) and the
       compound-Poisson variance v = Σ E²·η(E)·N(E), accumulated bin by bin.
    3. Scatter (a convolution approximation): scatter is emitted where the beam is attenuated,
       in proportion to the *scatter potential* P·ln(P0/P) (zero in open field, largest at
       moderate thickness), spread by a broad sum-preserving Gaussian G_σs, and scaled so that the
       scatter-to-primary ratio summed over the attenuating pixels (P < 0.99·P0) equals
       ``scatter_to_primary``: S = k·G_σs ∗ (P·ln(P0/P)), I = P + S. Scatter photons are given
       the local primary's energy mix. The flat field has no patient and hence no scatter.
       (Steps 1–3: :func:`expected_detector_signal`.)
    4. Quantum noise where the X-rays are absorbed: with q = v/m (keV per "equivalent quantum"),
       I ← q·Poisson(I/q), which matches mean and variance of the energy-integrated signal.
    5. Detector blur: Gaussian with sigma blur_sigma_mm/pitch_mm pixels (the scintillator's light
       spread), which correlates the quantum noise, as in a real indirect detector.
    6. Electronic noise: Gaussian, std = e·q0, q0 the mean detected photon energy of the flat
       field (after the light spread: white), e = :func:`electronic_quanta_at` (``electronic_noise``
       per native element scaled to the pixel).
    7. Clipping below at 0.5·q0 (see :func:`detector_readout`, which does steps 4–7).

    Returns ``(intensity, flat_field)``: float64 (H, W) arrays in keV; the flat field is the
    noise-free unattenuated signal (as from averaging many flat exposures).
    """
    p = params
    img, q, m0, q0 = expected_detector_signal(line_integrals, pixel_area_mm2, sdd_mm, params, pitch_mm)
    out = detector_readout(img, q, q0, p.blur_sigma_mm / pitch_mm, electronic_quanta_at(p.electronic_noise, pitch_mm), rng,
                           quantum=p.quantum_noise)
    return out, np.full(img.shape, m0)


def realistic_image(line_integrals: dict[str, np.ndarray], geometry_pitch_mm: float, sdd_mm: float,
                    params: RealisticParams, rng: np.random.Generator | None = None) -> np.ndarray:
    """Flat-field-corrected log image −log(I/I0) (float32, dimensionless; higher = more attenuation).

    I is :func:`realistic_intensity`'s signal, clipped below at half the signal of one detected
    flat-field photon (0.5·q0, :func:`detector_readout`), so the image saturates at
    log(2·N_detected,flat). Noise-free (up to that clipping) when ``quantum_noise`` is False and
    ``electronic_noise`` is 0.
    """
    pitch = float(geometry_pitch_mm)
    intensity, flat = realistic_intensity(line_integrals, pitch * pitch, sdd_mm, params, rng, pitch)
    return (-np.log(intensity / flat)).astype(np.float32)


def postprocess(image: np.ndarray, field: np.ndarray | None = None, window: tuple[float, float] = (0.5, 99.5),
                unsharp_sigma_mm: float = 3.0, unsharp_amount: float = 0.5, pitch_mm: float = 0.24) -> np.ndarray:
    """Standard radiographic display processing; float32 in [0, 1], bone bright.

    1. Window: map the ``window`` percentiles (computed over ``field`` pixels only) to 0 and 1.
    2. Unsharp masking: x + amount·(x − G_σ ∗ x), σ = unsharp_sigma_mm/pitch_mm pixels; the blur
       is normalised over the field so out-of-field values do not leak in. Defaults (3 mm, 0.5)
       are a moderate edge enhancement in the range used by chest-imaging software.
    3. Clip to [0, 1]; pixels outside ``field`` are set to 0.

    ``image`` is −log I or a line integral (higher = more attenuation); ``field`` a bool mask of
    valid pixels (default: all).
    """
    x = np.asarray(image, np.float64)
    mask = np.ones(x.shape, bool) if field is None else np.asarray(field, bool)
    if mask.shape != x.shape:
        raise ValueError(f"field shape {mask.shape} differs from image shape {x.shape}")
    if not mask.any():
        raise ValueError("field contains no valid pixels")
    lo, hi = np.percentile(x[mask], window)
    x = np.where(mask, (x - lo) / (hi - lo if hi > lo else 1.0), 0.0)
    if unsharp_amount != 0 and unsharp_sigma_mm > 0:
        s = unsharp_sigma_mm / pitch_mm
        smooth = ndimage.gaussian_filter(x, s) / np.maximum(ndimage.gaussian_filter(mask.astype(float), s), 1e-12)
        x = x + unsharp_amount * (x - smooth)
    return np.where(mask, np.clip(x, 0.0, 1.0), 0.0).astype(np.float32)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised 1-D Gaussian of :func:`scipy.ndimage.gaussian_filter` (radius ``int(truncate·σ + 0.5)``)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=float)
    phi = np.exp(-0.5 / float(sigma) ** 2 * x * x)
    return phi / phi.sum()


def gaussian_filter_torch(x, sigma: float):
    """:func:`scipy.ndimage.gaussian_filter` of the last two axes of a torch tensor ``(..., H, W)``.

    Same kernel and the same ``reflect`` border (edge sample repeated: ``d c b a | a b c d``), so
    it agrees with scipy to rounding; differentiable.
    """
    import torch
    import torch.nn.functional as F

    k = torch.as_tensor(gaussian_kernel(sigma), dtype=x.dtype, device=x.device)
    r = (len(k) - 1) // 2
    for dim in (-2, -1):
        n = x.shape[dim]
        idx = torch.arange(-r, n + r, device=x.device) % (2 * n)
        idx = torch.where(idx >= n, 2 * n - 1 - idx, idx)  # symmetric reflection, any radius
        padded = x.index_select(dim, idx).movedim(dim, -1)
        lead = padded.shape[:-1]
        out = F.conv1d(padded.reshape(-1, 1, padded.shape[-1]), k.view(1, 1, -1)).reshape(*lead, n)
        x = out.movedim(-1, dim)
    return x


def postprocess_torch(image, field=None, window: tuple[float, float] = (0.5, 99.5), unsharp_sigma_mm: float = 3.0,
                      unsharp_amount: float = 0.5, pitch_mm: float = 0.24):
    """:func:`postprocess` in torch for a batch ``(B, H, W)`` (or one ``(H, W)`` image); differentiable.

    The same three steps with the same parameters. The window's percentiles are
    :func:`torch.nanquantile` over each image's ``field`` pixels (linear interpolation, as
    :func:`numpy.percentile`); the blur is :func:`gaussian_filter_torch`. Computed in the dtype of
    ``image`` (numpy works in float64), so float32 agrees with :func:`postprocess` to about 1e-5.
    """
    import torch

    x = image
    single = x.dim() == 2
    if single:
        x = x[None]
    mask = torch.ones_like(x, dtype=torch.bool) if field is None else torch.as_tensor(field, device=x.device)
    mask = mask.reshape(x.shape).bool()
    if not bool(mask.flatten(1).any(1).all()):
        raise ValueError("field contains no valid pixels")
    q = torch.tensor([window[0] / 100.0, window[1] / 100.0], dtype=x.dtype, device=x.device)
    lo, hi = torch.nanquantile(torch.where(mask, x, torch.nan).flatten(1), q, dim=1)[..., None, None]
    x = torch.where(mask, (x - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi)), 0.0)
    if unsharp_amount != 0 and unsharp_sigma_mm > 0:
        s = unsharp_sigma_mm / pitch_mm
        smooth = gaussian_filter_torch(x, s) / gaussian_filter_torch(mask.to(x.dtype), s).clamp_min(1e-12)
        x = x + unsharp_amount * (x - smooth)
    out = torch.where(mask, x.clamp(0.0, 1.0), 0.0)
    return out[0] if single else out
