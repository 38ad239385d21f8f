"""Chapter 09 (xrlib.studies.pgd, xrlib.nets.recon, the recon-head recipe): settings, AUROC, the
reconstruction head and its training, warm starts, the worst case over attacks, the OOD attack."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from xrlib.core.errors import InputError
from xrlib.core.profiles import load_profile, validate_profile
from xrlib.nets.recon import ReconstructionHead, SegRecon, feature_channels, recon_error
from xrlib.nets.unet import build_unet
from xrlib.studies.pgd import ood
from xrlib.studies.pgd import study as ps
from xrlib.studies.pgd.paper import PAPER_EPS, PAPER_TABLE3
from xrlib.studies.pgd.settings import pgd_settings
from xrlib.training import load_best, load_seg_recon, train_model
from xrlib.training.checkpoint import load_weights

from test_train import _cfg, _toy_datasets  # noqa: F401  (the tiny training task)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _toy_datasets(tmp_path_factory.mktemp("toy_pgd") / "datasets")


# ------------------------------------------------------------------------------------------------- AUROC


def test_auroc_on_a_constructed_case_with_a_known_answer():
    # OOD 0.25 beats two of three in-distribution scores, 0.4 beats all three: 5 of 6 pairs
    assert ood.auroc([0.1, 0.2, 0.3], [0.25, 0.4]) == pytest.approx(5 / 6)
    assert ood.auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert ood.auroc([0.3, 0.4], [0.1, 0.2]) == 0.0  # attacked OOD images that look *more* in-distribution
    assert ood.auroc([0.1, 0.2], [0.1, 0.2]) == 0.5  # ties count one half
    with pytest.raises(ValueError, match="both classes"):
        ood.auroc([], [0.1])


def test_auroc_table_per_condition():
    rows = [{"set": "in-distribution", "score": v, "dice_vs_target": np.nan} for v in (0.1, 0.2, 0.3)]
    for cond, vals in zip(ood.CONDITIONS, ((0.5, 0.6), (0.25, 0.4), (0.0, 0.05))):
        rows += [{"set": cond, "score": v, "dice_vs_target": 0.5} for v in vals]
    t = ood.auroc_table(pd.DataFrame(rows), n_boot=200).set_index("condition")
    assert t["AUROC"].tolist() == pytest.approx([1.0, round(5 / 6, 4), 0.0])
    assert (t["AUROC lo"] <= t["AUROC"]).all() and (t["AUROC"] <= t["AUROC hi"]).all()
    assert t.loc[ood.CONDITIONS[0], "AUROC lo"] == 1.0  # every resample separates perfectly
    assert (t["reached target"] == 1.0).all() and t["target reached"].all()  # Dice 0.5 vs target counts as reached
    assert (t["OOD images"] == 2).all() and (t["in-distribution images"] == 3).all()


def _sweep_scores(ind_subjects=("s1", "s2", "s3")):
    """Two victims; per setting four OOD images from two source pictures; before/after values known."""
    rows = [{"victim": v, "set": "in-distribution", "eps": 0.0, "steps": 0, "subject": s, "source": "", "score": 0.1 + 0.01 * i,
             "dice_vs_target": np.nan} for v in ("std", "AT") for i, s in enumerate(ind_subjects)]
    for v, after in (("std", 0.9), ("AT", 0.3)):  # the attack reaches its target on std only
        rows += [{"victim": v, "set": ood.CONDITIONS[0], "eps": 0.0, "steps": 0, "subject": src, "source": src, "score": 0.5,
                  "dice_vs_target": 0.05, "score_before": 0.5, "dice_before": 0.05} for src in ("a", "a", "b", "b")]
        rows += [{"victim": v, "set": ood.CONDITIONS[2], "eps": 0.1, "steps": 10, "subject": src, "source": src,
                  "score": 0.05 if v == "std" else 0.4, "dice_vs_target": after, "score_before": 0.5, "dice_before": 0.05}
                 for src in ("a", "a", "b", "b")]
    return pd.DataFrame(rows)


def test_auroc_table_per_victim_and_setting_with_before_and_after():
    t = ood.auroc_table(_sweep_scores(), n_boot=200)
    std = t[(t["victim"] == "std") & (t["condition"] == ood.CONDITIONS[2])].iloc[0]
    at = t[(t["victim"] == "AT") & (t["condition"] == ood.CONDITIONS[2])].iloc[0]
    assert (std["ε"], std["steps"]) == (0.1, 10)
    assert std["Dice vs target before"] == 0.05 and std["Dice vs target after"] == 0.9 and std["target reached"]
    assert std["recon. error before"] == 0.5 and std["recon. error after"] == 0.05
    assert std["AUROC"] == 0.0  # attacked OOD images below every in-distribution score: the detector is evaded
    assert at["AUROC"] == 1.0 and not at["target reached"] and at["reached target"] == 0.0
    assert ood.strongest(t).loc["AT", "ε"] == 0.1


def test_auroc_interval_clusters_and_refuses_too_few_subjects():
    # two in-distribution subjects: no honest interval (the evidence design's minimum is 3)
    lo, hi = ood.auroc_interval([0.1, 0.2, 0.3], ["s1", "s1", "s2"], [0.5, 0.6])
    assert np.isnan(lo) and np.isnan(hi)
    # OOD images of one source picture move together: clustering by source widens the interval
    ind, groups = np.linspace(0.0, 1.0, 12), np.repeat(["s1", "s2", "s3", "s4"], 3)
    ood_scores = np.r_[np.full(6, 0.2), np.full(6, 0.9)]
    one = ood.auroc_interval(ind, groups, ood_scores, None, n_boot=400)
    two = ood.auroc_interval(ind, groups, ood_scores, ["a"] * 6 + ["b"] * 6, n_boot=400)
    assert two[1] - two[0] > one[1] - one[0]


def test_reached_criterion():
    assert ood.reached(ood.REACHED_SHARE) and not ood.reached(ood.REACHED_SHARE - 0.01)


# ---------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("name", ["smoke", "quick", "paper"])
def test_every_profile_has_a_valid_pgd_block(name):
    s = pgd_settings(load_profile(name))
    assert s.grid[0] == 0.0 and set(s.segpgd_budgets) <= set(s.budgets)
    assert s.check.budget is None or s.check.budget in s.budgets
    # adversarial training is PGD, not FGSM, from quick up: ≥ 5 steps of at most ε/4 at an ε inside the grid
    if name != "smoke":
        d = s.defense
        assert d.steps >= 5 and d.step_size <= d.eps / 4 + 1e-12 and min(s.budgets) < d.eps < max(s.budgets)
        assert len(s.budgets) >= 5 and max(s.budgets) / min(s.budgets) >= 10  # dense and log-spread


def _with(block_update: dict):
    cfg = copy.deepcopy(load_profile("smoke").raw)
    cfg["path"] = "bad.yml"
    cfg["pgd"] = {**cfg["pgd"], **block_update}
    return validate_profile(cfg, "bad.yml")


@pytest.mark.parametrize("update,message", [
    ({"segpgd_budgets": [0.5]}, "bad.yml: pgd.segpgd_budgets must be a subset of pgd.budgets"),
    ({"budgets": [0.0, 0.1]}, "bad.yml: pgd.budgets must be a non-empty list of distinct numbers in (0, 1]"),
    ({"steps": 0}, "bad.yml: pgd.steps must be an integer ≥ 1, got 0"),
    ({"l2": "yes"}, "bad.yml: pgd.l2 must be true or false, got 'yes'"),
    ({"check": {"budget": 0.05, "steps": 2, "restarts": 2, "models": None, "tolerance": 0.02}},
     "bad.yml: pgd.check.budget must be one of pgd.budgets"),
    ({"apgd_steps": 0}, "bad.yml: pgd.apgd_steps must be an integer ≥ 1, got 0"),
    ({"members": ["apgd-dice", "fgsm"]}, "bad.yml: pgd.members must be distinct names among pgd, segpgd, apgd-dice"),
])
def test_bad_settings_name_the_profile_and_the_key(update, message):
    with pytest.raises(InputError) as err:
        pgd_settings(_with(update))
    assert str(err.value).startswith(message)


def test_a_missing_block_names_the_profile():
    cfg = copy.deepcopy(load_profile("smoke").raw)
    cfg["path"] = "bad.yml"
    del cfg["pgd"]
    with pytest.raises(InputError, match="bad.yml: the profile has no pgd: block"):
        pgd_settings(validate_profile(cfg, "bad.yml"))


def test_paper_table3_rows_are_complete():
    assert all(len(v) == len(PAPER_EPS) for v in PAPER_TABLE3.values())
    assert PAPER_TABLE3["P10_std"][2] == 0.2907  # the paper's Dice at ε = 0.03 for its standard model


# ---------------------------------------------------------------------------------------- worst case


def _rows(model, attack, dice_by_budget):
    return pd.DataFrame([{"model": model, "threat": attack, "budget": b, "dice": d} for b, ds in dice_by_budget.items()
                         for d in ds])


def test_worst_case_is_the_mean_of_the_per_image_minimum_over_the_attacks_run():
    pgd = pd.concat([_rows("A", "pgd", {0.0: [0.9, 0.8], 0.03: [0.5, 0.3], 0.07: [0.2, 0.2]}),
                     _rows("B", "pgd", {0.0: [1.0, 1.0], 0.03: [0.9, 0.9], 0.07: [0.8, 0.8]})])
    pgd["attack"] = ["clean"] * 2 + ["apgd-dice", "pgd"] + ["apgd-bce"] * 2 + ["clean"] * 2 + ["pgd"] * 4
    pgd["flag"] = ["not converged"] * 6 + [""] * 6
    seg = pd.concat([_rows("A", "segpgd", {0.0: [0.9, 0.8], 0.03: [0.6, 0.1]}),
                     _rows("B", "segpgd", {0.0: [1.0, 1.0], 0.03: [0.7, 0.7]})])
    w = ps.worst_case({"pgd": pgd, "segpgd": seg}).set_index(["model", "budget"])
    # A at 0.03: per image min(0.5, 0.6) and min(0.3, 0.1) → mean 0.3 (a min of the means would say 0.35)
    assert w.loc[("A", 0.03), "min Dice"] == pytest.approx(0.3)
    assert w.loc[("B", 0.03), "min Dice"] == pytest.approx(0.7) and w.loc[("B", 0.03), "strongest"] == "segpgd"
    assert w.loc[("A", 0.07), "min Dice"] == pytest.approx(0.2) and w.loc[("A", 0.07), "strongest"] == "apgd-bce"
    assert w.loc[("A", 0.0), "strongest"] == "clean" and w.loc[("A", 0.03), "flag"] == "not converged"
    assert list(w.index.get_level_values(0)) == ["A"] * 3 + ["B"] * 3
    counts = ps.winner_counts({"pgd": pgd})
    assert counts.loc["A", "apgd-bce"] == 2 and counts.loc["B", "pgd"] == 4


def test_hd95_by_alpha_group_means_over_defined_images_and_counts_the_rest():
    rows = pd.DataFrame([
        {"model": "A", "budget": 0.03, "alpha_group": "Center", "subject": "s1", "dice": 0.8, "hd95_mm": 4.0},
        {"model": "A", "budget": 0.03, "alpha_group": "Center", "subject": "s2", "dice": 0.6, "hd95_mm": 8.0},
        {"model": "A", "budget": 0.03, "alpha_group": "Center", "subject": "s3", "dice": 0.0, "hd95_mm": np.nan},
        {"model": "A", "budget": 0.03, "alpha_group": "Moderate-", "subject": "s1", "dice": 0.2, "hd95_mm": 30.0},
    ])
    hd = ps.by_alpha_group(rows, metric="hd95_mm").set_index("alpha_group")
    assert hd.at["Center", "mean"] == pytest.approx(6.0) and hd.at["Center", "n"] == 2
    assert hd.at["Center", "n_nan"] == 1 and hd.at["Moderate-", "mean"] == pytest.approx(30.0)
    dice = ps.by_alpha_group(rows).set_index("alpha_group")
    assert dice.at["Center", "mean"] == pytest.approx(1.4 / 3)
    with pytest.raises(KeyError, match="no column 'hd_mm'"):
        ps.by_alpha_group(rows, metric="hd_mm")


def _worst(values: dict) -> pd.DataFrame:
    """A worst-case table: model → {ε: min Dice}."""
    return pd.DataFrame([{"model": m, "budget": b, "min Dice": d} for m, by in values.items() for b, d in by.items()])


def test_defense_tradeoff_and_paper_comparison_on_a_constructed_table():
    base = ps.BASE_MODEL
    worst = _worst({"U-Net(Real)": {0.0: 0.9, 0.03: 0.2}, base: {0.0: 0.9, 0.03: 0.3, 0.07: 0.1},
                    base + "+PGD-AT": {0.0: 0.85, 0.03: 0.7, 0.07: 0.6}, base + "+noise": {0.0: 0.88, 0.03: 0.31, 0.07: 0.1}})
    t = ps.defense_tradeoff(worst)
    assert list(t.index) == [base, base + "+PGD-AT", base + "+noise"]  # the base model and its defenses only
    assert t.loc[base + "+PGD-AT", "clean Δ vs base"] == pytest.approx(-0.05)  # the clean-accuracy cost
    assert t.loc[base + "+noise", "min Dice @ ε = 0.07"] == pytest.approx(0.1)
    c = ps.paper_comparison(worst)
    assert list(c.columns) == ["ε = 0", "ε = 0.03", "ε = 0.07", "source"]
    assert c.loc[f"this build: {base}+PGD-AT", "ε = 0.03"] == pytest.approx(0.7)
    assert c.loc["paper 002: P10_adv_s", "ε = 0.03"] == PAPER_TABLE3["P10_adv_s"][2]
    assert c.loc["paper 002: P10_std", "ε = 0.07"] == PAPER_TABLE3["P10_std"][4]


def test_run_diagnostics_fold_their_runs_in_and_flag_the_model(tmp_path):
    """On two untrained U-Nets at the smoke ε: every diagnostic run enters the per-image minimum (the
    re-scored ``dice`` is never above the grid's), each check has a direction, a tolerance and an outcome,
    and the model's failed outcomes become its ``flag`` in every row of ``pgd.csv``."""
    from xrlib.attacks.base import TestImages
    from xrlib.eval.robustness import read_robustness

    torch.manual_seed(0)
    models = {ps.BASE_MODEL: build_unet(3, base_channels=4).eval(), "B": build_unet(3, base_channels=4).eval()}
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 32, 32), np.float32)
    masks[:, 10:20, 12:22] = 1
    images = np.clip(rng.normal(0.3, 0.05, masks.shape) + 0.4 * masks, 0, 1).astype(np.float32)
    test = TestImages(images, masks, pd.DataFrame({"subject": ["s0", "s1"], "alpha": 0.0}))
    cfg = load_profile("smoke")
    s = pgd_settings(cfg)
    s = dataclasses.replace(s, budgets=(0.07,), segpgd_budgets=(0.07,), l2=False,
                            check=dataclasses.replace(s.check, models=None, steps=4, budget=None))
    attacks = ps.threats(cfg, s)
    results = ps.attack_grid(cfg, tmp_path, s, models, test, attacks=attacks)
    before = results["pgd"].copy()
    diag = ps.run_diagnostics(cfg, s, models, test, results, tmp_path, attacks["pgd"])
    assert set(diag["model"]) == set(models) and (diag["budget"] == 0.07).all()
    assert {"check", "direction", "tolerance", "white-box Dice", "check Dice", "outcome"} <= set(diag.columns)
    assert diag["check"].str.startswith("(e) transfer from").sum() == 2
    after = results["pgd"]
    assert len(after) == len(before) and (after["dice"].to_numpy() <= before["dice"].to_numpy() + 1e-9).all()
    for m, g in diag.groupby("model"):
        bad = "; ".join(dict.fromkeys(o for o in g["outcome"] if o != "pass"))
        assert (after.loc[after["model"] == m, "flag"] == bad).all()
    written = read_robustness(tmp_path, "pgd")
    assert "attack" in written.columns and "flag" in written.columns and len(written) == len(after)


