"""An auxiliary reconstruction head on a U-Net's top decoder features; its L1 error is an OOD score.

Paper 002 (section 2.5) gives its segmentation network a second output channel that reconstructs
the input and uses the reconstruction error as the score of an out-of-distribution (OOD) detector.
Here the head is a small module of its own, :class:`ReconstructionHead`, fed by the features a
MONAI :class:`~monai.networks.nets.UNet` computes just before its last up-sampling block — the
concatenation of the first encoder level and the first decoder level, ``2·C`` channels at half
the input resolution (``C`` = the U-Net's first channel count). :class:`SegRecon` runs the U-Net and
the head in one forward pass (a forward hook catches the features) and returns the logits and the
reconstruction.

The head can be trained on a *frozen* segmentation network (the victim stays exactly the model
the other chapters attack) or jointly with it (paper 002's setting); see
:class:`xrlib.training.recon.ReconHeadTraining`.

Reconstruction error (:func:`recon_error`): the mean absolute difference between the input and its
reconstruction per image, in [0, 1] image units (the L1 loss of training).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ReconstructionHead", "SegRecon", "feature_channels", "feature_module", "recon_error"]


def feature_module(unet: nn.Module) -> nn.Module:
    """The submodule of a MONAI ``UNet`` whose output are the top decoder features.

    A MONAI ``UNet`` is ``model = Sequential(first encoder unit, SkipConnection(rest), last up block)``;
    the ``SkipConnection`` returns the concatenation of the first encoder level's output and the
    up-sampled deeper features, the input of the last up-sampling block.
    """
    inner = getattr(unet, "model", None)
    if not isinstance(inner, nn.Sequential) or len(inner) != 3:
        raise TypeError(f"expected a MONAI UNet (model = Sequential of 3), got {type(unet).__name__}")
    return inner[1]


def feature_channels(unet: nn.Module) -> int:
    """Channels of :func:`feature_module`'s output: twice the U-Net's first channel count."""
    return 2 * int(unet.channels[0])


class ReconstructionHead(nn.Module):
    """Features ``(B, 2C, S/2, S/2)`` → reconstruction ``(B, 1, S, S)`` in [0, 1] (sigmoid).

    A transposed convolution (stride 2) to ``hidden`` channels, a 3×3 convolution, and a 1×1
    convolution to one channel, with PReLU activations.
    """

    def __init__(self, in_channels: int, hidden: int = 16):
        super().__init__()
        if int(in_channels) < 1 or int(hidden) < 1:
            raise ValueError(f"in_channels and hidden must be ≥ 1, got {in_channels} and {hidden}")
        self.net = nn.Sequential(
            nn.ConvTranspose2d(int(in_channels), int(hidden), 3, stride=2, padding=1, output_padding=1), nn.PReLU(),
            nn.Conv2d(int(hidden), int(hidden), 3, padding=1), nn.PReLU(),
            nn.Conv2d(int(hidden), 1, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(features))


class FeatureTap:
    """A forward hook on :func:`feature_module` that keeps its last output (``.features``)."""

    def __init__(self, unet: nn.Module):
        self.features: torch.Tensor | None = None
        self.handle = feature_module(unet).register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self.features = output

    def remove(self) -> None:
        self.handle.remove()


class SegRecon(nn.Module):
    """A U-Net and its reconstruction head: ``forward(x)`` → ``(logits, reconstruction)``, both ``(B, 1, S, S)``."""

    def __init__(self, unet: nn.Module, head: ReconstructionHead):
        super().__init__()
        self.unet, self.head = unet, head
        self._tap = FeatureTap(unet)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.unet(x)
        return logits, self.head(self._tap.features)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The OOD score of each image: :func:`recon_error` of its reconstruction."""
        return recon_error(x, self(x)[1])


def recon_error(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between ``x`` and ``recon`` per image ``(B,)`` (image units)."""
    return (x - recon).abs().flatten(1).mean(1)
