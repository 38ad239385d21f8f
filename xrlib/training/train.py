"""Training of the study's U-Nets: seeded, checkpointed, resumable and cached (paper 000).

A model is described by a :class:`TrainConfig`. :func:`train_model` trains it on the union of the
``train`` splits of its ``train_sets`` (named sets of :func:`xrlib.data.datasets.select`), validates on
the union of their ``val`` splits after every epoch and stops early when the validation Dice has
not improved for ``patience`` epochs (paper: Adam, lr 0.01, patience 30).

Validation Dice
    Per image, ``2|P ∩ G| / (|P| + |G|)`` with ``P = sigmoid(logits) > 0.5``; an image whose
    prediction and ground truth are both empty scores 1. The epoch's value is the mean over the
    validation images. The *best* epoch is the first one reaching the highest value.

Output folder ``<out_root>/<safe name>-<hash12>/``
    ``best.pt`` (weights of the best epoch), ``last.pt`` (weights, optimizer, epoch, history,
    early-stopping state and RNG states, rewritten after every epoch), ``history.csv`` and, once
    finished, ``result.json`` with ``complete: true``. Every file is written atomically.
    The hash (:meth:`TrainConfig.config_hash`) covers the configuration, the dataset build hash
    (``<datasets>/build.json``) and :data:`TRAIN_VERSION`.

Caching and resuming
    A finished folder is returned as is (nothing is trained or rewritten). A folder with
    ``last.pt`` but no finished ``result.json`` (an interrupted run) continues after the last
    completed epoch; because shuffling is seeded per epoch and the RNG states are restored, the
    resumed run ends with the same numbers as an uninterrupted one (same machine and device).

Data
    The selected images are read once through :class:`xrlib.data.datasets.ShardDataset` (shard by
    shard) and kept in memory; batches come from a ``DataLoader`` whose shuffling generator is
    seeded with ``(seed, epoch)``. No augmentation is applied: the paper reports none, and the
    robustness question is precisely whether rotated *training data* helps, so ``augment`` must
    stay ``False`` (it exists only to make that choice explicit in the hash).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.core.atomic import atomic_write, write_text_atomic
from xrlib.core.errors import InputError
from xrlib.core.runs import device_description, resolve_device

#: Bumped whenever this module changes how models are trained, so cached models are retrained.
TRAIN_VERSION = 1
#: Sets a model may be trained on (``Syn_test`` is for testing only).
TRAIN_SETS = ("Real", "Syn_cen", "Syn_all")
#: The three models of the study and their training sets.
STUDY_MODELS = {
    "U-Net(Real)": ["Real"],
    "U-Net(Real+Syn_cen)": ["Real", "Syn_cen"],
    "U-Net(Real+Syn_all)": ["Real", "Syn_all"],
}
#: Depth, loss and batch size of the study models when the profile does not say: the best
#: configuration of the paper's ablation (Table 3: depth 5, Dice loss, batch 32; the batch size
#: comes from the profile's ``train.batch_size``).
STUDY_DEPTH = 5
STUDY_LOSS = "dice"
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_dice", "seconds", "images_per_s", "lr"]


@dataclass
class TrainConfig:
    """Everything that determines a trained model (see the module docstring).

    Attributes:
        name: model name, e.g. ``"U-Net(Real)"`` (the folder uses a filesystem-safe form).
        train_sets: named sets whose ``train`` splits are the training images and whose ``val``
            splits are the validation images (``Real``, ``Syn_cen``, ``Syn_all``).
        depth, base_channels: U-Net size (:func:`xrlib.nets.unet.build_unet`).
        loss: ``"dice"`` or ``"dice_bce"`` (:func:`xrlib.nets.unet.make_loss`).
        lr, batch_size, epochs, patience: Adam learning rate, batch size, maximum epochs and
            early-stopping patience (epochs without a validation-Dice improvement).
        seed: seeds weights initialisation and shuffling.
        num_workers: DataLoader workers (does not change the numbers; not hashed).
        augment: must be ``False`` (no augmentation; see the module docstring).
        cen_alphas: the α values of ``Syn_cen``.
    """

    name: str
    train_sets: list = field(default_factory=lambda: ["Real"])
    depth: int = 4
    base_channels: int = 16
    loss: str = "dice"
    lr: float = 0.01
    batch_size: int = 16
    epochs: int = 200
    patience: int = 30
    seed: int = 0
    num_workers: int = 0
    augment: bool = False
    cen_alphas: tuple = (-2.0, 0.0, 2.0)

    def validate(self) -> TrainConfig:
        """Check the values; raises ``ValueError`` naming the bad field."""
        from xrlib.nets.unet import DEPTHS, LOSSES

        if not self.train_sets or any(s not in TRAIN_SETS for s in self.train_sets):
            raise ValueError(f"{self.name}: train_sets must be a non-empty list of {TRAIN_SETS}, got {self.train_sets!r}")
        if self.depth not in DEPTHS:
            raise ValueError(f"{self.name}: U-Net depth must be 3, 4 or 5, got {self.depth!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"{self.name}: loss must be one of {LOSSES}, got {self.loss!r}")
        for key, minimum in (("batch_size", 1), ("epochs", 1), ("patience", 1), ("base_channels", 1), ("num_workers", 0)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{self.name}: {key} must be an integer ≥ {minimum}, got {v!r}")
        if not (float(self.lr) >= 0):
            raise ValueError(f"{self.name}: lr must be ≥ 0, got {self.lr!r}")
        if self.augment:
            raise ValueError(f"{self.name}: augmentation is not implemented (augment must be False)")
        return self

    def as_dict(self) -> dict:
        d = asdict(self)
        d["train_sets"] = list(d["train_sets"])
        d["cen_alphas"] = [float(a) for a in d["cen_alphas"]]
        return d

    def config_hash(self, datasets_dir: str | Path | None = None) -> str:
        """SHA-256 (hex) of the configuration (less ``num_workers``), the dataset build hash read
        from ``<datasets_dir>/build.json`` and :data:`TRAIN_VERSION`."""
        import hashlib

        d = self.as_dict()
        d.pop("num_workers")
        build = _build_hash(datasets_dir) if datasets_dir is not None else None
        text = json.dumps({"config": d, "datasets": build, "version": TRAIN_VERSION}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def folder_name(self, datasets_dir: str | Path | None = None) -> str:
        """``<safe name>-<first 12 hex digits of the hash>``."""
        return f"{safe_name(self.name)}-{self.config_hash(datasets_dir)[:12]}"


def safe_name(name: str) -> str:
    """A filesystem-safe form of a model name: ``U-Net(Real+Syn_cen)`` → ``U-Net_Real_Syn_cen``."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_")
    return s or "model"


