"""Rendering radiographs and clavicle masks, and the `xrlib render` command."""

import json
import subprocess
import sys

import numpy as np
import pytest

from xrlib.drr import materials as mat
from xrlib.drr import physics as phys
from xrlib.anatomy.annotate import clavicles_from_labels
from xrlib.cli import main
from xrlib.core.ct import Volume, crop_to_support, load_example
from xrlib.drr.geometry import Geometry, Pose
from xrlib.drr.render import render, render_batch

ALPHAS = [float(a) for a in range(-20, 21, 2)]


@pytest.fixture(scope="module")
def example():
    ct, labels = load_example()
    return ct, clavicles_from_labels(labels)


@pytest.fixture(scope="module")
def example_batch(example):
    ct, clav = example
    return render_batch(ct, clav, Geometry().resized(96), [Pose(alpha=a) for a in ALPHAS], backend="rtk")


def test_clavicle_masks_are_non_empty_at_all_21_angles_and_on_the_correct_sides(example_batch):
    for rg in example_batch:
        assert rg.mask_left.sum() > 10 and rg.mask_right.sum() > 10, rg.meta["pose"]
        cols = np.arange(rg.image.shape[1])
        left_col = (rg.mask_left.sum(0) * cols).sum() / rg.mask_left.sum()
        right_col = (rg.mask_right.sum(0) * cols).sum() / rg.mask_right.sum()
        centre = (rg.image.shape[1] - 1) / 2
        # The patient's left clavicle appears on the image's right (display convention).
        assert right_col < centre < left_col
        # Clavicles lie in the upper part of a chest radiograph.
        rows = np.nonzero(rg.mask)[0]
        assert rows.mean() < rg.image.shape[0] / 2


def test_fov_modes_keep_image_and_masks_cut_at_the_same_place(example):
    ct, clav = example
    g = Geometry().resized(96)
    rg = {fov: render(ct, clav, g, Pose(alpha=6.0), backend="rtk", fov=fov) for fov in ("pad", "collimate", "none")}
    for r in rg.values():
        assert not r.image[~r.field].any() and not r.mask[~r.field].any()
    assert rg["none"].field.all()
    # collimate: rays crossing the superior face are cut; the clavicles rise above the top slice,
    # so most of their projection is lost (the reason the default pads instead).
    assert 0.5 < rg["collimate"].field.mean() < 0.95
    assert not rg["collimate"].field[:3, 30:66].any()
    assert rg["collimate"].mask.sum() < 0.7 * rg["none"].mask.sum()
    # pad: the field reaches the top rows and the masks equal the raw projection of the (cut) labels
    # (up to a few pixels where the label touched the old top face, now interpolated towards zero).
    assert rg["pad"].field[:3, 30:66].all()
    differ = rg["pad"].mask != (rg["none"].mask & rg["pad"].field)
    assert differ.sum() <= 0.05 * rg["pad"].mask.sum()
    # ...and the band above the cut sees the padded soft tissue instead of partial ray sums.
    band = (slice(0, 4), slice(30, 66))
    assert rg["pad"].image[band].mean() > rg["none"].image[band].mean() + 0.5
    assert rg["pad"].meta["fov"] == "pad" and rg["pad"].meta["pad_mm"] == 80.0


def test_pad_superior_keeps_the_original_voxels_in_place(example):
    from xrlib.drr.render import pad_superior

    ct, clav = example
    padded, (left,) = pad_superior(ct, [clav.left], pad_mm=10.0)
    assert padded.array.shape == (133 + 4, 512, 512) and left.array.shape == padded.array.shape
    assert np.array_equal(padded.array[:133], ct.array) and not left.array[133:].any()
    assert np.allclose(padded.index_to_world, ct.index_to_world)
    assert set(np.unique(padded.array[133:])) <= {-1000.0, 40.0}


def test_mask_threshold_is_a_path_length(example):
    ct, clav = example
    g = Geometry().resized(64)
    thin = render(ct, clav, g, backend="rtk", mask_threshold_mm=0.5).mask.sum()
    thick = render(ct, clav, g, backend="rtk", mask_threshold_mm=8.0).mask.sum()
    assert 0 < thick < thin


