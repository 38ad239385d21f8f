"""Figures of the PGD chapter: Dice vs ε with CIs, Dice by α group, adversarial triplets, OOD attack examples."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from xrlib.plots.results import _model_color

__all__ = ["alpha_group_curves", "eps_curves", "ood_examples", "shape_level_curves", "triplet_figure"]


def eps_curves(curve: pd.DataFrame, metric_label: str = "Dice", title: str = "") -> plt.Figure:
    """One panel per attack: mean metric vs ε per model with the subject-clustered 95% CI as a band."""
    attacks = list(dict.fromkeys(curve["attack"]))
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.6 * len(attacks), 3.6), squeeze=False, sharey=True)
    for ax, attack in zip(axes[0], attacks):
        c = curve[curve["attack"] == attack]
        for i, model in enumerate(dict.fromkeys(c["model"])):
            m = c[c["model"] == model].sort_values("budget")
            color = _model_color(model, i)
            ax.plot(m["budget"], m["mean"], "o-", color=color, label=model, ms=3)
            ax.fill_between(m["budget"], m["lo"], m["hi"], color=color, alpha=0.15)
        unit = "L2 radius" if attack.endswith("l2") else "L∞ ε"
        ax.set_xlabel(f"{unit} (image units, intensities in [0, 1])")
        ax.set_title(attack)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"mean {metric_label}")
    axes[0][-1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def alpha_group_curves(groups: pd.DataFrame, order: Sequence[str], models: Sequence[str] | None = None,
                       metric_label: str = "mean Dice (PGD)") -> plt.Figure:
    """Mean metric vs ε per α group (one panel per model) with the subject-clustered CIs as error bars."""
    models = list(dict.fromkeys(groups["model"])) if models is None else list(models)
    fig, axes = plt.subplots(1, len(models), figsize=(3.8 * len(models), 3.4), squeeze=False, sharey=True)
    cmap = plt.get_cmap("coolwarm")
    present = [g for g in order if g in set(groups["alpha_group"])]
    for ax, model in zip(axes[0], models):
        g = groups[groups["model"] == model]
        for j, grp in enumerate(present):
            d = g[g["alpha_group"] == grp].sort_values("budget")
            color = cmap(j / max(1, len(present) - 1))
            ax.errorbar(d["budget"], d["mean"], yerr=[d["mean"] - d["lo"], d["hi"] - d["mean"]], fmt="o-", ms=3,
                        capsize=2, color=color, label=grp)
        ax.set_title(model, fontsize=8)
        ax.set_xlabel("L∞ ε (image units)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric_label)
    axes[0][-1].legend(fontsize=7, title="α group")
    fig.tight_layout()
    return fig


def shape_level_curves(curve: pd.DataFrame, title: str = "") -> plt.Figure:
    """Shape variability vs robustness: mean Dice vs ε, one panel per model, one line per deformation
    amplitude (``curve``: columns ``level``, ``model``, ``budget``, ``mean``, ``lo``, ``hi``), CI bands."""
    models = list(dict.fromkeys(curve["model"]))
    levels = sorted(curve["level"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(4.4 * len(models), 3.5), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, model in zip(axes[0], models):
        c = curve[curve["model"] == model]
        for j, level in enumerate(levels):
            m = c[c["level"] == level].sort_values("budget")
            color = cmap(0.85 * j / max(1, len(levels) - 1))
            ax.plot(m["budget"], m["mean"], "o-", ms=3, color=color, label=f"amplitude {level:g}")
            ax.fill_between(m["budget"], m["lo"], m["hi"], color=color, alpha=0.15)
        ax.set_title(model, fontsize=8)
        ax.set_xlabel("L∞ ε (image units, intensities in [0, 1])")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean Dice under PGD")
    axes[0][-1].legend(fontsize=7, title="deformation", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _contours(ax, truth, prob, color):
    ax.contour(truth, levels=[0.5], colors="red", linewidths=0.8)
    if prob is not None and prob.max() >= 0.5:
        ax.contour(prob, levels=[0.5], colors=color, linewidths=0.8)


def triplet_figure(triplets: Sequence[dict], budget: float, gain: float = 10.0) -> plt.Figure:
    """Rows = models: clean image, perturbation × ``gain`` (grey = 0), adversarial image; the truth
    in red and the model's prediction (probability ≥ 0.5) in cyan on the clean and adversarial images."""
    fig, axes = plt.subplots(len(triplets), 3, figsize=(8.4, 2.8 * len(triplets)), squeeze=False)
    for row, t in zip(axes, triplets):
        delta = (t["adv"] - t["clean"]) * gain
        row[0].imshow(t["clean"], cmap="gray", vmin=0, vmax=1)
        _contours(row[0], t["truth"], t["p_clean"], "cyan")
        row[1].imshow(delta, cmap="gray", vmin=-1, vmax=1)
        row[2].imshow(t["adv"], cmap="gray", vmin=0, vmax=1)
        _contours(row[2], t["truth"], t["p_adv"], "cyan")
        row[0].set_ylabel(f"{t['model']}\n{t['title']}\nrow (px)", fontsize=7)
        for ax, title in zip(row, ("clean", f"perturbation × {gain:g}", f"adversarial, L∞ ε = {budget:g}")):
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("column (px)", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def ood_examples(names: Sequence[str], clean: np.ndarray, attacked: np.ndarray, probs: np.ndarray, targets: np.ndarray,
                 scores: Sequence[float] | None = None, n: int = 3) -> plt.Figure:
    """Rows = OOD images: the input, its attacked version, and the mask the network produces (target in red)."""
    n = min(n, len(clean))
    fig, axes = plt.subplots(n, 3, figsize=(8.4, 2.8 * n), squeeze=False)
    for i in range(n):
        a = axes[i]
        a[0].imshow(clean[i], cmap="gray", vmin=0, vmax=1)
        a[1].imshow(attacked[i], cmap="gray", vmin=0, vmax=1)
        a[2].imshow(probs[i], cmap="viridis", vmin=0, vmax=1)
        a[2].contour(targets[i], levels=[0.5], colors="red", linewidths=0.8)
        a[0].set_ylabel(f"{names[i]}\nrow (px)", fontsize=7)
        extra = f" (recon. error {scores[i]:.3f})" if scores is not None else ""
        for ax, title in zip(a, ("OOD input", "attacked" + extra, "produced mask (prob.), target in red")):
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("column (px)", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig
