"""Per-image metrics against hand-computed values."""

import math

import numpy as np
import pytest

from xrlib.drr.geometry import Geometry
from xrlib.eval.metrics import dice, hausdorff, image_metrics, image_pixel_mm


def _square(shape, r0, c0, size):
    m = np.zeros(shape, np.uint8)
    m[r0:r0 + size, c0:c0 + size] = 1
    return m


def test_dice_overlapping_squares():
    # Two 4×4 squares sharing a 4×2 strip: 2·8 / (16 + 16) = 0.5.
    a = _square((10, 10), 0, 0, 4)
    b = _square((10, 10), 0, 2, 4)
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0


def test_dice_thresholds_probabilities():
    target = _square((6, 6), 1, 1, 2)
    prob = target * 0.7 + 0.2  # 0.9 inside, 0.2 outside
    assert dice(prob, target) == 1.0
    assert dice(np.full((6, 6), 0.5), target) == 0.0  # 0.5 is not > 0.5: empty prediction


def test_dice_empty_conventions():
    z = np.zeros((5, 5))
    assert dice(z, z) == 1.0
    assert dice(z, _square((5, 5), 1, 1, 2)) == 0.0
    assert dice(_square((5, 5), 1, 1, 2), z) == 0.0


def test_dice_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))


def test_hausdorff_two_points():
    a = np.zeros((20, 20))
    b = np.zeros((20, 20))
    a[2, 2] = 1
    b[5, 6] = 1  # (3, 4) apart: 5 px
    assert hausdorff(a, b) == pytest.approx(5.0)
    assert hausdorff(a, b, spacing_mm=0.5) == pytest.approx(2.5)
    assert hausdorff(a, b, spacing_mm=(0.5, 2.0)) == pytest.approx(math.hypot(1.5, 8.0), rel=1e-6)


def test_hausdorff_offset_squares_and_hd95():
    a = _square((20, 20), 2, 2, 6)
    b = _square((20, 20), 2, 5, 6)  # shifted 3 px to the right
    assert hausdorff(a, b) == pytest.approx(3.0)
    # An outlier pixel raises HD but hardly HD95.
    c = b.copy()
    c[18, 18] = 1
    hd, hd95 = hausdorff(a, c), hausdorff(a, c, percentile=95)
    assert hd == pytest.approx(math.hypot(18 - 7, 18 - 7))
    assert hd95 <= hd
    assert hd95 < hd


def test_hausdorff_empty_is_nan():
    a = _square((8, 8), 1, 1, 3)
    z = np.zeros((8, 8))
    assert math.isnan(hausdorff(z, a))
    assert math.isnan(hausdorff(a, z))


def test_image_metrics_keys_units_and_empty():
    a = np.zeros((20, 20))
    b = np.zeros((20, 20))
    a[2, 2] = 1
    b[5, 6] = 1
    m = image_metrics(a, b, pixel_mm_iso=0.2)
    assert m["hd_px"] == pytest.approx(5.0)
    assert m["hd_mm"] == pytest.approx(1.0)
    assert m["hd95_px"] <= m["hd_px"]
    assert m["dice"] == 0.0 and not m["empty_pred"] and not m["empty_target"]
    assert (m["pred_area_px"], m["target_area_px"]) == (1, 1)

    e = image_metrics(np.zeros((20, 20)), b, pixel_mm_iso=0.2)
    assert e["empty_pred"] is True and e["empty_target"] is False
    assert e["dice"] == 0.0
    assert all(math.isnan(e[k]) for k in ("hd_mm", "hd95_mm", "hd_px", "hd95_px"))
    with pytest.raises(ValueError):
        image_metrics(a, b, pixel_mm_iso=0.0)


def test_image_pixel_mm():
    # 1800×1800 detector, 0.24 mm pitch, SID 1500, SDD 1800: 0.2 mm at the isocenter → 360 mm field.
    g = Geometry(sid=1500.0, sdd=1800.0, height=1800, width=1800, pitch=0.24)
    assert image_pixel_mm(g, 256) == pytest.approx(360.0 / 256)
    # Non-square detector: the longer side fills the S pixels.
    g2 = Geometry(sid=1000.0, sdd=2000.0, height=100, width=300, pitch=1.0)
    assert image_pixel_mm(g2, 150) == pytest.approx(300 * 0.5 / 150)


