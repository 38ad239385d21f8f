"""Tests of xrlib.drr.physics against analytic answers and independent calculations."""

from __future__ import annotations

import numpy as np
import pytest
import spekpy
import xraydb

from xrlib.drr import materials as Mt
from xrlib.drr import physics as P

PITCH, SDD = 0.24, 1800.0
NOISELESS = P.RealisticParams(quantum_noise=False, electronic_noise=0.0, blur_sigma_mm=0.0, scatter_to_primary=0.0)
ICRU44_SOFT = {"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.708, "Na": 0.002, "P": 0.003, "S": 0.003, "Cl": 0.002, "K": 0.003}


def slab(material: str, density: float, thickness_mm: float, n: int = 16) -> dict[str, np.ndarray]:
    return {material: np.full((n, n), density * thickness_mm, np.float32)}


def image(li, params=NOISELESS, seed=None, pitch=PITCH):
    rng = None if seed is None else np.random.default_rng(seed)
    return P.realistic_image(li, pitch, SDD, params, rng)


# --- naive / heuristic -----------------------------------------------------------------------

def test_mu_water_matches_nist_xcom():
    # NIST XCOM: water at 60 keV, μ/ρ = 0.2059 cm²/g (with coherent) -> 0.02059 /mm at 1 g/cm³
    assert Mt.mu_water_per_mm(60.0) == pytest.approx(0.02059, rel=0.02)


def test_naive_mu_water_air_bone():
    mu = Mt.naive_mu(np.array([-1000.0, 0.0, 1000.0, -3024.0]))
    w = Mt.mu_water_per_mm(60.0)
    assert mu.dtype == np.float32
    np.testing.assert_allclose(mu, [0.0, w, 2 * w, 0.0], rtol=1e-6)


def test_heuristic_zeroes_below_threshold():
    hu = np.array([-1000.0, -850.0, -800.0, -500.0, 40.0])
    mu = Mt.heuristic_mu(hu, air_threshold_hu=-800.0)
    np.testing.assert_array_equal(mu[:2], 0.0)
    np.testing.assert_allclose(mu[2:], Mt.naive_mu(hu)[2:])
    assert (mu[2:] > 0).all()


# --- materials ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "material, nist",  # NIST X-ray mass attenuation tables (ICRU-44 tissues), 60 keV, cm²/g
    [("soft_tissue", 0.2048), ("bone", 0.3148), ("air", 0.1875)],
)
def test_mass_attenuation_matches_nist(material, nist):
    assert P.mass_attenuation(material, np.array([60.0]))[0] == pytest.approx(nist, rel=0.02)


def test_bone_attenuates_more_per_gram_at_low_energy():
    e = np.array([30.0, 60.0, 100.0])
    bone, soft = P.mass_attenuation("bone", e), P.mass_attenuation("soft_tissue", e)
    assert (bone > soft).all() and bone[0] / soft[0] > bone[2] / soft[2]  # photoelectric effect


def test_material_densities_partition_and_values():
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1100, 2500, size=(7, 9, 11)).astype(np.float32)
    d = Mt.material_densities(hu)
    assert set(d) == set(Mt.MATERIALS)
    assert all(v.dtype == np.float32 and v.shape == hu.shape for v in d.values())
    present = np.stack([d[m] > 0 for m in Mt.MATERIALS])
    np.testing.assert_array_equal(present.sum(axis=0), 1)  # exactly one material per voxel

    known = np.array([-1000.0, -951.0, -950.0, -500.0, -121.0, -120.0, -98.0, 14.0, 299.0, 300.0, 1600.0])
    d = Mt.material_densities(known)
    expected = {  # Schneider 2000 table; -500 HU interpolated between (-1000, 0.00121) and (-98, 0.93)
        0: ("air", 0.00121), 2: ("lung", 0.00121 + (0.93 - 0.00121) * 50 / 902),
        3: ("lung", 0.00121 + (0.93 - 0.00121) * 500 / 902), 5: ("soft_tissue", None),
        6: ("soft_tissue", 0.93), 7: ("soft_tissue", 1.03), 9: ("bone", None), 10: ("bone", 1.9642),
    }
    labels = [Mt.MATERIALS[int(np.argmax([d[m][i] for m in Mt.MATERIALS]))] for i in range(len(known))]
    assert labels == ["air", "air", "lung", "lung", "lung", "soft_tissue", "soft_tissue", "soft_tissue",
                      "soft_tissue", "bone", "bone"]
    for i, (mat, rho) in expected.items():
        if rho is not None:
            assert d[mat][i] == pytest.approx(rho, rel=1e-4)

    bone_hu = np.linspace(300, 3000, 50)
    assert (np.diff(Mt.material_densities(bone_hu)["bone"]) > 0).all()


