"""Running a threat against the study's models for a profile: the CSV of the results contract and its CLI.

:func:`run_threat` loads the study models from the training cache (never trains), builds the test
images the threat needs, scores them (:func:`xrlib.attacks.base.score_threat`) and writes
``<run>/robustness/<threat>.csv``; the ``xrlib robustness --profile P --threat T [--models …]
[--budgets …]`` command (:mod:`xrlib.cli`) calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd

from xrlib.attacks.base import TestImages, Threat, score_threat
from xrlib.attacks.pgd import PGDThreat, SegPGDThreat
from xrlib.attacks.rotation import RotationThreat
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile, load_profile
from xrlib.eval.robustness import write_robustness
from xrlib.studies.rotation import study
from xrlib.studies.rotation.groups import GROUP_ORDER, alpha_group
from xrlib.studies.rotation.study import syn_test_images
from xrlib.training import TrainResult, load_best

__all__ = ["THREATS", "ScoreTask", "ThreatRun", "run_threat", "syn_test_images", "threat_summary"]


def _rotation(profile: Profile, run: Path) -> tuple[Threat, TestImages]:
    return RotationThreat(profile.synthetic.alphas), syn_test_images(profile, run)


def _input_attack(kind: type[PGDThreat]):
    def build(profile: Profile, run: Path, alphas: Sequence[float] | None = None, **options) -> tuple[Threat, TestImages]:
        from xrlib.studies.pgd.settings import pgd_settings

        try:
            th = kind(image_size=profile.image_size, **options)
        except TypeError as exc:
            raise InputError(None, f"threat {kind.name!r}: bad options {sorted(options)} ({exc})") from None
        s = pgd_settings(profile)
        return th, syn_test_images(profile, run, s.alphas if alphas is None else alphas,
                                   s.angles_per_subject if alphas is None else None)

    build.__doc__ = (f"The {kind.name} threat (options: ``alphas`` — the Syn_test angles; default chapter 09's images, "
                     f"``pgd.alphas`` with ``pgd.angles_per_subject`` — and "
                     f"the parameters of :class:`{kind.__module__}.{kind.__name__}`) and its test images.")
    return build


def _ensemble(profile: Profile, run: Path, alphas: Sequence[float] | None = None, steps: int | None = None,
              restarts: int | None = None, norm: str = "linf", grid: Sequence[float] | None = None, seed: int | None = None,
              batch_size: int = 16, **options) -> tuple[Threat, TestImages]:
    """The threat ``pgd``: chapter 09's attack ensemble (:class:`xrlib.attacks.ensemble.EnsembleThreat`, the
    per-image minimum over PGD, SegPGD and APGD on several losses) with the profile's ``pgd:`` settings; options:
    ``alphas``, ``steps`` (iterations of every member), ``restarts``, ``norm`` (``l2``: the L2 radii ε·S),
    ``grid`` (budgets, the clean 0 included), ``seed``, ``batch_size``."""
    from xrlib.attacks.ensemble import EnsembleThreat, members
    from xrlib.attacks.pgd import l2_budgets
    from xrlib.studies.pgd.settings import pgd_settings

    if options:
        raise InputError(None, f"threat 'pgd': bad options {sorted(options)} (it takes alphas, steps, restarts, norm, "
                               "grid, seed and batch_size)")
    s = pgd_settings(profile)
    ens = tuple(m for m in members(steps or s.steps, steps or s.apgd_steps, s.step_fraction, restarts or 1)
                if s.members is None or m.name in s.members)
    if grid is None:
        grid = s.grid if norm == "linf" else (0.0, *l2_budgets(profile.image_size, s.budgets))
    th = EnsembleThreat(ens, grid=grid, norm=norm, seed=s.seed if seed is None else seed, batch_size=batch_size)
    return th, syn_test_images(profile, run, s.alphas if alphas is None else alphas,
                               s.angles_per_subject if alphas is None else None)


def _pose(profile: Profile, run: Path, steps: int | None = None, subjects: int | None = None, **options) -> tuple[Threat, TestImages]:
    """The worst-case pose threat of the profile's ``pose:`` block (options: ``steps``, ``subjects``) and its subjects."""
    from xrlib.studies.pose.study import pose_threat

    if options:
        raise InputError(None, f"threat 'pose': bad options {sorted(options)} (it takes steps and subjects)")
    return pose_threat(profile, run, steps=steps, subjects=subjects)


