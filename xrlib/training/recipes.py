"""Recipes: named, picklable plug-ins that change what the one fit loop does, without copying it.

A recipe is a dataclass subclass of :class:`Recipe` registered by name (:func:`register_recipe`);
its fields are its parameters (``TrainConfig.recipe_params``, all with defaults). The name and the
parameters enter the model's cache hash. The loop (:func:`xrlib.training.loop.train_model`) calls
its hooks in this order:

* :meth:`Recipe.train_data` — once, after the training images are loaded: may extend them
  (e.g. the ``added-samples`` recipe appends a fixed list of extra samples);
* :attr:`Recipe.warm_start` — a cached model folder (absolute, or a folder name under the
  models root) whose ``best.pt`` weights replace the fresh initialisation;
* :meth:`Recipe.extra_modules` — extra heads or networks (e.g. an auxiliary reconstruction head,
  a discriminator), built once after the model; :meth:`Recipe.extra_optimizers` may give some of
  them their own optimizers (the others are trained by the main Adam optimizer);
* per training batch: :meth:`Recipe.batch` may replace or extend ``(x, y)`` (adversarial examples,
  noise, domain randomisation, translated images); :meth:`Recipe.extra_loss` adds to the loss of
  the model's logits; :meth:`Recipe.after_step` runs after the optimizer step (e.g. a
  discriminator update).

Randomness inside hooks must come from ``ctx.generator`` (seeded by seed, epoch and batch), so a
resumed training equals an uninterrupted one. Recipe state that changes during training belongs
in :meth:`Recipe.state_dict` (saved in every checkpoint). The ``standard`` recipe has no hooks and
is today's plain training. With a compiled configuration (``TrainConfig.compile``) only the
loop's own forward (the logits the loss is taken of) is compiled; the hooks receive the eager
network, so whatever they run on it (attacks, a second forward) stays eager. A recipe that reads
the network's intermediate features through module hooks sets :attr:`Recipe.compilable` false.
A recipe defined outside :mod:`xrlib.training` must be registered in the
process that trains (e.g. :class:`xrlib.training.tasks.TrainTask` ``imports``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

_REGISTRY: dict[str, type[Recipe]] = {}


@dataclass
class StepContext:
    """What a hook knows about the current step.

    ``epoch`` (1-based), ``step`` (batch index in the epoch, 0-based), ``device``, ``generator``
    (a CPU :class:`torch.Generator` seeded with ``(seed, epoch, step)``), ``modules`` (the extra
    modules by name), ``optimizers`` (the recipe's own optimizers by name) and ``loss_fn``.
    """

    epoch: int
    step: int
    device: torch.device
    generator: torch.Generator
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    loss_fn: Any = None


@dataclass
class Recipe:
    """Base recipe: no hooks (see the module docstring). Subclasses are dataclasses whose fields,
    all with defaults, are the recipe's parameters."""

    name: ClassVar[str] = "standard"
    #: Whether the loop may compile the network's forward for this recipe: false for a recipe whose
    #: hooks read intermediate features through forward hooks, which a compiled forward does not run.
    compilable: ClassVar[bool] = True
    #: Folder of a cached model to start from (absolute, or a folder name under the models root).
    warm_start: str | None = None

    def train_data(self, x: torch.Tensor, y: torch.Tensor, out_root) -> tuple[torch.Tensor, torch.Tensor]:
        """The training images ``(N, 1, S, S)`` and masks the loop trains on (default: those of the
        datasets, unchanged); ``out_root`` is the models root. Called once, before training."""
        return x, y

    def extra_modules(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """Extra modules trained in the same loop (moved to the device, checkpointed)."""
        return {}

    def extra_optimizers(self, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
        """Optimizers the recipe steps itself (in :meth:`after_step`), keyed by module name; the
        modules named here are left out of the main optimizer."""
        return {}

    def batch(self, x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch to train on (default: unchanged). May return more or fewer images."""
        return x, y

    def extra_loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module,
                   ctx: StepContext) -> torch.Tensor | None:
        """A term added to the loss before ``backward`` (default: none)."""
        return None

    def after_step(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> None:
        """Called after the main optimizer step (default: nothing)."""

    def state_dict(self) -> dict:
        """Recipe state to checkpoint (default: none)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` when resuming."""


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: register a :class:`Recipe` dataclass under ``cls.name`` (names are unique)."""
    if not (isinstance(cls, type) and issubclass(cls, Recipe) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a Recipe dataclass")
    known = _REGISTRY.get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"recipe name {cls.name!r} is already registered by {known.__module__}.{known.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def recipe_names() -> list[str]:
    """Names of the registered recipes."""
    return sorted(_REGISTRY)


def get_recipe(name: str, params: dict | None = None) -> Recipe:
    """The recipe ``name`` with parameters ``params``; ``ValueError`` for an unknown name or parameter."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown recipe {name!r}; registered: {', '.join(recipe_names())}")
    try:
        return cls(**dict(params or {}))
    except TypeError as exc:
        raise ValueError(f"recipe {name!r}: bad parameters {params!r} ({exc})") from None


register_recipe(Recipe)
