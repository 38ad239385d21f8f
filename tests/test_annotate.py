"""Tests of xrlib.anatomy.annotate: masks from label maps, TotalSegmentator weight detection, no downloads."""

from __future__ import annotations

import os
import re
import socket
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import totalsegmentator.libs
import totalsegmentator.python_api as ts_api

from xrlib.anatomy.annotate import (
    ClavicleMasks,
    annotate,
    clavicles_from_labels,
    totalsegmentator_weights_dir,
    totalsegmentator_weights_status,
)
from xrlib.core.ct import CLAVICLE_LEFT_LABEL as LEFT
from xrlib.core.ct import CLAVICLE_RIGHT_LABEL as RIGHT
from xrlib.core.ct import Volume, load_example
from xrlib.core.errors import InputError, MissingWeightsError

SPACING = (0.7, 0.8, 2.5)
VOXEL_ML = 0.7 * 0.8 * 2.5 / 1000.0
# What TotalSegmentator 2.x's config says a clavicle roi_subset run of task "total" loads:
# the five 1.5 mm part models (or the 3 mm model with fast) plus the 6 mm cropping model.
DEFAULT_FOLDERS = [
    "Dataset291_TotalSegmentator_part1_organs_1559subj",
    "Dataset292_TotalSegmentator_part2_vertebrae_1532subj",
    "Dataset293_TotalSegmentator_part3_cardiac_1559subj",
    "Dataset294_TotalSegmentator_part4_muscles_1559subj",
    "Dataset295_TotalSegmentator_part5_ribs_1559subj",
    "Dataset298_TotalSegmentator_total_6mm_1559subj",
]
FAST_FOLDERS = [
    "Dataset297_TotalSegmentator_total_3mm_1559subj",
    "Dataset298_TotalSegmentator_total_6mm_1559subj",
]


def _oblique() -> np.ndarray:
    a = np.deg2rad(15.0)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def synthetic_ct(direction=None) -> Volume:
    """24×20×16 air volume; a 300 HU block on the patient's left (high i), 500 HU on the right."""
    arr = np.full((16, 20, 24), -1000.0, np.float32)
    arr[6:9, 8:11, 16:21] = 300.0  # left clavicle stand-in (+x)
    arr[6:9, 8:11, 3:7] = 500.0  # right clavicle stand-in (−x)
    return Volume(arr, SPACING, (-8.0, -8.0, 100.0), np.eye(3) if direction is None else direction, "ct.nii.gz")


