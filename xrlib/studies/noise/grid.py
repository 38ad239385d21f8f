"""Chapter 10's dose grid: halvings of the reference dose, chosen on validation subjects.

:func:`halving_grid` walks down from ``reference·2^above`` by halvings and stops at the first dose at
which every base model's mean validation Dice is below half its clean Dice (the grid then reaches
the models' halving dose), before a dose whose open-field quanta per network-input pixel fall
below a floor (no image is left to segment), or after ``max_halvings``; it says which.
:func:`validation_grid` runs it with the study models on re-rendered noise of the validation
subjects (those with a CT, at the chapter's angles) and caches the result as
``<run>/noise/grid.csv`` and ``grid.json``. The chapter's attack doses are the grid; its two lowest
doses are the figure doses (:func:`figure_doses`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.core.atomic import write_csv_atomic, write_json_atomic
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile
from xrlib.studies.noise.settings import GridSettings, NoiseSettings, noise_settings
from xrlib.studies.noise.sources import noise_sources, noise_threat

__all__ = ["DoseGrid", "figure_doses", "grid_threat", "halving_grid", "validation_grid", "validation_subjects"]

STOP_HALVED = "every base model's validation Dice fell below half its clean Dice"
STOP_FLOOR = "the next halving would leave fewer open-field quanta per input pixel than the floor"
STOP_MAX = "the most halvings the profile allows were tried before every model's Dice halved"


@dataclass(frozen=True)
class DoseGrid:
    """The chosen grid: ``doses`` (mAs, decreasing), per dose and model the validation Dice (``table``:
    ``dose``, ``model``, ``dice``, ``clean_dice``, ``flat_quanta``) and why it stopped (``reason``)."""

    doses: tuple[float, ...]
    table: pd.DataFrame
    reason: str


def halving_grid(evaluate: Callable[[float], Mapping[str, float]], clean: Mapping[str, float], reference: float,
                 flat_quanta: Callable[[float], float], g: GridSettings) -> DoseGrid:
    """Halvings of ``reference`` from ``reference·2^g.above`` down (module docstring).

    ``evaluate(dose)`` gives each model's mean validation Dice at ``dose``; ``clean`` their clean Dice;
    ``flat_quanta(dose)`` the open-field quanta per input pixel. A model whose clean Dice is 0 cannot
    halve and never stops the grid.
    """
    if not clean:
        raise ValueError("no base model to choose the grid with")
    doses, rows, reason = [], [], STOP_MAX
    for k in range(g.above, -g.max_halvings - 1, -1):
        dose = float(reference) * 2.0 ** k
        quanta = float(flat_quanta(dose))
        if quanta < g.floor_flat_quanta:
            reason = STOP_FLOOR
            break
        dice = evaluate(dose)
        doses.append(dose)
        rows += [{"dose": dose, "model": m, "dice": float(dice[m]), "clean_dice": float(c), "flat_quanta": quanta}
                 for m, c in clean.items()]
        if all(c > 0 and dice[m] < 0.5 * c for m, c in clean.items()):
            reason = STOP_HALVED
            break
    return DoseGrid(tuple(doses), pd.DataFrame(rows), reason)


def figure_doses(grid: DoseGrid, k: int = 2) -> tuple[float, ...]:
    """The grid's ``k`` lowest doses, decreasing (with :data:`STOP_HALVED`: the last dose before every model
    halved and the first at which all did)."""
    return tuple(grid.doses[-k:]) if len(grid.doses) >= k else tuple(grid.doses)


def validation_subjects(profile: Profile, run: Path, n: int | None = None) -> list[str]:
    """Validation subjects with a CT of the study models' training sets, alternately from each pool; the first ``n``."""
    import itertools

    from xrlib.studies.rotation import study
    from xrlib.studies.rotation.models import study_configs
    from xrlib.training import select_images

    sets = sorted({t for c in study_configs(profile) for t in c.train_sets})
    rows = select_images(study.datasets_dir(Path(run)), sets, "val", profile.synthetic.cen_alphas)
    rows = rows[rows["pool"] != "real"]
    pools = [sorted(g["subject"].astype(str).unique()) for _, g in rows.groupby("pool", sort=True)]
    order = [sid for tup in itertools.zip_longest(*pools) for sid in tup if sid is not None]
    return order if n is None else order[:n]


