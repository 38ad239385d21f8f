"""Chapter 10: physics-order detector noise, NPS insertion, the noise threat, SAR/CMR and the CMR Z-test."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from xrlib.attacks.noise import NoiseSource, NoiseThreat, inserted_noise, quantum_nps, rerendered_noise
from xrlib.core.errors import InputError
from xrlib.drr import nps as N
from xrlib.drr import physics as P
from xrlib.drr.noise import ExpectedSignal, clean_log, expected_signal, noisy_log
from xrlib.eval.robustness import cmr, cmr_ztest, sar


def _es(signal, q=60.0, flat=None, blur=0.0, electronic=0.0):
    signal = np.asarray(signal, float)
    return ExpectedSignal(signal, np.full(signal.shape, q), float(signal.max() if flat is None else flat), q, blur, electronic)


def _neighbour_corr(x):
    x = x - x.mean(0)
    return float(np.mean(x[:, :, 1:] * x[:, :, :-1]) / np.mean(x * x))


def test_variance_scales_as_one_over_dose_when_quantum_limited():
    es = _es(np.full((48, 48), 6e4 * 60.0 / 2.0))  # 2·10⁴ quanta per mAs per pixel, transmission 1/2 of flat
    es = ExpectedSignal(es.signal, es.quantum_kev, 2 * float(es.signal[0, 0]), 60.0, 0.0, 0.0)
    rng = np.random.default_rng(0)
    v = {d: noisy_log(es, d, rng, 40).var() for d in (0.5, 2.0)}
    # −log of a Poisson count N: var ≈ 1/N, N = dose · 3·10⁴
    assert v[0.5] / v[2.0] == pytest.approx(4.0, rel=0.08)
    assert v[2.0] == pytest.approx(1.0 / (2.0 * 3e4), rel=0.08)


def test_quantum_noise_is_correlated_after_the_blur_and_white_without():
    rng = np.random.default_rng(1)
    white = noisy_log(_es(np.full((48, 48), 6e5)), 1.0, rng, 30)
    blurred = noisy_log(_es(np.full((48, 48), 6e5), blur=1.5), 1.0, rng, 30)
    assert abs(_neighbour_corr(white)) < 0.03
    assert _neighbour_corr(blurred) > 0.5
    assert blurred.var() < white.var() / 5  # the blur averages the quanta of ~ 4πσ² pixels


def test_electronic_noise_is_drawn_after_the_blur_so_it_stays_white():
    rng = np.random.default_rng(2)
    es = ExpectedSignal(np.full((48, 48), 6e3), np.full((48, 48), 60.0), 6e3, 60.0, 2.0, 10.0)
    x = noisy_log(es, 1.0, rng, 30, quantum=False)
    assert abs(_neighbour_corr(x)) < 0.03
    assert x.std() == pytest.approx(10 * 60.0 / 6e3, rel=0.05)


def test_zero_counts_are_clipped_to_half_a_flat_field_quantum():
    es = _es(np.full((16, 16), 600.0), flat=6e4)  # 10 quanta per mAs behind the object, 1000 in open field
    x = noisy_log(es, 0.01, np.random.default_rng(3), 20)  # 0.1 expected quanta: mostly zero counts
    ceiling = math.log(2 * es.flat_quanta(0.01))
    assert x.max() == pytest.approx(ceiling, rel=1e-5)
    assert np.isfinite(x).all() and (x <= ceiling + 1e-5).all()


def test_noise_free_limit_matches_the_datasets_realistic_chain():
    rng = np.random.default_rng(4)
    li = {"soft_tissue": ndimage.gaussian_filter(rng.uniform(0, 300, (24, 30)), 2), "bone": rng.uniform(0, 20, (24, 30))}
    params = P.RealisticParams(quantum_noise=False, electronic_noise=0.0, blur_sigma_mm=0.4)
    ref = P.realistic_image(li, 0.25, 1800.0, params)
    es = expected_signal(li, 0.25, 1800.0, params)
    np.testing.assert_allclose(clean_log(es), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(noisy_log(es, 3.0, rng, quantum=False, electronic=False), ref, rtol=1e-5, atol=1e-5)
    assert es.blur_sigma_px == pytest.approx(1.6)


def test_the_datasets_chain_draws_the_same_correlated_noise_as_the_rerendered_arm():
    li = {"soft_tissue": np.full((40, 40), 150.0)}
    params = P.RealisticParams(dose_mas=0.5, blur_sigma_mm=0.5, electronic_noise=0.0)
    es = expected_signal(li, 0.25, 1800.0, params)
    # one implementation (physics.detector_readout): the same generator state gives the same image
    np.testing.assert_array_equal(P.realistic_image(li, 0.25, 1800.0, params, np.random.default_rng(5)),
                                  noisy_log(es, 0.5, np.random.default_rng(5)))
    stack = np.stack([P.realistic_image(li, 0.25, 1800.0, params, np.random.default_rng(k)) for k in range(30)])
    assert _neighbour_corr(stack) > 0.5  # noise drawn before the blur (σ = 2 px) is correlated


def test_trapezoid_weights_partition_unity_and_patch_grid():
    assert N.patch_starts(100, 32, 0.3) == [0, 22, 44, 66, 68]
    origins, w = N.trapezoid_weights((50, 70), 16, 0.3)
    np.testing.assert_allclose(w.sum(0), 1.0)
    assert len(origins) == len(w) and (w >= 0).all()
    with pytest.raises(ValueError, match="overlap"):
        N.patch_starts(10, 4, 1.0)


def test_insertion_reproduces_a_known_nps():
    rng = np.random.default_rng(5)
    sigma = 1.0
    reps = np.stack([ndimage.gaussian_filter(rng.standard_normal((64, 64)), sigma, mode="wrap") for _ in range(60)])
    lnps = N.estimate_local_nps(reps, 32, 0.3)
    synth = N.synthesize(lnps, rng, 40)
    # analytic NPS of blurred unit white noise: |G(k)|² = exp(−4π²σ²|k|²)
    # the known NPS (blurred unit white noise), measured with the same estimator (32-pixel patches, no window)
    def measured(x):
        return np.mean([N.radial_nps(N.nps_2d(x[:, y:y + 32, x0:x0 + 32]), n_bins=8)[1] for y in (0, 32) for x0 in (0, 32)], 0)

    fr, _ = N.radial_nps(np.ones((32, 32)), n_bins=8)
    want, got = measured(reps), measured(synth)
    band = (fr > 0.05) & (fr < 0.3)  # off DC (one noisy bin) and where the spectrum holds its power; tolerance ±15 %
    np.testing.assert_allclose(got[band], want[band], rtol=0.15)
    assert synth.var() == pytest.approx(reps.var(), rel=0.1)


def _two_region_source(blur=0.0):
    sig = np.full((64, 64), 3e3 * 60.0)
    sig[:, 32:] = 3e2 * 60.0  # ten times fewer quanta on the right: a "bone" region
    es = ExpectedSignal(sig, np.full(sig.shape, 60.0), 6e3 * 60.0, 60.0, blur, 3.0)
    return NoiseSource(es, np.ones(sig.shape, bool), np.zeros(sig.shape, np.uint8), 1.0)


def test_inserted_noise_matches_rerendered_variance_per_region():
    src = _two_region_source(blur=0.8)
    rng = np.random.default_rng(6)
    lnps = quantum_nps(src, 2.0, rng, 12, 16)
    clean = clean_log(src.expected)
    for dose in (2.0, 0.2):  # the inserted arm scales the quantum part by √(2/dose), the electronic part by 2/dose
        re = rerendered_noise(src, dose, rng, 20) - clean
        ins = inserted_noise(src, lnps, 2.0, dose, rng, 20) - clean
        for cols in (slice(2, 20), slice(42, 62)):  # columns whose patches lie in one region (tolerance ±10 %)
            assert ins[:, :, cols].std() == pytest.approx(re[:, :, cols].std(), rel=0.1), (dose, cols)
        assert _neighbour_corr(ins) == pytest.approx(_neighbour_corr(re), abs=0.1)


def _threat(**kw):
    srcs = [_two_region_source(), _two_region_source()]
    rows = pd.DataFrame({"subject": ["a", "b"], "alpha": [0.0, 16.0]})
    return NoiseThreat(srcs, rows, 32, [2.0, 0.1], realisations=2, nps_realisations=4, patch=16, **kw)


def test_noise_threat_rows_are_seeded_and_carry_arm_and_realisation():
    th = _threat()
    assert th.budgets() == (math.inf, 2.0, 0.1) and th.clean_budget == math.inf
    clean = th.apply(None, th.test, math.inf)
    assert clean.images.shape == (2, 32, 32) and list(clean.extra["arm"]) == ["clean"] * 2
    x = th.apply(None, th.test, 0.1)
    assert x.images.shape == (12, 32, 32)
    arms = ["rerendered"] * 2 + ["inserted"] * 2 + ["clean-window"] * 2
    assert list(x.extra["arm"]) == arms * 2
    assert list(x.extra["realisation"]) == [0, 1] * 6 and list(x.rows["subject"]) == ["a"] * 6 + ["b"] * 6
    # the window control shows the re-rendered arm's draws
    np.testing.assert_array_equal(th.noisy_log(0, 0.1, "clean-window"), th.noisy_log(0, 0.1, "rerendered"))
    sub = th.subset(("rerendered",), [0.1]).apply(None, None, 0.1)  # the same realisations, one arm
    np.testing.assert_array_equal(sub.images, x.images[np.asarray(x.extra["arm"]) == "rerendered"])
    np.testing.assert_array_equal(_threat().apply(None, None, 0.1).images, x.images)
    assert not np.array_equal(x.images[0], x.images[1])
    with pytest.raises(InputError, match="not one of the doses"):
        th.apply(None, th.test, 0.3)
    with pytest.raises(InputError, match="unknown arm"):
        _threat(arms=("simulated",))


def _contract(dice_clean, dice, budget=0.5):
    n = len(dice)
    return pd.DataFrame({"model": "m", "arm": "rerendered", "budget": budget, "dice_clean": dice_clean, "dice": dice,
                         "alpha_group": "Center", "subject": [f"s{i}" for i in range(n)]})


def test_sar_and_cmr_on_a_constructed_example():
    # clean bands: 4 images ≥ 0.8, 2 in 0.5–0.8; noisy: 1 of the 4 falls to 0.5–0.8 and 1 to < 0.5, 1 of the 2 rises
    df = pd.concat([_contract([0.9, 0.9, 0.9, 0.9, 0.6, 0.6], [0.9, 0.85, 0.7, 0.2, 0.6, 0.95]),
                    _contract([0.9] * 6, [0.9] * 6, budget=math.inf)])
    c = cmr(df, by=["model"], clean_budget=math.inf).set_index(["clean_band", "threatened_band"])["cmr"]
    assert c[("Dice ≥ 0.8", "Dice ≥ 0.8")] == pytest.approx(0.5)
    assert c[("Dice ≥ 0.8", "0.5–0.8")] == pytest.approx(0.25)
    assert c[("Dice ≥ 0.8", "Dice < 0.5")] == pytest.approx(0.25)
    assert c[("0.5–0.8", "Dice ≥ 0.8")] == pytest.approx(0.5)
    assert math.isnan(c[("Dice < 0.5", "Dice < 0.5")])
    s = sar(df, by=["model", "arm"], clean_budget=math.inf).set_index("band")
    assert s.loc["Dice ≥ 0.8", "sar"] == pytest.approx(0.5) and s.loc["0.5–0.8", "sar"] == pytest.approx(0.5)
    assert s.loc["Dice ≥ 0.8", "n_clean"] == 4


def test_cmr_ztest_agrees_with_statsmodels():
    from statsmodels.stats.proportion import proportions_ztest

    a = cmr(_contract([0.9] * 10, [0.9] * 6 + [0.6] * 4), by=["model"], clean_budget=None)
    b = cmr(_contract([0.9] * 30, [0.9] * 27 + [0.3] * 3), by=["model"], clean_budget=None)
    z = cmr_ztest(a, b, by=["model"]).set_index(["clean_band", "threatened_band"])
    want, p = proportions_ztest(np.array([6, 27]), np.array([10, 30]))
    assert z.loc[("Dice ≥ 0.8", "Dice ≥ 0.8"), "z"] == pytest.approx(want)
    assert z.loc[("Dice ≥ 0.8", "Dice ≥ 0.8"), "p"] == pytest.approx(p)
    want, _ = proportions_ztest(np.array([0, 3]), np.array([10, 30]))
    assert z.loc[("Dice ≥ 0.8", "Dice < 0.5"), "z"] == pytest.approx(want)
    assert z.loc[("0.5–0.8", "0.5–0.8"), "z"] != z.loc[("0.5–0.8", "0.5–0.8"), "z"]  # empty clean band: nan
    both_zero = cmr_ztest(a, a, by=["model"]).set_index(["clean_band", "threatened_band"])
    assert both_zero.loc[("Dice ≥ 0.8", "Dice < 0.5"), "z"] == 0.0


def test_noise_settings_errors_name_the_profile(tmp_path):
    from xrlib.core.profiles import load_profile
    from xrlib.studies.noise.settings import noise_settings
    import yaml

    for name in ("smoke", "quick", "paper"):
        s = noise_settings(load_profile(name))
        assert s.grid.max_halvings >= 1 and s.nps_min_px >= 16 and 0 < s.tost_margin_dice < 1
        assert s.seeds >= (5 if name == "paper" else 1)
    raw = yaml.safe_load(open(load_profile("smoke").path))
    del raw["noise"]["nps_patch_mm"]
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match="bad.yml.*missing key 'nps_patch_mm'"):
        noise_settings(load_profile(path))
    raw = yaml.safe_load(open(load_profile("smoke").path))
    raw["noise"]["grid"]["max_halvings"] = 0
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match="bad.yml: noise: grid needs above ≥ 0, max_halvings ≥ 1"):
        noise_settings(load_profile(path))


def test_nps_patch_is_stated_in_mm_with_a_pixel_minimum():
    assert N.patch_px(15.0, 0.24, 16, 1800) == 63  # 15 mm at the paper's pitch
    assert N.patch_px(15.0, 1.6875, 16, 256) == 16  # the minimum at the quick pitch (27 mm)
    assert N.patch_px(15.0, 6.75, 16, 64) == 16
    with pytest.raises(ValueError, match="smaller than the NPS patch minimum of 16 px"):
        N.patch_px(15.0, 6.75, 16, 8)


def test_vectorised_synthesis_filters_each_patch_with_its_own_kernel():
    # two patches' worth of NPS: white on the left, zero on the right → the synthesised field is zero there
    rng = np.random.default_rng(9)
    lnps = N.estimate_local_nps(rng.standard_normal((4, 32, 64)), 16, 0.0)
    right = np.array([x >= 32 for _, x in lnps.origins])
    nps = lnps.nps.copy()
    nps[right] = 0.0
    nps[~right] = 1.0
    out = N.synthesize(N.LocalNPS(lnps.shape, 16, 0.0, lnps.origins, nps), rng, 30)
    assert np.abs(out[:, :, 32:]).max() == 0.0
    assert out[:, :, :32].var() == pytest.approx(1.0, rel=0.05)