def _build_hash(datasets_dir: str | Path) -> str:
    path = Path(datasets_dir) / "build.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(path, "no readable dataset build record; build the datasets first (xrlib dataset --profile NAME)") from None
    if info.get("complete") is not True or "hash" not in info:
        raise InputError(path, "the dataset build is incomplete; rerun the dataset stage")
    return str(info["hash"])


@dataclass
class TrainResult:
    """Summary of a trained model (``history``: one row per epoch, columns :data:`HISTORY_COLUMNS`)."""

    folder: Path
    name: str
    config: dict
    best_epoch: int
    best_val_dice: float
    epochs_run: int
    stopped_early: bool
    train_images: int
    val_images: int
    seconds: float
    images_per_s: float
    device: str
    history: pd.DataFrame

    @property
    def best_path(self) -> Path:
        return Path(self.folder) / "best.pt"


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def select_images(datasets_dir: str | Path, sets: Sequence[str], split: str, cen_alphas=(-2.0, 0.0, 2.0)) -> pd.DataFrame:
    """Manifest rows of the union of ``sets`` in ``split`` (an image in two sets counts once)."""
    from xrlib.data.datasets import read_manifest, select

    manifest = read_manifest(datasets_dir)
    parts = [select(manifest, s, split, cen_alphas=cen_alphas) for s in sets]
    df = pd.concat(parts) if parts else manifest.iloc[:0]
    df = df.drop_duplicates(subset=["shard", "index"]).sort_values(["shard", "index"], kind="stable")
    df.attrs["root"] = manifest.attrs.get("root")
    return df.reset_index(drop=True)