def test_the_headline_reports_the_shape_study_or_says_it_did_not_run():
    from xrlib.studies.pgd.headline import headline_markdown

    cfg = load_profile("smoke")
    s = pgd_settings(cfg)
    worst = _worst({ps.BASE_MODEL: {0.0: 0.91, 0.07: 0.123}})
    checks = pd.DataFrame({"model": [ps.BASE_MODEL], "budget": [0.07], "check": ["(a) convergence"], "outcome": ["pass"]})
    checks = pd.concat([checks, pd.DataFrame({"model": [ps.BASE_MODEL + " (validation images)"], "budget": [np.nan],
                                              "check": ["(g) profile grid"], "outcome": ["pass"]})])
    aurocs = ood.auroc_table(_sweep_scores(), n_boot=100)
    shape_rows = pd.DataFrame({"model": ps.BASE_MODEL, "level": [0.5, 0.5, 1.0, 1.0], "budget": [0.0, 0.07, 0.0, 0.07],
                               "dice": [0.8, 0.25, 0.7, 0.35]})
    text = headline_markdown(cfg, s, worst, checks, aurocs, 1, 3, shape_rows=shape_rows)
    assert "0.123" in text and "2 of 2 passed" in text and "diagnostics at ε = 0.07 (" in text
    assert "std: clean OOD AUROC 1.00 [1.00, 1.00]; attack (c) at ε = 0.1, 10 steps: Dice vs target 0.05 → 0.90" in text
    assert "4 of 4 images reached their target — **the attack reached its target**; AUROC 0.00" in text
    assert "AT: clean OOD AUROC" in text and "0 of 4 images reached their target — **the attack did not reach" in text
    assert "reached its target from ε = 0.1 of the sweep" in text and "reached its target at no ε of the sweep" in text
    assert "0.5× → 0.250 (clean 0.800), 1× → 0.350 (clean 0.700)" in text
    quick = dataclasses.replace(s, shape=None)
    assert "not run in this profile" in headline_markdown(cfg, quick, worst, checks, aurocs, 1, 3)
    assert "1 synthetic test subject(s) × 3 angle(s);" in text                  # every angle of every subject
    one = headline_markdown(cfg, dataclasses.replace(quick, angles_per_subject=1), worst, checks, aurocs, 12, 5)
    assert "12 synthetic test subject(s) × 1 of 5 angles each, in rotation (12 images);" in one