# --- spectrum and detector --------------------------------------------------------------------

def test_spectrum_120kvp():
    s = P.tube_spectrum(120.0)
    assert 50.0 < s.mean_energy < 70.0
    assert (s.fluence > 0).all() and (s.energies_kev + 0.5 <= 120.0).all()
    assert P.tube_spectrum(80.0).mean_energy < s.mean_energy
    assert P.tube_spectrum(120.0, filtration_mm_cu=0.2).mean_energy > s.mean_energy  # hardening


def test_detector_efficiency_bounds():
    eta = P.DetectorModel().efficiency(np.array([20.0, 60.0, 120.0]))
    assert ((eta > 0) & (eta <= 1)).all() and eta[0] > eta[2]
    assert (P.DetectorModel(thickness_mm=1.0).efficiency(np.array([60.0])) > eta[1]).all()


# --- realistic image: noiseless physics -------------------------------------------------------

def test_noiseless_slab_equals_independent_beer_lambert():
    t, rho = 200.0, 1.0
    out = image(slab("soft_tissue", rho, t))
    # independent: spekpy spectrum, xraydb material_mu of the ICRU-44 composition, CsI efficiency
    s = spekpy.Spek(kvp=120.0, th=12.0, dk=1.0)
    s.filter("Al", 3.0)
    e, f = s.get_spectrum(diff=False)
    formula = "".join(f"{el}{1000 * w / xraydb.atomic_mass(el):.6f}" for el, w in ICRU44_SOFT.items())
    mu_cm = xraydb.material_mu(formula, e * 1e3, density=rho)
    eta = 1 - np.exp(-xraydb.material_mu("CsI", e * 1e3, density=4.51) * 0.06)
    expected = -np.log(np.sum(e * eta * f * np.exp(-mu_cm * t / 10)) / np.sum(e * eta * f))
    np.testing.assert_allclose(out, expected, rtol=0.01)
    assert np.ptp(out) == 0.0


def test_material_densities_table_lookup_of_integer_hu_equals_the_interpolation():
    rng = np.random.default_rng(3)
    hu = rng.integers(-3500, 6000, size=(20, 64, 64)).astype(np.float32)  # beyond the table on both sides
    hu[0, 0, :8] = [-2024, -2025, 4096, 4097, -1000, -950, -120, 300]
    d = Mt.material_densities(hu)  # > 65536 integral voxels: the table path
    rho = np.interp(hu, Mt._SCHNEIDER_HU, Mt._SCHNEIDER_RHO).astype(np.float32)
    label = np.searchsorted(np.asarray(Mt.DEFAULT_THRESHOLDS, np.float32), hu, side="right")
    for i, m in enumerate(Mt.MATERIALS):
        np.testing.assert_array_equal(d[m], np.where(label == i, rho, np.float32(0.0)))
    frac = Mt.material_densities(hu + np.float32(0.25))  # not integral: the interpolation path
    assert frac["bone"][0, 0, 2] == pytest.approx(2.8) and frac["air"][0, 0, 0] == pytest.approx(1.21e-3)


def test_noiseless_two_material_pixel_sums_attenuation():
    li = {"soft_tissue": np.full((4, 4), 150.0, np.float32), "bone": np.full((4, 4), 1.9 * 15.0, np.float32),
          "lung": np.full((4, 4), 0.25 * 100.0, np.float32)}
    s = P.tube_spectrum()
    e, f = s.energies_kev, s.fluence
    eta = P.DetectorModel().efficiency(e)
    path = sum(P.mass_attenuation(m, e) * li[m][0, 0] / 10 for m in li)
    expected = -np.log(np.sum(e * eta * f * np.exp(-path)) / np.sum(e * eta * f))
    np.testing.assert_allclose(image(li), expected, rtol=1e-4)


