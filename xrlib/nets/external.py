"""A user's own segmentation network as a victim of the book's threats.

The book's threats hand a victim a batch of radiographs ``(B, 1, S, S)`` with intensities in
[0, 1] and read back clavicle *logits* ``(B, 1, S, S)`` (see :mod:`xrlib.nets.unet`). Another
network differs in input size, channels, intensity normalisation, output kind and which output
channels hold the clavicles. :class:`ExternalModel` wraps it so that it speaks the book's
convention, with every step differentiable, so that gradient attacks run in the *book's* image
space and reach the network through the resize:

1. resize ``S × S`` → the model's ``H × W`` (bilinear, ``align_corners=False``, antialias off so the
   map stays a fixed linear operator),
2. repeat the grey channel to ``in_channels``, then normalise: ``unit`` keeps [0, 1],
   ``symmetric`` maps to [−1, 1], ``imagenet`` subtracts the ImageNet mean and divides by its std
   (per channel), or an explicit ``mean``/``std``,
3. run the network; take the ``clavicle_channels`` of its output (their union: the maximum
   logit, or the maximum probability),
4. probabilities are turned into logits (clamped at ``1e-6`` from 0 and 1),
5. resize the logits back to ``S × S`` (bilinear).

:func:`load_network` reads a SPEC: a ``torch.export`` program (``.pt2``), a TorchScript file (any
other existing file), or a ``module:function`` entry point that returns a ``torch.nn.Module``.
:func:`check_network` runs it once and raises :class:`~xrlib.core.errors.InputError` for an
output of the wrong shape, channel count or range; :func:`probe_gradients` says whether input
gradients are finite and non-zero (if not, only gradient-free threats apply to it).
"""

from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from xrlib.core.errors import InputError

__all__ = ["ExternalModel", "ModelDescription", "check_network", "load_description", "load_network",
           "probe_gradients"]

#: ImageNet channel statistics (torchvision's documented normalisation), for ``normalisation: imagenet``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALISATIONS = ("unit", "symmetric", "imagenet", "custom")
OUTPUTS = ("logits", "probabilities")
_EPS = 1e-6


