"""Segmentation networks: 2-D MONAI U-Nets of a chosen depth (losses are in :mod:`xrlib.nets.losses`).

The networks map a batch of radiographs ``(B, 1, S, S)`` with intensities in [0, 1] to clavicle
*logits* ``(B, 1, S, S)``; a pixel is clavicle when ``sigmoid(logit) > 0.5`` (i.e. logit > 0).

Depth is the number of resolution levels of the U-Net: depth ``d`` has ``d`` encoder stages with
``base_channels · 2^i`` channels (``i < d``) and ``d − 1`` stride-2 downsamplings, so the image
side ``S`` must be divisible by ``2^(d−1)`` (S = 256 works for every depth of the ablation,
S = 64 for depths ≤ 5 as well).
"""

from __future__ import annotations

import torch

#: U-Net depths of the paper's ablation (Table 3).
DEPTHS = (3, 4, 5)


def build_unet(depth: int = 4, base_channels: int = 16, dropout: float = 0.0) -> torch.nn.Module:
    """A 2-D MONAI U-Net, 1 input channel (radiograph) → 1 output channel (clavicle logits).

    Args:
        depth: resolution levels, 3, 4 or 5 (the paper's ablation); the input side S must be
            divisible by ``2 ** (depth - 1)``.
        base_channels: channels of the first level, doubled at every level.
        dropout: dropout probability inside the residual units.

    Each level uses two residual units (``num_res_units=2``) with instance normalisation
    (MONAI's default). Raises ``ValueError`` for another depth.
    """
    from monai.networks.nets import UNet

    if isinstance(depth, bool) or depth not in DEPTHS:
        raise ValueError(f"U-Net depth must be 3, 4 or 5, got {depth!r}")
    if int(base_channels) < 1:
        raise ValueError(f"base_channels must be a positive integer, got {base_channels!r}")
    channels = tuple(int(base_channels) * 2 ** i for i in range(depth))
    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=channels,
                strides=(2,) * (depth - 1), num_res_units=2, dropout=float(dropout))


def count_parameters(model: torch.nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))
