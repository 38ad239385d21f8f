"""Adversarial discriminative domain adaptation for segmentation (paper 001 §5.2.2, after Haq et al.) as a recipe.

Three parts: the segmentation network (the model), a *decoder* R that reconstructs the input from the
network's output z (its probabilities), and a *pixel-wise discriminator* D that tells source from target
predictions. Per training batch of labelled source images ``x_s`` a batch of unlabelled target images
``x_t`` (the target folder's ``train`` split, drawn with the hook's generator) is seen, and

* the network and the decoder minimise ``L_seg(x_s) + λ_adv·L_adv(x_t) + λ_recons·L_recons(x_t)`` with
  ``L_adv(x_t) = −mean_hw log D(z_t)`` (fool D into calling target predictions source) and
  ``L_recons(x_t) = MSE(R(z_t), x_t)``; λ_adv = 0.001 and λ_recons = 0.01 (paper 001, from Haq et al.);
* after that step D minimises ``L_dis = −mean_hw [s·log D(z) + (1 − s)·log(1 − D(z))]`` with s = 1 for
  the source and s = 0 for the target predictions (detached), with its own Adam optimizer.

Source batches can be domain-randomized first (``level``, :mod:`xrlib.training.randomization`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xrlib.training.recipes import Recipe, StepContext, register_recipe

__all__ = ["ADDA", "adda_generator_loss", "discriminator_loss", "pixel_discriminator", "reconstruction_decoder"]


def pixel_discriminator(width: int = 16) -> torch.nn.Module:
    """Fully convolutional D: prediction ``(B, 1, H, W)`` → per-pixel source probability logits ``(B, 1, H, W)``."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.LeakyReLU(0.2),
        torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.LeakyReLU(0.2),
        torch.nn.Conv2d(width, 1, 1))


def reconstruction_decoder(width: int = 16) -> torch.nn.Module:
    """R: the network's output z ``(B, 1, H, W)`` → a reconstruction of the input image ``(B, 1, H, W)``."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(width, 1, 3, padding=1), torch.nn.Sigmoid())


def discriminator_loss(d_source_logits: torch.Tensor, d_target_logits: torch.Tensor) -> torch.Tensor:
    """L_dis: pixel-mean BCE with s = 1 on source and s = 0 on target predictions (sum of the two means)."""
    return (F.binary_cross_entropy_with_logits(d_source_logits, torch.ones_like(d_source_logits))
            + F.binary_cross_entropy_with_logits(d_target_logits, torch.zeros_like(d_target_logits)))


def adda_generator_loss(d_target_logits: torch.Tensor, recon: torch.Tensor, x_target: torch.Tensor,
                        adv_weight: float = 0.001, recon_weight: float = 0.01) -> torch.Tensor:
    """λ_adv·L_adv(x_t) + λ_recons·L_recons(x_t): ``−mean log D(z_t)`` and ``MSE(R(z_t), x_t)``."""
    adv = F.binary_cross_entropy_with_logits(d_target_logits, torch.ones_like(d_target_logits))
    return adv_weight * adv + recon_weight * F.mse_loss(recon, x_target)


@register_recipe
@dataclass
class ADDA(Recipe):
    """ADDA towards the unlabelled ``train`` images of the dataset folder ``target_dir`` (its ``target_pool``).

    ``target_dir`` is relative to the models root (the folder that holds the model's folder; POSIX
    separators, ``..`` allowed) or absolute. A relative one keeps the model's cache key (which hashes the
    recipe parameters) the same wherever the run folder lives.
    ``level``: domain randomization of the source batch (``none``, ``regular``, ``strong``);
    ``adv_weight``/``recon_weight``: λ_adv, λ_recons; ``d_lr``: the discriminator's Adam lr; ``width``:
    channels of D and R."""

    name = "adda"
    target_dir: str = ""
    target_pool: str = "surrogate"
    level: str = "strong"
    adv_weight: float = 0.001
    recon_weight: float = 0.01
    d_lr: float = 0.0002
    width: int = 16
    version: int = 1  # of the source batch's domain randomization (xrlib.training.randomization.DR_VERSION)

    def __post_init__(self):
        if self.level not in ("none", "regular", "strong"):
            raise ValueError(f"adda: unknown level {self.level!r}; expected none, regular or strong")
        self._target = None
        self._xt = None
        self._root = None

    def train_data(self, x, y, out_root):
        """Remember the models root, against which a relative ``target_dir`` is resolved; the data are unchanged."""
        self._root = out_root
        return x, y

    def target_path(self):
        """``target_dir`` as a path: relative ones under the models root given to :meth:`train_data`."""
        from pathlib import Path

        path = Path(self.target_dir)
        if path.is_absolute() or self._root is None:
            return path
        return Path(self._root) / path

    def target_images(self) -> torch.Tensor:
        """The target domain's ``train`` images ``(N, 1, S, S)`` (read once; no masks are used)."""
        if self._target is None:
            from xrlib.core.errors import InputError
            from xrlib.data.shards import read_manifest
            from xrlib.training.data import load_tensors

            target = self.target_path()
            man = read_manifest(target)
            rows = man[(man["pool"] == self.target_pool) & (man["split"] == "train")]
            if rows.empty:
                raise InputError(target, f"adda: no {self.target_pool!r} train images to adapt to")
            self._target = load_tensors(rows, target)[0]
        return self._target

    def extra_modules(self, model):
        return {"adda_decoder": reconstruction_decoder(self.width), "adda_discriminator": pixel_discriminator(self.width)}

    def extra_optimizers(self, modules):
        return {"adda_discriminator": torch.optim.Adam(modules["adda_discriminator"].parameters(), lr=self.d_lr,
                                                       betas=(0.5, 0.999))}

    def batch(self, x, y, model, ctx: StepContext):
        if self.level != "none":
            from xrlib.training.randomization import randomize_batch

            x, y = randomize_batch(x, y, self.level, ctx.generator)
        tgt = self.target_images()
        idx = torch.randint(0, len(tgt), (len(x),), generator=ctx.generator)
        self._xt = tgt[idx].to(x.device)
        return x, y

    def extra_loss(self, logits, x, y, model, ctx: StepContext):
        xt = self._xt
        zt = torch.sigmoid(model(xt))
        d = ctx.modules["adda_discriminator"]
        return adda_generator_loss(d(zt), ctx.modules["adda_decoder"](zt), xt, self.adv_weight, self.recon_weight)

    def after_step(self, model, x, y, ctx: StepContext):
        d, opt = ctx.modules["adda_discriminator"], ctx.optimizers["adda_discriminator"]
        with torch.no_grad():
            zs, zt = torch.sigmoid(model(x)), torch.sigmoid(model(self._xt))
        opt.zero_grad()
        loss = discriminator_loss(d(zs), d(zt))
        loss.backward()
        opt.step()