def synthetic_labels(ct: Volume, left=LEFT, right=RIGHT) -> Volume:
    lab = np.zeros(ct.array.shape, np.uint8)
    lab[ct.array == 300] = left
    lab[ct.array == 500] = right
    lab[0, 0, 0] = 5  # some other structure
    return ct.with_array(lab, source="labels.nii.gz")


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Every test: no download entry point, HTTP client or socket may be used; home is a tmp dir."""

    def forbidden(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(totalsegmentator.libs, "download_pretrained_weights", forbidden)
    monkeypatch.setattr(ts_api, "download_pretrained_weights", forbidden)  # python_api's own reference
    monkeypatch.setattr(totalsegmentator.libs, "download_url_and_unpack", forbidden)
    monkeypatch.setattr(requests, "get", forbidden)
    monkeypatch.setattr(requests, "post", forbidden)
    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(ts_api, "totalsegmentator", forbidden)  # tests that expect a run replace it
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "totalseg_home"))


@pytest.fixture(scope="module")
def example():
    return load_example()


# --------------------------------------------------------------------------- from label maps


def test_clavicles_from_labels():
    ct = synthetic_ct()
    masks = clavicles_from_labels(synthetic_labels(ct))
    assert isinstance(masks, ClavicleMasks) and masks.source == "labels"
    for vol, hu in ((masks.left, 300), (masks.right, 500)):
        assert vol.array.dtype == np.uint8 and set(np.unique(vol.array)) == {0, 1}
        assert vol.same_grid(ct)
        np.testing.assert_array_equal(vol.array, (ct.array == hu).astype(np.uint8))
    # left = patient's left = +x (LPS)
    k, j, i = np.nonzero(masks.left.array)
    kr, jr, ir = np.nonzero(masks.right.array)
    x_left = (masks.left.index_to_world @ np.stack([i, j, k, np.ones_like(i)]))[0].mean()
    x_right = (masks.right.index_to_world @ np.stack([ir, jr, kr, np.ones_like(ir)]))[0].mean()
    assert x_left > x_right
    combined = masks.combined
    assert combined.array.dtype == np.uint8
    np.testing.assert_array_equal(combined.array, ((ct.array == 300) | (ct.array == 500)).astype(np.uint8))
    vols = masks.volumes_ml()
    assert vols["left"] == pytest.approx(3 * 3 * 5 * VOXEL_ML)
    assert vols["right"] == pytest.approx(3 * 3 * 4 * VOXEL_ML)


def test_clavicles_custom_label_numbers():
    ct = synthetic_ct()
    masks = clavicles_from_labels(synthetic_labels(ct, left=11, right=12), left_label=11, right_label=12)
    np.testing.assert_array_equal(masks.left.array, (ct.array == 300).astype(np.uint8))


@pytest.mark.parametrize("missing, message", [
    (LEFT, f"labels.nii.gz: clavicle label {LEFT} (clavicula_left) is absent or empty"),
    (RIGHT, f"labels.nii.gz: clavicle label {RIGHT} (clavicula_right) is absent or empty"),
])
def test_absent_clavicle_label(missing, message):
    lab = synthetic_labels(synthetic_ct())
    arr = lab.array.copy()
    arr[arr == missing] = 0
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        clavicles_from_labels(lab.with_array(arr))


def test_shipped_example_labels(example):
    ct, labels = example
    masks = clavicles_from_labels(labels)
    assert masks.source == "shipped"
    # In the shipped map, clavicula_left (LEFT) really lies on the patient's left (+x).
    xs = {}
    for side, vol in (("left", masks.left), ("right", masks.right)):
        k, j, i = np.nonzero(vol.array)
        xs[side] = (vol.index_to_world @ np.stack([i, j, k, np.ones_like(i)]))[0].mean()
    assert xs["left"] > xs["right"] + 50
    vols = masks.volumes_ml()
    assert 5 < vols["left"] < 40 and 5 < vols["right"] < 40  # adult clavicles: roughly 10–30 ml


# --------------------------------------------------------------------------- weights on disk


def test_weights_status_empty_dir_argument(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    ok, missing = totalsegmentator_weights_status(weights_dir=weights)
    assert not ok
    assert missing == [weights / name for name in DEFAULT_FOLDERS]
    assert "TOTALSEG_WEIGHTS_PATH" not in os.environ  # the override was temporary
    ok, missing = totalsegmentator_weights_status(fast=True, weights_dir=weights)
    assert not ok and missing == [weights / name for name in FAST_FOLDERS]


def test_weights_status_env_and_default(tmp_path, monkeypatch):
    # Default location: $TOTALSEG_HOME_DIR/nnunet/results (set by the autouse fixture); not created.
    default = tmp_path / "totalseg_home" / "nnunet" / "results"
    assert totalsegmentator_weights_dir() == default
    assert totalsegmentator_weights_status()[1] == [default / n for n in DEFAULT_FOLDERS]
    assert not default.exists()
    # TOTALSEG_WEIGHTS_PATH wins, as in TotalSegmentator.
    env_dir = tmp_path / "env_weights"
    env_dir.mkdir()
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(env_dir))
    ok, missing = totalsegmentator_weights_status()
    assert not ok and missing == [env_dir / n for n in DEFAULT_FOLDERS]
    # weights_dir wins over the environment, which is restored afterwards.
    other = tmp_path / "other"
    assert totalsegmentator_weights_status(weights_dir=other)[1][0].parent == other
    assert os.environ["TOTALSEG_WEIGHTS_PATH"] == str(env_dir)


def test_weights_status_present_when_folders_exist(tmp_path, monkeypatch):
    """Only the presence of each model folder is checked, as TotalSegmentator does before it
    decides to download; empty folders therefore count as present."""
    weights = tmp_path / "weights"
    for name in DEFAULT_FOLDERS:
        (weights / name).mkdir(parents=True)
    assert totalsegmentator_weights_status(weights_dir=weights) == (True, [])
    # fast needs the 3 mm model, which is not there
    assert totalsegmentator_weights_status(fast=True, weights_dir=weights) == (
        False, [weights / FAST_FOLDERS[0]])
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(weights))
    assert totalsegmentator_weights_status() == (True, [])


# --------------------------------------------------------------------------- annotate()


def test_totalsegmentator_missing_weights(tmp_path):
    weights = tmp_path / "empty_weights"
    weights.mkdir()
    with pytest.raises(MissingWeightsError) as info:
        annotate(synthetic_ct(), method="totalsegmentator", weights_dir=weights)
    msg = str(info.value)
    assert str(weights) in msg and "the weights_dir argument" in msg
    assert str(weights / DEFAULT_FOLDERS[0]) in msg and str(weights / DEFAULT_FOLDERS[-1]) in msg
    assert "totalseg_download_weights -t total" in msg
    assert "TOTALSEG_WEIGHTS_PATH" in msg
    assert "No download was attempted." in msg
    assert list(weights.iterdir()) == []  # nothing written there either
    assert "TOTALSEG_WEIGHTS_PATH" not in os.environ


def test_totalsegmentator_missing_weights_default_location(tmp_path):
    with pytest.raises(MissingWeightsError, match="TOTALSEG_HOME_DIR") as info:
        annotate(synthetic_ct(), method="totalsegmentator", fast=True)
    assert str(tmp_path / "totalseg_home" / "nnunet" / "results") in str(info.value)
    assert "totalseg_download_weights -t total_fast" in str(info.value)


def test_auto_falls_back_to_labels(tmp_path):
    ct = synthetic_ct()
    weights = tmp_path / "empty_weights"
    weights.mkdir()
    with pytest.warns(UserWarning, match=r"TotalSegmentator weights are missing .*using the given label map") as rec:
        masks = annotate(ct, method="auto", labels=synthetic_labels(ct), weights_dir=weights)
    assert str(weights) in str(rec[0].message)
    assert masks.source == "labels"
    np.testing.assert_array_equal(masks.left.array, (ct.array == 300).astype(np.uint8))


def test_auto_falls_back_to_shipped_labels(example, tmp_path):
    ct, labels = example
    with pytest.warns(UserWarning, match="using the shipped example label map"):
        masks = annotate(ct, labels=labels, weights_dir=tmp_path / "nowhere")
    assert masks.source == "shipped"


def test_auto_without_weights_or_labels(tmp_path):
    with pytest.raises(MissingWeightsError, match="No label map was given either"):
        annotate(synthetic_ct(), method="auto", weights_dir=tmp_path)


@pytest.mark.parametrize("method", ["shipped", "labels"])
def test_label_methods(method):
    ct = synthetic_ct()
    masks = annotate(ct, method=method, labels=synthetic_labels(ct))
    assert masks.source == "labels"  # not the shipped file
    np.testing.assert_array_equal(masks.right.array, (ct.array == 500).astype(np.uint8))
    with pytest.raises(InputError, match=f"annotation method '{method}' needs a label map"):
        annotate(ct, method=method)


def test_labels_on_other_grid():
    ct = synthetic_ct()
    other = Volume(synthetic_labels(ct).array, (1.0, 1.0, 1.0), ct.origin, ct.direction, "other.nii.gz")
    with pytest.raises(InputError, match=r"^other\.nii\.gz: label map is on a different grid than the CT"):
        annotate(ct, method="labels", labels=other)


def test_unknown_method():
    msg = "unknown annotation method 'x'; expected auto, shipped, labels or totalsegmentator"
    with pytest.raises(InputError, match=f"^{re.escape(msg)}$"):
        annotate(synthetic_ct(), method="x")
    with pytest.raises(ValueError):
        annotate(synthetic_ct(), method="TotalSegmentator")


# --------------------------------------------------------------------------- the TotalSegmentator call


def _weights_with_all_folders(root: Path) -> Path:
    for name in DEFAULT_FOLDERS + FAST_FOLDERS:
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


def test_totalsegmentator_call_and_mapping(tmp_path, monkeypatch):
    """With weights present, annotate() calls the Python API as documented and maps its output
    (here a fake that labels the HU blocks and returns them in RAS-canonical orientation) back
    onto the oblique CT grid."""
    weights = _weights_with_all_folders(tmp_path / "weights")
    ct = synthetic_ct(_oblique())
    calls = []

    def fake_totalsegmentator(input, output=None, **kwargs):
        calls.append(dict(kwargs, input=input, output=output,
                          env=os.environ.get("TOTALSEG_WEIGHTS_PATH")))
        ts_api.download_pretrained_weights(291)  # present: must be a silent no-op
        ts_api.send_usage_stats({}, {})  # telemetry: a no-op during the call
        img = nib.load(str(input))
        data = np.asarray(img.dataobj)
        seg = np.zeros(data.shape, np.uint8)
        seg[data == 300] = LEFT
        seg[data == 500] = RIGHT
        return nib.as_closest_canonical(nib.Nifti1Image(seg, img.affine))

    monkeypatch.setattr(ts_api, "totalsegmentator", fake_totalsegmentator)
    download_guard = ts_api.download_pretrained_weights
    masks = annotate(ct, method="auto", weights_dir=weights, device="cpu", fast=True)

    (call,) = calls
    assert Path(call["input"]).name.endswith(".nii.gz") and call["output"] is None
    assert call["roi_subset"] == ["clavicula_left", "clavicula_right"]
    assert call["ml"] is True and call["task"] == "total"
    assert call["device"] == "cpu" and call["fast"] is True and call["quiet"] is True
    assert call["env"] == str(weights.absolute())
    assert "TOTALSEG_WEIGHTS_PATH" not in os.environ
    assert ts_api.download_pretrained_weights is download_guard  # patches undone
    assert not Path(call["input"]).exists()  # temporary files removed

    assert masks.source == "totalsegmentator"
    for vol, hu in ((masks.left, 300), (masks.right, 500)):
        assert vol.same_grid(ct) and vol.array.dtype == np.uint8
        np.testing.assert_array_equal(vol.array, (ct.array == hu).astype(np.uint8))


def test_totalsegmentator_never_downloads_missing_model(tmp_path, monkeypatch):
    """Even if TotalSegmentator asked for a model the pre-check does not know, nothing is fetched."""
    weights = _weights_with_all_folders(tmp_path / "weights")

    def fake_totalsegmentator(input, output=None, **kwargs):
        ts_api.download_pretrained_weights(300)  # body model: not on disk
        raise AssertionError("should not get here")

    monkeypatch.setattr(ts_api, "totalsegmentator", fake_totalsegmentator)
    with pytest.raises(MissingWeightsError, match="Dataset300_body_6mm_1559subj.*no download was attempted"):
        annotate(synthetic_ct(), method="totalsegmentator", weights_dir=weights)
    assert not (weights / "Dataset300_body_6mm_1559subj").exists()


def test_totalsegmentator_empty_result_warns(tmp_path, monkeypatch):
    weights = _weights_with_all_folders(tmp_path / "weights")

    def fake_totalsegmentator(input, output=None, **kwargs):
        img = nib.load(str(input))
        seg = np.zeros(img.shape, np.uint8)
        seg[np.asarray(img.dataobj) == 300] = LEFT
        return nib.Nifti1Image(seg, img.affine)

    monkeypatch.setattr(ts_api, "totalsegmentator", fake_totalsegmentator)
    with pytest.warns(UserWarning, match="no voxel of clavicula_right"):
        masks = annotate(synthetic_ct(), method="totalsegmentator", weights_dir=weights)
    assert masks.left.array.any() and not masks.right.array.any()


def test_totalsegmentator_incomplete_weights(tmp_path, monkeypatch):
    """A model folder that exists but lacks its files: TotalSegmentator (nnU-Net) fails opening
    them; that surfaces as MissingWeightsError naming the file."""
    weights = _weights_with_all_folders(tmp_path / "weights")
    wanted = weights / DEFAULT_FOLDERS[-1] / "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres" / "dataset.json"

    def fake_totalsegmentator(input, output=None, **kwargs):
        open(wanted)  # what nnU-Net does first

    monkeypatch.setattr(ts_api, "totalsegmentator", fake_totalsegmentator)
    with pytest.raises(MissingWeightsError, match=re.escape(f"{wanted} does not exist")):
        annotate(synthetic_ct(), method="totalsegmentator", weights_dir=weights)
