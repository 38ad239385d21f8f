"""Tests of the fit loop's recipes, cache key, legacy adoption and executor tasks (xrlib.training; CPU, seconds)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
import torch

from xrlib.training import Recipe, TrainConfig, TrainTask, register_recipe, train_all, train_model
from xrlib.training.config import hashed_folder_name

from test_train import _cfg, _numbers, _toy_datasets, train_interrupted  # noqa: F401  (the tiny task)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _toy_datasets(tmp_path_factory.mktemp("toy") / "datasets")


@register_recipe
@dataclass
class DoubleBatch(Recipe):
    """Appends the horizontally flipped batch; records the batch sizes the model saw."""

    name: ClassVar[str] = "test-double"
    seen: ClassVar[list] = []

    def batch(self, x, y, model, ctx):
        return torch.cat([x, x.flip(-1)]), torch.cat([y, y.flip(-1)])

    def extra_loss(self, logits, x, y, model, ctx):
        DoubleBatch.seen.append((len(logits), len(x)))
        return None


@register_recipe
@dataclass
class NoiseHead(Recipe):
    """Gaussian noise from the step generator, an auxiliary head on the main optimizer and a
    module with its own optimizer stepped after each step."""

    name: ClassVar[str] = "test-noise-head"
    sigma: float = 0.05

    def extra_modules(self, model):
        return {"head": torch.nn.Conv2d(1, 1, 1), "critic": torch.nn.Conv2d(1, 1, 1)}

    def extra_optimizers(self, modules):
        return {"critic": torch.optim.SGD(modules["critic"].parameters(), lr=0.1)}

    def batch(self, x, y, model, ctx):
        return (x + self.sigma * torch.randn(x.shape, generator=ctx.generator).to(x.device)).clamp(0, 1), y

    def extra_loss(self, logits, x, y, model, ctx):
        return 0.1 * ((ctx.modules["head"](torch.sigmoid(logits)) - x) ** 2).mean()

    def after_step(self, model, x, y, ctx):
        opt = ctx.optimizers["critic"]
        opt.zero_grad()
        ctx.modules["critic"](x.detach()).pow(2).mean().backward()
        opt.step()


def _weights(folder) -> dict:
    return torch.load(Path(folder) / "best.pt", weights_only=False)


def test_a_hook_that_doubles_the_batch_is_seen_by_the_loop(toy, tmp_path):
    DoubleBatch.seen.clear()
    res = train_model(_cfg(epochs=1, recipe="test-double"), toy, tmp_path, progress=False)
    assert DoubleBatch.seen == [(16, 16)] * 4  # 32 images in batches of 8, each doubled
    plain = train_model(_cfg(epochs=1), toy, tmp_path, progress=False)
    assert res.folder != plain.folder and res.config["recipe"] == "test-double"
    assert not torch.equal(_weights(res.folder)["model"]["model.0.conv.unit0.conv.weight"],
                           _weights(plain.folder)["model"]["model.0.conv.unit0.conv.weight"])


def test_a_resumed_recipe_training_equals_an_uninterrupted_one(toy, tmp_path):
    cfg = _cfg(epochs=3, recipe="test-noise-head", recipe_params={"sigma": 0.1})
    a = train_model(cfg, toy, tmp_path / "a", progress=False)

    train_interrupted(cfg, toy, tmp_path / "b")
    b = train_model(cfg, toy, tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(_numbers(a), _numbers(b))
    wa, wb = _weights(a.folder), _weights(b.folder)
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    assert set(wa["extra"]) == {"head", "critic"}
    for name in ("head", "critic"):
        assert all(torch.equal(wa["extra"][name][k], wb["extra"][name][k]) for k in wa["extra"][name])


def test_warm_start_begins_from_the_cached_weights(toy, tmp_path):
    base = train_model(_cfg(epochs=2), toy, tmp_path, progress=False)
    cfg = _cfg(epochs=1, lr=0.0, name="warm", recipe_params={"warm_start": Path(base.folder).name})
    warm = train_model(cfg, toy, tmp_path, progress=False)  # lr 0: the weights stay the warm-start ones
    wb, ww = _weights(base.folder)["model"], _weights(warm.folder)["model"]
    assert all(torch.equal(wb[k], ww[k]) for k in wb)
    assert warm.best_val_dice == pytest.approx(base.best_val_dice, abs=1e-6)
    cold = train_model(_cfg(epochs=1, lr=0.0, name="warm"), toy, tmp_path, progress=False)
    assert cold.folder != warm.folder and cold.best_val_dice != pytest.approx(base.best_val_dice, abs=1e-6)
    from xrlib.core.errors import InputError

    with pytest.raises(InputError, match="no best checkpoint"):
        train_model(_cfg(epochs=1, recipe_params={"warm_start": "nowhere"}), toy, tmp_path, progress=False)


def test_recipe_and_threads_change_the_hash(toy):
    h = _cfg().config_hash(toy)
    assert len({h, _cfg(threads=2).config_hash(toy), _cfg(recipe="test-double").config_hash(toy),
                _cfg(recipe_params={"warm_start": "x"}).config_hash(toy),
                _cfg(recipe="test-noise-head", recipe_params={"sigma": 0.2}).config_hash(toy),
                _cfg(recipe="test-noise-head").config_hash(toy)}) == 6
    assert _cfg().legacy_hash(toy) == _cfg(threads=2).legacy_hash(toy)
    assert _cfg(recipe="test-double").legacy_hash(toy) is None and _cfg(recipe_params={"warm_start": "x"}).legacy_hash(toy) is None
    with pytest.raises(ValueError, match="unknown recipe"):
        _cfg(recipe="nope").validate()
    with pytest.raises(ValueError, match="bad parameters"):
        _cfg(recipe="test-noise-head", recipe_params={"sigmaa": 1}).validate()
    with pytest.raises(ValueError, match="threads"):
        _cfg(threads=0).validate()


def _old_hash(cfg: TrainConfig, build: str) -> str:
    """The hash of the training code before recipes (commit dea4f93, xrlib/training/train.py)."""
    d = {"name": cfg.name, "train_sets": list(cfg.train_sets), "depth": cfg.depth, "base_channels": cfg.base_channels,
         "loss": cfg.loss, "lr": cfg.lr, "batch_size": cfg.batch_size, "epochs": cfg.epochs, "patience": cfg.patience,
         "seed": cfg.seed, "augment": cfg.augment, "cen_alphas": [float(a) for a in cfg.cen_alphas]}
    text = json.dumps({"config": d, "datasets": build, "version": 1}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def test_legacy_hash_is_the_old_payload(toy):
    cfg = _cfg(cen_alphas=(-2.0, 0.0, 2.0))
    assert cfg.legacy_hash(toy) == _old_hash(cfg, "toy0")
    # computed with the original code at dea4f93 (TrainConfig of this test, build hash "toy0")
    assert cfg.legacy_hash(toy) == "1616f2447239a92255e6cf2738b8e18e9ca85ab5c0882b7efd68e36da681918a"


@pytest.mark.parametrize("device, threads, adopted", [
    ("cpu (1 cores, x86_64)", 1, True), ("cpu (2 cores, x86_64)", 2, True), ("cpu (2 cores, x86_64)", 1, False),
    ("cuda (NVIDIA H100 80GB HBM3)", 1, True)])
def test_legacy_models_are_adopted_when_their_thread_count_matches(toy, tmp_path, device, threads, adopted):
    cfg = _cfg(epochs=2, cen_alphas=(-2.0, 0.0, 2.0), threads=threads)
    made = train_model(cfg, toy, tmp_path / "made", progress=False)
    # a folder as the old code left it: named by the old payload's hash, recording the device it ran on
    legacy = tmp_path / "models" / hashed_folder_name(cfg.name, _old_hash(cfg, "toy0"))
    shutil.copytree(made.folder, legacy)
    info = json.loads((legacy / "result.json").read_text(encoding="utf-8"))
    info["device"] = device
    (legacy / "result.json").write_text(json.dumps(info))
    before = {p.name: p.stat().st_mtime_ns for p in legacy.iterdir()}
    calls = []
    res = train_model(cfg, toy, tmp_path / "models", progress=False, _after_epoch=lambda e, r: calls.append(e))
    if adopted:
        assert calls == [] and Path(res.folder) == legacy and res.device == device
        assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [legacy.name]
    else:
        assert calls == [1, 2] and Path(res.folder).name == cfg.folder_name(toy)
    assert {p.name: p.stat().st_mtime_ns for p in legacy.iterdir()} == before
    other = _cfg(epochs=2, cen_alphas=(-2.0, 0.0, 2.0), threads=threads, recipe="test-double")
    assert train_model(other, toy, tmp_path / "models", progress=False).folder != legacy  # not a legacy recipe


def _checksum(path: Path) -> str:
    """SHA-256 of a checkpoint's content (re-serialised: torch.save names its zip records after the
    temporary file name of the atomic write, so the file bytes differ between two writes)."""
    buf = io.BytesIO()
    torch.save(torch.load(path, weights_only=False), buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def test_process_pool_gives_the_same_artifacts_as_in_process(toy, tmp_path):
    from xrlib.exec import ProcessPoolExecutor

    cfgs = [_cfg(epochs=2), _cfg(epochs=2, name="toy U-Net(Real+Syn_all)", train_sets=["Real", "Syn_all"])]
    here = train_all(cfgs, toy, tmp_path / "here", progress=False)
    pool = train_all(cfgs, toy, tmp_path / "pool", executor=ProcessPoolExecutor(workers=2), progress=False)
    assert list(here) == list(pool) == [c.name for c in cfgs]
    for name in here:
        a, b = Path(here[name].folder), Path(pool[name].folder)
        assert a.name == b.name
        assert _checksum(a / "best.pt") == _checksum(b / "best.pt")
        pd.testing.assert_frame_equal(_numbers(here[name]), _numbers(pool[name]))
    task = TrainTask(cfgs[0], str(toy), str(tmp_path / "here"))
    assert task.threads == 1 and task.key == Path(here[cfgs[0].name].folder).name
    import pickle

    assert pickle.loads(pickle.dumps(task)) == task
