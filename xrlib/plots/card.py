"""Figures of the robustness card: the models × threats heatmap and the ranking per threat."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["card_heatmap", "card_ranking", "curve_heatmap"]


def _labels(columns, settings=None) -> list[str]:
    at = (lambda c: f", {c.budget(settings)}") if settings is not None else (lambda c: "")
    return [f"{c.title}{at(c)}\n{c.statistic} {'↑' if c.higher_better else '↓'}" for c in columns]


def card_heatmap(matrix: pd.DataFrame, columns: Sequence, title: str = "", settings=None,
                 unranked: pd.DataFrame | None = None) -> plt.Figure:
    """Models (rows) × threats (columns) of the card; the colour is the robustness score — the Dice, or
    1 − the rate for rate columns (SAR, success rate) — so brighter is more robust in every column; the
    cells are annotated with the statistic itself; ``settings`` (the card's) adds each column's budget.
    ``unranked`` (:func:`xrlib.studies.card.analysis.unranked`) greys those cells out and marks them
    "n/a" (no scored image) or with an asterisk (too few scored images to be ranked)."""
    cols = [c for c in columns if c.key in matrix.columns]
    v = matrix[[c.key for c in cols]].to_numpy(float)
    score = np.column_stack([v[:, j] if c.higher_better else 1.0 - v[:, j] for j, c in enumerate(cols)]) if cols else v
    flagged = set() if unranked is None else set(zip(unranked["model"], unranked["column"]))
    grey = np.array([[(m, c.key) in flagged for c in cols] for m in matrix.index], bool).reshape(score.shape)
    score = np.where(grey, np.nan, score)
    fig, ax = plt.subplots(figsize=(1.45 * len(cols) + 3.2, 0.45 * len(matrix) + 2.2), constrained_layout=True)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("0.85")  # unranked cells: light grey
    im = ax.imshow(np.ma.masked_invalid(score), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            text = ("n/a" if grey[i, j] else "–") if np.isnan(v[i, j]) else f"{v[i, j]:.2f}" + ("*" if grey[i, j] else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="black" if grey[i, j] or score[i, j] > 0.6 else "white")
    ax.set_xticks(range(len(cols)), _labels(cols, settings), fontsize=7, rotation=30, ha="right")
    ax.set_yticks(range(len(matrix)), list(matrix.index), fontsize=8)
    ax.set(xlabel="threat at the card's budget (statistic; ↑ higher / ↓ lower is more robust"
                  + ("; grey: not ranked, * too few scored images" if grey.any() else "") + ")", ylabel="model",
           title=title)
    fig.colorbar(im, ax=ax, label="robustness score (Dice, or 1 − rate)")
    return fig


def curve_heatmap(evidence: pd.DataFrame, statistic: str = "rel_auc", title: str = "") -> plt.Figure:
    """Models (rows) × threats (columns) of the curve card (:func:`xrlib.studies.card.study.card_evidence`'s
    cells): the colour is ``statistic`` (default the retained fraction of clean Dice over the threat's budget
    grid, 1 = nothing lost); each cell is annotated with the value and, below it, its 95 % interval over seeds
    and subjects, or "n/a (k subj.)" where too few subjects give no interval; "n/a" where the cell has no
    summary (its note in ``cells.csv`` says why); a blank cell: the model was not scored under that threat."""
    d = evidence[evidence["statistic"] == statistic]
    if d.empty:
        raise ValueError(f"the card's cells have no statistic {statistic!r}")
    models = list(dict.fromkeys(d["model"]))
    threats = list(dict.fromkeys(d["threat"]))
    at = d.set_index(["model", "threat"])
    v = np.full((len(models), len(threats)), np.nan)
    fig, ax = plt.subplots(figsize=(1.35 * len(threats) + 3.4, 0.5 * len(models) + 2.0), constrained_layout=True)
    texts = {}
    for i, m in enumerate(models):
        for j, t in enumerate(threats):
            if (m, t) not in at.index:
                continue
            r = at.loc[(m, t)]
            r = r.iloc[0] if isinstance(r, pd.DataFrame) else r
            v[i, j] = float(r["value"])
            if not np.isfinite(v[i, j]):  # no summary (e.g. fewer than two positive budgets): the note says why
                texts[i, j] = "n/a"
                continue
            band = (f"[{r['lo']:.2f}, {r['hi']:.2f}]" if np.isfinite(float(r["lo"])) and np.isfinite(float(r["hi"]))
                    else f"n/a ({int(r['n_subjects'])} subj.)")
            texts[i, j] = f"{v[i, j]:.2f}\n{band}"
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("0.9")
    im = ax.imshow(np.ma.masked_invalid(v), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for (i, j), text in texts.items():
        ax.text(j, i, text, ha="center", va="center", fontsize=7,
                color="black" if not np.isfinite(v[i, j]) or v[i, j] > 0.6 else "white")
    ax.set_xticks(range(len(threats)), threats, fontsize=8, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models, fontsize=8)
    ax.set(xlabel="threat (its whole budget grid)", ylabel="model", title=title)
    label = "retained fraction of clean Dice (1 = nothing lost)" if statistic == "rel_auc" else statistic
    fig.colorbar(im, ax=ax, label=label)
    return fig


def card_ranking(ranking: pd.DataFrame, columns: Sequence, title: str = "") -> plt.Figure:
    """One panel per threat: the models from most (top) to least robust, the statistic with its 95 % CI."""
    cols = [c for c in columns if c.key in set(ranking["column"])]
    n = max(len(cols), 1)
    ncol = min(4, n)
    nrow = int(np.ceil(n / ncol))
    k = ranking["model"].nunique()
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 0.32 * k * nrow + 1.6 * nrow), constrained_layout=True,
                             squeeze=False)
    for ax, c in zip(axes.ravel(), cols):
        d = ranking[ranking["column"] == c.key].iloc[::-1]
        y = np.arange(len(d))
        err = np.vstack([d["value"] - d["lo"], d["hi"] - d["value"]]).clip(min=0)
        ax.barh(y, d["value"], xerr=err, color="tab:blue", alpha=0.75, capsize=2)
        ax.set_yticks(y, [f"{r}. {m}" for r, m in zip(d["rank"], d["model"])], fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"{c.statistic} {'↑' if c.higher_better else '↓'}", fontsize=8)
        ax.set_title(c.title, fontsize=9)
    for ax in axes.ravel()[len(cols):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
