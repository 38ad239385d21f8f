"""A model folder on disk: checkpoints with RNG states, the result record, the cache lookup, ``load_best``.

Folder ``<out_root>/<safe name>-<hash12>/`` (:mod:`xrlib.training.config`): ``best.pt`` (weights of
the best epoch), ``last.pt`` (weights, optimizers, epoch, history, early-stopping state, recipe
state and RNG states, rewritten after every epoch), ``history.csv`` and, once finished,
``result.json`` with ``complete: true``. Every file is written atomically
(:mod:`xrlib.core.atomic`).

Legacy adoption (:func:`cached_result`)
    A model trained before recipes and thread counts lives in the folder named by the legacy hash
    (:meth:`TrainConfig.legacy_hash`). When the folder of the current hash has no complete result
    and the configuration is the standard recipe without parameters, a complete legacy folder is
    used as the result (nothing is copied, renamed or retrained) if its ``result.json`` records

    * a CPU device ``cpu (N cores, …)`` with ``N == threads`` (torch's default thread count was
      the core count, so it trained with N threads), or
    * a CUDA device (its thread count does not change GPU results).

    Any other legacy folder (e.g. trained on 2 cores, asked for 1 thread) is not adopted: the model
    is trained in the new folder.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.core.atomic import write_csv_atomic, write_json_atomic
from xrlib.core.errors import InputError
from xrlib.core.runs import resolve_device
from xrlib.training.config import TRAIN_VERSION, TrainConfig, hashed_folder_name

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_dice", "seconds", "images_per_s", "lr"]
_RESULT_KEYS = ("name", "config", "best_epoch", "best_val_dice", "epochs_run", "stopped_early", "train_images",
                "val_images", "seconds", "images_per_s", "device")


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


def rng_states() -> dict:
    """The Python, NumPy, torch (and CUDA) global RNG states."""
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_states(st: dict) -> None:
    """Restore :func:`rng_states`."""
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def read_result(folder: str | Path) -> TrainResult | None:
    """The :class:`TrainResult` of a finished folder, else ``None``."""
    folder = Path(folder)
    try:
        info = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("complete") is not True or not (folder / "best.pt").is_file() or not (folder / "history.csv").is_file():
        return None
    return TrainResult(folder=folder, history=pd.read_csv(folder / "history.csv"), **{k: info[k] for k in _RESULT_KEYS})


def write_history(folder: Path, history: list[dict]) -> pd.DataFrame:
    """``history.csv`` of the epochs so far."""
    hist = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    write_csv_atomic(folder / "history.csv", hist)
    return hist


def write_result(folder: Path, cfg: TrainConfig, digest: str, history: list[dict], best_epoch: int, best_dice: float,
                 stopped: bool, train_images: int, val_images: int, device: str) -> TrainResult:
    """Write ``history.csv`` and the finished ``result.json``; the folder's :class:`TrainResult`."""
    hist = write_history(folder, history)
    train_seconds = float((train_images / hist["images_per_s"]).sum()) if len(hist) else 0.0
    info = {
        "complete": True, "name": cfg.name, "config": cfg.as_dict(), "hash": digest, "version": TRAIN_VERSION,
        "best_epoch": int(best_epoch), "best_val_dice": float(best_dice), "epochs_run": len(hist),
        "stopped_early": bool(stopped), "train_images": train_images, "val_images": val_images,
        "seconds": float(hist["seconds"].sum()),
        "images_per_s": float(train_images * len(hist) / train_seconds) if train_seconds else 0.0,
        "device": device, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(folder / "result.json", info)
    return read_result(folder)


def _legacy_device_matches(device: str, threads: int) -> bool:
    if str(device).startswith("cuda"):
        return True
    m = re.match(r"cpu \((\d+) cores", str(device))
    return bool(m) and int(m.group(1)) == int(threads)


def cached_result(cfg: TrainConfig, datasets_dir: str | Path, out_root: str | Path) -> TrainResult | None:
    """The finished result of ``cfg``: its own folder's, else an adopted legacy folder's (see the
    module docstring), else ``None``."""
    done = read_result(Path(out_root) / cfg.folder_name(datasets_dir))
    if done is not None:
        return done
    legacy = cfg.legacy_hash(datasets_dir)
    if legacy is None:
        return None
    old = read_result(Path(out_root) / hashed_folder_name(cfg.name, legacy))
    if old is not None and _legacy_device_matches(old.device, cfg.threads):
        return old
    return None


def load_weights(folder: str | Path, device=None) -> dict:
    """The ``best.pt`` checkpoint of a model folder (``InputError`` when there is none)."""
    path = Path(folder) / "best.pt"
    if not path.is_file():
        raise InputError(path, "no best checkpoint; train the model first")
    return torch.load(path, map_location=resolve_device(device), weights_only=False)


def load_best(result: TrainResult | str | Path, device=None) -> torch.nn.Module:
    """The best-epoch model of a :class:`TrainResult` (or a model folder), in eval mode."""
    from xrlib.nets.unet import build_unet

    ck = load_weights(result.folder if isinstance(result, TrainResult) else result, device)
    c = ck["config"]
    model = build_unet(int(c["depth"]), int(c["base_channels"]))
    model.load_state_dict(ck["model"])
    return model.to(resolve_device(device)).eval()
