"""The ``sim:`` block of a profile (chapter 08), typed and checked."""

from __future__ import annotations

import math
from dataclasses import dataclass

from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile

__all__ = ["MIN_TOP_BUDGET", "SimSettings", "sim_settings"]

#: The acquisition threat's budgets reach at least this scale (the Real surrogate itself is drawn at 1).
MIN_TOP_BUDGET = 3.0


@dataclass(frozen=True)
class SimSettings:
    """Chapter 08's sizes.

    Attributes:
        acquisition_budgets: scales of the acquisition-shift threat (0 = the simulator's default setting).
        acquisition_alphas: Syn_test angles (deg) of the threat and of the Sim2Real test on synthetic
            subjects; ``None``: the profile's whole synthetic grid (the 21 angles).
        acquisition_subjects: how many Syn_test subjects (``None``: all).
        acquisition_angles_per_subject: how many of those angles each subject gets (``None``: all of them); a
            stratified systematic sample that differs between subjects and covers the grid across them
            (:func:`xrlib.studies.sim.sources.subject_angles`). Subjects are the statistical unit, so more
            subjects with fewer angles each buys narrower subject-clustered intervals for the same images.
        poses_per_subject: poses per surrogate subject in the chapter's datasets (the first ones of the
            surrogate's seeded pose sequence; ``None``: all of ``surrogate.poses_per_subject``).
        scaled_factor: Realistic-Scaled renders this many times those poses per subject.
        steps: one optimisation-step budget for every row (``None``: ``epochs`` and ``patience`` as given);
            each row's epochs are derived from its training-set size (:meth:`epochs_for`) and early
            stopping is off (patience = epochs), so every row takes about the same number of steps.
        epochs, patience, lr, batch_size: the chapter's trainings (every model alike; with ``steps``,
            ``epochs`` and ``patience`` are not read). Every row's learning rate follows the same cosine
            schedule from ``lr`` down to 1 % of it over its steps (:data:`xrlib.studies.sim.study.LR_SCHEDULE`).
        threads: torch threads of every training task of the chapter (the U-Nets and the CycleGANs; ``None``:
            :func:`xrlib.core.runs.default_threads`). It is in each model's cache key, so it is a profile size, not
            the executor's choice: the same models come out of ``--executor local`` (one task after another) and
            ``--executor process`` (tasks side by side, where one thread per task is the fastest on 2 cores).
        val_every_steps: validate each row about every this many optimisation steps (and after its last)
            instead of after every epoch (``val_every`` of :class:`xrlib.training.config.TrainConfig`, in epochs:
            :meth:`val_every_for`); ``None``: every epoch. A row of a few images has one or two steps per
            epoch, where per-epoch validation and checkpoints cost more than the steps themselves.
        models: the rows of the Table 4 analog this profile trains (names as in
            :data:`xrlib.studies.sim.study.ROWS`, each with ``/regular`` or ``/strong`` DR).
    """

    acquisition_budgets: tuple[float, ...]
    acquisition_alphas: tuple[float, ...] | None
    acquisition_subjects: int | None
    poses_per_subject: int | None
    scaled_factor: int
    epochs: int
    patience: int
    lr: float
    batch_size: int
    models: tuple[str, ...]
    steps: int | None = None
    threads: int | None = None
    acquisition_angles_per_subject: int | None = None
    val_every_steps: int | None = None

    def epochs_for(self, train_images: int) -> int:
        """Epochs of a row with ``train_images`` training images: ``ceil(steps / ceil(train_images / batch_size))``
        (``epochs`` without a step budget)."""
        if self.steps is None:
            return self.epochs
        if train_images < 1:
            raise ValueError(f"a row needs at least one training image, got {train_images}")
        per_epoch = math.ceil(train_images / self.batch_size)
        return max(1, math.ceil(self.steps / per_epoch))

    def val_every_for(self, train_images: int) -> int:
        """Epochs between validations of a row with ``train_images`` training images: ``val_every_steps`` steps,
        rounded to whole epochs (at least 1; 1 without ``val_every_steps``)."""
        if self.val_every_steps is None or train_images < 1:
            return 1
        per_epoch = math.ceil(train_images / self.batch_size)
        return max(1, round(self.val_every_steps / per_epoch))

    def steps_for(self, train_images: int) -> int:
        """Optimisation steps a row with ``train_images`` training images takes at :meth:`epochs_for` epochs."""
        return self.epochs_for(train_images) * math.ceil(train_images / self.batch_size)


