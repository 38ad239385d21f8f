"""The images a model trains and validates on: the union of named sets, loaded into memory.

:func:`select_images` selects the manifest rows of the union of named sets
(:func:`xrlib.data.pools.select`) in one split; :func:`load_tensors` reads them once, shard by
shard, through :class:`xrlib.data.shards.ShardDataset`. No augmentation is applied here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch


def select_images(datasets_dir: str | Path, sets: Sequence[str], split: str, cen_alphas=None) -> pd.DataFrame:
    """Manifest rows of the union of ``sets`` in ``split`` (an image in two sets counts once).

    ``cen_alphas`` (the profile's ``synthetic.cen_alphas``) is needed when ``Syn_cen`` is one of the sets.
    """
    from xrlib.data.pools import select
    from xrlib.data.shards import read_manifest

    if "Syn_cen" in sets and not cen_alphas:
        raise ValueError("selecting Syn_cen needs cen_alphas (the profile's synthetic.cen_alphas)")
    manifest = read_manifest(datasets_dir)
    parts = [select(manifest, s, split, cen_alphas=tuple(cen_alphas or ())) for s in sets]
    df = pd.concat(parts) if parts else manifest.iloc[:0]
    df = df.drop_duplicates(subset=["shard", "index"]).sort_values(["shard", "index"], kind="stable")
    df.attrs["root"] = manifest.attrs.get("root")
    return df.reset_index(drop=True)


def load_tensors(rows: pd.DataFrame, root: str | Path, desc: str = "images", progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and masks of ``rows`` as ``(N, 1, S, S)`` float32 / uint8 CPU tensors."""
    from tqdm.auto import tqdm

    from xrlib.data.shards import ShardDataset

    ds = ShardDataset(rows, root=Path(root))
    imgs, masks = [], []
    for i in tqdm(range(len(ds)), desc=f"load {desc}", unit="img", disable=not progress, leave=False):
        img, mask = ds[i]
        imgs.append(img)
        masks.append(mask.to(torch.uint8))
    return torch.stack(imgs), torch.stack(masks)
