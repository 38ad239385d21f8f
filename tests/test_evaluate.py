"""Evaluation: the study's α groups, group tables, bootstrap, paired tests, model inference, saving.

Modules: xrlib.studies.rotation.groups, xrlib.eval.tables, xrlib.eval.stats, xrlib.eval.predict.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import wilcoxon

from xrlib.eval.predict import evaluate_model, evaluate_predictions, save_results
from xrlib.eval.stats import bootstrap_by_group, bootstrap_ci, dice_vs_alpha, paired_wilcoxon
from xrlib.eval.tables import format_group_table, group_stats, group_table
from xrlib.studies.rotation.groups import ALPHA_GROUPS, GROUP_ORDER, alpha_group

BASE = "U-Net(Real)"

EXPECTED = {
    -20: "Moderate-", -18: "Moderate-", -16: "Moderate-", -14: "Moderate-", -12: "Moderate-",
    -10: "Low-", -8: "Low-", -6: "Low-", -4: "Low-",
    -2: "Center", 0: "Center", 2: "Center",
    4: "Low+", 6: "Low+", 8: "Low+", 10: "Low+",
    12: "Moderate+", 14: "Moderate+", 16: "Moderate+", 18: "Moderate+", 20: "Moderate+",
}


def test_groups_constants():
    assert GROUP_ORDER == ["Moderate-", "Low-", "Center", "Low+", "Moderate+"]
    assert ALPHA_GROUPS["Center"] == (-2.0, 2.0)
    assert ALPHA_GROUPS["Moderate-"] == (-20.0, -12.0)


@pytest.mark.parametrize("alpha", list(range(-20, 21, 2)))
def test_alpha_group_grid(alpha):
    assert alpha_group(alpha) == EXPECTED[alpha]
    lo, hi = ALPHA_GROUPS[EXPECTED[alpha]]
    assert lo <= alpha <= hi


def test_alpha_group_off_grid():
    assert alpha_group(-0.33) == "Center"
    assert alpha_group(3.0) == "Center"      # midpoint goes to the group nearer Center
    assert alpha_group(-3.0) == "Center"
    assert alpha_group(3.01) == "Low+"
    assert alpha_group(-11.0) == "Low-"
    assert alpha_group(11.0) == "Low+"
    assert alpha_group(-11.5) == "Moderate-"
    assert alpha_group(21.0) == "Moderate+"
    for bad in (-21.5, 22, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            alpha_group(bad)


def _results(model, values, subjects, alphas, empty=None):
    n = len(values)
    empty = [False] * n if empty is None else empty
    return pd.DataFrame({
        "model": model, "subject": subjects, "alpha": alphas,
        "group": [alpha_group(a) for a in alphas],
        "dice": values,
        "hd_mm": [math.nan if e else 2.0 * v for v, e in zip(values, empty)],
        "hd95_mm": [math.nan if e else v for v, e in zip(values, empty)],
        "empty_pred": empty,
    })


def test_group_stats_and_table2():
    base = _results("U-Net(Real)", [0.6, 0.8, 0.4, 0.6], ["s1", "s2", "s1", "s2"], [0, 2, 20, 18])
    other = _results("U-Net(Real + Syn_all)", [0.9, 0.9, 0.5, 0.0], ["s1", "s2", "s1", "s2"], [0, 2, 20, 18],
                     empty=[False, False, False, True])
    stats, wide = group_table(pd.concat([base, other]), baseline=BASE, order=GROUP_ORDER)
    s = stats.set_index(["model", "group", "metric"])
    r = s.loc[("U-Net(Real)", "Center", "dice")]
    assert r["mean"] == pytest.approx(0.7)
    assert r["sd"] == pytest.approx(math.sqrt(0.02))  # sample sd of (0.6, 0.8)
    assert math.isnan(r["pct_change"]) is False and r["pct_change"] == pytest.approx(0.0)
    r = s.loc[("U-Net(Real + Syn_all)", "Center", "dice")]
    assert r["mean"] == pytest.approx(0.9) and r["sd"] == pytest.approx(0.0)
    assert r["pct_change"] == pytest.approx((0.9 - 0.7) / 0.7 * 100)
    # Moderate+: the empty prediction enters Dice (0) but not HD, and is counted.
    r = s.loc[("U-Net(Real + Syn_all)", "Moderate+", "dice")]
    assert r["mean"] == pytest.approx(0.25) and r["n"] == 2 and r["n_empty"] == 1
    assert r["pct_change"] == pytest.approx((0.25 - 0.5) / 0.5 * 100)
    r = s.loc[("U-Net(Real + Syn_all)", "Moderate+", "hd_mm")]
    assert r["mean"] == pytest.approx(1.0) and r["n"] == 1 and r["n_empty"] == 1 and math.isnan(r["sd"])
    assert r["pct_change"] == pytest.approx((1.0 - 1.0) / 1.0 * 100)  # base HD: mean(0.8, 1.2) = 1.0
    # Wide table: Dice in percent, change only for the non-baseline, empties shown.
    assert list(wide.index) == ["U-Net(Real)", "U-Net(Real + Syn_all)"]
    assert [g for g, _ in wide.columns[::3]] == ["Center", "Moderate+"]
    assert wide.loc["U-Net(Real)", ("Center", "dice")] == "70.00 ± 14.14"
    assert wide.loc["U-Net(Real + Syn_all)", ("Center", "dice")] == "90.00 ± 0.00 (+28.57%)"
    assert wide.loc["U-Net(Real + Syn_all)", ("Moderate+", "dice")] == "25.00 ± 35.36 (-50.00%) [1 empty]"
    assert format_group_table(group_stats(base, baseline=None), baseline=None).shape == (1, 6)


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    rng = np.random.default_rng(1)
    v = rng.normal(0.8, 0.1, 50)
    lo, hi = bootstrap_ci(v, seed=3)
    assert lo < v.mean() < hi
    assert (lo, hi) == bootstrap_ci(v, seed=3)
    assert (lo, hi) != bootstrap_ci(v, seed=4)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert all(math.isnan(x) for x in bootstrap_ci([math.nan]))


def test_cluster_bootstrap_resamples_subjects():
    # Four subjects, 20 images each, constant within a subject: the images are perfectly
    # correlated, so only 4 independent values exist and the subject CI must be much wider.
    vals = np.repeat([0.2, 0.4, 0.6, 0.8], 20)
    df = pd.DataFrame({"model": "m", "group": "Center", "subject": np.repeat(list("abcd"), 20), "dice": vals})
    clus = bootstrap_by_group(df, "dice", cluster="subject", seed=0).iloc[0]
    img = bootstrap_by_group(df, "dice", cluster=None, seed=0).iloc[0]
    assert clus["mean"] == pytest.approx(0.5) and img["mean"] == pytest.approx(0.5)
    assert clus["n_clusters"] == 4 and clus["n"] == 80
    assert (clus["hi"] - clus["lo"]) > 2.5 * (img["hi"] - img["lo"])
    # A cluster bootstrap mean is a mean of whole subjects: each draw is k/16 · … on a 0.05 grid.
    assert round(clus["lo"] / 0.05, 6) == round(clus["lo"] / 0.05) and round(clus["hi"] / 0.05, 6) == round(clus["hi"] / 0.05)
    # Deterministic.
    again = bootstrap_by_group(df, "dice", cluster="subject", seed=0).iloc[0]
    assert (again["lo"], again["hi"]) == (clus["lo"], clus["hi"])


def test_bootstrap_by_group_counts_nan_and_orders():
    df = pd.concat([
        _results("B", [0.5, 0.7, 0.9], ["a", "b", "c"], [0, 20, -20], empty=[False, True, False]),
        _results("A", [0.5, 0.7, 0.9], ["a", "b", "c"], [0, 20, -20]),
    ])
    out = bootstrap_by_group(df, "hd_mm", orders={"group": GROUP_ORDER})
    assert list(out["model"]) == ["B", "B", "B", "A", "A", "A"]
    assert list(out["group"][:3]) == ["Moderate-", "Center", "Moderate+"]
    r = out[(out["model"] == "B") & (out["group"] == "Moderate+")].iloc[0]
    assert r["n"] == 0 and r["n_nan"] == 1 and math.isnan(r["mean"])


def test_dice_vs_alpha():
    df = pd.concat([_results("m", [0.2, 0.4, 0.6, 0.8], ["a", "b", "a", "b"], [-2, -2, 4, 4])])
    out = dice_vs_alpha(df, n_boot=200)
    assert list(out["alpha"]) == [-2, 4]
    assert out["mean"].tolist() == pytest.approx([0.3, 0.7])
    assert (out["lo"] <= out["mean"]).all() and (out["mean"] <= out["hi"]).all()


def _paired_df():
    rng = np.random.default_rng(0)
    subjects = np.repeat([f"s{i}" for i in range(8)], 3)
    alphas = np.tile([-20, 0, 20], 8)
    a = rng.uniform(0.5, 0.9, len(subjects))
    b = a + rng.normal(0.05, 0.05, len(subjects))
    return pd.concat([_results("A", a, subjects, alphas), _results("B", b, subjects, alphas)]), a, b, alphas


def test_paired_wilcoxon_matches_scipy_and_pairs_by_key():
    df, a, b, alphas = _paired_df()
    out = paired_wilcoxon(df, "A", "B", order=GROUP_ORDER)
    assert list(out["group"]) == ["Moderate-", "Center", "Moderate+", "all"]
    ref_all = wilcoxon(a - b)
    r = out[out["group"] == "all"].iloc[0]
    assert r["n"] == 24
    assert r["statistic"] == pytest.approx(ref_all.statistic)
    assert r["pvalue"] == pytest.approx(ref_all.pvalue)
    assert r["median_diff"] == pytest.approx(np.median(a - b))
    sel = alphas == 20
    r = out[out["group"] == "Moderate+"].iloc[0]
    ref = wilcoxon(a[sel] - b[sel])
    assert r["n"] == 8 and r["pvalue"] == pytest.approx(ref.pvalue) and r["statistic"] == pytest.approx(ref.statistic)
    # Row order does not matter: pairs are formed by subject + alpha.
    shuffled = df.sample(frac=1.0, random_state=5)
    pd.testing.assert_frame_equal(paired_wilcoxon(shuffled, "A", "B", order=GROUP_ORDER), out)
    # A naive pairing by row order would give a different answer.
    sa, sb = shuffled[shuffled.model == "A"]["dice"].to_numpy(), shuffled[shuffled.model == "B"]["dice"].to_numpy()
    assert wilcoxon(sa - sb).statistic != pytest.approx(ref_all.statistic)


def test_paired_wilcoxon_degenerate():
    df, a, _, alphas = _paired_df()
    same = pd.concat([_results("A", a, df["subject"][:24], alphas), _results("B", a, df["subject"][:24], alphas)])
    out = paired_wilcoxon(same, "A", "B")
    assert (out["pvalue"] == 1.0).all() and (out["median_diff"] == 0).all()
    # No common pairs: n = 0 and nan statistics.
    other = _results("C", [0.5], ["zz"], [0])
    out = paired_wilcoxon(pd.concat([df, other]), "A", "C")
    assert out["n"].tolist() == [0] and math.isnan(out["pvalue"].iloc[0])
    with pytest.raises(ValueError, match="ambiguous"):
        paired_wilcoxon(pd.concat([df, df]), "A", "B")


class _Threshold(torch.nn.Module):
    def forward(self, x):
        return 20.0 * (x - 0.5)


class _Toy(torch.utils.data.Dataset):
    def __init__(self, n=5, s=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 1, s, s, generator=g)
        self.images[n - 1] = 0.1  # last image: empty prediction and empty mask

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i]
        return img, (img > 0.5).float()


def _rows(n):
    return pd.DataFrame({"subject": [f"s{i % 2}" for i in range(n)], "source": "ct0", "pool": "syn_test",
                         "split": "test", "alpha": [-20, -10, 0, 10, 20][:n], "checksum": "x"})


def test_evaluate_model_threshold_model(tmp_path):
    ds, rows = _Toy(), _rows(5)
    df, probs = evaluate_model(_Threshold(), ds, rows, "thr", pixel_mm_iso=0.5, batch_size=2,
                               device="cpu", return_probs=True, groups=alpha_group)
    assert probs.shape == (5, 16, 16) and probs.dtype == np.float32
    assert list(df["group"]) == GROUP_ORDER
    assert (df["dice"] == 1.0).all()
    assert (df["hd_px"].iloc[:4] == 0.0).all()
    assert df["empty_pred"].tolist() == [False] * 4 + [True]
    assert df["empty_target"].tolist() == [False] * 4 + [True]
    assert math.isnan(df["hd_mm"].iloc[4])
    assert list(df.columns[:7]) == ["model", "subject", "source", "pool", "split", "alpha", "group"]
    assert "checksum" not in df.columns
    # A model that predicts the complement has Dice 0 on every image with foreground.
    neg = evaluate_model(torch.nn.Sequential(_Threshold(), _Neg()), ds, rows, "neg", 0.5, device="cpu")
    assert (neg["dice"].iloc[:4] == 0.0).all()
    with pytest.raises(ValueError, match="manifest rows"):
        evaluate_model(_Threshold(), ds, _rows(4), "thr", 0.5, device="cpu")


class _Neg(torch.nn.Module):
    def forward(self, x):
        return -x


def test_evaluate_predictions_checks_shapes():
    with pytest.raises(ValueError):
        evaluate_predictions("m", np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), _rows(2), 1.0)
    with pytest.raises(ValueError):
        evaluate_predictions("m", np.zeros((3, 4, 4)), np.zeros((3, 4, 4)), _rows(2), 1.0)


def test_save_results(tmp_path):
    df = _results("m", [0.5, 0.7], ["a", "b"], [0, 12], empty=[False, True])
    csv, pq = save_results(df, tmp_path / "out" / "results.csv")
    assert csv.name == "results.csv" and pq.name == "results.parquet"
    back_csv, back_pq = pd.read_csv(csv), pd.read_parquet(pq)
    assert back_csv["dice"].tolist() == [0.5, 0.7] and back_pq["group"].tolist() == ["Center", "Moderate+"]
    assert back_pq["empty_pred"].tolist() == [False, True] and math.isnan(back_pq["hd_mm"].iloc[1])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.csv", "results.parquet"]


def test_evaluate_predictions_without_groups_has_no_group_column():
    df = evaluate_predictions("m", np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), _rows(2), 1.0)
    assert "group" not in df.columns and df["dice"].tolist() == [1.0, 1.0]


def test_tables_order_levels_by_parameter():
    df = pd.concat([_results("A", [0.5, 0.7, 0.9], ["a", "b", "c"], [0, 20, -20])])
    assert list(group_stats(df, ["dice"])["group"]) == ["Center", "Moderate+", "Moderate-"]  # no order: ascending
    assert list(group_stats(df, ["dice"], order=GROUP_ORDER)["group"]) == ["Moderate-", "Center", "Moderate+"]


def test_bootstrap_ci_is_scipys_percentile_bootstrap():
    from scipy.stats import bootstrap

    v = np.random.default_rng(2).normal(0.5, 0.2, 30)
    ref = bootstrap((v,), np.mean, n_resamples=500, method="percentile", rng=np.random.default_rng(9))
    assert bootstrap_ci(v, n_boot=500, seed=9) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert bootstrap_ci([0.3]) == (0.3, 0.3)