def _key(profile: Profile, run: Path, s: NoiseSettings, folders: list[str], subjects: list[str]) -> str:
    text = json.dumps({"settings": asdict(s), "models": folders, "subjects": subjects, "seed": int(profile.seed),
                       "render": profile.raw.get("render"), "size": profile.image_size, "v": 1}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def validation_grid(profile: Profile, run: Path, s: NoiseSettings | None = None) -> DoseGrid:
    """:func:`halving_grid` with the study models on re-rendered noise of the validation subjects (cached)."""
    from xrlib.attacks.noise import NoiseThreat
    from xrlib.drr import nps as nps_mod
    from xrlib.drr.noise import input_bin_side
    from xrlib.eval.metrics import dice
    from xrlib.eval.predict import predict
    from xrlib.studies.rotation import study
    from xrlib.training import load_best

    run, s = Path(run), s or noise_settings(profile)
    g = s.grid
    subjects = validation_subjects(profile, run, g.subjects)
    if not subjects:
        raise InputError(study.datasets_dir(run), "the datasets have no validation subject with a CT for the dose grid")
    trained = study.study_models(profile, run)
    folders = sorted(r.folder.name for r in trained.values())
    key = _key(profile, run, s, folders, subjects)
    folder = run / "noise"
    try:
        rec = json.loads((folder / "grid.json").read_text(encoding="utf-8"))
        if rec.get("key") == key:
            return DoseGrid(tuple(rec["doses"]), pd.read_csv(folder / "grid.csv"), rec["reason"])
    except (OSError, ValueError, KeyError):
        pass
    sources, rows = noise_sources(profile, run, s.alphas, subjects=subjects)
    doses = [s.reference_dose_mas * 2.0 ** k for k in range(g.above, -g.max_halvings - 1, -1)]
    es = sources[0].expected
    patch = nps_mod.patch_px(s.nps_patch_mm, sources[0].pitch_mm, s.nps_min_px, min(es.signal.shape))
    threat = NoiseThreat(sources, rows, profile.image_size, doses, arms=("rerendered",), realisations=g.realisations,
                         reference_dose=s.reference_dose_mas, nps_realisations=s.nps_realisations, patch=patch,
                         seed=int(profile.seed) + 7919)
    victims = {name: load_best(res) for name, res in trained.items()}

    def mean_dice(model, images, masks) -> float:
        p, _ = predict(model, (images, masks))
        return float(np.mean([dice(a, b) for a, b in zip(p, masks)]))

    clean = {m: mean_dice(v, threat.test.images, threat.test.masks) for m, v in victims.items()}

    def evaluate(dose: float) -> dict[str, float]:
        th = threat.apply(None, threat.test, dose)
        return {m: mean_dice(v, th.images, th.masks) for m, v in victims.items()}

    area = input_bin_side(es.signal.shape, profile.image_size) ** 2
    out = halving_grid(evaluate, clean, s.reference_dose_mas, lambda d: es.flat_quanta(d) * area, g)
    write_csv_atomic(folder / "grid.csv", out.table)
    write_json_atomic(folder / "grid.json", {"key": key, "doses": list(out.doses), "reason": out.reason,
                                             "subjects": subjects})
    return out


def grid_threat(profile: Profile, run: Path, doses=None, **options):
    """:func:`xrlib.studies.noise.sources.noise_threat` at ``doses`` (default: the validation grid's doses)."""
    if doses is None:
        doses = validation_grid(profile, run).doses
    return noise_threat(profile, run, doses=doses, **options)
