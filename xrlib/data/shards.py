"""Shards and the manifest: the on-disk format of a dataset build and its readers.

``<out>/shards/<pool>/<subject>.npz`` holds all images of one subject (``image``, ``mask``,
``mask_left``, ``mask_right``: uint8 ``(P, S, S)``, plus the pose parameters ``alpha``, ``tilt``,
``shift`` and ``physics``, ``dose_mas``, ``backend``); it is written deterministically (fixed zip
timestamps), so the same arrays give the same bytes and SHA-256. ``<out>/manifest.csv`` has one row
per image (:data:`MANIFEST_COLUMNS`). :class:`ShardDataset` reads images lazily for torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.core.errors import InputError

MANIFEST_FILE = "manifest.csv"
MANIFEST_COLUMNS = [
    "subject", "source", "pool", "split", "alpha", "tilt", "shift_x", "shift_y", "shift_z",
    "physics", "dose_mas", "shard", "index", "checksum",
]


#: Prefix of optional per-image acquisition columns (a varied surrogate, :class:`xrlib.data.recipes.VariedRecipe`).
ACQ_PREFIX = "acq_"


#: Optional column of a cross-validation fold's manifest: the fold of the row's source CT.
FOLD_COLUMN = "fold"


def extra_columns(rows) -> list[str]:
    """The optional per-image columns (``fold``, then ``acq_*``) present in manifest ``rows`` (dicts), in
    first-seen order."""
    fold = [FOLD_COLUMN] if any(FOLD_COLUMN in r for r in rows) else []
    return fold + list(dict.fromkeys(k for r in rows for k in r if k.startswith(ACQ_PREFIX)))


def shard_arrays(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], masks_left: Sequence[np.ndarray],
                 masks_right: Sequence[np.ndarray], alpha, tilt, shift, physics: str, dose_mas: float,
                 backend: str) -> dict:
    """The arrays of one shard: preprocessed images in [0, 1] (stored ×255 as uint8), uint8 masks and
    one pose (α, tilt in deg, shift in mm; NaN when unknown) per image."""
    n = len(images)
    return {
        "image": np.stack([np.round(np.asarray(i) * 255).astype(np.uint8) for i in images]),
        "mask": np.stack(masks), "mask_left": np.stack(masks_left), "mask_right": np.stack(masks_right),
        "alpha": np.asarray(alpha, np.float64).reshape(n), "tilt": np.asarray(tilt, np.float64).reshape(n),
        "shift": np.asarray(shift, np.float64).reshape(n, 3),
        "physics": np.array(physics), "dose_mas": np.array(float(dose_mas)), "backend": np.array(backend),
    }




def shard_rows(subject: str, source: str, pool: str, split: str, shard_rel: str, arrays: dict, checksum: str) -> list[dict]:
    """Manifest rows (one per image) of a shard written at ``shard_rel`` with SHA-256 ``checksum``."""
    rows = []
    for i in range(arrays["image"].shape[0]):
        sh = arrays["shift"][i]
        rows.append({
            "subject": subject, "source": source, "pool": pool, "split": split,
            "alpha": float(arrays["alpha"][i]), "tilt": float(arrays["tilt"][i]),
            "shift_x": float(sh[0]), "shift_y": float(sh[1]), "shift_z": float(sh[2]),
            "physics": str(arrays["physics"]), "dose_mas": float(arrays["dose_mas"]),
            "shard": shard_rel, "index": i, "checksum": checksum,
            **{k: float(arrays[k][i]) for k in arrays if k.startswith(ACQ_PREFIX)},
        })
    return rows


def read_manifest(path: str | Path) -> pd.DataFrame:
    """The dataset manifest (``manifest.csv``, or a datasets folder containing it)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise InputError(path, "no dataset manifest; build the datasets first (xrlib dataset --profile NAME)")
    df = pd.read_csv(path, dtype={"subject": str, "source": str, "checksum": str, "shard": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(path, f"manifest lacks columns {missing}")
    df.attrs["root"] = str(path.parent)
    return df


def pool_samples(manifest: pd.DataFrame, root: str | Path, per_pool: int = 6,
                 pools: Sequence[str] = ("real", "surrogate", "syn_train", "syn_test")) -> tuple[list, list, list[str]]:
    """Up to ``per_pool`` preprocessed images per pool, spread evenly over the manifest order.

    Returns ``(images, masks, titles)``: float arrays in [0, 1], uint8 masks and "pool · subject · α" titles.
    """
    images, masks, titles = [], [], []
    for pool in pools:
        rows = manifest[manifest["pool"] == pool]
        if rows.empty:
            continue
        picks = rows.iloc[np.linspace(0, len(rows) - 1, min(per_pool, len(rows))).astype(int)]
        ds = ShardDataset(picks, root=root)
        for i, r in enumerate(picks.itertuples()):
            img, m = ds[i]
            images.append(img[0].numpy())
            masks.append(m[0].numpy())
            titles.append(f"{pool} · {r.subject} · α={r.alpha:+.1f}°")
    return images, masks, titles


try:
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object


class ShardDataset(_TorchDataset):
    """Images of a dataset build, read lazily from its shards.

    Args:
        manifest: a manifest DataFrame (or a datasets folder / manifest path).
        root: the datasets folder (default: where the manifest was read from).
        pool, split: optional filters (a name or a list of names).
        alphas: optional set of α values to keep (e.g. ``{-2, 0, 2}`` for Syn_cen).

    Items are ``(image, mask)``: float32 tensors ``(1, S, S)``, image in [0, 1], mask 0/1.
    The most recently used shard is kept in memory (items are ordered by shard).
    """

    def __init__(self, manifest, root=None, pool=None, split=None, alphas=None):
        if not isinstance(manifest, pd.DataFrame):
            manifest = read_manifest(manifest)
        self.root = Path(root if root is not None else manifest.attrs.get("root", "."))
        df = manifest
        for col, val in (("pool", pool), ("split", split)):
            if val is not None:
                df = df[df[col].isin([val] if isinstance(val, str) else list(val))]
        if alphas is not None:
            df = df[np.isclose(df["alpha"].to_numpy()[:, None], np.asarray(sorted(alphas), float)[None]).any(1)]
        self.rows = df.reset_index(drop=True)
        self._shards = self.rows["shard"].to_numpy()
        self._index = self.rows["index"].to_numpy().astype(int)
        self._cache: tuple[str, dict] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _arrays(self, rel: str) -> dict:
        if self._cache is None or self._cache[0] != rel:
            path = self.root / rel
            try:
                with np.load(path) as z:
                    arrays = {"image": z["image"], "mask": z["mask"]}
            except Exception as exc:  # noqa: BLE001
                raise InputError(path, f"unreadable shard ({type(exc).__name__}); rebuild the datasets") from None
            self._cache = (rel, arrays)
        return self._cache[1]

    def __getitem__(self, i: int):
        import torch

        a = self._arrays(self._shards[i])
        j = self._index[i]
        img = a["image"][j]
        img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
        return torch.from_numpy(img[None].copy()), torch.from_numpy(a["mask"][j][None].astype(np.float32))