# ------------------------------------------------------------------------------------- reconstruction head


@pytest.mark.parametrize("depth", [3, 5])
def test_head_reads_the_top_decoder_features(depth):
    torch.manual_seed(0)
    unet = build_unet(depth, base_channels=4)
    net = SegRecon(unet, ReconstructionHead(feature_channels(unet), hidden=4)).eval()
    x = torch.rand(2, 1, 32, 32)
    logits, recon = net(x)
    assert logits.shape == recon.shape == (2, 1, 32, 32)
    assert torch.equal(logits, unet(x))  # the head does not change the segmentation
    assert 0 <= float(recon.min()) and float(recon.max()) <= 1
    assert torch.allclose(net.score(x), (x - recon).abs().mean(dim=(1, 2, 3)))


def test_recon_error_known_value():
    x = torch.zeros(2, 1, 4, 4)
    r = torch.zeros(2, 1, 4, 4)
    r[1, 0, :2] = 0.5  # half of the pixels off by 0.5
    assert recon_error(x, r).tolist() == pytest.approx([0.0, 0.25])


def test_warm_start_enters_the_hash_and_loads_the_weights(toy, tmp_path):
    src = train_model(_cfg(epochs=1, name="src"), toy, tmp_path, progress=False)
    warm = {"warm_start": src.folder.name}
    a = _cfg(epochs=1, name="warm", lr=0.0, recipe="standard", recipe_params=warm)
    assert a.config_hash(toy) != _cfg(epochs=1, name="warm", lr=0.0).config_hash(toy)
    assert a.config_hash(toy) != _cfg(epochs=1, name="warm", lr=0.0, recipe_params={"warm_start": "other-123"}).config_hash(toy)
    res = train_model(a, toy, tmp_path, progress=False)  # lr 0: the weights stay the source's
    for k, v in load_weights(src.folder)["model"].items():
        assert torch.equal(v, load_weights(res.folder)["model"][k]), k