def _load_tensors(rows: pd.DataFrame, root: Path, desc: str, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and masks of ``rows`` as ``(N, 1, S, S)`` float32 / uint8 CPU tensors."""
    from tqdm.auto import tqdm

    from xrlib.data.datasets import ShardDataset

    ds = ShardDataset(rows, root=root)
    imgs, masks = [], []
    for i in tqdm(range(len(ds)), desc=f"load {desc}", unit="img", disable=not progress, leave=False):
        img, mask = ds[i]
        imgs.append(img)
        masks.append(mask.to(torch.uint8))
    return torch.stack(imgs), torch.stack(masks)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def dice_per_image(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice of ``logits > 0`` (probability > 0.5) against a 0/1 target, one value per image
    (1 where prediction and target are both empty)."""
    pred = (logits > 0).flatten(1).float()
    tgt = (target > 0.5).flatten(1).float()
    inter = (pred * tgt).sum(1)
    denom = pred.sum(1) + tgt.sum(1)
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------



def _save(obj, path: Path) -> None:
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def _rng_states() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_states(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _evaluate(model, loss_fn, imgs, masks, batch_size: int, device) -> tuple[float, float]:
    model.eval()
    total_loss, dices = 0.0, []
    with torch.no_grad():
        for s in range(0, len(imgs), batch_size):
            x = imgs[s:s + batch_size].to(device)
            y = masks[s:s + batch_size].to(device).float()
            logits = model(x)
            total_loss += float(loss_fn(logits, y)) * len(x)
            dices.append(dice_per_image(logits, y).cpu())
    return total_loss / len(imgs), float(torch.cat(dices).double().mean())


def _read_result(folder: Path) -> TrainResult | None:
    path = folder / "result.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("complete") is not True or not (folder / "best.pt").is_file() or not (folder / "history.csv").is_file():
        return None
    history = pd.read_csv(folder / "history.csv")
    keys = ("name", "config", "best_epoch", "best_val_dice", "epochs_run", "stopped_early", "train_images",
            "val_images", "seconds", "images_per_s", "device")
    return TrainResult(folder=folder, history=history, **{k: info[k] for k in keys})


def train_model(
    cfg: TrainConfig,
    datasets_dir: str | Path,
    out_root: str | Path,
    device=None,
    progress: bool = True,
    _after_epoch: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train (or resume, or just return) the model of ``cfg``; see the module docstring.

    Args:
        cfg: the model configuration.
        datasets_dir: the datasets folder (``manifest.csv``, ``build.json``, ``shards/``).
        out_root: where model folders are created (``runs/<profile>/models``).
        device: torch device (default CUDA when available, else CPU).
        progress: show a tqdm bar over epochs (with loss, validation Dice and images/s).
        _after_epoch: test hook called as ``_after_epoch(epoch, row)`` after each epoch's
            checkpoint is written (an exception raised there simulates an interruption).

    Raises :class:`InputError` when the datasets are missing or incomplete, and ``ValueError``
    for a bad configuration or an empty training or validation selection.
    """
    from tqdm.auto import tqdm

    from xrlib.nets.unet import build_unet, make_loss

    cfg.validate()
    datasets_dir = Path(datasets_dir)
    digest = cfg.config_hash(datasets_dir)
    folder = Path(out_root) / f"{safe_name(cfg.name)}-{digest[:12]}"
    done = _read_result(folder)
    if done is not None:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    dev_text = device_description(dev)

    train_rows = select_images(datasets_dir, cfg.train_sets, "train", cfg.cen_alphas)
    val_rows = select_images(datasets_dir, cfg.train_sets, "val", cfg.cen_alphas)
    if len(train_rows) == 0:
        raise ValueError(f"{cfg.name}: no training images in the train split of {cfg.train_sets} ({datasets_dir})")
    if len(val_rows) == 0:
        raise ValueError(f"{cfg.name}: no validation images in the val split of {cfg.train_sets} ({datasets_dir}); "
                         "early stopping needs a validation split (set pools.*.val ≥ 1 in the profile)")
    x_tr, y_tr = _load_tensors(train_rows, datasets_dir, "train", progress)
    x_va, y_va = _load_tensors(val_rows, datasets_dir, "val", progress)

    prev_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if dev.type == "cuda":  # deterministic cuBLAS (only effective before cuBLAS is first used)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    prev_bench = torch.backends.cudnn.benchmark
    bar = None
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        _seed_everything(cfg.seed)
        model = build_unet(cfg.depth, cfg.base_channels).to(dev)
        optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg.lr))
        loss_fn = make_loss(cfg.loss)
        history: list[dict] = []
        start, best_epoch, best_dice, stopped = 1, 0, -1.0, False
        last_path = folder / "last.pt"
        if last_path.is_file():
            ck = torch.load(last_path, map_location=dev, weights_only=False)
            if ck.get("hash") != digest:
                raise InputError(last_path, "checkpoint belongs to another configuration; delete the folder")
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            history, best_epoch, best_dice, stopped = ck["history"], ck["best_epoch"], ck["best_val_dice"], ck["stopped"]
            start = ck["epoch"] + 1
            _set_rng_states(ck["rng"])
            if progress:
                print(f"{cfg.name}: resuming after epoch {ck['epoch']} from {last_path}")
        if progress:
            print(f"{cfg.name}: {len(x_tr)} train / {len(x_va)} val images, device {dev_text}, folder {folder}")

        bar = tqdm(range(start, cfg.epochs + 1), desc=cfg.name, unit="epoch", disable=not progress,
                   initial=start - 1, total=cfg.epochs)
        for epoch in bar if not stopped else []:
            t0 = time.perf_counter()
            model.train()
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, epoch]).generate_state(1)[0]))
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_tr, y_tr), batch_size=cfg.batch_size,
                                                 shuffle=True, generator=gen, num_workers=cfg.num_workers)
            total, seen = 0.0, 0
            for x, y in loader:
                x, y = x.to(dev), y.to(dev).float()
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(x)
                seen += len(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t_train = time.perf_counter() - t0
            val_loss, val_dice = _evaluate(model, loss_fn, x_va, y_va, cfg.batch_size, dev)
            row = {"epoch": epoch, "train_loss": total / seen, "val_loss": val_loss, "val_dice": val_dice,
                   "seconds": time.perf_counter() - t0, "images_per_s": seen / max(t_train, 1e-9), "lr": float(cfg.lr)}
            history.append(row)
            if val_dice > best_dice:
                best_dice, best_epoch = val_dice, epoch
                _save({"model": model.state_dict(), "config": cfg.as_dict(), "epoch": epoch, "val_dice": val_dice,
                       "hash": digest}, folder / "best.pt")
            stopped = epoch - best_epoch >= cfg.patience
            _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history,
                   "best_epoch": best_epoch, "best_val_dice": best_dice, "stopped": stopped, "rng": _rng_states(),
                   "hash": digest, "config": cfg.as_dict()}, last_path)
            write_text_atomic(folder / "history.csv", pd.DataFrame(history, columns=HISTORY_COLUMNS).to_csv(index=False))
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_dice=f"{val_dice:.4f}", img_s=f"{row['images_per_s']:.1f}")
            if _after_epoch is not None:
                _after_epoch(epoch, row)
            if stopped:
                if progress:
                    print(f"{cfg.name}: early stop at epoch {epoch} (best {best_epoch}, val Dice {best_dice:.4f})")
                break
    finally:
        if bar is not None:
            bar.close()
        torch.use_deterministic_algorithms(prev_det[0], warn_only=prev_det[1])
        torch.backends.cudnn.benchmark = prev_bench

    hist = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    write_text_atomic(folder / "history.csv", hist.to_csv(index=False))
    train_seconds = float((len(x_tr) / hist["images_per_s"]).sum()) if len(hist) else 0.0
    info = {
        "complete": True, "name": cfg.name, "config": cfg.as_dict(), "hash": digest, "version": TRAIN_VERSION,
        "best_epoch": int(best_epoch), "best_val_dice": float(best_dice), "epochs_run": len(hist),
        "stopped_early": bool(stopped), "train_images": len(x_tr), "val_images": len(x_va),
        "seconds": float(hist["seconds"].sum()), "images_per_s": float(len(x_tr) * len(hist) / train_seconds) if train_seconds else 0.0,
        "device": dev_text, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_text_atomic(folder / "result.json", json.dumps(info, indent=1))
    return _read_result(folder)


def load_best(result: TrainResult | str | Path, device=None) -> torch.nn.Module:
    """The best-epoch model of a :class:`TrainResult` (or a model folder), in eval mode."""
    from xrlib.nets.unet import build_unet

    folder = Path(result.folder if isinstance(result, TrainResult) else result)
    path = folder / "best.pt"
    if not path.is_file():
        raise InputError(path, "no best checkpoint; train the model first")
    ck = torch.load(path, map_location=resolve_device(device), weights_only=False)
    c = ck["config"]
    model = build_unet(int(c["depth"]), int(c["base_channels"]))
    model.load_state_dict(ck["model"])
    return model.to(resolve_device(device)).eval()


# --------------------------------------------------------------------------------------------
# Configurations of the study
# --------------------------------------------------------------------------------------------


def _train_block(profile_cfg: dict) -> dict:
    train = profile_cfg.get("train")
    if not isinstance(train, dict):
        raise InputError(profile_cfg.get("path", "<profile>"), "the profile has no train: block (epochs, batch_size, patience, lr)")
    missing = [k for k in ("epochs", "batch_size", "patience", "lr") if k not in train]
    if missing:
        raise InputError(profile_cfg.get("path", "<profile>"), f"train: lacks {missing}")
    return train


def study_configs(profile_cfg: dict) -> list[TrainConfig]:
    """The three models of the study: ``U-Net(Real)``, ``U-Net(Real+Syn_cen)``, ``U-Net(Real+Syn_all)``.

    Epochs, batch size, patience and lr come from the profile's ``train:`` block; depth and loss
    from ``train.depth`` / ``train.loss`` when present, else the paper's ablation winner
    (:data:`STUDY_DEPTH` = 5, Dice loss), which the paper used for all its U-Nets. All three use the
    profile seed, so they differ only in their training sets.
    """
    t = _train_block(profile_cfg)
    cen = tuple(float(a) for a in (profile_cfg.get("synthetic", {}) or {}).get("cen_alphas", (-2.0, 0.0, 2.0)))
    return [TrainConfig(name=name, train_sets=list(sets), depth=int(t.get("depth", STUDY_DEPTH)),
                        base_channels=int(t.get("base_channels", 16)), loss=str(t.get("loss", STUDY_LOSS)),
                        lr=float(t["lr"]), batch_size=int(t["batch_size"]), epochs=int(t["epochs"]),
                        patience=int(t["patience"]), seed=int(profile_cfg.get("seed", 0)), cen_alphas=cen)
            for name, sets in STUDY_MODELS.items()]


def ablation_grid() -> list[tuple[int, str, int]]:
    """``(depth, loss, batch)`` of experiments 1–18 in the order of the paper's Table 3
    (depth 3/4/5 outermost, then Dice/DiceBCE, then batch 8/16/32)."""
    return [(d, loss, b) for d in (3, 4, 5) for loss in ("dice", "dice_bce") for b in (8, 16, 32)]


def ablation_configs(profile_cfg: dict, subset=None) -> list[TrainConfig]:
    """The 18 U-Net(Real) configurations of Table 3, named ``Exp01-d3-dice-b8`` … ``Exp18-d5-dice_bce-b32``.

    Epochs, patience, lr and seed come from the profile (its batch size is replaced by the grid's).
    ``subset``: ``None`` for all 18; an ``int`` n for n experiments spread evenly over the table
    (``numpy.linspace`` over the experiment numbers, always including the first and last when
    n ≥ 2); or a list of experiment numbers (1-based, as in the table).
    """
    t = _train_block(profile_cfg)
    grid = ablation_grid()
    if subset is None:
        numbers = list(range(1, len(grid) + 1))
    elif isinstance(subset, (int, np.integer)) and not isinstance(subset, bool):
        if not 1 <= subset <= len(grid):
            raise ValueError(f"ablation subset size must be between 1 and {len(grid)}, got {subset}")
        numbers = sorted({int(round(x)) for x in np.linspace(1, len(grid), int(subset))})
    else:
        numbers = [int(n) for n in subset]
        bad = [n for n in numbers if not 1 <= n <= len(grid)]
        if bad or len(set(numbers)) != len(numbers):
            raise ValueError(f"ablation experiment numbers must be distinct and in 1..{len(grid)}, got {list(subset)}")
    cen = tuple(float(a) for a in (profile_cfg.get("synthetic", {}) or {}).get("cen_alphas", (-2.0, 0.0, 2.0)))
    out = []
    for n in numbers:
        depth, loss, batch = grid[n - 1]
        out.append(TrainConfig(name=f"Exp{n:02d}-d{depth}-{loss}-b{batch}", train_sets=["Real"], depth=depth,
                               base_channels=int(t.get("base_channels", 16)), loss=loss, lr=float(t["lr"]),
                               batch_size=batch, epochs=int(t["epochs"]), patience=int(t["patience"]),
                               seed=int(profile_cfg.get("seed", 0)), cen_alphas=cen))
    return out
