"""Chapter 10, adaptive training: band-change selection, the added-samples recipe, its cache key and determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from xrlib.attacks.adaptive import band_changes, changed_samples, random_samples
from xrlib.attacks.base import TestImages, Threat, Threatened
from xrlib.core.errors import InputError
from xrlib.training import get_recipe
from xrlib.training.added import AddedSamples, load_added, samples_digest, save_added

S = 16


class _Threshold(torch.nn.Module):
    """Predicts foreground exactly where the input exceeds 0.5 (logits ±20)."""

    def forward(self, x):
        return (x - 0.5) * 40.0


def _square(top=4, size=8):
    m = np.zeros((S, S), np.float32)
    m[top:top + size, 4:12] = 1
    return m


class _Constructed(Threat):
    """Clean image = its mask (the threshold model's clean Dice is 1). At budget 1 the images are, per
    clean image: itself (Dice 1, band kept), its top half erased (Dice 2/3 → band 0.5–0.8) and blank (Dice 0 → < 0.5)."""

    name, budget_unit, clean_budget = "constructed", "unit", 0.0

    def __init__(self):
        self.masks = np.stack([_square(2), _square(5)])
        self.rows = pd.DataFrame({"subject": ["a", "b"], "alpha": [0.0, 0.0]})

    def budgets(self):
        return (0.0, 1.0)

    def apply(self, model, test, budget):
        if budget == 0.0:
            return Threatened(self.masks.copy(), self.masks, self.rows, np.ones(2, bool))
        imgs, masks, idx = [], [], []
        for i, m in enumerate(self.masks):
            half = m.copy()
            half[: int(np.flatnonzero(m.any(1))[0]) + 4] = 0
            imgs += [m, half, np.zeros_like(m)]
            masks += [m] * 3
            idx += [i] * 3
        return Threatened(np.stack(imgs), np.stack(masks), self.rows.iloc[idx].reset_index(drop=True), np.ones(6, bool),
                          pd.DataFrame({"variant": ["same", "half", "blank"] * 2}))


def _attacked():
    th = _Constructed()
    return band_changes(_Threshold(), th, TestImages(th.masks, th.masks, th.rows), [1.0])


def test_band_changes_flag_exactly_the_samples_whose_band_changed():
    att = _attacked()
    t = att.table
    assert list(t["variant"]) == ["same", "half", "blank"] * 2 and list(t["subject"]) == ["a"] * 3 + ["b"] * 3
    np.testing.assert_allclose(t["dice"], [1, 2 / 3, 0] * 2)
    assert list(t["clean_band"]) == [0] * 6 and list(t["band"]) == [0, 1, 2] * 2
    added = changed_samples(att)
    assert list(added.table["variant"]) == ["half", "blank", "half", "blank"]
    np.testing.assert_array_equal(added.images, att.images[[1, 2, 4, 5]])
    np.testing.assert_array_equal(added.masks, att.masks[[1, 2, 4, 5]])  # with their ground truth


def test_adaptive_training_data_are_the_originals_plus_exactly_the_changed_samples(tmp_path):
    added = changed_samples(_attacked())
    params = save_added(tmp_path, "round 1", added.images, added.masks, added.table)
    assert params["samples"].startswith("added/round_1-") and params["sha256"] == samples_digest(added.images, added.masks)
    x0 = torch.rand(3, 1, S, S)
    y0 = torch.zeros(3, 1, S, S, dtype=torch.uint8)
    x, y = get_recipe("added-samples", params).train_data(x0, y0, tmp_path)
    assert x.shape == (7, 1, S, S) and y.dtype == torch.uint8
    torch.testing.assert_close(x[:3], x0)
    np.testing.assert_array_equal(x[3:, 0].numpy(), added.images)
    np.testing.assert_array_equal(y[3:, 0].numpy(), added.masks)
    assert pd.read_csv(tmp_path / params["samples"].replace(".npz", ".csv"))["variant"].tolist() == ["half", "blank"] * 2
    empty = save_added(tmp_path, "none", added.images[:0], added.masks[:0])
    x, _ = get_recipe("added-samples", empty).train_data(x0, y0, tmp_path)
    assert x.shape == x0.shape


def test_random_control_draws_the_same_number_seeded():
    att = _attacked()
    a, b, c = random_samples(att, 4, 7), random_samples(att, 4, 7), random_samples(att, 4, 8)
    assert len(a) == 4 and a.table.equals(b.table) and np.array_equal(a.images, b.images)
    assert [len(random_samples(att, 4, s)) for s in range(5)] == [4] * 5
    assert any(not random_samples(att, 4, s).table.equals(c.table) for s in range(5))
    with pytest.raises(ValueError, match="cannot draw 7 of 6 samples"):
        random_samples(att, 7, 0)


def test_added_samples_recipe_refuses_changed_or_missing_files(tmp_path):
    att = _attacked()
    params = save_added(tmp_path, "r", att.images, att.masks)
    path = tmp_path / params["samples"]
    with pytest.raises(InputError, match="content does not match the recipe's sha256"):
        load_added(path, "0" * 64)
    with pytest.raises(InputError, match=r"r-.*\.npz: added-samples file not found"):
        AddedSamples(samples="added/r-000.npz", sha256="x").train_data(torch.zeros(1, 1, S, S), torch.zeros(1, 1, S, S), tmp_path)
    with pytest.raises(InputError, match=r"samples of size \(16, 16\) do not match the training images \(8, 8\)"):
        get_recipe("added-samples", params).train_data(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), tmp_path)
    with pytest.raises(ValueError, match="needs 'samples' .* and 'sha256'"):
        get_recipe("added-samples", {})


def test_added_samples_training_is_seeded_and_keyed_by_what_was_added(toy_run, tmp_path):
    import dataclasses

    from xrlib.studies.rotation.models import study_configs
    from xrlib.training import train_model
    from xrlib.training.checkpoint import load_weights

    profile, run, results = toy_run
    base = results["U-Net(Real+Syn_all)"]
    cfg0 = next(c for c in study_configs(profile) if c.name == "U-Net(Real+Syn_all)")
    rng = np.random.default_rng(0)
    masks = (rng.random((5, 32, 32)) > 0.7).astype(np.uint8)
    images = np.clip(masks * 0.5 + rng.random((5, 32, 32)) * 0.3, 0, 1).astype(np.float32)
    def config(root, n):
        params = save_added(root, "adaptive", images[:n], masks[:n])
        return dataclasses.replace(cfg0, name="U-Net(Real+Syn_all)+added", epochs=1, patience=1, lr=0.001,
                                   recipe="added-samples", recipe_params={**params, "warm_start": str(base.folder)})

    trained, folders = [], []
    for k in range(2):  # two trainings in separate model roots: same seed and samples ⇒ the same weights
        res = train_model(config(tmp_path / f"models{k}", 5), run / "datasets", tmp_path / f"models{k}", progress=False)
        assert res.train_images == base.train_images + 5
        trained.append(load_weights(res.folder, "cpu")["model"])
        folders.append(res.folder.name)
    assert folders[0] == folders[1]
    for key, w in trained[0].items():
        assert torch.equal(w, trained[1][key]), key
    other = config(tmp_path / "models2", 4).folder_name(run / "datasets")
    assert other != folders[0]  # the cache key holds the digest of what was added


def test_adaptive_settings_errors_name_the_profile(tmp_path):
    import yaml

    from xrlib.core.profiles import load_profile
    from xrlib.studies.noise.settings import adaptive_settings, noise_settings

    for name in ("smoke", "quick", "paper"):
        p = load_profile(name)
        a = adaptive_settings(p)
        assert a.iterations >= (2 if name != "smoke" else 1) and a.lowest_doses in (1, 2) and noise_settings(p).seeds >= 1
    raw = yaml.safe_load(open(load_profile("smoke").path, encoding="utf-8"))
    raw["noise"]["adaptive"]["lowest_doses"] = 3
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.yml: noise.adaptive: lowest_doses must be 1 or 2"):
        adaptive_settings(load_profile(path))
    del raw["noise"]["adaptive"]
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.yml: noise.adaptive: missing block"):
        adaptive_settings(load_profile(path))
