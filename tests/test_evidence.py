"""Seeds × subjects intervals, contrasts, adjustment, MDD, verdicts and curve summaries on constructed cases.

Modules: xrlib.eval.evidence, xrlib.eval.curves. Calibration on simulated data: test_evidence_calibration.py.
"""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from xrlib.core.errors import InputError
from xrlib.eval import curves, evidence as ev


def _table(rng, S=12, K=3, sa=0.05, sb=0.03, se=0.02, mu=0.7):
    return mu + rng.normal(0, sa, (S, 1)) + rng.normal(0, sb, (1, K)) + rng.normal(0, se, (S, K))


def _long(y):
    S, K = y.shape
    return pd.DataFrame({"y": y.ravel(), "subj": np.repeat(np.arange(S), K), "seed": np.tile(np.arange(K), S)})


def test_mean_squares_match_statsmodels_anova():
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    y = _table(np.random.default_rng(0))
    a = anova_lm(smf.ols("y ~ C(subj) + C(seed)", data=_long(y)).fit())
    _, ms_a, ms_b, ms_e = ev._components(y)
    np.testing.assert_allclose([ms_a, ms_b, ms_e], a["mean_sq"].to_numpy(), rtol=1e-10)


@pytest.mark.parametrize("seed,sd", [(1, (0.05, 0.03, 0.02)), (2, (0.02, 0.08, 0.02)), (3, (0.04, 0.05, 0.03))])
def test_components_and_se_match_mixedlm(seed, sd):
    """Balanced table, no clamped component: the method-of-moments components are MixedLM's REML estimates;
    MixedLM's standard error of the mean is the unbiased combination, ours exceeds it by exactly MS_res/(S·K)."""
    import statsmodels.api as sm

    y = _table(np.random.default_rng(seed), sa=sd[0], sb=sd[1], se=sd[2])
    d = _long(y).assign(g=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sm.MixedLM.from_formula("y ~ 1", groups="g", re_formula="0", data=d,
                                    vc_formula={"subj": "0 + C(subj)", "seed": "0 + C(seed)"}).fit(reml=True)
    va, vb, ve = ev.variance_components(y)
    assert va > 0 and vb > 0  # the case is interior, so REML = moments
    np.testing.assert_allclose([va, vb, ve], [m.vcomp[1], m.vcomp[0], m.scale], rtol=2e-3, atol=1e-7)
    g, lo, hi, se, df = ev.crossed_mean(y)
    S, K = y.shape
    assert g == pytest.approx(m.fe_params.iloc[0], abs=1e-12)
    np.testing.assert_allclose(se ** 2 - ve / (S * K), m.bse.iloc[0] ** 2, rtol=2e-3)
    assert hi - lo == pytest.approx(2 * sst.t.ppf(0.975, df) * se)


def test_one_seed_is_the_one_sample_t_interval():
    y = np.array([0.7, 0.75, 0.8, 0.62, 0.9])
    res = sst.ttest_1samp(y, 0.0).confidence_interval(0.95)
    iv = ev.summarise(y)
    assert (iv.lo, iv.hi) == pytest.approx((res.low, res.high))
    assert iv.n_seeds == 1 and "omits training-seed variance" in iv.note


def test_seed_dominated_df_is_capped_at_seeds_minus_one():
    y = np.array([[0.0, 1.0, 2.0]] * 12) + np.linspace(0, 0.01, 12)[:, None]
    *_, df = ev.crossed_mean(y)
    assert df == pytest.approx(2.0)


def test_vectorised_equals_one_by_one():
    ys = np.random.default_rng(4).normal(size=(5, 12, 3))
    allv = ev.crossed_mean(ys)
    for r in range(5):
        one = ev.crossed_mean(ys[r])
        assert [float(a[r]) for a in allv] == pytest.approx([float(o) for o in one])


def test_few_subjects_print_na_and_one_cluster_is_an_error():
    iv = ev.summarise(np.array([[0.7, 0.72], [0.8, 0.82]]))
    assert math.isnan(iv.lo) and iv.note == "n/a (2 subjects)"
    assert ev.format_interval(iv) == "0.760, n/a (2 subjects)"
    with pytest.raises(InputError, match="one subject"):
        ev.summarise(np.array([[0.7, 0.72, 0.75]]))
    with pytest.raises(InputError, match="missing cells"):
        ev.crossed_mean(np.array([[0.7, np.nan], [0.8, 0.79], [0.6, 0.7]]))
    full = ev.summarise(_table(np.random.default_rng(5)))
    assert ev.format_interval(full).endswith("(12 subj × 3 seeds)")


def test_constant_table_gives_a_point_not_an_error():
    iv = ev.summarise(np.full((4, 3), 0.5))
    assert (iv.lo, iv.hi, iv.se) == (0.5, 0.5, 0.0)


def test_holm_and_bh_known_answers():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    np.testing.assert_allclose(ev.adjust(p, "holm"), [0.03, 0.06, 0.06, 0.02, np.nan])
    np.testing.assert_allclose(ev.adjust(p, "fdr_bh"), [0.02, 0.04, 0.04, 0.02, np.nan])
    with pytest.raises(InputError, match="method must be 'holm' or 'fdr_bh', got 'bonf'"):
        ev.adjust(p, "bonf")


def test_mdd_known_answers_and_power():
    assert ev.mdd(1.0, 1e7) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert ev.mdd(0.5, 10) == pytest.approx(0.5 * (2.228139 + 0.879058), abs=1e-5)
    # a true difference of one MDD is detected in about 80 % of simulated tables (power by construction;
    # one seed, so the t test is exact and only the shifted-t approximation of the power remains)
    rng = np.random.default_rng(6)
    y = rng.normal(0, 0.05, (4000, 12, 1))
    d = ev.mdd(0.05 / math.sqrt(12), 11)
    _, lo, _, _, _ = ev.crossed_mean(y + d)
    assert 0.75 < (lo > 0).mean() < 0.85
    assert ((ev.crossed_mean(y)[1] > 0).mean()) < 0.04  # and no effect is seldom "detected"


def test_verdict_rule():
    assert ev.verdict(0.05, 0.01, 0.09, 0.01, 0.04) == "more robust"
    assert ev.verdict(-0.05, -0.09, -0.01, 0.01, 0.04) == "less robust"
    assert ev.verdict(-0.05, -0.09, -0.01, 0.01, 0.04, higher_better=False) == "more robust"
    assert ev.verdict(0.05, 0.01, 0.09, 0.2, 0.04) == "no evidence at this size (MDD 0.04)"  # adjusted p too big
    assert ev.verdict(0.02, -0.01, 0.05, 0.01, 0.06) == "no evidence at this size (MDD 0.06)"  # interval spans 0
    assert ev.verdict(0.02, np.nan, np.nan, np.nan, np.nan) == "n/a (too few subjects for an interval)"
    # both arms censored at b_max on every subject and seed: an interval of width 0 and no p — not "too few subjects"
    assert ev.verdict(0.0, 0.0, 0.0, np.nan, np.nan).startswith("n/a (no variance: the difference is the same")


def _images(models=("a", "b"), S=6, K=3, n_img=2, effect=None, rng=None, source=None):
    rng = rng or np.random.default_rng(7)
    effect = effect or {}
    subj = rng.normal(0, 0.05, S)
    rows = []
    for m in models:
        seedfx = rng.normal(0, 0.02, K)
        for k in range(K):
            for i in range(S):
                for j in range(n_img):
                    rows.append({"model": m, "seed": k, "subject": f"s{i}", "image": j,
                                 "dice": 0.7 + effect.get(m, 0) + subj[i] + seedfx[k] + rng.normal(0, 0.02),
                                 **({"source": source[i]} if source else {})})
    return pd.DataFrame(rows)


def test_unit_means_and_paired_contrast():
    df = _images(effect={"b": 0.1})
    u = ev.unit_means(df, "dice")
    assert len(u) == 2 * 6 * 3 and (u["n_images"] == 2).all()
    t = ev.interval_table(u)
    assert list(t["n_subjects"]) == [6, 6] and list(t["n_seeds"]) == [3, 3]
    iv = ev.paired_contrast(u, "b", "a")
    assert iv.lo > 0.05 and iv.p < 0.01 and iv.hi < 0.15
    with pytest.raises(InputError, match="same subjects and seeds"):
        ev.paired_contrast(u[~((u["model"] == "a") & (u["seed"] == 2))], "b", "a")
    with pytest.raises(InputError, match=r"missing \(subject, seed\) cells \[\('s0', 1\)\]"):
        ev.interval_table(u[~((u["unit"] == "s0") & (u["seed"] == 1))])


def test_several_sources_make_the_source_the_unit():
    df = _images(S=6, source=["A", "A", "B", "B", "C", "C"])
    u = ev.unit_means(df, "dice")
    assert sorted(u["unit"].unique()) == ["A", "B", "C"] and (u["n_images"] == 4).all()
    one = ev.unit_means(df.assign(source="A"), "dice")
    assert one["unit"].nunique() == 6  # a single source: subjects are the unit


# ---- curves --------------------------------------------------------------------------------------------

def _curve(dice_by_budget, clean, model="m", seed=0, subject="s0"):
    rows = [{"model": model, "seed": seed, "subject": subject, "budget": 0.0, "dice": clean, "dice_clean": clean}]
    rows += [{"model": model, "seed": seed, "subject": subject, "budget": b, "dice": d, "dice_clean": clean}
             for b, d in dice_by_budget.items()]
    return pd.DataFrame(rows)


def test_auc_rel_auc_and_b50_known_answers():
    u = curves.curve_units(_curve({1.0: 0.8, 10.0: 0.6, 100.0: 0.2}, 0.8)).iloc[0]
    assert u["auc"] == pytest.approx(1.1)  # trapezoids over log10 budget: 0.7 + 0.4
    assert u["rel_auc"] == pytest.approx(1.1 / (2 * 0.8))
    assert u["b50"] == pytest.approx(10 ** 1.5) and not u["b50_censored"]


def test_b50_censored_and_below_the_first_budget():
    assert curves.halving(np.array([1.0, 10, 100]), np.array([0.8, 0.7, 0.5]), 0.8) == (100.0, True)
    b, c = curves.halving(np.array([1.0, 10, 100]), np.array([0.3, 0.2, 0.1]), 0.8)
    assert b == pytest.approx(0.8) and not c  # linear on the budget between 0 (clean) and b_1
    assert math.isnan(curves.halving(np.array([1.0, 10]), np.array([0.0, 0.0]), 0.0)[0])


def test_curve_table_reports_censored_models_as_above_b_max():
    parts = []
    for i in range(4):
        for k in range(3):
            parts.append(_curve({1.0: 0.8, 10.0: 0.75, 100.0: 0.7 - 0.01 * i}, 0.8, "robust", k, f"s{i}"))
            parts.append(_curve({1.0: 0.7 - 0.02 * k, 10.0: 0.3 - 0.01 * i, 100.0: 0.1}, 0.8, "weak", k, f"s{i}"))
    t = curves.curve_table(curves.curve_units(pd.concat(parts)))
    b = t[t["statistic"] == "b50"].set_index("model")
    assert b.loc["robust", "censored"] and b.loc["robust", "value"] == 100.0 and math.isnan(b.loc["robust", "lo"])
    assert b.loc["robust", "note"] == "> b_max = 100"
    assert not b.loc["weak", "censored"] and 1.0 < b.loc["weak", "lo"] < b.loc["weak", "value"] < b.loc["weak", "hi"] < 10
    assert set(t["statistic"]) == set(curves.CURVE_STATISTICS) and (t["n_seeds"] == 3).all()


def test_curve_needs_two_positive_budgets():
    with pytest.raises(InputError, match="at least two positive budgets"):
        curves.curve_units(_curve({1.0: 0.5}, 0.8))


def test_rates_count_only_good_clean_images():
    df = pd.DataFrame({"success": [True, False, True, pd.NA], "dice_clean": [0.9, 0.85, 0.5, 0.95]})
    v = curves.good_clean(df)
    assert v.iloc[0] == 1.0 and v.iloc[1] == 0.0 and math.isnan(v.iloc[2]) and math.isnan(v.iloc[3])


def test_mean_mask_baseline_dice():
    tr = np.zeros((3, 4, 4))
    tr[:, :2, :2] = 1
    tr[0, 2, 2] = 1  # in one of three masks: below the 0.5 threshold
    te = np.zeros((2, 4, 4))
    te[0, :2, :2] = 1
    te[1, :2, :1] = 1
    np.testing.assert_allclose(curves.mean_mask_dice(tr, te), [1.0, 2 * 2 / (2 + 4)])
    iv = ev.Interval(0.7, 0.6, 0.8, 0.05, 10, 12, 3)
    assert curves.beats_baseline(iv, 0.55) and not curves.beats_baseline(iv, 0.65)
    with pytest.raises(InputError, match="mean_mask_dice: expected"):
        curves.mean_mask_dice(tr, te[:, :3])
