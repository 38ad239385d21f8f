"""Compiled training (``TrainConfig.compile``, a profile's ``train.compile``): the loop's training
forward through ``torch.compile``, its hash, its determinism and resumption, and its errors.

The first compiled training here compiles the toy U-Net (tens of seconds on two cores); the later
ones find Inductor's cache.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from test_train import _cfg, _numbers, _toy_datasets, train_interrupted
from xrlib.core.errors import InputError
from xrlib.core.profiles import load_profile, validate_profile
from xrlib.studies.rotation.models import ablation_configs, study_configs
from xrlib.training.checkpoint import load_best
from xrlib.training.loop import train_model


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _toy_datasets(tmp_path_factory.mktemp("toy") / "datasets")


def test_eager_hash_is_the_one_before_the_field_existed():
    # computed by the code before TrainConfig.compile existed, for the same configuration
    assert _cfg().config_hash(None) == "cb7b8be74a07729f8fc9f310bdb9667c93fdfdbe9bad1e518cd5781b024f8c8f"
    assert _cfg(compile=True).config_hash(None) != _cfg().config_hash(None)
    assert _cfg(compile=True).legacy_hash(None) is None and _cfg().legacy_hash(None) is not None


def test_bad_compile_values():
    with pytest.raises(ValueError, match=r"^toy U-Net\(Real\): compile must be true or false, got 'yes'$"):
        _cfg(compile="yes").validate()
    with pytest.raises(ValueError, match=r"recipe 'recon-head' reads the network's intermediate features"):
        _cfg(compile=True, recipe="recon-head").validate()
    raw = dict(load_profile("smoke").raw, train={"epochs": 2, "batch_size": 4, "patience": 1, "lr": 0.01, "compile": 1})
    with pytest.raises(InputError, match=r"train.compile must be true or false, got 1"):
        validate_profile(raw, "t.yml")


def test_profile_switch_reaches_the_study_models_only():
    raw = dict(load_profile("smoke").raw, train={"epochs": 2, "batch_size": 4, "patience": 1, "lr": 0.01, "compile": True})
    profile = validate_profile(raw, "t.yml")
    assert profile.train.compile is True and load_profile("smoke").train.compile is False
    assert all(c.compile for c in study_configs(profile))
    assert not any(c.compile for c in ablation_configs(profile))  # another network per experiment: eager


def test_short_and_small_trainings_stay_eager_under_the_switch(tmp_path, monkeypatch):
    # warm-started fine-tunes (a few epochs: one compilation costs more than it saves) and chapter 08's rows
    # (2–4 steps an epoch, the last batch eager) train eagerly; the study models' seeds inherit the switch
    import xrlib.studies.pgd.study as pgd_study
    from xrlib.studies.pgd.settings import pgd_settings
    from xrlib.studies.rotation.seeds import study_seed_config
    from xrlib.studies.sim.study import sim_configs

    profile = load_profile("quick")
    assert profile.train.compile is True
    monkeypatch.setattr(pgd_study, "base_folder", lambda p, r: "U-Net_Real_Syn_all-0")
    defenses = pgd_study.defense_configs(profile, tmp_path, pgd_settings(profile))
    assert defenses and all(c.recipe_params.get("warm_start") and not c.compile for c in defenses)
    assert not any(c.compile for c, _ in sim_configs(profile, tmp_path, None))
    assert study_seed_config(profile, "U-Net(Real+Syn_all)", 3).compile


def test_compiled_training_is_deterministic_resumable_and_close_to_eager(toy, tmp_path):
    # batch 6 over 32 images: five batches of 6 and one of 2, which must reuse the one compilation
    cfg = _cfg(epochs=3, loss="dice", batch_size=6, compile=True)
    torch._dynamo.utils.counters.clear()
    a = train_model(cfg, toy, tmp_path / "a", progress=False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    eager = train_model(dataclasses.replace(cfg, compile=False), toy, tmp_path / "e", progress=False)
    assert Path(a.folder).name != Path(eager.folder).name  # its own model folder
    # the compiled step rounds differently, but trains the same network
    assert (_numbers(a)["train_loss"] - _numbers(eager)["train_loss"]).abs().max() < 1e-3
    b = train_model(cfg, toy, tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(_numbers(a), _numbers(b))

    train_interrupted(cfg, toy, tmp_path / "c")
    c = train_model(cfg, toy, tmp_path / "c", progress=False)
    pd.testing.assert_frame_equal(_numbers(a), _numbers(c))
    # the checkpoints hold the plain network's weights (no torch.compile wrapper in the keys)
    model = load_best(a)
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())
    assert torch.load(Path(a.folder) / "best.pt", weights_only=False)["config"]["compile"] is True


def test_failed_compilation_names_the_switch(toy, tmp_path, monkeypatch):
    def broken(model, **kw):
        def run(x):
            raise torch._dynamo.exc.BackendCompilerFailed(broken, RuntimeError("C++ compile error: no compiler"), None)
        return run

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(RuntimeError, match=r"^toy U-Net\(Real\): torch.compile of the training step failed \(RuntimeError: C\+\+ compile error: no compiler\); "
                                           r"train eagerly with train.compile: false in the profile"):
        train_model(_cfg(epochs=1, compile=True), toy, tmp_path, progress=False)
