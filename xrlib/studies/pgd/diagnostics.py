"""Chapter 09's attack diagnostics (Carlini et al. 2019's checklist), each in the direction that exposes a weak attack.

At one mid-range ε (:func:`mid_budget`: where the base model's mean Dice under the ensemble is in
[0.3, 0.7]) :func:`diagnose` compares the ensemble's per-image minimum Dice (the reported number,
"white-box") with:

(a) ``convergence`` — APGD on soft Dice: the running-minimum mean Dice must change by < ``CONVERGED``
    (0.01) over the last half of the iterations; else the iterations double up to ``max_steps`` and,
    still moving, the outcome is ``not converged``;
(b) ``more steps + restarts`` — APGD with twice the steps and ``restarts`` new starts (another seed):
    folded into the minimum, it must lower the mean Dice by < ``tolerance``, else ``not converged``;
(c) ``iterative ≤ single-step`` — FGSM (one step of ε from the clean image) must not beat the
    white-box mean by more than ``tolerance``, else ``possible gradient masking``;
(d) ``monotone in ε`` — the mean Dice over the grid never rises by more than ``tolerance`` with ε
    and is ≤ ``FULL_SUCCESS`` (0.05) at the largest ε, else ``not at full success``;
(e) ``transfer from M`` — images made on another victim must not beat white-box by more than
    ``tolerance``, else ``possible gradient masking``;
(f) ``gradient-free`` — the Square-style random search (:func:`xrlib.attacks.apgd.square_attack`)
    with as many forward passes as the ensemble spent (one gradient step counted as one forward
    pass) must not beat white-box by more than ``tolerance``, else ``possible gradient masking``.

Every diagnostic run's images enter the reported per-image minimum (:meth:`EnsembleThreat.add_candidates`),
and the failed checks' outcomes become the model's ``flag`` (carried to every row of that model): a flag
changes or marks the number, it never only decorates the table.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from xrlib.attacks.apgd import apgd_attack, pgd_run, square_attack
from xrlib.attacks.ensemble import EnsembleThreat
from xrlib.nets.losses import dice_per_image

__all__ = ["BAND", "CONVERGED", "FULL_SUCCESS", "GRID_WARNING", "PASS", "TRIAL_EPS", "diagnose", "dice_vs_eps", "flags",
           "grid_check", "grid_on_validation", "hard_dice", "mid_budget", "propose_grid", "validation_trial"]

#: (a): a change of the mean Dice over the last half of the iterations below this counts as converged.
CONVERGED = 0.01
#: (d): the mean Dice the largest ε must reach.
FULL_SUCCESS = 0.05
PASS = "pass"
#: The mid-range band of the mean Dice (where the models differ; the diagnostics' ε lies in it).
BAND = (0.3, 0.7)
#: The outcome of :func:`grid_on_validation` when the profile's grid misses the band or the floor.
GRID_WARNING = "profile grid not informative on validation images"
#: The fine trial grid of :func:`dice_vs_eps` (L∞ ε, [0, 1] image units; 0 = clean).
TRIAL_EPS = (0.0, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064)


def hard_dice(model, images: np.ndarray, masks: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Hard Dice per image of ``model`` on ``images`` ``(N, S, S)`` against ``masks``."""
    dev = next(iter(model.parameters()), torch.empty(0)).device
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.as_tensor(np.asarray(images[i:i + batch_size]), dtype=torch.float32, device=dev)[:, None]
            y = torch.as_tensor(np.asarray(masks[i:i + batch_size]), dtype=torch.float32, device=dev)[:, None]
            out.append(dice_per_image(model(x), y).cpu().numpy())
    return np.concatenate(out).astype(float)


def mid_budget(curve: pd.Series, lo: float = 0.3, hi: float = 0.7) -> float:
    """The ε > 0 of ``curve`` (mean Dice indexed by ε) whose Dice is in [lo, hi] and closest to their
    middle; none inside: the one closest to the middle."""
    c = curve[curve.index > 0]
    if c.empty:
        raise ValueError("the Dice-vs-ε curve has no budget above 0")
    inside = c[(c >= lo) & (c <= hi)]
    pool = inside if len(inside) else c
    return float((pool - (lo + hi) / 2).abs().idxmin())


def propose_grid(eps: np.ndarray, mean_dice: np.ndarray, n: int = 6, floor: float = FULL_SUCCESS) -> tuple[float, ...]:
    """An informative ε grid from a (validation) Dice-vs-ε curve on a fine trial grid: ``n`` log-spaced
    points from the largest ε whose Dice is still ≥ 90 % of the clean Dice (index 0 must be ε = 0)
    to the smallest ε whose Dice is ≤ ``floor`` (or the largest trial ε), rounded to 2 significant digits."""
    eps, d = np.asarray(eps, float), np.asarray(mean_dice, float)
    if len(eps) < 3 or eps[0] != 0 or np.any(np.diff(eps) <= 0):
        raise ValueError("the trial grid must start at ε = 0 and ascend, with at least two budgets above 0")
    clean = d[0]
    hi_idx = np.flatnonzero(d[1:] <= floor)
    hi = eps[1:][hi_idx[0]] if len(hi_idx) else eps[-1]
    keep = np.flatnonzero((d[1:] >= 0.9 * clean) & (eps[1:] < hi))
    lo = eps[1:][keep[-1]] if len(keep) else eps[1]
    grid = np.geomspace(lo, hi, n)
    return tuple(float(f"{g:.2g}") for g in grid)


