"""A smooth deformation + bias-field attack (paper 004), per image or by a learned generator, and the threat ``deformation``.

The attacked image is ``I_DV = clamp(warp(I_0, D) + V, 0, 1)``:

* ``D`` — a displacement field ``(B, 2, S, S)`` in **pixels of the network input**, channel 0 along
  the rows (down), channel 1 along the columns (right) — MONAI's ``Warp`` convention. Warping is
  backward: ``warp(I, D)(p) = I(p + D(p))`` (bilinear, border padding; :class:`monai.networks.blocks.Warp`),
  so a constant ``D = (dr, dc)`` moves image content by ``(−dr, −dc)``. Multiply by the pixel size
  at the isocenter (mm) to report millimetres.
* ``V`` — an additive bias field ``(B, 1, S, S)`` in image units ([0, 1] intensities).
* Both are smooth by construction: they are control values on a coarse ``g × g`` grid, bounded by
  ``bound · tanh(θ)`` (``|D_c| ≤ max_disp_px`` per component, ``|V_c| ≤ max_bias``), upsampled
  bilinearly to ``S × S`` (``align_corners=True``; :func:`dense_field`). Bilinear interpolation is
  a convex combination of the control values, so the dense fields keep the bounds, and their
  slopes are at most ``2·bound / spacing`` with ``spacing = (S − 1)/(g − 1)`` pixels. For D that
  bounds the Jacobian determinant of ``p ↦ p + D(p)`` below by ``1 − 2a`` (``a = 2·max_disp_px / spacing``):
  no folding while ``max_disp_px < spacing / 4`` (checked by :func:`min_jacobian` on every result).
* The clamp keeps the victim's input domain; pixels it clips do not pass gradients.
* The ground truth is warped with the same ``D`` (bilinear, then thresholded at 0.5: :func:`warp_mask`).

Loss per image (paper 004 eqs. 2, 4, 5)::

    L = (ξ − CE_M(S_0, S_DV))² + λ_D · mean(D²) + λ_V · mean(V²)

with ``CE_M`` the masked cross-entropy of the attacked prediction against the clean one: with
``p₀ = σ(z₀)`` the clean and ``q = σ(z_DV)`` the attacked foreground probability (the two classes
background/foreground of a sigmoid output), ``CE_M = Σ_pix M·[−p₀ log q − (1 − p₀) log(1 − q)] / Σ_pix M``
with the mask ``M = p₀`` (the clean foreground probability). **Normalisation**: divided by ``Σ M``,
i.e. the mean cross-entropy (nats) per unit of clean foreground — the paper's eq. 5 is a plain sum,
whose size would depend on the organ's area; with this normalisation ξ = 2 means an attacked
foreground probability of about e⁻² ≈ 0.14 where the clean one was ≈ 1. ``mean(D²)``, ``mean(V²)``
are means over the dense field's pixels (and D's two channels), the paper's ``‖·‖²₂`` up to the
constant pixel count (which the paper's λ values do not tell). λ_D = 0.1 and λ_V = 0.01 (paper).

The loss above is paper 004's objective ``xi``: it is met by a few confidently wrong pixels, so it
need not lower the Dice. The objective ``dice`` (:func:`dice_drop_loss`) seeks the Dice drop inside
the bounds instead: it minimises the soft Dice of the attacked prediction against the clean prediction
warped with D (what a network that follows the deformation outputs), without penalties — the bounds
``max_disp_px`` and ``max_bias`` are the perceptibility budget — and keeps, per image, the iterate with
the lowest hard Dice against that warped clean prediction.

Two ways to find the fields (variants ``DV``, ``D`` (V = 0) and ``V`` (D = 0)):

* :func:`optimise_fields` — per image: the coarse parameters are optimised directly for each test
  image by RMSProp (decay 0.9, ε 1e-10, the paper's optimiser; the learning rate is a setting —
  the paper's 1e-4 trains a generator over many iterations, a per-image search of a few dozen
  steps needs a larger one), in the spirit of Chen et al., *Medical Image Analysis* 2022
  (adversarial data augmentation with the same parameterisation). Images in a batch are
  independent (per-image losses summed; RMSProp is elementwise).
* :func:`train_generator` — paper 004's generator (:class:`xrlib.nets.fieldgen.FieldGenerator`)
  trained on training images against a frozen victim with the same loss plus the WGAN generator
  loss ``critic(I_0) − critic(I_DV)``; its critic (:class:`xrlib.nets.fieldgen.Critic`) is trained
  with ``critic(I_DV) − critic(I_0) + λ_gp·GP`` (WGAN-GP; the paper states no Lipschitz constraint).
  RMSProp (decay 0.9, ε 1e-10) for both; :func:`generate` applies it to new images (one sample of
  the codes per image, seeded).

The victim's weights never change (:func:`xrlib.attacks.pgd.frozen`: eval mode, no parameter gradients).

Scores (:func:`field_scores`): perceptibility ``p = mean|I_DV − I_0|`` (paper eq. 7) in image units
and relative to the clean image's standard deviation, the minimum Jacobian determinant of D
(≤ 0: folding), the maximum displacement ‖D‖₂ in pixels (and mm with the pixel size).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from xrlib.attacks.base import TestImages, Threat, Threatened
from xrlib.attacks.pgd import frozen
from xrlib.core.errors import InputError
from xrlib.eval.metrics import dice

__all__ = ["FieldAttack", "FieldSettings", "GeneratorSettings", "METHODS", "OBJECTIVES", "VARIANTS", "XI_GRID",
           "DeformationThreat", "attack_loss", "ce_mask", "dice_drop_loss", "clavicle_dice", "compose", "dense_field", "field_scores", "generate",
           "max_displacement", "min_jacobian", "jacobian_determinant", "optimise_fields", "perceptibility",
           "train_generator", "warp", "warp_mask"]

#: Field variants: deformation and bias, deformation only, bias only.
VARIANTS = ("DV", "D", "V")
#: How the fields are found.
METHODS = ("per-image", "generator")
#: Paper 004's ξ grid (0 is the clean image).
XI_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


# ----------------------------------------------------------------------------------------------- fields


def dense_field(coarse: torch.Tensor, size: int) -> torch.Tensor:
    """Coarse control values ``(B, C, g, g)`` upsampled bilinearly (``align_corners=True``) to ``(B, C, size, size)``."""
    return F.interpolate(coarse, size=(int(size), int(size)), mode="bilinear", align_corners=True)


@lru_cache(maxsize=None)
def _warper(mode: str):
    from monai.networks.blocks import Warp

    return Warp(mode=mode, padding_mode="border")  # stateless; one instance per mode (MONAI logs on creation)


def warp(images: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``images`` ``(B, C, S, S)`` sampled at ``p + disp(p)`` (pixels; channel 0 rows, 1 columns), border padding (MONAI ``Warp``)."""
    return _warper(mode)(images, disp.to(images))