def test_frozen_recon_head_training_keeps_the_unet_and_learns_to_reconstruct(toy, tmp_path):
    src = train_model(_cfg(epochs=1, name="src"), toy, tmp_path, progress=False)
    cfg = _cfg(epochs=6, patience=6, name="head", recipe="recon-head",
               recipe_params={"frozen": True, "hidden": 4, "warm_start": src.folder.name})
    res = train_model(cfg, toy, tmp_path, progress=False)
    assert res.epochs_run == 6
    net = load_seg_recon(res)
    source = load_best(src)
    for (k, v), w in zip(source.state_dict().items(), net.unet.state_dict().values()):
        assert torch.equal(v, w), k  # frozen: the segmentation network is the warm-start model
    torch.manual_seed(0)
    untrained = SegRecon(source, ReconstructionHead(feature_channels(source), hidden=4)).eval()
    from xrlib.training.data import load_tensors, select_images

    x, _ = load_tensors(select_images(toy, ["Real"], "train"), toy)
    with torch.no_grad():
        assert float(net.score(x).mean()) < float(untrained.score(x).mean())
    with pytest.raises(InputError, match="not a 'recon-head' model"):
        load_seg_recon(src)


def test_ood_attack_pulls_the_mask_towards_the_target_inside_the_ball(toy, tmp_path):
    src = train_model(_cfg(epochs=2, name="src"), toy, tmp_path, progress=False)
    unet = load_best(src)
    torch.manual_seed(0)
    net = SegRecon(unet, ReconstructionHead(feature_channels(unet), hidden=4)).eval()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (3, 32, 32)).astype(np.float32)  # noise: out of distribution
    yy, xx = np.mgrid[:32, :32]
    target = ((yy - 16) ** 2 + (xx - 16) ** 2 <= 36).astype(np.float32)
    targets = np.stack([target] * 3)
    runs = ood.ood_attack(net, images, targets, 0.3, (2, 10), 0.1)
    assert sorted(runs) == [2, 10]
    from xrlib.nets.losses import dice_per_image

    def d(x):
        with torch.no_grad():
            return float(dice_per_image(unet(torch.from_numpy(x)[:, None]), torch.from_numpy(targets)[:, None]).mean())

    for k, adv in runs.items():
        assert np.abs(adv - images).max() <= 0.3 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert np.abs(adv - images).max() > 0.01 * k  # it moved: k steps of 0.03 from a random start
    assert d(runs[10]) > d(images) + 0.1
    with pytest.raises(ValueError, match="step counts"):
        ood.ood_attack(net, images, targets, 0.3, (), 0.1)


