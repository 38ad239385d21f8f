"""Evaluation of segmentation models by patient rotation α: per-image metrics, Table 2, statistics.

Pipeline
--------
:func:`evaluate_model` runs a model over a dataset (sigmoid of its one-channel logits) and hands the
probabilities to :func:`evaluate_predictions`, which returns a tidy table with one row per image
(model, manifest identifiers, α group and the metrics of :func:`xrlib.eval.metrics.image_metrics`).
:func:`save_results` stores it as CSV and Parquet. From that table:

* :func:`group_stats` / :func:`format_table2` / :func:`group_table` — the paper's Table 2 (mean ± sd
  per α group, % change vs U-Net(Real)), with the number of empty predictions per cell;
* :func:`bootstrap_ci`, :func:`bootstrap_by_group`, :func:`dice_vs_alpha` — percentile-bootstrap
  confidence intervals of means, resampling subjects (clusters) rather than images;
* :func:`paired_wilcoxon` — paired Wilcoxon signed-rank tests between two models.

Independence
------------
The images of one subject (21 α of the same anatomy) are strongly correlated, so the bootstrap
resamples *subjects*, and paired tests pair images of the same subject and α. Even subjects are
not fully independent here: virtual subjects derived from one source CT (manifest column
``source``) are deformed copies of one person, not independent patients. Pass
``cluster="source"`` to :func:`bootstrap_by_group` for the conservative variant; p-values and
intervals computed over subjects should be read as optimistic when few source CTs are involved.

Empty predictions
-----------------
An empty predicted mask has Dice 0 (it enters the Dice mean) and undefined HD/HD95 (``nan``). HD
statistics are therefore computed over images with a non-empty prediction, and every summary
reports ``n_empty`` next to them — nothing is dropped silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.core.atomic import atomic_write
from xrlib.eval.metrics import image_metrics

__all__ = [
    "ALPHA_GROUPS",
    "GROUP_ORDER",
    "alpha_group",
    "bootstrap_by_group",
    "bootstrap_ci",
    "dice_vs_alpha",
    "evaluate_model",
    "evaluate_predictions",
    "format_table2",
    "group_stats",
    "group_table",
    "paired_wilcoxon",
    "save_results",
]

#: α groups of the paper (degrees, closed intervals on the 2° grid), in display order.
ALPHA_GROUPS: dict[str, tuple[float, float]] = {
    "Moderate-": (-20.0, -12.0),
    "Low-": (-10.0, -4.0),
    "Center": (-2.0, 2.0),
    "Low+": (4.0, 10.0),
    "Moderate+": (12.0, 20.0),
}
GROUP_ORDER: list[str] = list(ALPHA_GROUPS)

#: |α| limits of the extended groups: midpoints between neighbouring groups, and the outer limit.
_CENTER_MAX = 3.0
_LOW_MAX = 11.0
_ALPHA_MAX = 21.0

#: Manifest columns copied into the per-image results (those present).
ID_COLUMNS = ("subject", "source", "pool", "split", "alpha", "tilt", "shift_x", "shift_y", "shift_z",
              "physics", "dose_mas", "shard", "index")
HD_METRICS = ("hd_mm", "hd95_mm", "hd_px", "hd95_px")


def alpha_group(alpha: float) -> str:
    """Name of the α group of a rotation angle (degrees).

    The paper's groups are closed intervals on the 2° grid; between them lie gaps of 2°
    ((−12, −10), (−4, −2), (2, 4), (10, 12)). Off-grid angles (surrogate jitter such as −0.33°,
    or odd angles such as −11°) are assigned by extending each group to the midpoints of those
    gaps, the midpoint itself belonging to the group *nearer to Center*:

    * ``|α| ≤ 3``       → ``Center``
    * ``3 < |α| ≤ 11``  → ``Low-`` / ``Low+`` (sign of α)
    * ``11 < |α| ≤ 21`` → ``Moderate-`` / ``Moderate+``

    Angles with ``|α| > 21`` (or non-finite) raise :class:`ValueError`.
    """
    a = float(alpha)
    if not math.isfinite(a) or abs(a) > _ALPHA_MAX:
        raise ValueError(f"alpha={alpha!r}° is outside the evaluated range [-21, 21]°")
    m = abs(a)
    if m <= _CENTER_MAX:
        return "Center"
    sign = "-" if a < 0 else "+"
    return ("Low" if m <= _LOW_MAX else "Moderate") + sign


# ----------------------------------------------------------------------------- per-image tables


def evaluate_predictions(
    model_name: str,
    probs: np.ndarray,
    targets: np.ndarray,
    rows: pd.DataFrame,
    pixel_mm_iso: float,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """Per-image metrics of predictions ``probs`` (N×S×S) against ``targets`` (N×S×S).

    ``rows`` are the manifest rows of the N images in the same order (at least ``subject`` and
    ``alpha``). Returns one row per image: ``model``, the manifest identifiers present (subject,
    source, pool, split, alpha, tilt, …), ``group`` (:func:`alpha_group`), then ``dice``, ``hd_mm``,
    ``hd95_mm``, ``hd_px``, ``hd95_px``, ``empty_pred``, ``empty_target``, ``pred_area_px``,
    ``target_area_px``.
    """
    probs = np.asarray(probs)
    targets = np.asarray(targets)
    if probs.ndim == 4 and probs.shape[1] == 1:
        probs = probs[:, 0]
    if targets.ndim == 4 and targets.shape[1] == 1:
        targets = targets[:, 0]
    if probs.ndim != 3 or probs.shape != targets.shape:
        raise ValueError(f"need probs and targets of one shape (N, S, S), got {probs.shape} and {targets.shape}")
    if len(rows) != len(probs):
        raise ValueError(f"{len(rows)} manifest rows for {len(probs)} predictions")
    for col in ("subject", "alpha"):
        if col not in rows.columns:
            raise ValueError(f"manifest rows lack the column {col!r}")
    ids = rows[[c for c in ID_COLUMNS if c in rows.columns]].reset_index(drop=True)
    records = [image_metrics(p, t, pixel_mm_iso, threshold) for p, t in zip(probs, targets)]
    out = pd.concat([ids, pd.DataFrame.from_records(records)], axis=1)
    out.insert(0, "model", model_name)
    out.insert(out.columns.get_loc("alpha") + 1, "group", [alpha_group(a) for a in out["alpha"]])
    return out


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
):
    """Run ``model`` on ``dataset`` and evaluate its predictions (:func:`evaluate_predictions`).

    Args:
        model: a ``torch.nn.Module`` mapping ``(B, 1, S, S)`` images to ``(B, 1, S, S)`` logits;
            probabilities are ``sigmoid(logits)``. It is put in eval mode and run without gradients.
        dataset: a torch Dataset whose items start with ``(image 1×S×S, mask 1×S×S)``, in the
            order of ``rows``.
        device: torch device; default CUDA when available, else CPU.
        return_probs: also return the probabilities (float32 ``(N, S, S)``), e.g. for contour overlays.

    Returns:
        The per-image DataFrame, or ``(DataFrame, probs)`` with ``return_probs=True``.
    """
    import torch
    from torch.utils.data import DataLoader

    if len(dataset) != len(rows):
        raise ValueError(f"dataset has {len(dataset)} items but {len(rows)} manifest rows were given")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    model = model.to(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc=f"evaluate {model_name}", unit="batch")
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
    s = dataset[0][0].shape[-1] if len(dataset) else 0
    p = np.concatenate(probs).astype(np.float32) if probs else np.zeros((0, s, s), np.float32)
    m = np.concatenate(masks) if masks else np.zeros((0, s, s), np.float32)
    df = evaluate_predictions(model_name, p, m, rows, pixel_mm_iso, threshold)
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


# ----------------------------------------------------------------------------- Table 2


def _ordered_groups(values) -> list:
    present = list(dict.fromkeys(values))
    known = [g for g in GROUP_ORDER if g in present]
    return known + [g for g in present if g not in GROUP_ORDER]


def group_stats(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("dice", "hd_mm", "hd95_mm"),
    baseline: str | None = "U-Net(Real)",
    by: str = "group",
) -> pd.DataFrame:
    """Numeric long table of Table 2: one row per (model, group, metric).

    Columns: ``model``, ``group``, ``metric``, ``n_images``, ``n_empty`` (empty predictions), ``n``
    (images entering the statistics), ``mean``, ``sd`` (sample sd, ddof=1; ``nan`` for n < 2),
    ``baseline_mean`` and ``pct_change = (mean − baseline_mean) / baseline_mean · 100`` against the
    ``baseline`` model in the same group and metric (``nan`` where the baseline is absent).

    Dice is averaged over all images (an empty prediction has Dice 0); HD metrics over images with
    a non-empty prediction (``n = n_images − n_empty`` unless the target is empty too). For Dice a
    positive change is an improvement; for HD/HD95 (lower is better) a *negative* change is.
    """
    if by not in df.columns:
        raise ValueError(f"results lack the column {by!r}")
    records = []
    groups = _ordered_groups(df[by]) if by == "group" else sorted(df[by].unique())
    for model in dict.fromkeys(df["model"]):
        dm = df[df["model"] == model]
        for g in groups:
            dg = dm[dm[by] == g]
            if dg.empty:
                continue
            n_empty = int(dg["empty_pred"].sum()) if "empty_pred" in dg else 0
            for metric in metrics:
                v = dg[metric].to_numpy(dtype=float)
                v = v[~np.isnan(v)]
                records.append({
                    "model": model, by: g, "metric": metric, "n_images": len(dg), "n_empty": n_empty,
                    "n": len(v),
                    "mean": float(v.mean()) if len(v) else math.nan,
                    "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                })
    out = pd.DataFrame.from_records(
        records, columns=["model", by, "metric", "n_images", "n_empty", "n", "mean", "sd"])
    if baseline is not None and (out["model"] == baseline).any():
        base = out[out["model"] == baseline][[by, "metric", "mean"]].rename(columns={"mean": "baseline_mean"})
        out = out.merge(base, on=[by, "metric"], how="left")
    else:
        out["baseline_mean"] = math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        out["pct_change"] = (out["mean"] - out["baseline_mean"]) / out["baseline_mean"] * 100.0
    return out


def format_table2(
    stats: pd.DataFrame,
    baseline: str | None = "U-Net(Real)",
    dice_percent: bool = True,
    decimals: int = 2,
    by: str = "group",
) -> pd.DataFrame:
    """Wide Table 2 from :func:`group_stats`: rows = model, columns = (group, metric).

    Cells read ``"mean ± sd"``, followed by ``" (+x.xx%)"`` (change vs ``baseline``; not shown
    for the baseline itself) and by ``" [k empty]"`` when k > 0 predictions of the cell were empty.
    With ``dice_percent`` Dice is shown ×100 as in the paper (the % change is unaffected).
    """
    def cell(r) -> str:
        scale = 100.0 if (dice_percent and r["metric"] == "dice") else 1.0
        mean, sd = r["mean"] * scale, r["sd"] * scale
        s = f"{mean:.{decimals}f} ± {sd:.{decimals}f}"
        if r["model"] != baseline and not math.isnan(r["pct_change"]):
            s += f" ({r['pct_change']:+.{decimals}f}%)"
        if r["n_empty"] > 0:
            s += f" [{int(r['n_empty'])} empty]"
        return s

    if stats.empty:
        return pd.DataFrame()
    t = stats.assign(cell=stats.apply(cell, axis=1))
    wide = t.pivot(index="model", columns=[by, "metric"], values="cell")
    groups = _ordered_groups(stats[by]) if by == "group" else sorted(stats[by].unique())
    metrics = list(dict.fromkeys(stats["metric"]))
    cols = [(g, m) for g in groups for m in metrics if (g, m) in wide.columns]
    models = list(dict.fromkeys(stats["model"]))
    return wide.reindex(index=models, columns=pd.MultiIndex.from_tuples(cols, names=[by, "metric"]))


def group_table(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("dice", "hd_mm", "hd95_mm"),
    baseline: str | None = "U-Net(Real)",
    dice_percent: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2: ``(group_stats(df, …), format_table2(stats, …))`` — numeric long and formatted wide."""
    stats = group_stats(df, metrics, baseline)
    return stats, format_table2(stats, baseline, dice_percent)


