"""Atomic file writes and checksums: an interrupted stage never leaves a complete-looking file.

Every artifact is written to a temporary name in its destination folder and renamed into place
only once it is complete (``os.replace`` is atomic on one file system).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffixes); rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


#: Timestamp of every member of the ``.npz`` files written here (zip's earliest date), so that equal
#: arrays give equal bytes (``np.savez_compressed`` stamps the current time).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def save_npz_atomic(path: str | Path, arrays: dict) -> None:
    """A compressed ``.npz`` (readable by ``np.load``) through :func:`atomic_write`, byte-reproducible."""
    import zipfile

    with atomic_write(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def write_text_atomic(path: str | Path, text: str) -> None:
    """UTF-8 text through :func:`atomic_write`."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj, indent: int | None = 1) -> None:
    """JSON (UTF-8) through :func:`atomic_write`."""
    import json

    write_text_atomic(path, json.dumps(obj, indent=indent))


def write_csv_atomic(path: str | Path, df) -> None:
    """A pandas DataFrame as CSV (no index) through :func:`atomic_write`."""
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index=False)


def save_torch_atomic(path: str | Path, obj) -> None:
    """``torch.save`` through :func:`atomic_write`, byte-reproducible.

    ``torch.save`` to a file names the zip records after the file's stem, which here would be the
    random temporary name; saving to memory first makes equal content give equal bytes.
    """
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_write(path) as tmp:
        tmp.write_bytes(buf.getvalue())


#: gzip level of the ``.nii.gz`` files :func:`write_image_atomic` writes (ISA-L's levels are 0–3).
NIFTI_GZIP_LEVEL = 2


def write_image_atomic(path: str | Path, image, compress: bool = True) -> None:
    """A SimpleITK image (format from the suffix, e.g. ``.nii.gz``) through :func:`atomic_write`.

    A compressed NIfTI (``.nii.gz``) is written by ITK uncompressed, next to the target, and then
    gzip-compressed by ISA-L (:mod:`isal.igzip`, level :data:`NIFTI_GZIP_LEVEL`): the same header and
    voxels as ITK's own ``.nii.gz`` in a standard gzip stream that every NIfTI reader opens, about
    4× faster than ITK's own gzip for the example CT as int16, the file about 4 % larger
    (``benchmarks/profile_stages.py --parts cohort`` times both and compares the decompressed
    bytes). The gzip header holds no name and no time,
    so equal images give equal bytes.
    """
    import shutil

    import SimpleITK as sitk

    path = Path(path)
    with atomic_write(path) as tmp:
        if not (compress and path.name.lower().endswith(".nii.gz")):
            sitk.WriteImage(image, str(tmp), compress)
            return
        from isal import igzip

        raw = tmp.with_name(tmp.name[: -len(".gz")])  # a name the stale-temporary sweeps also match
        try:
            sitk.WriteImage(image, str(raw), False)
            with open(raw, "rb") as src, open(tmp, "wb") as fh, igzip.IGzipFile(
                filename="", mode="wb", compresslevel=NIFTI_GZIP_LEVEL, fileobj=fh, mtime=0
            ) as gz:
                shutil.copyfileobj(src, gz, 1 << 22)
        finally:
            raw.unlink(missing_ok=True)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