def test_attenuation_monotone_in_thickness_and_bone_beats_soft_tissue():
    ts = [0.0, 20.0, 50.0, 100.0, 200.0, 300.0]
    vals = [float(image(slab("soft_tissue", 1.0, t))[0, 0]) for t in ts]
    assert vals[0] == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.diff(vals) > 0)
    for t in (5.0, 20.0):
        assert image(slab("bone", 1.0, t))[0, 0] > image(slab("soft_tissue", 1.0, t))[0, 0]


def test_beam_hardening_effective_mu_decreases():
    ts = np.array([10.0, 50.0, 100.0, 200.0, 300.0])
    mu_eff = np.array([image(slab("soft_tissue", 1.0, t))[0, 0] / t for t in ts])
    assert np.all(np.diff(mu_eff) < 0)
    # and effective μ lies between μ at the kVp and μ at a low energy
    mu = P.mass_attenuation("soft_tissue", np.array([30.0, 120.0])) / 10
    assert mu[1] < mu_eff.min() and mu_eff.max() < mu[0]


def test_scatter_lowers_contrast_by_log_spr_on_uniform_slab():
    li = slab("soft_tissue", 1.0, 200.0, n=64)
    base = image(li)
    params = P.RealisticParams(quantum_noise=False, electronic_noise=0.0, blur_sigma_mm=0.0,
                               scatter_to_primary=0.3, scatter_sigma_mm=40.0)
    with_scatter = image(li, params, pitch=1.0)  # 40 px sigma: exercises the coarse-grid blur
    np.testing.assert_allclose(with_scatter, base - np.log(1.3), atol=1e-5)


def test_scatter_comes_from_the_patient_at_the_stated_ratio():
    li = {"soft_tissue": np.zeros((96, 96), np.float32)}
    li["soft_tissue"][:, 48:] = 200.0  # half the field behind 20 cm of tissue, half open
    params = P.RealisticParams(quantum_noise=False, electronic_noise=0.0, blur_sigma_mm=0.0,
                               scatter_to_primary=0.3, scatter_sigma_mm=20.0)
    prim, flat = P.realistic_intensity(li, 1.0, SDD, NOISELESS, None, 1.0)
    tot, _ = P.realistic_intensity(li, 1.0, SDD, params, None, 1.0)
    body = li["soft_tissue"] > 0
    assert (tot - prim)[body].sum() / prim[body].sum() == pytest.approx(0.3, rel=1e-6)
    # Scatter spills into the open field near the body, but far from it the open field stays clean
    # relative to its large primary, and an empty field (no patient) gets none at all.
    assert (tot - prim)[:, 0].mean() < 0.01 * prim[:, 0].mean()
    air = {"soft_tissue": np.zeros((32, 32), np.float32)}
    np.testing.assert_allclose(P.realistic_intensity(air, 1.0, SDD, params, None, 1.0)[0], flat[:32, :32], rtol=1e-6)


def test_detector_blur_preserves_the_mean_signal():
    li = {"soft_tissue": np.zeros((96, 96), np.float32)}
    li["soft_tissue"][:, 48:] = 200.0
    params = P.RealisticParams(quantum_noise=False, electronic_noise=0.0, blur_sigma_mm=0.5, scatter_to_primary=0.0)
    prim, _ = P.realistic_intensity(li, 1.0, SDD, NOISELESS, None, 1.0)
    tot, _ = P.realistic_intensity(li, 1.0, SDD, params, None, 1.0)
    assert tot.mean() == pytest.approx(prim.mean(), rel=1e-6)


# --- realistic image: noise -------------------------------------------------------------------

def _noise_params(dose, electronic=0.0):
    return P.RealisticParams(dose_mas=dose, electronic_noise=electronic, blur_sigma_mm=0.0, scatter_to_primary=0.0)


