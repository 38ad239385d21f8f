"""The Real surrogate's room effects (xrlib.drr.surrogate): each does what it says on a flat field."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xrlib.core.errors import InputError
from xrlib.drr.surrogate import (DEFECT_DEAD, DEFECT_HOT, EFFECTS, SurrogateEffects, aliased_frequency, effects_rng,
                                 laplacian_pyramid, pyramid_process, surrogate_effects)

FLAT = np.zeros((120, 240), np.float32)  # −log(I/I0) = 0: the unattenuated flat field
FIELD = np.ones(FLAT.shape, bool)


def only(*names, **kw) -> SurrogateEffects:
    return SurrogateEffects(enabled=names, **kw)


def intensity(fx: SurrogateEffects, seed: int = 0, pitch: float = 0.3, image=FLAT, sdd: float = 1800.0):
    out, info = fx.detector(image, FIELD, pitch, sdd, np.random.default_rng(seed))
    return np.exp(-out.astype(np.float64)), info


def test_aliased_frequency_is_the_distance_to_the_nearest_sampling_multiple():
    assert aliased_frequency(4.0, 0.3) == pytest.approx(4.0 - 1 / 0.3)  # 40 lines/cm at 0.3 mm: 0.667 /mm
    assert aliased_frequency(4.0, 0.25) == pytest.approx(0.0)  # the sampling rate itself: no visible pattern
    assert aliased_frequency(1.0, 0.25) == pytest.approx(1.0)  # below Nyquist: unchanged


def test_grid_lines_show_at_their_aliased_period_in_the_spectrum():
    for seed in range(4):
        i, info = intensity(only("grid"), seed)
        axis = 0 if info["grid_axis"] == "columns" else 1  # average along the lines
        profile = i.mean(axis=axis)
        spec = np.abs(np.fft.rfft(profile - profile.mean()))
        freqs = np.fft.rfftfreq(profile.size, d=0.3)
        peak = freqs[np.argmax(spec)]
        assert peak == pytest.approx(info["grid_alias_per_mm"], abs=freqs[1])
        assert info["grid_alias_per_mm"] == pytest.approx(4.0 - 1 / 0.3)
        # a cosine of the drawn modulation m (an integer number of periods here: |FFT| = m·N/2 at the peak),
        # constant along the lines
        assert spec.max() / (profile.size / 2) == pytest.approx(info["grid_modulation"], rel=1e-4)
        assert np.ptp(i, axis=axis).max() < 1e-9


def test_heel_gradient_points_to_the_cathode_with_the_drawn_magnitude():
    seen = set()
    for seed in range(12):
        i, info = intensity(only("heel"), seed)
        h, side = info["heel"], info["heel_cathode"]
        assert 0.05 <= h <= 0.15
        edges = {"top": i[0].mean(), "bottom": i[-1].mean(), "left": i[:, 0].mean(), "right": i[:, -1].mean()}
        anode = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}[side]
        assert edges[side] / edges[anode] == pytest.approx((1 + h) / (1 - h))
        seen.add(side)
    assert seen == {"top", "bottom", "left", "right"}


def test_off_axis_falloff_is_cos_cubed_of_the_ray_angle():
    i, _ = intensity(only("falloff"), pitch=1.0, sdd=1000.0)
    h, w = FLAT.shape
    r = math.hypot((h - 1) / 2, (w - 1) / 2)  # corner pixel, mm
    assert i[0, 0] == pytest.approx(math.cos(math.atan(r / 1000.0)) ** 3)
    assert i.max() == pytest.approx(math.cos(math.atan(math.hypot(0.5, 0.5) / 1000.0)) ** 3)


def test_defect_pixel_count_is_the_fraction_half_dead_half_hot_plus_dead_lines():
    fx = only("defects", defect_fraction=0.01, defect_lines=0)
    i, info = intensity(fx)
    k = round(0.01 * FLAT.size)
    assert info["defect_pixels"] == k and info["defect_lines"] == []
    assert np.isclose(i, DEFECT_DEAD, rtol=1e-5).sum() == (k + 1) // 2  # flat field: half its signal
    assert np.isclose(i, DEFECT_HOT, rtol=1e-5).sum() == k // 2          # twice its signal
    assert np.isclose(i, 1.0, rtol=1e-5).sum() == FLAT.size - k
    j, info = intensity(only("defects", defect_fraction=0.0, defect_lines=3), seed=3)
    assert len(info["defect_lines"]) >= 1
    dead_cols = [int(s.split()[1]) for s in info["defect_lines"] if s.startswith("column")]
    dead_rows = [int(s.split()[1]) for s in info["defect_lines"] if s.startswith("row")]
    expect = np.zeros(FLAT.shape, bool)
    expect[:, dead_cols] = True
    expect[dead_rows, :] = True
    np.testing.assert_array_equal(np.isclose(j, DEFECT_DEAD, rtol=1e-5), expect)


def test_gain_and_noise_have_their_stated_spread_on_a_flat_field():
    i, _ = intensity(only("gain", gain_sd=0.02, gain_line_sd=0.0, offset_sd=0.0))
    assert i.std() == pytest.approx(0.02, rel=0.05)
    n, _ = intensity(only("electronic_noise", electronic_noise_sd=0.01))
    assert (n - 1).std() == pytest.approx(0.01, rel=0.05) and abs((n - 1).mean()) < 1e-3


def test_pyramid_bands_sum_to_the_image_and_unit_gains_are_the_identity():
    rng = np.random.default_rng(0)
    x = np.clip(rng.uniform(0, 1, (64, 80)), 0, 1)
    field = np.ones(x.shape, bool)
    field[:, :5] = False
    x[~field] = 0
    np.testing.assert_allclose(sum(laplacian_pyramid(x, field, 4)), x, atol=1e-12)
    np.testing.assert_allclose(pyramid_process(x, field, [1, 1, 1, 1], 1.0), x, atol=1e-12)
    boosted = pyramid_process(x * 0.5 + 0.25, field, [2, 1, 1, 1], 1.0)  # finest band ×2: more fine detail
    assert np.abs(np.diff(boosted[:, 5:], axis=1)).mean() > np.abs(np.diff(x[:, 5:] * 0.5 + 0.25, axis=1)).mean()


def _display(seed: int, mask, fx: SurrogateEffects, x=None):
    x = np.full(FLAT.shape, 0.5) if x is None else x
    return fx.display(x, FIELD, mask, 0.3, np.random.default_rng(seed))


def test_collimation_zeroes_outside_the_field_and_never_cuts_the_mask():
    fx = only("collimation", collimation_margin=(0.1, 0.2))
    out, info = _display(0, None, fx)
    mt, mb, ml, mr = info["collimation_px"]
    assert min(mt, mb) >= 0.1 * 120 - 1 and min(ml, mr) >= 0.1 * 240 - 1
    assert (out[:mt] == 0).all() and (out[120 - mb:] == 0).all() and (out[:, :ml] == 0).all() and (out[:, 240 - mr:] == 0).all()
    assert (out[mt:120 - mb, ml:240 - mr] == 0.5).all()
    mask = np.zeros(FLAT.shape, np.uint8)
    mask[3:10, 100:120] = 1  # a clavicle near the top edge
    out, info = _display(0, mask, fx)
    assert info["collimation_px"][0] <= 3 and (out[mask > 0] == 0.5).all()


def test_marker_burns_a_white_glyph_outside_the_mask_and_leaves_the_mask_alone():
    mask = np.zeros(FLAT.shape, np.uint8)
    mask[40:80, 60:180] = 1
    keep = mask.copy()
    out, info = _display(1, mask, only("marker", marker_mm=4.2))  # 14 px tall at 0.3 mm: the glyph ×2
    np.testing.assert_array_equal(mask, keep)
    m = info["marker"]
    assert m["letter"] in ("R", "L") and m["size_px"] == [14, 10]
    assert (out == 1.0).sum() > 0 and not (out[mask > 0] == 1.0).any()
    assert ((out == 1.0)[m["row"]:m["row"] + 14, m["col"]:m["col"] + 10]).sum() == (out == 1.0).sum()
    full = np.ones(FLAT.shape, np.uint8)  # nowhere free: no marker, and said so
    out, info = _display(1, full, only("marker"))
    assert info["marker"] is None and (out == 0.5).all()


def test_effects_are_deterministic_per_image_seed_and_differ_between_images():
    fx = SurrogateEffects()
    img = np.random.default_rng(9).uniform(0.5, 2.0, FLAT.shape).astype(np.float32)
    disp = lambda s: np.clip(s / 3.0, 0, 1)  # noqa: E731
    a = fx.apply(img, FIELD, None, 0.3, 1800.0, disp, effects_rng(0, "s1", 0))
    b = fx.apply(img, FIELD, None, 0.3, 1800.0, disp, effects_rng(0, "s1", 0))
    c = fx.apply(img, FIELD, None, 0.3, 1800.0, disp, effects_rng(0, "s1", 1))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1] and not np.array_equal(a[0], c[0])
    assert set(a[1]) >= {"heel", "grid_modulation", "defect_pixels", "pyramid_gains", "collimation_px", "marker"}


def test_surrogate_noise_does_not_depend_on_the_ladders_noise():
    """Two images with different ladder noise get the same surrogate noise field from the same image seed."""
    fx = only("electronic_noise")
    rng = np.random.default_rng(4)
    ladder_a, ladder_b = (rng.normal(1.0, 0.05, FLAT.shape) for _ in range(2))
    na = intensity(fx, 7, image=ladder_a)[0] - np.exp(-ladder_a.astype(np.float32).astype(np.float64))
    nb = intensity(fx, 7, image=ladder_b)[0] - np.exp(-ladder_b.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(na, nb, atol=1e-5)
    from types import SimpleNamespace

    from xrlib.data.recipes import JitteredRecipe, VariedRecipe, noise_seed

    cfg = SimpleNamespace(seed=0)
    ladder = JitteredRecipe(physics="realistic").noise_seed(cfg, "s1")
    assert ladder == noise_seed(0, "s1") == VariedRecipe(effects=None).noise_seed(cfg, "s1")
    assert VariedRecipe(effects=fx).noise_seed(cfg, "s1") != ladder


def test_profile_block_parsing_and_bad_values():
    assert surrogate_effects(None) == SurrogateEffects()
    fx = surrogate_effects({"heel": [0.1, 0.2], "enabled": ["heel", "grid"], "defect_lines": 1})
    assert fx.heel == (0.1, 0.2) and fx.enabled == ("heel", "grid") and fx.defect_lines == 1
    with pytest.raises(InputError, match=r"p.yml: surrogate.effects: unknown key\(s\) \['glare'\]"):
        surrogate_effects({"glare": 1}, "p.yml")
    with pytest.raises(InputError, match=r"surrogate.effects: unknown surrogate effect\(s\) \['glare'\]"):
        surrogate_effects({"enabled": ["glare"]}, "p.yml")
    with pytest.raises(InputError, match=r"surrogate.effects: heel must be a range 0 ≤ lo ≤ hi"):
        surrogate_effects({"heel": [0.3, 0.1]}, "p.yml")
    assert set(EFFECTS) == set(SurrogateEffects().enabled)
