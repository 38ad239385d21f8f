"""The ``recon-head`` recipe: train a reconstruction head (L1) on a U-Net's features, and load the pair.

:class:`ReconHeadTraining` adds a :class:`xrlib.nets.recon.ReconstructionHead` (extra module
``"recon"``) fed by the U-Net's top decoder features and adds ``weight · L1(reconstruction, x)``
to the loss. With ``frozen=True`` (default) the U-Net's weights are frozen after the warm start,
so only the head learns: the segmentation network stays exactly the warm-start model and the
reconstruction error scores *that* model's inputs. With ``frozen=False`` both train together on
``L + weight · L_rec`` (paper 002, eq. 12).

Which epoch is kept: the loop keeps the epoch of the best validation Dice in ``best.pt``. A frozen
U-Net's validation Dice cannot change, so that is always epoch 1; :func:`load_seg_recon` therefore
takes a frozen head from ``last.pt`` (the last epoch run) and a jointly trained pair from ``best.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from xrlib.core.errors import InputError
from xrlib.core.runs import resolve_device
from xrlib.nets.recon import FeatureTap, ReconstructionHead, SegRecon, feature_channels, recon_error
from xrlib.training.checkpoint import TrainResult, load_best
from xrlib.training.recipes import Recipe, StepContext, register_recipe

__all__ = ["ReconHeadTraining", "load_seg_recon"]


@register_recipe
@dataclass
class ReconHeadTraining(Recipe):
    """Train a reconstruction head with an L1 loss (module docstring); ``hidden``: the head's channels."""

    name: ClassVar[str] = "recon-head"
    compilable: ClassVar[bool] = False  # the head reads the U-Net's features through a forward hook
    frozen: bool = True
    weight: float = 1.0
    hidden: int = 16

    def extra_modules(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        if self.frozen:
            for p in model.parameters():
                p.requires_grad_(False)
        self._tap = FeatureTap(model)
        return {"recon": ReconstructionHead(feature_channels(model), int(self.hidden))}

    def extra_loss(self, logits, x, y, model, ctx: StepContext):
        recon = ctx.modules["recon"](self._tap.features)
        return float(self.weight) * recon_error(x, recon).mean()


def load_seg_recon(result: TrainResult | str | Path, device=None) -> SegRecon:
    """The U-Net and head of a ``recon-head`` model folder, in eval mode (module docstring: which epoch)."""
    folder = Path(result.folder if isinstance(result, TrainResult) else result)
    dev = resolve_device(device)
    unet = load_best(folder, device)
    ck = torch.load(folder / "best.pt", map_location=dev, weights_only=False)
    params = dict(ck["config"].get("recipe_params") or {})
    if ck["config"].get("recipe") != ReconHeadTraining.name:
        raise InputError(folder, f"not a {ReconHeadTraining.name!r} model (recipe {ck['config'].get('recipe')!r})")
    recipe = ReconHeadTraining(**params)
    source = ck
    if recipe.frozen:
        last = folder / "last.pt"
        if not last.is_file():
            raise InputError(last, "no last checkpoint of the frozen reconstruction head")
        source = torch.load(last, map_location=dev, weights_only=False)
    head = ReconstructionHead(feature_channels(unet), int(recipe.hidden))
    head.load_state_dict(source["extra"]["recon"])
    return SegRecon(unet, head.to(dev)).eval()
