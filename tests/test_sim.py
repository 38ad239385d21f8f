"""Chapter 08: acquisition variability, the varied surrogate, matched simulated sets, the acquisition threat."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from xrlib.attacks.acquisition import AcquisitionThreat
from xrlib.attacks.base import score_threat
from xrlib.core.errors import InputError
from xrlib.data.shards import MANIFEST_COLUMNS, ShardDataset
from xrlib.drr.acquisition import ACQUISITION_RANGES, Acquisition, default_acquisition, sample_acquisition, tone_curve
from xrlib.drr.physics import RealisticParams
from xrlib.studies.sim.settings import SimSettings

from test_datasets import source, tiny_profile, tiny_subject  # noqa: F401 (source: the module's tiny cohort fixture)

SETTINGS = SimSettings(acquisition_budgets=(0.0, 1.0, 2.0), acquisition_alphas=(0.0,), acquisition_subjects=1,
                       poses_per_subject=None, scaled_factor=2, epochs=1, patience=1, lr=0.01, batch_size=4, models=())


@pytest.fixture(scope="module")
def domains(tmp_path_factory, source):
    """The varied Real surrogate and the three matched simulator sets of one tiny run (surrogate pool only)."""
    from xrlib.studies.sim.sources import SIMULATORS, build_domain

    run = tmp_path_factory.mktemp("simrun")
    cfg = tiny_profile()
    return cfg, run, {d: build_domain(cfg, run, d, subjects=source, settings=SETTINGS) for d in ("real", *SIMULATORS)}


# ------------------------------------------------------------------------------ acquisition settings


def test_scale_zero_is_the_simulators_default_setting_exactly():
    rng = np.random.default_rng(0)
    assert sample_acquisition(rng, 0.0) == default_acquisition() == Acquisition()
    base = RealisticParams(dose_mas=2.0)
    assert Acquisition().realistic_params(base) == base  # the realistic chain's own defaults


def test_scale_one_spans_the_documented_ranges_and_scale_two_doubles_the_deviation():
    rng = np.random.default_rng(1)
    d = default_acquisition().to_dict()
    draws = [sample_acquisition(rng, (1.0, 2.0)) for _ in range(300)]
    for name, rg in ACQUISITION_RANGES.items():
        one = np.array([a.to_dict()[name] for a, _ in draws])
        two = np.array([b.to_dict()[name] for _, b in draws])
        assert one.min() >= rg.lo - 1e-12 and one.max() <= rg.hi + 1e-12, name
        assert one.max() - one.min() > 0.8 * (rg.hi - rg.lo), name  # the values really vary
        if rg.log:
            expect = d[name] * (one / d[name]) ** 2
        else:
            expect = d[name] + 2 * (one - d[name])
        if rg.step:  # a stepped setting (kVp): each scale's value rounded to the step after scaling
            np.testing.assert_array_equal(one, np.round(one / rg.step) * rg.step, err_msg=name)
            np.testing.assert_array_equal(two, np.round(two / rg.step) * rg.step, err_msg=name)
            np.testing.assert_allclose(two, np.clip(expect, *rg.bounds), atol=1.5 * rg.step, err_msg=name)
        else:
            np.testing.assert_allclose(two, np.clip(expect, *rg.bounds), rtol=1e-12, atol=1e-12, err_msg=name)


def test_sampling_is_seeded_and_rejects_bad_scales():
    a = [sample_acquisition(np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1]
    assert sample_acquisition(np.random.default_rng(6)) != a[0]
    with pytest.raises(ValueError, match="non-negative finite"):
        sample_acquisition(np.random.default_rng(0), -1.0)


def test_tone_curve_is_the_identity_at_zero_fixes_the_ends_and_is_monotone():
    x = np.linspace(0, 1, 101)
    np.testing.assert_array_equal(tone_curve(x, 0.0), x)
    y = tone_curve(x, 6.0)
    assert y[0] == pytest.approx(0.0, abs=1e-12) and y[-1] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(y) > 0) and y[25] < 0.25 and y[75] > 0.75  # S-shaped: more mid-tone contrast


def test_display_gain_ramp_changes_the_image_and_default_display_is_the_standard_postprocess():
    from xrlib.drr.physics import postprocess

    rng = np.random.default_rng(0)
    img = rng.normal(1.0, 0.2, (40, 30))
    field = np.ones(img.shape, bool)
    np.testing.assert_array_equal(Acquisition().display(img, field, 1.0), postprocess(img, field, pitch_mm=1.0))
    assert not np.allclose(Acquisition(gain_ramp=0.15).display(img, field, 1.0), postprocess(img, field, pitch_mm=1.0))


def test_render_batch_takes_one_parameter_set_per_pose_and_projects_a_repeated_pose_once():
    from xrlib.anatomy.annotate import clavicles_from_labels
    from xrlib.drr.geometry import Geometry, Pose
    from xrlib.drr.render import render_batch

    ct, lab = tiny_subject(0)
    geom = Geometry.from_render(tiny_profile().render)
    cl = clavicles_from_labels(lab)
    p1, p2 = RealisticParams(kvp=100.0), RealisticParams(kvp=125.0)
    both = render_batch(ct, cl, geom, [Pose(), Pose()], physics="realistic", backend="rtk", realistic=[p1, p2])
    one = render_batch(ct, cl, geom, [Pose()], physics="realistic", backend="rtk", realistic=p1)[0]
    np.testing.assert_array_equal(both[0].image, one.image)
    np.testing.assert_array_equal(both[0].mask, both[1].mask)
    assert both[1].meta["physics_params"]["kvp"] == 125.0 and not np.array_equal(both[0].image, both[1].image)
    with pytest.raises(ValueError, match="2 realistic parameter sets for 1 poses"):
        render_batch(ct, cl, geom, [Pose()], physics="realistic", backend="rtk", realistic=[p1, p2])


# ------------------------------------------------------------------------------ varied surrogate + matched sets


def test_varied_surrogate_records_per_image_settings_that_vary_within_the_ranges(domains):
    cfg, run, man = domains
    real = man["real"]
    acq = [c for c in real.columns if c.startswith("acq_")]
    assert sorted(acq) == sorted(f"acq_{k}" for k in ACQUISITION_RANGES)
    assert list(real.columns) == MANIFEST_COLUMNS + acq
    assert set(real.pool) == {"surrogate"} and len(real) == 4 * 2  # 4 surrogate subjects × 2 poses
    for k, rg in ACQUISITION_RANGES.items():
        v = real[f"acq_{k}"].to_numpy()
        assert v.min() >= rg.lo and v.max() <= rg.hi and np.unique(v).size == len(v), k
    # the manifest records what the shard holds
    with np.load(run / "sim" / "datasets" / "real" / real.shard.iloc[0]) as z:
        np.testing.assert_array_equal(z["acq_kvp"], real[real.shard == real.shard.iloc[0]]["acq_kvp"].to_numpy())


def test_default_builds_have_exactly_the_study_manifest_columns(domains):
    for d in ("naive", "heuristic", "realistic"):
        assert list(domains[2][d].columns) == MANIFEST_COLUMNS


def test_matched_sets_share_subjects_poses_splits_and_masks_and_differ_in_the_image(domains):
    cfg, run, man = domains
    keys = ["subject", "split", "alpha", "tilt", "shift_x", "shift_y", "shift_z"]
    ref = man["real"][keys].reset_index(drop=True)
    data = {}
    for d, m in man.items():
        pd.testing.assert_frame_equal(m[keys].reset_index(drop=True), ref)
        ds = ShardDataset(m, root=run / "sim" / "datasets" / d)
        data[d] = [ds[i] for i in range(len(ds))]
    assert {tuple(man[d].physics.unique()) for d in man} == {("realistic",), ("naive",), ("heuristic",)}
    for d in ("naive", "heuristic", "realistic"):
        for (x, y), (xr, yr) in zip(data[d], data["real"]):
            np.testing.assert_array_equal(y.numpy(), yr.numpy())  # one set of projected masks
        assert not np.array_equal(data[d][0][0].numpy(), data["real"][0][0].numpy())


def test_varied_recipe_at_scale_zero_is_the_realistic_simulator_only_without_the_room_effects(domains, source):
    """Without its room effects the surrogate at scale 0 is the realistic rung exactly; with them no rung reproduces it."""
    from xrlib.data.recipes import VariedRecipe, render_subject
    from xrlib.studies.sim.sources import domain_recipe

    cfg, run, man = domains
    sid = man["realistic"].subject.iloc[0]
    ct, lab = source.load(sid)
    fixed = render_subject(ct, lab, cfg, domain_recipe(cfg, "realistic", SETTINGS), sid)
    zero = dataclasses.replace(domain_recipe(cfg, "real", SETTINGS), acquisition_scale=0.0)
    assert isinstance(zero, VariedRecipe) and zero.effects is not None
    bare = render_subject(ct, lab, cfg, dataclasses.replace(zero, effects=None), sid)
    np.testing.assert_array_equal(bare["image"], fixed["image"])
    np.testing.assert_array_equal(bare["acq_kvp"], 120.0)
    varied = render_subject(ct, lab, cfg, zero, sid)
    np.testing.assert_array_equal(varied["mask"], fixed["mask"])  # the effects never move the ground truth
    for physics in ("naive", "heuristic", "realistic"):
        rung = render_subject(ct, lab, cfg, domain_recipe(cfg, physics, SETTINGS), sid)
        assert np.abs(varied["image"].astype(float) - rung["image"].astype(float)).mean() > 2  # uint8 grey levels


def test_distance_table_and_effects_gallery_on_the_matched_domains(domains):
    """Every rung is measurably away from the surrogate; the gallery shows each enabled effect and their sum."""
    from xrlib.drr.surrogate import EFFECTS
    from xrlib.studies.sim.chapter import distance_table, effects_gallery

    cfg, run, man = domains
    t = distance_table(run)
    assert set(t["domain"]) == {"naive", "heuristic", "realistic"} and (t["mean"] > 0).all()
    assert (t["pairs"] == ((man["real"].split == "train") & (man["real"].pool == "surrogate")).sum()).all()
    g = effects_gallery(cfg, run)
    assert [label for _, _, label in g] == ["no effect", *EFFECTS, "all effects"]
    assert all(im.shape == g[0][0].shape and 0 <= im.min() and im.max() <= 1 for im, _, _ in g)
    assert all(not np.array_equal(im, g[0][0]) for im, _, label in g[1:] if label != "falloff")


def test_scaled_domain_has_the_factor_times_the_poses_of_the_same_subjects(domains, source):
    from xrlib.studies.sim.sources import build_domain

    cfg, run, man = domains
    scaled = build_domain(cfg, run, "realistic-scaled", subjects=source, settings=SETTINGS)
    assert sorted(scaled.subject.unique()) == sorted(man["realistic"].subject.unique())
    assert len(scaled) == SETTINGS.scaled_factor * len(man["realistic"])


def test_unknown_domain_is_an_input_error():
    from xrlib.studies.sim.sources import domain_recipe

    with pytest.raises(InputError, match="unknown domain 'fancy'; expected one of real, naive"):
        domain_recipe(tiny_profile(), "fancy", SETTINGS)


def test_fewer_poses_per_subject_are_the_first_of_the_surrogates_sequence():
    from xrlib.studies.sim.sources import domain_recipe

    cfg = tiny_profile()
    few = domain_recipe(cfg, "naive", dataclasses.replace(SETTINGS, poses_per_subject=1)).poses("s1")
    assert few == domain_recipe(cfg, "naive", SETTINGS).poses("s1")[:1]


# ------------------------------------------------------------------------------ acquisition threat


def test_acquisition_images_at_budget_zero_are_the_realistic_chain_at_its_default(source):
    from xrlib.anatomy.annotate import clavicles_from_labels
    from xrlib.data.preprocess import preprocess
    from xrlib.data.recipes import noise_seed
    from xrlib.drr.geometry import Geometry, Pose
    from xrlib.drr.render import render_batch
    from xrlib.studies.sim.sources import _render_subject

    cfg = tiny_profile()
    sid = "tiny-v000"
    ct, lab = source.load(sid)
    out = _render_subject(cfg, ct, lab, sid, (-10.0, 10.0), (0.0, 1.0, 2.0))
    assert out["images"].shape == (3, 2, 24, 24) and out["masks"].shape == (2, 24, 24)
    rgs = render_batch(ct, clavicles_from_labels(lab), Geometry.from_render(cfg.render), [Pose(alpha=-10.0), Pose(alpha=10.0)],
                       physics="realistic", backend=cfg.render.backend, seed=noise_seed(cfg.seed, sid),
                       realistic=RealisticParams(dose_mas=cfg.surrogate.dose_mas), display=True)
    for i, rg in enumerate(rgs):
        img, m = preprocess(rg.display, rg.mask, 24)
        np.testing.assert_array_equal(out["images"][0, i], img)
        np.testing.assert_array_equal(out["masks"][i], m)
    names = [str(n) for n in out["names"]]
    kvp = out["settings"][:, :, names.index("kvp")]
    np.testing.assert_array_equal(kvp[0], 120.0)
    np.testing.assert_array_equal(kvp, np.round(kvp))  # 1-kV steps
    np.testing.assert_allclose(kvp[2] - 120.0, np.clip(2 * (kvp[1] - 120.0), -60, 30), atol=1.5)  # same draws, doubled
    assert not np.array_equal(out["images"][1], out["images"][0])
    # a subject rendered at a subset of the grid (angles_per_subject) gets each angle's own draws: the same settings
    sub = _render_subject(cfg, ct, lab, sid, (10.0,), (0.0, 1.0, 2.0), draws=[1])
    np.testing.assert_array_equal(sub["settings"][:, 0], out["settings"][:, 1])
    np.testing.assert_array_equal(sub["masks"][0], out["masks"][1])
    assert not np.array_equal(_render_subject(cfg, ct, lab, sid, (10.0,), (0.0, 1.0), draws=[0])["settings"][1, 0],
                              out["settings"][1, 1])


def _toy_threat(toy_run):
    from xrlib.studies.robustness import syn_test_images

    profile, run, _ = toy_run
    test = syn_test_images(profile, run)
    rng = np.random.default_rng(0)
    imgs = {0.0: test.images, 1.0: np.clip(test.images * 0.8 + 0.1, 0, 1), 2.0: np.clip(1 - test.images, 0, 1)}
    settings = {b: pd.DataFrame({"acq_kvp": 120 + b * rng.uniform(-20, 5, len(test.rows))}) for b in imgs}
    return profile, run, test, AcquisitionThreat(test, imgs, settings)


def test_acquisition_threat_writes_contract_rows_with_its_settings(toy_run):
    from xrlib.eval.robustness import CONTRACT_COLUMNS
    from xrlib.studies.rotation.groups import alpha_group
    from xrlib.training import load_best

    profile, run, test, th = _toy_threat(toy_run)
    assert th.budgets() == (0.0, 1.0, 2.0) and th.budget_unit == "× documented range"
    res = next(iter(toy_run[2].values()))
    df = score_threat(th, {"m": load_best(res)}, th.test, 1.0, groups=alpha_group)
    assert list(df.columns[:len(CONTRACT_COLUMNS)]) == list(CONTRACT_COLUMNS) and "acq_kvp" in df.columns
    assert len(df) == 3 * len(test.rows)
    clean = df[df.budget == 0]
    np.testing.assert_allclose(clean["dice"], clean["dice_clean"])
    np.testing.assert_allclose(clean["dice_vs_clean_pred"], 1.0)
    np.testing.assert_allclose(df[df.budget == 2]["acq_kvp"].to_numpy(), th.settings[2.0]["acq_kvp"].to_numpy())


def test_acquisition_threat_bad_budgets_and_missing_clean_budget(toy_run):
    profile, run, test, th = _toy_threat(toy_run)
    with pytest.raises(InputError, match="budget 3 × documented range is not one of 0, 1, 2"):
        th.check_budgets([3.0])
    with pytest.raises(InputError, match="must include 0"):
        AcquisitionThreat(test, {1.0: test.images}, {1.0: pd.DataFrame({"acq_kvp": np.zeros(len(test.rows))})})


def test_acquisition_is_a_registered_threat():
    from xrlib.studies.robustness import THREATS

    assert "acquisition" in THREATS


# ------------------------------------------------------------------------------ study configuration and tables


def test_sim_configs_train_each_row_on_its_domain_from_scratch(tmp_path):
    from xrlib.core.profiles import load_profile
    from xrlib.studies.sim.study import needed_domains, sim_configs

    cfg = load_profile("quick")
    confs = {c.name: (c, d) for c, d in sim_configs(cfg, tmp_path)}
    assert set(confs) == {"Real/strong", "Naive/strong", "Realistic/strong", "Naive-ADDA/strong", "Realistic-Scaled/strong",
                          "Naive-Cyc/strong"}
    assert confs["Naive/strong"][1] == tmp_path / "sim" / "datasets" / "naive"
    assert confs["Realistic-Scaled/strong"][1].name == "realistic-scaled"
    adda = confs["Naive-ADDA/strong"][0]
    assert adda.recipe == "adda" and adda.recipe_params["target_dir"] == "../datasets/real"  # from <run>/sim/models
    assert all(c.recipe_params.get("warm_start") is None and c.recipe_params["level"] == "strong" for c, _ in confs.values())
    assert needed_domains(cfg) == ["real", "naive", "realistic", "realistic-scaled"]


def test_sim_model_keys_do_not_depend_on_where_the_run_folder_lives(tmp_path):
    from xrlib.core.profiles import load_profile
    from xrlib.studies.sim.study import models_dir, sim_configs
    from xrlib.training.adda import ADDA

    cfg = load_profile("quick")
    here, there = tmp_path / "a" / "runs" / "quick", tmp_path / "elsewhere" / "deeper" / "quick"
    keys_here = {c.name: c.config_hash() for c, _ in sim_configs(cfg, here)}
    keys_there = {c.name: c.config_hash() for c, _ in sim_configs(cfg, there)}
    assert keys_here == keys_there and any("ADDA" in n for n in keys_here)
    adda = {c.name: c for c, _ in sim_configs(cfg, there)}["Naive-ADDA/strong"]
    recipe = ADDA(**adda.recipe_params)
    recipe.train_data(None, None, models_dir(there))  # the loop hands it the models root
    assert recipe.target_path().resolve() == (there / "sim" / "datasets" / "real").resolve()


def test_unknown_model_names_and_bad_sim_blocks_are_input_errors(tmp_path):
    import yaml

    from xrlib.core.profiles import load_profile
    from xrlib.studies.sim.settings import sim_settings
    from xrlib.studies.sim.study import parse_model

    with pytest.raises(InputError, match="sim: unknown model 'Fancy/strong'"):
        parse_model("Fancy/strong")
    with pytest.raises(InputError, match="sim: unknown model 'Real/medium'"):
        parse_model("Real/medium")
    raw = yaml.safe_load(open(load_profile("smoke").path, encoding="utf-8"))
    raw["sim"]["acquisition"]["budgets"] = [0, 2]
    (tmp_path / "p.yml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(InputError, match=r"sim: acquisition.budgets must include 0 .* and 1"):
        sim_settings(load_profile(tmp_path / "p.yml"))
    raw["sim"]["acquisition"]["budgets"] = [0, 1, 3]
    del raw["sim"]["steps"]  # neither a step budget nor epochs
    (tmp_path / "p.yml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(InputError, match="sim: missing key 'epochs'"):
        sim_settings(load_profile(tmp_path / "p.yml"))


def test_table4_has_clustered_cis_and_the_papers_values_beside():
    from xrlib.studies.sim.study import table4

    rows = []
    for m, base in (("Real/strong", 0.8), ("Naive/strong", 0.5)):
        for subj in ("a", "b", "c"):
            for k in range(3):
                rows.append({"model": m, "test_set": "Real test", "subject": subj, "dice": base + 0.01 * k,
                             "hd95_mm": 10 * base})
    t = table4(pd.DataFrame(rows))
    assert list(t.row) == ["Real", "Naive"] and list(t.subjects) == [3, 3]
    np.testing.assert_allclose(t.dice, [0.81, 0.51])
    assert (t.dice_lo <= t.dice).all() and (t.dice <= t.dice_hi).all()
    assert list(t.paper_dice_360) == [0.759, 0.572]  # paper 001, Table 4, 360 px, strong DR


# ------------------------------------------------------------------------------ dry run of a profile's grid


def test_the_paper_plan_is_the_whole_table4_grid_without_running_anything(tmp_path, monkeypatch):
    from xrlib.core.profiles import load_profile
    from xrlib.studies.sim import study

    monkeypatch.chdir(tmp_path)  # nothing may be written
    paper = load_profile("paper")
    plan = study.sim_plan(paper)
    m = plan["models"].set_index("model")
    assert set(m["row"]) == set(study.ROWS) and len(m) == 2 * len(study.ROWS)
    assert (m.groupby("row")["DR"].apply(set) == {"regular", "strong"}).all()
    cyc = m[m["method"] == "cyc"]
    assert set(cyc["row"]) == {"Naive-Cyc", "Realistic-Cyc"} and (cyc["generator blocks"] == 9).all()  # 256² input
    assert m["generator blocks"].isna().sum() == len(m) - len(cyc)
    s = paper.surrogate.poses_per_subject
    assert m.at["Real/strong", "training images"] == paper.pools.surrogate.train * s
    assert m.at["Realistic-Scaled/strong", "training images"] == 4 * m.at["Realistic/strong", "training images"]
    assert set(plan["domains"]["domain"]) == {"real", "naive", "heuristic", "realistic", "realistic-scaled"}
    assert list(tmp_path.iterdir()) == []
    quick = study.sim_plan(load_profile("quick"))["models"]
    assert list(quick["model"]) == ["Real/strong", "Naive/strong", "Realistic/strong", "Naive-ADDA/strong",
                                    "Realistic-Scaled/strong", "Naive-Cyc/strong"]  # every adaptation row of paper 001


# ------------------------------------------------------------------------------ one projection for every simulator


def test_matched_domains_share_one_projection_and_give_the_unshared_images(monkeypatch):
    """Every domain's images of a subject come from one projection (all simulators' channels and the masks, at the
    Realistic-Scaled poses) and equal what each recipe renders on its own."""
    from xrlib.data import recipes
    from xrlib.drr import render as R
    from xrlib.studies.sim.sources import DOMAINS, domain_recipe

    cfg = tiny_profile()
    ct, labels = tiny_subject(0)
    calls = []
    real_project = R.project_levels
    monkeypatch.setattr(R, "project_levels", lambda *a, **k: calls.append(a[4]) or real_project(*a, **k))
    recipes._SHARED.clear()
    for d in DOMAINS:
        shared = domain_recipe(cfg, d, SETTINGS)
        plain = dataclasses.replace(shared, shared_levels=())
        poses = shared.poses("tiny-v000")
        got = shared.render(ct, labels, cfg, "tiny-v000", poses)
        want = plain.render(ct, labels, cfg, "tiny-v000", poses)
        assert len(got) == len(want) == len(poses)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.image, w.image, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(g.display, w.display, rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(g.mask, w.mask)
            assert g.meta["pose"] == w.meta["pose"] and g.meta["physics"] == w.meta["physics"]
    shared_calls = [c for c in calls if len(c) == 3]
    assert len(shared_calls) == 1 and tuple(shared_calls[0]) == ("naive", "heuristic", "realistic")
    assert len(calls) == 1 + len(DOMAINS)  # the shared projection once, then each unshared render


# ------------------------------------------------------------------------------ baseline, steps, headline


def test_mean_mask_baseline_on_the_real_domains_train_masks(domains):
    from xrlib.eval.metrics import dice
    from xrlib.studies.sim.fairness import mean_mask_baseline
    from xrlib.studies.sim.study import real_test_images, real_train_masks

    cfg, run, man = domains
    m = real_train_masks(run)
    assert len(m) == ((man["real"].pool == "surrogate") & (man["real"].split == "train")).sum() and m.any()
    constant, t = mean_mask_baseline(m)
    test = real_test_images(run)
    assert constant.shape == test.masks.shape[-2:] and 0 <= t < 1
    train = lambda p: np.mean([dice(p.astype(float), y) for y in m])  # noqa: E731
    assert train(constant) >= train(mean_mask_baseline(m, "half")[0])  # the best level is at least the 0.5 one


def test_training_table_and_headline_name_steps_plateaus_and_unlearned_rows():
    from types import SimpleNamespace

    from xrlib.core.profiles import load_profile
    from xrlib.studies.sim.chapter import headline_markdown, training_table
    from xrlib.studies.sim.fairness import BASELINE

    cfg = load_profile("smoke")
    ep = np.arange(1, 9)
    flat = SimpleNamespace(train_images=4, best_epoch=8, best_val_dice=0.8, epochs_run=8,
                           history=pd.DataFrame({"epoch": ep, "val_dice": np.full(8, 0.8), "train_loss": 1.0 / ep}))
    rising = SimpleNamespace(train_images=4, best_epoch=8, best_val_dice=0.5, epochs_run=8,
                             history=pd.DataFrame({"epoch": ep, "val_dice": 0.1 * ep - 0.3, "train_loss": 1.0 / ep}))
    curves, steps = training_table(cfg, {"Real/strong": flat, "Naive-ADDA/strong": rising})
    assert steps["steps"].tolist() == [8, 8] and steps["plateaued"].tolist() == [True, False]
    table = pd.DataFrame({"row": ["Real", "Naive-ADDA", BASELINE], "DR": ["strong", "strong", "—"],
                          "dice": [0.8, 0.31, 0.30], "dice_lo": [0.7, 0.2, 0.25], "dice_hi": [0.9, 0.4, 0.35],
                          "hd95_mm": [5.0, 20.0, 22.0], "paper_dice_360": [0.759, 0.662, np.nan],
                          "learned": [True, False, pd.NA], "rank": pd.array([1, pd.NA, pd.NA], dtype="Int64")})
    acq = pd.DataFrame({"model": ["Real/strong"] * 2, "budget": [0.0, 3.0], "dice": [0.8, 0.4]})
    text = headline_markdown(cfg, table, acq, 4, 3, steps)
    assert "| Naive-ADDA | strong | 0.310" in text and "| not learned |" in text and "| rank 1 |" in text
    assert "still changing over the last quarter of the learning-rate time: Naive-ADDA/strong" in text and "2 optimisation steps" in text
    assert "scale 0 → 3" in text and "Best learned row here: Real" in text


def test_syn_test_images_per_subject_keeps_a_rotating_window_of_angles(toy_run):
    from xrlib.data.pools import spread_angles
    from xrlib.studies.robustness import syn_test_images

    profile, run, _ = toy_run
    alphas = [-20.0, 0.0, 20.0]
    full = syn_test_images(profile, run, alphas)
    one = syn_test_images(profile, run, alphas, per_subject=1)
    subjects = sorted(full.rows["subject"].astype(str).unique())
    assert len(one.rows) == len(subjects)                     # one image per subject
    for i, sid in enumerate(subjects):
        got = one.rows.loc[one.rows["subject"].astype(str) == sid, "alpha"].astype(float).tolist()
        assert got == spread_angles(alphas, i, 1)
    assert len(syn_test_images(profile, run, alphas, per_subject=3).rows) == len(full.rows)