def test_quantum_noise_variance_inverse_in_dose_and_matches_compound_poisson():
    li = slab("soft_tissue", 1.0, 200.0, n=64)
    var_dose = []
    for k, dose in enumerate([0.5, 1.0, 2.0, 4.0]):
        img = image(li, _noise_params(dose), seed=k)
        var_dose.append(img.var() * dose)
    var_dose = np.array(var_dose)
    assert var_dose.max() / var_dose.min() < 1.10

    # delta method: var(−log I) ≈ v/m² with m = Σ E η N and v = Σ E² η N (independent recomputation)
    s = P.tube_spectrum()
    e, n0 = s.energies_kev, s.fluence * 1.0 * (1000 / SDD) ** 2 * PITCH**2 / 100
    eta = P.DetectorModel().efficiency(e)
    n = n0 * eta * np.exp(-P.mass_attenuation("soft_tissue", e) * 20.0)
    predicted = np.sum(e * e * n) / np.sum(e * n) ** 2  # at 1 mAs
    assert var_dose.mean() == pytest.approx(predicted, rel=0.10)


def test_electronic_noise_adds_variance():
    li = slab("soft_tissue", 1.0, 300.0, n=64)
    quiet = image(li, _noise_params(0.5, 0.0), seed=1).var()
    noisy = image(li, _noise_params(0.5, 20.0), seed=1).var()
    assert noisy > 1.2 * quiet


def test_noise_is_reproducible_with_seed():
    li = slab("soft_tissue", 1.0, 200.0, n=32)
    a, b = image(li, P.RealisticParams(), seed=7), image(li, P.RealisticParams(), seed=7)
    c = image(li, P.RealisticParams(), seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_log_is_finite_when_nothing_gets_through():
    li = slab("bone", 2.0, 2000.0, n=8)
    out = image(li, P.RealisticParams(), seed=0)
    assert np.isfinite(out).all() and out.max() > 5


# --- post-processing ---------------------------------------------------------------------------

def test_postprocess_range_field_and_window():
    rng = np.random.default_rng(3)
    img = rng.normal(2.0, 0.5, (64, 64))
    field = np.zeros(img.shape, bool)
    field[8:56, 8:56] = True
    spoiled = img.copy()
    spoiled[~field] = 1e6  # out-of-field garbage must not affect the window
    out = P.postprocess(spoiled, field, pitch_mm=1.0)
    ref = P.postprocess(np.where(field, img, -1e6), field, pitch_mm=1.0)
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out[~field], 0.0)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    inside = out[field]
    assert 0.2 < np.median(inside) < 0.8 and inside.max() == 1.0


def test_postprocess_keeps_bright_bone():
    img = np.zeros((32, 32))
    img[:, 16:] = 3.0  # more attenuation on the right
    out = P.postprocess(img, unsharp_amount=0.0)
    assert out[:, 20:].mean() > out[:, :12].mean()


# --- bad inputs --------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"dose_mas must be positive, got -1\.0 mAs"):
        P.RealisticParams(dose_mas=-1.0)
    with pytest.raises(ValueError, match=r"unknown material 'plastic'; expected one of air, lung, soft_tissue, bone"):
        P.mass_attenuation("plastic", np.array([60.0]))
    with pytest.raises(ValueError, match=r"unknown material 'metal'"):
        P.realistic_image({"metal": np.zeros((4, 4))}, PITCH, SDD, NOISELESS)
    with pytest.raises(ValueError, match="field contains no valid pixels"):
        P.postprocess(np.zeros((4, 4)), np.zeros((4, 4), bool))


