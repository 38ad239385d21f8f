"""The card's rows: one registry entry per defended model (and the study models), plus the noise floor.

Each :class:`RowSpec` says which chapter owns the model and how to get it from that chapter's code
and cache (:attr:`RowSpec.victims` loads — or, when the chapter's cache lacks it, trains — the
model); an entry whose chapter is not in this build has ``victims=None`` and a ``missing`` reason,
and the card lists it as such instead of leaving a blank row. Adding a defense to the card is one
entry in :data:`ROWS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from xrlib.core.profiles import Profile
from xrlib.studies.rotation import study
from xrlib.training import TrainResult, load_best

__all__ = ["FLOOR", "ROWS", "RowSpec", "Victim", "available_rows", "floor_victims", "pose_seed_victims"]


@dataclass
class Victim:
    """One model of the card: ``identity`` names its weights (a folder with its configuration hash: the
    key of its cached cells); ``load()`` returns it in eval mode (loaded once); ``train_s`` is the
    training time its chapter recorded (``None``: not recorded), ``extra_s`` the training time it adds
    to its ``base`` model (the model it is compared with for the cost); ``control`` names the model trained
    exactly as it but without the defense (same start, data, epochs, learning rate and seeds), against which
    its verdicts are made (``None``: no control trained, no verdict); ``seed`` is its training seed index (0: the
    chapter's model) and ``model`` the name of the model it is a seed of (default ``name``; the name of seed k ≥ 1
    carries ``[seed k]``)."""

    name: str
    row: str
    defense: str
    chapter: str
    identity: str
    loader: Callable[[], object]
    train_s: float | None = None
    extra_s: float | None = None
    base: str | None = None
    control: str | None = None
    seed: int = 0
    model: str = ""
    _model: object = field(default=None, repr=False)

    def __post_init__(self):
        if not self.model:
            self.model = self.name

    def load(self):
        if self._model is None:
            self._model = self.loader()
        return self._model


@dataclass(frozen=True)
class RowSpec:
    """A registry entry: ``key``, owning ``chapter``, the ``defense`` in words, and ``victims(profile, run)``
    (``None`` with ``missing`` — why — for a chapter not in this build)."""

    key: str
    chapter: str
    defense: str
    victims: Callable[[Profile, Path], list[Victim]] | None
    missing: str = ""


def _trained(res: TrainResult, row: str, defense: str, chapter: str, base: str | None, extra_s: float | None) -> Victim:
    return Victim(res.name, row, defense, chapter, Path(res.folder).name, lambda: load_best(res),
                  train_s=float(res.seconds), extra_s=extra_s, base=base)


def _study(profile: Profile, run: Path) -> list[Victim]:
    """The three study models of chapter 05 (cached; never trained here). Syn_cen/Syn_all are the
    rotated-synthetic-data defenses of U-Net(Real); they train from scratch, so their extra time is
    the difference to U-Net(Real)'s."""
    res = study.study_models(profile, run)
    ref = res.get("U-Net(Real)")
    out = []
    for name, r in res.items():
        base = None if r is ref or ref is None else ref.name
        extra = None if base is None else float(r.seconds - ref.seconds)
        defense = "none (study model)" if base is None else "rotated synthetic data (" + name.split("+")[-1].rstrip(")") + ")"
        out.append(_trained(r, "study", defense, "05", base, extra))
    return out


def _pgd_defense(suffix: str, defense: str):
    def victims(profile: Profile, run: Path) -> list[Victim]:
        from xrlib.studies.pgd.settings import pgd_settings
        from xrlib.studies.pgd.study import BASE_MODEL, train_defenses

        res = train_defenses(profile, run, pgd_settings(profile), progress=False)[BASE_MODEL + suffix]
        return [_trained(res, suffix, defense, "09", BASE_MODEL, float(res.seconds))]

    victims.__doc__ = f"Chapter 09's {defense} model (warm-started: all its training time is extra)."
    return victims


def _deformation_defense(profile: Profile, run: Path) -> list[Victim]:
    """Chapter 11's adversarial deformation + bias-field training of its victim (warm-started)."""
    from xrlib.studies.learned.config import learned_settings
    from xrlib.studies.learned.study import train_defense

    s = learned_settings(profile)
    res = train_defense(profile, run, s)
    return [_trained(res, "deformation-adversarial", "adversarial D + V training", "11", s.victim, float(res.seconds))]


def _worst_pose(profile: Profile, run: Path, seed: int = 0) -> list[Victim]:
    """Chapter 12's worst-case-pose fine-tuning and its control, the same fine-tuning on uniformly drawn poses
    from the same chain and box (warm-started: all of it is extra — its rounds' pose searches, renders and
    optimiser steps, as its chapter recorded them; ``None`` for a cache made before they were timed).
    ``seed`` k ≥ 1: the pair started from seed k of the start model (:func:`pose_seed_victims`)."""
    from xrlib.studies.pose.config import PoseConfig
    from xrlib.studies.pose.defense import defense_models
    from xrlib.studies.rotation.seeds import seed_name

    cfg = PoseConfig.from_profile(profile)
    models = defense_models(profile, run, cfg, seed=seed)
    control = f"{cfg.defense.start}+uniform-pose"
    out = []
    for kind, defense in (("uniform-pose", "uniform-pose training (control)"), ("worst-pose", "worst-case-pose training")):
        model_name = f"{cfg.defense.start}+{kind}"
        model, info = models[seed_name(model_name, seed)]
        seconds = info.get("seconds")
        seconds = None if seconds is None else float(seconds)
        out.append(Victim(seed_name(model_name, seed), kind, defense, "12", Path(info["folder"]).name, lambda m=model: m,
                          train_s=seconds, extra_s=seconds, base=cfg.defense.start,
                          control=control if kind == "worst-pose" else None, seed=int(seed), model=model_name))
    return out


