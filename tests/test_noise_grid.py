"""Chapter 10's dose grid, insertion acceptance, degenerate Z-test cells, TOST and the window control."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from xrlib.studies.noise import grid as G
from xrlib.studies.noise import study as S
from xrlib.studies.noise.settings import GridSettings


def _g(**kw):
    return GridSettings(**{"above": 1, "max_halvings": 20, "floor_flat_quanta": 4.0, "subjects": None, "realisations": 1, **kw})


def test_grid_halves_until_every_model_halves_its_dice():
    # model a halves below 2·2^-5, model b below 2·2^-8: the grid must reach 2·2^-9 and stop there
    def evaluate(d):
        return {"a": 0.9 if d >= 2 * 2.0 ** -5 else 0.2, "b": 0.8 if d >= 2 * 2.0 ** -8 else 0.1}

    out = G.halving_grid(evaluate, {"a": 0.9, "b": 0.8}, 2.0, lambda d: 1e6 * d, _g())
    assert out.doses[0] == 4.0 and out.doses[1] == 2.0
    assert np.allclose(out.doses, [2.0 * 2.0 ** k for k in range(1, -10, -1)])
    assert out.reason == G.STOP_HALVED
    assert G.figure_doses(out) == (2 * 2.0 ** -8, 2 * 2.0 ** -9)
    assert set(out.table["model"]) == {"a", "b"} and len(out.table) == 2 * len(out.doses)


def test_grid_stops_at_the_quanta_floor_or_the_halving_limit_and_says_so():
    never = lambda d: {"a": 0.9}  # noqa: E731 - a model that never halves
    floor = G.halving_grid(never, {"a": 0.9}, 2.0, lambda d: 100.0 * d, _g(above=0))  # 200 quanta at 2 mAs
    assert floor.reason == G.STOP_FLOOR and floor.doses[-1] == pytest.approx(2.0 / 2 ** 5)  # 6.25 ≥ 4 > 3.1
    cap = G.halving_grid(never, {"a": 0.9}, 2.0, lambda d: 1e9, _g(above=0, max_halvings=3))
    assert cap.reason == G.STOP_MAX and len(cap.doses) == 4
    zero = G.halving_grid(lambda d: {"a": 0.0}, {"a": 0.0}, 2.0, lambda d: 1e9, _g(above=0, max_halvings=2))
    assert zero.reason == G.STOP_MAX  # a model with clean Dice 0 cannot halve


def _arms(diffs, n_images=3, seed=0):
    """Contract-like rows: per subject, both arms' Dice, inserted = re-rendered + diff (plus image noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, dlt in enumerate(diffs):
        for img in range(n_images):
            base = 0.8 + 0.05 * rng.standard_normal()
            for arm, v in (("rerendered", base), ("inserted", base + dlt)):
                rows.append({"model": "m", "budget": 0.5, "subject": f"s{k}", "alpha": float(img), "arm": arm, "dice": v})
    return pd.DataFrame(rows)


def test_tost_fails_when_the_true_difference_exceeds_the_margin_and_passes_when_small():
    rng = np.random.default_rng(1)
    far = S.tost_table(_arms(0.10 + 0.01 * rng.standard_normal(8)), margin=0.05)
    near = S.tost_table(_arms(0.005 * rng.standard_normal(8)), margin=0.05)
    assert not far["equivalent"].iloc[0] and far["p"].iloc[0] > 0.5
    assert near["equivalent"].iloc[0] and near["p"].iloc[0] < 0.01
    assert near["n_subjects"].iloc[0] == 8  # one value per subject: images and realisations averaged first
    one = S.tost_table(_arms([0.0]), margin=0.05)
    assert math.isnan(one["p"].iloc[0]) and not one["equivalent"].iloc[0]


def test_tost_agrees_with_statsmodels_on_the_per_subject_means():
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(2)
    a, b = rng.normal(0.8, 0.05, 6), rng.normal(0.8, 0.05, 6)
    assert S.tost_subjects(a, b, 0.05)["p"] == pytest.approx(ttost_paired(a, b, -0.05, 0.05)[0])


