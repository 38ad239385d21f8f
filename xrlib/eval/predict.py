"""Running a segmentation model over a dataset and scoring each prediction: one metric row per image.

:func:`predict` runs a model (sigmoid of its one-channel logits) over a dataset or an image stack;
:func:`evaluate_predictions` turns probabilities into a tidy table with one row per image (model,
manifest identifiers, an optional group label and the metrics of
:func:`xrlib.eval.metrics.image_metrics`, computed by
:func:`xrlib.eval.metrics.stack_metrics`); :func:`evaluate_model` does both; :func:`save_results`
stores the table as CSV and Parquet.

Empty predictions
-----------------
An empty predicted mask has Dice 0 (it enters the Dice mean) and undefined HD/HD95 (``nan``);
the rows flag it (``empty_pred``) so that every summary can report it — nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.core.runs import resolve_device
from xrlib.core.atomic import atomic_write
from xrlib.eval.metrics import stack_metrics

__all__ = ["HD_METRICS", "ID_COLUMNS", "evaluate_model", "evaluate_predictions", "predict", "save_results"]

#: Manifest columns copied into the per-image results (those present): ``source`` (the patient, the outer
#: unit of the statistics when there are several) and ``fold`` (a cross-validation fold's manifest) included.
ID_COLUMNS = ("subject", "source", "fold", "pool", "split", "alpha", "tilt", "shift_x", "shift_y", "shift_z",
              "physics", "dose_mas", "shard", "index")
HD_METRICS = ("hd_mm", "hd95_mm", "hd_px", "hd95_px")


def _squeeze_channel(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x


def evaluate_predictions(
    model_name: str,
    probs: np.ndarray,
    targets: np.ndarray,
    rows: pd.DataFrame,
    pixel_mm_iso: float,
    threshold: float = 0.5,
    groups: Callable[[float], str] | None = None,
    group_column: str = "group",
) -> pd.DataFrame:
    """Per-image metrics of predictions ``probs`` (N×S×S) against ``targets`` (N×S×S).

    ``rows`` are the manifest rows of the N images in the same order (at least ``subject`` and
    ``alpha``). Returns one row per image: ``model``, the manifest identifiers present (subject,
    source, pool, split, alpha, tilt, …), then — when ``groups`` (a function of α) is given — the
    column ``group_column`` right after ``alpha``, then ``dice``, ``hd_mm``, ``hd95_mm``,
    ``hd_px``, ``hd95_px``, ``empty_pred``, ``empty_target``, ``pred_area_px``, ``target_area_px``.
    """
    probs, targets = _squeeze_channel(probs), _squeeze_channel(targets)
    if probs.ndim != 3 or probs.shape != targets.shape:
        raise ValueError(f"need probs and targets of one shape (N, S, S), got {probs.shape} and {targets.shape}")
    if len(rows) != len(probs):
        raise ValueError(f"{len(rows)} manifest rows for {len(probs)} predictions")
    for col in ("subject", "alpha"):
        if col not in rows.columns:
            raise ValueError(f"manifest rows lack the column {col!r}")
    ids = rows[[c for c in ID_COLUMNS if c in rows.columns]].reset_index(drop=True)
    out = pd.concat([ids, stack_metrics(probs, targets, pixel_mm_iso, threshold)], axis=1)
    out.insert(0, "model", model_name)
    if groups is not None:
        out.insert(out.columns.get_loc("alpha") + 1, group_column, [groups(a) for a in out["alpha"]])
    return out


def predict(model, data, batch_size: int = 16, device=None, progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``sigmoid(model(image))`` for every item of ``data``, and the items' masks.

    Args:
        model: a ``torch.nn.Module`` mapping ``(B, 1, S, S)`` images to ``(B, 1, S, S)`` logits. It is
            put in eval mode and run without gradients (its training flag is restored afterwards).
        data: a torch Dataset whose items start with ``(image 1×S×S, mask 1×S×S)``, or a pair of
            arrays ``(images, masks)`` of shape ``(N, S, S)``.
        device: torch device; default CUDA when available, else CPU.
        progress: a label to show a tqdm bar under, or ``None`` for none.

    Returns:
        ``(probs float32 (N, S, S), masks (N, S, S))`` in the order of ``data``.
    """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    if isinstance(data, tuple):
        images, masks = (torch.as_tensor(np.asarray(a, np.float32))[:, None] for a in data)
        data = TensorDataset(images, masks)
    device = resolve_device(device)
    model = model.to(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc=progress, unit="batch")
    probs, masks = [], []
    try:
        with torch.no_grad():
            for batch in loader:
                img, mask = batch[0], batch[1]
                logits = model(img.to(device))
                probs.append(torch.sigmoid(logits.float()).cpu().numpy()[:, 0])
                masks.append(mask.numpy()[:, 0])
    finally:
        model.train(was_training)
    s = data[0][0].shape[-1] if len(data) else 0
    p = np.concatenate(probs).astype(np.float32) if probs else np.zeros((0, s, s), np.float32)
    m = np.concatenate(masks) if masks else np.zeros((0, s, s), np.float32)
    return p, m


def evaluate_model(
    model,
    dataset,
    rows: pd.DataFrame,
    model_name: str,
    pixel_mm_iso: float,
    batch_size: int = 16,
    device=None,
    threshold: float = 0.5,
    return_probs: bool = False,
    progress: bool = False,
    groups: Callable[[float], str] | None = None,
):
    """Run ``model`` on ``dataset`` (:func:`predict`) and score it (:func:`evaluate_predictions`).

    ``dataset`` items are ``(image, mask, …)`` in the order of ``rows``; ``groups`` labels each α
    (column ``group``). Returns the per-image DataFrame, or ``(DataFrame, probs)`` with
    ``return_probs=True`` (float32 ``(N, S, S)``, e.g. for contour overlays).
    """
    if len(dataset) != len(rows):
        raise ValueError(f"dataset has {len(dataset)} items but {len(rows)} manifest rows were given")
    p, m = predict(model, dataset, batch_size, device, f"evaluate {model_name}" if progress else None)
    df = evaluate_predictions(model_name, p, m, rows, pixel_mm_iso, threshold, groups=groups)
    return (df, p) if return_probs else df


def save_results(df: pd.DataFrame, path: str | Path) -> tuple[Path, Path]:
    """Write ``df`` to ``<path>.csv`` and ``<path>.parquet`` atomically; return both paths.

    A ``.csv`` or ``.parquet`` suffix on ``path`` is replaced by each of the two.
    """
    path = Path(path)
    if path.suffix in (".csv", ".parquet"):
        path = path.with_suffix("")
    csv, parquet = Path(f"{path}.csv"), Path(f"{path}.parquet")
    with atomic_write(csv) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_write(parquet) as tmp:
        df.to_parquet(tmp, index=False)
    return csv, parquet