@dataclass(frozen=True)
class ModelDescription:
    """How a network reads and writes images. The defaults are the book's U-Nets'.

    Attributes:
        input_size: model input side(s) in pixels, ``(H, W)``; ``None``: the book's image size.
        in_channels: input channels; the grey radiograph is repeated into each.
        normalisation: ``unit`` ([0, 1]), ``symmetric`` ([−1, 1]), ``imagenet`` or ``custom``
            (``mean``/``std`` per channel, applied to the [0, 1] image).
        mean, std: per-channel statistics for ``custom``.
        output: ``logits`` or ``probabilities`` (sigmoid or softmax outputs in [0, 1]).
        clavicle_channels: output channels that hold clavicle (left/right): their union is the mask.
        static_batch: the program accepts only its export batch size; images are run one by one.
    """

    input_size: tuple[int, int] | None = None
    in_channels: int = 1
    normalisation: str = "unit"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    output: str = "logits"
    clavicle_channels: tuple[int, ...] = (0,)
    static_batch: bool = False
    source: str = field(default="defaults", compare=False)

    def __post_init__(self):
        src = self.source
        if self.input_size is not None:
            size = tuple(int(v) for v in self.input_size)
            if len(size) != 2 or min(size) < 8:
                raise InputError(src, f"input_size must be one or two sides of at least 8 px, got {self.input_size!r}")
            object.__setattr__(self, "input_size", size)
        if int(self.in_channels) < 1:
            raise InputError(src, f"in_channels must be a positive integer, got {self.in_channels!r}")
        if self.normalisation not in NORMALISATIONS:
            raise InputError(src, f"normalisation must be one of {', '.join(NORMALISATIONS)}, got {self.normalisation!r}")
        if self.normalisation == "custom":
            if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
                raise InputError(src, f"normalisation custom needs mean and std with {self.in_channels} value(s) each")
            if min(self.std) <= 0:
                raise InputError(src, "std values must be positive")
        if self.normalisation == "imagenet" and self.in_channels != 3:
            raise InputError(src, f"normalisation imagenet needs in_channels 3, got {self.in_channels}")
        if self.output not in OUTPUTS:
            raise InputError(src, f"output must be logits or probabilities, got {self.output!r}")
        chans = tuple(int(c) for c in self.clavicle_channels)
        if not chans or min(chans) < 0:
            raise InputError(src, f"clavicle_channels must be non-negative channel indices, got {self.clavicle_channels!r}")
        object.__setattr__(self, "clavicle_channels", chans)

    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` tensors of shape ``(1, C, 1, 1)`` applied after the grey repeat."""
        c = int(self.in_channels)
        if self.normalisation == "unit":
            mean, std = (0.0,) * c, (1.0,) * c
        elif self.normalisation == "symmetric":
            mean, std = (0.5,) * c, (0.5,) * c
        elif self.normalisation == "imagenet":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean, std = self.mean, self.std
        return (torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1),
                torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))


def load_description(path: str | Path | None = None, **overrides) -> ModelDescription:
    """A :class:`ModelDescription` from a YAML file (keys as its attributes) and flag ``overrides``
    (``None`` values are ignored). ``input_size`` may be one number (a square) or two."""
    import yaml

    values: dict = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise InputError(p, "model description not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InputError(p, f"not a readable YAML file ({type(exc).__name__})") from None
        if not isinstance(loaded, dict):
            raise InputError(p, "must be a mapping of keys to values")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(ModelDescription)} - {"source"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(source, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    size = values.get("input_size")
    if isinstance(size, (int, float)):
        values["input_size"] = (int(size), int(size))
    for key in ("mean", "std", "clavicle_channels"):
        if key in values and isinstance(values[key], (int, float)):
            values[key] = (values[key],)
        if key in values:
            values[key] = tuple(values[key])
    return ModelDescription(**values, source=source)


def load_network(spec: str) -> torch.nn.Module:
    """The network a SPEC names, in eval mode on the CPU.

    * ``path.pt2``: a :func:`torch.export.save` program (``torch.export.load(...).module()``);
    * another existing file: a TorchScript module (``torch.jit.load``);
    * ``package.module:function``: the function is called without arguments and must return a
      ``torch.nn.Module``.
    """
    flag = "--model"
    path = Path(spec)
    if path.suffix == ".pt2" or path.is_file():
        if not path.is_file():
            raise InputError(flag, f"{spec}: file not found")
        try:
            if path.suffix == ".pt2":
                net = torch.export.load(str(path)).module()
            else:
                with warnings.catch_warnings():  # TorchScript's deprecation notice is not the user's concern here
                    warnings.simplefilter("ignore", FutureWarning)
                    net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # a dependency's error, one line for the user
            kind = "torch.export program" if path.suffix == ".pt2" else "TorchScript file"
            raise InputError(flag, f"{spec}: not a loadable {kind} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    elif ":" in spec:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise InputError(flag, f"{spec}: expected module:function")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InputError(flag, f"{spec}: cannot import module {module_name!r} ({exc})") from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise InputError(flag, f"{spec}: {module_name} has no callable {attr!r}")
        net = factory()
        if not isinstance(net, torch.nn.Module):
            raise InputError(flag, f"{spec}: returned {type(net).__name__}, not a torch.nn.Module")
    else:
        raise InputError(flag, f"{spec}: not a file and not a module:function entry point")
    if hasattr(net, "eval") and not isinstance(net, torch.fx.GraphModule):
        net.eval()
    return net


class ExternalModel(torch.nn.Module):
    """A network in the book's convention: ``(B, 1, S, S)`` in [0, 1] → clavicle logits ``(B, 1, S, S)``.

    ``image_size`` is the book's side S (used when the description has no ``input_size``).
    """

    def __init__(self, net: torch.nn.Module, description: ModelDescription, image_size: int):
        super().__init__()
        self.net = net
        self.description = description
        self.image_size = int(image_size)
        self.input_size = description.input_size or (self.image_size, self.image_size)
        mean, std = description.channel_stats()
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def train(self, mode: bool = True) -> "ExternalModel":
        """Set this wrapper's flag only: the wrapped network stays as loaded (eval mode), since the card only
        evaluates it, and ``torch.export`` programs refuse a mode switch."""
        self.training = bool(mode)
        return self

    def to_model_input(self, x: torch.Tensor) -> torch.Tensor:
        """Book images ``(B, 1, S, S)`` → the network's input ``(B, C, H, W)``, differentiably."""
        if tuple(x.shape[-2:]) != tuple(self.input_size):
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=False)
        x = x.expand(-1, self.description.in_channels, -1, -1)
        return (x - self.mean.to(x)) / self.std.to(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.description.static_batch and x.shape[0] != 1:
            return torch.cat([self._run_one(x[i:i + 1]) for i in range(x.shape[0])])
        return self._run_one(x)

    def _run_one(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return out

    def clavicle_logits(self, out: torch.Tensor) -> torch.Tensor:
        """The network's raw output ``(B, K, H, W)`` → one channel of clavicle logits ``(B, 1, H, W)``."""
        chans = list(self.description.clavicle_channels)
        sel = out[:, chans]
        sel = sel.amax(dim=1, keepdim=True) if len(chans) > 1 else sel
        if self.description.output == "probabilities":
            p = sel.clamp(_EPS, 1.0 - _EPS)
            sel = torch.log(p) - torch.log1p(-p)
        return sel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._run(self.to_model_input(x))
        logits = self.clavicle_logits(out)
        if tuple(logits.shape[-2:]) != (self.image_size, self.image_size):
            logits = F.interpolate(logits, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return logits


def check_network(model: ExternalModel, spec: str = "--model") -> None:
    """Run ``model`` on two book-sized images and raise :class:`InputError` (naming ``spec``) when its
    raw output is not ``(B, K, H, W)`` with the clavicle channels present, not finite, or outside
    [0, 1] for a probability output. A static-batch program that rejects a batch of two is retried
    image by image (the description's ``static_batch`` is then set)."""
    d = model.description
    x = torch.linspace(0.0, 1.0, 2 * model.image_size ** 2).view(2, 1, model.image_size, model.image_size)
    inp = model.to_model_input(x)
    try:
        with torch.no_grad():
            out = model._run(inp)
    except Exception as exc:
        if d.static_batch:
            raise InputError(spec, f"the network failed on input {tuple(inp.shape[1:])} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
        model.description = _replace(d, static_batch=True)
        return check_network(model, spec)
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(spec, f"output must be (batch, channels, height, width), got {shape}")
    if out.shape[1] <= max(d.clavicle_channels):
        raise InputError(spec, f"output has {out.shape[1]} channel(s) but clavicle_channels asks for {list(d.clavicle_channels)}")
    if not torch.isfinite(out).all():
        raise InputError(spec, "output holds NaN or infinite values")
    if d.output == "probabilities" and (out.min() < 0 or out.max() > 1):
        raise InputError(spec, f"output is declared probabilities but spans [{out.min():.3g}, {out.max():.3g}]; "
                               "use output: logits")


def _replace(d: ModelDescription, **changes) -> ModelDescription:
    from dataclasses import replace

    return replace(d, **changes)


def probe_gradients(model: torch.nn.Module, image_size: int, seed: int = 0) -> tuple[bool, str]:
    """``(differentiable, reason)``: whether the input gradient of the summed clavicle logits through
    ``model`` is finite and non-zero on a seeded random image (book convention ``(1, 1, S, S)``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, image_size, image_size, generator=g).requires_grad_(True)
    try:
        model(x).sum().backward()
    except RuntimeError as exc:
        return False, f"no input gradient ({str(exc).splitlines()[0][:120]})"
    grad = x.grad
    if grad is None:
        return False, "no input gradient (the graph does not reach the input)"
    if not torch.isfinite(grad).all():
        return False, "input gradients are not finite"
    norm = float(grad.abs().sum())
    if norm == 0.0 or math.isnan(norm):
        return False, "input gradients are zero (masked or quantised input path)"
    return True, "finite, non-zero input gradients"