def test_blockwise_volume_maps_equal_the_whole_array_formulas():
    """naive_mu, heuristic_mu and material_densities run block by block; every voxel gets the
    whole-array formula's float32 value (NaN included), across block edges and for both paths of
    material_densities."""
    rng = np.random.default_rng(7)
    hu = rng.integers(-1100, 2500, size=(9, 170, 190)).astype(np.float32)  # > one block (2**18 voxels)
    hu[0, 0, :3] = [-1000.0, -800.0, 300.0]
    frac = hu + np.float32(0.5)
    frac[0, 0, 3] = np.nan
    for vol in (hu, frac):  # integral HU: the table path; fractional (and NaN): the interpolation
        rel = np.maximum(np.float32(0.0), np.float32(1.0) + vol / np.float32(1000.0))
        naive = rel * np.float32(Mt.mu_water_per_mm(60.0))
        np.testing.assert_array_equal(Mt.naive_mu(vol), naive)
        np.testing.assert_array_equal(Mt.naive_mu(vol.astype(np.float64)), naive)  # converted to float32 first
        np.testing.assert_array_equal(Mt.heuristic_mu(vol), np.where(vol < np.float32(-800.0), np.float32(0.0), naive))
        label = np.searchsorted(np.asarray(Mt.DEFAULT_THRESHOLDS, np.float32), vol, side="right")
        rho = np.interp(vol, Mt._SCHNEIDER_HU, Mt._SCHNEIDER_RHO).astype(np.float32)
        for i, m in enumerate(Mt.MATERIALS):
            np.testing.assert_array_equal(Mt.material_densities(vol)[m], np.where(label == i, rho, np.float32(0.0)))
    # an int16 CT (as stored) gives its float32 values' μ, without a float32 copy; threads change nothing
    import torch

    np.testing.assert_array_equal(Mt.naive_mu(hu.astype(np.int16)), Mt.naive_mu(hu))
    np.testing.assert_array_equal(Mt.heuristic_mu(hu.astype(np.int16)), Mt.heuristic_mu(hu))
    dens, dens16 = Mt.material_densities(hu), Mt.material_densities(hu.astype(np.int16))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, dens1 = Mt.naive_mu(frac), Mt.material_densities(hu)
    finally:
        torch.set_num_threads(previous)
    np.testing.assert_array_equal(one, Mt.naive_mu(frac))
    for m in Mt.MATERIALS:
        np.testing.assert_array_equal(dens16[m], dens[m])
        np.testing.assert_array_equal(dens1[m], dens[m])


@pytest.mark.parametrize("margin", [0, 1, 3])
def test_material_density_crops_equal_the_cropped_full_volumes(margin):
    """material_density_crops gives crop_to_support of each material_densities volume, bit for bit, with
    the origin of that crop: on both compiled passes (integer HU, integral float32 HU over several
    threads' ranges), the interpolation path (fractional HU) and a small volume; a material with no voxel
    is None, a material at the grid's faces keeps the margin the grid allows."""
    import torch

    from xrlib.core.ct import Volume, crop_to_support

    rng = np.random.default_rng(11)
    hu = np.full((23, 70, 90), -1000, np.int16)  # air, and boxes of the other materials
    hu[3:9, 10:31, 40:88] = -600  # lung
    hu[0:23, 50:70, 0:5] = 40  # soft tissue touching three faces
    hu[12, 33, 61] = 900  # one bone voxel
    noisy = rng.integers(-1100, 2500, size=hu.shape).astype(np.int16)
    no_bone = np.minimum(hu, 200).astype(np.float32)
    cases = [hu, hu.astype(np.float32), noisy, noisy.astype(np.float32) + np.float32(0.25), no_bone,
             hu[:4, :8, :8]]
    grid = dict(spacing=(0.7, 0.8, 2.5), origin=(-10.0, 20.0, 5.0), direction=np.eye(3)[[1, 0, 2]])
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for case in cases:
                full, crops = Mt.material_densities(case), Mt.material_density_crops(case, margin=margin)
                ct = Volume(np.asarray(case, np.float32), **grid)
                for m in Mt.MATERIALS:
                    want = crop_to_support(ct.with_array(full[m]), margin)
                    if want is None:
                        assert crops[m] is None, m
                        continue
                    array, start = crops[m]
                    assert array.dtype == np.float32 and array.flags.c_contiguous
                    np.testing.assert_array_equal(array, want.array)
                    np.testing.assert_allclose(ct.sub_grid(array, start).origin, want.origin, rtol=0, atol=1e-9)
    finally:
        torch.set_num_threads(previous)
    assert Mt.material_density_crops(no_bone)["bone"] is None
    soft, start = Mt.material_density_crops(hu, margin=2)["soft_tissue"]
    assert start == (0, 48, 0) and soft.shape == (23, 22, 7)


def test_material_density_crops_bad_input():
    with pytest.raises(ValueError, match=r"need a 3-D HU volume, got shape \(4, 5\)"):
        Mt.material_density_crops(np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"margin must be a whole number of voxels ≥ 0, got -1"):
        Mt.material_density_crops(np.zeros((2, 2, 2)), margin=-1)
    with pytest.raises(ValueError, match="thresholds must be three increasing HU values"):
        Mt.material_density_crops(np.zeros((2, 2, 2)), thresholds=(0.0, -1.0, 5.0))