# ----------------------------------------------------------------------------- statistics


def bootstrap_ci(values, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``values`` (images resampled iid).

    NaN values are ignored (count them separately, e.g. as empty predictions); with no finite
    value the interval is ``(nan, nan)``. Deterministic for a given ``seed``. Only valid when the
    values are independent — for images of shared subjects use :func:`bootstrap_by_group`.
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    q = (1.0 - ci) / 2.0 * 100.0
    lo, hi = np.percentile(means, [q, 100.0 - q])
    return float(lo), float(hi)


def _cluster_bootstrap(values: np.ndarray, clusters: np.ndarray, n_boot: int, ci: float,
                       rng: np.random.Generator) -> tuple[float, float]:
    keys, inv = np.unique(clusters, return_inverse=True)
    sums = np.bincount(inv, weights=values, minlength=len(keys))
    counts = np.bincount(inv, minlength=len(keys)).astype(float)
    idx = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    q = (1.0 - ci) / 2.0 * 100.0
    lo, hi = np.percentile(means, [q, 100.0 - q])
    return float(lo), float(hi)


def bootstrap_by_group(
    df: pd.DataFrame,
    metric: str,
    by: Sequence[str] = ("model", "group"),
    cluster: str | None = "subject",
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean of ``metric`` and its cluster-bootstrap CI for every combination of ``by``.

    The images of one subject (all its α, poses) are correlated, so resampling images would
    understate the uncertainty. Here whole *clusters* (default: subjects) are drawn with
    replacement and the statistic is the mean over all images of the drawn clusters; ``cluster=None``
    gives the plain image bootstrap. Note that virtual subjects made from one source CT are not
    independent patients either: ``cluster="source"`` resamples source CTs instead.

    NaN values (HD of empty predictions) are left out of the mean and counted in ``n_nan``.
    Columns: ``by…``, ``mean``, ``lo``, ``hi``, ``n`` (values used), ``n_nan``, ``n_clusters``.
    """
    by = [by] if isinstance(by, str) else list(by)
    rng = np.random.default_rng(seed)
    records = []
    for key, g in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        v = g[metric].to_numpy(dtype=float)
        ok = ~np.isnan(v)
        rec = dict(zip(by, key))
        if not ok.any():
            lo = hi = mean = math.nan
            n_cl = 0
        elif cluster is None:
            mean = float(v[ok].mean())
            lo, hi = bootstrap_ci(v[ok], n_boot, ci, int(rng.integers(2**31)))
            n_cl = int(ok.sum())
        else:
            cl = g[cluster].to_numpy()[ok]
            mean = float(v[ok].mean())
            lo, hi = _cluster_bootstrap(v[ok], cl, n_boot, ci, rng)
            n_cl = len(np.unique(cl))
        rec.update(mean=mean, lo=lo, hi=hi, n=int(ok.sum()), n_nan=int((~ok).sum()), n_clusters=n_cl)
        records.append(rec)
    out = pd.DataFrame.from_records(records, columns=by + ["mean", "lo", "hi", "n", "n_nan", "n_clusters"])
    # Order: models as they first appear, groups in GROUP_ORDER, anything else ascending.
    first = {m: i for i, m in enumerate(dict.fromkeys(df["model"]))} if "model" in df else {}
    order = {g: i for i, g in enumerate(GROUP_ORDER)}

    def key(s: pd.Series) -> pd.Series:
        if s.name == "group":
            return s.map(order)
        if s.name == "model":
            return s.map(first)
        return s

    out = out.sort_values(by, key=key, kind="stable")
    return out.reset_index(drop=True)


def paired_wilcoxon(
    df: pd.DataFrame,
    model_a: str,
    model_b: str,
    metric: str = "dice",
    by: str | None = "group",
    keys: Sequence[str] = ("subject", "alpha"),
) -> pd.DataFrame:
    """Paired Wilcoxon signed-rank tests of ``metric`` between two models, per ``by`` and overall.

    Images are paired by ``keys`` (same subject and α), not by row order; a key occurring twice
    for one model raises :class:`ValueError`. Pairs where either value is NaN (HD of an empty
    prediction) are left out and counted in ``n_dropped``. Per level of ``by`` (in
    :data:`GROUP_ORDER` for groups) and for ``"all"`` images, the row reports ``n`` pairs,
    ``median_diff`` and ``mean_diff`` of ``a − b``, the ``statistic`` and ``pvalue`` of
    :func:`scipy.stats.wilcoxon` (two-sided, its default zero handling, which drops zero
    differences). When every difference is zero the test is undefined; the row then reports
    statistic 0 and p = 1.0 (no evidence of a difference). With no pair, statistics are ``nan``.

    Pairs share subjects across α, so the tests treat correlated images as independent and the
    p-values are optimistic; virtual subjects of one source CT are not independent patients.
    """
    from scipy.stats import wilcoxon

    keys = list(keys)
    cols = keys + ([by] if by is not None and by not in keys else []) + [metric]
    a = df[df["model"] == model_a][cols]
    b = df[df["model"] == model_b][keys + [metric]]
    for name, d in ((model_a, a), (model_b, b)):
        if d.empty:
            raise ValueError(f"no results for model {name!r}")
        if d.duplicated(keys).any():
            raise ValueError(f"model {name!r} has several images per {keys}; pairing is ambiguous")
    m = a.merge(b, on=keys, suffixes=("_a", "_b"), how="inner")
    m["diff"] = m[f"{metric}_a"] - m[f"{metric}_b"]

    def test(d: pd.DataFrame, label) -> dict:
        diff = d["diff"].to_numpy(dtype=float)
        ok = ~np.isnan(diff)
        diff = diff[ok]
        rec = {by or "by": label, "n": len(diff), "n_dropped": int((~ok).sum()),
               "median_diff": math.nan, "mean_diff": math.nan, "statistic": math.nan, "pvalue": math.nan}
        if len(diff) < 1:
            return rec
        rec.update(median_diff=float(np.median(diff)), mean_diff=float(diff.mean()))
        if np.all(diff == 0):
            rec.update(statistic=0.0, pvalue=1.0)
            return rec
        res = wilcoxon(diff)
        rec.update(statistic=float(res.statistic), pvalue=float(res.pvalue))
        return rec

    rows = []
    if by is not None:
        levels = _ordered_groups(m[by]) if by == "group" else sorted(m[by].unique())
        rows += [test(m[m[by] == lv], lv) for lv in levels]
    rows.append(test(m, "all"))
    out = pd.DataFrame.from_records(rows)
    out.insert(0, "model_b", model_b)
    out.insert(0, "model_a", model_a)
    out.insert(2, "metric", metric)
    return out


def dice_vs_alpha(df: pd.DataFrame, n_boot: int = 2000, ci: float = 0.95, seed: int = 0,
                  cluster: str | None = "subject") -> pd.DataFrame:
    """Dice-vs-α curve: per model and α the mean Dice and its cluster-bootstrap CI.

    Columns: ``model``, ``alpha``, ``mean``, ``lo``, ``hi``, ``n``, ``n_nan``, ``n_clusters``
    (see :func:`bootstrap_by_group`; subjects resampled by default), sorted by model and α.
    """
    return bootstrap_by_group(df, "dice", by=("model", "alpha"), cluster=cluster,
                              n_boot=n_boot, ci=ci, seed=seed)
