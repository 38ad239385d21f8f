"""Networks of the learned deformation + bias-field attack (paper 004): the field generator and its WGAN critic.

:class:`FieldGenerator` — a shared encoder maps an image ``(B, 1, S, S)`` to feature maps on a
coarse ``g × g`` grid; two heads give ``(μ_D, log σ_D)`` and ``(μ_V, log σ_V)``, spatial codes of
``z_channels`` channels on that grid; the sampled codes ``z = μ + σ·ε`` go through two decoders of
the same architecture with separate weights (they differ only in the number of output channels:
2 for the displacement D, 1 for the bias field V). Each decoder ends in ``bound · tanh``, so the
*coarse* fields are bounded by construction: ``|D_c| ≤ max_disp_px`` per component (pixels of the
network input) and ``|V_c| ≤ max_bias`` (image units). The dense fields are the coarse ones
upsampled bilinearly (:func:`xrlib.attacks.deformation.dense_field`), a convex combination of the
control values, so they keep those bounds and are smooth by construction. As in the paper: batch
normalisation after the convolutions of the generator, LeakyReLU with slope 0.2.

:class:`Critic` — the WGAN critic between clean and attacked images (a scalar per image). The paper
(eq. 3) uses the plain WGAN losses and states no Lipschitz constraint (no weight clipping, no
penalty); here the critic is trained with the gradient penalty of WGAN-GP (Gulrajani et al. 2017,
:func:`gradient_penalty`), and, as that paper advises, has no batch normalisation.

The paper states no KL term for the codes; :func:`kl_divergence` is there for the stated option
``kl_weight > 0`` of the generator training (default 0, as in the paper).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Critic", "FieldGenerator", "gradient_penalty", "kl_divergence"]

_SLOPE = 0.2


def _block(cin: int, cout: int, stride: int = 1, norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(_SLOPE))
    return nn.Sequential(*layers)


class _Encoder(nn.Module):
    """Stride-2 convolutions down to about the coarse grid, then adaptive average pooling to exactly ``g × g``."""

    def __init__(self, image_size: int, grid: int, width: int):
        super().__init__()
        layers, size, cin = [_block(1, width)], int(image_size), width
        while size // 2 >= grid and len(layers) < 6:
            layers.append(_block(cin, width, stride=2))
            size //= 2
        layers.append(nn.AdaptiveAvgPool2d(grid))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class _Decoder(nn.Module):
    """Code ``(B, z, g, g)`` → coarse field ``(B, out, g, g)`` bounded by ``bound · tanh``."""

    def __init__(self, z_channels: int, width: int, out_channels: int, bound: float):
        super().__init__()
        self.net = nn.Sequential(_block(z_channels, width), _block(width, width), nn.Conv2d(width, out_channels, 1))
        self.bound = float(bound)

    def forward(self, z):
        return self.bound * torch.tanh(self.net(z))


class FieldGenerator(nn.Module):
    """Image → coarse displacement ``D_c`` (B, 2, g, g; pixels, channel 0 along rows, 1 along columns)
    and coarse bias ``V_c`` (B, 1, g, g; image units), see the module docstring."""

    def __init__(self, image_size: int, grid: int = 8, z_channels: int = 4, width: int = 16,
                 max_disp_px: float = 2.0, max_bias: float = 0.1):
        super().__init__()
        if not 2 <= int(grid) <= int(image_size):
            raise ValueError(f"the coarse grid must be between 2 and the image size {image_size}, got {grid}")
        self.grid, self.z_channels = int(grid), int(z_channels)
        self.encoder = _Encoder(image_size, self.grid, width)
        self.head_d = nn.Conv2d(width, 2 * z_channels, 1)
        self.head_v = nn.Conv2d(width, 2 * z_channels, 1)
        self.decoder_d = _Decoder(z_channels, width, 2, max_disp_px)
        self.decoder_v = _Decoder(z_channels, width, 1, max_bias)

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(μ_D, log σ²_D, μ_V, log σ²_V)``, each ``(B, z, g, g)``."""
        h = self.encoder(x)
        mu_d, logvar_d = self.head_d(h).chunk(2, 1)
        mu_v, logvar_v = self.head_v(h).chunk(2, 1)
        return mu_d, logvar_d.clamp(-10, 10), mu_v, logvar_v.clamp(-10, 10)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True):
        """``(D_c, V_c, codes)``; ``sample=False`` decodes the means. Noise ε is drawn on the CPU from
        ``generator`` (reproducible on any device)."""
        mu_d, lv_d, mu_v, lv_v = self.codes(x)
        if sample:
            eps = torch.randn((2, *mu_d.shape), generator=generator).to(mu_d)
            z_d, z_v = mu_d + torch.exp(0.5 * lv_d) * eps[0], mu_v + torch.exp(0.5 * lv_v) * eps[1]
        else:
            z_d, z_v = mu_d, mu_v
        return self.decoder_d(z_d), self.decoder_v(z_v), (mu_d, lv_d, mu_v, lv_v)


class Critic(nn.Module):
    """WGAN critic: image ``(B, 1, S, S)`` → score ``(B,)``; stride-2 convolutions, LeakyReLU 0.2, no normalisation."""

    def __init__(self, width: int = 16, depth: int = 3):
        super().__init__()
        layers, cin = [], 1
        for k in range(int(depth)):
            layers.append(_block(cin, width * 2 ** k, stride=2, norm=False))
            cin = width * 2 ** k
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.Linear(cin, 1)

    def forward(self, x):
        return self.out(self.features(x)).reshape(len(x))


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP penalty ``mean_i (‖∇ₓ critic(x̂_i)‖₂ − 1)²`` at ``x̂ = u·real + (1 − u)·fake``, ``u ~ U[0, 1]``
    per image (drawn on the CPU from ``generator``); differentiable in the critic's weights."""
    u = torch.rand((len(real),) + (1,) * (real.ndim - 1), generator=generator).to(real)
    x = (u * real.detach() + (1 - u) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) per image, summed over the code's elements (the optional VAE term)."""
    return 0.5 * (mu ** 2 + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)