def test_ztest_leaves_out_degenerate_cells():
    rows = []
    # clean band ≥ 0.8 for all; re-rendered: 0 of 10 leave it, inserted: 0 of 10 (degenerate, both 0) at dose 1,
    # at dose 0.5: 5 of 10 vs 1 of 10 leave (testable)
    for dose, k_re, k_in in ((1.0, 0, 0), (0.5, 5, 1)):
        for arm, k in (("rerendered", k_re), ("inserted", k_in)):
            for i in range(10):
                rows.append({"model": "m", "arm": arm, "budget": dose, "subject": f"s{i}", "dice_clean": 0.9,
                             "dice": 0.3 if i < k else 0.9})
    z = S.ztest_table(pd.DataFrame(rows))
    stay = z[(z["clean_band"] == z["threatened_band"]) & (z["clean_band"] == z["clean_band"].iloc[0])]
    d1, d05 = stay[stay["budget"] == 1.0].iloc[0], stay[stay["budget"] == 0.5].iloc[0]
    assert d1["degenerate"] and math.isnan(d1["z"])
    assert not d05["degenerate"] and abs(d05["z"]) > 1.5
    assert z["degenerate"].sum() >= 1 and z.loc[z["degenerate"], "z"].isna().all()


def _moments(shift=0.0, scale=1.0, skew=0.0, method="nps"):
    rows = []
    for arm in ("rerendered", "inserted"):
        ins = arm == "inserted"
        rows.append({"image": 0, "dose": 0.5, "region": "middle", "arm": arm, "method": method,
                     "mean": 0.01 + (shift if ins else 0.0), "std": 0.1 * (scale if ins else 1.0),
                     "skewness": skew if ins else 0.0, "excess_kurtosis": 0.0})
    nps = pd.DataFrame([{"dose": 0.5, "arm": a, "frequency": f, "nps": 1.0} for a in ("rerendered", "inserted")
                        for f in (0.1, 0.2, 0.3)])
    return pd.DataFrame(rows), nps


def test_acceptance_table_flags_each_criterion():
    ok = S.acceptance_table(*_moments(shift=0.005, scale=1.05, skew=0.1))
    assert ok["accepted"].all()
    assert not S.acceptance_table(*_moments(shift=0.02))["mean_ok"].iloc[0]  # 0.2 std off
    assert not S.acceptance_table(*_moments(scale=1.2))["sd_ok"].iloc[0]
    bad = S.acceptance_table(*_moments(skew=0.5))
    assert not bad["skew_ok"].iloc[0] and not bad["accepted"].iloc[0]
    m, nps = _moments()
    nps.loc[nps["arm"] == "inserted", "nps"] = 1.3
    assert not S.acceptance_table(m, nps)["nps_ok"].iloc[0]


def test_window_effect_share_of_the_lost_dice():
    rows = [{"model": "m", "budget": math.inf, "arm": "clean", "dice": 0.9}]
    rows += [{"model": "m", "budget": 0.1, "arm": "rerendered", "dice": 0.5},
             {"model": "m", "budget": 0.1, "arm": "clean-window", "dice": 0.8},
             {"model": "m", "budget": 1.0, "arm": "rerendered", "dice": 0.895},
             {"model": "m", "budget": 1.0, "arm": "clean-window", "dice": 0.9}]
    w = S.window_effect(pd.DataFrame(rows)).set_index("budget")
    assert w.loc[0.1, "window_share"] == pytest.approx(0.75)
    assert math.isnan(w.loc[1.0, "window_share"])  # under 0.01 Dice lost: no share


def _threat_two_regions():
    from xrlib.attacks.noise import NoiseSource, NoiseThreat
    from xrlib.drr.noise import ExpectedSignal

    sig = np.tile(3e3 * 60.0 * np.exp(-np.linspace(0.0, 2.3, 64)), (64, 1))  # 3000 → 300 quanta per mAs across
    es = ExpectedSignal(sig, np.full(sig.shape, 60.0), 6e3 * 60.0, 60.0, 0.6, 1.0)
    src = NoiseSource(es, np.ones(sig.shape, bool), np.zeros(sig.shape, np.uint8), 1.0)
    return NoiseThreat([src], pd.DataFrame({"subject": ["a"], "alpha": [0.0]}), 32, [2.0, 0.5, 0.005],
                       arms=("rerendered", "inserted"), realisations=1, nps_realisations=16, patch=16)


def test_insertion_is_accepted_where_used_gaussian_and_count_domain():
    th = _threat_two_regions()
    assert [th.insertion(0, d) for d in th.doses] == ["nps", "nps", "counts"]  # ≈ 1.5 quanta at the dark edge
    acc = S.acceptance_table(*S.validate_insertion(th, th.doses, 24))
    assert acc["accepted"].all(), acc.to_string()


def test_gaussian_insertion_at_few_quanta_fails_the_acceptance():
    th = _threat_two_regions()
    th.insertion = lambda i, d: "nps"  # force Gaussian insertion where only a few quanta arrive
    acc = S.acceptance_table(*S.validate_insertion(th, [0.005], 24))
    assert not acc["accepted"].all()
    assert not acc[acc["region"] == "high attenuation"][["mean_ok", "skew_ok"]].all(axis=None)
