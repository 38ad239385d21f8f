"""The robustness results contract and its summaries, on constructed cases with known answers."""

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from xrlib.attacks.base import TestImages, Threat, Threatened, score_threat
from xrlib.core.errors import InputError
from xrlib.eval.robustness import (
    CONTRACT_COLUMNS,
    band_labels,
    changed_flags,
    ci_note,
    cmr,
    halving_budget,
    quality_band,
    read_robustness,
    robustness_curve,
    robustness_path,
    sar,
    success_flags,
    write_robustness,
)


def test_success_and_changed_flags():
    # Clean 0.8: success from a fall of 0.24 (30 %) on.
    assert success_flags([0.8, 0.57, 0.56, 0.1, 0.0], [0.8, 0.8, 0.8, 0.8, 0.0]).tolist() == [False, False, True, True, False]
    assert success_flags([0.7], [1.0]).tolist() == [True]  # exactly 30 %
    ch = changed_flags([0.9, 0.7, 0.69, math.nan])
    assert ch.iloc[:3].tolist() == [False, False, True] and ch.isna().tolist() == [False, False, False, True]


def _contract(model, budgets, dices, subjects, dice_clean):
    n = len(dices)
    return pd.DataFrame({"model": model, "threat": "toy", "budget": budgets, "budget_unit": "u", "subject": subjects,
                         "alpha": 0.0, "alpha_group": "Center", "dice": dices, "hd95_mm": 1.0,
                         "dice_clean": dice_clean, "dice_vs_clean_pred": [math.nan] * n,
                         "success": success_flags(dices, dice_clean), "changed": changed_flags([math.nan] * n).to_numpy()})


def test_write_and_read_robustness(tmp_path):
    df = _contract("m", [0, 1], [0.9, 0.4], ["a", "a"], [0.9, 0.9]).assign(extra=[1, 2])
    path = write_robustness(df[["extra"] + list(CONTRACT_COLUMNS)], tmp_path, "toy")
    assert path == robustness_path(tmp_path, "toy") == tmp_path / "robustness" / "toy.csv"
    back = read_robustness(tmp_path, "toy")
    assert list(back.columns) == list(CONTRACT_COLUMNS) + ["extra"]
    assert back["success"].tolist() == [False, True] and back["changed"].isna().all()
    assert open(path).read().splitlines()[1].endswith(",0.9,,False,,1")  # dice_vs_clean_pred and changed stay empty
    with pytest.raises(ValueError, match="contract column"):
        write_robustness(df.drop(columns="hd95_mm"), tmp_path, "toy")
    with pytest.raises(InputError, match="other"):
        read_robustness(tmp_path, "other")


def test_robustness_curve_clusters_subjects_and_notes_few():
    df = pd.concat([_contract("m", [0] * 4 + [5] * 4, [0.8, 0.9, 0.7, 0.6, 0.4, 0.5, 0.3, 0.2],
                              list("abcd") * 2, [0.8, 0.9, 0.7, 0.6] * 2)])
    out = robustness_curve(df, n_boot=300)
    assert out["budget"].tolist() == [0, 5] and out["mean"].tolist() == pytest.approx([0.75, 0.35])
    assert (out["n_clusters"] == 4).all() and (out["lo"] <= out["mean"]).all() and (out["mean"] <= out["hi"]).all()
    assert "4 subject" in out.attrs["note"]
    assert ci_note(25) == ""


def test_halving_budget_interpolates_and_explains_nan():
    # Mean Dice 0.8 at 0, 0.6 at 10, 0.2 at 20: halves (0.4) halfway between 10 and 20 → 15.
    # Negative side: 0.5 at -10, 0.45 at -20: never halves.
    budgets = [0, 10, 20, -10, -20]
    df = pd.concat([_contract("m", budgets, [0.8, 0.6, 0.2, 0.5, 0.45], ["a"] * 5, [0.8] * 5),
                    _contract("z", [0, 4], [0.0, 0.0], ["a"] * 2, [0.0] * 2)])
    out = halving_budget(df).set_index(["model", "direction"])
    assert out.loc[("m", "+"), "budget_half"] == pytest.approx(15.0) and out.loc[("m", "+"), "reason"] == ""
    assert math.isnan(out.loc[("m", "-"), "budget_half"]) and "stays above half" in out.loc[("m", "-"), "reason"]
    assert "-20" in out.loc[("m", "-"), "reason"]
    assert math.isnan(out.loc[("z", "+"), "budget_half"]) and "nothing to halve" in out.loc[("z", "+"), "reason"]
    # Exactly half at a budget: that budget.
    exact = halving_budget(_contract("m", [0, 2, 4], [0.8, 0.6, 0.4], ["a"] * 3, [0.8] * 3))
    assert exact["budget_half"].tolist() == pytest.approx([4.0])


def test_quality_bands_and_labels():
    assert band_labels() == ["Dice ≥ 0.8", "0.5–0.8", "Dice < 0.5"]
    assert quality_band([1.0, 0.8, 0.79, 0.5, 0.49, 0.0]).tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        band_labels((0.5, 0.8))