def _noise(profile: Profile, run: Path, **options) -> tuple[Threat, TestImages]:
    """The noise threat (options: ``arms``, ``doses`` — default the chapter's validation grid —, ``realisations``,
    ``subjects``; sizes from the profile's ``noise:`` block) and its test images: the Syn_test subjects
    re-projected with the realistic chain."""
    from xrlib.studies.noise.grid import grid_threat

    try:
        th = grid_threat(profile, run, **options)
    except TypeError as exc:
        raise InputError(None, f"threat 'noise': bad options {sorted(options)} ({exc})") from None
    return th, th.test


def _deformation(profile: Profile, run: Path, alphas: Sequence[float] | None = None, method: str = "per-image",
                 variant: str = "DV", **options) -> tuple[Threat, TestImages]:
    """The deformation + bias-field threat (:class:`xrlib.attacks.deformation.DeformationThreat`) with the
    profile's ``learned:`` settings (fields, per-image search, generator); options: ``alphas`` (default
    ``learned.alphas``), ``method`` (``per-image`` or ``generator``), ``variant`` (``DV``, ``D``, ``V``),
    ``seed``, ``batch_size``, ``grid`` (ξ budgets) and any field of
    :class:`~xrlib.attacks.deformation.FieldSettings` (e.g. ``steps``)."""
    from xrlib.attacks.deformation import DeformationThreat
    from xrlib.studies.learned.config import learned_settings
    from xrlib.studies.learned.study import train_images

    s = learned_settings(profile)
    train = train_images(profile, run) if method == "generator" else None
    kw = {k: options.pop(k) for k in ("seed", "batch_size", "grid") if k in options}
    th = DeformationThreat(method=method, fields=s.variant(variant), generator=s.generator, train_images=train,
                           pixel_mm=s.pixel_mm, **kw, **options)
    return th, syn_test_images(profile, run, s.alphas if alphas is None else alphas)


def _acquisition(profile: Profile, run: Path, **options) -> tuple[Threat, TestImages]:
    """The acquisition-shift threat (chapter 08; options: ``budgets``, ``alphas``, ``subjects``; sizes from the
    profile's ``sim:`` block): the Syn_test subjects under the realistic chain, its per-image acquisition
    variability scaled by the budget (0 = the simulator's fixed default setting)."""
    from xrlib.studies.sim.sources import acquisition_threat

    try:
        th = acquisition_threat(profile, run, **options)
    except TypeError as exc:
        raise InputError(None, f"threat 'acquisition': bad options {sorted(options)} ({exc})") from None
    return th, th.test


#: Threat name → builder ``(profile, run, **options)`` of the threat and its test images.
THREATS = {"rotation": _rotation, "pgd": _ensemble, "segpgd": _input_attack(SegPGDThreat),
           "noise": _noise, "pose": _pose, "deformation": _deformation, "acquisition": _acquisition}


@dataclass
class ScoreTask:
    """One model under one threat as an :mod:`xrlib.exec` task: load its best checkpoint where the task
    runs and return its contract rows (:func:`xrlib.attacks.base.score_threat` with this one victim).

    ``test`` is the same object for every model of a run: :attr:`shared` names it, so the Ray
    executor ships the test images once. ``threads``: torch threads where it runs (the executor's
    ``default_task_threads()``: the machine's count, as in process, unless the executor says otherwise)."""

    key: str
    threads: int
    threat: Threat
    result: TrainResult
    test: TestImages
    pixel_mm: float
    budgets: tuple[float, ...] | None
    device: str | None = None
    examples_dir: str | None = None

    shared: ClassVar[tuple[str, ...]] = ("test",)

    @property
    def num_gpus(self) -> int:
        return 1 if str(self.device or "").startswith("cuda") else 0

    def run(self) -> pd.DataFrame:
        model = load_best(self.result, self.device)
        return score_threat(self.threat, {self.key: model}, self.test, self.pixel_mm, budgets=self.budgets,
                            groups=alpha_group, device=self.device, examples_dir=self.examples_dir)


