"""The ``added-samples`` recipe: train on the datasets' images *plus* a fixed list of extra samples.

A dataset extension for the one fit loop: defenses that add training samples (adaptive training
adds the attacked samples whose prediction changed; noise augmentation adds random noisy ones)
write them once with :func:`save_added` and train with the recipe's parameters
``{"samples": <file>, "sha256": <content digest>}`` (plus ``warm_start`` to continue from a
model). The loop appends the samples to the training images (:meth:`Recipe.train_data`);
validation is unchanged. Each epoch is one pass over the original and the added images.

The samples file is ``<models root>/added/<label>-<digest12>.npz`` with ``images`` float32
``(N, S, S)`` in [0, 1] and ``masks`` uint8 ``(N, S, S)`` (0/1); a CSV of the samples' metadata
(``rows``) lies beside it. The digest (:func:`samples_digest`) is the SHA-256 of the arrays'
shapes and bytes, so the model's cache hash — which hashes the recipe parameters — changes
exactly when what was added changes; a file whose content no longer matches its digest is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from xrlib.core.atomic import save_npz_atomic, write_csv_atomic
from xrlib.core.errors import InputError
from xrlib.training.recipes import Recipe, register_recipe

__all__ = ["ADDED_DIR", "AddedSamples", "load_added", "samples_digest", "save_added"]

#: Folder of the samples files under the models root.
ADDED_DIR = "added"


def samples_digest(images: np.ndarray, masks: np.ndarray) -> str:
    """SHA-256 (hex) of the shapes and bytes of ``images`` (float32) and ``masks`` (uint8)."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(images, np.float32), np.ascontiguousarray(masks, np.uint8)):
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_added(out_root: str | Path, label: str, images: np.ndarray, masks: np.ndarray, rows=None) -> dict:
    """Write samples for the ``added-samples`` recipe under ``<out_root>/added/``; returns the recipe
    parameters ``{"samples": <path relative to out_root>, "sha256": <digest>}``.

    ``images`` ``(N, S, S)`` in [0, 1], ``masks`` ``(N, S, S)`` 0/1 (``N`` may be 0); ``rows``: an
    optional DataFrame of per-sample metadata written beside as CSV.
    """
    from xrlib.training.config import safe_name

    images = np.asarray(images, np.float32)
    masks = (np.asarray(masks) > 0.5).astype(np.uint8)
    if images.ndim != 3 or images.shape != masks.shape:
        raise ValueError(f"added samples: images {images.shape} and masks {masks.shape} must be equal (N, S, S)")
    digest = samples_digest(images, masks)
    rel = Path(ADDED_DIR) / f"{safe_name(label)}-{digest[:12]}.npz"
    path = Path(out_root) / rel
    if not path.is_file():
        save_npz_atomic(path, {"images": images, "masks": masks})
    if rows is not None:
        write_csv_atomic(path.with_suffix(".csv"), rows)
    return {"samples": rel.as_posix(), "sha256": digest}


def load_added(path: str | Path, sha256: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``(images, masks)`` of a samples file, checked against ``sha256``; :class:`InputError` naming
    the file when it is missing, malformed or its content does not match."""
    path = Path(path)
    try:
        with np.load(path) as z:
            images, masks = np.asarray(z["images"], np.float32), np.asarray(z["masks"], np.uint8)
    except FileNotFoundError:
        raise InputError(path, "added-samples file not found (written by xrlib.training.added.save_added)") from None
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(path, f"not an added-samples file with arrays 'images' and 'masks' ({exc})") from None
    if images.ndim != 3 or images.shape != masks.shape:
        raise InputError(path, f"images {images.shape} and masks {masks.shape} must be equal (N, S, S)")
    if samples_digest(images, masks) != sha256:
        raise InputError(path, "content does not match the recipe's sha256 (the samples changed); retrain or rewrite them")
    return images, masks


@register_recipe
@dataclass
class AddedSamples(Recipe):
    """Append the samples of ``samples`` (relative to the models root, or absolute) to the training images
    (module docstring); ``sha256``: their :func:`samples_digest`."""

    name: ClassVar[str] = "added-samples"
    samples: str | None = None
    sha256: str | None = None

    def __post_init__(self):
        if not self.samples or not self.sha256:
            raise ValueError("the added-samples recipe needs 'samples' (a file) and 'sha256' (its digest)")

    def train_data(self, x: torch.Tensor, y: torch.Tensor, out_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
        path = Path(self.samples)
        path = path if path.is_absolute() else Path(out_root) / path
        images, masks = load_added(path, self.sha256)
        if not len(images):
            return x, y
        if images.shape[1:] != tuple(x.shape[-2:]):
            raise InputError(path, f"samples of size {images.shape[1:]} do not match the training images {tuple(x.shape[-2:])}")
        xa = torch.from_numpy(images[:, None].copy()).to(x.dtype)
        ya = torch.from_numpy(masks[:, None].copy()).to(y.dtype)
        return torch.cat([x, xa]), torch.cat([y, ya])