def slab_phantom(thickness_mm: float, hu: float = 0.0) -> Volume:
    """A wide slab of uniform HU, ``thickness_mm`` thick along y (the beam), in air; 2 mm voxels."""
    ny = 64
    arr = np.full((40, ny, 40), -1000.0, np.float32)
    n = int(round(thickness_mm / 2.0))
    arr[:, (ny - n) // 2 : (ny - n) // 2 + n, :] = hu
    return Volume(arr, (6.0, 2.0, 6.0), (-117.0, -63.0, -117.0), np.eye(3))


def test_display_option_returns_the_postprocessed_image_and_keeps_the_raw_one():
    slab = slab_phantom(60.0)
    g = Geometry(height=9, width=9, pitch=4.0)
    raw = render(slab, None, g, physics="naive", backend="rtk", fov="none")
    shown = render(slab, None, g, physics="naive", backend="rtk", fov="none", display=True)
    assert raw.display is None
    np.testing.assert_array_equal(shown.image, raw.image)
    np.testing.assert_array_equal(shown.display, phys.postprocess(raw.image, raw.field, pitch_mm=g.pitch))
    assert shown.display.dtype == np.float32 and 0 <= shown.display.min() and shown.display.max() <= 1


def test_naive_line_integral_of_a_water_slab_matches_beer_lambert_geometry():
    slab = slab_phantom(60.0)
    g = Geometry(height=9, width=9, pitch=4.0)
    rg = render(slab, None, g, physics="naive", backend="rtk", fov="none")
    mu = mat.mu_water_per_mm(60.0)
    # The central ray is perpendicular to the slab: its line integral is mu * thickness.
    assert rg.image[4, 4] == pytest.approx(mu * 60.0, rel=1e-3)
    # Oblique rays cross 60 mm / cos(theta) of water.
    cos = g.sdd / np.hypot(g.sdd, 4 * 4.0)
    assert rg.image[4, 8] == pytest.approx(mu * 60.0 / cos, rel=2e-3)


def test_realistic_noiseless_slab_matches_the_spectral_beer_lambert_integral():
    slab = slab_phantom(100.0)
    g = Geometry(height=8, width=8, pitch=2.0)
    params = phys.RealisticParams(quantum_noise=False, electronic_noise=0.0, blur_sigma_mm=0.0, scatter_to_primary=0.0)
    rg = render(slab, None, g, physics="realistic", realistic=params, backend="rtk", fov="none")
    spec = phys.tube_spectrum(params.kvp, params.filtration_mm_al)
    e = spec.energies_kev
    weight = spec.fluence * e * phys.DetectorModel().efficiency(e)
    rho = mat.material_densities(np.array([0.0]))["soft_tissue"][0]
    path_cm = 10.0 / np.cos(np.arctan(np.hypot(1.0, 1.0) * 2.0 / g.sdd))  # ray through pixel (3,3)/(4,4)
    expected = -np.log(np.sum(weight * np.exp(-phys.mass_attenuation("soft_tissue", e) * rho * path_cm)) / weight.sum())
    assert rg.image[3, 3] == pytest.approx(expected, rel=0.01)


def test_realistic_render_is_deterministic_with_a_seed(example):
    ct, clav = example
    g = Geometry().resized(48)
    a = render(ct, clav, g, physics="realistic", seed=3, backend="rtk").image
    b = render(ct, clav, g, physics="realistic", seed=3, backend="rtk").image
    c = render(ct, clav, g, physics="realistic", seed=4, backend="rtk").image
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_physics_levels_differ_and_bone_is_bright(example):
    ct, clav = example
    g = Geometry().resized(64)
    imgs = {p: render(ct, clav, g, physics=p, backend="rtk") for p in ("naive", "heuristic", "realistic")}
    assert not np.allclose(imgs["naive"].image, imgs["heuristic"].image)
    for rg in imgs.values():
        inside = rg.field & (rg.image > 0)
        assert rg.image[rg.mask.astype(bool)].mean() > np.median(rg.image[inside])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(physics="xray"), "unknown physics 'xray'"),
        (dict(fov="crop"), "unknown fov mode 'crop'"),
        (dict(mask_threshold_mm=0.0), "mask threshold must be positive"),
    ],
)
def test_render_bad_arguments(example, kwargs, message):
    ct, clav = example
    with pytest.raises(ValueError, match=message):
        render(ct, clav, Geometry().resized(8), **kwargs)


# ---------------------------------------------------------------- the `xrlib render` command