def dice_vs_eps(model, images: np.ndarray, masks: np.ndarray, trial=TRIAL_EPS, steps: int = 10, seed: int = 0) -> pd.Series:
    """Mean hard Dice of ``model`` under L∞ APGD on soft Dice (``steps`` iterations, best iterate per image) at
    each ε of ``trial`` (0: clean): the curve :func:`propose_grid` reads (run it on validation images)."""
    dev = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.as_tensor(np.asarray(images, np.float32), device=dev)[:, None]
    y = torch.as_tensor(np.asarray(masks, np.float32), device=dev)[:, None]
    out = {}
    for k, e in enumerate(trial):
        if e == 0:
            out[0.0] = float(hard_dice(model, images, masks).mean())
            continue
        run = apgd_attack(model, x, y, float(e), steps, "linf", "dice", generator=torch.Generator().manual_seed(seed + k))
        out[float(e)] = float(run.score.mean())
    return pd.Series(out, name="mean Dice").rename_axis("ε")


def validation_trial(budgets) -> tuple[float, ...]:
    """The ε at which :func:`dice_vs_eps` runs on validation images: :data:`TRIAL_EPS` and the profile's ``budgets``
    (so :func:`grid_on_validation` reads measured points, never interpolated ones)."""
    return tuple(sorted({*TRIAL_EPS, *(float(b) for b in budgets)}))


def grid_on_validation(curve: pd.Series, budgets, band: tuple[float, float] = BAND, floor: float = FULL_SUCCESS) -> dict:
    """Is the profile's typed grid ``budgets`` (ε > 0) a checked choice? Read on ``curve`` — the base model's
    mean Dice vs ε on *validation* images (:func:`dice_vs_eps` at :func:`validation_trial`) — it must
    bracket the band and reach the floor: the smallest ε still at Dice ≥ ``band[1]``, at least one ε with
    Dice in ``band``, the largest ε at Dice ≤ ``floor``. One row of the diagnostics table (the columns of
    :func:`diagnose`): ``check`` names the profile's grid and :func:`propose_grid`'s proposal from the same
    curve (as many points), ``white-box Dice``/``check Dice`` are the validation Dice at the smallest and the
    largest ε, ``outcome`` is :data:`PASS` or :data:`GRID_WARNING` with what is missing."""
    lo, hi = band
    b = sorted(float(x) for x in budgets)
    c = curve.sort_index()
    missing = [x for x in b if not np.isclose(c.index.to_numpy(float), x).any()]
    if missing or not b:
        raise ValueError(f"the validation curve has no point at the profile's ε {missing or b}: run dice_vs_eps at "
                         "validation_trial(budgets)")
    at = np.array([float(c[np.isclose(c.index.to_numpy(float), x)].iloc[0]) for x in b])
    proposal = propose_grid(c.index.to_numpy(float), c.to_numpy(float), n=len(b))
    problems = ([f"Dice {at[0]:.2f} < {hi:g} at the smallest ε"] if at[0] < hi else []) + \
               ([f"no ε with Dice in [{lo:g}, {hi:g}]"] if not ((at >= lo) & (at <= hi)).any() else []) + \
               ([f"Dice {at[-1]:.2f} > {floor:g} at the largest ε"] if at[-1] > floor else [])
    return {"check": f"(g) profile grid {{{', '.join(f'{x:g}' for x in b)}}} on validation images "
                     f"(proposal from the same curve: {{{', '.join(f'{x:g}' for x in proposal)}}})",
            "direction": f"smallest ε Dice ≥ {hi:g}, some ε in [{lo:g}, {hi:g}], largest ε ≤ {floor:g}",
            "tolerance": np.nan, "white-box Dice": float(at[0]), "check Dice": float(at[-1]),
            "outcome": PASS if not problems else f"{GRID_WARNING}: " + "; ".join(problems)}


def grid_check(curve: pd.Series) -> dict:
    """Does the grid span clean → below half the clean Dice (the evidence design's requirement)?
    ``curve``: mean Dice indexed by ε (0 included). Returns the clean Dice, the Dice at the smallest
    and the largest ε > 0, and ``spans`` (smallest ε above half clean, largest below)."""
    c = curve.sort_index()
    clean, first, last = float(c.iloc[0]), float(c.iloc[1]), float(c.iloc[-1])
    return {"clean Dice": clean, "Dice at smallest ε": first, "Dice at largest ε": last,
            "spans": bool(first > clean / 2 and last < clean / 2)}