def test_hausdorff_equals_monai_on_full_image():
    # hausdorff() crops to the union's bounding box before calling MONAI; masks touching the
    # image border must give exactly MONAI's result on the uncropped images.
    import warnings

    from monai.metrics import compute_hausdorff_distance

    a = np.zeros((32, 32), bool)
    b = np.zeros((32, 32), bool)
    a[0:10, 0:6] = True
    a[20:32, 25:32] = True
    b[3:14, 2:9] = True
    b[28:32, 0:4] = True
    for pc in (None, 95):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = float(compute_hausdorff_distance(a[None, None].astype(np.float32), b[None, None].astype(np.float32),
                                                   include_background=True, percentile=pc))
        assert hausdorff(a, b, 1.0, pc) == pytest.approx(ref, rel=1e-6)


def _random_masks(rng, shape):
    """A mix of hard cases: speckle, smooth blobs, boxes (often on the border), a few single pixels."""
    from scipy.ndimage import gaussian_filter

    kind = rng.integers(0, 4)
    if kind == 0:
        return rng.random(shape) < rng.uniform(0.001, 0.6)
    if kind == 1:
        return gaussian_filter(rng.random(shape), rng.uniform(1, 5)) > 0.5
    m = np.zeros(shape, bool)
    if kind == 2:
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        m[r:r + rng.integers(1, 40), c:c + rng.integers(1, 40)] = True
    else:
        m[rng.integers(0, shape[0], 3), rng.integers(0, shape[1], 3)] = True
    return m


def _monai_hd(a, b, spacing, percentile):
    """MONAI on the full, uncropped images: the reference that hausdorff() reproduces."""
    import warnings

    from monai.metrics import compute_hausdorff_distance

    if not a.any() or not b.any():
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(compute_hausdorff_distance(a[None, None].astype(np.float32), b[None, None].astype(np.float32),
                                                include_background=True, percentile=percentile, spacing=spacing))


def test_hausdorff_equals_monai_on_random_masks():
    rng = np.random.default_rng(7)
    for _ in range(60):
        shape = (int(rng.integers(5, 60)), int(rng.integers(5, 60)))
        a, b = _random_masks(rng, shape), _random_masks(rng, shape)
        for spacing in (1.0, 0.37, [0.5, 2.0]):
            for pc in (None, 95, 50, 0):
                ours, ref = hausdorff(a, b, spacing, pc), _monai_hd(a, b, spacing, pc)
                assert (math.isnan(ours) and math.isnan(ref)) or abs(ours - ref) <= 1e-9, (shape, spacing, pc, ours, ref)


def test_stack_metrics_equals_image_metrics_and_monai():
    from xrlib.eval.metrics import stack_metrics

    rng = np.random.default_rng(3)
    targets = np.stack([_random_masks(rng, (40, 40)) for _ in range(30)]).astype(np.uint8)
    probs = np.stack([_random_masks(rng, (40, 40)) * rng.uniform(0.4, 1.0) for _ in range(30)]).astype(np.float32)
    probs[3] = 0.0       # empty prediction
    targets[4] = 0       # empty target
    probs[5], targets[5] = 0.0, 0  # both empty
    df = stack_metrics(probs, targets, pixel_mm_iso=0.7)
    assert list(df.columns) == ["dice", "hd_mm", "hd95_mm", "hd_px", "hd95_px", "empty_pred", "empty_target",
                                "pred_area_px", "target_area_px"]
    for i, row in df.iterrows():
        one = image_metrics(probs[i], targets[i], 0.7)
        assert list(one) == list(df.columns)
        for key, value in one.items():
            assert type(value) is {"empty_pred": bool, "empty_target": bool, "pred_area_px": int,
                                   "target_area_px": int}.get(key, float)
            assert (math.isnan(value) and math.isnan(row[key])) or value == row[key], (i, key)
        p, t = probs[i] > 0.5, targets[i] > 0.5
        for key, pc in (("hd_px", None), ("hd95_px", 95)):
            ref = _monai_hd(p, t, 1.0, pc)
            assert (math.isnan(ref) and math.isnan(row[key])) or abs(row[key] - ref) <= 1e-9
        assert row["dice"] == dice(p, t)
    assert (df.loc[3, "empty_pred"], df.loc[4, "empty_target"], df.loc[5, "dice"]) == (True, True, 1.0)
    assert math.isnan(df.loc[3, "hd_px"]) and math.isnan(df.loc[4, "hd95_mm"]) and math.isnan(df.loc[5, "hd_px"])
    with pytest.raises(ValueError, match="shapes differ"):
        stack_metrics(probs, targets[:, :, :39], 0.7)
    with pytest.raises(ValueError, match="pixel_mm_iso"):
        stack_metrics(probs, targets, 0.0)
