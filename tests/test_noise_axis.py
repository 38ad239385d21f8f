"""Chapter 10's dose axis: electronic noise per native element, quanta per input pixel and clavicle CNR."""

from __future__ import annotations

import numpy as np
import pytest

from xrlib.drr import physics as P
from xrlib.drr.noise import ExpectedSignal, dose_axis, expected_signal, input_bin_side, noisy_log


def _phantom(q=60.0, electronic=0.0, n=40):
    """Flat 6·10⁴ keV/mAs (10³ quanta), a 'clavicle' band at half the signal in the middle rows."""
    sig = np.full((n, n), 6e4)
    mask = np.zeros((n, n), np.uint8)
    mask[n // 2 - 3:n // 2 + 3, 5:n - 5] = 1
    sig[mask > 0] = 3e4
    es = ExpectedSignal(sig, np.full(sig.shape, q), 6e4, q, 0.0, electronic)
    return es, mask, np.ones(sig.shape, bool)


def test_electronic_noise_is_per_native_element_and_its_variance_adds_over_the_bin():
    assert P.electronic_quanta_at(3.0, P.NATIVE_ELEMENT_MM) == pytest.approx(3.0)
    assert P.electronic_quanta_at(3.0, 4 * P.NATIVE_ELEMENT_MM) == pytest.approx(12.0)  # √16 elements
    li = {"soft_tissue": np.full((64, 64), 100.0)}
    params = P.RealisticParams(quantum_noise=False, electronic_noise=3.0, blur_sigma_mm=0.0, scatter_to_primary=0.0)
    fine, coarse = expected_signal(li, 0.24, 1800.0, params), expected_signal(li, 0.48, 1800.0, params)
    assert coarse.electronic_quanta == pytest.approx(2 * fine.electronic_quanta)
    # summing 2×2 native elements' read noise (keV) gives the coarse pixel's read-noise std
    rng = np.random.default_rng(0)
    reads = rng.normal(0.0, fine.electronic_kev, (200, 64, 64)).reshape(200, 32, 2, 32, 2).sum(axis=(2, 4))
    assert reads.std() == pytest.approx(coarse.electronic_kev, rel=0.02)


def test_quanta_scale_linearly_with_dose_and_pixel_area():
    li = {"soft_tissue": np.full((16, 16), 150.0)}
    params = P.RealisticParams(quantum_noise=False, electronic_noise=0.0, scatter_to_primary=0.0)
    es1, es2 = expected_signal(li, 0.25, 1800.0, params), expected_signal(li, 0.5, 1800.0, params)
    mask, field = np.zeros((16, 16), np.uint8), np.ones((16, 16), bool)
    mask[6:10, 6:10] = 1
    a1 = dose_axis(es1, mask, field, [1.0, 2.0], 1.0, 0.25)
    a2 = dose_axis(es2, mask, field, [1.0], 1.0, 0.5)
    a4 = dose_axis(es1, mask, field, [1.0], 2.0, 0.25)  # an input pixel of 2×2 detector pixels
    assert a1["flat_quanta"][1] == pytest.approx(2 * a1["flat_quanta"][0])
    assert a1["clavicle_quanta"][1] == pytest.approx(2 * a1["clavicle_quanta"][0])
    assert a2["flat_quanta"][0] == pytest.approx(4 * a1["flat_quanta"][0], rel=1e-6)  # 4× the pixel area
    assert a4["flat_quanta"][0] == pytest.approx(4 * a1["flat_quanta"][0])
    assert a1["clavicle_quanta"][0] < a1["flat_quanta"][0]
    assert input_bin_side((256, 256), 128) == 2.0 and input_bin_side((1800, 1800), 256) == pytest.approx(7.03125)


def test_cnr_grows_as_sqrt_dose_when_quantum_limited_and_slower_with_electronic_noise():
    es, mask, field = _phantom()
    a = dose_axis(es, mask, field, [0.01, 0.04, 1.0, 4.0], 2.0, 1.0)
    assert a["cnr"][1] / a["cnr"][0] == pytest.approx(2.0) and a["cnr"][3] / a["cnr"][2] == pytest.approx(2.0)
    assert a["contrast"][0] == pytest.approx(np.log(2.0))
    e = dose_axis(_phantom(electronic=5.0)[0], mask, field, [0.01, 0.04, 1.0, 4.0], 2.0, 1.0)
    assert e["cnr"][1] / e["cnr"][0] > 2.2  # electronic variance ∝ 1/D²: below √D at low dose
    assert e["cnr"][3] / e["cnr"][2] == pytest.approx(2.0, rel=0.02)  # quantum limited at high dose


def test_cnr_noise_matches_monte_carlo_of_the_binned_input_pixel():
    es, mask, field = _phantom(electronic=2.0)
    dose = 0.5
    a = dose_axis(es, mask, field, [dose], 2.0, 1.0)
    x = noisy_log(es, dose, np.random.default_rng(1), 400).astype(float)
    binned = x.reshape(400, 20, 2, 20, 2).mean(axis=(2, 4))  # −log averaged over 2×2 (≈ −log of the sum)
    sel = mask.reshape(20, 2, 20, 2).min(axis=(1, 3)) > 0
    assert binned[:, sel].std(0).mean() == pytest.approx(a["noise_std"][0], rel=0.05)


def test_dose_axis_bad_input_messages():
    es, mask, field = _phantom()
    with pytest.raises(ValueError, match="no pixel inside the field"):
        dose_axis(es, np.zeros_like(mask), field, [1.0], 1.0, 1.0)
    with pytest.raises(ValueError, match="doses must be positive"):
        dose_axis(es, mask, field, [0.0], 1.0, 1.0)


# --- the window control and count-domain insertion ----------------------------------------------

def test_fixed_window_display_equals_postprocess_when_the_window_is_the_images_own():
    from xrlib.attacks.noise import display_fixed_window

    rng = np.random.default_rng(3)
    img = rng.normal(1.0, 0.3, (40, 40))
    field = np.zeros((40, 40), bool)
    field[2:38, 4:36] = True
    lo, hi = np.percentile(img[field], (0.5, 99.5))
    np.testing.assert_allclose(display_fixed_window(img, field, lo, hi, 1.0), P.postprocess(img, field, pitch_mm=1.0),
                               atol=1e-6)


def test_clean_window_control_is_unmoved_by_saturated_pixels_the_own_window_is():
    from xrlib.attacks.noise import NoiseSource

    es, mask, field = _phantom()
    src = NoiseSource(es, field, mask, 1.0)
    clean = noisy_log(es, 1.0, np.random.default_rng(0), quantum=False)
    hot = clean.copy()
    hot[:3, :] = 12.0  # a few saturated (zero-count) rows stretch the image's own window
    own, ctl = src.to_input(hot, 40)[0], src.to_input(hot, 40, clean_window=True)[0]
    ref = src.to_input(clean, 40, clean_window=True)[0]
    band = mask > 0
    assert abs(ctl[band].mean() - ref[band].mean()) < 0.02  # the control keeps the clavicle's grey level
    assert abs(own[band].mean() - ref[band].mean()) > 0.1   # the own window moves it


def test_count_domain_insertion_matches_rerendered_moments_where_gaussian_cannot():
    from xrlib.attacks.noise import NoiseSource, count_inserted_noise, gaussian_insertion_holds
    from scipy import stats

    es, mask, field = _phantom(electronic=1.0)  # 1000 quanta per mAs in the flat field, 500 behind the band
    src = NoiseSource(es, field, mask, 1.0)
    dose = 0.006  # ≈ 3 quanta behind the band, 6 in the open field
    assert not gaussian_insertion_holds(src, dose) and gaussian_insertion_holds(src, 1.0)
    clean = noisy_log(es, dose, np.random.default_rng(0), quantum=False, electronic=False)
    re = noisy_log(es, dose, np.random.default_rng(1), 300).astype(float) - clean
    ins = count_inserted_noise(src, dose, np.random.default_rng(2), 300).astype(float) - clean
    for sel in (mask > 0, mask == 0):
        a, b = re[:, sel].ravel(), ins[:, sel].ravel()
        assert b.mean() == pytest.approx(a.mean(), abs=0.05 * a.std())  # the −log bias of few counts
        assert b.std() == pytest.approx(a.std(), rel=0.05)
        assert stats.skew(b) == pytest.approx(stats.skew(a), abs=0.1)
        assert abs(stats.skew(a)) > 0.3  # the regime where Gaussian noise (skew 0) cannot match


def test_read_noise_counts_against_gaussian_insertion():
    from xrlib.attacks.noise import NoiseSource, gaussian_insertion_holds

    es, mask, field = _phantom(electronic=0.0)
    dose = 0.2  # 100 quanta behind the band, 200 in the open field
    assert gaussian_insertion_holds(NoiseSource(es, field, mask, 1.0), dose)
    loud, _, _ = _phantom(electronic=15.0)  # 225 quanta² of read variance: 100²/(100 + 225) ≈ 31 effective quanta
    assert not gaussian_insertion_holds(NoiseSource(loud, field, mask, 1.0), dose)


def test_variance_modulation_keeps_the_variance_step_inside_a_patch():
    from xrlib.attacks.noise import NoiseSource, inserted_noise, quantum_nps
    from xrlib.drr import nps as N
    from xrlib.drr.noise import clean_log

    sig = np.full((64, 64), 3e3 * 60.0)
    sig[:, 32:] = 3e2 * 60.0  # ten times fewer quanta right of column 32: a step inside the 32-px patches
    es = ExpectedSignal(sig, np.full(sig.shape, 60.0), 6e3 * 60.0, 60.0, 0.0, 0.0)
    src = NoiseSource(es, np.ones(sig.shape, bool), np.zeros(sig.shape, np.uint8), 1.0)
    rng = np.random.default_rng(4)
    lnps = quantum_nps(src, 2.0, rng, 16, 32)
    clean = clean_log(es)
    re = noisy_log(es, 2.0, rng, 40) - clean
    ins = inserted_noise(src, lnps, 2.0, 2.0, rng, 40) - clean
    smeared = N.synthesize(lnps, rng, 40)  # the patch NPS alone, without the modulation
    for cols in (slice(24, 31), slice(33, 40)):  # next to the step, in the straddling patch
        assert ins[:, :, cols].std() == pytest.approx(re[:, :, cols].std(), rel=0.1), cols
        assert abs(smeared[:, :, cols].std() / re[:, :, cols].std() - 1) > 0.1, cols  # fails the same tolerance
