"""Chapter 09's attack diagnostics for a user's own network (the external card's PGD cell).

:func:`check_external` runs the checks of :mod:`xrlib.studies.pgd.diagnostics` on the external model at its
own mid-range ε (:func:`xrlib.studies.pgd.diagnostics.mid_budget` of its Dice-vs-ε curve on chapter 09's grid:
the ε whose mean Dice is in [0.3, 0.7], else the grid ε closest to 0.5), with the profile's ``pgd.check``
settings (iteration cap, restarts, tolerance) — the same checks, directions and tolerances as the book's
victims get:

* a network with usable input gradients gets (a) convergence, (b) 2× steps + restarts, (c) iterative ≤
  single-step, (d) monotone in ε, (e) transfer from each book victim whose chapter 09 adversarial images at
  that ε are in the run (the same test images in the same order; a forward pass each) and (f) the
  gradient-free Square search;
* a network without them is already attacked by the Square search alone (the card's gradient-free stand-in),
  so the gradient checks (a)–(c) and (f) do not apply and are listed as such; (d) and (e) still run.

As in chapter 09 every diagnostic run's images enter the reported per-image minimum (the ``pgd`` rows at that
ε are re-scored), and the failed outcomes become the flag of the card's PGD cell ("not converged",
"possible gradient masking", "not at full success").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.attacks.base import TestImages, score_threat
from xrlib.core.profiles import Profile

__all__ = ["DIAGNOSTIC_COLUMNS", "ExternalDiagnostics", "NOT_APPLICABLE", "check_external", "transfer_images"]

#: Columns of the diagnostics table (those of :func:`xrlib.studies.pgd.diagnostics.diagnose`).
DIAGNOSTIC_COLUMNS = ("check", "direction", "tolerance", "white-box Dice", "check Dice", "outcome")
#: Outcome of a check that does not apply to the network.
NOT_APPLICABLE = "not applicable"


@dataclass
class ExternalDiagnostics:
    """The diagnostics of one external model: the ε checked (``budget``, L∞, [0, 1] image units), one row per
    check (:data:`DIAGNOSTIC_COLUMNS`), the flag of its PGD cell (``""``: every applicable check passed), the
    re-scored ``pgd`` contract rows (the diagnostic runs folded into the per-image minimum) and notes."""

    budget: float
    table: pd.DataFrame
    flag: str
    rows: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def transfer_images(run: Path, test: TestImages, budget: float) -> tuple[dict[str, np.ndarray], list[str]]:
    """``({book victim: its chapter 09 ensemble images at budget}, notes)`` from ``<run>/pgd/examples/pgd``; a
    victim's images are used only when they are of the same test images in the same order (subject and α
    per image), else a note says why they are not."""
    from xrlib.studies.pgd.study import FOLDER

    base = Path(run) / FOLDER / "examples" / "pgd"
    out, notes = {}, []
    if not base.is_dir():
        return out, [f"(e) transfer: not run — no chapter 09 adversarial images in this run ({base} is missing)"]
    subj = test.rows["subject"].astype(str).to_numpy()
    alpha = test.rows["alpha"].to_numpy(float)
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        path = folder / f"budget_{budget:g}.npz"
        if not path.is_file():
            notes.append(f"(e) transfer from {folder.name}: not run — no images at ε = {budget:g} ({path.name} missing)")
            continue
        with np.load(path) as z:
            same = (z["image"].shape == test.images.shape and np.array_equal(z["subject"].astype(str), subj)
                    and np.allclose(z["alpha"], alpha))
            if not same:
                notes.append(f"(e) transfer from {folder.name}: not run — its images are not this card's test images")
                continue
            out[folder.name] = z["image"].astype(np.float32)
    return out, notes


def _row(check: str, direction: str, tolerance: float, white: float, value: float, outcome: str) -> dict:
    return dict(zip(DIAGNOSTIC_COLUMNS, (check, direction, tolerance, white, value, outcome)))


def _na(check: str, why: str, white: float) -> dict:
    return _row(check, why, np.nan, white, np.nan, NOT_APPLICABLE)


def check_external(profile: Profile, run: Path, model: torch.nn.Module, name: str, threat, test: TestImages,
                   rows: pd.DataFrame, differentiable: bool = True) -> ExternalDiagnostics:
    """The applicable chapter 09 diagnostics (module docstring) of ``model`` (book convention), attacked by
    ``threat`` (the :class:`~xrlib.attacks.ensemble.EnsembleThreat` that produced its ``pgd`` ``rows`` on
    ``test``, so its cached runs are reused and the diagnostic runs enter its minimum)."""
    from xrlib.studies.pgd import diagnostics as dg
    from xrlib.studies.pgd.settings import pgd_settings
    from xrlib.studies.rotation import study
    from xrlib.studies.rotation.groups import alpha_group

    s = pgd_settings(profile)
    c = s.check
    curve = rows.groupby("budget")["dice"].mean()
    eps = float(c.budget) if c.budget is not None else dg.mid_budget(curve)
    images, masks = np.asarray(test.images, np.float32), np.asarray(test.masks, np.float32)
    transfer, notes = transfer_images(run, test, eps)
    if differentiable:
        table = dg.diagnose(model, images, masks, eps, threat, c.tolerance, c.steps, c.restarts, curve=curve,
                            transfer=transfer, seed=s.seed)
    else:
        table = _gradient_free_checks(model, images, masks, eps, threat, c.tolerance, curve, transfer)
    table = table.reindex(columns=list(DIAGNOSTIC_COLUMNS))
    flag = "; ".join(o for o in dict.fromkeys(table["outcome"]) if o not in (dg.PASS, NOT_APPLICABLE))
    fresh = score_threat(threat, {name: model}, test, study.pixel_mm(profile), budgets=[eps], groups=alpha_group)
    fresh = fresh[np.isclose(fresh["budget"], eps)].assign(seed=0)
    at = np.isclose(rows["budget"].astype(float), eps)
    rescored = pd.concat([rows[~at], fresh], ignore_index=True).sort_values("budget", kind="stable")
    return ExternalDiagnostics(eps, table, flag, rescored.assign(flag=flag).reset_index(drop=True), notes)


def _gradient_free_checks(model, images: np.ndarray, masks: np.ndarray, eps: float, threat, tolerance: float,
                          curve: pd.Series, transfer: dict[str, np.ndarray]) -> pd.DataFrame:
    """(d) and (e) for a network attacked by the Square search alone; (a)–(c) and (f) listed as not applicable."""
    from xrlib.studies.pgd import diagnostics as dg

    _, score, _, _ = threat.attack(model, images, masks, eps)
    white = float(score.mean())
    why = "needs input gradients, which this network does not give (its attack is the Square search)"
    rows = [_na("(a) convergence", why, white), _na("(b) 2× steps + restarts", why, white),
            _na("(c) iterative ≤ single-step", why, white)]
    c = curve.sort_index()
    rise = float(np.max(np.diff(c.to_numpy()), initial=-np.inf))
    ok = rise <= tolerance and float(c.iloc[-1]) <= dg.FULL_SUCCESS
    rows.append(_row(f"(d) monotone in ε, ≤ {dg.FULL_SUCCESS:g} at ε = {c.index[-1]:g}",
                     "Dice never rises with ε by > tolerance; last ≤ 0.05", tolerance, white, float(c.iloc[-1]),
                     dg.PASS if ok else "not at full success"))
    for source, adv in transfer.items():
        d = dg.hard_dice(model, adv, masks)
        threat.add_candidates(model, eps, adv, d, f"transfer from {source}")
        ok = white <= float(d.mean()) + tolerance
        rows.append(_row(f"(e) transfer from {source}", "white-box ≤ transfer + tolerance", tolerance, white,
                         float(d.mean()), dg.PASS if ok else "possible gradient masking"))
    rows.append(_na("(f) gradient-free (Square)", "the white-box attack here is the Square search itself", white))
    return pd.DataFrame(rows)