@pytest.mark.parametrize("update,message", [
    ({"eps": [0.1, 0.03]}, "bad.yml: pgd.ood.eps must be a number in (0, 1] or an ascending list of them"),
    ({"eps": 0}, "bad.yml: pgd.ood.eps must be a number in (0, 1]"),
    ({"steps": [10, 5]}, "bad.yml: pgd.ood.steps must be an integer ≥ 1 or an ascending list of them"),
    ({"steps": 2.5}, "bad.yml: pgd.ood.steps must be an integer ≥ 1"),
    ({"victims": []}, "bad.yml: pgd.ood.victims must be a non-empty list of names or null"),
])
def test_bad_ood_settings_name_the_key(update, message):
    block = {**load_profile("smoke").raw["pgd"]["ood"], **update}
    with pytest.raises(InputError) as err:
        pgd_settings(_with({"ood": block}))
    assert str(err.value).startswith(message)


def test_ood_settings_accept_a_number_or_a_list():
    block = {**load_profile("smoke").raw["pgd"]["ood"], "eps": 0.1, "steps": 3}
    block.pop("victims")
    o = pgd_settings(_with({"ood": block})).ood
    assert o.eps == (0.1,) and o.steps == (3,) and o.victims == (ps.BASE_MODEL, ps.BASE_MODEL + "+PGD-AT")


def test_validation_images_come_from_the_validation_split(toy):
    cfg = load_profile("smoke")
    val = ps.validation_images(cfg, toy.parent, n=5)
    assert len(val.images) == 5 and set(val.rows["split"]) == {"val"}
    assert val.images.shape[1:] == val.masks.shape[1:]


def test_the_defenses_have_a_fine_tune_control_trained_like_them(toy):
    cfg = load_profile("paper")  # defenses from scratch there: no trained study model needed
    s = pgd_settings(cfg)
    configs = {c.name: c for c in ps.defense_configs(cfg, toy.parent, s)}
    control, at = configs[ps.BASE_MODEL + "+fine-tune"], configs[ps.BASE_MODEL + "+PGD-AT"]
    assert control.recipe == "standard" and control.recipe_params == {}
    assert (control.epochs, control.lr, control.train_sets) == (at.epochs, at.lr, at.train_sets)
    assert at.recipe_params["steps"] >= 5 and at.recipe_params["step_size"] <= at.recipe_params["eps"] / 4
