"""CycleGAN parts (Zhu et al. 2017, as paper 001 §5.2.1 uses them): ResNet generator, 70×70 PatchGAN, the losses.

:class:`ResnetGenerator` — c7s1-64, d128, d256, ``blocks`` residual blocks (6 for 128² images, 9 for
256² and larger, paper 001), u128, u64, c7s1-1 with instance normalisation, reflection padding and a
sigmoid output (images in [0, 1]); ``width`` scales the 64 (smaller for tiny runs).
:class:`PatchDiscriminator` — the 70×70 PatchGAN (C64-C128-C256-C512, 4×4 convolutions, the first
three with stride 2, then a 1-channel 4×4 convolution; each output logit sees a 70×70 input patch).
Losses: least-squares GAN (the original implementation's default), cycle consistency L1 with weight
λ = 10 (paper 001 does not state λ; 10 is the original default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CYCLE_WEIGHT", "PatchDiscriminator", "ResnetGenerator", "cycle_loss", "generator_blocks",
           "lsgan_loss", "receptive_field"]

#: Weight of the cycle-consistency loss (Zhu et al. 2017's default).
CYCLE_WEIGHT = 10.0


def generator_blocks(image_size: int) -> int:
    """Residual blocks of the generator: 6 below 256² (128² in the paper), 9 at 256² and above."""
    return 9 if int(image_size) >= 256 else 6


class _ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(True),
                                  nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Image ``(B, 1, S, S)`` in [0, 1] → translated image of the same shape (S divisible by 4)."""

    def __init__(self, blocks: int = 6, width: int = 64, channels: int = 1):
        super().__init__()
        w = int(width)
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(channels, w, 7), nn.InstanceNorm2d(w), nn.ReLU(True)]
        for m in (1, 2):
            layers += [nn.Conv2d(w * m, w * m * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(w * m * 2), nn.ReLU(True)]
        layers += [_ResBlock(w * 4) for _ in range(int(blocks))]
        for m in (4, 2):
            layers += [nn.ConvTranspose2d(w * m, w * m // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(w * m // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, channels, 7), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """The 70×70 PatchGAN: image ``(B, 1, S, S)`` → a map of real/fake logits."""

    def __init__(self, width: int = 64, channels: int = 1):
        super().__init__()
        w = int(width)
        layers = [nn.Conv2d(channels, w, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for i, stride in ((1, 2), (2, 2), (4, 1)):
            layers += [nn.Conv2d(w * i, w * i * 2, 4, stride, 1), nn.InstanceNorm2d(w * i * 2), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(w * 8, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def receptive_field(module: nn.Module) -> int:
    """Receptive field (px) of one output of a plain stack of convolutions (e.g. :class:`PatchDiscriminator`)."""
    rf, jump = 1, 1
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            rf += (m.kernel_size[0] - 1) * jump
            jump *= m.stride[0]
    return rf


def lsgan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean (D(x) − 1)² for ``real``, mean D(x)² otherwise."""
    return F.mse_loss(logits, torch.ones_like(logits) if real else torch.zeros_like(logits))


def cycle_loss(x: torch.Tensor, reconstructed: torch.Tensor, weight: float = CYCLE_WEIGHT) -> torch.Tensor:
    """λ·‖F(G(x)) − x‖₁ (mean absolute error)."""
    return float(weight) * F.l1_loss(reconstructed, x)