def test_cli_render_example_writes_the_contract(tmp_path, capsys):
    out = tmp_path / "sub" / "r.npz"
    rc = main(["render", "--example", "--alpha", "10", "--size", "64", "--pitch", "6.75", "--out", str(out)])
    assert rc == 0
    with np.load(out) as z:
        assert z["image"].dtype == np.float32 and z["image"].shape == (64, 64)
        for key in ("mask", "mask_left", "mask_right"):
            assert z[key].dtype == np.uint8 and z[key].shape == (64, 64)
        assert np.array_equal(z["mask"], z["mask_left"] | z["mask_right"])
        meta = json.loads(str(z["meta"]))
    assert meta["pose"]["alpha"] == 10.0 and meta["physics"] == "naive"
    assert meta["geometry"] == {"sid": 1500.0, "sdd": 1800.0, "height": 64, "width": 64, "pitch": 6.75}
    assert meta["backend"] == "rtk" and "itk-rtk" in meta["versions"]
    assert not list(out.parent.glob(".*part*"))


def test_cli_render_user_ct_without_labels_has_no_masks(tmp_path):
    ct, _ = load_example()
    small = Volume(ct.array[::4, ::8, ::8].copy(), (5.625, 5.625, 10.0), ct.origin, ct.direction)
    path = tmp_path / "ct.nrrd"
    import SimpleITK as sitk

    sitk.WriteImage(small.to_sitk(), str(path))
    out = tmp_path / "r.npz"
    assert main(["render", "--ct", str(path), "--alpha", "0", "--size", "32", "--pitch", "13.5",
                 "--physics", "heuristic", "--out", str(out)]) == 0
    with np.load(out) as z:
        assert "mask" not in z.files and z["image"].max() > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--example", "--alpha", "0", "--size", "0", "--pitch", "1", "--out", "x.npz"], "--size must be positive"),
        (["--example", "--alpha", "nan", "--size", "8", "--pitch", "1", "--out", "x.npz"], "--alpha must be finite"),
        (["--example", "--alpha", "0", "--size", "8", "--pitch", "-1", "--out", "x.npz"], "--pitch must be positive"),
        (["--example", "--alpha", "0", "--size", "8", "--pitch", "1", "--out", "x.png"], "--out must end with .npz"),
        (["--example", "--alpha", "0", "--size", "8", "--pitch", "1", "--sdd", "1000", "--out", "x.npz"],
         "--sdd (1000 mm) must exceed --sod (1500 mm)"),
        (["--alpha", "0", "--size", "8", "--pitch", "1", "--out", "x.npz"], "one of the arguments --example --ct is required"),
        (["--example", "--alpha", "0", "--size", "8", "--pitch", "1", "--physics", "xray", "--out", "x.npz"],
         "invalid choice: 'xray'"),
        (["--ct", "/nonexistent/ct.nii.gz", "--alpha", "0", "--size", "8", "--pitch", "1", "--out", "x.npz"],
         "/nonexistent/ct.nii.gz: no such file or directory"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["render", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.npz"))


def test_python_dash_m_entry_point_reports_usage_errors():
    res = subprocess.run([sys.executable, "-m", "xrlib", "render", "--example"], capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert res.returncode == 2
    assert "the following arguments are required" in res.stderr


@pytest.mark.parametrize("fov", ["pad", "none"])
def test_cropped_mask_channels_integrate_exactly_as_the_ct_sized_padded_masks(example, fov):
    """mask_channel crops the uint8 mask before converting and padding it; the projections are bit-identical."""
    from xrlib.drr.projector import get_projector
    from xrlib.drr.render import mask_channel, pad_superior

    ct, clav = example
    geom, poses, proj = Geometry().resized(64), [Pose(alpha=7.0, tilt=2.0), Pose(alpha=-20.0)], get_projector("rtk")
    full = [m.with_array(m.array.astype(np.float32)) for m in (clav.left, clav.right)]
    if fov == "pad":
        _, full = pad_superior(ct, full)
    want = proj.project(full, geom, poses, ct.center)
    got = proj.project([mask_channel(m, fov) for m in (clav.left, clav.right)], geom, poses, ct.center)
    np.testing.assert_array_equal(got, want)
    assert want.max() > 5.0  # the clavicles are in view
    empty = mask_channel(clav.left.with_array(np.zeros_like(clav.left.array)), fov)
    assert empty.array.shape == (1, 1, 1) and not empty.array.any()


def _stripes(hu_on: float = 0.0) -> Volume:
    """Water columns one voxel wide at even i, alternating with air along i (LR), inside an air
    margin: 1 × 1 × 3 mm voxels, 63 along i so that the central rays (2 mm apart at the default
    isocenter, the grid centre) pass through the columns."""
    arr = np.full((20, 64, 63), -1000.0, np.float32)
    arr[2:-2, 4:-4, 4:-4:2] = hu_on
    return Volume(arr, (1.0, 1.0, 3.0), (-31.0, -31.5, -28.5), np.eye(3))


def test_prefilter_factors_are_voxels_per_pixel_at_the_isocenter(example):
    from xrlib.drr.render import detector_prefilter_factors

    ct, _ = example  # 0.70 × 0.70 × 2.5 mm
    quick = Geometry(height=256, width=256, pitch=432.0 / 256)  # 1.41 mm per pixel at the isocenter
    assert detector_prefilter_factors(ct, quick) == (2, 2, 1)
    assert detector_prefilter_factors(ct, Geometry()) == (1, 1, 1)  # the paper's 0.20 mm
    assert detector_prefilter_factors(_stripes(), Geometry(height=8, width=8, pitch=2.4 * 3)) == (6, 6, 2)


def test_prefilter_turns_sub_pixel_stripes_into_their_mean_instead_of_aliasing():
    """Stripes finer than a pixel project exactly as a uniform volume of their mean; unfiltered, they alias."""
    g = Geometry(height=24, width=24, pitch=2.4)  # 2 mm per pixel at the isocenter: blocks of 2 × 2 × 1 voxels
    stripes = _stripes()
    mean = stripes.array.copy()
    mean[2:-2, 4:-4, 4:60] = -500.0  # the water-air mean of every pair of columns (i = 4, 5 … 58, 59)
    mean = stripes.with_array(mean)
    kw = dict(physics="naive", backend="rtk", fov="none")
    filtered = render(stripes, None, g, prefilter=True, **kw).image
    np.testing.assert_array_equal(filtered, render(mean, None, g, prefilter=True, **kw).image)
    raw = render(stripes, None, g, **kw).image  # the default: unfiltered
    # Unfiltered, each ray samples the columns at its own phase: a moiré across the detector.
    inner = (slice(4, -4), slice(4, -4))  # pixels whose rays cross the stripes over their whole depth
    assert np.ptp(raw[inner]) / raw[inner].mean() > 0.05 and np.ptp(filtered[inner]) / filtered[inner].mean() < 1e-3


def test_physics_channels_on_their_supports_are_the_crops_of_the_full_channels(example):
    from xrlib.drr.render import pad_superior, physics_channels

    ct = example[0]  # every other slice and third voxel: 1.5 M voxels, the compiled passes still
    ct = pad_superior(Volume(ct.array[::2, ::3, ::3].copy(), (2.1, 2.1, 5.0), ct.origin, ct.direction), [])[0]
    for level in ("naive", "heuristic", "realistic"):
        full, names = physics_channels(ct, level)
        for margin in (1, 2):
            crops, crop_names = physics_channels(ct, level, support_margin=margin)
            assert crop_names == names
            for f, c in zip(full, crops):
                want = crop_to_support(f, margin)
                np.testing.assert_array_equal(c.array, want.array)
                np.testing.assert_allclose(c.origin, want.origin, rtol=0, atol=1e-9)
                assert c.spacing == f.spacing and np.array_equal(c.direction, f.direction)


def test_by_default_the_physics_channels_are_projected_as_they_are(example):
    from xrlib.drr.projector import get_projector
    from xrlib.drr.render import pad_superior, physics_channels, project_levels

    ct, _ = example
    geom, poses = Geometry(height=48, width=48, pitch=432.0 / 256), [Pose(alpha=5.0)]  # the quick pitch
    rtk = get_projector("rtk")
    small = Volume(ct.array[::2, ::3, ::3].copy(), (2.1, 2.1, 5.0), ct.origin, ct.direction)
    levels = ("naive", "heuristic", "realistic")
    got = project_levels(small, None, geom, poses, levels, "rtk").stack  # channels made on their supports
    padded = pad_superior(small, [])[0]
    want = np.concatenate([rtk.project(physics_channels(padded, lv)[0], geom, poses, small.center) for lv in levels], 1)
    assert got.shape == (1, 6, 48, 48)
    np.testing.assert_array_equal(got, want)
    got = project_levels(ct, None, geom, poses, ("naive",), "rtk").stack
    want = rtk.project(physics_channels(pad_superior(ct, [])[0], "naive")[0], geom, poses, ct.center)
    np.testing.assert_array_equal(got, want)
    filtered = project_levels(ct, None, geom, poses, ("naive",), "rtk", prefilter=True).stack
    assert 0 < np.abs(filtered - want).max() and np.linalg.norm(filtered - want) / np.linalg.norm(want) < 0.05
