"""What determines a trained model: :class:`TrainConfig`, its cache hash and its folder name.

The folder of a model is ``<out_root>/<safe name>-<hash12>`` where the hash
(:meth:`TrainConfig.config_hash`) is the SHA-256 of the canonical JSON of::

    {"config": <TrainConfig.as_dict() less num_workers>, "datasets": <dataset build hash>, "version": TRAIN_VERSION}

``config`` includes the recipe name and parameters (:mod:`xrlib.training.recipes`) and the torch
thread count, which changes floating-point results (weights after a few Adam steps differ between
1 and 2 threads).

Legacy hash
    Models trained before recipes and thread counts existed were hashed without the fields
    ``recipe``, ``recipe_params`` and ``threads`` (otherwise the same payload, byte for byte).
    Those models are the ``standard`` recipe without parameters; :meth:`TrainConfig.legacy_hash`
    recomputes their hash so that :func:`xrlib.training.checkpoint.cached_result` can adopt them
    instead of retraining (see there for when).

Compiled training
    ``compile=True`` runs the training steps' forward and backward through ``torch.compile``
    (:func:`xrlib.training.loop.train_model`), which rounds differently from eager PyTorch: the
    weights after the first Adam step already differ in the last bits, so after a training the
    models differ as a retraining would. The field joins the hash only when it is true, so an eager
    configuration keeps the hash (and the cached model) it had before the field existed, and a
    compiled one never adopts an eager model or the other way round.

Learning-rate schedule
    ``lr_schedule="constant"`` (the default) keeps Adam's learning rate at ``lr`` for every step;
    ``"cosine"`` lowers it along half a cosine from ``lr`` at the first step to
    ``lr`` × :data:`COSINE_FLOOR` at the last step of ``epochs`` epochs (:func:`scheduled_lr`), so a
    fixed step budget ends with small updates and the validation Dice settles instead of jittering at
    the full rate. The field joins the hash only when it is not ``"constant"``, so the configurations
    (and cached models) from before the field existed keep their hash.

Validation interval
    ``val_every=k`` validates (and writes the checkpoints and a history row) after every k-th epoch and
    after the last, instead of after every epoch: on training sets of a few batches an epoch is a couple of
    optimiser steps, and the per-epoch validation and checkpoint writes cost more than the steps. Best
    epoch and early stopping then see the validated epochs only (``patience`` still counts epochs). It
    changes which epoch's weights are kept, so it joins the hash — only when not 1 (earlier hashes stay).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xrlib.core.errors import InputError
from xrlib.data.build import BUILD_FILE
from xrlib.data.pools import DATASET_NAMES

#: Bumped whenever training changes how models are trained, so cached models are retrained.
TRAIN_VERSION = 1
#: Sets a model may be trained on (the test-only set is excluded).
TRAIN_SETS = tuple(n for n in DATASET_NAMES if n != "Syn_test")
#: The recipe of the plain fit loop (no hooks); the recipe of every model trained before recipes existed.
STANDARD_RECIPE = "standard"
#: Fields that the legacy hash (before recipes and thread counts) did not have.
_NEW_FIELDS = ("recipe", "recipe_params", "threads")
#: Learning-rate schedules of :attr:`TrainConfig.lr_schedule` (module docstring).
LR_SCHEDULES = ("constant", "cosine")
#: The cosine schedule's last learning rate, as a fraction of ``lr``.
COSINE_FLOOR = 0.01


def scheduled_lr(lr: float, schedule: str, step: int, total_steps: int) -> float:
    """Adam's learning rate at optimisation step ``step`` (0-based) of ``total_steps`` under ``schedule``
    (:data:`LR_SCHEDULES`): ``lr`` for ``"constant"``; for ``"cosine"``
    ``lr · (f + (1 − f) · (1 + cos(π · step / (total_steps − 1))) / 2)`` with f = :data:`COSINE_FLOOR`, i.e. ``lr``
    at the first step and ``f · lr`` at the last (steps past the last keep ``f · lr``)."""
    if schedule == "constant":
        return float(lr)
    if schedule != "cosine":
        raise ValueError(f"unknown lr_schedule {schedule!r}; expected one of {LR_SCHEDULES}")
    if total_steps < 1 or step < 0:
        raise ValueError(f"need step ≥ 0 and total_steps ≥ 1, got {step} of {total_steps}")
    t = min(1.0, step / max(1, total_steps - 1))
    return float(lr) * (COSINE_FLOOR + (1.0 - COSINE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t)))


@dataclass
class TrainConfig:
    """Everything that determines a trained model (see the module docstring).

    Attributes:
        name: model name, e.g. ``"U-Net(A+B)"`` (the folder uses a filesystem-safe form).
        train_sets: named sets (:data:`TRAIN_SETS`) whose ``train`` splits are the training images
            and whose ``val`` splits are the validation images.
        depth, base_channels: U-Net size (:func:`xrlib.nets.unet.build_unet`).
        loss: ``"dice"`` or ``"dice_bce"`` (:func:`xrlib.nets.losses.make_loss`).
        lr, batch_size, epochs, patience: Adam learning rate, batch size, maximum epochs and
            early-stopping patience (epochs without a validation-Dice improvement).
        seed: seeds weights initialisation and shuffling.
        num_workers: DataLoader workers (does not change the numbers; not hashed).
        augment: must be ``False`` (no augmentation; defenses are recipes).
        cen_alphas: the α values of ``Syn_cen`` (from the profile; required when ``Syn_cen`` is a
            training set).
        recipe: name of a registered :class:`xrlib.training.recipes.Recipe` (default ``standard``).
        recipe_params: keyword arguments of the recipe (JSON values; hashed as given, so write
            them the same way to hit the cache).
        threads: torch intra-op threads the training runs with; ``None`` means
            :func:`xrlib.core.runs.default_threads` (``XRLIB_THREADS``, else the machine's core count),
            fixed when the configuration is made — never the process's current torch setting, which
            executors and libraries change.
        compile: train through ``torch.compile`` (module docstring; a profile's ``train.compile``);
            hashed only when true. Not for recipes that tap the network's intermediate features
            (:attr:`xrlib.training.recipes.Recipe.compilable`).
        val_every: validate every this many epochs and after the last (module docstring); hashed only when not 1.
        lr_schedule: ``"constant"`` or ``"cosine"`` over the ``epochs`` (module docstring); hashed only
            when not constant. It sets the rate of the model's optimizer; a recipe's own optimizers
            (:meth:`~xrlib.training.recipes.Recipe.extra_optimizers`, e.g. ADDA's discriminator) keep theirs.
    """

    name: str
    train_sets: list = field(default_factory=lambda: ["Real"])
    depth: int = 4
    base_channels: int = 16
    loss: str = "dice"
    lr: float = 0.01
    batch_size: int = 16
    epochs: int = 200
    patience: int = 30
    seed: int = 0
    num_workers: int = 0
    augment: bool = False
    cen_alphas: tuple | None = None
    recipe: str = STANDARD_RECIPE
    recipe_params: dict = field(default_factory=dict)
    threads: int | None = None
    compile: bool = False
    lr_schedule: str = "constant"
    val_every: int = 1

    def __post_init__(self):
        if self.threads is None:
            from xrlib.core.runs import default_threads

            self.threads = default_threads()

    def validate(self) -> TrainConfig:
        """Check the values; raises ``ValueError`` naming the bad field."""
        from xrlib.nets.losses import LOSSES
        from xrlib.nets.unet import DEPTHS
        from xrlib.training.recipes import get_recipe

        if not self.train_sets or any(s not in TRAIN_SETS for s in self.train_sets):
            raise ValueError(f"{self.name}: train_sets must be a non-empty list of {TRAIN_SETS}, got {self.train_sets!r}")
        if "Syn_cen" in self.train_sets and not self.cen_alphas:
            raise ValueError(f"{self.name}: cen_alphas (the profile's synthetic.cen_alphas) are needed to train on Syn_cen")
        if self.depth not in DEPTHS:
            raise ValueError(f"{self.name}: U-Net depth must be 3, 4 or 5, got {self.depth!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"{self.name}: loss must be one of {LOSSES}, got {self.loss!r}")
        for key, minimum in (("batch_size", 1), ("epochs", 1), ("patience", 1), ("base_channels", 1),
                             ("num_workers", 0), ("threads", 1), ("val_every", 1)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{self.name}: {key} must be an integer ≥ {minimum}, got {v!r}")
        if not (float(self.lr) >= 0):
            raise ValueError(f"{self.name}: lr must be ≥ 0, got {self.lr!r}")
        if self.augment:
            raise ValueError(f"{self.name}: augmentation is not implemented (augment must be False)")
        try:
            json.dumps(self.recipe_params, sort_keys=True)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: recipe_params must be a JSON mapping, got {self.recipe_params!r}") from None
        recipe = get_recipe(self.recipe, self.recipe_params)  # unknown recipe or bad parameters → ValueError
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"{self.name}: lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"{self.name}: compile must be true or false, got {self.compile!r}")
        if self.compile and not recipe.compilable:
            raise ValueError(f"{self.name}: recipe {self.recipe!r} reads the network's intermediate features, "
                             "which torch.compile does not keep; train it with compile=False")
        return self

    def as_dict(self) -> dict:
        d = asdict(self)
        d["train_sets"] = list(d["train_sets"])
        d["cen_alphas"] = None if d["cen_alphas"] is None else [float(a) for a in d["cen_alphas"]]
        d["recipe_params"] = dict(d["recipe_params"])
        return d

    def _hash(self, config: dict, datasets_dir) -> str:
        build = build_hash(datasets_dir) if datasets_dir is not None else None
        text = json.dumps({"config": config, "datasets": build, "version": TRAIN_VERSION}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def config_hash(self, datasets_dir: str | Path | None = None) -> str:
        """SHA-256 (hex) of the configuration (less ``num_workers``, less ``compile`` when it is
        false and ``lr_schedule`` when it is constant), the dataset build hash read from ``<datasets_dir>/build.json`` and :data:`TRAIN_VERSION`."""
        d = self.as_dict()
        d.pop("num_workers")
        if not d["compile"]:
            d.pop("compile")
        if d["lr_schedule"] == "constant":
            d.pop("lr_schedule")
        if d["val_every"] == 1:
            d.pop("val_every")
        return self._hash(d, datasets_dir)

    def is_legacy_recipe(self) -> bool:
        """Whether models of this configuration could have been trained before recipes existed
        (the standard recipe without parameters, eager)."""
        return (self.recipe == STANDARD_RECIPE and not self.recipe_params and not self.compile
                and self.lr_schedule == "constant" and self.val_every == 1)

    def legacy_hash(self, datasets_dir: str | Path | None = None) -> str | None:
        """The hash that training computed before recipes and thread counts (the same payload
        without ``recipe``, ``recipe_params`` and ``threads``); ``None`` for a configuration that
        could not be trained then (:meth:`is_legacy_recipe` is false)."""
        if not self.is_legacy_recipe():
            return None
        d = self.as_dict()
        for key in ("num_workers", "compile", "lr_schedule", "val_every", *_NEW_FIELDS):
            d.pop(key)
        return self._hash(d, datasets_dir)

    def folder_name(self, datasets_dir: str | Path | None = None) -> str:
        """``<safe name>-<first 12 hex digits of the hash>``."""
        return hashed_folder_name(self.name, self.config_hash(datasets_dir))


def safe_name(name: str) -> str:
    """A filesystem-safe form of a model name: ``U-Net(A+B_c)`` → ``U-Net_A_B_c``."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_")
    return s or "model"


def hashed_folder_name(name: str, digest: str) -> str:
    """``<safe name>-<first 12 hex digits of digest>``."""
    return f"{safe_name(name)}-{digest[:12]}"


def build_hash(datasets_dir: str | Path) -> str:
    """The hash of a complete dataset build (``<datasets_dir>/build.json``); :class:`InputError` otherwise."""
    path = Path(datasets_dir) / BUILD_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(path, "no readable dataset build record; build the datasets first (xrlib dataset --profile NAME)") from None
    if info.get("complete") is not True or "hash" not in info:
        raise InputError(path, "the dataset build is incomplete; rerun the dataset stage")
    return str(info["hash"])
