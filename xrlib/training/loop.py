"""The one fit loop: seeded, checkpointed, resumable and cached training of a :class:`TrainConfig`.

:func:`train_model` trains on the union of the ``train`` splits of the configuration's
``train_sets``, validates on the union of their ``val`` splits after every epoch (every ``val_every``-th and the last, when set) and stops early
when the validation Dice has not improved for ``patience`` epochs (Adam with the configured lr,
constant or on the configuration's ``lr_schedule`` over ``epochs`` × ``ceil(train images / batch size)``
steps, :func:`xrlib.training.config.scheduled_lr`; the rate of each step follows from its index, so a resumed run
needs no scheduler state).
Defenses plug in as recipes (:mod:`xrlib.training.recipes`); the ``standard`` recipe is the plain
loop.

Validation Dice
    :func:`xrlib.nets.losses.dice_per_image` of every validation image (an image whose prediction
    and ground truth are both empty scores 1), averaged. The *best* epoch is the first one reaching
    the highest value.

Caching and resuming
    A finished folder (or an adopted legacy one, :func:`xrlib.training.checkpoint.cached_result`)
    is returned as is (nothing is trained or rewritten). A folder with ``last.pt`` but no finished
    ``result.json`` (an interrupted run) continues after the last completed epoch; because
    shuffling and the hooks' generators are seeded per epoch and batch and the RNG states are
    restored, the resumed run ends with the same numbers as an uninterrupted one (same machine,
    device and thread count; training runs with ``threads`` torch threads).

Compiled training (``cfg.compile``)
    The network's forward in the training step — the logits the loss is taken of — runs through
    ``torch.compile`` (Inductor's C++ kernels on the CPU), and so does its backward; the weights are
    kept in the channels-last memory format and Adam takes its fused step (each a few per cent per
    step on top of the compiled graph, and numbers that differ from eager ones anyway); validation,
    the recipes' hooks (attacks, second forwards) and every later prediction use the same weights
    eagerly. The compiled graph is for the shape of the first batch (static shapes: the fastest
    kernels, one compilation); a batch of another size — the last, smaller one of an epoch — runs
    eagerly (a dynamic batch dimension would still be guarded to a range of sizes by the
    convolutions, so it would compile twice anyway). Each training starts from a reset ``torch._dynamo`` state, so its
    kernels (and numbers) do not depend on what the process compiled before; Inductor's on-disk
    cache (``TORCHINDUCTOR_CACHE_DIR``, default ``/tmp/torchinductor_<user>``) makes a repeated
    compilation of the same network, batch layout and thread count take seconds instead of the
    first one's tens of seconds (``benchmarks/profile_stages.py --parts train-step --compile``). The
    compiled step rounds differently from the eager one, so a compiled configuration is its own
    model (:mod:`xrlib.training.config`). A failed compilation (e.g. no C++ compiler) raises a
    ``RuntimeError`` that names ``train.compile``.

Data
    The selected images are read once (:mod:`xrlib.training.data`), extended by the recipe's
    :meth:`~xrlib.training.recipes.Recipe.train_data` hook, and kept in memory; batches
    come from a ``DataLoader`` whose shuffling generator is seeded with ``(seed, epoch)``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from xrlib.core.atomic import save_torch_atomic
from xrlib.core.errors import InputError
from xrlib.core.runs import device_description, resolve_device
from xrlib.training.checkpoint import (
    TrainResult,
    cached_result,
    load_weights,
    rng_states,
    set_rng_states,
    write_history,
    write_result,
)
from xrlib.training.config import TrainConfig, hashed_folder_name, scheduled_lr
from xrlib.training.data import load_tensors, select_images
from xrlib.training.recipes import Recipe, StepContext, get_recipe


def _seeded_generator(*words: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(words)).generate_state(1)[0]))


def _evaluate(model, loss_fn, imgs, masks, batch_size: int, device) -> tuple[float, float]:
    from xrlib.nets.losses import dice_per_image

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


def _training_forward(model: torch.nn.Module, cfg: TrainConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward of the training step: ``model`` itself, or (``cfg.compile``) its compiled forward
    for the first batch's shape, eager for any other shape (module docstring)."""
    if not cfg.compile:
        return model
    torch._dynamo.reset()  # this training's kernels must not depend on what the process compiled before
    model.to(memory_format=torch.channels_last)  # in place; with the compiled graph ≈ 10 % faster per step
    compiled = torch.compile(model, dynamic=False)
    shapes: list[torch.Size] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not shapes:
            shapes.append(x.shape)
        if x.shape != shapes[0]:
            return model(x)  # e.g. the last, smaller batch of an epoch: not worth a second compilation
        try:
            return compiled(x.contiguous(memory_format=torch.channels_last))
        except torch._dynamo.exc.TorchDynamoException as err:
            cause = getattr(err, "inner_exception", None) or err  # e.g. Inductor's C++ compile error
            first = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()), "")
            raise RuntimeError(f"{cfg.name}: torch.compile of the training step failed ({type(cause).__name__}: {first}); "
                               "train eagerly with train.compile: false in the profile (TrainConfig.compile=False)") from None

    return forward


def _warm_start(recipe: Recipe, model: torch.nn.Module, out_root: Path, dev) -> None:
    if recipe.warm_start is None:
        return
    folder = Path(recipe.warm_start)
    folder = folder if folder.is_absolute() else Path(out_root) / folder
    model.load_state_dict(load_weights(folder, dev)["model"])


class _Determinism:
    """Seeded RNGs (MONAI ``set_determinism``), deterministic algorithms and the thread count for
    the duration of a training; the previous global settings are restored on exit.

    Deterministic mode's fill of every new tensor with NaN (a debugging aid that catches reads of
    uninitialised memory) is switched off: it does not change a result, and it costs every buffer
    a compiled step allocates an extra pass (the bench's eager training rows stay identical).
    """

    def __init__(self, seed: int, threads: int, dev: torch.device):
        self.seed, self.threads, self.dev = seed, threads, dev

    def __enter__(self):
        from monai.utils import set_determinism

        self.prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                     torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.get_num_threads(),
                     torch.utils.deterministic.fill_uninitialized_memory)
        if self.dev.type == "cuda":  # deterministic cuBLAS (only effective before cuBLAS is first used)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
        set_determinism(self.seed)  # python, numpy and torch seeds; cudnn deterministic, no benchmark
        return self

    def __exit__(self, *exc):
        det, warn, bench, cudnn_det, threads, fill = self.prev
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = bench, cudnn_det
        torch.set_num_threads(threads)
        return False


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
        cfg: the model configuration (its recipe and thread count included).
        datasets_dir: the datasets folder (``manifest.csv``, ``build.json``, ``shards/``).
        out_root: where model folders are created (``runs/<profile>/models``).
        device: torch device (default :func:`xrlib.core.runs.default_device`).
        progress: show a tqdm bar over epochs (with loss, validation Dice and images/s).
        _after_epoch: test hook called as ``_after_epoch(epoch, row)`` after each epoch's
            checkpoint is written (an exception raised there simulates an interruption).

    Raises :class:`InputError` when the datasets are missing or incomplete, and ``ValueError``
    for a bad configuration or an empty training or validation selection.
    """
    from tqdm.auto import tqdm

    from xrlib.nets.losses import make_loss
    from xrlib.nets.unet import build_unet

    cfg.validate()
    datasets_dir, out_root = Path(datasets_dir), Path(out_root)
    digest = cfg.config_hash(datasets_dir)
    done = cached_result(cfg, datasets_dir, out_root)
    if done is not None:
        return done
    folder = out_root / hashed_folder_name(cfg.name, digest)
    folder.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    dev_text = device_description(dev)
    recipe = get_recipe(cfg.recipe, cfg.recipe_params)

    train_rows = select_images(datasets_dir, cfg.train_sets, "train", cfg.cen_alphas)
    val_rows = select_images(datasets_dir, cfg.train_sets, "val", cfg.cen_alphas)
    if len(train_rows) == 0:
        raise ValueError(f"{cfg.name}: no training images in the train split of {cfg.train_sets} ({datasets_dir})")
    if len(val_rows) == 0:
        raise ValueError(f"{cfg.name}: no validation images in the val split of {cfg.train_sets} ({datasets_dir}); "
                         "early stopping needs a validation split (set pools.*.val ≥ 1 in the profile)")
    x_tr, y_tr = load_tensors(train_rows, datasets_dir, "train", progress)
    x_tr, y_tr = recipe.train_data(x_tr, y_tr, out_root)
    x_va, y_va = load_tensors(val_rows, datasets_dir, "val", progress)

    bar = None
    with _Determinism(cfg.seed, cfg.threads, dev):
        try:
            model = build_unet(cfg.depth, cfg.base_channels).to(dev)
            _warm_start(recipe, model, out_root, dev)
            forward = _training_forward(model, cfg)
            modules = {k: m.to(dev) for k, m in recipe.extra_modules(model).items()}
            own = recipe.extra_optimizers(modules)
            params = list(model.parameters()) + [p for k, m in modules.items() if k not in own for p in m.parameters()]
            # the fused Adam step (another rounding) only with the compiled step, whose numbers differ anyway
            optimizer = torch.optim.Adam(params, lr=float(cfg.lr), fused=bool(cfg.compile))
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
                for k, m in modules.items():
                    m.load_state_dict(ck["extra"][k])
                for k, o in own.items():
                    o.load_state_dict(ck["extra_optimizers"][k])
                recipe.load_state_dict(ck.get("recipe", {}))
                history, best_epoch, best_dice, stopped = ck["history"], ck["best_epoch"], ck["best_val_dice"], ck["stopped"]
                start = ck["epoch"] + 1
                set_rng_states(ck["rng"])
                if progress:
                    print(f"{cfg.name}: resuming after epoch {ck['epoch']} from {last_path}")
            if progress:
                print(f"{cfg.name}: {len(x_tr)} train / {len(x_va)} val images, device {dev_text}, "
                      f"{cfg.threads} threads, recipe {cfg.recipe}{', compiled' if cfg.compile else ''}, folder {folder}")

            per_epoch = -(-len(x_tr) // cfg.batch_size)  # the DataLoader's batches per epoch
            total_steps = cfg.epochs * per_epoch
            lr_now = float(cfg.lr)
            bar = tqdm(range(start, cfg.epochs + 1), desc=cfg.name, unit="epoch", disable=not progress,
                       initial=start - 1, total=cfg.epochs)
            for epoch in bar if not stopped else []:
                t0 = time.perf_counter()
                model.train()
                for m in modules.values():
                    m.train()
                loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_tr, y_tr), batch_size=cfg.batch_size,
                                                     shuffle=True, generator=_seeded_generator(cfg.seed, epoch),
                                                     num_workers=cfg.num_workers)
                total, seen = 0.0, 0
                for step, (x, y) in enumerate(loader):
                    ctx = StepContext(epoch, step, dev, _seeded_generator(cfg.seed, epoch, step), modules, own, loss_fn)
                    x, y = recipe.batch(x.to(dev), y.to(dev).float(), model, ctx)
                    if cfg.lr_schedule != "constant":
                        lr_now = scheduled_lr(cfg.lr, cfg.lr_schedule, (epoch - 1) * per_epoch + step, total_steps)
                        for group in optimizer.param_groups:
                            group["lr"] = lr_now
                    optimizer.zero_grad(set_to_none=True)
                    logits = forward(x)
                    loss = loss_fn(logits, y)
                    extra = recipe.extra_loss(logits, x, y, model, ctx)
                    if extra is not None:
                        loss = loss + extra
                    loss.backward()
                    optimizer.step()
                    recipe.after_step(model, x, y, ctx)
                    total += float(loss.detach()) * len(x)
                    seen += len(x)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t_train = time.perf_counter() - t0
                if epoch % cfg.val_every and epoch < cfg.epochs:  # not a validated epoch (TrainConfig.val_every)
                    continue
                val_loss, val_dice = _evaluate(model, loss_fn, x_va, y_va, cfg.batch_size, dev)
                row = {"epoch": epoch, "train_loss": total / seen, "val_loss": val_loss, "val_dice": val_dice,
                       "seconds": time.perf_counter() - t0, "images_per_s": seen / max(t_train, 1e-9), "lr": lr_now}
                history.append(row)
                if val_dice > best_dice:
                    best_dice, best_epoch = val_dice, epoch
                    best = {"model": model.state_dict(), "config": cfg.as_dict(), "epoch": epoch, "val_dice": val_dice,
                            "hash": digest}
                    if modules:
                        best["extra"] = {k: m.state_dict() for k, m in modules.items()}
                    save_torch_atomic(folder / "best.pt", best)
                stopped = epoch - best_epoch >= cfg.patience
                last = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history,
                        "best_epoch": best_epoch, "best_val_dice": best_dice, "stopped": stopped, "rng": rng_states(),
                        "hash": digest, "config": cfg.as_dict()}
                if modules or own:
                    last["extra"] = {k: m.state_dict() for k, m in modules.items()}
                    last["extra_optimizers"] = {k: o.state_dict() for k, o in own.items()}
                if recipe.state_dict():
                    last["recipe"] = recipe.state_dict()
                save_torch_atomic(last_path, last)
                write_history(folder, history)
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

    return write_result(folder, cfg, digest, history, best_epoch, best_dice, stopped, len(x_tr), len(x_va), dev_text)