def test_cmr_and_sar_known_answer():
    # Clean bands (from dice_clean): 4 good, 2 middle. Threatened: of the good, 2 stay, 1 → middle, 1 → bad;
    # of the middle, 1 stays, 1 → bad. Budget-0 rows (clean) are left out.
    clean = [0.9, 0.9, 0.9, 0.9, 0.6, 0.6]
    threat = [0.85, 0.95, 0.6, 0.1, 0.7, 0.2]
    df = pd.concat([_contract("m", [0] * 6, clean, list("abcdef"), clean),
                    _contract("m", [1] * 6, threat, list("abcdef"), clean)])
    c = cmr(df).set_index(["clean_band", "threatened_band"])["cmr"]
    good, mid, bad = band_labels()
    assert c[(good, good)] == pytest.approx(0.5) and c[(good, mid)] == pytest.approx(0.25) and c[(good, bad)] == pytest.approx(0.25)
    assert c[(mid, mid)] == pytest.approx(0.5) and c[(mid, bad)] == pytest.approx(0.5) and c[(mid, good)] == 0.0
    assert math.isnan(c[(bad, bad)])  # no clean prediction in the bad band
    s = sar(df).set_index("band")
    assert s.loc[good, "sar"] == pytest.approx(0.5) and s.loc[mid, "sar"] == pytest.approx(0.5)
    assert s.loc[good, "n_clean"] == 4 and math.isnan(s.loc[bad, "sar"])
    # Keeping the clean rows adds identical pairs: SAR_good = 2 / 8.
    assert sar(df, clean_budget=None).set_index("band").loc[good, "sar"] == pytest.approx(0.25)
    # Per budget grouping keeps one block per budget.
    assert set(cmr(df, by=("model", "budget"), clean_budget=None)["budget"]) == {0, 1}


class _Shift(Threat):
    """A pixel threat: adds the budget to the image (same view: the clean prediction maps onto it)."""

    name, budget_unit = "shift", "a.u."

    def budgets(self):
        return (0.0, 0.3, 1.0)

    def apply(self, model, test, budget):
        return Threatened(np.clip(test.images + budget, 0, 1), test.masks, test.rows, np.ones(len(test.rows), bool),
                          extra=pd.DataFrame({"offset": [budget] * len(test.rows)}))


class _Threshold(torch.nn.Module):
    def forward(self, x):
        return 40.0 * (x - 0.5)


def test_score_threat_pixel_threat_known_answers():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 16, 16), np.float32)
    masks[:, 4:10, 4:10] = 1
    images = np.where(masks > 0, 0.9, 0.1).astype(np.float32) + rng.uniform(-0.05, 0.05, masks.shape).astype(np.float32)
    test = TestImages(images, masks, pd.DataFrame({"subject": ["a", "b", "c"], "alpha": [0.0, 0.0, 0.0]}))
    out = score_threat(_Shift(), {"thr": _Threshold()}, test, pixel_mm_iso=0.5, device="cpu")
    assert list(out.columns[:13]) == list(CONTRACT_COLUMNS) and "offset" in out.columns
    assert out["budget"].tolist() == [0.0] * 3 + [0.3] * 3 + [1.0] * 3 and (out["budget_unit"] == "a.u.").all()
    assert out["alpha_group"].isna().all()
    clean, small, big = (out[out["budget"] == b] for b in (0.0, 0.3, 1.0))
    assert (clean["dice"] == 1.0).all() and (clean["dice_vs_clean_pred"] == 1.0).all() and not clean["changed"].any()
    assert (small["dice"] == 1.0).all() and not small["success"].any()  # 0.1 + 0.3 stays below 0.5
    # +1: everything is foreground: Dice = 2·36/(36+256), against the clean prediction too.
    assert big["dice"].tolist() == pytest.approx([72 / 292] * 3) and big["success"].all()
    assert big["dice_vs_clean_pred"].tolist() == pytest.approx([72 / 292] * 3) and big["changed"].all()
    assert (out["dice_clean"] == 1.0).all()
    with pytest.raises(InputError, match="budget 0.5"):
        score_threat(_Shift(), {"thr": _Threshold()}, test, 0.5, budgets=[0.5])


def test_study_models_reads_the_builds_models_under_another_thread_count(toy_run, monkeypatch):
    """A command run with another XRLIB_THREADS than the build (which keys its trainings by thread count) still
    finds the trained study models; a model trained under no count is still an error naming it."""
    import shutil

    from xrlib.core.errors import InputError
    from xrlib.studies.rotation import study

    profile, run, results = toy_run
    built = {n: r.folder for n, r in study.study_models(profile, run).items()}
    monkeypatch.setenv("XRLIB_THREADS", "7")          # a count no build used
    assert {n: r.folder for n, r in study.study_models(profile, run).items()} == built
    name = next(iter(built))
    moved = built[name].with_name(built[name].name + "-moved")
    shutil.move(built[name], moved)
    try:
        with pytest.raises(InputError, match=f"model '{re.escape(name)}' is not trained"):
            study.study_models(profile, run, [name])
    finally:
        shutil.move(moved, built[name])