def sim_settings(profile: Profile) -> SimSettings:
    """The profile's ``sim:`` block as :class:`SimSettings`; bad values raise :class:`InputError` naming the file."""
    block = profile.section("sim")
    where = profile.path or profile.name

    def bad(msg: str) -> InputError:
        return InputError(where, f"sim: {msg}")

    try:
        acq = dict(block["acquisition"])
        alphas = acq.get("alphas")
        subjects = acq.get("subjects")
        s = SimSettings(
            acquisition_budgets=tuple(float(b) for b in acq["budgets"]),
            acquisition_alphas=None if alphas is None else tuple(float(a) for a in alphas),
            acquisition_subjects=None if subjects is None else int(subjects),
            poses_per_subject=None if block.get("poses_per_subject") is None else int(block["poses_per_subject"]),
            scaled_factor=int(block["scaled_factor"]),
            epochs=int(block.get("epochs", 1) if "steps" in block else block["epochs"]),
            patience=int(block.get("patience", 1) if "steps" in block else block["patience"]),
            lr=float(block["lr"]), batch_size=int(block["batch_size"]),
            models=tuple(str(m) for m in block["models"]),
            steps=None if block.get("steps") is None else int(block["steps"]),
            threads=None if block.get("threads") is None else int(block["threads"]),
            acquisition_angles_per_subject=(None if acq.get("angles_per_subject") is None
                                            else int(acq["angles_per_subject"])),
            val_every_steps=None if block.get("val_every_steps") is None else int(block["val_every_steps"]),
        )
    except KeyError as exc:
        raise bad(f"missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise bad(f"malformed value ({exc})") from None
    if not {0.0, 1.0} <= set(s.acquisition_budgets):
        raise bad(f"acquisition.budgets must include 0 (the default setting) and 1 (the documented ranges), "
                  f"got {list(s.acquisition_budgets)}")
    if any(not (b >= 0 and math.isfinite(b)) for b in s.acquisition_budgets):
        raise bad(f"acquisition.budgets must be non-negative scales, got {list(s.acquisition_budgets)}")
    if max(s.acquisition_budgets) < MIN_TOP_BUDGET:
        raise bad(f"acquisition.budgets must reach at least {MIN_TOP_BUDGET:g} (beyond the surrogate's own variability, "
                  f"which is drawn at 1), got {list(s.acquisition_budgets)}")
    if s.threads is not None and s.threads < 1:
        raise bad(f"threads must be ≥ 1 or null, got {s.threads}")
    if s.val_every_steps is not None and s.val_every_steps < 1:
        raise bad(f"val_every_steps must be ≥ 1 or null, got {s.val_every_steps}")
    if s.steps is not None and s.steps < 1:
        raise bad(f"steps must be ≥ 1 or null, got {s.steps}")
    from xrlib.data.recipes import profile_effects

    profile_effects(profile)  # the Real surrogate's surrogate.effects block: checked before anything renders
    if s.acquisition_subjects is not None and s.acquisition_subjects < 1:
        raise bad("acquisition.subjects must be ≥ 1 or null")
    if s.acquisition_angles_per_subject is not None and s.acquisition_angles_per_subject < 1:
        raise bad("acquisition.angles_per_subject must be ≥ 1 or null")
    if s.poses_per_subject is not None and s.poses_per_subject < 1:
        raise bad("poses_per_subject must be ≥ 1 or null")
    if s.scaled_factor < 1 or s.epochs < 1 or s.patience < 1 or s.batch_size < 1 or not s.lr > 0:
        raise bad("need scaled_factor, epochs, patience, batch_size ≥ 1 and lr > 0")
    return s
