"""Real radiographs with clavicle masks from a folder (``images/`` and ``masks/`` with matching names)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrlib.core.errors import InputError

_IMAGE_SUFFIXES = (".png", ".dcm", ".dicom")


@dataclass
class RealItem:
    """One real radiograph with its clavicle mask (image float32, mask uint8 0/1)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    image_path: Path
    mask_path: Path


def _read_2d(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im.convert("F") if im.mode not in ("I;16", "I;16B", "I") else im, dtype=np.float32)
        else:
            import pydicom

            ds = pydicom.dcmread(str(path))
            arr = ds.pixel_array.astype(np.float32)
            arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
            if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
                arr = arr.max() - arr
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise InputError(path, f"cannot read image ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    if arr.ndim != 2:
        raise InputError(path, f"expected a single-channel 2-D image, got shape {arr.shape}")
    return arr


def load_real_folder(folder: str | Path) -> list[RealItem]:
    """Real radiographs ``folder/images/<name>.{png,dcm}`` with masks ``folder/masks/<name>.*``.

    Masks are binarized (> 0). Raises :class:`InputError` naming the file for a missing folder,
    a missing mask, an unreadable file or an image/mask size mismatch.
    """
    folder = Path(folder)
    img_dir, mask_dir = folder / "images", folder / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise InputError(d, "no such directory (expected images/ and masks/ with matching file names)")
    images = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if not images:
        raise InputError(img_dir, "no PNG or DICOM images found")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES}
    out = []
    for ip in images:
        mp = masks.get(ip.stem)
        if mp is None:
            raise InputError(ip, f"no mask named {ip.stem}.png/.dcm in {mask_dir}")
        img, mask = _read_2d(ip), _read_2d(mp)
        if img.shape != mask.shape:
            raise InputError(mp, f"mask size {mask.shape[1]}×{mask.shape[0]} differs from image size {img.shape[1]}×{img.shape[0]} ({ip.name})")
        out.append(RealItem(ip.stem, img, (mask > 0).astype(np.uint8), ip, mp))
    return out


def real_fingerprint(folder: str | Path) -> str:
    """Hash (16 hex) of the names and bytes of every file under ``folder/images`` and ``folder/masks``
    (:func:`xrlib.core.profiles.real_folder_digest`)."""
    from xrlib.core.profiles import real_folder_digest

    return real_folder_digest(folder)
