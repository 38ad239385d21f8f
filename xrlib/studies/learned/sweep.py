"""Chapter 11's bound sweep: the Dice-drop attack under perceptibility bounds, D-only and V-only compared at equal p/std.

:func:`bound_sweep` attacks the victim per image with the objective ``dice`` of
:mod:`xrlib.attacks.deformation` (the Dice drop inside the bounds, best iterate kept) for every
bound of a sweep: D-only at each maximum displacement (mm; the no-folding limit of the coarse grid,
spacing/4 pixels, is checked), V-only at each maximum bias (image units). Per image it records the
Dice against the warped truth, the clean Dice, the perceptibility ``p/std`` (paper 004 eq. 7 over the
clean image's standard deviation), the Dice against the *warped* clean prediction and ``changed``
(that Dice < 0.7), and ``success`` (Dice fell by ≥ 30 % of the clean Dice).

:func:`sweep_curves` summarises per variant and bound: mean p/std, mean Dice drop, and the success
rate among the images with a good clean prediction (clean Dice ≥ :data:`GOOD_CLEAN`).
:func:`equal_pstd` compares D-only with V-only at the largest p/std both reach, each curve linearly
interpolated there (a comparison at unequal perceptibility is not a comparison).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from xrlib.attacks.deformation import FieldSettings, optimise_fields, perceptibility, warp_mask
from xrlib.eval.metrics import dice
from xrlib.eval.robustness import CHANGED_BELOW, success_flags

__all__ = ["GOOD_CLEAN", "bound_sweep", "equal_pstd", "no_fold_limit_px", "sweep_curves"]

#: An image counts in the success rate when its clean Dice is at least this.
GOOD_CLEAN = 0.8


def no_fold_limit_px(size: int, grid: int) -> float:
    """The largest per-component displacement (pixels) without folding: spacing/4, spacing = (S − 1)/(g − 1)."""
    return (int(size) - 1) / (int(grid) - 1) / 4.0


def _device(model) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def _predict(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        z = model(torch.as_tensor(x, dtype=torch.float32, device=_device(model))[:, None])
        return (z > 0).float()[:, 0].cpu().numpy()


def bound_sweep(model, images: np.ndarray, masks: np.ndarray, fields: FieldSettings, pixel_mm: float,
                d_bounds_mm: Sequence[float], v_bounds: Sequence[float], seed: int = 0) -> pd.DataFrame:
    """One row per image × (variant, bound) (module docstring). ``fields``: grid, steps, lr, init_std of the
    search (its variant, bounds and objective are set here). A D bound beyond the no-folding limit raises."""
    images, masks = np.asarray(images, np.float32), np.asarray(masks, np.float32)
    size = images.shape[-1]
    limit = no_fold_limit_px(size, fields.grid)
    bad = [b for b in d_bounds_mm if b / pixel_mm >= limit]
    if bad:
        raise ValueError(f"D bound {bad[0]:g} mm = {bad[0] / pixel_mm:.2f} px is at or beyond the no-folding limit "
                         f"{limit:.2f} px of a {fields.grid}×{fields.grid} grid on {size} px")
    p0 = _predict(model, images)
    clean = np.array([dice(p, m) for p, m in zip(p0, masks)])
    rows = []
    plan = [("D", b, replace(fields, variant="D", max_disp_px=b / pixel_mm, objective="dice")) for b in d_bounds_mm]
    plan += [("V", b, replace(fields, variant="V", max_bias=b, objective="dice")) for b in v_bounds]
    x = torch.as_tensor(images, device=_device(model))[:, None]
    for variant, bound, f in plan:
        adv, disp, _, _ = optimise_fields(model, x, 1.0, f, torch.Generator().manual_seed(seed))
        adv_np, disp = adv[:, 0].cpu().numpy(), disp.cpu()
        warped = warp_mask(torch.as_tensor(masks)[:, None], disp)[:, 0].numpy()
        clean_w = warp_mask(torch.as_tensor(p0)[:, None], disp)[:, 0].numpy()
        p = _predict(model, adv_np)
        d = np.array([dice(a, m) for a, m in zip(p, warped)])
        vs = np.array([dice(a, c) for a, c in zip(p, clean_w)])
        _, rel = perceptibility(adv_np, images)
        rows.append(pd.DataFrame({"image": np.arange(len(images)), "variant": variant, "bound": float(bound),
                                  "bound_unit": "mm" if variant == "D" else "image units", "dice": d,
                                  "dice_clean": clean, "p_rel": rel, "dice_vs_warped_clean_pred": vs,
                                  "changed": vs < CHANGED_BELOW, "success": success_flags(d, clean)}))
    return pd.concat(rows, ignore_index=True)


def sweep_curves(df: pd.DataFrame, good: float = GOOD_CLEAN) -> pd.DataFrame:
    """Per variant and bound: ``p/std`` (mean), ``Dice drop`` (mean clean − attacked), ``success rate``
    among the images with clean Dice ≥ ``good`` (``n good``: how many), ``changed rate`` (all images)."""
    out = []
    for (variant, bound), g in df.groupby(["variant", "bound"], sort=True):
        ok = g[g["dice_clean"] >= good]
        out.append({"variant": variant, "bound": bound, "p/std": g["p_rel"].mean(),
                    "Dice drop": (g["dice_clean"] - g["dice"]).mean(),
                    "success rate": ok["success"].mean() if len(ok) else np.nan, "n good": len(ok),
                    "changed rate": g["changed"].mean()})
    return pd.DataFrame(out)


def equal_pstd(curves: pd.DataFrame) -> pd.DataFrame:
    """D-only vs V-only at the largest p/std both reach: Dice drop and success rate of each, linearly
    interpolated in p/std along its curve (sorted by p/std). Empty when the ranges do not overlap."""
    c = {v: g.sort_values("p/std") for v, g in curves.groupby("variant")}
    if not {"D", "V"} <= set(c):
        return pd.DataFrame()
    lo = max(c["D"]["p/std"].min(), c["V"]["p/std"].min())
    hi = min(c["D"]["p/std"].max(), c["V"]["p/std"].max())
    if hi < lo:
        return pd.DataFrame()
    rows = []
    for v in ("D", "V"):
        g = c[v]
        rows.append({"variant": v, "p/std": hi,
                     "Dice drop": float(np.interp(hi, g["p/std"], g["Dice drop"])),
                     "success rate": float(np.interp(hi, g["p/std"], g["success rate"].fillna(0.0)))})
    return pd.DataFrame(rows)
