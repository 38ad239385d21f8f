"""The attack ensemble of the input threat ``pgd``: per image, the lowest Dice over every attack run.

A member is one attack (:class:`Member`): PGD or APGD (:mod:`xrlib.attacks.apgd`) on one objective
of :data:`xrlib.attacks.pgd.OBJECTIVES`, with its iterations and restarts. :func:`run_ensemble`
runs every member (each restart from its own random start) on a batch and keeps, per image, the
iterate with the lowest hard Dice against the truth over all members, restarts and iterates, and the
name of the member that reached it (ties: the earlier member). Images that other runs found
(diagnostic runs, transfers: :meth:`EnsembleThreat.add_candidates`) enter the same minimum.

:class:`EnsembleThreat` is the threat ``pgd`` of the results contract (budget = ε in [0, 1] image
units, unit ``linf`` or ``l2``): its ``dice`` per image is that minimum; the extra column ``attack``
names the winning attack (``clean`` at ε = 0). :data:`DEFAULT_MEMBERS` is the ensemble of the book
(SEA-style: APGD on soft Dice and on the balanced and masked cross-entropy, beside PGD and SegPGD).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from xrlib.attacks.apgd import AttackRun, apgd_attack, pgd_run, square_attack
from xrlib.attacks.base import TestImages, Threat, Threatened
from xrlib.attacks.pgd import NORMS, OBJECTIVES, input_attack_grid, perturbation_norms
from xrlib.core.errors import InputError

__all__ = ["DEFAULT_MEMBERS", "EnsembleThreat", "Member", "gradient_free", "members", "run_ensemble"]


@dataclass(frozen=True)
class Member:
    """One attack of the ensemble: ``method`` (``pgd``, ``apgd`` or the gradient-free ``square``, L∞ only),
    ``objective`` (a name of :data:`~xrlib.attacks.pgd.OBJECTIVES`), ``steps`` (iterations; for ``square``
    the forward passes), ``restarts``, and for PGD the step ``step_fraction · ε`` (APGD needs none)."""

    name: str
    method: str
    objective: str
    steps: int
    restarts: int = 1
    step_fraction: float = 0.2

    def run(self, model, x, y, eps: float, norm: str, generator: torch.Generator) -> AttackRun:
        """One restart on a batch."""
        if self.method == "apgd":
            return apgd_attack(model, x, y, eps, self.steps, norm, self.objective, generator=generator)
        if self.method == "square":
            return square_attack(model, x, y, eps, self.steps, self.objective, generator=generator)
        return pgd_run(model, x, y, eps, self.steps, self.step_fraction * eps, norm, self.objective, generator=generator)


def members(steps: int, apgd_steps: int, step_fraction: float = 0.2, restarts: int = 1) -> tuple[Member, ...]:
    """The book's ensemble: PGD and SegPGD (``steps`` of ``step_fraction·ε``), and APGD (``apgd_steps``)
    on soft Dice, balanced CE and masked CE; ``restarts`` each."""
    return (Member("pgd", "pgd", "dice", steps, restarts, step_fraction),
            Member("segpgd", "pgd", "segpgd", steps, restarts, step_fraction),
            Member("apgd-dice", "apgd", "dice", apgd_steps, restarts),
            Member("apgd-bce", "apgd", "balanced-ce", apgd_steps, restarts),
            Member("apgd-mce", "apgd", "masked-ce", apgd_steps, restarts))


def gradient_free(queries: int, restarts: int = 1) -> tuple[Member, ...]:
    """The ensemble for a victim without usable input gradients: the L∞ Square-style random search alone
    (:func:`xrlib.attacks.apgd.square_attack`) with ``queries`` forward passes per restart."""
    return (Member("square", "square", "dice", int(queries), int(restarts)),)


#: The default ensemble (10 PGD steps, 20 APGD iterations, one restart each).
DEFAULT_MEMBERS = members(10, 20)


def run_ensemble(model, x: torch.Tensor, y: torch.Tensor, eps: float, ensemble: Sequence[Member], norm: str = "linf",
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
    """Per image of the batch: the image with the lowest hard Dice over every member, restart and iterate,
    that Dice, the winning member's name, and the forward passes spent."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    best, score, winner, passes = None, None, [], 0
    for m in ensemble:
        for r in range(m.restarts):
            run = m.run(model, x, y, eps, norm, gen)
            passes += run.passes
            label = m.name if m.restarts == 1 else f"{m.name}#{r + 1}"
            if best is None:
                best, score, winner = run.images, run.score, [label] * len(x)
                continue
            better = run.score < score
            best = torch.where(better.reshape(-1, *([1] * (x.ndim - 1))), run.images, best)
            score = torch.minimum(run.score, score)
            winner = [label if b else w for b, w in zip(better.tolist(), winner)]
    return best, score, winner, passes


