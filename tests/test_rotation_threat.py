"""The rotation threat on a tiny built run: contract CSV, equality with chapter 06's evaluation, errors, CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from xrlib.attacks.base import TestImages
from xrlib.attacks.rotation import RotationThreat
from xrlib.core.errors import InputError
from xrlib.eval.robustness import CONTRACT_COLUMNS, read_robustness
from xrlib.studies import robustness
from xrlib.studies.rotation import study
from xrlib.studies.rotation.groups import GROUP_ORDER

from toy_study import ALPHAS, S  # the tiny study run behind the session fixture ``toy_run`` (conftest)


def test_rotation_csv_matches_chapter_06_means(toy_run):
    profile, run, results = toy_run
    out = robustness.run_threat(profile, run)
    assert out.path == run / "robustness" / "rotation.csv"
    back = read_robustness(run, "rotation")
    assert list(back.columns[:13]) == list(CONTRACT_COLUMNS)
    assert len(back) == 3 * 2 * len(ALPHAS) and set(back["budget"]) == set(ALPHAS) and (back["budget"] == back["alpha"]).all()
    assert (back["threat"] == "rotation").all() and (back["budget_unit"] == "deg").all()
    # Clean = the subject at α = 0; the clean prediction maps onto the image only there.
    zero = back[back["budget"] == 0]
    assert (zero["dice"] == zero["dice_clean"]).all() and (zero["dice_vs_clean_pred"] == 1.0).all()
    assert not zero["changed"].any() and not zero["success"].any()
    other = back[back["budget"] != 0]
    assert other["dice_vs_clean_pred"].isna().all() and other["changed"].isna().all()
    clean = zero.set_index(["model", "subject"])["dice"]
    assert other["dice_clean"].tolist() == pytest.approx([clean[(m, s)] for m, s in zip(other["model"], other["subject"])])
    # Chapter 06's table means come out unchanged.
    df, _ = study.evaluate_all(profile, run, results, include_baseline=False)
    syn = df[df["test_set"] == "Syn_test"]
    ours = back.groupby(["model", "alpha_group"])["dice"].mean()
    theirs = syn.groupby(["model", "group"])["dice"].mean()
    assert ours.to_numpy() == pytest.approx(theirs.to_numpy(), abs=1e-9)
    assert list(ours.index) == list(theirs.index)
    pd.testing.assert_frame_equal(out.summary, syn.pivot_table(index="model", columns="group", values="dice", aggfunc="mean")
                                  .reindex(index=list(results), columns=GROUP_ORDER), check_names=False, atol=1e-9)
    hd = back.groupby(["model", "alpha_group"])["hd95_mm"].mean()
    assert hd.to_numpy() == pytest.approx(syn.groupby(["model", "group"])["hd95_mm"].mean().to_numpy(), nan_ok=True)


def test_run_threat_subsets_and_errors(toy_run, tmp_path):
    profile, run, _ = toy_run
    out = robustness.run_threat(profile, run, models=["U-Net(Real)"], budgets=[10, -10])
    assert out.results["model"].unique().tolist() == ["U-Net(Real)"]
    assert out.results["budget"].unique().tolist() == [0.0, 10.0, -10.0]  # the clean budget always comes first
    with pytest.raises(InputError, match="unknown threat 'nope'"):
        robustness.run_threat(profile, run, threat="nope")
    with pytest.raises(InputError, match="unknown model 'U-Net'"):
        robustness.run_threat(profile, run, models=["U-Net"])
    with pytest.raises(InputError, match="budget 5 deg"):
        robustness.run_threat(profile, run, budgets=[5])
    shutil.copytree(run / "datasets", tmp_path / "datasets")  # the datasets, but no trained model
    with pytest.raises(InputError, match="model 'U-Net\\(Real\\)' is not trained"):
        robustness.run_threat(profile, tmp_path)


def test_rotation_threat_needs_the_clean_angle_and_images():
    with pytest.raises(InputError, match="clean angle"):
        RotationThreat([-2.0, 2.0])
    test = TestImages(np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), np.float32),
                      pd.DataFrame({"subject": ["a", "a"], "alpha": [0.0, 2.0]}))
    th = RotationThreat([0.0, 2.0, 4.0])
    assert th.apply(None, test, 2.0).same_view.tolist() == [False]
    assert th.apply(None, test, 0.0).same_view.tolist() == [True]
    with pytest.raises(InputError, match="no test image at α = 4°"):
        th.apply(None, test, 4.0)


def test_robustness_cli(toy_run, capsys, tmp_path):
    from xrlib.cli import main

    profile, run, _ = toy_run
    (tmp_path / "toyrot.yml").write_text(yaml.safe_dump(profile.raw))
    base = ["robustness", "--profile", str(tmp_path / "toyrot.yml"), "--run-root", str(run.parent), "--no-progress"]
    assert main([*base, "--threat", "rotation", "--models", "U-Net(Real+Syn_all)", "--budgets", "20"]) == 0
    text = capsys.readouterr().out
    assert "U-Net(Real+Syn_all)" in text and "rotation.csv" in text
    # an unknown threat or model: exit status 2 and one line naming it
    assert main([*base, "--threat", "teleport"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    from xrlib.studies.robustness import THREATS

    assert err == [f"error: unknown threat 'teleport'; known threats: {', '.join(THREATS)}"]
    assert {"rotation", "pgd", "segpgd", "noise", "pose", "deformation"} <= set(THREATS)
    assert main([*base, "--threat", "rotation", "--models", "U-Net(Nope)"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "U-Net(Nope)" in err[0]


def test_overlay_examples_agree_with_the_rotation_csv(toy_run):
    profile, run, results = toy_run
    ex = study.overlay_examples(profile, run, results, n_subjects=1, alphas=(-20.0, 0.0, 20.0))
    assert ex["images"].shape == ex["truth"].shape == (3, S, S) and set(ex["preds"]) == set(results)
    csv = robustness.run_threat(profile, run, models=["U-Net(Real)"], budgets=[-20, 20]).results
    subject = ex["titles"][0].split(" · ")[0]
    ref = csv[csv["subject"] == subject].sort_values("alpha")["dice"].tolist()
    assert ex["dices"]["U-Net(Real)"] == pytest.approx(ref)