def warp_mask(masks: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Binary ``masks`` warped with ``disp``: bilinear warp of the 0/1 mask, then ≥ 0.5 (a soft warp thresholded); same dtype."""
    return (warp(masks.float(), disp) >= 0.5).to(masks.dtype)


def compose(images: torch.Tensor, disp: torch.Tensor | None, bias: torch.Tensor | None, clamp: bool = True) -> torch.Tensor:
    """``I_DV = warp(I_0, D) + V`` (either may be ``None``: skipped), clamped to [0, 1] unless ``clamp=False``."""
    out = images if disp is None else warp(images, disp)
    if bias is not None:
        out = out + bias
    return out.clamp(0.0, 1.0) if clamp else out


def jacobian_determinant(disp: np.ndarray | torch.Tensor) -> np.ndarray:
    """det ∂(p + D(p))/∂p per pixel ``(B, S, S)`` (central differences, ``numpy.gradient``; D in pixels, rows/columns)."""
    d = disp.detach().cpu().numpy() if isinstance(disp, torch.Tensor) else np.asarray(disp, float)
    drr, drc = np.gradient(d[:, 0], axis=(1, 2))
    dcr, dcc = np.gradient(d[:, 1], axis=(1, 2))
    return (1.0 + drr) * (1.0 + dcc) - drc * dcr


def min_jacobian(disp) -> np.ndarray:
    """Minimum Jacobian determinant per image (≤ 0 means folding)."""
    return jacobian_determinant(disp).reshape(len(disp), -1).min(1)


def max_displacement(disp) -> np.ndarray:
    """Maximum displacement length ‖D(p)‖₂ per image, in pixels."""
    d = disp.detach().cpu().numpy() if isinstance(disp, torch.Tensor) else np.asarray(disp, float)
    return np.sqrt((d ** 2).sum(1)).reshape(len(d), -1).max(1)


def perceptibility(adv, clean) -> tuple[np.ndarray, np.ndarray]:
    """Per image ``p = mean|adv − clean|`` (paper 004 eq. 7, image units) and ``p / std(clean)`` (nan for a flat image)."""
    a = np.asarray(adv, np.float64).reshape(len(adv), -1)
    c = np.asarray(clean, np.float64).reshape(len(clean), -1)
    p = np.abs(a - c).mean(1)
    sd = c.std(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(sd > 0, p / np.where(sd > 0, sd, 1.0), np.nan)
    return p, rel


# ------------------------------------------------------------------------------------------------- loss


def ce_mask(logits_clean: torch.Tensor, logits_adv: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Masked cross-entropy per image ``(B,)`` of the attacked prediction against the clean one,
    weighted by the clean foreground probability and normalised by its sum (module docstring)."""
    p0 = torch.sigmoid(logits_clean.detach())
    ce = -(p0 * F.logsigmoid(logits_adv) + (1.0 - p0) * F.logsigmoid(-logits_adv))
    return (p0 * ce).flatten(1).sum(1) / (p0.flatten(1).sum(1) + eps)


def attack_loss(logits_clean, logits_adv, xi: float, disp=None, bias=None, lambda_d: float = 0.1,
                lambda_v: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image loss ``(ξ − CE_M)² + λ_D·mean(D²) + λ_V·mean(V²)`` and ``CE_M`` (both ``(B,)``)."""
    ce = ce_mask(logits_clean, logits_adv)
    loss = (float(xi) - ce) ** 2
    if disp is not None:
        loss = loss + float(lambda_d) * (disp ** 2).flatten(1).mean(1)
    if bias is not None:
        loss = loss + float(lambda_v) * (bias ** 2).flatten(1).mean(1)
    return loss, ce


def dice_drop_loss(logits_clean, logits_adv, disp=None) -> torch.Tensor:
    """Per-image loss of the objective ``"dice"`` (to minimise): the soft Dice of the attacked foreground
    probability against the clean prediction warped with ``D`` (hard, ``p₀ > ½`` then :func:`warp_mask`),
    i.e. the attack lowers the overlap with what a network that follows D would output. No penalty:
    the bounds of the fields are the perceptibility budget."""
    target = (logits_clean.detach() > 0).to(logits_adv.dtype)
    if disp is not None:
        target = warp_mask(target, disp.detach())
    q = torch.sigmoid(logits_adv)
    inter = (q * target).flatten(1).sum(1)
    return (2 * inter + 1e-5) / (q.flatten(1).sum(1) + target.flatten(1).sum(1) + 1e-5)


def _hard_dice_vs_warped_clean(logits_clean, logits_adv, disp=None) -> torch.Tensor:
    target = (logits_clean > 0).float()
    if disp is not None:
        target = warp_mask(target, disp)
    pred = (logits_adv > 0).float()
    inter = (pred * target).flatten(1).sum(1)
    den = pred.flatten(1).sum(1) + target.flatten(1).sum(1)
    return torch.where(den > 0, 2 * inter / den.clamp(min=1e-12), torch.ones_like(den))


#: Per-image search objectives: ``xi`` — paper 004's (ξ − CE_M)² + λ terms; ``dice`` — the Dice drop (:func:`dice_drop_loss`).
OBJECTIVES = ("xi", "dice")


# --------------------------------------------------------------------------------------- per-image search


@dataclass(frozen=True)
class FieldSettings:
    """The fields and the per-image search: ``variant`` (:data:`VARIANTS`), coarse ``grid`` g, bounds
    ``max_disp_px`` (per component, pixels) and ``max_bias`` (image units), ``lambda_d``/``lambda_v``,
    RMSProp ``steps`` and ``lr``, ``init_std`` (std of the random start of the tanh parameters),
    ``objective`` (:data:`OBJECTIVES`: ``xi``, paper 004's target loss, or ``dice``, the Dice drop within the bounds)."""

    variant: str = "DV"
    grid: int = 8
    max_disp_px: float = 2.0
    max_bias: float = 0.1
    lambda_d: float = 0.1
    lambda_v: float = 0.01
    steps: int = 20
    lr: float = 0.05
    init_std: float = 0.1
    objective: str = "xi"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if int(self.grid) < 2 or int(self.steps) < 0:
            raise ValueError(f"grid must be ≥ 2 and steps ≥ 0, got {self.grid} and {self.steps}")
        if min(self.max_disp_px, self.max_bias, self.lambda_d, self.lambda_v, self.lr, self.init_std) < 0:
            raise ValueError("bounds, weights, lr and init_std must be ≥ 0")

    @property
    def uses_d(self) -> bool:
        return self.variant in ("DV", "D")

    @property
    def uses_v(self) -> bool:
        return self.variant in ("DV", "V")


@dataclass
class FieldAttack:
    """Result of an attack on ``N`` images: ``adv`` ``(N, S, S)``, ``disp`` ``(N, 2, S, S)`` (pixels),
    ``bias`` ``(N, S, S)``, the achieved ``ce`` (CE_M, nats), ``seconds`` (attack wall time per image)
    and ``train_seconds`` (the generator's training, 0 for the per-image search)."""

    adv: np.ndarray
    disp: np.ndarray
    bias: np.ndarray
    ce: np.ndarray
    seconds: float = 0.0
    train_seconds: float = 0.0


def _fields(theta_d, theta_v, s: FieldSettings, size: int):
    disp = dense_field(s.max_disp_px * torch.tanh(theta_d), size) if theta_d is not None else None
    bias = dense_field(s.max_bias * torch.tanh(theta_v), size) if theta_v is not None else None
    return disp, bias


def _zeros_like_fields(x: torch.Tensor):
    b, _, h, w = x.shape
    return x.new_zeros((b, 2, h, w)), x.new_zeros((b, 1, h, w))


def optimise_fields(model: torch.nn.Module, images: torch.Tensor, xi: float, settings: FieldSettings,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image search (module docstring) for a batch ``(B, 1, S, S)``: ``(I_DV, D, V, CE_M)``, detached.

    The start is random (``init_std`` in tanh space, from ``generator``, default seeded 0); with
    ``steps = 0`` or ``xi = 0`` the zero fields are returned (the identity). With the objective ``dice``
    every iterate (the start included) is scored by the hard Dice of the attacked prediction against the
    warped clean prediction and, per image, the lowest-scoring one is returned (ξ only switches the attack on).
    """
    s, x = settings, images.detach()
    size = x.shape[-1]
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    with frozen(model):
        with torch.no_grad():
            logits0 = model(x)
        if float(xi) == 0.0 or s.steps == 0 or len(x) == 0:
            d0, v0 = _zeros_like_fields(x)
            return x.clone(), d0, v0, ce_mask(logits0, logits0).detach()
        shape = (len(x), 1, s.grid, s.grid)
        init = torch.randn((len(x), 3, s.grid, s.grid), generator=gen).to(x) * s.init_std
        theta_d = init[:, :2].clone().requires_grad_(True) if s.uses_d else None
        theta_v = init[:, 2:].reshape(shape).clone().requires_grad_(True) if s.uses_v else None
        params = [t for t in (theta_d, theta_v) if t is not None]
        opt = torch.optim.RMSprop(params, lr=s.lr, alpha=0.9, eps=1e-10)
        best = None  # objective "dice": (score, adv, disp, bias) of the best iterate per image
        for _ in range(int(s.steps)):
            disp, bias = _fields(theta_d, theta_v, s, size)
            adv = compose(x, disp, bias)
            logits = model(adv)
            if s.objective == "dice":
                loss = dice_drop_loss(logits0, logits, disp)
                best = _keep_best(best, _hard_dice_vs_warped_clean(logits0, logits.detach(), disp), adv, disp, bias)
            else:
                loss, _ = attack_loss(logits0, logits, xi, disp, bias, s.lambda_d, s.lambda_v)
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
        with torch.no_grad():
            disp, bias = _fields(theta_d, theta_v, s, size)
            adv = compose(x, disp, bias)
            if s.objective == "dice":
                best = _keep_best(best, _hard_dice_vs_warped_clean(logits0, model(adv), disp), adv, disp, bias)
                _, adv, disp, bias = best
            ce = ce_mask(logits0, model(adv))
    d0, v0 = _zeros_like_fields(x)
    return adv.detach(), (d0 if disp is None else disp.detach()), (v0 if bias is None else bias.detach()), ce.detach()


def _keep_best(best, score, adv, disp, bias):
    adv, disp = adv.detach(), (None if disp is None else disp.detach())
    bias = None if bias is None else bias.detach()
    if best is None:
        return score, adv, disp, bias
    s0, a0, d0, b0 = best
    m = score < s0
    pick = lambda new, old: None if new is None else torch.where(m.reshape(-1, 1, 1, 1), new, old)  # noqa: E731
    return torch.minimum(score, s0), pick(adv, a0), pick(disp, d0), pick(bias, b0)


# ---------------------------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class GeneratorSettings:
    """Generator training: ``steps`` (generator updates), ``batch_size``, RMSProp ``lr`` (paper: 1e-4,
    also for the critic), ``critic_steps`` per generator step, ``gp_weight`` (WGAN-GP λ), ``adv_weight``
    (weight of the WGAN generator loss), ``kl_weight`` (0: none, as in the paper), ``z_channels``,
    ``width`` of generator and critic."""

    steps: int = 200
    batch_size: int = 4
    lr: float = 1e-4
    critic_steps: int = 1
    gp_weight: float = 10.0
    adv_weight: float = 1.0
    kl_weight: float = 0.0
    z_channels: int = 4
    width: int = 16

    def __post_init__(self):
        if int(self.steps) < 1 or int(self.batch_size) < 1 or int(self.critic_steps) < 0:
            raise ValueError(f"steps and batch_size must be ≥ 1 and critic_steps ≥ 0, got {self.steps}, "
                             f"{self.batch_size}, {self.critic_steps}")


def _mask_variant(dc: torch.Tensor, vc: torch.Tensor, s: FieldSettings):
    return (dc if s.uses_d else None), (vc if s.uses_v else None)


def train_generator(model: torch.nn.Module, train_images: np.ndarray, xi: float, fields: FieldSettings,
                    settings: GeneratorSettings, seed: int = 0, device=None):
    """Train a :class:`~xrlib.nets.fieldgen.FieldGenerator` and its critic against the frozen ``model`` on
    ``train_images`` ``(N, S, S)`` in [0, 1] (module docstring). Returns ``(generator, log)`` with one
    log row per step: ``step, ce, attack_loss, critic_loss, gp, seconds``. Seeded: same inputs, same result."""
    from xrlib.nets.fieldgen import Critic, FieldGenerator, gradient_penalty, kl_divergence

    imgs = np.asarray(train_images, np.float32)
    if imgs.ndim != 3 or len(imgs) == 0:
        raise ValueError(f"train_images must be a non-empty (N, S, S) array, got shape {imgs.shape}")
    dev = torch.device(device) if device is not None else next(iter(model.parameters()), torch.empty(0)).device
    size = imgs.shape[-1]
    torch.manual_seed(int(seed))  # weights initialisation
    gen = FieldGenerator(size, fields.grid, settings.z_channels, settings.width, fields.max_disp_px, fields.max_bias).to(dev)
    critic = Critic(settings.width).to(dev)
    rms = dict(lr=settings.lr, alpha=0.9, eps=1e-10)
    opt_g, opt_c = torch.optim.RMSprop(gen.parameters(), **rms), torch.optim.RMSprop(critic.parameters(), **rms)
    rng = torch.Generator().manual_seed(int(seed) + 1)
    data = torch.as_tensor(imgs)[:, None]
    rows, t0 = [], time.perf_counter()
    with frozen(model):
        for step in range(1, int(settings.steps) + 1):
            idx = torch.randint(len(data), (int(settings.batch_size),), generator=rng)
            x = data[idx].to(dev)
            with torch.no_grad():
                logits0 = model(x)
            c_loss = gp = torch.zeros(())
            for _ in range(int(settings.critic_steps)):
                with torch.no_grad():
                    dc, vc, _ = gen(x, rng)
                    disp, bias = _fields_from_coarse(dc, vc, fields, size)
                    fake = compose(x, disp, bias)
                gp = gradient_penalty(critic, x, fake, rng)
                c_loss = critic(fake).mean() - critic(x).mean() + settings.gp_weight * gp
                opt_c.zero_grad()
                c_loss.backward()
                opt_c.step()
            dc, vc, codes = gen(x, rng)
            disp, bias = _fields_from_coarse(dc, vc, fields, size)
            fake = compose(x, disp, bias)
            a_loss, ce = attack_loss(logits0, model(fake), xi, disp, bias, fields.lambda_d, fields.lambda_v)
            for p in critic.parameters():
                p.requires_grad_(False)
            g_loss = a_loss.mean() + settings.adv_weight * (critic(x).mean() - critic(fake).mean())
            for p in critic.parameters():
                p.requires_grad_(True)
            if settings.kl_weight > 0:
                mu_d, lv_d, mu_v, lv_v = codes
                g_loss = g_loss + settings.kl_weight * (kl_divergence(mu_d, lv_d) + kl_divergence(mu_v, lv_v)).mean()
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            rows.append({"step": step, "ce": ce.mean().item(), "attack_loss": a_loss.mean().item(),
                         "critic_loss": c_loss.detach().item(), "gp": gp.detach().item(), "seconds": time.perf_counter() - t0})
    gen.eval()
    return gen, pd.DataFrame(rows)


def _fields_from_coarse(dc, vc, s: FieldSettings, size: int):
    d, v = _mask_variant(dc, vc, s)
    return (dense_field(d, size) if d is not None else None), (dense_field(v, size) if v is not None else None)


def generate(gen: torch.nn.Module, model: torch.nn.Module, images: torch.Tensor, fields: FieldSettings,
             generator: torch.Generator | None = None):
    """Apply a trained generator to ``images`` ``(B, 1, S, S)``: ``(I_DV, D, V, CE_M)`` (one code sample per image)."""
    x = images.detach()
    size = x.shape[-1]
    gen.eval()
    with frozen(model), torch.no_grad():
        dc, vc, _ = gen(x, generator if generator is not None else torch.Generator().manual_seed(0))
        disp, bias = _fields_from_coarse(dc, vc, fields, size)
        adv = compose(x, disp, bias)
        ce = ce_mask(model(x), model(adv))
    d0, v0 = _zeros_like_fields(x)
    return adv, (d0 if disp is None else disp), (v0 if bias is None else bias), ce


# ----------------------------------------------------------------------------------------------- scores


def clavicle_dice(prob: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice per clavicle ``(right, left)`` per image: the image is split at its middle column; by the
    display convention the patient's right clavicle lies in the image's left half."""
    half = prob.shape[-1] // 2
    right = np.array([dice(p[:, :half], t[:, :half]) for p, t in zip(prob, truth)])
    left = np.array([dice(p[:, half:], t[:, half:]) for p, t in zip(prob, truth)])
    return right, left


def field_scores(adv, clean, disp, pixel_mm: float | None = None) -> pd.DataFrame:
    """Per image: ``p``, ``p_rel``, ``min_jacobian``, ``max_disp_px`` and ``max_disp_mm`` (nan without ``pixel_mm``)."""
    p, rel = perceptibility(adv, clean)
    mx = max_displacement(disp)
    return pd.DataFrame({"p": p, "p_rel": rel, "min_jacobian": min_jacobian(disp), "max_disp_px": mx,
                         "max_disp_mm": mx * (np.nan if pixel_mm is None else float(pixel_mm))})


# ----------------------------------------------------------------------------------------------- threat


class DeformationThreat(Threat):
    """The threat ``deformation``: budget = ξ (unit ``xi``, nats of CE_M), 0 the clean image; geometric
    (the ground truth is warped with D).

    ``method`` ``per-image`` (:func:`optimise_fields`) or ``generator`` (a generator per victim and ξ,
    trained on ``train_images`` when first needed, then :func:`generate`). Randomness of budget ξ comes
    from a generator seeded with ``(seed, ξ)``. Extra columns: ``variant``, ``method``, ``p``, ``p_rel``,
    ``min_jacobian``, ``max_disp_px``, ``max_disp_mm``, ``ce_mask``, ``seconds_per_image``
    (attack wall time; the generator's inference), ``train_seconds`` (generator training, 0 per-image),
    ``dice_unwarped`` (Dice against the unwarped ground truth, as paper 004 scores), and per clavicle
    ``dice_right``/``dice_left`` (warped truth) and ``dice_right_unwarped``/``dice_left_unwarped``.
    """

    name = "deformation"
    budget_unit = "xi"
    geometric = True
    clean_budget = 0.0
    clean_keys = ("subject", "alpha")

    def __init__(self, grid: Sequence[float] = XI_GRID, method: str = "per-image", fields: FieldSettings | None = None,
                 generator: GeneratorSettings | None = None, train_images: np.ndarray | None = None,
                 pixel_mm: float | None = None, seed: int = 0, batch_size: int = 16, **field_options):
        if method not in METHODS:
            raise InputError(None, f"{self.name}: method must be one of {', '.join(METHODS)}, got {method!r}")
        try:
            self.fields = replace(fields or FieldSettings(), **field_options)
        except (TypeError, ValueError) as exc:
            raise InputError(None, f"{self.name}: bad field options {sorted(field_options)} ({exc})") from None
        self.grid = tuple(float(b) for b in grid)
        if not np.isclose(self.grid, 0.0).any() or min(self.grid) < 0:
            raise InputError(None, f"{self.name}: the budgets {list(self.grid)} must be ≥ 0 and include the clean 0")
        if method == "generator" and (train_images is None or len(train_images) == 0):
            raise InputError(None, f"{self.name}: the generator method needs training images")
        self.method, self.gen_settings = method, generator or GeneratorSettings()
        self.train_images, self.pixel_mm = train_images, pixel_mm
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.generators: dict = {}
        self.train_logs: dict = {}
        self.last: dict = {}

    @property
    def variant(self) -> str:
        return self.fields.variant

    def budgets(self) -> tuple[float, ...]:
        return self.grid

    def rng(self, budget: float) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(round(float(budget) * 1e6)))

    def generator_for(self, model: torch.nn.Module, budget: float):
        """The generator against ``model`` at ξ = ``budget`` (trained on first use) and its training seconds."""
        key = (id(model), float(budget))
        if key not in self.generators:
            t0 = time.perf_counter()
            gen, log = train_generator(model, self.train_images, budget, self.fields, self.gen_settings, self.seed)
            self.generators[key] = (gen, time.perf_counter() - t0)
            self.train_logs[key] = log
        return self.generators[key]

    def attack(self, model: torch.nn.Module, images: np.ndarray, budget: float) -> FieldAttack:
        """The attacked images, fields and CE_M of ``images`` ``(N, S, S)`` at ξ = ``budget``."""
        dev = next(iter(model.parameters()), torch.empty(0)).device
        rng, outs = self.rng(budget), []
        gen, train_s = self.generator_for(model, budget) if self.method == "generator" and budget > 0 else (None, 0.0)
        t0 = time.perf_counter()
        for i in range(0, len(images), self.batch_size):
            x = torch.as_tensor(np.asarray(images[i:i + self.batch_size], np.float32), device=dev)[:, None]
            if gen is None:
                out = optimise_fields(model, x, budget, self.fields, rng)
            else:
                out = generate(gen, model, x, self.fields, rng)
            outs.append([t.cpu().numpy() for t in out])
        seconds = (time.perf_counter() - t0) / max(len(images), 1)
        adv, disp, bias, ce = (np.concatenate([o[k] for o in outs]) for k in range(4))
        return FieldAttack(adv[:, 0], disp, bias[:, 0], ce, seconds, train_s)

    def apply(self, model, test: TestImages, budget: float) -> Threatened:
        from xrlib.eval.predict import predict

        images = np.asarray(test.images, np.float32)
        res = self.attack(model, images, float(budget))
        dev = next(iter(model.parameters()), torch.empty(0)).device
        masks = warp_mask(torch.as_tensor(np.asarray(test.masks, np.float32))[:, None],
                          torch.as_tensor(res.disp))[:, 0].numpy().astype(test.masks.dtype)
        prob, _ = predict(model, (res.adv, masks), self.batch_size, dev)
        extra = field_scores(res.adv, images, res.disp, self.pixel_mm)
        extra.insert(0, "method", self.method)
        extra.insert(0, "variant", self.variant)
        extra["ce_mask"] = res.ce
        extra["seconds_per_image"] = res.seconds
        extra["train_seconds"] = res.train_seconds
        extra["dice_unwarped"] = [dice(p, t) for p, t in zip(prob, test.masks)]
        extra["dice_right"], extra["dice_left"] = clavicle_dice(prob, masks)
        extra["dice_right_unwarped"], extra["dice_left_unwarped"] = clavicle_dice(prob, np.asarray(test.masks))
        self.last[float(budget)] = res  # for figures: the fields of the latest call at this budget
        return Threatened(res.adv, masks, test.rows, same_view=np.ones(len(images), bool), extra=extra)