class EnsembleThreat(Threat):
    """The threat ``pgd``: the per-image minimum Dice over the attack ensemble (module docstring).

    ``grid``: budgets including the clean 0 (default :data:`~xrlib.attacks.pgd.LINF_BUDGETS`, or
    :func:`~xrlib.attacks.pgd.l2_budgets` of ``image_size`` for L2). The random starts of budget ε come
    from a generator seeded with ``(seed, ε)``. Results are cached per model and budget, so a model
    re-scored after :meth:`add_candidates` costs only the new candidates' evaluation. Extra columns:
    ``attack`` (the winner), ``forward_passes`` (per image, the ensemble's passes), ``delta_linf``, ``delta_l2``.
    """

    name = "pgd"
    clean_budget = 0.0
    clean_keys = ("subject", "alpha")

    def __init__(self, ensemble: Sequence[Member] = DEFAULT_MEMBERS, grid: Sequence[float] | None = None,
                 norm: str = "linf", seed: int = 0, batch_size: int = 16, image_size: int | None = None):
        if norm not in NORMS:
            raise InputError(None, f"{self.name}: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        bad = [m for m in ensemble if m.method not in ("pgd", "apgd", "square") or m.objective not in OBJECTIVES
               or m.steps < 1 or m.restarts < 1 or (m.method == "square" and norm != "linf")]
        if not ensemble or bad:
            raise InputError(None, f"{self.name}: bad ensemble member {bad[0] if bad else 'none given'}")
        self.grid = input_attack_grid(self.name, grid, norm, image_size)
        self.ensemble, self.norm, self.budget_unit = tuple(ensemble), norm, norm
        self.seed, self.batch_size = int(seed), int(batch_size)
        self._cache: dict = {}
        self._candidates: dict = {}

    def budgets(self) -> tuple[float, ...]:
        return self.grid

    def generator(self, budget: float) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(round(float(budget) * 1e6)))

    def add_candidates(self, model, budget: float, images: np.ndarray, dice: np.ndarray, label: str) -> None:
        """Register other runs' adversarial ``images`` ``(N, S, S)`` of the test images (same order) for
        ``model`` at ``budget``, with their hard Dice; they enter the per-image minimum as ``label``."""
        self._candidates.setdefault((id(model), float(budget)), []).append(
            (np.asarray(images, np.float32), np.asarray(dice, float), str(label)))

    def _ensemble(self, model, images: np.ndarray, masks: np.ndarray, budget: float):
        key = (id(model), float(budget))
        if key not in self._cache:
            dev = next(iter(model.parameters()), torch.empty(0)).device
            gen, adv, score, win, passes = self.generator(budget), [], [], [], 0
            for i in range(0, len(images), self.batch_size):
                x = torch.as_tensor(images[i:i + self.batch_size], dtype=torch.float32, device=dev)[:, None]
                y = torch.as_tensor(masks[i:i + self.batch_size], dtype=torch.float32, device=dev)[:, None]
                a, s, w, p = run_ensemble(model, x, y, float(budget), self.ensemble, self.norm, gen)
                adv.append(a[:, 0].cpu().numpy())
                score.append(s.cpu().numpy())
                win += w
                passes = p
            self._cache[key] = (np.concatenate(adv), np.concatenate(score), win, passes)
        return self._cache[key]

    def attack(self, model, images: np.ndarray, masks: np.ndarray, budget: float):
        """Per image: the lowest-Dice image over the ensemble and the candidates, its Dice and the winner."""
        adv, score, win, passes = self._ensemble(model, images, masks, budget)
        adv, score, win = adv.copy(), score.copy(), list(win)
        for imgs, d, label in self._candidates.get((id(model), float(budget)), []):
            better = d < score
            adv[better], score[better] = imgs[better], d[better]
            win = [label if b else w for b, w in zip(better, win)]
        return adv, score, win, passes

    def apply(self, model, test: TestImages, budget: float) -> Threatened:
        images = np.asarray(test.images, np.float32)
        if float(budget) == 0.0:
            adv, win, passes = images.copy(), ["clean"] * len(images), 0
        else:
            adv, _, win, passes = self.attack(model, images, test.masks, budget)
        extra = perturbation_norms(adv, images)
        extra.insert(0, "forward_passes", passes)
        extra.insert(0, "attack", win)
        return Threatened(adv, test.masks, test.rows, same_view=np.ones(len(adv), bool), extra=extra)
