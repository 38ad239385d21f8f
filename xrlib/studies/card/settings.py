"""The card's fixed budgets: the ``card:`` block of a profile as a checked, frozen dataclass.

Block layout (``book/profiles/*.yml``; the profiles differ only in sizes)::

    card:
      pose_budget: 10          # worst-case pose b (deg / mm); one of pose.budgets
      pgd_eps: 0.03            # L∞ ε of PGD and SegPGD, [0, 1] image units
      noise_dose_mas: null     # dose of the noise column (null: the lowest dose of chapter 10's validation grid)
      xi: 2.0                  # target ξ of the learned deformation + bias-field attack (per-image search)
      seed_floor: true         # chapter 10's repeated-seed models: the fixed-budget view's seed spread
      seeds: 3                 # seeds of every verdict-carrying model (defense, control, base; the A/A row's other
                               # seeds are as many more); 1: the chapters' models only, no verdict

Every error is an :class:`xrlib.core.errors.InputError` naming the profile file and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile

__all__ = ["CardSettings", "card_settings"]


@dataclass(frozen=True)
class CardSettings:
    """The card's budgets (module docstring); ``noise_dose_mas`` ``nan`` means the lowest dose of chapter 10's
    dose grid, which the run's validation subjects decide (:func:`xrlib.studies.noise.grid.validation_grid`)."""

    pose_budget: float
    pgd_eps: float
    noise_dose_mas: float
    xi: float
    seed_floor: bool
    seeds: int = 1


def card_settings(profile: Profile) -> CardSettings:
    """The checked ``card:`` block of ``profile``."""
    where = profile.path or profile.name
    block = profile.section("card")
    known = {"pose_budget", "pgd_eps", "noise_dose_mas", "xi", "seed_floor", "seeds"}
    extra = sorted(set(block) - known)
    if extra:
        raise InputError(where, f"card: unknown key(s) {extra}; known: {', '.join(sorted(known))}")

    def num(key: str, lo: float, hi: float, default=None) -> float:
        v = block.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo < float(v) <= hi):
            raise InputError(where, f"card.{key}: expected a number in ({lo:g}, {hi:g}], got {v!r}")
        return float(v)

    dose = block.get("noise_dose_mas")
    dose = math.nan if dose is None else num("noise_dose_mas", 0.0, math.inf)
    floor = block.get("seed_floor", True)
    if not isinstance(floor, bool):
        raise InputError(where, f"card.seed_floor: expected true or false, got {floor!r}")
    seeds = block.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError(where, f"card.seeds: expected an integer ≥ 1, got {seeds!r}")
    return CardSettings(pose_budget=num("pose_budget", 0.0, 180.0), pgd_eps=num("pgd_eps", 0.0, 1.0), noise_dose_mas=dose,
                        xi=num("xi", 0.0, math.inf), seed_floor=floor, seeds=seeds)
