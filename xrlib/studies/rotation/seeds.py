"""Training seeds of a model: seed k of a configuration is the same recipe with its seed moved by k.

Seed 0 is the configuration itself (its name, hash and cached folder unchanged: never retrained);
seed k ≥ 1 is named ``<name> [seed k]`` and seeded ``cfg.seed + k``. A warm-started recipe's seed k
starts from seed k of its start model (:func:`warm_from`), so a defense and its control trained with
the same k share their start. :func:`base_seeds` trains (or loads) seeds of U-Net(Real+Syn_all), the
base of the warm-started defenses, under its own recipe; :func:`evidence_seed_configs` lists the study
models' seeds that chapter 05 trains for the card's verdicts and A/A row, which chapter 10's repeated
trainings reuse.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from xrlib.core.profiles import Profile
from xrlib.studies.rotation.models import study_configs
from xrlib.training import TrainConfig, TrainResult

__all__ = ["BASE_MODEL", "STUDY_CONTRAST", "base_seeds", "eager_if_warm", "evidence_seed_configs", "other_seeds_start", "seed_config", "seed_name", "study_seed_config", "warm_from"]

#: The study model the warm-started defenses start from.
BASE_MODEL = "U-Net(Real+Syn_all)"
#: The study's own contrast (model, control) that carries a verdict on the card: both get the card's seeds.
STUDY_CONTRAST = (BASE_MODEL, "U-Net(Real)")


def seed_name(name: str, k: int) -> str:
    """``name`` for seed 0, ``<name> [seed k]`` for k ≥ 1."""
    return name if int(k) == 0 else f"{name} [seed {int(k)}]"


def seed_config(cfg: TrainConfig, k: int) -> TrainConfig:
    """Seed ``k`` of ``cfg``: ``cfg`` itself for k = 0, else renamed (:func:`seed_name`) and seeded ``cfg.seed + k``;
    ``ValueError`` for k < 0."""
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise ValueError(f"seed index must be an integer ≥ 0, got {k!r}")
    return cfg if k == 0 else dataclasses.replace(cfg, name=seed_name(cfg.name, k), seed=int(cfg.seed) + int(k))


def warm_from(cfg: TrainConfig, folder: str) -> TrainConfig:
    """``cfg`` with its recipe's ``warm_start`` set to ``folder`` (a model folder name under the models root),
    eager (:func:`eager_if_warm`)."""
    return eager_if_warm(dataclasses.replace(cfg, recipe_params={**cfg.recipe_params, "warm_start": str(folder)}))


def eager_if_warm(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` trained eagerly (``compile=False``) when its recipe starts from another model's weights, whatever
    ``train.compile`` says: the chapters' warm starts are fine-tunes of a few epochs, which one compilation costs
    more than it saves (chapter 05's models and their seeds, trained from scratch, keep the switch)."""
    return dataclasses.replace(cfg, compile=False) if cfg.recipe_params.get("warm_start") else cfg


def study_seed_config(profile: Profile, name: str, k: int) -> TrainConfig:
    """Seed ``k`` of the study model ``name`` (:func:`xrlib.studies.rotation.models.study_configs`)."""
    configs = {c.name: c for c in study_configs(profile)}
    if name not in configs:
        raise ValueError(f"unknown study model {name!r}; the study models are {', '.join(configs)}")
    return seed_config(configs[name], k)


def other_seeds_start(profile: Profile) -> int:
    """The first seed index of the base's *other* seeds: ``n`` = the card's seed count (``card.seeds``, default
    1): the card's A/A row is seeds ``n … 2n − 1`` (:func:`evidence_seed_configs`). The card checks the value
    (:func:`xrlib.studies.card.settings.card_settings`)."""
    value = profile.section("card").get("seeds", 1)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


def evidence_seed_configs(profile: Profile) -> list[TrainConfig]:
    """The study models' seeds the evidence design needs beyond chapter 05's seed 0, with ``n`` = ``card.seeds``:
    U-Net(Real) and U-Net(Real+Syn_all) seeds ``1 … n − 1`` (the card's study contrast) and the base's other seeds
    ``n … 2n − 1`` (the card's A/A row). Chapter 05 trains them with the study models; chapter 10's repeated
    trainings (the base's seeds ``1 … noise.seeds``) and the card read them from the cache. Empty for n = 1."""
    n = other_seeds_start(profile)
    if n < 2:
        return []
    model, control = STUDY_CONTRAST
    return ([study_seed_config(profile, control, k) for k in range(1, n)]
            + [study_seed_config(profile, model, k) for k in range(1, 2 * n)])


def base_seeds(profile: Profile, run: Path, k: int, first: int = 1, executor=None,
               progress: bool = False) -> dict[int, TrainResult]:
    """``{seed index: result}`` of ``k`` seeds of :data:`BASE_MODEL` under its own recipe (the study's epochs,
    lr and data), indices ``first … first + k − 1``, trained — as parallel tasks with ``executor``
    (:func:`xrlib.studies.rotation.study.train_all`) — or read from the cache. Index 0 is chapter 05's model."""
    from xrlib.studies.rotation.study import train_all

    idx = list(range(int(first), int(first) + int(k)))
    configs = [study_seed_config(profile, BASE_MODEL, i) for i in idx]
    res = train_all(configs, Path(run), progress=progress, executor=executor)
    return {i: res[c.name] for i, c in zip(idx, configs)}