@dataclass
class ThreatRun:
    """What :func:`run_threat` produced: the CSV path, its rows and the mean Dice per model and α group."""

    path: Path
    results: pd.DataFrame
    summary: pd.DataFrame


def threat_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice per model (rows, in order of appearance) and α group (columns, in the study's order)."""
    means = results.groupby(["model", "alpha_group"], sort=False)["dice"].mean().unstack()
    cols = [g for g in GROUP_ORDER if g in means.columns] + [g for g in means.columns if g not in GROUP_ORDER]
    return means.reindex(index=list(dict.fromkeys(results["model"])), columns=cols)


def run_threat(profile: Profile | str | Path, run: str | Path, threat: str = "rotation", models: Sequence[str] | None = None,
               budgets: Sequence[float] | None = None, device=None, progress: bool = False,
               examples_dir: str | Path | None = None, executor=None, **threat_options) -> ThreatRun:
    """Score the study models (all, or ``models``) under ``threat`` and write ``<run>/robustness/<threat>.csv``.

    ``threat_options`` go to the threat's builder in :data:`THREATS` (``pgd``/``segpgd``: ``alphas``,
    ``steps``, ``norm``, ``restarts``, ``step_fraction``, ``random_start``, ``seed``, ``batch_size``,
    ``grid``, the budgets it may run; ``pose``: ``steps``, ``subjects``; ``rotation`` takes none). ``examples_dir``: also save clean and
    threatened images, masks and predictions per model and budget there (see
    :func:`xrlib.attacks.base.score_threat`). ``executor``: ``None``/``"local"`` scores the models here,
    one after another; ``"process"``, ``"ray"`` or an :class:`xrlib.exec.base.Executor` runs one
    :class:`ScoreTask` per model (same rows; only this driver writes the CSV). Raises :class:`InputError` naming an unknown
    threat or option, an unknown or untrained model, or a budget outside the threat's grid.
    """
    if threat not in THREATS:
        raise InputError(None, f"unknown threat {threat!r}; known threats: {', '.join(THREATS)}")
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    run = Path(run)
    trained = study.study_models(profile, run, models)
    if threat == "rotation" and threat_options:
        raise InputError(None, f"threat 'rotation' takes no options, got {sorted(threat_options)}")
    th, test = THREATS[threat](profile, run, **threat_options)
    th.check_budgets(budgets)  # bad budgets fail before any model runs
    if executor is not None and executor != "local":
        from xrlib.exec import get_executor
        from xrlib.core.runs import default_threads

        executor = get_executor(executor)
        chooser = getattr(executor, "default_task_threads", None)
        threads = int(chooser()) if chooser is not None else default_threads()
        tasks = [ScoreTask(name, threads, th, res, test, study.pixel_mm(profile),
                           None if budgets is None else tuple(budgets), None if device is None else str(device),
                           None if examples_dir is None else str(examples_dir)) for name, res in trained.items()]
        frames = [df for _, df in executor.map(tasks, progress=progress, desc=f"{threat} threat")]
        results = pd.concat(frames, ignore_index=True)
    else:
        victims = {name: load_best(res, device) for name, res in trained.items()}
        results = score_threat(
            th, victims, test, study.pixel_mm(profile), budgets=budgets, groups=alpha_group, device=device,
            progress=progress, examples_dir=examples_dir)
    path = write_robustness(results, run, threat)
    return ThreatRun(path, results, threat_summary(results))
