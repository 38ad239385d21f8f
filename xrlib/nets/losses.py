"""Training losses and the one tensor Dice of segmentation logits (MONAI's definitions).

The networks output clavicle *logits*; a pixel is clavicle when ``sigmoid(logit) > 0.5``, i.e.
``logit > 0``. :func:`make_loss` gives the training losses, :func:`dice_per_image` the hard Dice
that training validates with (and that evaluation of tensors should use, so the project has one Dice).
"""

from __future__ import annotations

import torch

#: Loss names: ``dice`` (1 − soft Dice) and ``dice_bce`` (soft Dice + binary cross-entropy).
LOSSES = ("dice", "dice_bce")


def make_loss(name: str) -> torch.nn.Module:
    """The training loss on logits: ``"dice"`` or ``"dice_bce"``.

    ``dice`` is MONAI ``DiceLoss(sigmoid=True)`` (soft Dice on sigmoid probabilities, batch mean
    of the per-image loss). ``dice_bce`` is MONAI ``DiceCELoss(sigmoid=True)``; with a single
    output channel MONAI computes the cross-entropy term with ``BCEWithLogitsLoss`` (checked in
    MONAI 1.6 ``DiceCELoss.forward``), so the loss is Dice + BCE with weights 1 and 1 (paper eq. 3).
    """
    from monai.losses import DiceCELoss, DiceLoss

    if name == "dice":
        return DiceLoss(sigmoid=True)
    if name == "dice_bce":
        return DiceCELoss(sigmoid=True)
    raise ValueError(f"unknown loss {name!r}; expected 'dice' or 'dice_bce'")


def dice_per_image(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice ``2|P ∩ G| / (|P| + |G|)`` of ``P = logits > 0`` against ``G = target > 0.5``, one
    value per image of a ``(B, 1, H, W)`` batch (float32, on the input's device).

    MONAI's :func:`monai.metrics.compute_dice` with ``ignore_empty=False``: an image whose
    prediction and ground truth are both empty scores 1, one with an empty ground truth and a
    non-empty prediction 0.
    """
    from monai.metrics import compute_dice

    pred = (logits > 0).float()
    tgt = (target > 0.5).float()
    return compute_dice(pred, tgt, include_background=True, ignore_empty=False)[:, 0].float()
