"""Tests of xrlib.nets (unet, losses, baseline), xrlib.training (config, data, loop, checkpoint) and the
rotation study's model sets (xrlib.studies.rotation.models) on a tiny synthetic task (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from xrlib.core.atomic import save_npz_atomic, sha256_file, write_text_atomic
from xrlib.nets.baseline import CLAVICLE_CHANNELS, TXRV_TARGETS, TxrvBaseline, txrv_postprocess, txrv_preprocess, txrv_status
from xrlib.data.shards import MANIFEST_COLUMNS
from xrlib.core.profiles import Profile, load_profile, validate_profile
from xrlib.nets.losses import dice_per_image, make_loss
from xrlib.nets.unet import build_unet, count_parameters
from xrlib.studies.rotation.models import ablation_configs, ablation_grid, study_configs
from xrlib.training.checkpoint import load_best
from xrlib.training.config import TrainConfig, safe_name
from xrlib.training.data import load_tensors, select_images
from xrlib.training.loop import train_model

S = 32


def _disc_images(rng, n):
    yy, xx = np.mgrid[:S, :S]
    imgs, masks = [], []
    for _ in range(n):
        cy, cx = rng.uniform(9, S - 9, 2)
        r = rng.uniform(4, 7)
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
        img = np.clip(rng.normal(0.3, 0.08, (S, S)) + 0.45 * m, 0, 1)
        imgs.append(np.round(img * 255).astype(np.uint8))
        masks.append(m)
    return np.stack(imgs), np.stack(masks)


def _toy_datasets(root: Path, seed: int = 0) -> Path:
    """A datasets folder in the format of xrlib.data.build: shards, manifest.csv, build.json."""
    rng = np.random.default_rng(seed)
    plan = ([("surrogate", "train")] * 4 + [("surrogate", "val")] * 2 + [("syn_train", "train")] * 1
            + [("syn_train", "val")] * 1 + [("syn_test", "test")])
    rows = []
    for k, (pool, split) in enumerate(plan):
        sid = f"toy-v{k:03d}"
        n = 8 if pool == "surrogate" else 5
        alphas = np.zeros(n) if pool == "surrogate" else np.linspace(-4, 4, n)
        img, mask = _disc_images(rng, n)
        rel = f"shards/{pool}/{sid}.npz"
        save_npz_atomic(root / rel, {"image": img, "mask": mask, "mask_left": mask, "mask_right": mask * 0})
        for j in range(n):
            rows.append({"subject": sid, "source": "toy", "pool": pool, "split": split, "alpha": alphas[j], "tilt": 0.0,
                         "shift_x": 0.0, "shift_y": 0.0, "shift_z": 0.0,
                         "physics": "realistic" if pool == "surrogate" else "naive", "dose_mas": 2.0, "shard": rel,
                         "index": j, "checksum": sha256_file(root / rel)})
    write_text_atomic(root / "manifest.csv", pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(index=False))
    write_text_atomic(root / "build.json", json.dumps({"hash": f"toy{seed}", "complete": True}))
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _toy_datasets(tmp_path_factory.mktemp("toy") / "datasets")


def _cfg(**kw):
    base = dict(name="toy U-Net(Real)", train_sets=["Real"], depth=3, base_channels=8, loss="dice_bce", lr=0.01,
                batch_size=8, epochs=4, patience=30, seed=0, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _numbers(result):
    return result.history.drop(columns=["seconds", "images_per_s"])


def train_interrupted(cfg, toy, out, after_epoch: int = 2) -> None:
    """Train ``cfg`` into ``out`` until an interruption (``KeyboardInterrupt``) after ``after_epoch``."""

    def interrupt(epoch, row):
        if epoch == after_epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(cfg, toy, out, progress=False, _after_epoch=interrupt)


# ---------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("depth", [3, 4, 5])
def test_build_unet_shapes(depth):
    torch.manual_seed(0)
    net = build_unet(depth, base_channels=4)
    out = net(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 1, 32, 32)
    assert count_parameters(net) > 0


@pytest.mark.parametrize("depth", [2, 6, True])
def test_build_unet_bad_depth(depth):
    with pytest.raises(ValueError, match=r"^U-Net depth must be 3, 4 or 5, got "):
        build_unet(depth)


def test_losses_on_logits():
    y = torch.zeros(2, 1, 8, 8)
    y[:, :, 2:6, 2:6] = 1
    good, bad = (y * 20 - 10), (10 - y * 20)
    for name in ("dice", "dice_bce"):
        loss = make_loss(name)
        assert float(loss(good, y)) < 0.05
        assert float(loss(bad, y)) > 0.9
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("focal")


def test_dice_per_image():
    y = torch.zeros(3, 1, 4, 4)
    y[0, 0, :2] = 1
    y[1, 0, :2] = 1
    logits = torch.full((3, 1, 4, 4), -1.0)
    logits[0, 0, :2] = 1  # perfect
    logits[1, 0, :1] = 1  # half: 2·4 / (4 + 8)
    d = dice_per_image(logits, y)  # image 2: both empty → 1
    assert torch.allclose(d, torch.tensor([1.0, 2 / 3, 1.0]))


# ---------------------------------------------------------------------------------------------- training


def test_selection_union(toy):
    real = select_images(toy, ["Real"], "train")
    both = select_images(toy, ["Real", "Syn_all"], "train")
    cen = select_images(toy, ["Real", "Syn_cen"], "val", cen_alphas=(-2.0, 0.0, 2.0))
    assert len(real) == 32 and len(both) == 37 and len(cen) == 16 + 3
    assert not both.duplicated(["shard", "index"]).any()


def test_training_learns_and_caches(toy, tmp_path):
    calls = []
    res = train_model(_cfg(epochs=6), toy, tmp_path, progress=False, _after_epoch=lambda e, r: calls.append(e))
    assert calls == list(range(1, 7))
    assert res.best_val_dice > 0.8, res.history
    assert (res.train_images, res.val_images, res.epochs_run) == (32, 16, 6)
    assert list(res.history.columns) == ["epoch", "train_loss", "val_loss", "val_dice", "seconds", "images_per_s", "lr"]
    assert res.history["val_dice"].max() == pytest.approx(res.best_val_dice)
    assert res.images_per_s > 0 and res.device.startswith("cpu")
    folder = Path(res.folder)
    assert folder.name.startswith("toy_U-Net_Real-") and {p.name for p in folder.iterdir()} >= {
        "best.pt", "last.pt", "history.csv", "result.json"}
    assert json.loads((folder / "result.json").read_text(encoding="utf-8"))["complete"] is True

    # cache: a second call trains nothing and rewrites nothing
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = train_model(_cfg(epochs=6), toy, tmp_path, progress=False, _after_epoch=lambda e, r: calls.append(e))
    assert calls == list(range(1, 7))
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    pd.testing.assert_frame_equal(again.history, res.history)

    # the best checkpoint reproduces the best validation Dice
    model = load_best(res)
    assert not model.training
    x, y = load_tensors(select_images(toy, ["Real"], "val"), toy, "val", False)
    with torch.no_grad():
        assert float(dice_per_image(model(x), y.float()).double().mean()) == pytest.approx(res.best_val_dice, abs=1e-6)


def test_determinism_and_resume(toy, tmp_path):
    cfg = _cfg(epochs=3, loss="dice")
    a = train_model(cfg, toy, tmp_path / "a", progress=False)
    b = train_model(cfg, toy, tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(_numbers(a), _numbers(b))

    train_interrupted(cfg, toy, tmp_path / "c")
    folder = tmp_path / "c" / Path(a.folder).name
    assert (folder / "last.pt").is_file() and not (folder / "result.json").exists()
    seen = []
    c = train_model(cfg, toy, tmp_path / "c", progress=False, _after_epoch=lambda e, r: seen.append(e))
    assert seen == [3]  # resumed after epoch 2
    pd.testing.assert_frame_equal(_numbers(a), _numbers(c))
    assert (a.best_epoch, a.best_val_dice) == (c.best_epoch, c.best_val_dice)
    sa, sc = (torch.load(Path(r.folder) / "best.pt", weights_only=False)["model"] for r in (a, c))
    assert all(torch.equal(sa[k], sc[k]) for k in sa)


def test_early_stopping(toy, tmp_path):
    res = train_model(_cfg(lr=0.0, epochs=20, patience=3), toy, tmp_path, progress=False)
    assert res.stopped_early and res.best_epoch == 1 and res.epochs_run == 4
    assert res.history["val_dice"].nunique() == 1


def test_config_hash_and_errors(toy, tmp_path):
    h = _cfg().config_hash(toy)
    assert h == _cfg(num_workers=1).config_hash(toy) != _cfg(seed=1).config_hash(toy)
    assert h != _cfg().config_hash(None)
    with pytest.raises(ValueError, match="no validation images"):
        empty = tmp_path / "ds"
        _toy_datasets(empty)
        m = pd.read_csv(empty / "manifest.csv")
        m.loc[m["split"] == "val", "split"] = "test"
        m.to_csv(empty / "manifest.csv", index=False)
        train_model(_cfg(), empty, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="augmentation"):
        train_model(_cfg(augment=True), toy, tmp_path / "out", progress=False)
    from xrlib.core.errors import InputError

    with pytest.raises(InputError, match="build"):
        train_model(_cfg(), tmp_path / "nowhere", tmp_path / "out", progress=False)


# ---------------------------------------------------------------------------------------------- configurations

def _profile() -> Profile:
    raw = dict(load_profile("smoke").raw, name="t", seed=7, train={"epochs": 20, "batch_size": 8, "patience": 5, "lr": 0.01})
    raw["synthetic"] = dict(raw["synthetic"], cen_alphas=[-2.0, 0.0, 2.0])
    return validate_profile(raw, "t.yml")


PROFILE = _profile()


def test_study_configs():
    cfgs = study_configs(PROFILE)
    assert [c.name for c in cfgs] == ["U-Net(Real)", "U-Net(Real+Syn_cen)", "U-Net(Real+Syn_all)"]
    assert [c.train_sets for c in cfgs] == [["Real"], ["Real", "Syn_cen"], ["Real", "Syn_all"]]
    assert all((c.seed, c.epochs, c.batch_size, c.patience, c.lr) == (7, 20, 8, 5, 0.01) for c in cfgs)
    assert len({c.depth for c in cfgs}) == 1 and len({c.loss for c in cfgs}) == 1
    assert [safe_name(c.name) for c in cfgs] == ["U-Net_Real", "U-Net_Real_Syn_cen", "U-Net_Real_Syn_all"]


def test_ablation_configs():
    cfgs = ablation_configs(PROFILE)
    assert len(cfgs) == 18 and len({c.name for c in cfgs}) == 18
    combos = {(c.depth, c.loss, c.batch_size) for c in cfgs}
    assert combos == {(d, l, b) for d in (3, 4, 5) for l in ("dice", "dice_bce") for b in (8, 16, 32)}
    assert all(c.train_sets == ["Real"] for c in cfgs) and len({c.config_hash() for c in cfgs}) == 18
    assert ablation_grid()[0] == (3, "dice", 8) and ablation_grid()[14] == (5, "dice", 32)  # Exp 15: paper's best
    four = ablation_configs(PROFILE, subset=4)
    assert [c.name[:5] for c in four] == ["Exp01", "Exp07", "Exp12", "Exp18"]
    assert [c.name for c in ablation_configs(PROFILE, subset=[15])] == ["Exp15-d5-dice-b32"]
    with pytest.raises(ValueError):
        ablation_configs(PROFILE, subset=[0])


# ---------------------------------------------------------------------------------------------- TXRV baseline


def test_txrv_preprocess():
    img = np.zeros((64, 64), np.float32)
    img[:, 32:] = 1.0
    x = txrv_preprocess(img)
    assert x.shape == (1, 512, 512) and x.dtype == np.float32
    assert x.min() == pytest.approx(-1024) and x.max() == pytest.approx(1024)
    assert np.all(x[0, :, :200] == -1024) and np.all(x[0, :, 312:] == 1024)
    assert txrv_preprocess(np.full((40, 40), 0.5)).std() < 1e-3


def test_txrv_postprocess():
    logits = np.full((14, 512, 512), -20.0, np.float32)
    logits[0, :256] = 20.0  # left clavicle: top half
    logits[1, :, :256] = 20.0  # right clavicle: left half
    logits[4] = 20.0  # a lung channel everywhere: ignored
    p = txrv_postprocess(logits, 64)
    assert p.shape == (64, 64) and p.min() >= 0 and p.max() <= 1
    assert p[:30, :].min() > 0.99 and p[:, :30].min() > 0.99 and p[34:, 34:].max() < 0.01
    # maximum, not sum/mean: equal channels give the sigmoid itself
    same = np.zeros((14, 8, 8), np.float32)
    same[:2] = 1.0
    assert np.allclose(txrv_postprocess(same, 8), 1 / (1 + np.exp(-1.0)), atol=1e-6)
    assert TXRV_TARGETS[:2] == ("Left Clavicle", "Right Clavicle") and CLAVICLE_CHANNELS == (0, 1)


def test_txrv_status_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("XRLIB_TXRV_WEIGHTS", str(tmp_path / "missing.pth"))
    ok, reason = txrv_status()
    assert not ok
    import importlib.util

    if importlib.util.find_spec("torchxrayvision") is None:
        assert reason.startswith("torchxrayvision not installed")
    else:
        assert "no download attempted" in reason and str(tmp_path / "missing.pth") in reason
    with pytest.raises(RuntimeError, match="torchxrayvision not installed|no download attempted"):
        TxrvBaseline()
    assert not list(tmp_path.iterdir())


def test_cosine_lr_schedule_in_the_loop_is_recorded_and_resumes_exactly(toy, tmp_path):
    from xrlib.training.config import scheduled_lr

    cfg = _cfg(epochs=3, loss="dice", lr_schedule="cosine")
    a = train_model(cfg, toy, tmp_path / "a", progress=False)
    per_epoch = -(-a.train_images // cfg.batch_size)
    expected = [scheduled_lr(cfg.lr, "cosine", e * per_epoch - 1, 3 * per_epoch) for e in (1, 2, 3)]
    np.testing.assert_allclose(a.history["lr"], expected)            # each epoch's last step
    assert a.history["lr"].iloc[-1] == pytest.approx(cfg.lr * 0.01)
    const = train_model(_cfg(epochs=3, loss="dice"), toy, tmp_path / "a", progress=False)
    assert Path(const.folder) != Path(a.folder) and not np.allclose(_numbers(a)["val_loss"], _numbers(const)["val_loss"])
    train_interrupted(cfg, toy, tmp_path / "c")
    c = train_model(cfg, toy, tmp_path / "c", progress=False)       # resumed: the rate follows from the step index
    pd.testing.assert_frame_equal(_numbers(a), _numbers(c))


def test_val_every_validates_every_kth_and_the_last_epoch_and_resumes_exactly(toy, tmp_path):
    """``val_every=2`` over 5 epochs validates after epochs 2, 4 and 5 only (history rows, best epoch among them),
    joins the hash only when not 1, and a run interrupted after a validated epoch resumes to the same numbers."""
    cfg = _cfg(epochs=5, loss="dice", val_every=2, patience=10)
    a = train_model(cfg, toy, tmp_path / "a", progress=False)
    assert a.history["epoch"].tolist() == [2, 4, 5] and a.best_epoch in (2, 4, 5)
    assert _cfg(epochs=5, loss="dice", val_every=1).config_hash() == _cfg(epochs=5, loss="dice").config_hash()
    assert cfg.config_hash() != _cfg(epochs=5, loss="dice", patience=10).config_hash()
    train_interrupted(cfg, toy, tmp_path / "c", after_epoch=2)
    c = train_model(cfg, toy, tmp_path / "c", progress=False)
    pd.testing.assert_frame_equal(_numbers(a), _numbers(c))
    with pytest.raises(ValueError, match="val_every must be an integer ≥ 1"):
        _cfg(val_every=0).validate()
