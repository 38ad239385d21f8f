"""Chapter 09's shape-variability study (xrlib.studies.pgd.shape) on tiny sizes: a phantom torso as the
source CT, 32² images, three angles, 1-epoch trainings; plus the coarser-source helper it uses."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import yaml

from xrlib.anatomy.cohort import CohortConfig, load_subject
from xrlib.anatomy.sources import shrink_source
from xrlib.attacks.base import TestImages
from xrlib.core.ct import CLAVICLE_LEFT_LABEL, CLAVICLE_RIGHT_LABEL, Volume
from xrlib.core.errors import InputError
from xrlib.core.profiles import PROFILES_DIR, validate_profile
from xrlib.data.pools import select
from xrlib.data.shards import read_manifest
from xrlib.data.subjects import cohort_subjects
from xrlib.studies.pgd import shape
from xrlib.studies.pgd.settings import pgd_settings

from test_cohort import make_torso

S = 32
SHAPE = {"levels": [0.5, 1.0, 2.0], "subjects": {"surrogate": {"train": 1, "val": 1}, "syn_train": {"train": 1, "val": 0}},
         "alphas": [0.0, 20.0], "ct_shrink": [2, 2, 1], "field_spacing_mm": 8.0, "epochs": 1, "budgets": [0.07], "base_channels": None}


def _profile(**shape_over):
    cfg = yaml.safe_load((PROFILES_DIR / "smoke.yml").read_text(encoding="utf-8"))
    cfg.update(name="toyshape", image_size=S)
    cfg["synthetic"] = {"alphas": [-20.0, 0.0, 20.0], "cen_alphas": [0.0]}
    cfg["render"].update(detector=S, backend="rtk")
    cfg["train"].update(epochs=1, batch_size=8, depth=3, base_channels=4)
    cfg["pgd"]["shape"] = {**copy.deepcopy(SHAPE), **shape_over}
    return validate_profile(cfg, "toyshape.yml")


def _sources():
    return [("torso", *make_torso())]


def _test_images(run, s, profile) -> TestImages:
    """The first level's synthetic training images as the common test set (the study's Syn_test stands in)."""
    root = shape.level_dir(run, s.shape.levels[0]) / "datasets"
    rows = select(read_manifest(root), "Syn_all", "train", cen_alphas=profile.synthetic.cen_alphas)
    return TestImages.from_manifest(rows, root)


def _run(run):
    profile = _profile()
    s = pgd_settings(profile)
    shape.build_level(profile, run, s, s.shape.levels[0], _sources())
    test = _test_images(run, s, profile)
    return profile, s, test, shape.run_shape_study(profile, run, s, test, sources=_sources())


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    run = tmp_path_factory.mktemp("shape") / "run"
    return (run, *_run(run))


def _clavicles(labels: Volume) -> np.ndarray:
    return np.isin(labels.array, (CLAVICLE_LEFT_LABEL, CLAVICLE_RIGHT_LABEL))


# --------------------------------------------------------------------------------------------- the levels


def test_the_levels_differ_in_measured_deformation_amplitude(study):
    run, profile, s, _, out = study
    ct0, lab0 = shrink_source(*make_torso(), SHAPE["ct_shrink"])
    src = _clavicles(lab0)
    moved = []
    for level in s.shape.levels:
        cohort = shape.level_dir(run, level) / "cohort"
        ids = pd.read_csv(cohort / "cohort.csv")["subject"]
        per = []
        for sid in ids:
            ct, lab = load_subject(cohort, sid)
            assert ct.same_grid(ct0)
            m = _clavicles(lab)
            per.append(1 - 2 * (m & src).sum() / (m.sum() + src.sum()))  # 1 − 3-D Dice with the source's clavicles
        moved.append(np.mean(per))
    assert moved[0] < moved[1] < moved[2], moved
    amp = out["amplitude"]
    assert list(amp["level"]) == [0.5, 1.0, 2.0]
    assert amp["mean |scale − 1| (%)"].is_monotonic_increasing and amp["mean max non-rigid (mm)"].is_monotonic_increasing


def test_the_sampling_bands_scale_with_the_level(study):
    run, profile, s, _, _ = study
    base = CohortConfig.from_profile(shape.level_profile(profile, s.shape))
    for level in s.shape.levels:
        c = shape.level_cohort_config(profile, s.shape, level)
        assert c.seed == base.seed and c.n_subjects == 3 and c.field_spacing_mm == 8.0
        for k in shape.SCALED_BANDS:
            assert getattr(c, k) == pytest.approx(level * getattr(base, k))
    # same seed ⇒ the same draws, scaled: a first-attempt subject's scale deviation is linear in the level
    m = {lv: pd.read_csv(shape.level_dir(run, lv) / "cohort" / "cohort.csv").set_index("subject") for lv in s.shape.levels}
    for sid in m[1.0].index:
        if all(m[lv].loc[sid, "attempt"] == 0 for lv in m):
            for lv in m:
                assert m[lv].loc[sid, "scale_lr"] - 1 == pytest.approx(lv * (m[1.0].loc[sid, "scale_lr"] - 1), rel=1e-9)
                assert m[lv].loc[sid, "shoulder_left_dz_mm"] == pytest.approx(lv * m[1.0].loc[sid, "shoulder_left_dz_mm"])


def test_the_block_sets_the_width_and_the_angles_of_the_level_models(study):
    run, profile, s, _, _ = study
    std, adv = shape.level_configs(profile, run, s, 1.0)
    assert std.base_channels == adv.base_channels == profile.train.base_channels  # null: the study's width
    assert std.train_sets == ["Real", "Syn_all"] and std.epochs == std.patience == 1
    narrow = _profile(base_channels=2, alphas=[-20.0, 20.0])
    std2, _ = shape.level_configs(narrow, run, pgd_settings(narrow), 1.0)
    assert std2.base_channels == 2
    lp = shape.level_profile(narrow, pgd_settings(narrow).shape)
    assert lp.synthetic.alphas == (-20.0, 20.0) and lp.synthetic.cen_alphas == (-20.0,)  # no 0: the angle nearest it
    assert lp.pools.syn_test.test == 0 and lp.n_subjects == 3


def test_the_image_count_is_the_same_at_every_level(study):
    run, profile, s, _, out = study
    keys = []
    for level in s.shape.levels:
        man = read_manifest(shape.level_dir(run, level) / "datasets")
        keys.append(sorted(man[["pool", "split", "alpha"]].round(6).astype(str).agg("|".join, axis=1)))
        assert set(man["pool"]) == {"surrogate", "syn_train"}  # no test pool: the models are tested on one set
        assert sorted(man.loc[man["pool"] == "syn_train", "alpha"]) == [0.0, 20.0]
    assert keys[0] == keys[1] == keys[2] and len(keys[0]) == 2 * 2 + 2  # 2 surrogate subjects × 2 poses + 1 × the 2 α of pgd.shape.alphas
    assert out["amplitude"]["training images"].nunique() == 1
    t = out["training"]
    assert t.groupby("model")["train images"].nunique().eq(1).all()
    assert not (run / "cohort").exists() and not (run / "datasets").exists()  # the study's folders are not touched


def test_rows_per_level_model_and_budget(study):
    run, profile, s, test, out = study
    rows = pd.read_csv(run / "pgd" / "shape" / "shape.csv")
    combos = rows.groupby(["level", "model", "budget"]).size()
    assert set(combos.index) == {(lv, m, b) for lv in (0.5, 1.0, 2.0) for m in shape.MODELS for b in (0.0, 0.07)}
    assert (combos == len(test.images)).all()
    clean, adv = rows[rows["budget"] == 0], rows[rows["budget"] == 0.07]
    assert np.allclose(clean["dice"], clean["dice_clean"]) and (clean["delta_linf"] == 0).all()
    assert (adv["delta_linf"] <= 0.07 + 1e-6).all() and (adv["delta_linf"] > 0).all()
    assert (rows["threat"] == "pgd").all() and rows["alpha_group"].notna().all()
    summary = shape.shape_summary(out["rows"])
    assert list(summary.columns) == ["model", "level", "ε = 0", "ε = 0.07"] and len(summary) == 6
    curves = shape.shape_curves(out["rows"])
    assert len(curves) == 12 and (curves["lo"] <= curves["mean"] + 1e-12).all()
    # the PGD-AT twin is warm-started from the level's standard model (smoke's defense.warm_start)
    std, adv_cfg = shape.level_configs(profile, run, s, 1.0)
    assert adv_cfg.recipe == "pgd-adversarial" and adv_cfg.recipe_params["warm_start"] == std.folder_name(
        shape.level_dir(run, 1.0) / "datasets")


def test_the_shape_study_is_deterministic_and_cached(study, tmp_path):
    run, profile, s, test, out = study
    again = shape.run_shape_study(profile, run, s, test, sources=_sources())  # cached: nothing is rebuilt
    pd.testing.assert_frame_equal(again["rows"], out["rows"])
    fresh = tmp_path / "run"
    two = dataclasses.replace(s, shape=dataclasses.replace(s.shape, levels=(0.5, 1.0)))
    shape.build_level(profile, fresh, two, 0.5, _sources())
    rows = shape.run_shape_study(profile, fresh, two, _test_images(fresh, two, profile), sources=_sources())["rows"]
    pd.testing.assert_frame_equal(rows, out["rows"][out["rows"]["level"] < 2].reset_index(drop=True))


# ------------------------------------------------------------------------------------------- settings, helpers


@pytest.mark.parametrize("update,message", [
    ({"levels": [1.0]}, "pgd.shape.levels must be at least two"),
    ({"levels": [1.0, 0.5]}, "pgd.shape.levels must be at least two distinct ascending"),
    ({"levels": [0.5, 5.0]}, "pgd.shape.levels must be a non-empty list"),
    ({"ct_shrink": [2, 2]}, "pgd.shape.ct_shrink must be 3 integers"),
    ({"budgets": [0.5]}, "pgd.shape.budgets must be a subset of pgd.budgets"),
    ({"subjects": {"surrogate": {"train": 1, "val": 0}, "syn_train": {"train": 1, "val": 0}}},
     "pgd.shape.subjects.surrogate.val must be ≥ 1"),
    ({"subjects": {"surrogate": {"train": 1, "test": 1}, "syn_train": {"train": 1}}},
     "pgd.shape.subjects.surrogate.test must be absent"),
    ({"epochs": 0}, "pgd.shape.epochs must be an integer ≥ 1"),
    ({"base_channels": 0}, "pgd.shape.base_channels must be an integer ≥ 1"),
    ({"alphas": [0, 0]}, "pgd.shape.alphas must be a non-empty list of distinct numbers"),
])
def test_bad_shape_settings_name_the_key(update, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")) as e:
        pgd_settings(_profile(**update))
    assert "toyshape" in str(e.value)


def test_a_null_shape_block_skips_the_study_and_says_so(tmp_path):
    profile = _profile()
    raw = copy.deepcopy(profile.raw)
    raw["pgd"]["shape"] = None
    s = pgd_settings(validate_profile(raw, "toyshape.yml"))
    assert s.shape is None
    assert "not run" in shape.describe(profile, s)
    with pytest.raises(ValueError, match="pgd.shape is null"):
        shape.run_shape_study(profile, tmp_path, s, None)


def test_shrink_source_averages_blocks_and_keeps_labels_on_the_same_grid():
    arr = np.arange(4 * 4 * 2, dtype=np.float32).reshape(2, 4, 4)  # (k, j, i)
    lab = np.zeros((2, 4, 4), np.uint8)
    lab[:, :2, :2] = 7
    ct, labels = Volume(arr, (1.0, 1.0, 3.0), (0.0, 0.0, 0.0)), Volume(lab, (1.0, 1.0, 3.0), (0.0, 0.0, 0.0))
    small, small_lab = shrink_source(ct, labels, (2, 2, 1))
    assert small.array.shape == (2, 2, 2) and small.spacing == (2.0, 2.0, 3.0) and small.same_grid(small_lab)
    assert small.array[0, 0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))  # the mean of the first 2×2 block
    assert small.origin == pytest.approx((0.5, 0.5, 0.0))  # the block centre: the physical extent is kept
    assert small_lab.array[:, 0, 0].tolist() == [7, 7] and small_lab.array[:, 1, 1].tolist() == [0, 0]
    assert shrink_source(ct, labels, (1, 1, 1)) == (ct, labels)
    with pytest.raises(InputError, match="3 integers ≥ 1"):
        shrink_source(ct, labels, (2, 0, 1))


def test_the_study_cohort_fingerprint_is_unchanged_by_the_new_options(tmp_path):
    profile = validate_profile(yaml.safe_load((PROFILES_DIR / "smoke.yml").read_text(encoding="utf-8")), "smoke.yml")
    plain = cohort_subjects(profile, tmp_path / "cohort", progress=False).fingerprint
    same = cohort_subjects(profile, tmp_path / "cohort", progress=False, config=CohortConfig.from_profile(profile),
                           shrink=(1, 1, 1)).fingerprint
    coarse = cohort_subjects(profile, tmp_path / "cohort", progress=False, shrink=(2, 2, 1)).fingerprint
    wider = cohort_subjects(profile, tmp_path / "cohort", progress=False,
                            config=dataclasses.replace(CohortConfig.from_profile(profile), bspline_std_mm=12.0)).fingerprint
    assert plain == same and len({plain, coarse, wider}) == 3
    # the study's key is the one of the code before these options (its datasets stay cached)
    import hashlib

    from xrlib.core.atomic import sha256_file
    from xrlib.core.ct import example_paths

    key = f"{CohortConfig.from_profile(profile).fingerprint()}|['example']|{[sha256_file(p) for p in example_paths()]}|5"
    assert plain == hashlib.sha256(key.encode()).hexdigest()[:16]