def pose_seed_victims(profile: Profile, run: Path, n: int) -> list[Victim]:
    """Seeds ``1 … n − 1`` of chapter 12's worst-pose defense and its uniform-pose control, each pair started from
    the same seed of the start model (the card's seeds: seed k of a warm-started defense and of its control start
    from seed k of the base)."""
    return [v for k in range(1, int(n)) for v in _worst_pose(profile, run, k)]


def _noise_adaptive(profile: Profile, run: Path) -> list[Victim]:
    """Chapter 10's last round of adaptive training against quantum noise (warm-started from the study's
    U-Net(Real+Syn_all); its extra time is every round's training plus its training-set attack)."""
    from xrlib.studies.noise.adaptive import BASE_MODEL, adaptive_model, adaptive_seconds

    _, res = adaptive_model(profile, run)
    extra = adaptive_seconds(profile, run)
    v = _trained(res, "noise-adaptive", "noise-adaptive training", "10", BASE_MODEL, extra)
    v.train_s = extra
    return [v]


#: The base of chapter 08's rows: the undefended study model trained on the same (Real-surrogate) domain.
SIM_BASE = "U-Net(Real)"


def _sim_rows(kind: str):
    def victims(profile: Profile, run: Path) -> list[Victim]:
        from xrlib.studies.sim.study import sim_models, training_seconds

        res = sim_models(profile, run)  # the chapter's strong-DR models, from its cache (chapter 08 runs first)
        ref = study.study_models(profile, run).get(SIM_BASE)
        if kind == "strong-dr":
            picked = {n: r for n, r in res.items() if n.split("/")[0] in ("Real", "Realistic")}
            defense = "strong domain randomization"
        else:
            picked = {n: r for n, r in res.items() if n.split("/")[0].endswith(("-ADDA", "-Cyc"))}
            defense = "domain adaptation"
        # trained from scratch on chapter 08's datasets, like the study's Syn_cen/Syn_all on theirs: compared with
        # U-Net(Real) (no strong DR, no simulated data), the extra time is the difference of the training times
        # (a -Cyc model's includes its CycleGAN's training)
        base = None if ref is None else ref.name
        cost = training_seconds(profile, run, picked)
        out = []
        for n, r in picked.items():
            v = _trained(r, kind, f"{defense} ({n})", "08", base,
                         None if ref is None or cost[n] is None else cost[n] - float(ref.seconds))
            v.train_s = cost[n]
            out.append(v)
        return out

    victims.__doc__ = (f"Chapter 08's {kind} models with strong DR: "
                       + ("Real2Real and Realistic-Sim2Real" if kind == "strong-dr" else "every CycleGAN/ADDA model the profile trains")
                       + f"; their base is the study's {SIM_BASE} (trained from scratch, so the extra time is the difference).")
    return victims


#: The card's rows, in the order they are shown.
ROWS: tuple[RowSpec, ...] = (
    RowSpec("study", "05", "study models (none; rotated synthetic data)", _study),
    RowSpec("strong-dr", "08", "strong domain randomization", _sim_rows("strong-dr")),
    RowSpec("domain-adaptation", "08", "domain adaptation (every CycleGAN/ADDA model of the profile)", _sim_rows("domain-adaptation")),
    RowSpec("+PGD-AT", "09", "PGD adversarial training", _pgd_defense("+PGD-AT", "PGD adversarial training")),
    RowSpec("+noise", "09", "uniform-noise training", _pgd_defense("+noise", "uniform-noise training")),
    RowSpec("noise-adaptive", "10", "noise-adaptive training", _noise_adaptive),
    RowSpec("deformation-adversarial", "11", "adversarial D + V training", _deformation_defense),
    RowSpec("worst-pose", "12", "worst-case-pose training", _worst_pose),
)


def _seeds(profile: Profile, run: Path) -> list[Victim]:
    """Chapter 10's repeated trainings of U-Net(Real+Syn_all) with other seeds (chapter 05's evidence seeds; cached)."""
    from xrlib.studies.noise.settings import noise_settings
    from xrlib.studies.noise.study import repeated_configs

    res = study.train_all(repeated_configs(profile, noise_settings(profile)), run, progress=False)
    return [_trained(r, "floor", "repeated seed (noise floor)", "10", None, None) for r in res.values()]


#: The noise floor: models that differ only by their training seed.
FLOOR = RowSpec("floor", "10", "repeated trainings with other seeds (noise floor, not ranked)", _seeds)


def available_rows(profile: Profile, run: Path, rows: tuple[RowSpec, ...] = ROWS) -> tuple[list[Victim], list[RowSpec]]:
    """The victims of every row whose chapter is in this build, and the entries that are not."""
    victims, missing = [], []
    for spec in rows:
        if spec.victims is None:
            missing.append(spec)
        else:
            victims += spec.victims(profile, Path(run))
    return victims, missing


def floor_victims(profile: Profile, run: Path, spec: RowSpec | None = FLOOR) -> list[Victim]:
    return [] if spec is None or spec.victims is None else spec.victims(profile, Path(run))
