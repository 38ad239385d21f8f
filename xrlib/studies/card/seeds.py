"""The card's seeds and controls: every model that carries a verdict, trained with ``card.seeds`` seeds.

A :class:`SeedPlan` names a verdict-carrying model (its name at seed 0), how to configure its seed k
(:func:`xrlib.studies.rotation.seeds.seed_config`: seed 0 is the chapter's own configuration, hash and
cached folder — never retrained) and its ``control``. The plans (:func:`seed_plans`):

* the study's U-Net(Real) and U-Net(Real+Syn_all) (chapter 05); the latter's control is U-Net(Real),
  trained identically but without the rotated synthetic data (the study's own contrast);
* chapter 09's warm-started PGD-AT and uniform-noise defenses: seed k starts from seed k of U-Net(Real+Syn_all);
  their control, ``U-Net(Real+Syn_all)+fine-tune``, is the same configuration without the defense (the
  ``standard`` recipe, same warm start, data, epochs, patience and learning rate; seed 0 included, which no
  chapter trains);
* the A/A row: U-Net(Real+Syn_all) under its own recipe with the other seeds ``n … 2n − 1``
  (:func:`xrlib.studies.rotation.seeds.base_seeds`), shown as ``U-Net(Real+Syn_all) [other seeds]``.

Chapter 12's worst-pose defense and its uniform-pose control are fine-tuned by their own loop (the worst-pose
pool is made by the model being trained), not from a :class:`~xrlib.training.config.TrainConfig`: their seeds k ≥ 1
start from seed k of U-Net(Real) (:func:`xrlib.studies.card.rows.pose_seed_victims`,
:func:`xrlib.studies.pose.defense.defense_models`).

:func:`train_seeds` trains what is missing in two rounds of independent tasks (the from-scratch models,
then the warm-started ones, which need their starts), through an :mod:`xrlib.exec` executor.
:func:`grid_tables` scores the new models over the chapters' budget grids (rotation, PGD, SegPGD, pose,
acquisition) where a chapter table lacks them, cached under ``<run>/card/grid/<table>/``, with a ``seed``
column; the other threats keep seed 0 only (their verdicts say that a model of the pair has one seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from xrlib.core.atomic import write_csv_atomic
from xrlib.core.profiles import Profile, profile_hash
from xrlib.eval.robustness import robustness_path
from xrlib.studies.card.rows import Victim
from xrlib.studies.rotation import study
from xrlib.studies.rotation.seeds import BASE_MODEL, STUDY_CONTRAST, seed_config, study_seed_config, warm_from
from xrlib.training import TrainConfig, TrainResult, load_best
from xrlib.training.config import STANDARD_RECIPE, safe_name

__all__ = ["AA_SUFFIX", "CONTROL", "GRID_TABLES", "SeedPlan", "grid_tables", "seed_plans", "train_seeds"]

#: The A/A row's second model: the base retrained with other seeds.
AA_SUFFIX = " [other seeds]"
#: The warm-started defenses' control: the base fine-tuned with the defenses' recipe minus the defense.
CONTROL = BASE_MODEL + "+fine-tune"
#: Version of the cached grid rows.
GRID_VERSION = 1


@dataclass(frozen=True)
class SeedPlan:
    """A verdict-carrying model: ``model`` (its name at seed 0), ``config(k)`` (seed k's configuration),
    its ``control`` and ``base``, whether it is ``warm`` (started from another model: trained in the
    second round), ``new_seed0`` (no chapter trains seed 0: the card does) and ``first`` (its first seed
    index; the A/A row's are ``n … 2n − 1``)."""

    model: str
    row: str
    defense: str
    chapter: str
    config: Callable[[int], TrainConfig]
    control: str | None = None
    base: str | None = None
    warm: bool = False
    new_seed0: bool = False
    first: int = 0
    imports: tuple[str, ...] = ()

    def indices(self, n: int) -> range:
        return range(self.first, self.first + int(n))


def _pgd_plans(profile: Profile, run: Path, names: set[str]) -> list[SeedPlan]:
    from xrlib.studies.pgd.settings import pgd_settings
    from xrlib.studies.pgd.study import defense_configs

    s = pgd_settings(profile)
    defs = {c.name: c for c in defense_configs(profile, run, s)}
    rows = {BASE_MODEL + "+PGD-AT": "PGD adversarial training", BASE_MODEL + "+noise": "uniform-noise training"}
    picked = [n for n in rows if n in names and n in defs]
    if not picked:
        return []
    ddir = study.datasets_dir(Path(run))

    def start(k: int) -> str:
        return study_seed_config(profile, BASE_MODEL, k).folder_name(ddir)

    def seeded(cfg: TrainConfig) -> Callable[[int], TrainConfig]:
        def config(k: int) -> TrainConfig:
            if k == 0:
                return cfg
            c = seed_config(cfg, k)
            return warm_from(c, start(k)) if "warm_start" in cfg.recipe_params else c
        return config

    one = defs[picked[0]]
    control = dataclasses.replace(one, name=CONTROL, recipe=STANDARD_RECIPE,
                                  recipe_params={k: v for k, v in one.recipe_params.items() if k == "warm_start"})
    imports = ("xrlib.attacks.defenses",)
    out = [SeedPlan(n, n.removeprefix(BASE_MODEL), rows[n], "09", seeded(defs[n]), CONTROL, BASE_MODEL, True,
                    imports=imports) for n in picked]
    out.append(SeedPlan(CONTROL, "control", "none: the defenses' fine-tuning without the defense (control)", "09",
                        seeded(control), None, None, True, new_seed0=True))
    return out


def seed_plans(profile: Profile, run: Path, names: Sequence[str], n: int) -> list[SeedPlan]:
    """The plans of the verdict-carrying models among ``names`` (the card's seed-0 victims), for ``n`` seeds;
    the A/A row's when the base is among them."""
    names = set(names)
    out = []
    model, study_control = STUDY_CONTRAST
    for name, control in ((study_control, None), (model, study_control)):
        if name in names:
            out.append(SeedPlan(name, "study", "none (study model)" if control is None else "rotated synthetic data (Syn_all)",
                                "05", lambda k, name=name: study_seed_config(profile, name, k), control,
                                None if control is None else "U-Net(Real)"))
    out += _pgd_plans(profile, run, names)
    if BASE_MODEL in names:
        out.append(SeedPlan(BASE_MODEL + AA_SUFFIX, "A/A", "none: the base retrained with other seeds (A/A)", "05",
                            lambda k: study_seed_config(profile, BASE_MODEL, k), first=int(n)))
    return out


def _victim(plan: SeedPlan, k: int, res: TrainResult) -> Victim:
    return Victim(res.name, plan.row, plan.defense, plan.chapter, Path(res.folder).name, lambda: load_best(res),
                  train_s=float(res.seconds), base=plan.base, control=plan.control, seed=k, model=plan.model)


def train_seeds(profile: Profile, run: Path, plans: Sequence[SeedPlan], n: int, executor=None,
                progress: bool = False) -> list[Victim]:
    """Train (or read from the cache) every seed the ``plans`` need beyond the chapters' seed-0 models — seeds
    ``1 … n − 1``, a control's seed 0 too, the A/A row's ``n … 2n − 1`` — as independent tasks on ``executor``
    (``None``/``"local"``, ``"process"``, ``"ray"`` or an :class:`xrlib.exec.base.Executor`): first the models
    trained from scratch, then the warm-started ones. Returns one :class:`Victim` per new model (``seed``
    and ``model`` set)."""
    from xrlib.exec import get_executor
    from xrlib.training import train_all

    ex = None if executor in (None, "local") else get_executor(executor)
    out = []
    for warm in (False, True):
        todo = [(p, k) for p in plans if p.warm == warm for k in p.indices(n) if k != 0 or p.new_seed0]
        if not todo:
            continue
        configs = [p.config(k) for p, k in todo]
        imports = tuple(dict.fromkeys(i for p, _ in todo for i in p.imports))
        res = train_all(configs, study.datasets_dir(Path(run)), Path(run) / "models", executor=ex, progress=progress,
                        imports=imports)
        out += [_victim(p, k, res[c.name]) for (p, k), c in zip(todo, configs)]
    return out


# -- the new models over the chapters' budget grids ---------------------------------------------

def _builder(table: str) -> Callable[[Profile, Path], tuple]:
    from xrlib.studies.robustness import THREATS

    if table == "segpgd":  # chapter 09's SegPGD settings (the ensemble pgd takes them from the profile itself)
        def build(profile: Profile, run: Path):
            from xrlib.studies.pgd.settings import pgd_settings

            p = pgd_settings(profile)
            return THREATS[table](profile, run, grid=(0.0, *p.segpgd_budgets), steps=p.steps,
                                  step_fraction=p.step_fraction, seed=p.seed)
        return build
    return lambda profile, run: THREATS[table](profile, run)


#: Chapter tables whose threat the card runs for the seeds its chapters did not train (the threat as the chapter
#: builds it, over the chapter's grid).
GRID_TABLES = ("rotation", "pgd", "segpgd", "pose", "acquisition")


def _grid_key(profile: Profile, table: str, v: Victim) -> str:
    text = json.dumps({"v": GRID_VERSION, "profile": profile_hash(profile), "table": table, "model": v.name,
                       "weights": v.identity}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _present(path: Path) -> set[tuple[str, int]]:
    d = pd.read_csv(path, usecols=lambda c: c in ("model", "seed"))
    seeds = d["seed"].fillna(0).astype(int) if "seed" in d else pd.Series(0, index=d.index)
    return set(zip(d["model"].astype(str), seeds))


def grid_tables(profile: Profile, run: Path, victims: Sequence[Victim], tables: Sequence[str] = GRID_TABLES,
                progress: bool = False) -> dict[str, pd.DataFrame]:
    """``{table: rows}``: the contract rows of ``victims`` under each chapter table's threat over its grid, for
    the tables of this build (``<run>/robustness/<table>.csv`` present) that lack the victim's ``(model, seed)``;
    ``model`` is the victim's model, ``seed`` its seed. Computed once per table for every victim that needs it,
    cached per victim (keyed by the profile and the victim's weights)."""
    from xrlib.attacks.base import score_threat
    from xrlib.studies.rotation.groups import alpha_group

    run = Path(run)
    out = {}
    for table in tables:
        csv = robustness_path(run, table)
        if not csv.is_file():
            continue
        have = _present(csv)
        parts, todo = [], []
        for v in victims:
            if (v.model, v.seed) in have:
                continue
            path = run / "card" / "grid" / table / f"{safe_name(v.name)}-{_grid_key(profile, table, v)}.csv"
            if path.is_file():
                parts.append(pd.read_csv(path, dtype={"subject": str, "alpha_group": str}))
            else:
                todo.append((v, path))
        if todo:
            th, test = _builder(table)(profile, run)
            new = score_threat(th, {v.name: v.load() for v, _ in todo}, test, study.pixel_mm(profile), groups=alpha_group)
            if progress:
                print(f"card: {table} over its grid for {len(todo)} seed model(s)", flush=True)
            for v, path in todo:
                rows = new[new["model"] == v.name].assign(model=v.model, seed=v.seed).reset_index(drop=True)
                write_csv_atomic(path, rows)
                parts.append(rows)
        if parts:
            out[table] = pd.concat(parts, ignore_index=True)
    return out
