"""The paper's baseline: TorchXRayVision's ChestX-Det PSPNet, used only when it is available.

The paper (000) evaluates TorchXRayVision's chest segmentation model (a PSPNet trained on
ChestX-Det) on the same images: radiographs resized to 512 × 512 and scaled to [−1024, 1024] "as in
their pipeline"; the first two of its 14 output channels are the left and right clavicles and are
combined into one clavicle prediction (here: the pixel-wise maximum of the two sigmoids).

Availability
    ``torchxrayvision`` is an optional dependency and its weights are never downloaded by xrlib.
    :func:`txrv_status` checks, without importing anything that could start a download, that the
    package is importable (``importlib.util.find_spec``) and that the weights file exists at
    :func:`txrv_weights_path` — ``$XRLIB_TXRV_WEIGHTS`` if set, else TorchXRayVision's own cache
    path ``~/.torchxrayvision/models_data/pspnet_chestxray_best_model_4.pth``. :class:`TxrvBaseline`
    builds the bare ``pspnet`` network from the package and loads that file itself, so it never
    reaches TorchXRayVision's download code either.

Pre/post-processing are pure NumPy functions (:func:`txrv_preprocess`, :func:`txrv_postprocess`),
tested without the package.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xrlib.data.preprocess import resize_bilinear

#: Output channels of TorchXRayVision's ChestX-Det PSPNet, in its order (``PSPNet.targets``).
TXRV_TARGETS = (
    "Left Clavicle", "Right Clavicle", "Left Scapula", "Right Scapula", "Left Lung", "Right Lung",
    "Left Hilus Pulmonis", "Right Hilus Pulmonis", "Heart", "Aorta", "Facies Diaphragmatica",
    "Mediastinum", "Weasand", "Spine",
)
#: Indices of the left and right clavicle channels (the paper: "the first two classes").
CLAVICLE_CHANNELS = (TXRV_TARGETS.index("Left Clavicle"), TXRV_TARGETS.index("Right Clavicle"))
#: Input side of the PSPNet and its intensity range.
TXRV_SIZE = 512
TXRV_RANGE = (-1024.0, 1024.0)
#: TorchXRayVision's weights file name and default cache folder.
TXRV_WEIGHTS_NAME = "pspnet_chestxray_best_model_4.pth"
TXRV_WEIGHTS_ENV = "XRLIB_TXRV_WEIGHTS"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def txrv_weights_path(path: str | Path | None = None) -> Path:
    """Where the PSPNet weights are expected: ``path``, else ``$XRLIB_TXRV_WEIGHTS``, else
    ``~/.torchxrayvision/models_data/pspnet_chestxray_best_model_4.pth``."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(TXRV_WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.torchxrayvision/models_data").expanduser() / TXRV_WEIGHTS_NAME


def txrv_status(weights: str | Path | None = None) -> tuple[bool, str]:
    """``(available, reason)`` for the baseline; imports nothing and downloads nothing."""
    if importlib.util.find_spec("torchxrayvision") is None:
        return False, "torchxrayvision not installed (pip install torchxrayvision); baseline skipped"
    path = txrv_weights_path(weights)
    if not path.is_file():
        return False, (f"TorchXRayVision PSPNet weights not found at {path}; no download attempted "
                       f"(place the file there or set {TXRV_WEIGHTS_ENV})")
    return True, f"torchxrayvision installed, weights at {path}"


def txrv_preprocess(img01: np.ndarray) -> np.ndarray:
    """An ``S × S`` image in [0, 1] → the PSPNet input ``(1, 512, 512)`` float32 in [−1024, 1024]
    (bilinear resize, then ``2048 · x − 1024``; values outside [0, 1] are clipped first)."""
    img = np.asarray(img01, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {img.shape}")
    x = np.clip(resize_bilinear(np.clip(img, 0.0, 1.0), (TXRV_SIZE, TXRV_SIZE)), 0.0, 1.0)
    lo, hi = TXRV_RANGE
    return (x * (hi - lo) + lo).astype(np.float32)[None]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))).astype(np.float32)


def txrv_postprocess(logits: np.ndarray, target_size: int, clavicle_channels: Sequence[int] = CLAVICLE_CHANNELS) -> np.ndarray:
    """PSPNet logits ``(C, H, W)`` → clavicle probability ``(target_size, target_size)`` in [0, 1]:
    the pixel-wise maximum of the sigmoids of ``clavicle_channels``, resized bilinearly."""
    z = np.asarray(logits, dtype=np.float32)
    if z.ndim != 3:
        raise ValueError(f"expected logits of shape (C, H, W), got {z.shape}")
    if not clavicle_channels or any(not 0 <= int(c) < z.shape[0] for c in clavicle_channels):
        raise ValueError(f"clavicle channels {tuple(clavicle_channels)} out of range for {z.shape[0]} channels")
    prob = _sigmoid(z[list(clavicle_channels)]).max(axis=0)
    return np.clip(resize_bilinear(prob, (int(target_size), int(target_size))), 0.0, 1.0)


try:
    import torch as _torch

    _Module = _torch.nn.Module
except ImportError:  # pragma: no cover
    _Module = object


class TxrvBaseline(_Module):
    """TorchXRayVision's PSPNet with the U-Nets' call convention: ``(B, 1, S, S)`` in [0, 1] →
    clavicle logits ``(B, 1, S, S)`` (``logit(txrv_postprocess(...))``, so ``> 0`` ⇔ p > 0.5).

    Raises ``RuntimeError`` with :func:`txrv_status`'s reason when the baseline is unavailable.
    The network is rebuilt from ``torchxrayvision``'s ``pspnet`` module and the weights file is
    loaded directly (mirroring ``PSPNet.forward``: grey → 3 channels, 512², ``(x + 1024) / 2048``,
    ImageNet normalisation), so TorchXRayVision's downloader is never called.
    """

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        ok, reason = txrv_status(weights)
        if not ok:
            raise RuntimeError(reason)
        import torch
        from torchxrayvision.baseline_models.chestx_det.ptsemseg.pspnet import pspnet

        net = pspnet(len(TXRV_TARGETS))
        state = torch.load(txrv_weights_path(weights), map_location="cpu")
        state = {(k.removeprefix("module.")): v for k, v in state.items()}
        net.load_state_dict(state)
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x):
        import torch

        size = x.shape[-1]
        outs = []
        for img in x.detach().cpu().numpy()[:, 0]:
            inp = torch.from_numpy(txrv_preprocess(img))[None].to(self.mean.device)  # (1, 1, 512, 512)
            inp = ((inp.repeat(1, 3, 1, 1) - TXRV_RANGE[0]) / (TXRV_RANGE[1] - TXRV_RANGE[0]) - self.mean) / self.std
            with torch.no_grad():
                logits = self.net(inp)[0].cpu().numpy()
            outs.append(txrv_postprocess(logits, size))
        p = torch.from_numpy(np.stack(outs)[:, None]).clamp(1e-6, 1 - 1e-6)
        return torch.log(p / (1 - p)).to(x.device)
