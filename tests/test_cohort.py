"""Tests of the virtual cohort (xrlib.anatomy.deformation, .cohort, .sources) on a small synthetic torso and, once, on the example CT."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from xrlib.anatomy import cohort, deformation, sources
from xrlib.anatomy.cohort import CohortConfig
from xrlib.anatomy.deformation import DeformationParams, deform, deformation_transform, sample_params
from xrlib.anatomy.warp import reach_box, warp
from xrlib.core.ct import CLAVICLE_LEFT_LABEL as LEFT
from xrlib.core.ct import CLAVICLE_RIGHT_LABEL as RIGHT
from xrlib.core.atomic import sha256_file
from xrlib.core.ct import Volume
from xrlib.core.errors import InputError
BODY_HU, BONE_HU = 40.0, 700.0


def make_torso(direction=np.eye(3), shape_ijk=(48, 40, 32), spacing=(4.0, 4.0, 5.0)) -> tuple[Volume, Volume]:
    """Ellipsoid body (40 HU) in air, with two bone bars near the top labelled as clavicles.

    The grid is centred on the world origin. Semi-axes 70 (LR) × 50 (AP) × 70 (SI) mm. The bars
    lie at z 40..60 mm, y −16..4 mm, |x| 16..64 mm: +x (patient's left) is the left clavicle label.
    """
    direction = np.asarray(direction, float)
    n = np.asarray(shape_ijk)
    sp = np.asarray(spacing, float)
    origin = -direction @ (sp * (n - 1) / 2.0)
    k, j, i = np.meshgrid(*(np.arange(m) for m in shape_ijk[::-1]), indexing="ij")
    idx = np.stack([i, j, k], -1).astype(float)
    xyz = idx @ (direction @ np.diag(sp)).T + origin
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    body = (x / 70.0) ** 2 + (y / 50.0) ** 2 + (z / 70.0) ** 2 <= 1.0
    ct = np.full(body.shape, -1000.0, np.float32)
    ct[body] = BODY_HU
    bar = (z >= 40) & (z <= 60) & (y >= -16) & (y <= 4) & (np.abs(x) >= 16) & (np.abs(x) <= 64)
    lab = np.zeros(body.shape, np.uint8)
    lab[bar & (x > 0)] = LEFT
    lab[bar & (x < 0)] = RIGHT
    lab[body & ~bar & (z < 0)] = 5  # some other organ, to check that labels are preserved
    ct[bar] = BONE_HU
    kw = dict(spacing=tuple(sp), origin=tuple(origin), direction=direction)
    return Volume(ct, source="torso-ct", **kw), Volume(lab, source="torso-labels", **kw)


@pytest.fixture(scope="module")
def torso():
    return make_torso()


def numpy_min_jacobian(tx: sitk.Transform, vol: Volume, h: float = 4.0) -> float:
    """Min det(I + ∇u) of ``tx`` sampled at ``h`` mm inside the volume, by numpy finite differences."""
    lo = vol.center - vol.extent_mm / 2 + h
    size = [int((e - 2 * h) // h) + 1 for e in vol.extent_mm]
    field = sitk.TransformToDisplacementField(tx, sitk.sitkVectorFloat64, size, tuple(lo), (h, h, h), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    u = sitk.GetArrayFromImage(field)  # [k, j, i, (x, y, z)]
    grads = [np.gradient(u[..., c], h, axis=(2, 1, 0)) for c in range(3)]  # du_c/d(x, y, z)
    jac = np.stack([np.stack(g, -1) for g in grads], -2) + np.eye(3)
    return float(np.linalg.det(jac).min())


def centroid_mm(labels: Volume, value: int) -> np.ndarray:
    kji = np.argwhere(labels.array == value)
    return kji[:, ::-1].mean(0) @ labels.index_to_world[:3, :3].T + labels.index_to_world[:3, 3]


# ------------------------------------------------------------------ parameters


def test_sample_params_within_bands_and_reproducible():
    cfg = CohortConfig()
    for seed in range(20):
        p = sample_params(seed, cfg)
        assert p == sample_params(seed, cfg)
        assert abs(p.scale_lr - 1) <= cfg.scale_lr_band and abs(p.scale_ap - 1) <= cfg.scale_ap_band
        assert abs(p.scale_si - 1) <= cfg.scale_si_band
        for d in (p.shoulder_left_mm, p.shoulder_right_mm):
            assert abs(d[0]) <= cfg.shoulder_lr_mm and abs(d[1]) <= cfg.shoulder_ap_mm and abs(d[2]) <= cfg.shoulder_si_mm
    assert sample_params(1, cfg) != sample_params(2, cfg)


def test_params_dict_round_trip_and_validation():
    p = sample_params(7, CohortConfig())
    d = p.to_dict()
    assert all(np.isscalar(v) for v in d.values())
    assert {"seed", "scale_lr", "scale_ap", "scale_si", "bspline_std_mm", "shoulder_left_dz_mm", "shoulder_right_dy_mm"} <= set(d)
    assert DeformationParams.from_dict(d) == p
    with pytest.raises(InputError, match="scale_lr"):
        DeformationParams(seed=0, scale_lr=0.0)
    with pytest.raises(InputError, match="bspline_nodes"):
        DeformationParams(seed=0, bspline_nodes=(3, 6, 6))
    with pytest.raises(InputError, match="outside"):
        CohortConfig(outside="mirror")


def test_subject_seed_deterministic_and_distinct():
    s = deformation.subject_seed(0, "example", 3)
    assert s == deformation.subject_seed(0, "example", 3)
    others = {deformation.subject_seed(0, "example", 4), deformation.subject_seed(1, "example", 3),
              deformation.subject_seed(0, "other", 3), deformation.subject_seed(0, "example", 3, attempt=1)}
    assert s not in others and len(others) == 4
    assert 0 <= s < 2**63


# ------------------------------------------------------------------ deformation


def test_identity_params_return_input(torso):
    ct, lab = torso
    new_ct, new_lab, stats = deform(ct, lab, DeformationParams.identity())
    assert new_ct.same_grid(ct) and new_lab.same_grid(lab)
    np.testing.assert_allclose(new_ct.array, ct.array, atol=1e-3, rtol=0)
    assert np.array_equal(new_lab.array, lab.array)
    assert stats["min_jacobian"] == pytest.approx(1.0, abs=1e-9)
    assert stats["clavicle_left_volume_ratio"] == 1.0 and stats["clavicle_right_volume_ratio"] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_folding_stats_and_independent_check(torso, seed):
    ct, lab = torso
    cfg = CohortConfig()
    p = sample_params(seed, cfg)
    _, _, stats = deform(ct, lab, p, cfg, check=False)
    assert stats["min_jacobian"] > cfg.jacobian_floor
    assert stats["nonrigid_factor"] == 1.0
    tx, tstats = deformation_transform(ct, lab, p, cfg)
    jmin = numpy_min_jacobian(tx, ct)
    assert jmin > 0
    # The numpy check samples a sub-region of the field the stats cover: never lower than the stats.
    assert jmin >= stats["min_jacobian"] - 0.02
    assert tstats["min_jacobian"] == stats["min_jacobian"]


def test_folding_guard_scales_down_and_raises(torso):
    ct, lab = torso
    cfg = CohortConfig()
    wild = DeformationParams(seed=5, bspline_std_mm=80.0, shoulder_left_mm=(0, 0, 40.0))
    tx0 = deformation._bspline(wild, *deformation._field_grid(ct, 4.0), 4.0)
    assert numpy_min_jacobian(tx0, ct) < 0  # the raw B-spline folds
    new_ct, new_lab, stats = deform(ct, lab, wild, cfg, check=False)
    assert stats["nonrigid_factor"] < 1.0
    assert stats["min_jacobian"] > cfg.jacobian_floor
    tx, _ = deformation_transform(ct, lab, wild, cfg)
    assert numpy_min_jacobian(tx, ct) > 0
    # Scaling alone gives det = 1/(1.1³) ≈ 0.75, below an (absurd) floor of 0.9: cannot be fixed.
    with pytest.raises(deformation.FoldingError, match="Jacobian"):
        deform(ct, lab, DeformationParams(seed=0, scale_lr=1.1, scale_ap=1.1, scale_si=1.1), CohortConfig(jacobian_floor=0.9))


def test_clavicle_volumes_within_band(torso):
    """deform() only returns subjects whose clavicle volumes lie in the band; others are refused."""
    ct, lab = torso
    cfg = CohortConfig()
    lo, hi = cfg.clavicle_volume_band
    accepted = 0
    for seed in range(10):
        p = sample_params(seed, cfg)
        _, new_lab, stats = deform(ct, lab, p, cfg, check=False)
        ratios = [stats["clavicle_left_volume_ratio"], stats["clavicle_right_volume_ratio"]]
        for side, value in (("left", LEFT), ("right", RIGHT)):
            after = np.count_nonzero(new_lab.array == value) * np.prod(ct.spacing) / 1000
            assert stats[f"clavicle_{side}_ml_after"] == pytest.approx(after)
            assert stats[f"clavicle_{side}_volume_ratio"] == pytest.approx(after / stats[f"clavicle_{side}_ml_before"])
        inside = all(lo <= r <= hi for r in ratios)
        assert stats["clavicle_volume_ok"] == inside
        if inside:
            accepted += 1
            deform(ct, lab, p, cfg)  # no exception
        else:
            with pytest.raises(deformation.ImplausibleDeformationError):
                deform(ct, lab, p, cfg)
    assert accepted >= 7  # the band is wide enough for most draws, even on this coarse phantom


def test_volume_band_is_enforced(torso):
    ct, lab = torso
    big = DeformationParams(seed=0, scale_lr=1.2, scale_ap=1.2, scale_si=1.05)
    with pytest.raises(deformation.ImplausibleDeformationError, match="outside the band"):
        deform(ct, lab, big, CohortConfig())
    _, _, stats = deform(ct, lab, big, CohortConfig(), check=False)
    assert not stats["clavicle_volume_ok"] and stats["clavicle_left_volume_ratio"] > 1.3


def test_same_seed_identical_different_seed_different(torso):
    ct, lab = torso
    cfg = CohortConfig()
    a = deform(ct, lab, sample_params(11, cfg), cfg)
    b = deform(ct, lab, sample_params(11, cfg), cfg)
    c = deform(ct, lab, sample_params(12, cfg), cfg)
    assert np.array_equal(a[0].array, b[0].array) and np.array_equal(a[1].array, b[1].array)
    assert not np.array_equal(a[0].array, c[0].array)
    assert not np.array_equal(a[1].array, c[1].array)


def test_labels_integer_and_subset(torso):
    ct, lab = torso
    cfg = CohortConfig()
    for seed in (0, 1):
        new_ct, new_lab, _ = deform(ct, lab, sample_params(seed, cfg), cfg)
        assert new_lab.array.dtype == lab.array.dtype and np.issubdtype(new_lab.array.dtype, np.integer)
        assert set(np.unique(new_lab.array)) <= set(np.unique(lab.array))
        assert new_ct.array.dtype == np.float32
        assert new_ct.array.min() >= -1000.0 - 1e-3 and new_ct.array.max() <= BONE_HU + 1e-3


def _width_mm(vol: Volume, axis: str) -> float:
    """Body extent through the centre along LR ("x") or AP ("y"), with partial-volume voxels counted fractionally."""
    occ = np.clip((vol.array + 1000.0) / (BODY_HU + 1000.0), 0, 1)
    k, j, i = (np.asarray(vol.array.shape) - 1) // 2
    if axis == "x":
        return float(occ[k, j, :].sum() * vol.spacing[0])
    return float(occ[k, :, i].sum() * vol.spacing[1])


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([1.0, -1.0, 1.0])])
def test_scaling_has_physical_effect(direction):
    ct, lab = make_torso(direction=direction)
    # body only (bars are above the centre slice anyway)
    wide, _, _ = deform(ct, lab, DeformationParams(seed=0, scale_lr=1.1), check=False)
    assert _width_mm(wide, "x") / _width_mm(ct, "x") == pytest.approx(1.10, abs=0.03)
    assert _width_mm(wide, "y") / _width_mm(ct, "y") == pytest.approx(1.0, abs=0.03)
    deep, _, _ = deform(ct, lab, DeformationParams(seed=0, scale_ap=0.92), check=False)
    assert _width_mm(deep, "y") / _width_mm(ct, "y") == pytest.approx(0.92, abs=0.03)
    assert _width_mm(deep, "x") / _width_mm(ct, "x") == pytest.approx(1.0, abs=0.03)


def test_shoulder_elevation_moves_that_clavicle_up(torso):
    ct, lab = torso
    p = DeformationParams(seed=0, shoulder_left_mm=(0.0, 0.0, 10.0))
    _, new_lab, _ = deform(ct, lab, p, check=False)
    dl = centroid_mm(new_lab, LEFT) - centroid_mm(lab, LEFT)
    dr = centroid_mm(new_lab, RIGHT) - centroid_mm(lab, RIGHT)
    assert 5.0 < dl[2] < 12.0  # elevated (superior = +z), by about the commanded 10 mm
    assert abs(dl[0]) < 2.5 and abs(dl[1]) < 2.5
    assert np.all(np.abs(dr) < 2.5)  # the other side stays
    # protraction (anterior = −y) of the right shoulder
    p = DeformationParams(seed=0, shoulder_right_mm=(0.0, -8.0, 0.0))
    _, new_lab, _ = deform(ct, lab, p, check=False)
    assert (centroid_mm(new_lab, RIGHT) - centroid_mm(lab, RIGHT))[1] < -3.0


def test_warp_equals_resample_with_transform(torso):
    """deform() resamples with sitk.Warp for speed; it must equal sitk.Resample with its transform."""
    ct, lab = torso
    cfg = CohortConfig(outside="air")
    p = sample_params(3, cfg)
    new_ct, new_lab, _ = deform(ct, lab, p, cfg, check=False)
    tx, _ = deformation_transform(ct, lab, p, cfg)
    ref_ct = sitk.GetArrayFromImage(sitk.Resample(ct.to_sitk(), ct.to_sitk(), tx, sitk.sitkLinear, -1000.0))
    ref_lab = sitk.GetArrayFromImage(sitk.Resample(lab.to_sitk(), lab.to_sitk(), tx, sitk.sitkNearestNeighbor, 0))
    np.testing.assert_allclose(new_ct.array, ref_ct, atol=1e-3)
    assert np.array_equal(new_lab.array, ref_lab)


def _rotated_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("outside", ["air", "continue_si"])
@pytest.mark.parametrize("direction", [np.eye(3), _rotated_z(25.0)])
def test_labels_are_warped_only_where_they_can_land_with_the_whole_grid_result(outside, direction):
    """deform() warps the label map inside the output box its non-zero voxels can reach through the
    coarse field (xrlib.anatomy.warp.reach_box, then warp with that box) and fills 0 elsewhere: voxel for voxel the warp of the
    whole grid, with a box smaller than the grid when the labels are small."""
    ct, lab = make_torso(direction)
    clavicles = lab.with_array(np.where(np.isin(lab.array, (LEFT, RIGHT)), lab.array, 0).astype(np.uint8))
    cfg = CohortConfig(outside=outside)
    grid = (ct.shape_ijk, ct.origin, ct.spacing, tuple(float(d) for d in np.asarray(ct.direction).ravel()))
    axes = {"air": [], "continue_si": [ct.si_axis]}[outside]
    for seed in (3, 8):
        p = sample_params(seed, cfg)
        field, u, _ = deformation._displacement_field(ct, clavicles, p, cfg)
        for labels in (clavicles, lab):
            src = deformation._continued(labels, axes, u)
            whole = sitk.GetArrayFromImage(sitk.Warp(src.to_sitk(), field, sitk.sitkNearestNeighbor, *grid, 0.0))
            region = reach_box(field, u, src, ct)
            boxed = warp(src, field, u, ct, linear=False, fill=0, box=region)
            assert np.array_equal(boxed, whole) and whole.any() and boxed.dtype == labels.array.dtype
        first, last = reach_box(field, u, deformation._continued(clavicles, axes, u), ct)
        assert np.prod(last - first) < 0.6 * np.prod(ct.shape_ijk)  # the bars' box, not the whole grid
        assert np.array_equal(deform(ct, clavicles, p, cfg, check=False)[1].array,
                              sitk.GetArrayFromImage(sitk.Warp(deformation._continued(clavicles, axes, u).to_sitk(),
                                                               field, sitk.sitkNearestNeighbor, *grid, 0.0)))
    empty = clavicles.with_array(np.zeros_like(clavicles.array))
    assert reach_box(field, u, empty, ct) is None
    assert not deform(ct, empty, p, cfg, check=False)[1].array.any()


def test_outside_modes(torso):
    """What output voxels get whose source point is outside the source grid."""
    ct, lab = torso
    full = ct.with_array(np.full_like(ct.array, BODY_HU))  # body everywhere, cut by all six faces
    shrink = DeformationParams(seed=0, scale_lr=0.9, scale_ap=0.9, scale_si=0.9)
    res = {m: deform(full, lab, shrink, CohortConfig(outside=m), check=False)[0].array for m in ("air", "continue_si", "edge")}
    mid = (slice(5, -5), slice(5, -5), slice(5, -5))
    for arr in res.values():
        np.testing.assert_allclose(arr[mid], BODY_HU, atol=1e-3)
    # air: air pulled in through every face
    assert np.all(res["air"][[0, -1]] == -1000.0) and np.all(res["air"][:, :, [0, -1]] == -1000.0)
    # continue_si (default): the superior/inferior cut stays at the faces, in-plane air
    assert CohortConfig().outside == "continue_si"
    np.testing.assert_allclose(res["continue_si"][[0, -1], 10:-10, 10:-10], BODY_HU, atol=1e-3)
    assert np.all(res["continue_si"][:, :, [0, -1]] == -1000.0) and np.all(res["continue_si"][:, [0, -1], :] == -1000.0)
    # edge: continued everywhere
    np.testing.assert_allclose(res["edge"], BODY_HU, atol=1e-3)
    # the label map is continued consistently: a clavicle cut by the top face stays cut there
    top = lab.with_array(np.where(np.arange(lab.array.shape[0])[:, None, None] >= 28, lab.array.max(0), 0).astype(np.uint8))
    down = DeformationParams(seed=0, shoulder_left_mm=(0.0, 0.0, -10.0), shoulder_right_mm=(0.0, 0.0, -10.0))
    _, lab_c, _ = deform(ct, top, down, CohortConfig(outside="continue_si"), check=False)
    _, lab_a, _ = deform(ct, top, down, CohortConfig(outside="air"), check=False)
    assert np.count_nonzero(lab_c.array[-1] == LEFT) == np.count_nonzero(top.array[-1] == LEFT)
    assert np.count_nonzero(lab_a.array[-1] == LEFT) < np.count_nonzero(top.array[-1] == LEFT)


def test_deform_rejects_mismatched_grids(torso):
    ct, lab = torso
    other = Volume(lab.array[:-1], lab.spacing, lab.origin, lab.direction, source="bad-labels")
    with pytest.raises(InputError, match="bad-labels"):
        deform(ct, other, DeformationParams.identity())


# ------------------------------------------------------------------ cohort on disk


def _mtimes(out: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


def test_build_cohort_writes_manifest_and_is_idempotent(tmp_path, torso):
    ct, lab = torso
    ct_b, lab_b = make_torso(direction=np.diag([1.0, -1.0, 1.0]))
    cfg = CohortConfig(n_subjects=2, seed=3)
    out = tmp_path / "cohort"
    df = cohort.build_cohort([("torso", ct, lab), ("torso_b", ct_b, lab_b)], cfg, out, progress=False)

    assert list(df["subject"]) == ["torso-v000", "torso-v001", "torso_b-v000", "torso_b-v001"]
    assert list(df["source"]) == ["torso", "torso", "torso_b", "torso_b"]
    manifest = pd.read_csv(out / "cohort.csv")
    assert len(manifest) == 4 and manifest["subject"].is_unique
    param_cols = set(sample_params(0, cfg).to_dict())
    stat_cols = {"min_jacobian", "nonrigid_factor", "clavicle_left_ml_before", "clavicle_left_ml_after",
                 "clavicle_left_volume_ratio", "clavicle_right_volume_ratio"}
    assert param_cols | stat_cols | {"ct_path", "labels_path", "attempt"} <= set(manifest.columns)
    for _, row in manifest.iterrows():
        assert (out / row["ct_path"]).is_file() and (out / row["labels_path"]).is_file()
        seed = deformation.subject_seed(cfg.seed, row["source"], row["index"], row["attempt"])
        assert row["seed"] == seed
        assert DeformationParams.from_dict(row) == sample_params(seed, cfg)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or ".part" in p.name]

    # reload equals a fresh deformation (CT stored as integer HU)
    row = manifest.iloc[1]
    v_ct, v_lab = cohort.load_subject(out, row["subject"])
    ref_ct, ref_lab, _ = deform(ct, lab, DeformationParams.from_dict(row), cfg)
    assert v_ct.same_grid(ct)
    np.testing.assert_allclose(v_ct.array, ref_ct.array, atol=0.5 + 1e-3)
    assert np.array_equal(v_lab.array, ref_lab.array)

    # second call: nothing rewritten
    before = _mtimes(out)
    time.sleep(0.01)
    df2 = cohort.build_cohort([("torso", ct, lab), ("torso_b", ct_b, lab_b)], cfg, out, progress=False)
    assert _mtimes(out) == before
    pd.testing.assert_frame_equal(df, df2)

    # a deleted file and a corrupted file are rebuilt, the rest untouched
    (out / "torso-v001" / "labels.nii.gz").unlink()
    (out / "torso_b-v000" / "ct.nii.gz").write_bytes(b"garbage")
    cohort.build_cohort([("torso", ct, lab), ("torso_b", ct_b, lab_b)], cfg, out, progress=False)
    after = _mtimes(out)
    assert (out / "torso-v001" / "labels.nii.gz").is_file()
    assert after[out / "torso-v000" / "ct.nii.gz"] == before[out / "torso-v000" / "ct.nii.gz"]
    assert after[out / "torso_b-v001" / "ct.nii.gz"] == before[out / "torso_b-v001" / "ct.nii.gz"]
    v_ct, _ = cohort.load_subject(out, "torso_b-v000")
    assert v_ct.same_grid(ct_b)
    assert len(pd.read_csv(out / "cohort.csv")) == 4

    # a changed configuration rebuilds
    cfg2 = CohortConfig(n_subjects=1, seed=3, bspline_std_mm=3.0)
    df3 = cohort.build_cohort([("torso", ct, lab)], cfg2, out, progress=False)
    assert list(df3["subject"]) == ["torso-v000"] and df3.loc[0, "bspline_std_mm"] == 3.0
    assert _mtimes(out)[out / "torso-v000" / "ct.nii.gz"] != before[out / "torso-v000" / "ct.nii.gz"]


def test_build_cohort_redraws_implausible_subjects(tmp_path, torso):
    ct, lab = torso
    # a narrow band that many draws miss: the accepted attempt is recorded and reproducible
    cfg = CohortConfig(n_subjects=3, seed=0, clavicle_volume_band=(0.93, 1.07), max_attempts=50)
    df = cohort.build_cohort([("torso", ct, lab)], cfg, tmp_path, progress=False)
    assert (df["clavicle_left_volume_ratio"].between(0.93, 1.07)).all()
    assert df["attempt"].max() > 0
    with pytest.raises(deformation.DeformationError, match="no acceptable deformation"):
        cohort.build_cohort([("torso", ct, lab)], CohortConfig(n_subjects=1, clavicle_volume_band=(0.9999, 1.0001),
                                                               max_attempts=2), tmp_path / "x", progress=False)


def test_interrupted_write_leaves_nothing_complete(tmp_path, torso, monkeypatch):
    ct, lab = torso
    real_write = sitk.WriteImage

    def failing_write(img, path, *args, **kwargs):
        real_write(img, path, *args, **kwargs)
        with open(path, "r+b") as fh:  # a half-written file…
            fh.truncate(100)
        raise KeyboardInterrupt  # …and the build is interrupted

    monkeypatch.setattr(cohort.sitk, "WriteImage", failing_write)
    with pytest.raises(KeyboardInterrupt):
        cohort.build_cohort([("torso", ct, lab)], CohortConfig(n_subjects=1), tmp_path, progress=False)
    monkeypatch.undo()
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert "ct.nii.gz" not in files and not [f for f in files if ".tmp-" in f]
    df = cohort.build_cohort([("torso", ct, lab)], CohortConfig(n_subjects=1), tmp_path, progress=False)
    assert (tmp_path / df.loc[0, "ct_path"]).is_file()


def test_build_cohort_rejects_bad_source_names(tmp_path, torso):
    ct, lab = torso
    with pytest.raises(InputError, match="source name"):
        cohort.build_cohort([("../evil", ct, lab)], CohortConfig(n_subjects=1), tmp_path, progress=False)
    with pytest.raises(InputError, match="duplicate"):
        cohort.build_cohort([("a", ct, lab), ("a", ct, lab)], CohortConfig(n_subjects=1), tmp_path, progress=False)


# ------------------------------------------------------------------ cache keys and executors

#: Manifest columns written by the code before the split into deformation/cohort/sources (dea4f93).
MANIFEST_COLUMNS = [
    "subject", "source", "index", "attempt", "seed", "scale_lr", "scale_ap", "scale_si", "bspline_nodes_lr",
    "bspline_nodes_ap", "bspline_nodes_si", "bspline_std_mm", "shoulder_left_dx_mm", "shoulder_left_dy_mm",
    "shoulder_left_dz_mm", "shoulder_right_dx_mm", "shoulder_right_dy_mm", "shoulder_right_dz_mm",
    "shoulder_sigma_mm", "min_jacobian", "max_jacobian", "nonrigid_factor", "max_nonrigid_displacement_mm",
    "scale_centre_x_mm", "scale_centre_y_mm", "scale_centre_z_mm", "shoulder_left_applied",
    "shoulder_right_applied", "clavicle_left_ml_before", "clavicle_left_ml_after", "clavicle_left_volume_ratio",
    "clavicle_right_ml_before", "clavicle_right_ml_after", "clavicle_right_volume_ratio", "clavicle_volume_ok",
    "seconds", "ct_path", "labels_path", "ct_sha256", "labels_sha256", "config_hash", "source_hash",
]


def tiny_torso():
    return make_torso(shape_ijk=(24, 20, 16), spacing=(8.0, 8.0, 10.0))


def test_cache_keys_unchanged():
    """Values computed with the code at dea4f93: a quick build made before the split keeps its cohort."""
    from xrlib.core.profiles import load_profile

    import dataclasses

    quick = CohortConfig.from_profile(load_profile("quick"))
    assert (quick.n_subjects, quick.seed) == (28, 0)          # the quick cohort grew from 16 subjects (test pools)
    assert dataclasses.replace(quick, n_subjects=16).fingerprint() == "9f0915e784179eb5"  # the rest of its key kept
    assert CohortConfig(n_subjects=2, seed=3).fingerprint() == "92cfb27084454925"
    assert cohort._source_fingerprint(*tiny_torso()) == "f540d8684282f4e9"
    assert cohort._source_fingerprint(*make_torso(direction=np.diag([1.0, -1.0, 1.0]))) == "b9b528a24324eebe"


def test_subject_id():
    assert cohort.subject_id("example", 3) == "example-v003"
    assert cohort.subject_id("a.b", 120) == "a.b-v120"


def test_process_pool_gives_the_same_cohort(tmp_path):
    """The process-pool executor writes the same files (checksums) and manifest as the in-process one."""
    from xrlib.exec import InProcessExecutor, ProcessPoolExecutor

    ct, lab = tiny_torso()
    cfg = CohortConfig(n_subjects=2, seed=3)
    local = cohort.build_cohort([("torso", ct, lab)], cfg, tmp_path / "local", progress=False,
                                executor=InProcessExecutor())
    pool = cohort.build_cohort([("torso", ct, lab)], cfg, tmp_path / "pool", progress=False,
                               executor=ProcessPoolExecutor(workers=2))
    assert list(local.columns) == MANIFEST_COLUMNS
    assert list(local["subject"]) == ["torso-v000", "torso-v001"]
    cols = [c for c in MANIFEST_COLUMNS if c != "seconds"]
    pd.testing.assert_frame_equal(local[cols], pool[cols])
    for rel in [*local["ct_path"], *local["labels_path"]]:
        assert sha256_file(tmp_path / "pool" / rel) == sha256_file(tmp_path / "local" / rel)


def test_interrupted_build_keeps_collected_subjects(tmp_path, monkeypatch):
    """The driver writes cohort.csv after each collected subject: a build stopped later resumes there."""
    ct, lab = tiny_torso()
    cfg = CohortConfig(n_subjects=2, seed=3)
    real_run = cohort.SubjectTask.run

    def run_or_stop(task):
        if task.index == 1:
            raise KeyboardInterrupt
        return real_run(task)

    monkeypatch.setattr(cohort.SubjectTask, "run", run_or_stop)
    with pytest.raises(KeyboardInterrupt):
        cohort.build_cohort([("torso", ct, lab)], cfg, tmp_path, progress=False)
    monkeypatch.undo()
    assert list(pd.read_csv(tmp_path / "cohort.csv")["subject"]) == ["torso-v000"]
    first = (tmp_path / "torso-v000" / "ct.nii.gz").stat().st_mtime_ns
    df = cohort.build_cohort([("torso", ct, lab)], cfg, tmp_path, progress=False)
    assert list(df["subject"]) == ["torso-v000", "torso-v001"]
    assert (tmp_path / "torso-v000" / "ct.nii.gz").stat().st_mtime_ns == first


# ------------------------------------------------------------------ sources from a folder


def test_sources_from_folder(tmp_path, torso):
    ct, lab = torso
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "alpha.nii.gz"))
    sitk.WriteImage(lab.to_sitk(), str(tmp_path / "alpha_labels.nii.gz"))
    (tmp_path / "labels").mkdir()
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "beta.mha"))
    sitk.WriteImage(lab.to_sitk(), str(tmp_path / "labels" / "beta.mha"))
    (tmp_path / "notes.txt").write_text("not a CT")
    found = sources.sources_from_folder(tmp_path)
    assert [name for name, _, _ in found] == ["alpha", "beta"]
    for _, c, l in found:
        assert c.same_grid(l) and np.array_equal(l.array, lab.array)
        np.testing.assert_allclose(c.array, ct.array)

    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "gamma.nrrd"))
    with pytest.raises(InputError, match="gamma.nrrd: no label map found"):
        sources.sources_from_folder(tmp_path)


def test_sources_from_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(InputError) as exc:
        sources.sources_from_folder(tmp_path)
    assert str(exc.value) == f"{tmp_path}: no CT volumes (.nii, .nii.gz, .nrrd, .mha) found"
    with pytest.raises(InputError, match="no such directory"):
        sources.sources_from_folder(tmp_path / "missing")


def test_sources_from_folder_validates_ct(tmp_path, torso):
    ct, lab = torso
    raw = ct.with_array(ct.array + 1024.0)  # stored values without rescale: no air
    sitk.WriteImage(raw.to_sitk(), str(tmp_path / "raw.nii"))
    sitk.WriteImage(lab.to_sitk(), str(tmp_path / "raw_labels.nii"))
    with pytest.raises(InputError, match="raw.nii: .*Hounsfield"):
        sources.sources_from_folder(tmp_path)


# ------------------------------------------------------------------ the real example CT


@pytest.mark.slow
def test_deform_example_ct_once():
    from xrlib.core.ct import load_example

    ct, lab = load_example()
    cfg = CohortConfig()
    t0 = time.perf_counter()
    new_ct, new_lab, stats = deform(ct, lab, sample_params(deformation.subject_seed(0, "example", 0), cfg), cfg, check=False)
    seconds = time.perf_counter() - t0
    print(f"\nexample CT 512×512×133: deform took {seconds:.1f} s; stats {stats}")
    assert new_ct.array.shape == ct.array.shape and new_ct.same_grid(ct) and new_lab.same_grid(lab)
    assert stats["min_jacobian"] > cfg.jacobian_floor
    assert set(np.unique(new_lab.array)) <= set(np.unique(lab.array))


def test_nifti_files_are_itk_nifti_in_a_reproducible_gzip(tmp_path):
    """write_image_atomic's .nii.gz: ITK's own NIfTI bytes (header and voxels) in a standard gzip stream
    with no name or time in it, so equal images give equal files; a failed write leaves nothing."""
    import gzip

    import nibabel as nib

    from xrlib.core.atomic import write_image_atomic

    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray(rng.integers(-1000, 2000, (9, 11, 13)).astype(np.int16))
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((-10.0, 20.0, -30.0))
    img.SetDirection(tuple(_rotated_z(20.0).ravel()))
    write_image_atomic(tmp_path / "a.nii.gz", img)
    write_image_atomic(tmp_path / "b.nii.gz", img)
    sitk.WriteImage(img, str(tmp_path / "itk.nii"), False)
    data = (tmp_path / "a.nii.gz").read_bytes()
    assert data == (tmp_path / "b.nii.gz").read_bytes()
    assert gzip.decompress(data) == (tmp_path / "itk.nii").read_bytes()
    back = sitk.ReadImage(str(tmp_path / "a.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    assert np.allclose(back.GetDirection(), img.GetDirection()) and np.allclose(back.GetOrigin(), img.GetOrigin())
    assert nib.load(tmp_path / "a.nii.gz").shape == (13, 11, 9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz", "itk.nii"]  # no temporaries
    with pytest.raises(TypeError):
        write_image_atomic(tmp_path / "c.nii.gz", "not an image")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz", "itk.nii"]