def _row(check, direction, tol, white, value, ok, fail):
    return {"check": check, "direction": direction, "tolerance": tol, "white-box Dice": white,
            "check Dice": value, "outcome": PASS if ok else fail}


def diagnose(model, images: np.ndarray, masks: np.ndarray, eps: float, threat: EnsembleThreat, tolerance: float,
             max_steps: int, restarts: int, curve: pd.Series | None = None,
             transfer: Mapping[str, np.ndarray] | None = None, seed: int = 0) -> pd.DataFrame:
    """The checks (a)–(f) of the module docstring for ``model`` at L∞ ``eps``; their images enter ``threat``'s
    minimum. ``curve``: the model's mean Dice indexed by ε (for (d)); ``transfer``: source victim → its
    adversarial images of the same test images at ``eps``. One row per check: ``check``, ``direction``,
    ``tolerance``, ``white-box Dice`` (the ensemble's mean before any diagnostic run), ``check Dice``, ``outcome``."""
    images, masks = np.asarray(images, np.float32), np.asarray(masks, np.float32)
    _, score, _, passes = threat.attack(model, images, masks, eps)
    white = float(score.mean())
    dev = next(iter(model.parameters()), torch.empty(0)).device
    x, y = torch.as_tensor(images, device=dev)[:, None], torch.as_tensor(masks, device=dev)[:, None]
    gen = lambda k: torch.Generator().manual_seed(seed * 7919 + 104729 + k)  # noqa: E731  (not the grid's seeds)
    apgd = next((m for m in threat.ensemble if m.method == "apgd" and m.objective == "dice"), threat.ensemble[0])
    rows = []

    def fold(run, label):
        d = run.score.cpu().numpy().astype(float)
        threat.add_candidates(model, eps, run.images[:, 0].cpu().numpy(), d, label)
        return d

    steps = apgd.steps
    while True:  # (a)
        run = apgd_attack(model, x, y, eps, steps, "linf", "dice", generator=gen(steps))
        h = run.history
        change = float(h[len(h) // 2] - h[-1])
        if change < CONVERGED or steps * 2 > max_steps:
            break
        steps *= 2
    fold(run, f"apgd-dice ({steps} it.)")
    rows.append(_row(f"(a) convergence ({steps} iterations, cap {max_steps})",
                     "mean Dice change over the last half of the iterations < tolerance", CONVERGED, white,
                     float(h[-1]), change < CONVERGED, "not converged"))
    more = [fold(apgd_attack(model, x, y, eps, 2 * apgd.steps, "linf", "dice", generator=gen(1000 + r)),
                 f"apgd-dice 2×steps #{r + 1}") for r in range(restarts)]  # (b)
    both = np.minimum(score, np.min(more, axis=0))
    rows.append(_row(f"(b) 2× steps + {restarts} restart(s)", "lowers the mean Dice by < tolerance", tolerance,
                     white, float(both.mean()), white - float(both.mean()) < tolerance, "not converged"))
    fgsm = fold(pgd_run(model, x, y, eps, 1, eps, "linf", "dice", random_start=False), "fgsm")  # (c)
    rows.append(_row("(c) iterative ≤ single-step", "white-box ≤ single-step + tolerance", tolerance, white,
                     float(fgsm.mean()), white <= float(fgsm.mean()) + tolerance, "possible gradient masking"))
    if curve is not None:  # (d)
        c = curve.sort_index()
        rise = float(np.max(np.diff(c.to_numpy()), initial=-np.inf))
        ok = rise <= tolerance and float(c.iloc[-1]) <= FULL_SUCCESS
        rows.append(_row(f"(d) monotone in ε, ≤ {FULL_SUCCESS:g} at ε = {c.index[-1]:g}",
                         "Dice never rises with ε by > tolerance; last ≤ 0.05", tolerance, white, float(c.iloc[-1]),
                         ok, "not at full success"))
    for source, adv in (transfer or {}).items():  # (e)
        d = hard_dice(model, adv, masks)
        threat.add_candidates(model, eps, adv, d, f"transfer from {source}")
        rows.append(_row(f"(e) transfer from {source}", "white-box ≤ transfer + tolerance", tolerance, white,
                         float(d.mean()), white <= float(d.mean()) + tolerance, "possible gradient masking"))
    sq = fold(square_attack(model, x, y, eps, passes, "dice", generator=gen(7)), "square")  # (f)
    rows.append(_row(f"(f) gradient-free (Square, {passes} forward passes)", "white-box ≤ gradient-free + tolerance",
                     tolerance, white, float(sq.mean()), white <= float(sq.mean()) + tolerance,
                     "possible gradient masking"))
    return pd.DataFrame(rows)


def flags(diagnostics: pd.DataFrame) -> str:
    """The failed outcomes of one model's diagnostics, joined (``""`` when every check passed)."""
    bad = [o for o in dict.fromkeys(diagnostics["outcome"]) if o != PASS]
    return "; ".join(bad)
